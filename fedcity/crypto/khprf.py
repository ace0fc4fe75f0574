"""An almost key-homomorphic pseudorandom function from Learning With Rounding (prototype).

The PRF of Banerjee, Peikert and Rosen (EUROCRYPT 2012) in the random-oracle form that Boneh,
Lewi, Montgomery and Raghunathan use for key-homomorphic PRFs (CRYPTO 2013)::

    F_k(x) = ⌊(p/q) · A(x)·k⌉ mod p        A(x) ∈ Z_q^{d×λ},  k ∈ Z_q^λ

``A(x)`` is public: block ``b`` of :data:`BLOCK_ROWS` rows is SHAKE-256 of a domain tag, the
parameter set, the input ``x`` (job and round, :func:`prf_input`) and ``b``. ``q`` and ``p``
are powers of two (at most ``2^32``), so the product wraps in numpy ``uint32`` arithmetic and
rounding is a shift. The function is *almost* key-homomorphic: for keys ``k_1 … k_n``::

    F_{k_1+…+k_n}(x) = F_{k_1}(x) + … + F_{k_n}(x) + e  (mod p),   |e| ≤ ⌊n/2⌋ per coordinate

because each rounding is off by less than one half. :mod:`fedcity.core.masked` uses it to mask
model updates so that only the sum of the keys (``λ`` integers, independent of the model size)
has to be encrypted and decrypted under threshold Paillier.

The Paillier side lives here too (this package is the only place that handles big integers):
:func:`key_packing_spec`, :func:`encrypt_key` pack a key's ``λ`` integers exactly (no float
quantization) into Paillier plaintexts with headroom for ``max_summands`` keys;
:func:`combine_key_sum` and :func:`decrypt_key_sum` return the key sum mod ``q``.

Security (taken from the literature, **not re-estimated here**): :class:`LWRParams` documents
each parameter set. The argument is the usual heuristic that LWR with moduli ``q > p`` is at
least as hard as LWE with the same secret dimension and a uniform error of width ``q/p``
(standard deviation ``σ = (q/p)/√12``), as in the security analyses of Saber and of
LWR-based secure aggregation, together with the 128-bit classical bounds of the
Homomorphic Encryption Security Standard (Albrecht et al., HomomorphicEncryption.org, 2018,
Table 1, computed with the LWE estimator for ``σ ≈ 3.19``: uniform secret, ``λ = 1024`` →
``log₂ q ≤ 29``; ``λ = 2048`` → ``log₂ q ≤ 56``), read as bounds on ``log₂(q/σ)`` (attack
cost depends on ``λ`` and ``q/σ``; another heuristic). Every PRF key is used for one round
only (one input ``x``); see ``docs/trust-model.md``.
"""

from __future__ import annotations

import hashlib
import math
import secrets
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
import numpy.typing as npt

from fedcity.crypto.errors import (
    CryptoError,
    InvalidPartialDecryptionError,
    KeyMismatchError,
    NotEnoughSharesError,
    SpecMismatchError,
)
from fedcity.crypto.keys import PrivateKey, PublicKey
from fedcity.crypto.packing import PackingSpec
from fedcity.crypto.threshold import (
    PartialDecryption,
    ThresholdPublicKey,
    raw_combine,
    verify_partial_decryption,
)
from fedcity.crypto.vector import EncryptedVector

if TYPE_CHECKING:
    from fedcity.crypto.parallel import WorkerPool

__all__ = [
    "BLOCK_ROWS",
    "DEFAULT_PARAMS",
    "LWR_1024",
    "LWR_2048",
    "PARAMETER_SETS",
    "LWRParams",
    "PRFKeyError",
    "add_keys",
    "check_key",
    "combine_key_sum",
    "decrypt_key_sum",
    "encrypt_key",
    "evaluate",
    "expand_matrix",
    "generate_key",
    "key_packing_spec",
    "prf_input",
]

BLOCK_ROWS = 1024
"""Rows of ``A(x)`` expanded per SHAKE-256 call (4 MiB at ``λ = 1024``): bounded memory."""

MAX_LENGTH = 1 << 26
"""Most PRF outputs one evaluation may produce (64 Mi values)."""

_MATRIX_DOMAIN = b"fedcity.v1.khprf.matrix"
_INPUT_DOMAIN = b"fedcity.v1.khprf.input"
_HE_STANDARD_SIGMA = 8.0 / math.sqrt(2.0 * math.pi)  # ≈ 3.19, the table's error width


class PRFKeyError(CryptoError):
    """A PRF key, input or parameter set that does not fit (shape, dtype, range or modulus)."""


@dataclass(frozen=True)
class LWRParams:
    """One LWR parameter set of the key-homomorphic PRF.

    Attributes
    ----------
    name : str
        Identifier, hashed into the expansion of ``A(x)``.
    dimension : int
        ``λ``: key length (LWR secret dimension).
    log_q : int
        ``q = 2^log_q`` (key and matrix modulus), ``log_p < log_q <= 32``.
    log_p : int
        ``p = 2^log_p`` (output modulus: the masked values live in ``Z_p``).
    table_log_q : int
        The 128-bit classical bound on ``log₂ q`` for this ``λ`` (uniform secret) in the
        Homomorphic Encryption Security Standard, Table 1 (σ ≈ 3.19).
    """

    name: str
    dimension: int
    log_q: int
    log_p: int
    table_log_q: int

    def __post_init__(self) -> None:
        if not isinstance(self.dimension, int) or not 1 <= self.dimension <= 1 << 16:
            raise PRFKeyError(f"dimension must be an integer in [1, 65536], got {self.dimension!r}")
        if not isinstance(self.log_q, int) or not 2 <= self.log_q <= 32:
            raise PRFKeyError(f"log_q must be an integer in [2, 32], got {self.log_q!r}")
        if not isinstance(self.log_p, int) or not 1 <= self.log_p < self.log_q:
            raise PRFKeyError(
                f"log_p must be an integer in [1, log_q={self.log_q}), got {self.log_p!r}"
            )

    @property
    def q(self) -> int:
        """Key modulus ``q``."""
        return 1 << self.log_q

    @property
    def p(self) -> int:
        """Output modulus ``p``."""
        return 1 << self.log_p

    @property
    def rounding_sigma(self) -> float:
        """Standard deviation of the rounding error, uniform of width ``q/p``: ``(q/p)/√12``."""
        return (1 << (self.log_q - self.log_p)) / math.sqrt(12.0)

    @property
    def log_q_over_sigma(self) -> float:
        """``log₂(q/σ)`` of the LWE instance the heuristic maps this LWR instance to."""
        return self.log_q - math.log2(self.rounding_sigma)

    @property
    def table_log_q_over_sigma(self) -> float:
        """The table's bound as ``log₂(q/σ)`` with its ``σ ≈ 3.19``."""
        return self.table_log_q - math.log2(_HE_STANDARD_SIGMA)

    @property
    def margin_bits(self) -> float:
        """How far (bits of ``q/σ``) this set stays below the table's 128-bit bound."""
        return self.table_log_q_over_sigma - self.log_q_over_sigma


LWR_1024 = LWRParams("lwr-1024-q32-p24", dimension=1024, log_q=32, log_p=24, table_log_q=29)
"""``λ = 1024``, ``q = 2^32``, ``p = 2^24``: σ ≈ 73.9, ``log₂(q/σ)`` ≈ 25.8 against the table's
27.3 for 128-bit classical security at ``λ = 1024`` (margin ≈ 1.5 bits). Keys are 1024 × 32 bits.
"""

LWR_2048 = LWRParams("lwr-2048-q32-p28", dimension=2048, log_q=32, log_p=28, table_log_q=56)
"""``λ = 2048``, ``q = 2^32``, ``p = 2^28``: σ ≈ 4.6, ``log₂(q/σ)`` ≈ 29.8 against the table's
54.3 at ``λ = 2048`` (wide margin; the extra dimension buys 4 bits of plaintext room in ``p``).
"""

PARAMETER_SETS: Mapping[str, LWRParams] = {s.name: s for s in (LWR_1024, LWR_2048)}
DEFAULT_PARAMS = LWR_1024


def _u32(params: LWRParams, x: npt.NDArray[np.uint32]) -> npt.NDArray[np.uint32]:
    if params.log_q < 32:
        return x & np.uint32(params.q - 1)
    return x


def prf_input(job: str, round_index: int) -> bytes:
    """The PRF input ``x`` of one round of one job (length-prefixed, domain-separated).

    Raises
    ------
    PRFKeyError
        ``job`` is not a non-empty string of at most 256 UTF-8 bytes, or ``round_index`` is
        not an integer in ``[0, 2^63)``.
    """
    if not isinstance(job, str) or not job:
        raise PRFKeyError(f"job must be a non-empty string, got {job!r}")
    jb = job.encode()
    if len(jb) > 256:
        raise PRFKeyError(f"job id is {len(jb)} bytes; at most 256")
    if isinstance(round_index, bool) or not isinstance(round_index, int):
        raise PRFKeyError(f"round_index must be an integer, got {round_index!r}")
    if not 0 <= round_index < 1 << 63:
        raise PRFKeyError(f"round_index must lie in [0, 2^63), got {round_index}")
    return _INPUT_DOMAIN + len(jb).to_bytes(2, "big") + jb + round_index.to_bytes(8, "big")


def expand_matrix(params: LWRParams, x: bytes, block: int, rows: int) -> npt.NDArray[np.uint32]:
    """Rows ``block·BLOCK_ROWS … block·BLOCK_ROWS + rows - 1`` of the public matrix ``A(x)``.

    SHAKE-256 of ``domain ‖ name ‖ |x| ‖ x ‖ block``, read as little-endian ``uint32`` and
    reduced mod ``q``; shape ``(rows, λ)``.
    """
    if not isinstance(x, bytes) or not x:
        raise PRFKeyError("the PRF input must be non-empty bytes")
    if not 0 <= block < 1 << 32 or not 1 <= rows <= BLOCK_ROWS:
        raise PRFKeyError(f"block {block} / rows {rows} out of range (rows ≤ {BLOCK_ROWS})")
    h = hashlib.shake_256(_MATRIX_DOMAIN)
    h.update(params.name.encode() + b"\x00")
    h.update(len(x).to_bytes(4, "big") + x + block.to_bytes(4, "big"))
    raw = h.digest(4 * rows * params.dimension)
    a: npt.NDArray[np.uint32] = np.frombuffer(raw, dtype="<u4").reshape(rows, params.dimension)
    return _u32(params, a)  # read-only view of the digest when q = 2^32 (no copy)


def check_key(
    params: LWRParams, key: npt.ArrayLike, *, what: str = "key"
) -> npt.NDArray[np.uint32]:
    """Return ``key`` as ``uint32`` after checking its shape, dtype and range ``[0, q)``."""
    arr = np.asarray(key)
    if arr.shape != (params.dimension,):
        raise PRFKeyError(
            f"{what} has shape {arr.shape}; the parameter set {params.name} needs "
            f"({params.dimension},)"
        )
    if not np.issubdtype(arr.dtype, np.integer):
        raise PRFKeyError(f"{what} must hold integers, got dtype {arr.dtype}")
    if arr.size and (int(arr.min()) < 0 or int(arr.max()) >= params.q):
        raise PRFKeyError(f"{what} entries must lie in [0, q=2^{params.log_q})")
    return arr.astype(np.uint32)


def generate_key(params: LWRParams = DEFAULT_PARAMS) -> npt.NDArray[np.uint32]:
    """A fresh uniform key in ``Z_q^λ`` from the operating system's CSPRNG."""
    raw = secrets.token_bytes(4 * params.dimension)
    return _u32(params, np.frombuffer(raw, dtype="<u4").astype(np.uint32))


def add_keys(params: LWRParams, keys: Sequence[npt.ArrayLike]) -> npt.NDArray[np.uint32]:
    """``Σ keys mod q``."""
    if not keys:
        raise PRFKeyError("add_keys needs at least one key")
    acc = np.zeros(params.dimension, dtype=np.uint32)
    for i, k in enumerate(keys):
        acc = acc + check_key(params, k, what=f"key {i}")  # wraps mod 2^32
    return _u32(params, acc)


def evaluate(
    params: LWRParams, key: npt.ArrayLike, x: bytes, length: int
) -> npt.NDArray[np.uint32]:
    """``F_k(x)``: ``length`` values in ``[0, p)``, computed block by block.

    Raises
    ------
    PRFKeyError
        The key has the wrong shape, dtype or range, or ``length`` is outside
        ``[0, MAX_LENGTH]``.
    """
    k = check_key(params, key)
    if isinstance(length, bool) or not isinstance(length, int) or not 0 <= length <= MAX_LENGTH:
        raise PRFKeyError(f"length must be an integer in [0, {MAX_LENGTH}], got {length!r}")
    shift = params.log_q - params.log_p
    half = np.uint32(1 << (shift - 1))
    out = np.empty(length, dtype=np.uint32)
    for block, start in enumerate(range(0, length, BLOCK_ROWS)):
        rows = min(BLOCK_ROWS, length - start)
        a = expand_matrix(params, x, block, rows)
        z = a @ k  # uint32 matmul wraps mod 2^32, a multiple of q
        out[start : start + rows] = _u32(params, z + half) >> np.uint32(shift)
    return out


# -- the keys under Paillier ---------------------------------------------------------------
def key_packing_spec(params: LWRParams, max_summands: int, n_length: int) -> PackingSpec:
    """The exact-integer layout of keys: ``log_q``-bit values with headroom for the sum.

    Only the slot layout of the returned :class:`PackingSpec` is used (``pack``/``unpack``),
    never its float quantization.
    """
    return PackingSpec(
        clip=1.0, precision_bits=params.log_q, max_summands=max_summands, n_length=n_length
    )


def encrypt_key(
    public_key: PublicKey,
    params: LWRParams,
    key: npt.ArrayLike,
    max_summands: int,
    *,
    pool: WorkerPool | None = None,
) -> EncryptedVector:
    """Encrypt a PRF key exactly: its ``λ`` integers packed into Paillier plaintexts.

    Returns
    -------
    EncryptedVector
        Length ``λ``, one summand, in the :func:`key_packing_spec` layout; encrypted keys add
        with ``+``/``sum`` up to ``max_summands`` of them.
    """
    k = check_key(params, key)
    spec = key_packing_spec(params, max_summands, public_key.n_length)
    plaintexts = spec.pack(k.astype(np.uint64))
    if pool is not None:
        cts = pool.raw_encrypt_many(public_key, plaintexts)
    else:
        cts = [public_key._raw_encrypt(m) for m in plaintexts]
    return EncryptedVector(public_key, spec, params.dimension, 1, cts, validate=False)


def _check_key_vector(params: LWRParams, encrypted: EncryptedVector) -> None:
    spec = encrypted.spec
    if encrypted.length != params.dimension or spec.precision_bits != params.log_q:
        raise SpecMismatchError(
            f"encrypted vector (length {encrypted.length}, {spec.precision_bits}-bit slots) "
            f"is not a key of {params.name}"
        )


def _key_sum(
    params: LWRParams, encrypted: EncryptedVector, plaintexts: Sequence[int]
) -> npt.NDArray[np.uint32]:
    slots = encrypted.spec.unpack(
        [int(m) for m in plaintexts], params.dimension, encrypted.summands
    )
    return (slots & np.uint64(params.q - 1)).astype(np.uint32)


def decrypt_key_sum(
    private_key: PrivateKey, params: LWRParams, encrypted: EncryptedVector
) -> npt.NDArray[np.uint32]:
    """Decrypt a sum of encrypted keys with the full private key; returns ``Σ k_i mod q``."""
    _check_key_vector(params, encrypted)
    if private_key.public_key.n != encrypted.public_key.n:
        raise KeyMismatchError("the encrypted keys are under another Paillier key")
    return _key_sum(params, encrypted, [private_key.raw_decrypt(c) for c in encrypted.ciphertexts])


def combine_key_sum(
    tpk: ThresholdPublicKey,
    params: LWRParams,
    encrypted: EncryptedVector,
    partials: Sequence[PartialDecryption],
) -> npt.NDArray[np.uint32]:
    """Verify ``t`` partial decryptions of a key sum, combine them, return ``Σ k_i mod q``.

    Raises
    ------
    InvalidPartialDecryptionError
        A partial decryption fails its proof or a share appears twice (shares named).
    NotEnoughSharesError
        Fewer than ``t`` partial decryptions.
    SlotRangeError
        A slot of the combined plaintext is out of range (malformed encrypted key).
    """
    _check_key_vector(params, encrypted)
    if encrypted.public_key.key_id != tpk.key_id:
        raise KeyMismatchError("the encrypted keys are not under this threshold key")
    indices = [p.share_index for p in partials]
    dup = sorted({i for i in indices if indices.count(i) > 1})
    if dup:
        raise InvalidPartialDecryptionError(
            f"share(s) {dup} appear more than once", share_indices=tuple(dup)
        )
    if len(partials) < tpk.threshold:
        raise NotEnoughSharesError(
            f"{len(partials)} partial decryption(s) given, the key needs t={tpk.threshold}"
        )
    bad = [p.share_index for p in partials if not verify_partial_decryption(tpk, encrypted, p)]
    if bad:
        raise InvalidPartialDecryptionError(
            f"partial decryption(s) from share(s) {bad} failed verification",
            share_indices=tuple(bad),
        )
    chosen = {p.share_index: p.partials for p in partials[: tpk.threshold]}
    return _key_sum(params, encrypted, raw_combine(tpk, chosen))
