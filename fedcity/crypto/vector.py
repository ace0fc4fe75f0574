"""Encrypted packed float vectors: encrypt, add, scale, decrypt.

An :class:`EncryptedVector` remembers its key, its :class:`PackingSpec`, its length and how many
unit-weight vectors were summed into it (``summands``), so additions that would overflow a slot,
mix keys or mix layouts are refused before they happen, and decryption knows how to decode.

Openings (for range proofs, :mod:`fedcity.crypto.rangeproof`): :func:`encrypt_vector_with_openings`
is :func:`encrypt_vector` that also returns an :class:`Openings` — per ciphertext ``i`` the packed
plaintext integer ``m_i`` and the DJN exponent ``a_i`` with ``c_i = (1 + n·m_i)·h_s^{a_i} mod n²``
(``Openings.plaintext(i)``, ``Openings.exponent(i)``, ``Openings.check(vector)``). Whoever holds an
opening can decrypt that ciphertext, so an ``Openings`` lives in memory only: its ``repr`` shows
neither value, and pickling, copying or ``__getstate__`` raise ``TypeError``. With a
:class:`~fedcity.crypto.WorkerPool` the exponents are drawn in the workers and come back over
the pool's local pipes (never to disk), so openings are exact on both paths.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Sequence
from typing import TYPE_CHECKING, NoReturn, SupportsIndex

import numpy as np
import numpy.typing as npt
from gmpy2 import mpz

from fedcity.crypto.errors import (
    KeyMismatchError,
    MalformedCiphertextError,
    SpecMismatchError,
    SummandLimitError,
)
from fedcity.crypto.keys import PrivateKey, PublicKey
from fedcity.crypto.packing import PackingSpec

if TYPE_CHECKING:
    from fedcity.crypto.parallel import WorkerPool
    from fedcity.crypto.pool import RandomnessPool

__all__ = [
    "EncryptedVector",
    "Openings",
    "decrypt_vector",
    "encrypt_vector",
    "encrypt_vector_with_openings",
]


class EncryptedVector:
    """A float vector packed into Paillier ciphertexts.

    Instances come from :func:`encrypt_vector`, from adding instances, or from the wire
    (:func:`fedcity.crypto.serde.encrypted_vector_from_bytes`). They support ``a + b``,
    ``sum(vectors)`` and ``k * a`` for integers ``k >= 0``.

    Attributes
    ----------
    public_key : PublicKey
    spec : PackingSpec
    length : int
        Number of float values.
    summands : int
        Total weight of the unit vectors summed into this one.
    ciphertexts : list of gmpy2.mpz
    """

    __slots__ = ("ciphertexts", "length", "public_key", "spec", "summands")

    def __init__(
        self,
        public_key: PublicKey,
        spec: PackingSpec,
        length: int,
        summands: int,
        ciphertexts: Sequence[mpz],
        *,
        validate: bool = True,
    ) -> None:
        if spec.n_length != public_key.n_length:
            raise SpecMismatchError(
                f"packing spec is for {spec.n_length}-bit keys, key has {public_key.n_length} bits"
            )
        if length < 0:
            raise ValueError(f"length must be non-negative, got {length}")
        if not 0 <= summands <= spec.max_summands:
            raise SummandLimitError(
                f"{summands} summands exceed the spec's max_summands={spec.max_summands}"
            )
        if len(ciphertexts) != spec.n_ciphertexts(length):
            raise MalformedCiphertextError(
                f"{len(ciphertexts)} ciphertexts cannot hold {length} values "
                f"(expected {spec.n_ciphertexts(length)})"
            )
        self.public_key = public_key
        self.spec = spec
        self.length = length
        self.summands = summands
        if validate:
            ciphertexts = [
                public_key.check_ciphertext(c, position=i) for i, c in enumerate(ciphertexts)
            ]
        self.ciphertexts = list(ciphertexts)

    def __repr__(self) -> str:
        return (
            f"<EncryptedVector length={self.length} summands={self.summands} "
            f"ciphertexts={len(self.ciphertexts)} key={self.public_key.key_id.hex()[:8]}>"
        )

    def _check_compatible(self, other: EncryptedVector) -> None:
        if self.public_key.key_id != other.public_key.key_id:
            raise KeyMismatchError(
                f"cannot add vectors under different keys ({self.public_key.key_id.hex()[:8]} "
                f"and {other.public_key.key_id.hex()[:8]})"
            )
        if self.spec != other.spec:
            raise SpecMismatchError(f"cannot add vectors packed as {self.spec} and {other.spec}")
        if self.length != other.length:
            raise SpecMismatchError(
                f"cannot add vectors of lengths {self.length} and {other.length}"
            )
        total = self.summands + other.summands
        if total > self.spec.max_summands:
            raise SummandLimitError(
                f"adding would make {total} summands; the packing spec leaves headroom for "
                f"max_summands={self.spec.max_summands}"
            )

    def __add__(self, other: EncryptedVector) -> EncryptedVector:
        if not isinstance(other, EncryptedVector):
            return NotImplemented
        self._check_compatible(other)
        nsq = self.public_key.nsquare
        cts = [a * b % nsq for a, b in zip(self.ciphertexts, other.ciphertexts, strict=True)]
        return EncryptedVector(
            self.public_key,
            self.spec,
            self.length,
            self.summands + other.summands,
            cts,
            validate=False,
        )

    def __radd__(self, other: object) -> EncryptedVector:
        if isinstance(other, int) and other == 0:  # the start value of sum()
            return self
        return NotImplemented

    def __mul__(self, k: int) -> EncryptedVector:
        if isinstance(k, bool) or not isinstance(k, int | np.integer):
            return NotImplemented
        k = int(k)
        if k < 0:
            raise ValueError("encrypted vectors multiply only by non-negative integers")
        if self.summands * k > self.spec.max_summands:
            raise SummandLimitError(
                f"multiplying by {k} makes {self.summands * k} summands; the packing spec "
                f"leaves headroom for max_summands={self.spec.max_summands}"
            )
        nsq = self.public_key.nsquare
        kk = mpz(k)
        cts = [pow(c, kk, nsq) for c in self.ciphertexts]
        return EncryptedVector(
            self.public_key, self.spec, self.length, self.summands * k, cts, validate=False
        )

    __rmul__ = __mul__

    def ciphertext_bytes(self) -> bytes:
        """Concatenated fixed-width big-endian ciphertexts (the wire form)."""
        w = self.public_key.ciphertext_bytes
        return b"".join(int(c).to_bytes(w, "big") for c in self.ciphertexts)

    def digest(self) -> bytes:
        """SHA-256 binding key, layout, length, summands and ciphertexts."""
        h = hashlib.sha256(b"fedcity.v1.encrypted-vector")
        h.update(self.public_key.key_id)
        s = self.spec
        h.update(
            f"{s.clip!r}|{s.precision_bits}|{s.max_summands}|{s.n_length}|{s.noise_bound}".encode()
        )
        h.update(f"|{self.length}|{self.summands}|".encode())
        h.update(self.ciphertext_bytes())
        return h.digest()

    @property
    def nbytes(self) -> int:
        """Bytes the ciphertexts take on the wire."""
        return len(self.ciphertexts) * self.public_key.ciphertext_bytes


class Openings:
    """Plaintext integers and DJN exponents of the ciphertexts of one encryption.

    Made by :func:`encrypt_vector_with_openings`. Ciphertext ``i`` of the matching
    :class:`EncryptedVector` is ``(1 + n·plaintext(i))·h_s^exponent(i) mod n²``. Holding an
    opening means being able to decrypt: keep it in memory, prove with it
    (:func:`fedcity.crypto.rangeproof.prove_slot_ranges`) and drop it. The ``repr`` shows only
    the count and key id; pickling and copying raise ``TypeError``.

    Attributes
    ----------
    key_id : bytes
        Id of the key the ciphertexts are under.
    """

    __slots__ = ("_exponents", "_plaintexts", "key_id")

    def __init__(self, key_id: bytes, plaintexts: Sequence[int], exponents: Sequence[mpz]) -> None:
        if len(plaintexts) != len(exponents):
            raise ValueError(
                f"{len(plaintexts)} plaintexts but {len(exponents)} exponents in an opening"
            )
        self.key_id = key_id
        self._plaintexts = [int(m) for m in plaintexts]
        self._exponents = [mpz(a) for a in exponents]

    def __len__(self) -> int:
        return len(self._plaintexts)

    def __repr__(self) -> str:
        return f"<Openings ciphertexts={len(self)} key={self.key_id.hex()[:8]}>"

    def _index(self, i: int) -> int:
        if isinstance(i, bool) or not isinstance(i, int) or not 0 <= i < len(self):
            raise IndexError(f"ciphertext index {i!r} outside [0, {len(self)})")
        return i

    def plaintext(self, i: int) -> int:
        """The packed plaintext integer of ciphertext ``i``."""
        return self._plaintexts[self._index(i)]

    def exponent(self, i: int) -> mpz:
        """The DJN exponent ``a`` of ciphertext ``i``."""
        return self._exponents[self._index(i)]

    def check(self, vector: EncryptedVector) -> None:
        """Raise unless re-encrypting every opening reproduces ``vector``'s ciphertexts.

        Raises
        ------
        KeyMismatchError
            ``vector`` is under another key.
        MalformedCiphertextError
            Counts differ, or ciphertext ``i`` does not match its opening (``i`` named).
        """
        pk = vector.public_key
        if pk.key_id != self.key_id:
            raise KeyMismatchError(
                f"openings are for key {self.key_id.hex()[:8]}, vector is under "
                f"{pk.key_id.hex()[:8]}"
            )
        if len(vector.ciphertexts) != len(self):
            raise MalformedCiphertextError(
                f"{len(self)} openings for {len(vector.ciphertexts)} ciphertexts"
            )
        for i, c in enumerate(vector.ciphertexts):
            m, a = self._plaintexts[i], self._exponents[i]
            if not 0 <= m < pk.n or a < 0 or a.bit_length() > pk.exponent_bits:
                raise MalformedCiphertextError(f"opening {i} is out of range for the key")
            if (1 + pk.n * m) * pk.table.pow(a) % pk.nsquare != c:
                raise MalformedCiphertextError(f"opening {i} does not reproduce ciphertext {i}")

    def clear(self) -> None:
        """Drop the references to the plaintexts and exponents (best effort in Python)."""
        self._plaintexts = []
        self._exponents = []

    def __reduce_ex__(self, protocol: SupportsIndex) -> NoReturn:
        raise TypeError("Openings hold decryption secrets and are never pickled or copied")

    def __reduce__(self) -> NoReturn:
        raise TypeError("Openings hold decryption secrets and are never pickled or copied")

    def __getstate__(self) -> NoReturn:
        raise TypeError("Openings hold decryption secrets and are never serialized")

    def __copy__(self) -> NoReturn:
        raise TypeError("Openings hold decryption secrets and are never copied")

    def __deepcopy__(self, memo: object) -> NoReturn:
        raise TypeError("Openings hold decryption secrets and are never copied")


def _encrypt(
    public_key: PublicKey,
    x: npt.ArrayLike,
    spec: PackingSpec,
    pool: WorkerPool | None,
    noise: npt.ArrayLike | None,
    opened: bool,
    randomness: RandomnessPool | None = None,
) -> tuple[EncryptedVector, Openings | None]:
    """The one encryption path of :func:`encrypt_vector` and its opened sibling.

    Randomness from ``randomness`` seals the first ciphertexts (one multiplication each); the
    rest, if any, are encrypted as without a pool (in workers with ``pool``, else in process).
    Without workers the pool computes what it lacks itself, so everything is "take, multiply".
    """
    if spec.n_length != public_key.n_length:
        raise SpecMismatchError(
            f"packing spec is for {spec.n_length}-bit keys, key has {public_key.n_length} bits"
        )
    if randomness is not None and randomness.key_id != public_key.key_id:
        raise KeyMismatchError(
            f"randomness pool is for key {randomness.key_id.hex()[:8]}, encrypting under "
            f"{public_key.key_id.hex()[:8]}"
        )
    q = spec.quantize(x, noise)
    plaintexts = spec.pack(q)
    ready: list[tuple[mpz, mpz]] = []  # (a, h_s^a), each used once, here
    if randomness is not None:  # with workers: the pool covers what it holds, workers the rest
        k = len(plaintexts)
        ready = randomness.take_pooled(k) if pool is not None else randomness.take(k)
    cts = [public_key._raw_encrypt_with(m, r) for m, (_, r) in zip(plaintexts, ready, strict=False)]
    exponents = [a for a, _ in ready] if opened else []
    del ready
    rest = plaintexts[len(cts) :]
    if rest and not opened:
        if pool is not None:
            cts += pool.raw_encrypt_many(public_key, rest)
        else:
            cts += [public_key._raw_encrypt(m) for m in rest]
    elif rest:
        if pool is not None:
            pairs = pool.raw_encrypt_many_opened(public_key, rest)
        else:
            pairs = [public_key._raw_encrypt_opened(m) for m in rest]
        cts += [c for c, _ in pairs]
        exponents += [a for _, a in pairs]
    openings = Openings(public_key.key_id, plaintexts, exponents) if opened else None
    return EncryptedVector(public_key, spec, len(q), 1, cts, validate=False), openings


def encrypt_vector(
    public_key: PublicKey,
    x: npt.ArrayLike,
    spec: PackingSpec,
    *,
    pool: WorkerPool | None = None,
    noise: npt.ArrayLike | None = None,
    randomness: RandomnessPool | None = None,
) -> EncryptedVector:
    """Clip, quantize, pack and encrypt a 1-D float vector.

    Parameters
    ----------
    public_key : PublicKey
    x : array_like of float, shape (d,)
    spec : PackingSpec
        Must be for ``public_key.n_length``.
    pool : WorkerPool, optional
        Encrypt in worker processes (see :class:`fedcity.crypto.WorkerPool`).
    noise : array_like of int, optional
        Integer noise in quantization steps, within ``spec.noise_bound`` (for distributed
        differential privacy; see :meth:`PackingSpec.quantize`).
    randomness : RandomnessPool, optional
        Precomputed randomness for ``public_key`` (:mod:`fedcity.crypto.pool`): each
        ciphertext then costs one multiplication; what the pool lacks is computed fresh
        (with ``pool``: by the workers). Each pair is used once and dropped.

    Returns
    -------
    EncryptedVector
        With ``summands == 1``.

    Raises
    ------
    KeyMismatchError
        ``randomness`` belongs to another key.
    """
    return _encrypt(public_key, x, spec, pool, noise, opened=False, randomness=randomness)[0]


def encrypt_vector_with_openings(
    public_key: PublicKey,
    x: npt.ArrayLike,
    spec: PackingSpec,
    *,
    pool: WorkerPool | None = None,
    noise: npt.ArrayLike | None = None,
    randomness: RandomnessPool | None = None,
) -> tuple[EncryptedVector, Openings]:
    """:func:`encrypt_vector` that also returns the :class:`Openings` of its ciphertexts.

    Same parameters, same ciphertext distribution and cost (plus keeping the exponents; with
    ``randomness`` the exponents are the pool's, handed out once and kept only here).
    The openings let the encryptor later prove facts about its own ciphertexts, e.g. that
    every slot is in range (:mod:`fedcity.crypto.rangeproof`).

    Returns
    -------
    (EncryptedVector, Openings)
    """
    vector, openings = _encrypt(
        public_key, x, spec, pool, noise, opened=True, randomness=randomness
    )
    if openings is None:  # pragma: no cover - _encrypt always opens when asked
        raise RuntimeError("encryption returned no openings")
    return vector, openings


def decode_plaintexts(
    spec: PackingSpec, plaintexts: Iterable[int], length: int, summands: int
) -> npt.NDArray[np.float64]:
    """Unpack, range-check and dequantize decrypted plaintexts of a summed vector."""
    return spec.dequantize(spec.unpack([int(m) for m in plaintexts], length, summands), summands)


def decrypt_vector(private_key: PrivateKey, encrypted: EncryptedVector) -> npt.NDArray[np.float64]:
    """Decrypt an encrypted vector with the full private key and decode it to floats.

    Raises
    ------
    KeyMismatchError
        The vector was encrypted under another key.
    SlotRangeError
        A slot is out of its legal range (a malformed contribution); position named.
    """
    if private_key.public_key.n != encrypted.public_key.n:
        raise KeyMismatchError(
            f"vector is under key {encrypted.public_key.key_id.hex()[:8]}, private key is "
            f"{private_key.public_key.key_id.hex()[:8]}"
        )
    plaintexts = [private_key.raw_decrypt(c) for c in encrypted.ciphertexts]
    return decode_plaintexts(encrypted.spec, plaintexts, encrypted.length, encrypted.summands)
