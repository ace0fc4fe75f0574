"""The coordinator's state and rules, independent of gRPC plumbing.

Every public method of :class:`Coordinator` either returns a response message or raises
:class:`~fedcity.net.coordinator.config.StatusError`. The state and the rules that move jobs
live in :mod:`.state`; the agencies' calls in :mod:`.agencies`; the data scientists' in
:mod:`.scientists`.
"""

from __future__ import annotations

from fedcity.net.coordinator.agencies import AgencyCalls
from fedcity.net.coordinator.scientists import ScientistCalls

__all__ = ["Coordinator"]


class Coordinator(AgencyCalls, ScientistCalls):
    """The coordinator's state and rules, independent of gRPC plumbing.

    Every public method either returns a response message or raises :class:`StatusError`.
    All state (drivers, registrations, the store's writes) is guarded by one re-entrant lock;
    long polls wait on a condition variable bound to it. Proofs of partial decryptions are
    verified outside it.

    Parameters
    ----------
    federation : Federation
    store : Store
    config : CoordinatorConfig
    metrics : CoordinatorMetrics, optional
    clock : callable, optional
        The progress clock (default: a :class:`ProgressClock` over :func:`time.monotonic`
        with ``config.stall_threshold``); tests pass a manual clock.
    """
