"""t-of-n threshold Paillier with a trusted dealer (Shoup / Damgård–Jurik, s = 1).

The dealer draws ``n = pq`` from safe primes ``p = 2p'+1``, ``q = 2q'+1``, sets ``m = p'q'``
and the secret exponent ``d`` with ``d ≡ 0 (mod m)``, ``d ≡ 1 (mod n)``, and Shamir-shares
``d`` over ``Z_{nm}`` with a random polynomial of degree ``t - 1``. Share ``i`` is
``s_i = f(i)``; its public verification key is ``v_i = v^(Δ·s_i)`` with ``Δ = parties!``.

Partial decryption of ``c`` by share ``i`` is ``c_i = c^(2Δ s_i) mod n²``. Any ``t`` partial
decryptions combine with integer Lagrange coefficients ``μ_i = Δ·λ_i`` into
``c^(4Δ² d) = 1 + 4Δ²·M·n`` from which ``M`` is read off. Fewer than ``t`` shares leave ``d``
information-theoretically hidden.

Each :class:`PartialDecryption` of a whole vector carries one Fiat–Shamir equality-of-discrete-
log proof. The prover and verifier fold the ciphertexts ``c_j`` and partials ``c_{i,j}`` into
``C = Π c_j^{ρ_j}`` and ``P = Π c_{i,j}^{ρ_j}`` with 128-bit weights ``ρ_j`` hashed from all of
them (a small-exponent batch test), and the proof shows
``log_{C^4}(P^2) = log_v(v_i)``. A wrong partial for any ciphertext fails the proof except
with probability about ``2^-128``, so a cheating or broken share is named and another subset of
``t`` shares can be used.

The dealer returns the shares and never writes ``p``, ``q`` or ``d`` anywhere.

Share size (why the partial-decryption exponent is not shorter)
---------------------------------------------------------------
A partial decryption raises a ``2·|n|``-bit modulus to ``2Δ s_i``: ``|nm| + |2Δ|`` bits
(4,094 + 23 = 4,117 bits for a 2048-bit key and ``parties = 10``). The share ``s_i`` is a
point of a polynomial over ``Z_{nm}``, as in Damgård and Jurik, "A generalisation, a
simplification and some applications of Paillier's probabilistic public-key system", PKC
2001, §4 (``s = 1``), and Fouque, Poupard and Stern, "Sharing decryption in the context of
voting or lotteries", FC 2000. It cannot be shortened within these schemes:

* the exponent acts on ``Z*_{n²}``, whose squares form a group of order ``nm``; a share
  reduced modulo anything smaller than ``nm`` would require the holder to know ``m`` (the
  factorisation), and a share that is not uniform in ``Z_{nm}`` no longer hides ``d``
  perfectly against ``t - 1`` holders;
* the statistically hiding alternative (integer Shamir sharing over ``Z``, as in Shoup's
  RSA scheme carried to Paillier, or Damgård–Thorbek / Rabin integer sharing) makes shares
  *longer* (``|d| + log₂(Δ) + κ`` bits plus the interpolation growth), never shorter;
* the only removable bits are the factor ``2Δ`` (23 bits of 4,117: 0.6 %), which could move
  to the combiner; the verification keys and proofs are built on ``Δ s_i``, so that change
  would cost a new key format for a 0.6 % gain, and is not made.

The decryptor-side savings therefore come from decrypting fewer ciphertexts
(:func:`split_parts`: disjoint groups of ``t`` holders each decrypt one part), from worker
processes (:class:`~fedcity.crypto.parallel.WorkerPool`), and optionally from skipping the
proof (``prove=False``; see :func:`raw_combine` for what the combiner can then still check).
"""

from __future__ import annotations

import hashlib
import math
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import gmpy2
import numpy as np
import numpy.typing as npt
from gmpy2 import mpz

from fedcity.crypto import _numbers as nt
from fedcity.crypto.errors import (
    InvalidPartialDecryptionError,
    KeyFileError,
    KeyMismatchError,
    NotEnoughSharesError,
)
from fedcity.crypto.fixedbase import FixedBaseTable
from fedcity.crypto.keys import (
    KeyKind,
    PublicKey,
    _expect_format,
    _hex,
    _unhex,
    read_json_file,
    write_json_file,
)
from fedcity.crypto.vector import EncryptedVector, decode_plaintexts

if TYPE_CHECKING:
    from fedcity.crypto.parallel import WorkerPool

__all__ = [
    "KeyShare",
    "PartialDecryption",
    "ThresholdPublicKey",
    "combine_partial_decryptions",
    "deal_threshold_key",
    "partial_decrypt",
    "prove_partial_decryption",
    "raw_combine",
    "split_parts",
    "vector_part",
    "verify_partial_decryption",
]

_BATCH_WEIGHT_BITS = 128
_CHALLENGE_BITS = 256
_ZK_SLACK_BITS = 128
_ZERO = mpz(0)


@dataclass(frozen=True, eq=False)
class ThresholdPublicKey:
    """The public half of a threshold key: the Paillier key and the verification keys.

    Attributes
    ----------
    public_key : PublicKey
    threshold : int
        ``t``, partial decryptions needed.
    parties : int
        ``n``, shares dealt; share indices are ``1..parties``.
    verification_base : gmpy2.mpz
        ``v``, a random square of ``Z*_{n²}``.
    verification_keys : tuple of gmpy2.mpz
        ``v_i = v^(Δ s_i)`` for share ``i`` at position ``i - 1``.
    """

    public_key: PublicKey
    threshold: int
    parties: int
    verification_base: mpz
    verification_keys: tuple[mpz, ...]

    def __post_init__(self) -> None:
        if not 1 <= self.threshold <= self.parties:
            raise ValueError(
                f"threshold must lie in [1, parties={self.parties}], got {self.threshold}"
            )
        if len(self.verification_keys) != self.parties:
            raise ValueError(
                f"{len(self.verification_keys)} verification keys for {self.parties} parties"
            )
        self.public_key.check_ciphertext(self.verification_base)
        for i, v in enumerate(self.verification_keys, start=1):
            self.public_key.check_ciphertext(v, position=i)

    @property
    def delta(self) -> int:
        """``Δ = parties!``."""
        return math.factorial(self.parties)

    @property
    def key_id(self) -> bytes:
        """The key id of the underlying Paillier key."""
        return self.public_key.key_id

    def __repr__(self) -> str:
        return (
            f"<ThresholdPublicKey {self.key_id.hex()} {self.threshold}-of-{self.parties} "
            f"n_length={self.public_key.n_length}>"
        )

    def to_json_dict(self) -> dict[str, Any]:
        """Return the documented JSON form."""
        return {
            **self.public_key.to_json_dict(),
            "format": "fedcity.paillier.threshold-public-key",
            "threshold": self.threshold,
            "parties": self.parties,
            "verification_base": _hex(self.verification_base),
            "verification_keys": [_hex(v) for v in self.verification_keys],
        }

    @classmethod
    def from_json_dict(cls, data: dict[str, Any]) -> ThresholdPublicKey:
        """Inverse of :meth:`to_json_dict`."""
        _expect_format(data, "fedcity.paillier.threshold-public-key")
        public = PublicKey.from_json_dict({**data, "format": "fedcity.paillier.public-key"})
        try:
            vkeys = data["verification_keys"]
            if not isinstance(vkeys, list):
                raise KeyFileError("verification_keys must be a list")
            return cls(
                public,
                int(data["threshold"]),
                int(data["parties"]),
                _unhex(data, "verification_base"),
                tuple(_unhex({"v": v}, "v") for v in vkeys),
            )
        except KeyError as exc:
            raise KeyFileError(f"threshold public key file lacks field {exc}") from exc
        except (TypeError, ValueError) as exc:
            raise KeyFileError(f"invalid threshold public key: {exc}") from exc

    def save(self, path: str | os.PathLike[str]) -> None:
        """Write the public key file (mode 0644); never overwrites."""
        write_json_file(path, self.to_json_dict(), secret=False)

    @classmethod
    def load(cls, path: str | os.PathLike[str]) -> ThresholdPublicKey:
        """Read a file written by :meth:`save`."""
        return cls.from_json_dict(read_json_file(path))


class KeyShare:
    """One agency's share ``s_i`` of the threshold secret.

    The ``repr`` names the key and index only, never the share.
    """

    __slots__ = ("_exponent", "_s", "index", "threshold_key")

    def __init__(self, threshold_key: ThresholdPublicKey, index: int, s: int | mpz) -> None:
        if not 1 <= index <= threshold_key.parties:
            raise ValueError(f"share index must lie in [1, {threshold_key.parties}], got {index}")
        self.threshold_key = threshold_key
        self.index = index
        self._s = mpz(s)
        self._exponent = 2 * threshold_key.delta * self._s
        pk = threshold_key.public_key
        expected = threshold_key.verification_keys[index - 1]
        if (
            gmpy2.powmod(threshold_key.verification_base, threshold_key.delta * self._s, pk.nsquare)
            != expected
        ):
            raise ValueError(f"share {index} does not match its verification key")

    def __repr__(self) -> str:
        tk = self.threshold_key
        return f"<KeyShare {self.index}/{tk.parties} of {tk.key_id.hex()} (t={tk.threshold})>"

    def raw_partial_decrypt(self, ciphertext: int | mpz) -> mpz:
        """Return ``c^(2Δ s_i) mod n²`` for one bare ciphertext, without proof."""
        pk = self.threshold_key.public_key
        return gmpy2.powmod(pk.check_ciphertext(ciphertext), self._exponent, pk.nsquare)

    def to_json_dict(self) -> dict[str, Any]:
        """Return the documented JSON form: the public key plus this share."""
        return {
            "format": "fedcity.paillier.key-share",
            "version": 1,
            "key_id": self.threshold_key.key_id.hex(),
            "index": self.index,
            "share": _hex(self._s),
            "threshold_public_key": self.threshold_key.to_json_dict(),
        }

    @classmethod
    def from_json_dict(cls, data: dict[str, Any]) -> KeyShare:
        """Inverse of :meth:`to_json_dict`; checks the share against its verification key."""
        _expect_format(data, "fedcity.paillier.key-share")
        tpk_data = data.get("threshold_public_key")
        if not isinstance(tpk_data, dict):
            raise KeyFileError("key share file lacks its threshold_public_key object")
        tpk = ThresholdPublicKey.from_json_dict(tpk_data)
        if data.get("key_id") != tpk.key_id.hex():
            raise KeyFileError("key share file: key_id does not match its public key")
        try:
            return cls(tpk, int(data["index"]), _unhex(data, "share"))
        except KeyError as exc:
            raise KeyFileError(f"key share file lacks field {exc}") from exc
        except (TypeError, ValueError) as exc:
            raise KeyFileError(f"invalid key share: {exc}") from exc

    def save(self, path: str | os.PathLike[str]) -> None:
        """Write the share file with mode 0600; never overwrites."""
        write_json_file(path, self.to_json_dict(), secret=True)

    @classmethod
    def load(cls, path: str | os.PathLike[str]) -> KeyShare:
        """Read a share file written by :meth:`save`."""
        return cls.from_json_dict(read_json_file(path))


def deal_threshold_key(
    n_length: int = 2048, *, threshold: int, parties: int
) -> tuple[ThresholdPublicKey, list[KeyShare]]:
    """Generate a threshold Paillier key and deal ``parties`` shares of it.

    Parameters
    ----------
    n_length : int, default 2048
        Bits of the modulus (two safe primes of ``n_length / 2`` bits).
    threshold : int
        ``t``: how many shares must cooperate to decrypt; ``1 <= t <= parties``.
    parties : int
        ``n``: how many shares to deal (one per agency).

    Returns
    -------
    (ThresholdPublicKey, list of KeyShare)
        Share ``i`` (1-based) is at position ``i - 1``. The factorisation and the full
        secret exist only inside this call.
    """
    if not isinstance(parties, int) or parties < 1:
        raise ValueError(f"parties must be a positive integer, got {parties!r}")
    if not isinstance(threshold, int) or not 1 <= threshold <= parties:
        raise ValueError(f"threshold must be an integer in [1, {parties}], got {threshold!r}")
    if n_length < 256 or n_length % 16:
        raise ValueError(f"n_length must be a multiple of 16 and >= 256, got {n_length}")
    half = n_length // 2
    while True:
        p, q = nt.random_safe_prime(half), nt.random_safe_prime(half)
        n = p * q
        if p != q and n.bit_length() == n_length:
            break
    m = ((p - 1) // 2) * ((q - 1) // 2)
    nm = n * m
    nsq = n * n
    d = m * gmpy2.invert(m, n) % nm  # d = 0 mod m, d = 1 mod n
    coeffs = [d] + [nt.random_below(nm) for _ in range(threshold - 1)]
    shares = []
    for i in range(1, parties + 1):
        acc = mpz(0)
        for a in reversed(coeffs):
            acc = (acc * i + a) % nm
        shares.append(acc)
    delta = math.factorial(parties)
    r = nt.random_unit(nsq)
    v = r * r % nsq
    vkeys = tuple(gmpy2.powmod(v, delta * s, nsq) for s in shares)
    x = nt.random_unit(n)
    public = PublicKey(n, djn_base=gmpy2.powmod((-x * x) % n, n, nsq), kind=KeyKind.THRESHOLD)
    tpk = ThresholdPublicKey(public, threshold, parties, v, vkeys)
    key_shares = [KeyShare(tpk, i, s) for i, s in enumerate(shares, start=1)]
    del p, q, m, d, coeffs, shares
    return tpk, key_shares


@dataclass(frozen=True, eq=False)
class PartialDecryption:
    """Share ``share_index``'s partial decryption of one encrypted vector, with its proof.

    Attributes
    ----------
    key_id : bytes
    share_index : int
    vector_digest : bytes
        :meth:`EncryptedVector.digest` of the vector it decrypts.
    partials : tuple of gmpy2.mpz
        ``c_j^(2Δ s_i)`` for each ciphertext ``c_j``.
    challenge : bytes
        Fiat–Shamir challenge ``e`` (32 bytes); empty for a partial sent without proof.
    response : gmpy2.mpz
        ``z = r + e·Δ·s_i``; 0 without proof.
    """

    key_id: bytes
    share_index: int
    vector_digest: bytes
    partials: tuple[mpz, ...]
    challenge: bytes = b""
    response: mpz = _ZERO

    @property
    def proven(self) -> bool:
        """Whether a proof is attached (it may still be invalid: see verification)."""
        return len(self.challenge) == 32


def _batch_weights(
    key_id: bytes, index: int, digest: bytes, partials: Sequence[mpz], width: int
) -> list[int]:
    h = hashlib.sha256(b"fedcity.v1.batch-weights")
    h.update(key_id + index.to_bytes(4, "big") + digest)
    for c in partials:
        h.update(int(c).to_bytes(width, "big"))
    seed = h.digest()
    nb = _BATCH_WEIGHT_BITS // 8
    out = []
    for j in range(len(partials)):
        block = hashlib.sha256(seed + j.to_bytes(8, "big")).digest()[:nb]
        out.append(int.from_bytes(block, "big") | 1)
    return out


def _challenge(items: Sequence[mpz], width: int, context: bytes) -> bytes:
    h = hashlib.sha256(b"fedcity.v1.partial-decryption-proof" + context)
    for x in items:
        h.update(int(x).to_bytes(width, "big"))
    return h.digest()


def _folded(
    tpk: ThresholdPublicKey, index: int, vector: EncryptedVector, partials: Sequence[mpz]
) -> tuple[mpz, mpz, bytes]:
    pk = tpk.public_key
    digest = vector.digest()
    rho = _batch_weights(pk.key_id, index, digest, partials, pk.ciphertext_bytes)
    big_c = nt.multi_pow(vector.ciphertexts, rho, pk.nsquare)
    big_p = nt.multi_pow(partials, rho, pk.nsquare)
    c4 = gmpy2.powmod(big_c, 4, pk.nsquare)
    p2 = big_p * big_p % pk.nsquare
    return c4, p2, digest


def partial_decrypt(
    share: KeyShare,
    vector: EncryptedVector,
    *,
    pool: WorkerPool | None = None,
    prove: bool = True,
) -> PartialDecryption:
    """Partially decrypt every ciphertext of ``vector`` with one share and prove it.

    Cost: one ``2·n_length``-bit exponentiation per ciphertext plus one proof per vector
    (the proof is two multi-exponentiations with 128-bit weights over the ciphertexts and
    two full exponentiations: about 2 % of the partials at 218 ciphertexts). With ``pool``,
    the exponentiations run in worker processes. ``prove=False`` leaves the proof out; it
    can be added later for the same values with :func:`prove_partial_decryption`.
    """
    tpk = share.threshold_key
    pk = tpk.public_key
    if vector.public_key.key_id != pk.key_id:
        raise KeyMismatchError(
            f"vector is under key {vector.public_key.key_id.hex()[:8]}, share {share.index} "
            f"belongs to {pk.key_id.hex()[:8]}"
        )
    nsq = pk.nsquare
    if pool is not None:
        partials = tuple(pool.raw_partial_decrypt_many(share, vector.ciphertexts))
    else:
        partials = tuple(gmpy2.powmod(c, share._exponent, nsq) for c in vector.ciphertexts)
    if not prove:
        return PartialDecryption(pk.key_id, share.index, vector.digest(), partials)
    return _prove(share, vector, partials)


def prove_partial_decryption(
    share: KeyShare, vector: EncryptedVector, partial: PartialDecryption
) -> PartialDecryption:
    """Attach the proof to a partial decryption sent without one (the second exchange).

    Only the proof is computed (no exponentiation per ciphertext). Values that are not this
    share's honest partials of ``vector`` give a proof that fails verification.

    Raises
    ------
    ValueError
        ``partial`` is of another share, key, or vector.
    """
    pk = share.threshold_key.public_key
    if (
        partial.share_index != share.index
        or partial.key_id != pk.key_id
        or partial.vector_digest != vector.digest()
        or len(partial.partials) != len(vector.ciphertexts)
    ):
        raise ValueError(
            f"partial decryption of share {partial.share_index} does not belong to share "
            f"{share.index} and this vector ({len(vector.ciphertexts)} ciphertexts)"
        )
    return _prove(share, vector, tuple(partial.partials))


_V_TABLES: dict[bytes, FixedBaseTable] = {}
_V_TABLES_MAX = 4
_V_WINDOW = 4
"""Window of the verification base's table: 16 residues per 4 bits of exponent (about 9 MiB
for a 2048-bit key), a quarter of the work of a generic ``powmod``."""


def _v_pow(tpk: ThresholdPublicKey, exponent: int | mpz) -> mpz:
    """``v^exponent mod n²`` through a cached fixed-base table of the verification base.

    Both the prover (``v^r``) and the verifier (``v^z``) raise the same ``v`` to exponents of
    at most ``_response_bits + 1`` bits; a larger exponent (a malformed response, refused
    before this is called) falls back to ``powmod``.
    """
    nsq = tpk.public_key.nsquare
    bits = _response_bits(tpk) + 1
    if int(exponent).bit_length() > bits:
        return gmpy2.powmod(tpk.verification_base, exponent, nsq)
    key = tpk.key_id + int(tpk.verification_base).to_bytes(tpk.public_key.ciphertext_bytes, "big")
    table = _V_TABLES.get(key)
    if table is None:
        table = FixedBaseTable(tpk.verification_base, nsq, bits, window=_V_WINDOW)
        while len(_V_TABLES) >= _V_TABLES_MAX:
            _V_TABLES.pop(next(iter(_V_TABLES)), None)
        _V_TABLES[key] = table
    return table.pow(exponent)


def _response_bits(tpk: ThresholdPublicKey) -> int:
    """Bits of the prover's randomness r; an honest z = r + e·Δ·s_i has at most one more."""
    nsq_bits = int(tpk.public_key.nsquare.bit_length())
    return nsq_bits + _CHALLENGE_BITS + _ZK_SLACK_BITS + int(tpk.delta.bit_length())


def _prove(
    share: KeyShare, vector: EncryptedVector, partials: tuple[mpz, ...]
) -> PartialDecryption:
    tpk = share.threshold_key
    pk = tpk.public_key
    nsq = pk.nsquare
    c4, p2, digest = _folded(tpk, share.index, vector, partials)
    secret = tpk.delta * share._s
    r = nt.random_bits(_response_bits(tpk))
    a = gmpy2.powmod(c4, r, nsq)
    b = _v_pow(tpk, r)
    vi = tpk.verification_keys[share.index - 1]
    context = pk.key_id + share.index.to_bytes(4, "big") + digest
    e = _challenge([c4, p2, tpk.verification_base, vi, a, b], pk.ciphertext_bytes, context)
    z = r + mpz(int.from_bytes(e, "big")) * secret
    return PartialDecryption(pk.key_id, share.index, digest, partials, e, z)


def verify_partial_decryption(
    tpk: ThresholdPublicKey, vector: EncryptedVector, partial: PartialDecryption
) -> bool:
    """Return whether ``partial`` is share ``partial.share_index``'s honest decryption."""
    pk = tpk.public_key
    nsq = pk.nsquare
    if (
        not partial.proven
        or partial.key_id != pk.key_id
        or not 1 <= partial.share_index <= tpk.parties
        or len(partial.partials) != len(vector.ciphertexts)
        or partial.vector_digest != vector.digest()
        or partial.response < 0
        or partial.response.bit_length() > _response_bits(tpk) + 1
    ):
        return False  # checked before any arithmetic: an oversized proof costs nothing
    for c in partial.partials:
        if not 0 < c < nsq or gmpy2.gcd(c, pk.n) != 1:
            return False
    c4, p2, digest = _folded(tpk, partial.share_index, vector, partial.partials)
    e = mpz(int.from_bytes(partial.challenge, "big"))
    vi = tpk.verification_keys[partial.share_index - 1]
    z = partial.response
    a = gmpy2.powmod(c4, z, nsq) * gmpy2.invert(gmpy2.powmod(p2, e, nsq), nsq) % nsq
    b = _v_pow(tpk, z) * gmpy2.invert(gmpy2.powmod(vi, e, nsq), nsq) % nsq
    context = pk.key_id + partial.share_index.to_bytes(4, "big") + digest
    expected = _challenge([c4, p2, tpk.verification_base, vi, a, b], pk.ciphertext_bytes, context)
    return expected == partial.challenge


def raw_combine(
    tpk: ThresholdPublicKey,
    partials_by_index: Mapping[int, Sequence[mpz]],
    *,
    check: bool = False,
) -> list[mpz]:
    """Combine exactly ``t`` unverified partial decryptions into plaintext integers.

    Low-level: no proofs are checked. Use :func:`combine_partial_decryptions`.

    With ``check``, every combined value ``Π c_i^(μ_i)`` must be ``≡ 1 (mod n)``, as it is
    for honest partials (it equals ``(1+n)^(4Δ²M)``); otherwise
    :class:`InvalidPartialDecryptionError` is raised with no share named (which one is wrong
    takes the proofs). The check is free (one reduction per ciphertext) and catches every
    *accidental* fault: a partial replaced by a value ``x`` not chosen for the purpose passes
    only if ``x^(μ_i) ≡ 1 (mod n)``, i.e. for at most ``gcd(μ_i, p-1)·gcd(μ_i, q-1) ≤ 4`` of
    the ``φ(n)`` residues mod ``n`` (``p'``, ``q'`` are primes far larger than ``μ_i``):
    probability about ``2^-(n_length-2)``.

    It does **not** stop a malicious share holder: a partial multiplied by ``(1+n)^y`` still
    combines to a value ``≡ 1 (mod n)``, with the plaintext shifted by ``y·μ_i/(4Δ²) mod n``
    — any shift the holder likes, e.g. ``+1`` in one slot, which no check on the plaintext's
    layout (zero top bits, headroom bits, a public checksum slot) can tell from an honest
    sum. Only the proofs (or a secret the holder cannot see) detect that.
    """
    if len(partials_by_index) != tpk.threshold:
        raise NotEnoughSharesError(
            f"raw_combine needs exactly t={tpk.threshold} shares, got {len(partials_by_index)}"
        )
    pk = tpk.public_key
    nsq, n = pk.nsquare, pk.n
    delta = tpk.delta
    idx = sorted(partials_by_index)
    mus: dict[int, int] = {}
    for i in idx:
        num, den = delta, 1
        for j in idx:
            if j != i:
                num *= j
                den *= j - i
        mus[i] = 2 * (num // den)  # exact: Δ·λ_i is an integer
    k = len(next(iter(partials_by_index.values())))
    inv_4d2 = gmpy2.invert(4 * delta * delta, n)
    out = []
    for col in range(k):
        acc = mpz(1)
        for i in idx:
            ci = partials_by_index[i][col]
            mu = mus[i]
            term = gmpy2.powmod(ci, abs(mu), nsq)
            if mu < 0:
                term = gmpy2.invert(term, nsq)
            acc = acc * term % nsq
        if check and acc % n != 1:
            raise InvalidPartialDecryptionError(
                f"partial decryptions of shares {idx} do not combine (ciphertext {col} is "
                "not a decryption); one of them is wrong, which one takes the proofs",
                share_indices=(),
            )
        out.append((acc - 1) // n * inv_4d2 % n)
    return out


def split_parts(n_ciphertexts: int, groups: int) -> list[tuple[int, int]]:
    """Split ``n_ciphertexts`` ciphertexts into ``groups`` contiguous near-equal parts.

    Returns ``[(start, stop), ...]``: every ciphertext lies in exactly one part, parts are
    in order and none is empty (fewer parts than ``groups`` when there are fewer
    ciphertexts).
    """
    if isinstance(n_ciphertexts, bool) or not isinstance(n_ciphertexts, int) or n_ciphertexts < 1:
        raise ValueError(f"n_ciphertexts must be a positive integer, got {n_ciphertexts!r}")
    if isinstance(groups, bool) or not isinstance(groups, int) or groups < 1:
        raise ValueError(f"groups must be a positive integer, got {groups!r}")
    g = min(groups, n_ciphertexts)
    base, extra = divmod(n_ciphertexts, g)
    out, start = [], 0
    for p in range(g):
        stop = start + base + (1 if p < extra else 0)
        out.append((start, stop))
        start = stop
    return out


def vector_part(vector: EncryptedVector, start: int, stop: int) -> EncryptedVector:
    """Ciphertexts ``start..stop-1`` of ``vector`` as an encrypted vector of their values.

    Homomorphic addition works ciphertext by ciphertext, so the part of a sum is the sum of
    the parts: ``vector_part(a + b) == vector_part(a) + vector_part(b)``. A part carries the
    values ``start·S .. min(stop·S, length) - 1`` (``S`` slots per ciphertext), the
    vector's packing spec and summands.
    """
    k = len(vector.ciphertexts)
    if not 0 <= start < stop <= k:
        raise ValueError(f"part [{start}, {stop}) is not a non-empty range of {k} ciphertexts")
    slots = vector.spec.slots_per_ciphertext
    length = min(stop * slots, vector.length) - start * slots
    return EncryptedVector(
        vector.public_key,
        vector.spec,
        length,
        vector.summands,
        vector.ciphertexts[start:stop],
        validate=False,
    )


def combine_partial_decryptions(
    tpk: ThresholdPublicKey,
    vector: EncryptedVector,
    partials: Sequence[PartialDecryption],
    *,
    skip_invalid: bool = False,
) -> npt.NDArray[np.float64]:
    """Verify partial decryptions of ``vector``, combine ``t`` of them and decode to floats.

    Parameters
    ----------
    tpk : ThresholdPublicKey
    vector : EncryptedVector
        The aggregate that was partially decrypted.
    partials : sequence of PartialDecryption
        From distinct shares.
    skip_invalid : bool, default False
        If False, any invalid partial raises. If True, invalid ones are set aside and any
        ``t`` valid ones are used.

    Raises
    ------
    InvalidPartialDecryptionError
        A partial failed its proof (``share_indices`` names it); with ``skip_invalid``,
        only when fewer than ``t`` valid ones remain.
    NotEnoughSharesError
        Fewer than ``t`` distinct partial decryptions.
    SlotRangeError
        The combined plaintext has a slot outside its legal range.
    """
    if vector.public_key.key_id != tpk.key_id:
        raise KeyMismatchError("vector and threshold key differ")
    seen: set[int] = set()
    for p in partials:
        if p.share_index in seen:
            raise InvalidPartialDecryptionError(
                f"share {p.share_index} appears twice", share_indices=(p.share_index,)
            )
        seen.add(p.share_index)
    if len(partials) < tpk.threshold:
        raise NotEnoughSharesError(
            f"{len(partials)} partial decryption(s) given, the key needs t={tpk.threshold}"
        )
    valid: list[PartialDecryption] = []
    invalid: list[int] = []
    for p in partials:
        if len(valid) == tpk.threshold and skip_invalid:
            break
        if verify_partial_decryption(tpk, vector, p):
            valid.append(p)
        else:
            invalid.append(p.share_index)
    if invalid and (not skip_invalid or len(valid) < tpk.threshold):
        raise InvalidPartialDecryptionError(
            f"partial decryption(s) from share(s) {', '.join(map(str, invalid))} failed "
            f"verification; {len(valid)} valid of t={tpk.threshold} needed",
            share_indices=tuple(invalid),
        )
    chosen = {p.share_index: p.partials for p in valid[: tpk.threshold]}
    plaintexts = raw_combine(tpk, chosen)
    return decode_plaintexts(vector.spec, plaintexts, vector.length, vector.summands)
