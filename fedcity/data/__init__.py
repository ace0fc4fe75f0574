"""Agency data: validated tables, federated preprocessing, synthetic and real data sets.

Nothing in this package encrypts or communicates. It turns each agency's table into validated
arrays (:class:`AgencyDataset`), produces the statistics the federation sums securely
(:meth:`AgencyDataset.summary`), builds the shared preprocessing from their sum
(:class:`FederatedPreprocessor`), and supplies data to test and benchmark against:
:func:`make_city` (synthetic, with ground truth) and the loaders of :mod:`fedcity.data.real`.
"""

from fedcity.data.dataset import (
    AgencyDataset,
    DataError,
    FeatureSpec,
    FederatedData,
    Moments,
    SummaryStatistics,
    TaskKind,
)
from fedcity.data.preprocess import FederatedPreprocessor
from fedcity.data.real import (
    ChicagoInspections,
    DataUnavailable,
    data_root,
    load_chicago_inspections,
    load_chicago_ridership,
    load_fate_dvisits,
    load_fate_horizontal,
    load_fate_motor,
)
from fedcity.data.synthetic import TASKS, SyntheticCity, make_city

__all__ = [
    "TASKS",
    "AgencyDataset",
    "ChicagoInspections",
    "DataError",
    "DataUnavailable",
    "FeatureSpec",
    "FederatedData",
    "FederatedPreprocessor",
    "Moments",
    "SummaryStatistics",
    "SyntheticCity",
    "TaskKind",
    "data_root",
    "load_chicago_inspections",
    "load_chicago_ridership",
    "load_fate_dvisits",
    "load_fate_horizontal",
    "load_fate_motor",
    "make_city",
]
