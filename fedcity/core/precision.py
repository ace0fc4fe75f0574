"""How many bits a packed value needs: FedAvg's precision policy and packing efficiency.

Quantization accuracy
    :class:`~fedcity.crypto.PackingSpec` rounds a value in ``[-clip, clip]`` to the nearest
    of ``L + 1 = 2^b`` levels (``b = precision_bits``), a step of ``2·clip/L``; the rounding
    error of one value is at most half a step, ``clip / L``. Given the largest acceptable
    error ``accuracy`` (absolute, in the units of the values), the fewest bits are

    ``b = min{b : clip / (2^b - 1) <= accuracy}``                      (:func:`precision_for`)

    so the precision follows the clip range: a wider clip costs ``log2`` of its growth in
    bits, a tighter accuracy ``log2`` of its shrinking.

SecAgg+ equivalence
    Flower 1.41's ``SecAggPlusWorkflow`` defaults to ``clipping_range=8.0`` and
    ``quantization_range=2**22``: every (weighted) parameter is clipped to ``[-8, 8]`` and
    stochastically rounded to an integer in ``[0, 2^22]``, a step of ``16 / 2^22 = 2^-18``
    (≈ 3.8e-6), with an unbiased error below one step. :data:`SECAGG_PLUS_ACCURACY` is half
    that step, ``2^-19`` (≈ 1.9e-6): rounding to the nearest level never errs by more than
    half of SecAgg+'s step. With ``2^b - 1`` levels this takes 23 bits at Flower's clip of 8,
    the width of SecAgg+'s integers (``2^22 + 1`` values), and 26 bits at FedAvg's default
    clip of 64 (a step of ``128 / (2^26 - 1)`` ≈ 1.9e-6).

Exact integers
    Counts and limbs of exact sums are packed at their own width by :class:`ExactIntegers`
    (a unit quantization step), not as floats with the extra precision that rounding a sum
    back to an integer would need.

Slot efficiency
    A packing for ``K`` summands of values up to ``summand_max`` holds at most
    ``floor((n_length - 1) / (bits(summand_max) + ceil(log2 K)))`` values per ciphertext
    (:func:`theoretical_slots`). :func:`slot_efficiency` compares a vector's ciphertexts with
    the fewest that bound allows.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

__all__ = [
    "MAX_PRECISION_BITS",
    "MAX_UNIT_BITS",
    "MIN_PRECISION_BITS",
    "SECAGG_PLUS_ACCURACY",
    "SECAGG_PLUS_CLIP",
    "SECAGG_PLUS_LEVELS",
    "ExactIntegers",
    "check_accuracy",
    "precision_for",
    "slot_efficiency",
    "theoretical_slots",
]

SECAGG_PLUS_CLIP = 8.0
"""``clipping_range`` default of Flower 1.41's ``SecAggPlusWorkflow``."""
SECAGG_PLUS_LEVELS = 2**22
"""``quantization_range`` default of Flower 1.41's ``SecAggPlusWorkflow``."""
SECAGG_PLUS_ACCURACY = SECAGG_PLUS_CLIP / SECAGG_PLUS_LEVELS
"""Default FedAvg accuracy: half of SecAgg+'s quantization step ``2·8/2^22``, ``2^-19``."""
MIN_PRECISION_BITS = 8
MAX_PRECISION_BITS = 52
"""Precision bounds of FedAvg packings (52: float64 decodes every level exactly)."""


def _positive(name: str, value: object) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise ValueError(f"{name} must be a positive finite number, got {value!r}")
    if value <= 0:
        raise ValueError(f"{name} must be positive, got {value!r}")
    return float(value)


def check_accuracy(accuracy: object, clip: object) -> float:
    """``accuracy`` as a float, checked against ``clip``.

    Raises
    ------
    ValueError
        ``accuracy`` or ``clip`` is not a positive finite number, ``accuracy`` is not below
        ``clip``, or honouring it at ``clip`` needs more than 52 bits.
    """
    acc = _positive("accuracy", accuracy)
    c = _positive("clip", clip)
    if acc >= c:
        raise ValueError(
            f"accuracy {acc!r} must be below the clip {c!r} (it is the largest rounding error "
            "of one value in [-clip, clip])"
        )
    bits = _bits(c, acc)
    if bits > MAX_PRECISION_BITS:
        raise ValueError(
            f"accuracy {acc!r} at clip {c!r} needs {bits} bits; packings hold at most "
            f"{MAX_PRECISION_BITS} (ask for accuracy >= {c / ((1 << MAX_PRECISION_BITS) - 1):.3g} "
            "or lower the clip)"
        )
    return acc


def _bits(clip: float, accuracy: float) -> int:
    bits = max(1, math.ceil(math.log2(clip / accuracy + 1.0)))
    while clip / ((1 << bits) - 1) > accuracy:  # float log2 may land one short
        bits += 1
    while bits > 1 and clip / ((1 << (bits - 1)) - 1) <= accuracy:
        bits -= 1
    return bits


def precision_for(clip: float, accuracy: float) -> int:
    """Fewest precision bits whose rounding error at ``clip`` is at most ``accuracy``.

    The result is at least :data:`MIN_PRECISION_BITS` and at most
    :data:`MAX_PRECISION_BITS` (a clip so wide that the accuracy needs more gets 52 bits,
    the finest the packing offers).

    Examples
    --------
    >>> precision_for(8.0, SECAGG_PLUS_ACCURACY), precision_for(64.0, SECAGG_PLUS_ACCURACY)
    (23, 26)

    Raises
    ------
    ValueError
        ``clip`` or ``accuracy`` is not a positive finite number.
    """
    c = _positive("clip", clip)
    acc = _positive("accuracy", accuracy)
    return min(MAX_PRECISION_BITS, max(MIN_PRECISION_BITS, _bits(c, acc)))


def theoretical_slots(summand_max: int, summands: int, n_length: int) -> int:
    """Most values per ciphertext for ``summands`` summands of integers in ``[0, summand_max]``.

    ``floor((n_length - 1) / (bits(summand_max) + ceil(log2 summands)))``.

    Raises
    ------
    ValueError
        A non-positive ``summand_max``, ``summands`` or ``n_length``.
    """
    for name, v in (("summand_max", summand_max), ("summands", summands), ("n_length", n_length)):
        if isinstance(v, bool) or not isinstance(v, int) or v < 1:
            raise ValueError(f"{name} must be a positive integer, got {v!r}")
    return (n_length - 1) // (summand_max.bit_length() + (summands - 1).bit_length())


def slot_efficiency(values: int, ciphertexts: int, theory: int) -> float:
    """Fewest ciphertexts the theory allows for ``values`` values, over ``ciphertexts``.

    1.0 means no ciphertext is wasted: only the last one may be partly empty. (For vectors
    that fill many ciphertexts it equals ``values / (ciphertexts · theory)``.)

    Raises
    ------
    ValueError
        A non-positive count.
    """
    for name, v in (("values", values), ("ciphertexts", ciphertexts), ("theory", theory)):
        if isinstance(v, bool) or not isinstance(v, int) or v < 1:
            raise ValueError(f"{name} must be a positive integer, got {v!r}")
    return -(-values // theory) / ciphertexts


MAX_UNIT_BITS = 13
"""Finest unit of :class:`ExactIntegers` (room for ``2^13 - 1`` summands)."""


@dataclass(frozen=True)
class ExactIntegers:
    """Integers in ``[0, 2^bits)`` packed at their own width and summed exactly.

    A :class:`~fedcity.crypto.PackingSpec` with ``precision_bits = bits`` and
    ``clip = (2^bits - 1)·u/2`` has the step ``u``, so an integer ``x`` sent as the float
    ``x·u - clip`` is quantized to exactly ``x``: a slot of ``bits + ceil(log2 K)`` bits, the
    theoretical width (:func:`theoretical_slots`), where a float layout needs a sign bit and
    ``log2 K + 2`` more bits of precision to round a sum of ``K`` values back exactly.
    The released sum of ``s`` vectors is ``Σx·u - s·clip`` (exact in float64), which
    :meth:`decode` turns back into integers.

    The unit ``u = 2^-unit_bits`` keeps the round's overflow indicator readable: an agency
    that did not clip sends 0 there, which sits half a step between two levels and decodes to
    ``u/2`` (to ``-u/2`` for one-bit values, whose 0 rounds down). The indicator's threshold
    is ``min(1, clip)/2``; :meth:`for_summands` takes ``2^unit_bits > K`` and widens values
    narrower than ``log2(2K + 1)`` bits so that ``K·u/2`` stays below it.

    Parameters
    ----------
    bits : int
        Width of every value, 1 to 48.
    unit_bits : int
        ``u = 2^-unit_bits``, 0 to :data:`MAX_UNIT_BITS`; see :meth:`for_summands`.

    Examples
    --------
    >>> codec = ExactIntegers.for_summands(30, 5)
    >>> codec.precision_bits, codec.unit_bits
    (30, 3)
    >>> ExactIntegers.for_summands(2, 5).precision_bits  # 2^4 - 1 > 2·5
    4
    """

    bits: int
    unit_bits: int

    def __post_init__(self) -> None:
        if (
            isinstance(self.bits, bool)
            or not isinstance(self.bits, int)
            or not 1 <= self.bits <= 48
        ):
            raise ValueError(
                f"exact integer width must be an integer in [1, 48], got {self.bits!r}"
            )
        if (
            isinstance(self.unit_bits, bool)
            or not isinstance(self.unit_bits, int)
            or not 0 <= self.unit_bits <= MAX_UNIT_BITS
        ):
            raise ValueError(
                f"unit_bits must be an integer in [0, {MAX_UNIT_BITS}], got {self.unit_bits!r}"
            )

    @classmethod
    def for_summands(cls, bits: int, summands: int) -> ExactIntegers:
        """The codec for ``bits``-bit values summed over at most ``summands`` vectors.

        Raises
        ------
        ValueError
            ``summands`` is not a positive integer or exceeds ``2^(MAX_UNIT_BITS - 1)``.
        """
        if isinstance(summands, bool) or not isinstance(summands, int) or summands < 1:
            raise ValueError(f"summands must be a positive integer, got {summands!r}")
        unit_bits = summands.bit_length()  # 2^unit_bits > summands
        if unit_bits > MAX_UNIT_BITS:
            raise ValueError(
                f"{summands} summands exceed the {(1 << MAX_UNIT_BITS) - 1} exact packings allow"
            )
        if bits == 1:
            return cls(1, 0)
        # 2^width - 1 > 2·summands keeps the quiet overflow slot below its threshold
        return cls(max(bits, (2 * summands + 1).bit_length()), unit_bits)

    @property
    def precision_bits(self) -> int:
        """The packing precision: the values' own width."""
        return self.bits

    @property
    def unit(self) -> float:
        """The quantization step ``u`` (one integer)."""
        return 2.0**-self.unit_bits

    @property
    def clip(self) -> float:
        """The packing clip ``(2^bits - 1)·u/2``."""
        return ((1 << self.bits) - 1) * self.unit / 2.0

    def encode(self, values: npt.ArrayLike) -> npt.NDArray[np.float64]:
        """Integers in ``[0, 2^bits)`` as the floats to pack (``x·u - clip``).

        Raises
        ------
        ValueError
            A value that is not an integer in range (its position is named).
        """
        arr = np.asarray(values)
        if arr.ndim != 1:
            raise ValueError(f"expected a 1-D vector of integers, got shape {arr.shape}")
        as_float = arr.astype(np.float64)
        bad = ~np.isfinite(as_float) | (as_float != np.floor(as_float))
        bad |= (as_float < 0) | (as_float > (1 << self.bits) - 1)
        if bad.any():
            pos = int(np.flatnonzero(bad)[0])
            raise ValueError(
                f"value at position {pos} is {np.asarray(arr[pos]).item()!r}; exact packing "
                f"takes integers in [0, 2^{self.bits})"
            )
        out: npt.NDArray[np.float64] = as_float * self.unit - self.clip
        return out

    def decode(self, released: npt.ArrayLike, summands: int) -> list[int]:
        """The exact integer sums from a round's released values (``summands`` contributors).

        Raises
        ------
        ValueError
            A released value that is not a whole number of units: not a sum of this codec's
            values.
        """
        arr = np.asarray(released, dtype=np.float64)
        scaled = (arr + summands * self.clip) / self.unit
        ints = np.rint(scaled)
        off = np.flatnonzero(np.abs(scaled - ints) > 1e-6)
        if off.size:
            pos = int(off[0])
            raise ValueError(
                f"released value {pos} ({arr[pos]!r}) is not a sum of {summands} exactly "
                "packed integers"
            )
        return [int(v) for v in ints]
