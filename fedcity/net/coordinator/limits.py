"""Bounds on long-lived calls and on request rates, so no client can crowd out the others.

gRPC's synchronous server runs each call on a worker thread from a fixed pool. Calls that may
last (a job watch, a work long poll, an upload or aggregate download) are counted here per
principal and in total; past either limit a call is refused at once with
``RESOURCE_EXHAUSTED``, so heartbeats, short calls and health checks always find a thread.
Uploads and downloads also get a deadline: :meth:`StreamLimiter.expire` (called by the
coordinator's ticker) cancels those that outlived it, freeing the thread a stalled client
held. The limiter is a plain object with an injectable clock.

:class:`RateLimiter` bounds how often each caller may call: a token bucket per principal and
per rate class (heartbeats, short calls, transfers, submissions; see :data:`RATE_CLASSES`),
and per peer address for callers without credentials. A call past its bucket is refused with
``RESOURCE_EXHAUSTED`` naming the limit and when to retry; the servicers' interceptor
(:class:`~fedcity.net.coordinator.servicers.RateLimitInterceptor`) applies it to every call.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from urllib.parse import unquote

from fedcity.net.coordinator.config import Code, StatusError

__all__ = [
    "DEFAULT_RATES",
    "RATE_CLASSES",
    "RateLimited",
    "RateLimiter",
    "StreamLimiter",
    "parse_rate",
    "peer_address",
]


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


# -- request rates ----------------------------------------------------------------------------
RATE_CLASSES: dict[str, str] = {
    "/fedcity.v1.AgentService/Heartbeat": "heartbeat",
    "/fedcity.v1.AgentService/Register": "call",
    "/fedcity.v1.AgentService/FetchWork": "call",
    "/fedcity.v1.AgentService/Decline": "call",
    "/fedcity.v1.AgentService/Leave": "call",
    "/fedcity.v1.AgentService/Defer": "call",
    "/fedcity.v1.AgentService/Upload": "transfer",
    "/fedcity.v1.AgentService/FetchAggregate": "transfer",
    "/fedcity.v1.AgentService/FetchContributions": "transfer",
    "/fedcity.v1.AgentService/FetchAuditEvidence": "transfer",
    "/fedcity.v1.JobService/SubmitJob": "submit",
    "/fedcity.v1.JobService/WatchJob": "call",
    "/fedcity.v1.JobService/GetResult": "call",
    "/fedcity.v1.JobService/ListAgencies": "call",
    "/fedcity.v1.JobService/CancelJob": "call",
    "/fedcity.v1.JobService/GetStatus": "call",
    "/fedcity.v1.JobService/ListJobs": "call",
    "/fedcity.v1.JobService/JobLogs": "call",
    "/fedcity.v1.EnrollmentService/Renew": "submit",
}
"""The rate class of every fedcity method; a method not listed counts as ``call``.

Calls without credentials (and ``Enroll``, made before the caller has any) count in the
``anonymous`` class, per peer address instead of per principal.
"""

DEFAULT_RATES: dict[str, tuple[float, int]] = {
    "heartbeat": (10.0, 50),
    "call": (100.0, 500),
    "transfer": (50.0, 200),
    "submit": (2.0, 30),
    "anonymous": (5.0, 20),
}
"""Per class: (sustained calls per second, burst) allowed to one principal (``anonymous``:
to one peer address). Far above what a well-behaved agent or data scientist does (an agent
heartbeats every few seconds and long-polls for work), low enough that a caller in a loop
is slowed down to this rate without taking the others' turn."""


def parse_rate(text: str) -> tuple[str, float, int]:
    """Parse ``CLASS=RATE/BURST`` (``--rate-limit``), e.g. ``submit=1/20``.

    Raises
    ------
    ValueError
        An unknown class, or a rate or burst that is not a positive number.
    """
    name, sep, value = text.partition("=")
    rate_text, _, burst_text = value.partition("/")
    name = name.strip()
    if not sep or name not in DEFAULT_RATES:
        raise ValueError(
            f"--rate-limit expects CLASS=RATE/BURST with CLASS one of "
            f"{', '.join(DEFAULT_RATES)}, got {text!r}"
        )
    try:
        rate = float(rate_text)
        burst = int(burst_text) if burst_text.strip() else max(1, int(rate * 2))
    except ValueError:
        raise ValueError(
            f"--rate-limit {text!r}: RATE must be a number of calls per second and BURST a "
            "whole number of calls"
        ) from None
    check_rate(name, rate, burst)
    return name, rate, burst


def check_rate(name: str, rate: float, burst: int) -> None:
    """Refuse a rate class, rate or burst that cannot work (a ``ValueError`` naming it)."""
    if name not in DEFAULT_RATES:
        raise ValueError(f"unknown rate class {name!r}; the classes are {', '.join(DEFAULT_RATES)}")
    if isinstance(rate, bool) or not (isinstance(rate, int | float) and 0 < rate < 1e9):
        raise ValueError(f"rate limit {name}: the rate must be a positive number, got {rate!r}")
    if isinstance(burst, bool) or not (isinstance(burst, int) and 1 <= burst <= 10**9):
        raise ValueError(f"rate limit {name}: the burst must be a whole number >= 1, got {burst!r}")


class RateLimited(StatusError):
    """A call refused by :class:`RateLimiter` (``RESOURCE_EXHAUSTED``).

    Attributes
    ----------
    retry_after : float
        Seconds after which the same call would be admitted.
    """

    def __init__(self, message: str, retry_after: float) -> None:
        super().__init__(Code.RESOURCE_EXHAUSTED, message)
        self.retry_after = retry_after


class RateLimiter:
    """Token buckets per caller and rate class: every call takes one token.

    A bucket holds at most ``burst`` tokens and refills at ``rate`` tokens per second; a call
    finding its bucket empty is refused with the time until the next token. Buckets are per
    caller, so a caller in a loop empties only its own and never delays anybody else's
    heartbeats. A plain object: the clock is injected and nothing here does I/O.

    Parameters
    ----------
    rates : mapping of str to (float, int), optional
        ``class -> (rate, burst)``; classes not given keep :data:`DEFAULT_RATES`.
    clock : callable, optional
        Monotonic clock in seconds (default :func:`time.monotonic`).
    max_callers : int
        Buckets kept at most; past it, full buckets (callers idle long enough to have every
        token back, indistinguishable from new ones) are forgotten, then the oldest.
    """

    def __init__(
        self,
        rates: Mapping[str, tuple[float, int]] | None = None,
        clock: Callable[[], float] = time.monotonic,
        *,
        max_callers: int = 10_000,
    ) -> None:
        merged = dict(DEFAULT_RATES)
        for name, (rate, burst) in (rates or {}).items():
            check_rate(name, rate, burst)
            merged[name] = (float(rate), int(burst))
        self.rates = merged
        self.clock = clock
        self.max_callers = max_callers
        self._lock = threading.Lock()
        self._buckets: dict[tuple[str, str], tuple[float, float]] = {}
        self.refused: dict[str, int] = dict.fromkeys(merged, 0)
        """Calls refused so far, per class."""

    @staticmethod
    def rate_class(method: str) -> str:
        """The rate class of a full method name (``/fedcity.v1.AgentService/Upload``)."""
        return RATE_CLASSES.get(method, "call")

    def admit(self, caller: str, rate_class: str, what: str = "call") -> None:
        """Take one token of ``caller``'s ``rate_class`` bucket, or refuse the call.

        Parameters
        ----------
        caller : str
            The principal's name, or ``"peer <address>"`` for an anonymous caller.
        rate_class : str
            One of :data:`DEFAULT_RATES`.
        what : str
            The call, for the refusal (e.g. ``"Heartbeat"``).

        Raises
        ------
        RateLimited
            ``RESOURCE_EXHAUSTED``, naming the caller, the limit and when to retry.
        """
        rate, burst = self.rates[rate_class]
        key = (caller, rate_class)
        with self._lock:
            now = self.clock()
            tokens, then = self._buckets.get(key, (float(burst), now))
            tokens = min(float(burst), tokens + max(0.0, now - then) * rate)
            if tokens < 1.0:
                self.refused[rate_class] += 1
                self._buckets[key] = (tokens, now)
                wait = (1.0 - tokens) / rate
                raise RateLimited(
                    f"rate limit: {caller} made more than {_figure(rate)} {rate_class} calls "
                    f"per second (bursts of {burst}; coordinator option --rate-limit "
                    f"{rate_class}={_figure(rate)}/{burst}); {what} refused, retry in "
                    f"{wait:.2f} s",
                    wait,
                )
            if key not in self._buckets and len(self._buckets) >= self.max_callers:
                self._forget(now)
            self._buckets[key] = (tokens - 1.0, now)

    def _forget(self, now: float) -> None:
        """Drop buckets that have refilled (or, failing that, the oldest half)."""
        full = [
            k
            for k, (tokens, then) in self._buckets.items()
            if tokens + (now - then) * self.rates[k[1]][0] >= self.rates[k[1]][1]
        ]
        for k in full:
            del self._buckets[k]
        if len(self._buckets) >= self.max_callers:
            oldest = sorted(self._buckets, key=lambda k: self._buckets[k][1])
            for k in oldest[: len(oldest) // 2 + 1]:
                del self._buckets[k]

    @property
    def callers(self) -> int:
        """Buckets held now."""
        with self._lock:
            return len(self._buckets)


def _figure(rate: float) -> str:
    return f"{rate:g}"


def peer_address(peer: str) -> str:
    """The address of a gRPC peer without its port (``ipv4:10.0.0.7:53412`` -> ``10.0.0.7``).

    Every connection of one machine comes from another port, so anonymous callers are
    counted per address.
    """
    kind, _, rest = peer.partition(":")
    if kind in ("ipv4", "ipv6") and ":" in rest:
        host = unquote(rest.rsplit(":", 1)[0]).strip("[]")
        return host or peer
    return peer or "unknown"
