"""Packing float vectors into Paillier plaintexts (BatchCrypt-style).

A value ``x`` is clipped to ``[-clip, clip]`` and quantized to an integer in
``[0, L]`` with ``L = 2^b - 1`` levels (``b = precision_bits``)::

    q = round((x + clip) · L / (2·clip))

``slots_per_ciphertext`` such integers are laid side by side in one plaintext, each in a slot
of ``b + ceil(log2 K)`` bits, so that ``K = max_summands`` encrypted vectors can be added
without one slot carrying into the next. A sum of ``s`` vectors decodes as::

    Σx ≈ Σq · 2·clip / L - s·clip

with an error of at most ``s · clip / L`` (half a quantization step per summand).
After decryption every slot must lie in ``[0, s·L]`` and every padding slot must be zero;
anything else proves a malformed contribution and raises :class:`SlotRangeError`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from fedcity.crypto.errors import SlotRangeError

__all__ = ["PackingSpec"]

_MAX_SLOT_BITS = 62  # slot sums and shifts stay inside numpy uint64


@dataclass(frozen=True)
class PackingSpec:
    """The layout of packed, quantized float vectors.

    Parameters
    ----------
    clip : float, default 1.0
        Values are clipped to ``[-clip, clip]`` before quantization.
    precision_bits : int, default 16
        Quantization levels ``2^precision_bits - 1`` over ``[-clip, clip]``.
    max_summands : int, default 1000
        The most unit-weight vectors that may be added (scalar multiplication by ``k``
        counts as ``k`` summands). Sets the ``ceil(log2 K)`` headroom bits of each slot.
    n_length : int, default 2048
        Bits of the Paillier modulus the layout is for.
    noise_bound : int, default 0
        Room for integer noise (differential privacy) added to each quantized value before
        encryption: a summand may carry values in ``[-noise_bound, L + noise_bound]``,
        stored with an offset of ``noise_bound``.

    Examples
    --------
    >>> spec = PackingSpec(clip=1.0, precision_bits=16, max_summands=100)
    >>> spec.slot_bits, spec.slots_per_ciphertext
    (23, 89)
    """

    clip: float = 1.0
    precision_bits: int = 16
    max_summands: int = 1000
    n_length: int = 2048
    noise_bound: int = 0

    def __post_init__(self) -> None:
        if isinstance(self.clip, bool) or not (
            isinstance(self.clip, int | float) and math.isfinite(self.clip) and self.clip > 0
        ):
            raise ValueError(f"clip must be a positive finite number, got {self.clip!r}")
        # one canonical value: the wire carries a double, and digests hash the layout
        object.__setattr__(self, "clip", float(self.clip))
        if not isinstance(self.precision_bits, int) or not 1 <= self.precision_bits <= 52:
            raise ValueError(
                f"precision_bits must be an integer in [1, 52], got {self.precision_bits!r}"
            )
        if not isinstance(self.max_summands, int) or self.max_summands < 1:
            raise ValueError(f"max_summands must be a positive integer, got {self.max_summands!r}")
        if not isinstance(self.n_length, int) or self.n_length < 256:
            raise ValueError(f"n_length must be an integer >= 256, got {self.n_length!r}")
        if not isinstance(self.noise_bound, int) or self.noise_bound < 0:
            raise ValueError(
                f"noise_bound must be a non-negative integer, got {self.noise_bound!r}"
            )
        if self.slot_bits > _MAX_SLOT_BITS:
            raise ValueError(
                f"precision_bits + ceil(log2(max_summands)) = {self.slot_bits} exceeds "
                f"{_MAX_SLOT_BITS} bits; lower the precision or the summand limit"
            )

    # -- derived layout ---------------------------------------------------------------------
    @property
    def levels(self) -> int:
        """Largest quantized value ``L = 2^b - 1``."""
        return (1 << self.precision_bits) - 1

    @property
    def summand_max(self) -> int:
        """Largest stored value of one summand: ``L + 2·noise_bound``."""
        return self.levels + 2 * self.noise_bound

    @property
    def headroom_bits(self) -> int:
        """Extra bits per slot so that ``max_summands`` values sum without overflow."""
        return (self.max_summands - 1).bit_length()

    @property
    def slot_bits(self) -> int:
        """Bits per slot: enough for ``max_summands · summand_max``."""
        return self.summand_max.bit_length() + self.headroom_bits

    @property
    def slots_per_ciphertext(self) -> int:
        """Slots in one plaintext; the packed integer stays below ``2^(n_length-1) <= n``."""
        return (self.n_length - 1) // self.slot_bits

    @property
    def step(self) -> float:
        """Quantization step ``2·clip / L``."""
        return 2.0 * self.clip / self.levels

    @property
    def _n_words(self) -> int:
        """64-bit words spanned by the slots of one plaintext."""
        return -(-(self.slots_per_ciphertext * self.slot_bits) // 64)

    def n_ciphertexts(self, length: int) -> int:
        """Ciphertexts needed for a vector of ``length`` values."""
        return -(-length // self.slots_per_ciphertext)

    def bytes_per_value(self) -> float:
        """Ciphertext bytes per value on the wire, for a full ciphertext."""
        return 2 * ((self.n_length + 7) // 8) / self.slots_per_ciphertext

    # -- encoding ---------------------------------------------------------------------------
    def quantize(
        self, x: npt.ArrayLike, noise: npt.ArrayLike | None = None
    ) -> npt.NDArray[np.uint64]:
        """Clip and quantize a 1-D float vector to stored integers in ``[0, summand_max]``.

        Parameters
        ----------
        x : array_like of float
        noise : array_like of int, optional
            Integer noise in quantization steps, one per value, each within
            ``[-noise_bound, noise_bound]``; added after quantization.

        Raises
        ------
        ValueError
            ``x`` is not one-dimensional or holds NaN or infinity (position named), or the
            noise has the wrong shape or exceeds ``noise_bound``.
        """
        arr = np.asarray(x, dtype=np.float64)
        if arr.ndim != 1:
            raise ValueError(f"expected a 1-D vector, got shape {arr.shape}")
        bad = ~np.isfinite(arr)
        if bad.any():
            pos = int(np.flatnonzero(bad)[0])
            raise ValueError(f"value at position {pos} is {arr[pos]}; only finite values encode")
        clipped = np.clip(arr, -self.clip, self.clip)
        q = np.clip(
            np.rint((clipped + self.clip) * (self.levels / (2.0 * self.clip))), 0, self.levels
        )
        stored = q.astype(np.int64) + self.noise_bound
        if noise is not None:
            eta = np.asarray(noise)
            if eta.shape != arr.shape or not np.issubdtype(eta.dtype, np.integer):
                raise ValueError(f"noise must be an integer array of shape {arr.shape}")
            if eta.size and int(np.abs(eta).max()) > self.noise_bound:
                raise ValueError(f"noise exceeds noise_bound={self.noise_bound}")
            stored = stored + eta.astype(np.int64)
        return stored.astype(np.uint64)

    def dequantize(self, q: npt.NDArray[np.uint64], summands: int) -> npt.NDArray[np.float64]:
        """Decode slot sums of ``summands`` vectors back to the float sum."""
        centred = q.astype(np.float64) - float(summands * self.noise_bound)
        return centred * self.step - summands * self.clip

    def pack(self, q: npt.NDArray[np.uint64]) -> list[int]:
        """Lay quantized integers into plaintext integers, slot 0 in the lowest bits."""
        s, w = self.slots_per_ciphertext, self.slot_bits
        n_ct = self.n_ciphertexts(len(q))
        padded = np.zeros(n_ct * s, dtype=np.uint64)
        padded[: len(q)] = q
        slots = padded.reshape(n_ct, s) & np.uint64((1 << w) - 1)
        # word scatter: slot j occupies bits [j·w, (j+1)·w) of a little-endian row of
        # 64-bit words, spilling into the next word when it crosses a word boundary
        words = np.zeros((n_ct, self._n_words), dtype="<u8")
        for j in range(s):
            word, shift = divmod(j * w, 64)
            words[:, word] |= slots[:, j] << np.uint64(shift)
            if shift + w > 64:
                words[:, word + 1] |= slots[:, j] >> np.uint64(64 - shift)
        return [int.from_bytes(row.tobytes(), "little") for row in words]

    def unpack(self, plaintexts: list[int], length: int, summands: int) -> npt.NDArray[np.uint64]:
        """Split plaintext integers into slot sums and check every slot's range.

        Raises
        ------
        SlotRangeError
            A slot exceeds ``summands · L``, a padding slot is non-zero, or a plaintext has
            bits above its last slot: the position and ciphertext are named.
        """
        s, w = self.slots_per_ciphertext, self.slot_bits
        if len(plaintexts) != self.n_ciphertexts(length):
            raise ValueError(
                f"{len(plaintexts)} plaintexts cannot hold {length} values "
                f"(expected {self.n_ciphertexts(length)})"
            )
        n_words = self._n_words
        rows = bytearray()
        for i, m in enumerate(plaintexts):
            if m < 0 or m.bit_length() > s * w:
                raise SlotRangeError(
                    f"ciphertext {i} decrypts to a value with bits above its last slot "
                    f"(values {i * s}..{(i + 1) * s - 1}): malformed contribution",
                    position=i * s,
                    ciphertext=i,
                )
            rows += int(m).to_bytes(8 * n_words, "little")
        words = np.frombuffer(bytes(rows), dtype="<u8").reshape(len(plaintexts), n_words)
        mask = np.uint64((1 << w) - 1)
        table = np.empty((len(plaintexts), s), dtype=np.uint64)
        for j in range(s):  # inverse of the word scatter in pack()
            word, shift = divmod(j * w, 64)
            col = words[:, word] >> np.uint64(shift)
            if shift + w > 64:
                col |= words[:, word + 1] << np.uint64(64 - shift)
            table[:, j] = col & mask
        slots = table.reshape(-1)
        limit = np.uint64(summands * self.summand_max)
        over = np.flatnonzero(slots[:length] > limit)
        if over.size:
            pos = int(over[0])
            raise SlotRangeError(
                f"value {pos} (ciphertext {pos // s}) decrypts to slot {int(slots[pos])}, "
                f"outside [0, {int(limit)}] for {summands} summand(s): malformed contribution",
                position=pos,
                ciphertext=pos // s,
            )
        pad = np.flatnonzero(slots[length:])
        if pad.size:
            pos = length + int(pad[0])
            raise SlotRangeError(
                f"padding slot {pos} (ciphertext {pos // s}) is non-zero: malformed contribution",
                position=pos,
                ciphertext=pos // s,
            )
        result: npt.NDArray[np.uint64] = slots[:length]
        return result
