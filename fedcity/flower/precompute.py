"""Encryption randomness computed while a Flower node process is idle.

Sealing an update costs one ``h_s^a`` per ciphertext (about 99 % of an encryption). A
:class:`~fedcity.crypto.pool.RandomnessPool` holds such powers computed ahead, so sealing
costs a multiplication per ciphertext for the part the pool covers.

Where the pool lives: Flower builds a fresh ClientApp call for every message, and in the
simulation engine many virtual nodes share one Ray worker process; the one object that
lasts across messages is the process. :func:`precompute_for` therefore keeps one
:class:`IdlePrecompute` per process and key: a pool plus a daemon thread at the lowest CPU
priority (``nice 19`` on Linux) that tops the pool up while the process handles no message.
The mod marks every message it handles as busy (:func:`busy`); the thread
stops within one power (about 0.5 ms at 2048 bits) when a message arrives, so it uses only
time the node would spend waiting.

The pool's target size follows demand: the ciphertexts this process sealed in the most
recent of the last two server rounds, capped by the node's bound (``max_size``). The pool
is in memory only (it cannot be pickled); a pair is used once. In the simulation engine the
virtual nodes of one worker process share its pool: they share its memory anyway, and each
pair still seals one ciphertext only.
"""

from __future__ import annotations

import contextlib
import os
import threading
import weakref
from collections.abc import Iterator

from fedcity.crypto import PublicKey
from fedcity.crypto.pool import MAX_POOL_SIZE, RandomnessPool

__all__ = ["DEFAULT_POOL_SIZE", "IdlePrecompute", "busy", "precompute_for"]

DEFAULT_POOL_SIZE = 16_384
"""Default bound of a process's pool: about 13 MiB at 2048 bits (0.8 KiB a pair)."""

_REFILL_SLICE = 0.25
"""Seconds of refilling between checks of the demand and shutdown."""


class IdlePrecompute:
    """A process's randomness pool for one key, refilled by a low-priority idle thread.

    Parameters
    ----------
    public_key : PublicKey
        The Paillier public key updates are encrypted under.
    max_size : int
        Most pairs held (``1 .. MAX_POOL_SIZE``).

    Attributes
    ----------
    pool : RandomnessPool
    """

    def __init__(self, public_key: PublicKey, max_size: int) -> None:
        self.pool = RandomnessPool(public_key, max_size)
        self._lock = threading.Lock()
        self._wake = threading.Event()
        self._closed = False
        self._demand: dict[int, int] = {}
        self._thread: threading.Thread | None = None
        with _REGISTRY_LOCK:
            _INSTANCES.add(self)

    def __repr__(self) -> str:
        return f"<IdlePrecompute {self.pool!r} target={self.target}>"

    @property
    def target(self) -> int:
        """Pairs the idle thread fills the pool up to."""
        with self._lock:
            recent = [self._demand[r] for r in sorted(self._demand)[-2:]]
        return min(self.pool.max_size, max(recent, default=0))

    def record(self, server_round: int, ciphertexts: int) -> None:
        """Note that ``ciphertexts`` were sealed for ``server_round`` (sets the target)."""
        with self._lock:
            self._demand[server_round] = self._demand.get(server_round, 0) + ciphertexts
            for r in sorted(self._demand)[:-2]:
                del self._demand[r]
        self._start()
        self._wake.set()

    def close(self) -> None:
        """Stop the refill thread and drop the pooled pairs."""
        self._closed = True
        self._wake.set()
        if self._thread is not None:
            self._thread.join(timeout=5)
        self.pool.clear()

    def _idle(self) -> bool:
        return _BUSY[0] == 0 and not self._closed

    def _start(self) -> None:
        with self._lock:
            if self._thread is not None or self._closed:
                return
            self._thread = threading.Thread(
                target=self._run, name="fedcity-randomness", daemon=True
            )
        self._thread.start()

    def _run(self) -> None:
        with contextlib.suppress(AttributeError, OSError):  # Linux: per-thread niceness
            os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), 19)
        while not self._closed:
            self._wake.wait()
            self._wake.clear()
            while self._idle() and len(self.pool) < self.target:
                self.pool.fill_to(
                    self.target,
                    max_seconds=_REFILL_SLICE,
                    stop=lambda: not self._idle(),
                )


_REGISTRY: dict[bytes, IdlePrecompute] = {}
_REGISTRY_LOCK = threading.RLock()
_INSTANCES: weakref.WeakSet[IdlePrecompute] = weakref.WeakSet()
_BUSY = [0]
"""Messages this process is handling now (refills run only at 0)."""


@contextlib.contextmanager
def busy() -> Iterator[None]:
    """Mark this process busy (handling a message) for the duration of the block.

    Every refill thread of the process pauses until no block is open any more.
    """
    with _REGISTRY_LOCK:
        _BUSY[0] += 1
    try:
        yield
    finally:
        with _REGISTRY_LOCK:
            _BUSY[0] -= 1
            idle = _BUSY[0] == 0
            waiting = list(_INSTANCES) if idle else []
        for p in waiting:
            p._wake.set()


def precompute_for(public_key: PublicKey, max_size: int = DEFAULT_POOL_SIZE) -> IdlePrecompute:
    """Return the process's :class:`IdlePrecompute` for ``public_key`` (made on first use).

    Raises
    ------
    ValueError
        ``max_size`` is not an integer in ``[1, MAX_POOL_SIZE]``.
    """
    if isinstance(max_size, bool) or not isinstance(max_size, int):
        raise ValueError(f"max_size must be an integer, got {max_size!r}")
    if not 1 <= max_size <= MAX_POOL_SIZE:
        raise ValueError(f"max_size must lie in [1, {MAX_POOL_SIZE}], got {max_size}")
    with _REGISTRY_LOCK:
        found = _REGISTRY.get(public_key.key_id)
        if found is None:
            found = _REGISTRY[public_key.key_id] = IdlePrecompute(public_key, max_size)
        return found
