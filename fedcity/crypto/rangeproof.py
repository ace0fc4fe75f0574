"""Zero-knowledge proofs that a packed ciphertext holds only in-range slots (culprit search).

When an aggregate decrypts with a slot out of range, every contributor proves, for its own
signed ciphertext ``c`` of that position, that ``c`` encrypts a plaintext laid out as
:class:`SlotLayout` says: value slot ``j`` (bits ``[j·w, (j+1)·w)``) holds an integer in
``[0, upper]`` and every bit above the last value slot is zero. An honest agency can always
prove this; an agency that overflowed cannot, so it is named. Only the attack path runs it.

Notation: ``n`` the modulus, ``g = 1 + n``, ``h = h_s`` the key's DJN base (an ``n``-th residue
of ``Z*_{n²}``), ``c = g^m · h^a mod n²`` with the prover's DJN exponent ``a`` (kept with
:func:`fedcity.crypto.encrypt_vector_with_openings`). ``λ = 128`` (challenge bits), ``S = 128``
(statistical hiding slack), ``eb`` the key's ``exponent_bits``.

Statement and proof
-------------------
*Bits.* Let ``K = upper.bit_length()`` and the bit weights ``ω_k = 2^k`` for ``k < K-1`` and
``ω_{K-1} = upper - 2^(K-1) + 1``. The sums ``Σ_k b_k ω_k`` over bits ``b_k ∈ {0, 1}`` are
exactly the integers of ``[0, upper]`` (the first ``K-1`` bits give ``[0, 2^(K-1) - 1]``, the
last adds ``[ω_{K-1}, upper]``, and ``ω_{K-1} ≤ 2^(K-1)``; Schoenmakers, "Interval proofs
revisited", 2005). So one set of ``K`` bits per value slot proves the exact range, also when
``upper + 1`` is not a power of two (the weighted top bit replaces a second decomposition of
``upper - x``; same soundness, half the bits and no second link). For
``upper = 2^K - 1`` the weights are plain binary. The prover commits to every bit of every
value slot as ``E_jk = g^{b_jk} · h^{α_jk}`` with fresh ``α_jk`` of ``eb`` bits (an ordinary
DJN encryption of the bit). Padding slots and bits above the last value slot get no bits.

*Bit proofs.* For each ``E`` a Cramer–Damgård–Schoenmakers OR-proof that ``X_0 = E`` or
``X_1 = E·g^{-1}`` is ``h^x`` for a known integer ``x``: a Schnorr proof (commitment
``A_t = h^σ``, response ``z_t = σ + e_t·α``, ``σ`` of ``eb + λ + S`` bits so ``z_t`` hides
``e_t·α`` up to statistical distance ``2^-S``) for the true branch, a simulated one
(``e_u``, ``z_u`` uniform, ``A_u = h^{z_u}·X_u^{-e_u}``) for the other, with
``e_0 + e_1 ≡ e (mod 2^λ)``.

*Link.* The verifier computes ``Y = c · Π_{j,k} E_jk^{-ω_k·2^{w·j}}`` and the prover shows in
zero knowledge (Schnorr, the integer ``a' = a - Σ α_jk·ω_k·2^{w·j}`` is never revealed:
``z_L = σ_L + e·a'`` with ``σ_L`` of ``|a'| + λ + S`` bits; ``a'`` may be negative) that
``Y = h^{a'}``, i.e. that ``Y`` encrypts 0. Then ``Dec(c) ≡ Σ_j x_j·2^{w·j} (mod n)`` with
every ``x_j = Σ_k b_jk·ω_k ∈ [0, upper]``; that integer is below ``2^{w·n_values} < n``, so it
*is* the plaintext: value slots in range, everything else zero.

*Fiat–Shamir.* One challenge ``e`` (``λ`` bits) is SHA-256 of the domain, version, the caller's
``context`` (job, round, agency, key id, ciphertext index, contribution digest — so a proof
does not replay elsewhere), the key (id, ``n``, ``h``, ``eb``), the layout, ``c`` and every
commitment (all ``E``, ``A_0``, ``A_1`` and ``A_L``). The same ``e`` is shared by all
sub-proofs (AND composition); each OR splits it.

Soundness (special soundness, no strong-RSA assumption). From two accepting transcripts with
the same commitments and challenges ``e ≠ e'`` take a branch ``t`` with ``Δe = e_t - e'_t ≠ 0``
(one exists because ``e_0 + e_1 ≡ e``): ``X_t^{Δe} = h^{Δz}`` (an inverse for a negative
exponent), so ``X_t^{Δe}`` is an ``n``-th residue. Write ``X_t = g^μ·r^n``; then
``μ·Δe ≡ 0 (mod n)``, and ``gcd(Δe, n) = 1`` because ``0 < |Δe| < 2^128`` is smaller than both
prime factors of ``n`` (keys of at least 512 bits are required for exactly this). Hence
``μ = 0``: ``E`` encrypts 0 or 1, and likewise ``Y`` encrypts 0. Knowledge: for each bit
exactly one branch has differing challenges (if both did, ``E`` would encrypt both 0 and 1), and
that branch *is* the bit; so the extractor obtains every bit and with the link the plaintext
``m = Σ b_jk·ω_k·2^{w·j}``. The proof is thus a proof of knowledge of the plaintext, bound to
``context`` (an agency that copied someone else's ciphertext cannot make it without knowing
that plaintext); knowledge of the DJN exponent is not claimed. Soundness assumes the
key's ``h_s`` is an ``n``-th residue, which the key ceremony guarantees (the verifier cannot
check it without the factors). The forking lemma turns this into a soundness error of about
``q / 2^128`` for ``q`` hash queries, plus the batch error below.

Zero knowledge (honest verifier, made non-interactive by Fiat–Shamir): the bit commitments are
DJN encryptions (hiding as ciphertexts under the key are); every response is statistically
within ``2^-128`` of the simulator's uniform one; the simulated branches are distributed
exactly as the simulator's. The bytes carry no plaintext, bit, ``α``, ``a`` or ``a'``.

Batch verification. All ``2·N + 1`` Schnorr equations ``h^{z_i} = A_i·X_i^{e_i}`` are checked
at once as ``(h^{Σ ρ_i z_i})² = (Π A_i^{ρ_i} · Π X_i^{ρ_i e_i})²`` with fresh random 64-bit
weights ``ρ_i`` from the OS CSPRNG: one exponentiation of ``h`` and two Pippenger
multi-exponentiations instead of one exponentiation per bit. ``Z*_{n²}`` has elements of
small order (``-1``, and divisors of ``p - 1``), so a wrong equation might be off by such an
element ``τ``. Squaring removes order 2 outright; in general, if a proof passes with
probability above ``2^-64`` then each defect ``D_i = h^{z_i}·(A_i X_i^{e_i})^{-1}`` has
``D_i²`` of order below ``2^64`` (the passing ``ρ_i``, others fixed, form one residue class
modulo that order), so ``D_i^{d_i} = 1`` for some ``d_i < 2^65``. Raising both extracted
equations to ``d_i·d'_i`` gives ``X^{Δe·d_i·d'_i}`` an ``n``-th residue with every prime factor
of the exponent below ``2^128 < min(p, q)``: the conclusion ``μ = 0`` stands. A failing batch is
bisected (halves re-checked with fresh weights, about twice the cost of one batch) to name the
slot and bit, so a forged proof costs the verifier little more than an honest one.

Wire format (version 1, every integer fixed-width big-endian; ``CB = 2·⌈|n|/8⌉``)::

    version (1 byte = 0x01)
    E_i                        N × CB        bit commitments, slot-major (i = j·K + k)
    A_{i,0}, A_{i,1}           N × 2 × CB    OR-proof commitments
    A_L                        CB            link commitment
    e_{i,0}                    N × 16        branch-0 challenges (e_{i,1} = e - e_{i,0} mod 2^128)
    z_{i,0}, z_{i,1}           N × 2 × ZB    responses, each < 2^(eb + λ + S + 1)
    z_L + 2^(LB + λ)           ZLB           link response, offset to be non-negative

with ``N = n_values·K``, ``LB = eb + w·n_values`` (a bound on ``|a'|``). The length is fixed by
the key and layout (:func:`max_proof_bytes`); :func:`verify_slot_ranges` checks it before any
arithmetic. About 1.9 KB per proven bit at 2048-bit keys (3.2 MB for a FedAvg ciphertext at
22-bit precision; see ``docs/benchmarks.md``).
"""

from __future__ import annotations

import hashlib
import secrets
from collections.abc import Sequence
from dataclasses import dataclass
from functools import lru_cache

import gmpy2
from gmpy2 import mpz

from fedcity.crypto import _numbers as nt
from fedcity.crypto.errors import CryptoError, MalformedCiphertextError
from fedcity.crypto.fixedbase import FixedBaseTable
from fedcity.crypto.keys import PublicKey
from fedcity.crypto.packing import PackingSpec
from fedcity.crypto.threshold import ThresholdPublicKey

__all__ = [
    "MAX_CONTEXT_BYTES",
    "RangeProofError",
    "SlotLayout",
    "max_proof_bytes",
    "prove_slot_ranges",
    "verify_slot_ranges",
]

VERSION = 1
MAX_CONTEXT_BYTES = 4096
"""Largest ``context`` accepted (it is hashed, never stored in the proof)."""
MIN_N_LENGTH = 512
"""Smallest modulus for range proofs: both primes must exceed the 2^128 challenge space."""

_LAMBDA = 128  # challenge bits
_SLACK = 128  # statistical hiding of responses
_WEIGHT_BITS = 64  # batch-verification weights
_E_BYTES = _LAMBDA // 8
_E_MOD = 1 << _LAMBDA
_DOMAIN = b"fedcity.v1.range-proof"


class RangeProofError(CryptoError):
    """A range proof cannot be made (false statement, bad opening) or does not verify."""


@dataclass(frozen=True)
class SlotLayout:
    """What one packed plaintext must look like.

    Parameters
    ----------
    slot_bits : int
        ``w``: bits per slot; slot ``j`` is bits ``[j·w, (j+1)·w)`` (slot 0 lowest).
    n_values : int
        Slots carrying values; every bit above slot ``n_values - 1`` must be 0.
    upper : int
        Each value slot lies in ``[0, upper]`` (inclusive); ``upper < 2^slot_bits``.
    """

    slot_bits: int
    n_values: int
    upper: int

    def __post_init__(self) -> None:
        for name in ("slot_bits", "n_values", "upper"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int):
                raise RangeProofError(f"SlotLayout.{name} must be an int, got {v!r}")
        if self.slot_bits < 1:
            raise RangeProofError(f"slot_bits must be positive, got {self.slot_bits}")
        if self.n_values < 1:
            raise RangeProofError(f"n_values must be positive, got {self.n_values}")
        if not 0 <= self.upper < 1 << self.slot_bits:
            raise RangeProofError(
                f"upper must lie in [0, 2^{self.slot_bits}) for {self.slot_bits}-bit slots, "
                f"got {self.upper}"
            )

    @classmethod
    def for_contribution(cls, spec: PackingSpec, length: int, index: int) -> SlotLayout:
        """Layout of ciphertext ``index`` of one agency's contribution of ``length`` values.

        Value slots hold one summand's stored values, ``[0, spec.summand_max]``; the last
        ciphertext has fewer value slots (the rest is padding).
        """
        s = spec.slots_per_ciphertext
        if not 0 <= index < spec.n_ciphertexts(length):
            raise RangeProofError(
                f"ciphertext index {index} outside [0, {spec.n_ciphertexts(length)}) for "
                f"{length} values"
            )
        return cls(spec.slot_bits, min(s, length - index * s), spec.summand_max)

    @property
    def bits_per_slot(self) -> int:
        """``K``: committed bits per value slot."""
        return self.upper.bit_length()

    def weights(self) -> list[int]:
        """Bit weights ``ω_k``: binary, the top one reduced so the sums are exactly [0, upper]."""
        k = self.bits_per_slot
        if k == 0:
            return []
        return [1 << i for i in range(k - 1)] + [self.upper - (1 << (k - 1)) + 1]


@dataclass(frozen=True)
class _Dims:
    """Sizes of a proof for one key and layout."""

    n_bits: int  # N: committed bits
    cb: int  # bytes of an element of Z*_{n^2}
    sigma_bits: int  # bit-proof masks
    zb: int  # bytes of a bit response
    link_bits: int  # LB: bound on |a'|
    link_sigma_bits: int
    zlb: int  # bytes of the link response (offset)

    @property
    def total(self) -> int:
        return (
            1
            + self.n_bits * 3 * self.cb
            + self.cb
            + self.n_bits * _E_BYTES
            + self.n_bits * 2 * self.zb
            + self.zlb
        )


def _unwrap(public_key: PublicKey | ThresholdPublicKey) -> PublicKey:
    if isinstance(public_key, ThresholdPublicKey):
        return public_key.public_key
    if isinstance(public_key, PublicKey):
        return public_key
    raise TypeError(f"expected a PublicKey or ThresholdPublicKey, got {type(public_key).__name__}")


def _dims(pk: PublicKey, layout: SlotLayout) -> _Dims:
    if not isinstance(layout, SlotLayout):
        raise TypeError(f"layout must be a SlotLayout, got {type(layout).__name__}")
    if pk.n_length < MIN_N_LENGTH:
        raise RangeProofError(
            f"range proofs need keys of at least {MIN_N_LENGTH} bits (both primes above the "
            f"2^{_LAMBDA} challenges), got {pk.n_length}"
        )
    if layout.slot_bits * layout.n_values > pk.n_length - 1:
        raise RangeProofError(
            f"{layout.n_values} slots of {layout.slot_bits} bits exceed the "
            f"{pk.n_length - 1} plaintext bits of a {pk.n_length}-bit key"
        )
    eb = pk.exponent_bits
    sigma_bits = eb + _LAMBDA + _SLACK
    link_bits = eb + layout.slot_bits * layout.n_values
    link_sigma_bits = link_bits + _LAMBDA + _SLACK
    return _Dims(
        n_bits=layout.n_values * layout.bits_per_slot,
        cb=pk.ciphertext_bytes,
        sigma_bits=sigma_bits,
        zb=(sigma_bits + 1 + 7) // 8,
        link_bits=link_bits,
        link_sigma_bits=link_sigma_bits,
        zlb=(link_sigma_bits + 2 + 7) // 8,
    )


def max_proof_bytes(public_key: PublicKey | ThresholdPublicKey, layout: SlotLayout) -> int:
    """Size in bytes of a proof for this key and layout (every proof has exactly this size).

    Use it to bound a message before reading it.
    """
    return _dims(_unwrap(public_key), layout).total


def _check_context(context: bytes) -> None:
    if not isinstance(context, bytes | bytearray):
        raise TypeError(f"context must be bytes, got {type(context).__name__}")
    if len(context) > MAX_CONTEXT_BYTES:
        raise RangeProofError(
            f"context is {len(context)} bytes; at most {MAX_CONTEXT_BYTES} are accepted"
        )


def _check_ciphertext(pk: PublicKey, ciphertext: int | mpz) -> mpz:
    if isinstance(ciphertext, bool) or not isinstance(ciphertext, int | mpz):
        raise TypeError(f"ciphertext must be an int, got {type(ciphertext).__name__}")
    try:
        return pk.check_ciphertext(ciphertext)
    except MalformedCiphertextError as exc:
        raise RangeProofError(f"the proven ciphertext is invalid: {exc}") from exc


def _header(pk: PublicKey, layout: SlotLayout, ciphertext: mpz, context: bytes) -> bytes:
    return b"".join(
        [
            _DOMAIN,
            VERSION.to_bytes(1, "big"),
            len(context).to_bytes(8, "big"),
            bytes(context),
            pk.key_id,
            nt.int_to_bytes(pk.n, pk.n_bytes),
            nt.int_to_bytes(pk.djn_base, pk.ciphertext_bytes),
            pk.exponent_bits.to_bytes(4, "big"),
            layout.slot_bits.to_bytes(8, "big"),
            layout.n_values.to_bytes(8, "big"),
            layout.upper.to_bytes(max(8, (layout.slot_bits + 7) // 8), "big"),
            nt.int_to_bytes(ciphertext, pk.ciphertext_bytes),
        ]
    )


def _challenge(header: bytes, commitments: bytes) -> int:
    h = hashlib.sha256(header)
    h.update(commitments)
    return int.from_bytes(h.digest()[:_E_BYTES], "big")


@lru_cache(maxsize=4)
def _high_table(pk: PublicKey) -> FixedBaseTable:
    """Fixed-base table for ``h^(2^eb)`` covering the bits of a mask above ``eb``."""
    base = gmpy2.powmod(pk.djn_base, mpz(1) << pk.exponent_bits, pk.nsquare)
    return FixedBaseTable(base, pk.nsquare, _LAMBDA + _SLACK + 2, pk.window)


def _h_pow(pk: PublicKey, x: mpz) -> mpz:
    """``h^x mod n²`` for ``0 <= x < 2^(eb + λ + S + 2)`` with the fixed-base tables."""
    eb = pk.exponent_bits
    lo = x & ((mpz(1) << eb) - 1)
    hi = x >> eb
    r = pk.table.pow(lo)
    if hi:
        r = r * _high_table(pk).pow(hi) % pk.nsquare
    return r


def _h_pow_signed(pk: PublicKey, x: mpz) -> mpz:
    if x >= 0:
        return gmpy2.powmod(pk.djn_base, x, pk.nsquare)
    return gmpy2.invert(gmpy2.powmod(pk.djn_base, -x, pk.nsquare), pk.nsquare)


def _g_pow(pk: PublicKey, k: int | mpz) -> mpz:
    """``g^k = 1 + k·n mod n²`` for any integer ``k``."""
    return (1 + (mpz(k) % pk.n) * pk.n) % pk.nsquare


def _slot_values(layout: SlotLayout, plaintext: int) -> list[int]:
    w = layout.slot_bits
    mask = (1 << w) - 1
    return [(plaintext >> (w * j)) & mask for j in range(layout.n_values)]


def _bit_values(layout: SlotLayout, values: Sequence[int]) -> list[int]:
    """Bits ``b_jk`` with ``Σ_k b_jk·ω_k = x_j`` (top weighted bit set iff ``x_j ≥ 2^(K-1)``)."""
    k = layout.bits_per_slot
    if k == 0:
        return []
    top_weight = layout.weights()[-1]
    out: list[int] = []
    for x in values:
        top = 1 if x >= 1 << (k - 1) else 0
        rest = x - top * top_weight
        out.extend((rest >> i) & 1 for i in range(k - 1))
        out.append(top)
    return out


def prove_slot_ranges(
    public_key: PublicKey | ThresholdPublicKey,
    ciphertext: int | mpz,
    plaintext: int | mpz,
    exponent: int | mpz,
    layout: SlotLayout,
    context: bytes,
) -> bytes:
    """Prove in zero knowledge that ``ciphertext`` holds in-range slots as ``layout`` says.

    Parameters
    ----------
    public_key : PublicKey or ThresholdPublicKey
        The key ``ciphertext`` is under (a threshold key's Paillier public key works too).
    ciphertext : int
        ``c = (1 + n·plaintext)·h_s^exponent mod n²``.
    plaintext, exponent : int
        The opening of ``c`` (:meth:`fedcity.crypto.Openings.plaintext` and ``.exponent``);
        ``0 <= exponent < 2^public_key.exponent_bits``.
    layout : SlotLayout
    context : bytes
        What the proof is bound to (job, round, agency, key id, ciphertext index, contribution
        digest); at most :data:`MAX_CONTEXT_BYTES`. The verifier must pass the same bytes.

    Returns
    -------
    bytes
        Exactly :func:`max_proof_bytes` bytes.

    Raises
    ------
    RangeProofError
        The plaintext does not satisfy the layout (slot named), the opening does not reproduce
        the ciphertext, or the key or layout is unsuitable. Honest code never proves a false
        statement.
    """
    pk = _unwrap(public_key)
    _check_context(context)
    dims = _dims(pk, layout)
    c = _check_ciphertext(pk, ciphertext)
    m, a = mpz(plaintext), mpz(exponent)
    if not 0 <= m < pk.n:
        raise RangeProofError("the plaintext is outside [0, n)")
    if not 0 <= a < mpz(1) << pk.exponent_bits:
        raise RangeProofError(
            f"the DJN exponent must lie in [0, 2^{pk.exponent_bits}) (a fresh encryption's)"
        )
    if (1 + pk.n * m) * pk.table.pow(a) % pk.nsquare != c:
        raise RangeProofError("the opening (plaintext, exponent) does not reproduce the ciphertext")
    top = layout.slot_bits * layout.n_values
    if m >> top:
        raise RangeProofError(
            f"the plaintext has non-zero bits above value slot {layout.n_values - 1} "
            "(padding or overflow): refusing to prove a false statement"
        )
    values = _slot_values(layout, int(m))
    for j, x in enumerate(values):
        if x > layout.upper:
            raise RangeProofError(
                f"value slot {j} exceeds upper={layout.upper}: refusing to prove a false "
                "statement (the value itself is not echoed)"
            )
    return _prove(pk, c, a, _bit_values(layout, values), layout, bytes(context), dims)


def _prove(
    pk: PublicKey,
    c: mpz,
    a: mpz,
    bits: Sequence[int],
    layout: SlotLayout,
    context: bytes,
    dims: _Dims,
) -> bytes:
    """The prover proper, for given bits (unchecked: tests build cheating provers on it)."""
    n, nsq, eb = pk.n, pk.nsquare, pk.exponent_bits
    if len(bits) != dims.n_bits:
        raise RangeProofError(f"expected {dims.n_bits} bits, got {len(bits)}")
    weights = _bit_weights(layout)
    big_e: list[mpz] = []
    commit: list[tuple[mpz, mpz]] = []
    alphas: list[mpz] = []
    branch_secrets: list[tuple[int, mpz, int, mpz]] = []  # (true branch, σ, e_u, z_u)
    a_link = a
    for i, b in enumerate(bits):
        alpha = nt.random_bits(eb)
        e_i = (1 + n * b) * pk.table.pow(alpha) % nsq
        t = 1 if b else 0
        u = 1 - t
        sigma = nt.random_bits(dims.sigma_bits)
        a_t = _h_pow(pk, sigma)
        e_u = nt.random_bits(_LAMBDA)
        z_u = nt.random_bits(dims.sigma_bits)
        # A_u = h^{z_u} · X_u^{-e_u} with X_u = g^{b-u}·h^α, computed from the opening
        x = z_u - alpha * e_u
        h_part = _h_pow(pk, x) if x >= 0 else gmpy2.invert(_h_pow(pk, -x), nsq)
        a_u = h_part * _g_pow(pk, -(b - u) * e_u) % nsq
        big_e.append(e_i)
        commit.append((a_t, a_u) if t == 0 else (a_u, a_t))
        alphas.append(alpha)
        branch_secrets.append((t, sigma, int(e_u), z_u))
        a_link -= alpha * weights[i]
    sigma_l = nt.random_bits(dims.link_sigma_bits)
    a_l = gmpy2.powmod(pk.djn_base, sigma_l, nsq)
    cb = dims.cb
    commitments = b"".join(
        [nt.int_to_bytes(x, cb) for x in big_e]
        + [nt.int_to_bytes(x, cb) for pair in commit for x in pair]
        + [nt.int_to_bytes(a_l, cb)]
    )
    e = _challenge(_header(pk, layout, c, context), commitments)
    e0s: list[bytes] = []
    zs: list[bytes] = []
    for alpha, (t, sigma, e_u, z_u) in zip(alphas, branch_secrets, strict=True):
        e_t = (e - e_u) % _E_MOD
        z_t = sigma + e_t * alpha
        e0 = e_t if t == 0 else e_u
        z0, z1 = (z_t, z_u) if t == 0 else (z_u, z_t)
        e0s.append(e0.to_bytes(_E_BYTES, "big"))
        zs.append(nt.int_to_bytes(z0, dims.zb) + nt.int_to_bytes(z1, dims.zb))
    z_l = sigma_l + e * a_link
    offset = mpz(1) << (dims.link_bits + _LAMBDA)
    if not 0 <= z_l + offset < mpz(1) << (8 * dims.zlb):  # pragma: no cover - by the bounds
        raise RangeProofError("link response out of its bound")
    proof = (
        VERSION.to_bytes(1, "big")
        + commitments
        + b"".join(e0s)
        + b"".join(zs)
        + nt.int_to_bytes(z_l + offset, dims.zlb)
    )
    if len(proof) != dims.total:  # pragma: no cover - the format is fixed
        raise RangeProofError("internal error: proof length differs from the format")
    return proof


def _bit_weights(layout: SlotLayout) -> list[int]:
    """``W_{j,k} = ω_k · 2^(w·j)`` for every committed bit, slot-major."""
    om = layout.weights()
    return [wk << (layout.slot_bits * j) for j in range(layout.n_values) for wk in om]


def _where(layout: SlotLayout, i: int) -> str:
    k = layout.bits_per_slot
    return f"slot {i // k}, bit {i % k}"


def verify_slot_ranges(
    public_key: PublicKey | ThresholdPublicKey,
    ciphertext: int | mpz,
    proof: bytes,
    layout: SlotLayout,
    context: bytes,
) -> None:
    """Check a proof from :func:`prove_slot_ranges`; return ``None`` or raise.

    The length is checked against :func:`max_proof_bytes` before any arithmetic. Cost at
    2048-bit keys: a fraction of the proving time (batched; see ``docs/benchmarks.md``).

    Raises
    ------
    RangeProofError
        With the reason: wrong length or version, an element outside ``[1, n²)`` or not a
        unit, a response above its bound (each naming the slot and bit or the link), or an
        equation that fails (the slot and bit, or the link: the plaintext is not the sum of
        in-range slots). A proof made under another context, key, layout or ciphertext fails
        its equations.
    """
    pk = _unwrap(public_key)
    _check_context(context)
    dims = _dims(pk, layout)
    if not isinstance(proof, bytes | bytearray | memoryview):
        raise TypeError(f"proof must be bytes, got {type(proof).__name__}")
    proof = bytes(proof)
    if len(proof) != dims.total:
        raise RangeProofError(
            f"proof is {len(proof)} bytes; a proof for this key and layout has exactly "
            f"{dims.total} bytes"
        )
    if proof[0] != VERSION:
        raise RangeProofError(f"unsupported range proof version {proof[0]} (expected {VERSION})")
    c = _check_ciphertext(pk, ciphertext)
    n, nsq, cb, nb = pk.n, pk.nsquare, dims.cb, dims.n_bits

    # -- parse, with range checks before any exponentiation ----------------------------------
    pos = 1
    elems: list[mpz] = []
    for _ in range(3 * nb + 1):
        elems.append(nt.int_from_bytes(proof[pos : pos + cb]))
        pos += cb
    commitments = proof[1:pos]

    def name(idx: int) -> str:
        if idx < nb:
            return f"bit commitment E ({_where(layout, idx)})"
        if idx < 3 * nb:
            r = idx - nb
            return f"OR-proof commitment A_{r % 2} ({_where(layout, r // 2)})"
        return "link commitment A_L"

    for idx, x in enumerate(elems):
        if not 0 < x < nsq:
            raise RangeProofError(f"{name(idx)} is outside [1, n^2)")
    prod = mpz(1)
    for x in elems:
        prod = prod * x % n
    if gmpy2.gcd(prod, n) != 1:
        for idx, x in enumerate(elems):
            if gmpy2.gcd(x, n) != 1:
                raise RangeProofError(f"{name(idx)} is not a unit of Z*_(n^2)")
    e0s = [
        int.from_bytes(proof[pos + i * _E_BYTES : pos + (i + 1) * _E_BYTES], "big")
        for i in range(nb)
    ]
    pos += nb * _E_BYTES
    zs: list[mpz] = []
    zbound = dims.sigma_bits + 1
    for i in range(2 * nb):
        z = nt.int_from_bytes(proof[pos : pos + dims.zb])
        if z.bit_length() > zbound:
            raise RangeProofError(
                f"response z_{i % 2} ({_where(layout, i // 2)}) exceeds its {zbound}-bit bound"
            )
        zs.append(z)
        pos += dims.zb
    offset = mpz(1) << (dims.link_bits + _LAMBDA)
    z_l = nt.int_from_bytes(proof[pos : pos + dims.zlb]) - offset
    if abs(z_l).bit_length() > dims.link_sigma_bits + 1:
        raise RangeProofError(f"link response exceeds its {dims.link_sigma_bits + 1}-bit bound")

    # -- challenge and the link element Y ----------------------------------------------------
    e = _challenge(_header(pk, layout, c, bytes(context)), commitments)
    big_e = elems[:nb]
    a_pairs = elems[nb : 3 * nb]
    a_l = elems[3 * nb]
    e1s = [(e - e0) % _E_MOD for e0 in e0s]
    y = c * gmpy2.invert(_weighted_product(pk, layout, big_e), nsq) % nsq

    # -- batched Schnorr equations, squared ----------------------------------------------------
    rho = [secrets.randbits(_WEIGHT_BITS) for _ in range(2 * nb + 1)]
    s = sum((r * z for r, z in zip(rho, zs, strict=False)), mpz(0)) + rho[-1] * z_l
    lhs = _h_pow_signed(pk, s)
    rhs = nt.multi_pow([*a_pairs, a_l], rho, nsq)
    e_exps = [rho[2 * i] * e0s[i] + rho[2 * i + 1] * e1s[i] for i in range(nb)]
    if nb:
        rhs = rhs * nt.multi_pow(big_e, e_exps, nsq) % nsq
    g_exp = -sum(rho[2 * i + 1] * e1s[i] for i in range(nb))
    rhs = rhs * _g_pow(pk, g_exp) % nsq * gmpy2.powmod(y, rho[-1] * e, nsq) % nsq
    if lhs * lhs % nsq == rhs * rhs % nsq:
        return
    _locate_failure(pk, layout, big_e, a_pairs, a_l, e0s, e1s, zs, z_l, y, e)


def _weighted_product(pk: PublicKey, layout: SlotLayout, big_e: Sequence[mpz]) -> mpz:
    """``Π_{j,k} E_jk^{ω_k·2^(w·j)} mod n²`` by Horner over bits and slots."""
    nsq = pk.nsquare
    k = layout.bits_per_slot
    if k == 0:
        return mpz(1)
    top_weight = layout.weights()[-1]
    two_w = mpz(1) << layout.slot_bits
    acc = mpz(1)
    for j in range(layout.n_values - 1, -1, -1):
        row = big_e[j * k : (j + 1) * k]
        p = mpz(1)
        for x in reversed(row[:-1]):  # Π_{k<K-1} E^{2^k}
            p = p * p % nsq * x % nsq
        p = p * gmpy2.powmod(row[-1], top_weight, nsq) % nsq
        acc = gmpy2.powmod(acc, two_w, nsq) * p % nsq
    return acc


def _locate_failure(
    pk: PublicKey,
    layout: SlotLayout,
    big_e: Sequence[mpz],
    a_pairs: Sequence[mpz],
    a_l: mpz,
    e0s: Sequence[int],
    e1s: Sequence[int],
    zs: Sequence[mpz],
    z_l: mpz,
    y: mpz,
    e: int,
) -> None:
    """After a failed batch, bisect with fresh weights to the failing equation and name it.

    About twice the cost of one batch (halving subsets), so a forged proof costs the
    verifier little more than an honest one.
    """
    nsq = pk.nsquare
    g_inv = _g_pow(pk, -1)
    # (z, A, X, challenge) of every equation h^z = A·X^challenge; the link is last
    eqs: list[tuple[mpz, mpz, mpz, int]] = []
    for i, big in enumerate(big_e):
        eqs.append((zs[2 * i], a_pairs[2 * i], big, e0s[i]))
        eqs.append((zs[2 * i + 1], a_pairs[2 * i + 1], big * g_inv % nsq, e1s[i]))
    eqs.append((z_l, a_l, y, e))

    def ok(sub: Sequence[tuple[mpz, mpz, mpz, int]]) -> bool:
        rho = [secrets.randbits(_WEIGHT_BITS) for _ in sub]
        lhs = _h_pow_signed(pk, sum((r * q[0] for r, q in zip(rho, sub, strict=True)), mpz(0)))
        rhs = nt.multi_pow([q[1] for q in sub], rho, nsq) * nt.multi_pow(
            [q[2] for q in sub], [r * q[3] for r, q in zip(rho, sub, strict=True)], nsq
        )
        return bool(lhs * lhs % nsq == rhs * rhs % nsq)

    lo, hi = 0, len(eqs)  # eqs[lo:hi] holds a failing equation
    while hi - lo > 1:
        mid = (lo + hi) // 2
        if not ok(eqs[lo:mid]):
            hi = mid
        else:
            lo = mid
    if lo == len(eqs) - 1:
        raise RangeProofError(
            "the link proof does not verify: the ciphertext's plaintext is not the sum of the "
            "proven in-range slots (a slot out of range, non-zero padding or bits above the "
            "last slot), or the proof is for another context, key, layout or ciphertext"
        )
    raise RangeProofError(
        f"bit proof of {_where(layout, lo // 2)} does not verify (branch {lo % 2}): the "
        "committed value is not a bit, or the proof is for another context, key, layout or "
        "ciphertext (which fails at the first bit)"
    )
