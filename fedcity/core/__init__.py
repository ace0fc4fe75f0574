"""The sans-IO protocol core shared by the in-process federation and the networked services.

Nothing here opens a socket, starts a thread or touches a file: tasks, aggregation schemes,
the coordinator's round state machine and the agency's task handler are plain objects, driven
by :class:`fedcity.learn.LocalFederation` in process and by the gRPC shells over the network.
"""

from fedcity.core.aggregation import (
    AggregationScheme,
    KeyHolderScheme,
    PaillierScheme,
    PlaintextScheme,
)
from fedcity.core.errors import (
    AgencyUnavailable,
    JobFailed,
    ProtocolError,
    RejectedContribution,
)
from fedcity.core.integrity import ContributionVerifier, Evidence, SignedContribution
from fedcity.core.nodes import AgencyNode
from fedcity.core.rounds import AggregationRound, RoundPhase
from fedcity.core.tasks import LOCAL_STEPS, Task, TaskRequest, local_step

__all__ = [
    "LOCAL_STEPS",
    "AgencyNode",
    "AgencyUnavailable",
    "AggregationRound",
    "AggregationScheme",
    "ContributionVerifier",
    "Evidence",
    "JobFailed",
    "KeyHolderScheme",
    "PaillierScheme",
    "PlaintextScheme",
    "ProtocolError",
    "RejectedContribution",
    "RoundPhase",
    "SignedContribution",
    "Task",
    "TaskRequest",
    "local_step",
]
