"""Bounds on long-lived calls, so no client can take every worker thread.

gRPC's synchronous server runs each call on a worker thread from a fixed pool. Calls that may
last (a job watch, a work long poll, an upload or aggregate download) are counted here per
principal and in total; past either limit a call is refused at once with
``RESOURCE_EXHAUSTED``, so heartbeats, short calls and health checks always find a thread.
Uploads and downloads also get a deadline: :meth:`StreamLimiter.expire` (called by the
coordinator's ticker) cancels those that outlived it, freeing the thread a stalled client
held. The limiter is a plain object with an injectable clock.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager

from fedcity.net.coordinator.config import Code, StatusError

__all__ = ["StreamLimiter"]


class StreamLimiter:
    """Counts long-lived calls per principal and in total.

    Parameters
    ----------
    total : int
        Long-lived calls served at once.
    per_principal : int
        Long-lived calls one principal may hold at once.
    clock : callable, optional
        Monotonic clock for deadlines (default :func:`time.monotonic`).
    """

    def __init__(
        self, total: int, per_principal: int, clock: Callable[[], float] = time.monotonic
    ) -> None:
        if not 1 <= per_principal <= total:
            raise ValueError(f"need 1 <= per_principal ({per_principal}) <= total ({total})")
        self.total = total
        self.per_principal = per_principal
        self.clock = clock
        self._lock = threading.Lock()
        self._held: dict[str, int] = {}
        self._deadlines: dict[int, tuple[float, Callable[[], object], str]] = {}
        self._next = 0
        self.refused = 0
        """Calls refused so far."""
        self.expired = 0
        """Calls cancelled at their deadline so far."""

    @property
    def in_use(self) -> int:
        """Long-lived calls being served now."""
        with self._lock:
            return sum(self._held.values())

    @contextmanager
    def hold(
        self,
        principal: str,
        what: str,
        *,
        deadline: float | None = None,
        cancel: Callable[[], object] | None = None,
    ) -> Iterator[None]:
        """Count one call of ``principal`` while the block runs; refuse it past a limit.

        With ``deadline`` (seconds) and ``cancel``, :meth:`expire` calls ``cancel`` once the
        call has lasted longer.

        Raises
        ------
        StatusError
            ``RESOURCE_EXHAUSTED``, naming the limit that was reached.
        """
        with self._lock:
            mine = self._held.get(principal, 0)
            if mine >= self.per_principal:
                self.refused += 1
                raise StatusError(
                    Code.RESOURCE_EXHAUSTED,
                    f"{principal!r} already holds {mine} long-lived calls (watches, long polls, "
                    f"transfers), the limit per caller (max_streams_per_principal="
                    f"{self.per_principal}); close some before opening another {what}",
                )
            if sum(self._held.values()) >= self.total:
                self.refused += 1
                raise StatusError(
                    Code.RESOURCE_EXHAUSTED,
                    f"the coordinator serves {self.total} long-lived calls at once "
                    f"(max_streams) and all are taken; retry the {what} shortly",
                )
            self._held[principal] = mine + 1
            token = self._next
            self._next += 1
            if deadline is not None and cancel is not None:
                self._deadlines[token] = (self.clock() + deadline, cancel, principal)
        try:
            yield
        finally:
            with self._lock:
                self._deadlines.pop(token, None)
                left = self._held[principal] - 1
                if left:
                    self._held[principal] = left
                else:
                    del self._held[principal]

    def expire(self) -> list[str]:
        """Cancel every call past its deadline; returns whose calls were cancelled."""
        now = self.clock()
        with self._lock:
            due = [(t, d) for t, d in self._deadlines.items() if d[0] <= now]
            for t, _ in due:
                del self._deadlines[t]
            self.expired += len(due)
        for _, (_, cancel, _) in due:
            cancel()
        return [principal for _, (_, _, principal) in due]
