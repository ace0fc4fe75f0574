"""Federated learning: jobs that return scikit-learn estimators, trained over secure sums.

Import the data scientist's API from here: :class:`LocalFederation` (agencies in process),
the job classes, and :class:`FederatedResult`.
"""

from fedcity.learn.fedavg import FedAvgJob, FederatedAveraging
from fedcity.learn.federation import LocalFederation
from fedcity.learn.jobs import (
    FederatedResult,
    LogisticRegressionJob,
    PoissonRegressionJob,
    RidgeJob,
)

__all__ = [
    "FedAvgJob",
    "FederatedAveraging",
    "FederatedResult",
    "LocalFederation",
    "LogisticRegressionJob",
    "PoissonRegressionJob",
    "RidgeJob",
]
