"""The coordinator's state and rules, independent of gRPC plumbing.

Every public method of :class:`Coordinator` either returns a response message or raises
:class:`~fedcity.net.coordinator.config.StatusError`. The state and the rules that move jobs
live in :mod:`.state`; the agencies' calls in :mod:`.agencies` (range audits in
:mod:`.audits`); the data scientists' in
:mod:`.scientists`; the dashboard's read-only snapshots in :mod:`.snapshot`.
"""

from __future__ import annotations

from fedcity.net.coordinator.audits import AuditCalls
from fedcity.net.coordinator.scientists import ScientistCalls
from fedcity.net.coordinator.snapshot import SnapshotCalls

__all__ = ["Coordinator"]


class Coordinator(AuditCalls, ScientistCalls, SnapshotCalls):
    """The coordinator's state and rules, independent of gRPC plumbing.

    See :class:`~fedcity.net.coordinator.state.CoordinatorState` for the parameters and the
    locking rules.
    """
