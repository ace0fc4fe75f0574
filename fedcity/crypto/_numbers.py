"""Number theory on gmpy2 integers: randomness, primes, safe primes, CRT.

Private helpers of :mod:`fedcity.crypto`; nothing outside this package touches big integers.
All randomness comes from :mod:`secrets` (the operating system's CSPRNG).
"""

from __future__ import annotations

import secrets
from collections.abc import Sequence
from functools import reduce

import gmpy2
import numpy as np
from gmpy2 import mpz


def _primes_below(limit: int) -> np.ndarray:
    sieve = np.ones(limit, dtype=bool)
    sieve[:2] = False
    for i in range(2, int(limit**0.5) + 1):
        if sieve[i]:
            sieve[i * i :: i] = False
    return np.flatnonzero(sieve)


# Product of the odd primes below 2000, for a one-gcd trial division of candidates.
_SMALL_PRIMES = [p for p in range(3, 2000, 2) if all(p % d for d in range(3, int(p**0.5) + 1, 2))]
_PRIMORIAL = reduce(lambda a, b: a * b, (mpz(p) for p in _SMALL_PRIMES), mpz(1))
_SIEVE_PRIMES = [int(p) for p in _primes_below(1 << 16)][1:]  # odd primes
_MR_ROUNDS = 40  # Miller–Rabin rounds: error below 2^-80 for random candidates


def random_below(bound: int | mpz) -> mpz:
    """Return a uniform integer in ``[0, bound)`` from the OS CSPRNG."""
    return mpz(secrets.randbelow(int(bound)))


def random_bits(bits: int) -> mpz:
    """Return a uniform integer in ``[0, 2**bits)``."""
    return mpz(secrets.randbits(bits))


def random_unit(n: mpz) -> mpz:
    """Return a uniform element of ``Z*_n``."""
    while True:
        r = random_below(n)
        if r > 1 and gmpy2.gcd(r, n) == 1:
            return r


def _candidate(bits: int) -> mpz:
    # top two bits set so that the product of two such numbers has exactly 2*bits bits
    return random_bits(bits) | (mpz(3) << (bits - 2)) | 1


def random_prime(bits: int) -> mpz:
    """Return a random prime of exactly ``bits`` bits with its two top bits set."""
    if bits < 16:
        raise ValueError(f"prime size must be at least 16 bits, got {bits}")
    while True:
        c = _candidate(bits)
        if gmpy2.gcd(c, _PRIMORIAL) == 1 and gmpy2.is_prime(c, _MR_ROUNDS):
            return c


def random_safe_prime(bits: int) -> mpz:
    """Return a random safe prime ``p = 2p' + 1`` of exactly ``bits`` bits.

    An interval of candidates ``p' = s, s + 2, ...`` above a random odd start ``s`` is sieved
    jointly for ``p'`` and ``2p' + 1`` by every prime below 2^16 (numpy slices); only the
    survivors get Miller–Rabin tests. Incremental search of this kind is what OpenSSL does;
    it favours primes after long gaps only negligibly.
    """
    if bits < 16:
        raise ValueError(f"safe prime size must be at least 16 bits, got {bits}")
    if bits < 64:  # tiny test keys: plain rejection sampling
        while True:
            q = _candidate(bits - 1)
            if gmpy2.is_prime(q, _MR_ROUNDS) and gmpy2.is_prime(2 * q + 1, _MR_ROUNDS):
                return 2 * q + 1
    width = 1 << 14
    top = mpz(1) << (bits - 1)
    while True:
        start = _candidate(bits - 1)
        if start + 2 * width >= top:
            continue
        alive = np.ones(width, dtype=bool)
        for r in _SIEVE_PRIMES:
            s = int(start % r)
            inv2 = (r + 1) // 2
            # q = start + 2k == 0 (mod r)        <=> k == -s / 2
            alive[(-s * inv2) % r :: r] = False
            # 2q + 1 == 0 (mod r) <=> q == -1/2  <=> k == (-1/2 - s) / 2
            alive[((-inv2 - s) * inv2) % r :: r] = False
        for k in np.flatnonzero(alive):
            q = start + 2 * int(k)
            p = 2 * q + 1
            if (
                gmpy2.is_strong_prp(q, 2)
                and gmpy2.is_strong_prp(p, 2)
                and gmpy2.is_prime(q, _MR_ROUNDS)
                and gmpy2.is_prime(p, _MR_ROUNDS)
            ):
                return p


def crt_pair(rp: mpz, rq: mpz, p: mpz, q: mpz, q_inv_p: mpz) -> mpz:
    """Combine residues modulo coprime ``p`` and ``q`` (Garner), given ``q^-1 mod p``."""
    return rq + q * ((rp - rq) * q_inv_p % p)


def int_to_bytes(value: int | mpz, width: int) -> bytes:
    """Encode a non-negative integer as exactly ``width`` big-endian bytes."""
    return int(value).to_bytes(width, "big")


def int_from_bytes(data: bytes) -> mpz:
    """Decode big-endian unsigned bytes."""
    return mpz(int.from_bytes(data, "big"))


def multi_pow(bases: Sequence[mpz], exponents: Sequence[int], modulus: mpz) -> mpz:
    """``Π bases[j]^exponents[j] mod modulus`` for non-negative exponents (Pippenger).

    Meant for many bases with short exponents (the 128-bit weights of batch verification):
    the exponents are cut into ``c``-bit digits; per digit position every base is multiplied
    into the bucket of its digit, and the buckets are folded with running products, so the
    cost is about ``(bits / c)·(k + 2^(c+1))`` multiplications plus ``bits`` squarings
    instead of ``k·bits / 2`` multiplications for separate square-and-multiply.
    """
    if len(bases) != len(exponents):
        raise ValueError("bases and exponents differ in length")
    exps = [int(e) for e in exponents]
    if any(e < 0 for e in exps):
        raise ValueError("exponents must be non-negative")
    top = max((e.bit_length() for e in exps), default=0)
    if top == 0:
        return mpz(1) % modulus
    k = len(bases)
    c = min(range(1, 11), key=lambda w: -(-top // w) * (k + (1 << (w + 1))))
    mask = (1 << c) - 1
    acc = mpz(1)
    for shift in range(((top - 1) // c) * c, -1, -c):
        if acc != 1:
            for _ in range(c):
                acc = acc * acc % modulus
        buckets: list[mpz | None] = [None] * (mask + 1)
        for b, e in zip(bases, exps, strict=True):
            d = (e >> shift) & mask
            if d:
                held = buckets[d]
                buckets[d] = b if held is None else held * b % modulus
        running: mpz | None = None
        total: mpz | None = None
        for d in range(mask, 0, -1):
            bd = buckets[d]
            if bd is not None:
                running = bd if running is None else running * bd % modulus
            if running is not None:
                total = running if total is None else total * running % modulus
        if total is not None:
            acc = acc * total % modulus
    return acc
