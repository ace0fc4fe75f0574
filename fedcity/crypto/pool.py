"""Precomputed encryption randomness: a bounded, in-memory, use-once pool.

A DJN ciphertext is ``c = (1 + n·m) · h_s^a mod n²`` (:mod:`fedcity.crypto.keys`). The power
``h_s^a`` for a fresh uniform exponent ``a`` is 99 % of the cost of an encryption and does not
depend on the plaintext. A :class:`RandomnessPool` computes such pairs ``(a, h_s^a)`` ahead of
time (an agency does it while idle between rounds), so sealing an update costs one
multiplication per ciphertext.

Rules the pool enforces:

- **use once**: each pair is removed from the pool when it is handed out (under a lock, so
  two threads never receive the same pair); a pair that did not fit under the bound is
  dropped, never kept for later;
- **never blocks**: :meth:`RandomnessPool.take` returns pooled pairs first and computes the
  rest fresh, exactly as encryption without a pool would;
- **bounded**: at most ``max_size`` pairs; at a 2048-bit key one pair holds a 1024-bit
  exponent and a 4096-bit residue, about 0.8 KiB in memory (:attr:`RandomnessPool.entry_bytes`),
  so 4,096 pairs take about 3 MiB (1.1 KiB per pair at 3072 bits);
- **in memory only**: a pool cannot be pickled, copied or serialized (a pair opens the
  ciphertext it seals: whoever knows ``a`` can decrypt ``c``); its ``repr`` shows only counts.
  It is therefore never sent to :class:`~fedcity.crypto.WorkerPool` processes: with workers,
  the ciphertexts the pool covers are sealed in the calling process (a multiplication each)
  and only the rest go to the workers, which draw their own fresh randomness;
- the exponent ``a`` is handed out with its power because range proofs need it
  (:class:`~fedcity.crypto.vector.Openings`); callers that do not keep openings drop it at once.

The pairs have exactly the distribution of :meth:`PublicKey._raw_encrypt`'s: ``a`` uniform in
``[0, 2^exponent_bits)`` from the OS CSPRNG, the power from the key's fixed-base table.
"""

from __future__ import annotations

import threading
import time
from collections import deque
from collections.abc import Callable
from typing import NoReturn, SupportsIndex

from gmpy2 import mpz

from fedcity.crypto import _numbers as nt
from fedcity.crypto.keys import PublicKey

__all__ = ["MAX_POOL_SIZE", "RandomnessPool", "fresh_randomness"]

MAX_POOL_SIZE = 1 << 20
"""Largest ``max_size`` a pool accepts (about 0.8 GiB of pairs at 2048 bits)."""

_MPZ_OVERHEAD = 48
"""Bytes of object header per ``mpz`` besides its limbs (CPython, 64-bit)."""
_ENTRY_OVERHEAD = 64 + 8
"""Bytes of the ``(a, h_s^a)`` tuple and its slot in the deque."""

Pair = tuple[mpz, mpz]
"""``(a, h_s^a mod n²)``."""


def fresh_randomness(public_key: PublicKey) -> Pair:
    """Draw a fresh exponent ``a`` and return ``(a, h_s^a mod n²)`` (no pool involved)."""
    a = nt.random_bits(public_key.exponent_bits)
    return a, public_key.table.pow(a)


def _check_count(count: object, what: str = "count") -> int:
    if isinstance(count, bool) or not isinstance(count, int) or count < 0:
        raise ValueError(f"{what} must be a non-negative integer, got {count!r}")
    return count


class RandomnessPool:
    """Use-once DJN randomness ``(a, h_s^a mod n²)`` for one public key, computed ahead.

    Parameters
    ----------
    public_key : PublicKey
        The key whose fixed-base table computes the powers (the Paillier public key of a
        threshold key: ``ThresholdPublicKey.public_key``).
    max_size : int
        Most pairs held at once, in ``[1, MAX_POOL_SIZE]``.

    Attributes
    ----------
    public_key : PublicKey
    key_id : bytes
    max_size : int
    pooled : int
        Pairs handed out from the pool so far.
    fresh : int
        Pairs computed on demand because the pool was empty.
    dropped : int
        Pairs computed by a refill that found the pool full meanwhile (discarded, not kept).

    Notes
    -----
    Thread-safe: refills compute outside the lock and only append under it, so taking never
    waits for a refill. Python threads share one interpreter lock, so a refill in a thread
    slows the thread that encrypts; refill while idle (see :meth:`refill`'s ``stop``).
    """

    __slots__ = (
        "_items",
        "_lock",
        "dropped",
        "fresh",
        "key_id",
        "max_size",
        "pooled",
        "public_key",
        "requested",
    )

    def __init__(self, public_key: PublicKey, max_size: int) -> None:
        if not isinstance(public_key, PublicKey):
            raise TypeError(
                f"a randomness pool needs a PublicKey (a threshold key's .public_key), "
                f"got {type(public_key).__name__}"
            )
        if isinstance(max_size, bool) or not isinstance(max_size, int):
            raise ValueError(f"max_size must be an integer, got {max_size!r}")
        if not 1 <= max_size <= MAX_POOL_SIZE:
            raise ValueError(f"max_size must lie in [1, {MAX_POOL_SIZE}], got {max_size}")
        self.public_key = public_key
        self.key_id = public_key.key_id
        self.max_size = max_size
        self._items: deque[Pair] = deque()
        self._lock = threading.Lock()
        self.pooled = 0
        self.fresh = 0
        self.dropped = 0
        self.requested = 0
        """Pairs asked for by :meth:`take` and :meth:`take_pooled` so far (the demand)."""

    # -- inspection ---------------------------------------------------------------------------
    def __len__(self) -> int:
        return len(self._items)

    def __repr__(self) -> str:
        return (
            f"<RandomnessPool key={self.key_id.hex()[:8]} available={len(self)}/{self.max_size} "
            f"pooled={self.pooled} fresh={self.fresh}>"
        )

    @property
    def entry_bytes(self) -> int:
        """Approximate memory of one pair: exponent, power, object headers."""
        exponent = (self.public_key.exponent_bits + 7) // 8
        return exponent + self.public_key.ciphertext_bytes + 2 * _MPZ_OVERHEAD + _ENTRY_OVERHEAD

    @property
    def nbytes(self) -> int:
        """Approximate memory held by the pairs now in the pool."""
        return len(self) * self.entry_bytes

    @property
    def max_bytes(self) -> int:
        """Approximate memory of a full pool."""
        return self.max_size * self.entry_bytes

    # -- handing out --------------------------------------------------------------------------
    def take_pooled(self, count: int) -> list[Pair]:
        """Remove and return up to ``count`` precomputed pairs (fewer if the pool holds fewer).

        Each pair is returned to exactly one caller and never again.
        """
        count = _check_count(count)
        with self._lock:
            self.requested += count
            k = min(count, len(self._items))
            out = [self._items.popleft() for _ in range(k)]
            self.pooled += k
        return out

    def take(self, count: int) -> list[Pair]:
        """Return exactly ``count`` unused pairs: pooled ones first, then freshly computed.

        Never blocks on a refill and never reuses a pair; with an empty pool this costs what
        encryption without a pool costs.
        """
        out = self.take_pooled(count)
        missing = count - len(out)
        if missing:
            out.extend(fresh_randomness(self.public_key) for _ in range(missing))
            with self._lock:
                self.fresh += missing
        return out

    # -- filling ------------------------------------------------------------------------------
    def refill(
        self,
        count: int | None = None,
        *,
        max_seconds: float | None = None,
        stop: Callable[[], bool] | None = None,
    ) -> int:
        """Compute and add up to ``count`` pairs (default: until full); return how many.

        Parameters
        ----------
        count : int, optional
            Pairs to add at most; never beyond ``max_size`` in total.
        max_seconds : float, optional
            Return after about this long (checked between pairs: one pair takes about
            0.6 ms at 2048 bits).
        stop : callable, optional
            Checked before each pair; return early when it returns True (e.g. the agent got
            work or is shutting down).
        """
        want = self.max_size if count is None else _check_count(count)
        return self._fill(lambda added: added < want, max_seconds, stop)

    def fill_to(
        self,
        size: int,
        *,
        max_seconds: float | None = None,
        stop: Callable[[], bool] | None = None,
    ) -> int:
        """Add pairs until the pool holds ``min(size, max_size)``; return how many were added.

        Same ``max_seconds`` and ``stop`` as :meth:`refill`.
        """
        target = min(_check_count(size, "size"), self.max_size)
        return self._fill(lambda _added: len(self._items) < target, max_seconds, stop)

    def _fill(
        self,
        more: Callable[[int], bool],
        max_seconds: float | None,
        stop: Callable[[], bool] | None,
    ) -> int:
        if max_seconds is not None and not max_seconds >= 0:
            raise ValueError(f"max_seconds must be non-negative, got {max_seconds!r}")
        deadline = None if max_seconds is None else time.monotonic() + max_seconds
        added = 0
        while more(added) and len(self._items) < self.max_size:
            if stop is not None and stop():
                break
            if deadline is not None and time.monotonic() >= deadline:
                break
            pair = fresh_randomness(self.public_key)  # outside the lock: takers never wait
            with self._lock:
                if len(self._items) >= self.max_size:
                    self.dropped += 1  # another refill filled it meanwhile: discard, not keep
                    break
                self._items.append(pair)
            added += 1
        return added

    def clear(self) -> int:
        """Drop every pooled pair (e.g. when the key is retired); return how many."""
        with self._lock:
            k = len(self._items)
            self._items.clear()
        return k

    # -- never serialized ---------------------------------------------------------------------
    def __reduce_ex__(self, protocol: SupportsIndex) -> NoReturn:
        raise TypeError("a RandomnessPool holds encryption secrets and is never pickled or copied")

    def __reduce__(self) -> NoReturn:
        raise TypeError("a RandomnessPool holds encryption secrets and is never pickled or copied")

    def __getstate__(self) -> NoReturn:
        raise TypeError("a RandomnessPool holds encryption secrets and is never serialized")

    def __copy__(self) -> NoReturn:
        raise TypeError("a RandomnessPool holds encryption secrets and is never copied")

    def __deepcopy__(self, memo: object) -> NoReturn:
        raise TypeError("a RandomnessPool holds encryption secrets and is never copied")
