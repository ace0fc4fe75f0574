"""Synthetic city data with a known ground truth, for tests that must not download anything.

:func:`make_city` draws one table per district (agency) from a generalised linear model whose
coefficients are returned with the data. The federation is deliberately awkward, as real ones
are:

* **unequal sizes** — district sizes follow a Zipf-like law, ``size_i ∝ 1 / (i + 1)^skew``,
  with at least 30 rows in the smallest district;
* **covariate shift** — every district shifts every numeric feature's latent variable by its
  own amount (standard deviation ``heterogeneity``), so district means differ;
* **different category mixes** — every district has its own level probabilities, and most
  districts lack some levels entirely. Some declared levels (e.g. ``land_use="airport"``)
  occur nowhere, so federated level discovery has something to discover.

The label model is the same everywhere (the shift is in the features, not in the concept).

Every numeric feature is a transform of a standard-normal latent variable
``z = δ_district + ℓ·u + √(1-ℓ²)·ε`` with a row factor ``u`` shared by all features (so
features correlate) and independent noise ``ε``. The ground-truth coefficients are on the raw
feature scale: ``η = intercept + Σ coef[x]·x + Σ coef[column_level]`` over the one-hot names of
the row's levels (the first declared level of each column has effect 0). Binary tasks draw
``y ~ Bernoulli(sigmoid(η))``, ``service_demand`` draws ``y ~ Poisson(exp(η))``.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import date
from typing import Literal

import numpy as np
import numpy.typing as npt
import pandas as pd

from fedcity.data.dataset import AgencyDataset, FeatureSpec, FederatedData

__all__ = [
    "AGE_BANDS",
    "TASKS",
    "ElderlyCity",
    "SyntheticCity",
    "age_band",
    "make_city",
    "make_elderly_city",
]

CityTask = Literal["flood", "fire", "service_demand", "elder_risk"]
FeatureKind = Literal["normal", "lognormal", "share", "count", "flag"]

MIN_AGENCY_ROWS = 30
"""The smallest district :func:`make_city` produces."""


@dataclass(frozen=True)
class _Numeric:
    """A numeric feature: ``kind`` maps the latent ``z`` to a value with parameters ``a, b``.

    normal: ``a + b·z``; lognormal: ``exp(a + b·z)``; share: ``sigmoid(a + b·z)``;
    count: ``Poisson(a·exp(b·z))``; flag: ``1[z > a]``. ``effect`` is the change of the linear
    predictor per reference standard deviation; ``loading`` the weight of the shared factor.
    """

    name: str
    kind: FeatureKind
    a: float
    b: float
    effect: float
    loading: float = 0.0


@dataclass(frozen=True)
class _Categorical:
    """A categorical feature: declared levels, their effects, and levels that never occur."""

    name: str
    levels: tuple[str, ...]
    effects: tuple[float, ...]
    absent: tuple[str, ...] = ()


@dataclass(frozen=True)
class _Template:
    label: str
    family: Literal["binary", "poisson"]
    base: float  # base rate (binary) or base mean (poisson)
    numeric: tuple[_Numeric, ...]
    categorical: tuple[_Categorical, ...]


_LAND_USE = _Categorical(
    "land_use",
    ("residential", "commercial", "industrial", "park", "mixed_use", "airport"),
    (0.0, 0.3, 0.45, -0.5, 0.2, 0.0),
    absent=("airport",),
)

_TEMPLATES: dict[str, _Template] = {
    "flood": _Template(
        label="flooded",
        family="binary",
        base=0.12,
        numeric=(
            _Numeric("elevation_m", "normal", 180.0, 15.0, -0.8, -0.5),
            _Numeric("rainfall_mm", "lognormal", math.log(40.0), 0.5, 0.9),
            _Numeric("impervious_share", "share", 0.0, 1.0, 0.6, 0.6),
            _Numeric("distance_to_river_m", "lognormal", math.log(800.0), 0.8, -0.5, -0.3),
            _Numeric("drain_capacity_index", "normal", 1.0, 0.25, -0.4, 0.2),
            _Numeric("building_age_years", "lognormal", math.log(40.0), 0.5, 0.2, 0.3),
        ),
        categorical=(
            _LAND_USE,
            _Categorical("soil_type", ("clay", "loam", "sand"), (0.0, -0.3, -0.6)),
        ),
    ),
    "fire": _Template(
        label="fire_incident",
        family="binary",
        base=0.06,
        numeric=(
            _Numeric("building_age_years", "lognormal", math.log(45.0), 0.5, 0.6, 0.4),
            _Numeric("floor_area_m2", "lognormal", math.log(250.0), 0.9, 0.3, -0.2),
            _Numeric("occupants", "count", 12.0, 0.8, 0.3),
            _Numeric("calls_last_year", "count", 2.0, 0.7, 0.5, 0.4),
            _Numeric("distance_to_station_km", "lognormal", math.log(1.5), 0.5, 0.4),
            _Numeric("days_since_inspection", "lognormal", math.log(400.0), 0.6, 0.35, 0.2),
            _Numeric("sprinklered", "flag", 0.3, 0.0, -0.7, -0.4),
        ),
        categorical=(
            _Categorical(
                "building_type",
                ("single_family", "apartment", "commercial", "industrial", "vacant", "mixed_use"),
                (0.0, 0.2, 0.1, 0.5, 1.0, 0.15),
            ),
            _Categorical(
                "heating_fuel",
                ("gas", "electric", "oil", "wood", "coal"),
                (0.0, -0.2, 0.3, 0.6, 0.0),
                absent=("coal",),
            ),
        ),
    ),
    "service_demand": _Template(
        label="requests_311",
        family="poisson",
        base=3.0,
        numeric=(
            _Numeric("population_density_km2", "lognormal", math.log(5000.0), 0.6, 0.35, 0.5),
            _Numeric("median_income_k", "lognormal", math.log(60.0), 0.4, -0.15, -0.4),
            _Numeric("calls_last_year", "count", 20.0, 0.6, 0.4, 0.3),
            _Numeric("share_over_65", "share", -1.7, 0.5, 0.1, -0.1),
            _Numeric("housing_units", "lognormal", math.log(150.0), 0.6, 0.3, 0.3),
            _Numeric("temperature_c", "normal", 12.0, 9.0, 0.15),
        ),
        categorical=(_LAND_USE,),
    ),
    "elder_risk": _Template(
        label="hospitalised_90d",
        family="binary",
        base=0.15,
        numeric=(
            _Numeric("age_years", "normal", 78.0, 7.0, 0.6, 0.3),
            _Numeric("chronic_conditions", "count", 2.0, 0.5, 0.7, 0.4),
            _Numeric("er_visits_last_year", "count", 0.6, 0.8, 0.6, 0.4),
            _Numeric("lives_alone", "flag", 0.4, 0.0, 0.3, 0.2),
            _Numeric("distance_to_clinic_km", "lognormal", math.log(2.0), 0.6, 0.2),
            _Numeric("heat_index_c", "normal", 30.0, 4.0, 0.25),
            _Numeric("income_k", "lognormal", math.log(30.0), 0.5, -0.3, -0.4),
        ),
        categorical=(
            _Categorical(
                "housing_type",
                ("owner", "renter", "public_housing", "assisted_living", "shelter"),
                (0.0, 0.15, 0.3, -0.2, 0.0),
                absent=("shelter",),
            ),
        ),
    ),
}

TASKS: tuple[str, ...] = tuple(_TEMPLATES)
"""The task names :func:`make_city` accepts."""


def _reference_moments(feature: _Numeric) -> tuple[float, float]:
    """Mean and standard deviation of the feature when ``z ~ N(0, 1)``."""
    a, b = feature.a, feature.b
    if feature.kind == "normal":
        return a, abs(b)
    if feature.kind == "lognormal":
        mean = math.exp(a + b * b / 2)
        return mean, mean * math.sqrt(math.expm1(b * b))
    if feature.kind == "count":
        mean = a * math.exp(b * b / 2)
        var_rate = a * a * math.exp(b * b) * math.expm1(b * b)
        return mean, math.sqrt(mean + var_rate)
    if feature.kind == "flag":
        p = 0.5 * math.erfc(a / math.sqrt(2.0))
        return p, math.sqrt(p * (1 - p))
    # share: Gauss-Hermite quadrature of sigmoid(a + b z)
    nodes, weights = np.polynomial.hermite_e.hermegauss(64)
    weights = weights / math.sqrt(2 * math.pi)
    values = 1.0 / (1.0 + np.exp(-(a + b * nodes)))
    mean = float(weights @ values)
    return mean, math.sqrt(max(float(weights @ (values * values)) - mean * mean, 1e-12))


def _draw_numeric(
    feature: _Numeric, z: npt.NDArray[np.float64], rng: np.random.Generator
) -> npt.NDArray[np.float64]:
    a, b = feature.a, feature.b
    if feature.kind == "normal":
        return a + b * z
    if feature.kind == "lognormal":
        return np.exp(a + b * z)
    if feature.kind == "share":
        return 1.0 / (1.0 + np.exp(-(a + b * z)))
    if feature.kind == "count":
        return rng.poisson(a * np.exp(b * z)).astype(np.float64)
    return (z > a).astype(np.float64)


def _linear_predictor(
    frame: pd.DataFrame, spec: FeatureSpec, intercept: float, coefficients: Mapping[str, float]
) -> npt.NDArray[np.float64]:
    eta: npt.NDArray[np.float64] = np.full(len(frame), intercept, dtype=np.float64)
    for column in spec.numeric:
        eta += coefficients[column] * frame[column].to_numpy(dtype=np.float64)
    for column in spec.categorical:
        names = column + "_" + frame[column].astype(str)
        eta += names.map(coefficients).to_numpy(dtype=np.float64)
    return eta


def _district_sizes(n_samples: int, n_agencies: int, skew: float) -> list[int]:
    """Zipf-like sizes summing to ``n_samples``, largest first, each ≥ MIN_AGENCY_ROWS."""
    weights = 1.0 / np.arange(1, n_agencies + 1, dtype=np.float64) ** skew
    spare = n_samples - MIN_AGENCY_ROWS * n_agencies
    ideal = spare * weights / weights.sum()
    extra = np.floor(ideal).astype(np.int64)
    # largest remainders get the leftover rows (ties: the larger district first)
    leftover = spare - int(extra.sum())
    order = np.argsort(-(ideal - extra), kind="stable")
    extra[order[:leftover]] += 1
    return [MIN_AGENCY_ROWS + int(e) for e in extra]


@dataclass(frozen=True, eq=False)
class SyntheticCity(FederatedData):
    """A synthetic federation with its ground truth (see :func:`make_city`).

    Parameters
    ----------
    name, task, spec, agencies, test
        As in :class:`~fedcity.data.FederatedData`; ``name`` is the city task (``"flood"``,
        ...) and ``test`` carries an extra ``district`` column.
    intercept : float
        Ground-truth intercept of the linear predictor.
    coefficients : mapping of str to float
        Ground-truth coefficients on the raw feature scale, keyed by numeric column name and by
        one-hot name ``"<column>_<level>"`` for every declared level (0 for the first level of
        each column and for levels that never occur).
    seed : int
        The seed the city was drawn with.
    """

    intercept: float
    coefficients: Mapping[str, float]
    seed: int

    def true_linear_predictor(self, frame: pd.DataFrame) -> npt.NDArray[np.float64]:
        """Ground-truth linear predictor ``η`` of every row of ``frame``.

        Parameters
        ----------
        frame : pandas.DataFrame
            Holds the spec's feature columns (e.g. :attr:`test` or a ``to_frame()``).

        Returns
        -------
        ndarray of float64, shape (n_rows,)
        """
        return _linear_predictor(frame, self.spec, self.intercept, self.coefficients)

    def true_mean(self, frame: pd.DataFrame) -> npt.NDArray[np.float64]:
        """Ground-truth ``E[y | x]``: a probability (binary) or a rate (Poisson).

        Parameters
        ----------
        frame : pandas.DataFrame

        Returns
        -------
        ndarray of float64, shape (n_rows,)
        """
        eta = self.true_linear_predictor(frame)
        if self.task == "poisson":
            return np.exp(eta)
        return 1.0 / (1.0 + np.exp(-eta))


def make_city(
    n_agencies: int = 8,
    *,
    task: CityTask = "flood",
    n_samples: int = 20000,
    skew: float = 1.5,
    seed: int = 0,
    n_test: int | None = None,
    heterogeneity: float = 0.6,
) -> SyntheticCity:
    """Draw a synthetic city: one skewed, non-IID table per district plus a test table.

    Parameters
    ----------
    n_agencies : int, default 8
        Number of districts (agencies), named ``"district-1"``, ``"district-2"``, ... (numbers
        zero-padded to a common width from 10 districts on) from the largest to the smallest.
    task : {"flood", "fire", "service_demand", "elder_risk"}, default "flood"
        ``flood`` (label ``flooded``), ``fire`` (``fire_incident``) and ``elder_risk``
        (``hospitalised_90d``) are binary; ``service_demand`` (``requests_311``) is a count.
    n_samples : int, default 20000
        Training rows over all districts; at least ``30 * n_agencies``.
    skew : float, default 1.5
        Zipf exponent of the district sizes (0 gives equal sizes).
    seed : int, default 0
        Everything is a deterministic function of the arguments.
    n_test : int or None, default None
        Test rows (default ``max(n_samples // 4, 200)``), drawn from the districts in
        proportion to their sizes.
    heterogeneity : float, default 0.6
        Standard deviation of the per-district shift of every feature's latent variable.

    Returns
    -------
    SyntheticCity

    Raises
    ------
    ValueError
        On an unknown task or out-of-range sizes.

    Examples
    --------
    >>> city = make_city(4, task="fire", n_samples=2000, seed=1)
    >>> city.agency_names
    ('district-1', 'district-2', 'district-3', 'district-4')
    >>> city.n_train
    2000
    """
    if task not in _TEMPLATES:
        raise ValueError(f"unknown task {task!r}; choose one of {list(TASKS)}")
    if not isinstance(n_agencies, int) or n_agencies < 1:
        raise ValueError(f"n_agencies must be a positive integer, got {n_agencies!r}")
    if n_samples < MIN_AGENCY_ROWS * n_agencies:
        raise ValueError(
            f"n_samples={n_samples} is too small for {n_agencies} districts of at least "
            f"{MIN_AGENCY_ROWS} rows"
        )
    if not (math.isfinite(skew) and skew >= 0):
        raise ValueError(f"skew must be finite and non-negative, got {skew!r}")
    if not (math.isfinite(heterogeneity) and heterogeneity >= 0):
        raise ValueError(f"heterogeneity must be finite and non-negative, got {heterogeneity!r}")
    test_rows = max(n_samples // 4, 200) if n_test is None else n_test
    if test_rows < 1:
        raise ValueError(f"n_test must be positive, got {n_test!r}")

    template = _TEMPLATES[task]
    spec = FeatureSpec(
        numeric=tuple(f.name for f in template.numeric),
        categorical={c.name: c.levels for c in template.categorical},
        label=template.label,
    )
    rng = np.random.default_rng(np.random.SeedSequence([seed, n_agencies, n_samples]))
    sizes = _district_sizes(n_samples, n_agencies, skew)
    width = len(str(n_agencies))
    names = [f"district-{i + 1:0{width}d}" for i in range(n_agencies)]

    # --- ground truth on the raw scale
    coefficients: dict[str, float] = {}
    centre = 0.0
    for f in template.numeric:
        mean, sd = _reference_moments(f)
        coefficients[f.name] = f.effect / sd
        centre += coefficients[f.name] * mean
    for c in template.categorical:
        present = [e for lv, e in zip(c.levels, c.effects, strict=True) if lv not in c.absent]
        centre += float(np.mean(present))
        for level, effect in zip(c.levels, c.effects, strict=True):
            coefficients[f"{c.name}_{level}"] = 0.0 if level in c.absent else effect
    base = template.base
    link = math.log(base / (1 - base)) if template.family == "binary" else math.log(base)
    intercept = link - centre

    # --- district parameters: latent shifts and category mixes
    shifts = rng.normal(0.0, heterogeneity, size=(n_agencies, len(template.numeric)))
    mixes: list[list[npt.NDArray[np.float64]]] = []
    for _ in range(n_agencies):
        district_mix = []
        for c in template.categorical:
            live = np.array([lv not in c.absent for lv in c.levels])
            keep = live & (rng.random(len(c.levels)) > 0.35)
            if keep.sum() < 2:  # every district has at least two levels
                candidates = np.flatnonzero(live & ~keep)
                keep[rng.choice(candidates, size=2 - int(keep.sum()), replace=False)] = True
            probs = np.zeros(len(c.levels))
            raw = rng.dirichlet(np.ones(int(keep.sum())))
            probs[keep] = 0.8 * raw + 0.2 / keep.sum()
            district_mix.append(probs / probs.sum())
        mixes.append(district_mix)

    def draw(district: npt.NDArray[np.int64]) -> pd.DataFrame:
        n = len(district)
        u = rng.standard_normal(n)
        data: dict[str, npt.NDArray[np.float64] | npt.NDArray[np.object_]] = {}
        for j, f in enumerate(template.numeric):
            noise = rng.standard_normal(n)
            z = shifts[district, j] + f.loading * u + math.sqrt(1 - f.loading**2) * noise
            data[f.name] = _draw_numeric(f, z, rng)
        for k, c in enumerate(template.categorical):
            levels = np.asarray(c.levels, dtype=object)
            cumulative = np.cumsum(np.stack([mixes[d][k] for d in range(n_agencies)]), axis=1)
            draws = rng.random(n)
            codes = (draws[:, None] > cumulative[district]).sum(axis=1)
            codes = np.minimum(codes, len(c.levels) - 1)
            data[c.name] = levels[codes]
        return pd.DataFrame(data)

    def label(frame: pd.DataFrame) -> npt.NDArray[np.float64]:
        eta = _linear_predictor(frame, spec, intercept, coefficients)
        if template.family == "poisson":
            counts: npt.NDArray[np.float64] = rng.poisson(np.exp(eta)).astype(np.float64)
            return counts
        return (rng.random(len(frame)) < 1.0 / (1.0 + np.exp(-eta))).astype(np.float64)

    train_district = np.repeat(np.arange(n_agencies), sizes)
    train = draw(train_district)
    # every level that is not declared absent occurs somewhere in the training data
    for c in template.categorical:
        seen = set(train[c.name])
        for level in c.levels:
            if level not in c.absent and level not in seen:
                row = int(np.flatnonzero(train_district == 0)[int(rng.integers(sizes[0]))])
                train.loc[row, c.name] = level
                seen.add(level)
    train[template.label] = label(train)

    test_district = np.sort(rng.choice(n_agencies, size=test_rows, p=np.asarray(sizes) / n_samples))
    test = draw(test_district)
    test[template.label] = label(test)
    test.insert(0, "district", np.asarray(names, dtype=object)[test_district])

    agencies = tuple(
        AgencyDataset.from_frame(
            train.loc[train_district == d].reset_index(drop=True), spec, agency=names[d]
        )
        for d in range(n_agencies)
    )
    return SyntheticCity(
        name=task,
        task="poisson" if template.family == "poisson" else "binary",
        spec=spec,
        agencies=agencies,
        test=test,
        intercept=intercept,
        coefficients=coefficients,
        seed=seed,
    )


# -- the elderly-living-alone scenario ---------------------------------------------------------
ELDERLY_AGE = 65
"""Residents of this age or older count as elderly."""
AGE_BANDS = ("65-74", "75-84", "85+")
"""Age bands of elderly residents (:func:`age_band`)."""
_ALONE_BY_BAND = {"under 65": 0.15, "65-74": 0.28, "75-84": 0.4, "85+": 0.52}


def age_band(age: npt.ArrayLike) -> npt.NDArray[np.object_]:
    """``"under 65"``, ``"65-74"``, ``"75-84"`` or ``"85+"`` for each age."""
    a = np.asarray(age, dtype=np.int64)
    bands = np.full(a.shape, "under 65", dtype=object)
    bands[(a >= 65) & (a < 75)] = "65-74"
    bands[(a >= 75) & (a < 85)] = "75-84"
    bands[a >= 85] = "85+"
    return bands


@dataclass(frozen=True, eq=False)
class ElderlyCity:
    """Synthetic residents and daily electricity use per district (:func:`make_elderly_city`).

    Attributes
    ----------
    residents : pandas.DataFrame
        What a civil-affairs office holds: ``district``, ``resident_id``, ``age`` and
        ``lives_alone`` (0/1), one row per resident.
    electricity : pandas.DataFrame
        What the utility holds: ``district``, ``resident_id``, ``day`` (a date) and ``kwh``
        (daily use of the resident's household meter, 2 decimals), one row per resident and day.
    spells : pandas.DataFrame
        The ground truth: ``resident_id``, ``start`` (a date) and ``days`` of every planted spell
        of near-zero use (at most 0.3 kWh a day); residents appear at most once.
    districts : tuple of str
        District names, ``"district-1"``, ... from the largest to the smallest.
    start : datetime.date
        The first day of the readings.
    n_days : int
    seed : int
    """

    residents: pd.DataFrame
    electricity: pd.DataFrame
    spells: pd.DataFrame
    districts: tuple[str, ...]
    start: date
    n_days: int
    seed: int

    def district(self, name: str) -> tuple[pd.DataFrame, pd.DataFrame]:
        """``(residents, electricity)`` of one district (fresh indexes).

        Raises
        ------
        KeyError
            ``name`` is not a district of this city.
        """
        if name not in self.districts:
            raise KeyError(f"no district {name!r}; districts: {list(self.districts)}")
        res = self.residents[self.residents["district"] == name].reset_index(drop=True)
        use = self.electricity[self.electricity["district"] == name].reset_index(drop=True)
        return res, use


def make_elderly_city(
    n_districts: int = 6,
    *,
    residents: int = 6000,
    days: int = 14,
    skew: float = 1.0,
    spell_rate: float = 0.05,
    start: str = "2026-01-05",
    seed: int = 0,
) -> ElderlyCity:
    """Draw residents (age, living alone) and their daily electricity use, per district.

    Each district has its own share of elderly residents (about 20-45 %); the share living
    alone grows with age (15 % under 65, 28 / 40 / 52 % in the bands 65-74 / 75-84 / 85+).
    Every resident's household uses a typical ``exp(N(log 6, 0.35))`` kWh a day (60 % of that
    when living alone, 80 % when elderly), varied day to day by ``exp(N(0, 0.2))`` and 10 %
    less at weekends; a normal day falls below 0.5 kWh with probability about 1e-6 (below
    1 kWh: about 1e-3), so a threshold of 0.5 kWh separates spells from ordinary days. A share
    of residents, ``spell_rate`` (doubled for elderly residents living alone), has one *spell*
    of 1 to 4 consecutive days of near-zero use (uniform in [0, 0.3) kWh, rounded to 0.01) — a
    stay in hospital, a fall, or a trip: the planted events a welfare check looks for, in
    :attr:`ElderlyCity.spells`.

    Parameters
    ----------
    n_districts : int, default 6
        Districts, named ``"district-1"``, ... (sizes ``∝ 1 / i^skew``, at least 30 residents).
    residents : int, default 6000
        Residents over all districts.
    days : int, default 14
        Days of readings (at least 2).
    skew : float, default 1.0
        Zipf exponent of the district sizes.
    spell_rate : float, default 0.05
        Share of residents with a near-zero spell (in [0, 0.5]).
    start : str, default "2026-01-05"
        First day, ``YYYY-MM-DD``.
    seed : int, default 0
        Everything is a deterministic function of the arguments.

    Returns
    -------
    ElderlyCity

    Raises
    ------
    ValueError
        On out-of-range arguments.

    Examples
    --------
    >>> city = make_elderly_city(3, residents=300, days=7, seed=1)
    >>> city.districts
    ('district-1', 'district-2', 'district-3')
    >>> len(city.electricity) == 300 * 7
    True
    """
    if isinstance(n_districts, bool) or not isinstance(n_districts, int) or n_districts < 1:
        raise ValueError(f"n_districts must be a positive integer, got {n_districts!r}")
    if isinstance(residents, bool) or not isinstance(residents, int):
        raise ValueError(f"residents must be an integer, got {residents!r}")
    if residents < MIN_AGENCY_ROWS * n_districts or residents > 10_000_000:
        raise ValueError(
            f"residents={residents} must lie in [{MIN_AGENCY_ROWS} × n_districts, 10,000,000] "
            f"for {n_districts} districts"
        )
    if isinstance(days, bool) or not isinstance(days, int) or not 2 <= days <= 3660:
        raise ValueError(f"days must be an integer in [2, 3660], got {days!r}")
    if residents * days > 50_000_000:
        raise ValueError(f"residents × days = {residents * days:,} exceeds 50,000,000 readings")
    if not (math.isfinite(skew) and skew >= 0):
        raise ValueError(f"skew must be finite and non-negative, got {skew!r}")
    if not (math.isfinite(spell_rate) and 0 <= spell_rate <= 0.5):
        raise ValueError(f"spell_rate must lie in [0, 0.5], got {spell_rate!r}")
    try:
        first = date.fromisoformat(start)
    except (TypeError, ValueError) as exc:
        raise ValueError(f"start must be a date YYYY-MM-DD, got {start!r}") from exc

    rng = np.random.default_rng(np.random.SeedSequence([seed, n_districts, residents, days]))
    sizes = _district_sizes(residents, n_districts, skew)
    names = tuple(f"district-{i + 1}" for i in range(n_districts))
    district = np.repeat(np.arange(n_districts), sizes)
    elderly_share = rng.uniform(0.2, 0.45, n_districts)[district]
    elderly = rng.random(residents) < elderly_share
    # elderly ages 65..100, younger residents 18..64
    old_age = np.minimum(ELDERLY_AGE + np.floor(rng.gamma(1.6, 8.0, residents)), 100)
    young_age = rng.integers(18, ELDERLY_AGE, residents)
    age = np.where(elderly, old_age, young_age).astype(np.int64)
    bands = age_band(age)
    p_alone = np.asarray([_ALONE_BY_BAND[b] for b in bands])
    alone = (rng.random(residents) < p_alone).astype(np.int64)
    ids = np.asarray([f"r{i:07d}" for i in range(residents)], dtype=object)

    base = np.exp(rng.normal(math.log(6.0), 0.35, residents))
    base *= np.where(alone == 1, 0.6, 1.0) * np.where(elderly, 0.8, 1.0)
    day_dates = pd.date_range(first, periods=days, freq="D")
    weekend = np.where(day_dates.day_of_week >= 5, 0.9, 1.0)
    kwh = base[:, None] * weekend[None, :] * np.exp(rng.normal(0.0, 0.2, (residents, days)))

    rate = np.where(elderly & (alone == 1), min(1.0, 2 * spell_rate), spell_rate)
    has_spell = rng.random(residents) < rate
    length = rng.integers(1, 5, residents)
    length = np.minimum(length, days)
    begin = rng.integers(0, days - length + 1)
    spell_rows = np.flatnonzero(has_spell)
    for r in spell_rows:
        span = slice(int(begin[r]), int(begin[r] + length[r]))
        kwh[r, span] = rng.uniform(0.0, 0.3, int(length[r]))
    kwh = np.round(kwh, 2)

    residents_frame = pd.DataFrame(
        {
            "district": np.asarray(names, dtype=object)[district],
            "resident_id": ids,
            "age": age,
            "lives_alone": alone,
        }
    )
    electricity = pd.DataFrame(
        {
            "district": np.repeat(np.asarray(names, dtype=object)[district], days),
            "resident_id": np.repeat(ids, days),
            "day": np.tile(day_dates.date, residents),
            "kwh": kwh.reshape(-1),
        }
    )
    spells = pd.DataFrame(
        {
            "resident_id": ids[spell_rows],
            "start": day_dates.date[begin[spell_rows]],
            "days": length[spell_rows].astype(np.int64),
        }
    )
    return ElderlyCity(
        residents=residents_frame,
        electricity=electricity,
        spells=spells,
        districts=names,
        start=first,
        n_days=days,
        seed=seed,
    )
