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
    that step, ``2^-19`` (≈ 1.9e-6): deterministic rounding to the same step. At Flower's clip
    of 8 it gives 23 bits, exactly the width of SecAgg+'s integers (``2^22 + 1`` values); at
    FedAvg's default clip of 64 it gives 26 bits, the same absolute step on a range eight
    times wider.

Slot efficiency
    A packing for ``K`` summands of values up to ``summand_max`` holds at most
    ``floor((n_length - 1) / (bits(summand_max) + ceil(log2 K)))`` values per ciphertext
    (:func:`theoretical_slots`). :func:`slot_efficiency` compares a vector's ciphertexts with
    the fewest that bound allows.
"""

from __future__ import annotations

import math

__all__ = [
    "MAX_PRECISION_BITS",
    "MIN_PRECISION_BITS",
    "SECAGG_PLUS_ACCURACY",
    "SECAGG_PLUS_CLIP",
    "SECAGG_PLUS_LEVELS",
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
"""Half of SecAgg+'s default quantization step ``2·8/2^22``: ``2^-19`` ≈ 1.9e-6."""
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
