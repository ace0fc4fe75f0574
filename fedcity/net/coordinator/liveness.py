"""Time as the coordinator's own progress sees it, and which agencies are alive.

A coordinator that was itself stalled (paused by the operating system, starved of CPU,
blocked on a full disk) must not blame the agencies for the silence it did not observe.
:class:`ProgressClock` is a monotonic clock that does not advance by more than ``max_step``
between two consecutive readings: a gap longer than that is the judge's stall, not the
agencies' silence, and is left out of every deadline (liveness, collect, decrypt). The
coordinator's ticker reads it every ``tick_interval``, so in normal operation it equals the
monotonic clock. :class:`Liveness` judges agencies on that clock. Both are plain objects
with an injectable time source, so tests run them on a manual clock.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable

__all__ = ["Liveness", "ManualClock", "ProgressClock"]


class ProgressClock:
    """A monotonic clock with the coordinator's own stalls left out.

    Parameters
    ----------
    max_step : float
        Largest advance between two readings that counts in full; a longer gap counts as
        ``max_step``.
    source : callable, optional
        The underlying monotonic clock (default :func:`time.monotonic`).
    """

    def __init__(self, max_step: float, source: Callable[[], float] = time.monotonic) -> None:
        if not max_step > 0:
            raise ValueError(f"max_step must be positive, got {max_step}")
        self.max_step = float(max_step)
        self._source = source
        self._lock = threading.Lock()
        self._last = source()
        self._skipped = 0.0
        self.stalls = 0
        """How many stalls were left out so far."""

    @property
    def skipped(self) -> float:
        """Seconds of stalls left out so far."""
        return self._skipped

    def __call__(self) -> float:
        """The current progress time in seconds."""
        with self._lock:
            raw = self._source()
            gap = raw - self._last
            if gap > self.max_step:
                self._skipped += gap - self.max_step
                self.stalls += 1
            self._last = max(raw, self._last)
            return self._last - self._skipped


class ManualClock:
    """A clock that moves only when told (for tests and simulations)."""

    def __init__(self, start: float = 1000.0) -> None:
        self._now = float(start)
        self._lock = threading.Lock()

    def __call__(self) -> float:
        """The current time."""
        with self._lock:
            return self._now

    def advance(self, seconds: float) -> float:
        """Move forward by ``seconds``; returns the new time."""
        if seconds < 0:
            raise ValueError("a clock does not go back")
        with self._lock:
            self._now += seconds
            return self._now


class Liveness:
    """When each agency was last heard from, judged on a progress clock.

    Parameters
    ----------
    timeout : float
        An agency silent for longer is gone.
    grace : float
        After the coordinator starts, an agency not yet heard from counts as alive this long
        (agents need their reconnect backoff to come back after a restart).
    clock : callable
        The coordinator's progress clock.
    """

    def __init__(self, timeout: float, grace: float, clock: Callable[[], float]) -> None:
        self.timeout = float(timeout)
        self.grace = max(float(grace), self.timeout)
        self.clock = clock
        self._started = clock()
        self._contact: dict[str, float] = {}
        self.last_seen: dict[str, float] = {}
        """Wall-clock time each agency was last heard from (for people to read)."""

    def touch(self, agency: str) -> None:
        """Record contact from ``agency`` now."""
        self._contact[agency] = self.clock()
        self.last_seen[agency] = time.time()

    def forget(self, agency: str) -> None:
        """``agency`` said it is leaving: it counts as gone until it calls again."""
        self._contact[agency] = float("-inf")

    def departed(self, agency: str) -> bool:
        """Whether ``agency`` said it was leaving and has not called since."""
        return self._contact.get(agency) == float("-inf")

    def forgive(self, now: float) -> None:
        """Count every agency as heard from at ``now`` (after a pause of the coordinator)."""
        for agency, last in self._contact.items():
            if last != float("-inf"):  # an agency that left stays gone
                self._contact[agency] = max(last, now)
        self._started = max(self._started, now - self.grace + self.timeout)

    def alive(self, agency: str, now: float) -> bool:
        """Whether ``agency`` counts as connected at ``now``."""
        last = self._contact.get(agency)
        if last is None:
            return now - self._started <= self.grace
        return now - last <= self.timeout

    def heard(self, agency: str) -> bool:
        """Whether ``agency`` called since this coordinator started."""
        return agency in self._contact

    def silent_for(self, agency: str, now: float) -> float:
        """Seconds since ``agency`` was last heard from (or since the start)."""
        return now - self._contact.get(agency, self._started)

    def connected(self, now: float) -> int:
        """How many agencies were heard from within the timeout."""
        return sum(1 for t in list(self._contact.values()) if now - t <= self.timeout)
