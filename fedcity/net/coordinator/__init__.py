"""The coordinator: a gRPC shell over :class:`~fedcity.learn.driver.JobDriver` with a durable log.

Agencies' agents dial in (``AgentService``): they register the datasets they offer, heartbeat,
long-poll for work, upload encrypted contributions and partial decryptions, and download the
encrypted aggregates they are asked to partially decrypt. Data scientists submit and watch
jobs (``JobService``). The coordinator only ever holds ciphertexts and released aggregates.

Architecture::

    gRPC threads ──► servicers.py (thin: status codes, call limits in limits.py)
                        └──► core.Coordinator = agencies.AgencyCalls + scientists.ScientistCalls
                             over state.CoordinatorState (one lock + condition)
                               ├─ runtime.JobRuntime + JobDriver per running job
                               ├─ liveness.Liveness on a ProgressClock (own stalls left out)
                               └─ Store (SQLite, WAL, FULL sync, hash-chained event log)
    ticker thread ──► Coordinator.tick(): liveness drops, collect deadlines, decrypt re-asks

State lives in the drivers; durability in the :class:`~fedcity.net.store.Store`'s per-job
event log. Every event a driver accepted (contribution, drop, close, partial, cancel) is
written in its own transaction before the RPC is acknowledged; a refused input writes
nothing. On start every running job is rebuilt from its stored spec and its events replayed
in order through a fresh driver (:func:`~fedcity.net.coordinator.runtime.replay`), which
reaches the exact same state (including encrypted aggregates) as an uninterrupted run.
Timer-driven decisions (closing at a deadline, dropping a silent agency) are themselves
events, so replay never depends on the clock.

Run it with :func:`serve` or :func:`main` (``fedcity coordinator serve ...``).
"""

from fedcity.net.coordinator.config import (
    AGENT_SERVICE,
    JOB_SERVICE,
    CoordinatorConfig,
    CoordinatorMetrics,
    StatusError,
)
from fedcity.net.coordinator.core import Coordinator
from fedcity.net.coordinator.liveness import Liveness, ManualClock, ProgressClock
from fedcity.net.coordinator.server import CoordinatorServer, main, serve
from fedcity.net.coordinator.servicers import DecodeInterceptor

__all__ = [
    "AGENT_SERVICE",
    "JOB_SERVICE",
    "Coordinator",
    "CoordinatorConfig",
    "CoordinatorMetrics",
    "CoordinatorServer",
    "DecodeInterceptor",
    "Liveness",
    "ManualClock",
    "ProgressClock",
    "StatusError",
    "main",
    "serve",
]
