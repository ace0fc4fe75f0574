"""Federated metrics from summed sufficient statistics equal sklearn's pooled metrics."""

from __future__ import annotations

import math
from collections.abc import Callable

import numpy as np
import numpy.typing as npt
import pytest
from sklearn.datasets import load_breast_cancer, load_diabetes
from sklearn.linear_model import LogisticRegression, PoissonRegressor, Ridge
from sklearn.metrics import (
    accuracy_score,
    brier_score_loss,
    log_loss,
    mean_absolute_error,
    mean_poisson_deviance,
    mean_squared_error,
    r2_score,
    roc_auc_score,
)
from sklearn.model_selection import cross_val_predict
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

from fedcity.crypto import PackingSpec
from fedcity.learn.metrics import (
    DEFAULT_N_BINS,
    LOG_LOSS_MAX,
    REGRESSION_VECTOR_LENGTH,
    classification_error_bounds,
    classification_layout,
    classification_metrics_from_sum,
    classification_scale,
    classification_statistics,
    classification_vector_length,
    quantization_atol,
    regression_error_bounds,
    regression_layout,
    regression_metrics_from_sum,
    regression_scale,
    regression_statistics,
    score_bin_edges,
    score_bins,
)

Array = npt.NDArray[np.float64]
REL = 1e-9
AUC_TOL = 1e-3  # documented bound for realistic data; measured errors are ~1e-5
FRACTIONS = (0.06, 0.12, 0.2, 0.27, 0.35)  # five unequal agencies
K = len(FRACTIONS)


def split_agencies(n: int, seed: int = 0) -> list[npt.NDArray[np.intp]]:
    perm = np.random.default_rng(seed).permutation(n)
    cuts = (np.cumsum(FRACTIONS)[:-1] * n).astype(int)
    parts = np.split(perm, cuts)
    assert len({len(p) for p in parts}) == K
    return parts


def make_weights(n: int, weighted: bool, seed: int = 1) -> Array | None:
    if not weighted:
        return None
    rng = np.random.default_rng(seed)
    w = rng.gamma(2.0, 0.5, size=n)
    w[rng.random(n) < 0.05] = 0.0  # some zero weights
    return w


def federated_sum(
    stat: Callable[..., Array],
    y: Array,
    pred: Array,
    w: Array | None,
    **kwargs: object,
) -> tuple[Array, list[Array]]:
    vectors = [
        stat(y[idx], pred[idx], None if w is None else w[idx], **kwargs)
        for idx in split_agencies(len(y))
    ]
    return np.sum(vectors, axis=0), vectors


def quantized_sum(vectors: list[Array], spec: PackingSpec) -> Array:
    q = np.stack([spec.quantize(v) for v in vectors]).sum(axis=0, dtype=np.uint64)
    return spec.dequantize(np.asarray(q, dtype=np.uint64), summands=len(vectors))


# -- data -----------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def cancer_lr() -> tuple[Array, Array]:
    X, y = load_breast_cancer(return_X_y=True)
    model = make_pipeline(StandardScaler(), LogisticRegression(max_iter=5000))
    p = cross_val_predict(model, X, y, cv=5, method="predict_proba")[:, 1]
    return y.astype(np.float64), p


@pytest.fixture(scope="module")
def diabetes_ridge() -> tuple[Array, Array]:
    X, y = load_diabetes(return_X_y=True)
    return y, cross_val_predict(Ridge(alpha=0.1), X, y, cv=5)


@pytest.fixture(scope="module")
def poisson_counts() -> tuple[Array, Array]:
    rng = np.random.default_rng(7)
    X = rng.standard_normal((3000, 4))
    mu = np.exp(0.3 + X @ np.array([0.5, -0.3, 0.2, 0.0]))
    y = rng.poisson(mu).astype(np.float64)
    return y, PoissonRegressor(alpha=1e-4).fit(X, y).predict(X)


CANCER_W = 1000.0  # public bound on one agency's weight (largest holds ~200 rows)
DIABETES_W, DIABETES_RANGE = 500.0, (0.0, 400.0)  # targets lie in [25, 346]
COUNTS_W, COUNTS_RANGE = 2500.0, (0.0, 64.0)


# -- pooled equality ------------------------------------------------------------------------
@pytest.mark.parametrize("weight_bound", [None, CANCER_W])
@pytest.mark.parametrize("weighted", [False, True])
def test_classification_matches_sklearn(
    cancer_lr: tuple[Array, Array], weighted: bool, weight_bound: float | None
) -> None:
    y, p = cancer_lr
    w = make_weights(len(y), weighted)
    total, _ = federated_sum(classification_statistics, y, p, w, weight_bound=weight_bound)
    m = classification_metrics_from_sum(total, weight_bound=weight_bound)

    assert m["n"] == pytest.approx(len(y) if w is None else w.sum(), rel=REL)
    assert m["prevalence"] == pytest.approx(np.average(y, weights=w), rel=REL)
    assert m["log_loss"] == pytest.approx(log_loss(y, p, sample_weight=w), rel=REL)
    assert m["brier"] == pytest.approx(brier_score_loss(y, p, sample_weight=w), rel=REL)
    assert m["accuracy"] == pytest.approx(accuracy_score(y, p >= 0.5, sample_weight=w), rel=REL)
    exact_auc = roc_auc_score(y, p, sample_weight=w)
    assert abs(m["roc_auc"] - exact_auc) <= min(AUC_TOL, m["roc_auc_tie_bound"] + 1e-12)


@pytest.mark.parametrize("normalised", [False, True])
@pytest.mark.parametrize("weighted", [False, True])
def test_regression_matches_sklearn(
    diabetes_ridge: tuple[Array, Array], weighted: bool, normalised: bool
) -> None:
    y, f = diabetes_ridge
    w = make_weights(len(y), weighted)
    norm = {"weight_bound": DIABETES_W, "y_range": DIABETES_RANGE} if normalised else {}
    total, _ = federated_sum(regression_statistics, y, f, w, **norm)
    m = regression_metrics_from_sum(total, **norm)  # type: ignore[arg-type]

    assert m["n"] == pytest.approx(len(y) if w is None else w.sum(), rel=REL)
    assert m["mean"] == pytest.approx(np.average(y, weights=w), rel=REL)
    assert m["rmse"] == pytest.approx(math.sqrt(mean_squared_error(y, f, sample_weight=w)), rel=REL)
    assert m["mae"] == pytest.approx(mean_absolute_error(y, f, sample_weight=w), rel=REL)
    assert m["r2"] == pytest.approx(r2_score(y, f, sample_weight=w), rel=REL)
    assert math.isnan(m["mean_poisson_deviance"])


@pytest.mark.parametrize("normalised", [False, True])
@pytest.mark.parametrize("weighted", [False, True])
def test_poisson_matches_sklearn(
    poisson_counts: tuple[Array, Array], weighted: bool, normalised: bool
) -> None:
    y, f = poisson_counts
    w = make_weights(len(y), weighted)
    norm = {"weight_bound": COUNTS_W, "y_range": COUNTS_RANGE} if normalised else {}
    total, _ = federated_sum(regression_statistics, y, f, w, poisson=True, **norm)
    m = regression_metrics_from_sum(total, poisson=True, **norm)  # type: ignore[arg-type]

    assert m["mean_poisson_deviance"] == pytest.approx(
        mean_poisson_deviance(y, f, sample_weight=w), rel=REL
    )
    assert m["rmse"] == pytest.approx(math.sqrt(mean_squared_error(y, f, sample_weight=w)), rel=REL)
    assert m["mae"] == pytest.approx(mean_absolute_error(y, f, sample_weight=w), rel=REL)
    assert m["r2"] == pytest.approx(r2_score(y, f, sample_weight=w), rel=REL)


# -- quantization ---------------------------------------------------------------------------
@pytest.mark.parametrize("bits", [40, 48])
@pytest.mark.parametrize("weighted", [False, True])
def test_quantized_classification_within_1e6(
    cancer_lr: tuple[Array, Array], weighted: bool, bits: int
) -> None:
    y, p = cancer_lr
    w = make_weights(len(y), weighted)
    exact_sum, vectors = federated_sum(classification_statistics, y, p, w, weight_bound=CANCER_W)
    assert all(v.min() >= 0.0 and v.max() <= 1.0 for v in vectors)
    spec = PackingSpec(clip=1.0, precision_bits=bits, max_summands=K)
    decoded = quantized_sum(vectors, spec)
    atol = quantization_atol(spec.clip, spec.precision_bits, K)
    assert np.abs(decoded - exact_sum).max() <= atol

    exact = classification_metrics_from_sum(exact_sum, weight_bound=CANCER_W)
    got = classification_metrics_from_sum(decoded, weight_bound=CANCER_W, atol=atol)
    bounds = classification_error_bounds(decoded, weight_bound=CANCER_W, atol=atol)
    for name, bound in bounds.items():
        err = abs(got[name] - exact[name])
        assert err <= bound, (name, err, bound)
        if name != "n":  # n is in sample units: W·atol
            assert bound <= 1e-6, (name, bound)
    assert abs(got["n"] - exact["n"]) <= CANCER_W * atol
    # the float64 decoder adds only a little on top of half a step per summand
    assert np.abs(decoded - exact_sum).max() <= 1.01 * K * spec.clip / spec.levels
    assert abs(got["roc_auc"] - roc_auc_score(y, p, sample_weight=w)) <= AUC_TOL


@pytest.mark.parametrize("bits", [40, 48])
@pytest.mark.parametrize("dataset", ["diabetes_ridge", "poisson_counts"])
def test_quantized_regression_within_1e6(
    request: pytest.FixtureRequest, dataset: str, bits: int
) -> None:
    y, f = request.getfixturevalue(dataset)
    poisson = dataset == "poisson_counts"
    norm = (
        {"weight_bound": COUNTS_W, "y_range": COUNTS_RANGE}
        if poisson
        else {"weight_bound": DIABETES_W, "y_range": DIABETES_RANGE}
    )
    w = make_weights(len(y), True)
    exact_sum, vectors = federated_sum(regression_statistics, y, f, w, poisson=poisson, **norm)
    assert all(np.abs(v).max() <= 1.0 for v in vectors)
    spec = PackingSpec(clip=1.0, precision_bits=bits, max_summands=K)
    decoded = quantized_sum(vectors, spec)
    atol = quantization_atol(spec.clip, spec.precision_bits, K)

    exact = regression_metrics_from_sum(exact_sum, poisson=poisson, **norm)  # type: ignore[arg-type]
    got = regression_metrics_from_sum(decoded, poisson=poisson, **norm)  # type: ignore[arg-type]
    bounds = regression_error_bounds(decoded, atol=atol, **norm)  # type: ignore[arg-type]
    for name in ("mean", "rmse", "mae", "r2") + (("mean_poisson_deviance",) if poisson else ()):
        err = abs(got[name] - exact[name])
        assert err <= bounds[name], (name, err, bounds[name])
        assert err <= 1e-6 and bounds[name] <= 1e-6, (name, err, bounds[name])


def test_too_few_bits_are_flagged_by_the_bounds(cancer_lr: tuple[Array, Array]) -> None:
    y, p = cancer_lr
    exact_sum, vectors = federated_sum(classification_statistics, y, p, None, weight_bound=1e6)
    spec = PackingSpec(clip=1.0, precision_bits=24, max_summands=K)
    decoded = quantized_sum(vectors, spec)
    atol = quantization_atol(spec.clip, spec.precision_bits, K)
    bounds = classification_error_bounds(decoded, weight_bound=1e6, atol=atol)
    got = classification_metrics_from_sum(decoded, weight_bound=1e6, atol=atol)
    exact = classification_metrics_from_sum(exact_sum, weight_bound=1e6)
    assert bounds["roc_auc"] > 1e-3  # 24 bits and W ≫ data: the bound warns
    for name in ("log_loss", "brier", "accuracy", "roc_auc"):
        assert abs(got[name] - exact[name]) <= bounds[name]


# -- ROC AUC binning ------------------------------------------------------------------------
@pytest.mark.parametrize("n_bins", [2, 7, 64, 1024])
def test_auc_error_within_tie_bound(n_bins: int) -> None:
    rng = np.random.default_rng(n_bins)
    for trial in range(20):
        n = int(rng.integers(5, 400))
        y = (rng.random(n) < rng.uniform(0.1, 0.9)).astype(float)
        y[:2] = [0.0, 1.0]
        logits = rng.normal(0, rng.uniform(0.1, 8.0), n) + rng.uniform(0, 3) * y
        p = 1.0 / (1.0 + np.exp(-logits))
        if trial % 3 == 0:
            p = np.round(p, 1)  # exact ties, scores exactly 0 and 1
        w = rng.exponential(size=n) if trial % 2 else None
        v = classification_statistics(y, p, w, n_bins=n_bins)
        m = classification_metrics_from_sum(v, n_bins=n_bins)
        exact = roc_auc_score(y, p, sample_weight=w)
        assert abs(m["roc_auc"] - exact) <= m["roc_auc_tie_bound"] + 1e-12


def test_auc_on_larger_realistic_scores() -> None:
    rng = np.random.default_rng(3)
    n = 200_000
    y = (rng.random(n) < 0.08).astype(float)
    p = 1.0 / (1.0 + np.exp(-(-3.0 + 1.2 * y + rng.standard_normal(n))))
    total, _ = federated_sum(classification_statistics, y, p, None)
    m = classification_metrics_from_sum(total)
    assert abs(m["roc_auc"] - roc_auc_score(y, p)) <= 1e-4


def test_bin_edges_are_strictly_increasing_and_fine() -> None:
    e = score_bin_edges()
    assert len(e) == DEFAULT_N_BINS + 1 and e[0] == 0.0 and e[-1] == 1.0
    assert np.all(np.diff(e) > 0)
    assert np.diff(e).max() < 4e-4  # never coarser than this in probability
    mid = np.diff(np.log(e[1:-1]) - np.log1p(-e[1:-1]))
    assert mid.max() < 0.006  # and never coarser than this in logit (|logit| <= 16)
    bins = score_bins([0.0, e[1], 0.5, 1.0]).tolist()
    assert bins == [0, 1, DEFAULT_N_BINS // 2, DEFAULT_N_BINS - 1]


def test_single_class_auc_is_nan() -> None:
    v = classification_statistics([1, 1, 1], [0.2, 0.5, 0.9], n_bins=16)
    m = classification_metrics_from_sum(v, n_bins=16)
    assert math.isnan(m["roc_auc"]) and math.isnan(m["roc_auc_tie_bound"])
    assert m["prevalence"] == 1.0


# -- sklearn corner cases -------------------------------------------------------------------
def test_log_loss_clips_like_sklearn() -> None:
    y = np.array([1.0, 0.0, 1.0, 0.0, 1.0, 0.0])
    p = np.array([0.0, 1.0, 1.0, 0.0, 1e-300, 1.0 - 1e-17])
    m = classification_metrics_from_sum(classification_statistics(y, p, n_bins=4), n_bins=4)
    assert m["log_loss"] == pytest.approx(log_loss(y, p), rel=REL)
    v = classification_statistics([1.0], [0.0], weight_bound=1.0)
    assert v[classification_layout()["log_loss"]][0] == pytest.approx(1.0, rel=1e-15)
    assert math.isclose(LOG_LOSS_MAX, 36.04365338911715)


@pytest.mark.parametrize("f", [[3.0, 3.0, 3.0], [3.0, 2.0, 3.0]])
def test_constant_target_r2_like_sklearn(f: list[float]) -> None:
    y = np.array([3.0, 3.0, 3.0])
    m = regression_metrics_from_sum(regression_statistics(y, f))
    assert m["r2"] == r2_score(y, f)


def test_empty_agency_contributes_zeros(cancer_lr: tuple[Array, Array]) -> None:
    y, p = cancer_lr
    empty = classification_statistics([], [], weight_bound=CANCER_W)
    assert empty.shape == (classification_vector_length(),) and not empty.any()
    assert not regression_statistics([], [], poisson=True).any()
    full = classification_statistics(y, p, weight_bound=CANCER_W)
    assert np.array_equal(full + empty, full)


# -- layouts and scales ---------------------------------------------------------------------
def test_layouts_and_scales() -> None:
    layout = classification_layout(10)
    assert classification_vector_length(10) == 25
    assert layout["weight"] == slice(0, 1) and layout["negatives"] == slice(15, 25)
    assert len(regression_layout()) == REGRESSION_VECTOR_LENGTH == 6
    assert np.array_equal(classification_scale(n_bins=10), np.ones(25))
    s = classification_scale(n_bins=10, weight_bound=100.0)
    assert s[2] == pytest.approx(100.0 * LOG_LOSS_MAX) and s[0] == s[5] == 100.0
    np.testing.assert_allclose(
        regression_scale(weight_bound=10.0, y_range=(-1.0, 3.0)),
        10.0 * np.array([1.0, 2.0, 4.0, 16.0, 4.0, 4.0]),
    )


def test_normalised_regression_is_bounded_and_centred(diabetes_ridge: tuple[Array, Array]) -> None:
    y, f = diabetes_ridge
    v = regression_statistics(y, f, weight_bound=len(y), y_range=DIABETES_RANGE)
    assert np.abs(v).max() <= 1.0
    assert v[1] == pytest.approx((y.mean() - 200.0) / 200.0)


# -- validation -----------------------------------------------------------------------------
GOOD_Y, GOOD_P = [0, 1, 1], [0.1, 0.8, 0.6]


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"y_true": [0, 1], "y_score": GOOD_P}, "different lengths: 2 and 3"),
        ({"sample_weight": [1.0, 1.0]}, "sample_weight have different lengths"),
        ({"y_true": [0, np.nan, 1]}, r"y_true must be finite; position 1 is nan"),
        ({"y_score": [0.1, np.nan, 0.6]}, r"y_score must be finite; position 1"),
        ({"sample_weight": [1.0, np.inf, 1.0]}, "sample_weight must be finite"),
        ({"y_score": [0.1, 1.2, 0.6]}, r"probabilities in \[0, 1\]; position 1 is 1.2"),
        ({"y_score": [-0.1, 0.8, 0.6]}, r"probabilities in \[0, 1\]; position 0"),
        ({"sample_weight": [1.0, -2.0, 1.0]}, "non-negative; position 1 is -2.0"),
        ({"y_true": [0, 2, 1]}, "binary labels 0 or 1; position 1"),
        ({"y_true": [[0, 1, 1]]}, "one-dimensional"),
        ({"y_true": ["a", "b", "c"]}, "must be numeric"),
        ({"threshold": math.nan}, "threshold must be finite"),
        ({"n_bins": 1}, "n_bins must be an integer >= 2"),
        ({"weight_bound": 2.0}, "total sample weight 3 exceeds weight_bound=2"),
        ({"weight_bound": -1.0}, "weight_bound must be positive"),
    ],
)
def test_classification_validation(kwargs: dict[str, object], message: str) -> None:
    args: dict[str, object] = {"y_true": GOOD_Y, "y_score": GOOD_P, **kwargs}
    with pytest.raises(ValueError, match=message):
        classification_statistics(**args)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"y_pred": [1.0, 2.0]}, "y_true and y_pred have different lengths: 3 and 2"),
        ({"y_pred": [1.0, np.nan, 2.0]}, "y_pred must be finite; position 1"),
        ({"sample_weight": [1.0, -1.0, 1.0]}, "sample_weight must be non-negative"),
        ({"poisson": True, "y_pred": [1.0, 0.0, 2.0]}, "needs y_pred > 0; position 1"),
        ({"poisson": True, "y_true": [1.0, -1.0, 2.0]}, "needs y_true >= 0; position 1"),
        ({"weight_bound": 10.0}, "needs both weight_bound and y_range"),
        ({"y_range": (0.0, 5.0)}, "needs both weight_bound and y_range"),
        ({"weight_bound": 10.0, "y_range": (0.0, 2.0)}, r"y_true\[2\] = 3.0 lies outside"),
        ({"weight_bound": 10.0, "y_range": (5.0, 0.0)}, "lo < hi"),
        ({"weight_bound": 2.0, "y_range": (0.0, 5.0)}, "exceeds weight_bound=2"),
        (
            {"weight_bound": 3.0, "y_range": (0.0, 3.0), "y_pred": [40.0, 40.0, 40.0]},
            "normalised squared_error entry .* widen y_range",
        ),
    ],
)
def test_regression_validation(kwargs: dict[str, object], message: str) -> None:
    args: dict[str, object] = {"y_true": [1.0, 2.0, 3.0], "y_pred": [1.5, 2.0, 2.5], **kwargs}
    with pytest.raises(ValueError, match=message):
        regression_statistics(**args)  # type: ignore[arg-type]


def test_from_sum_validation() -> None:
    with pytest.raises(ValueError, match="length 24, but n_bins=10 needs length 25"):
        classification_metrics_from_sum(np.zeros(24), n_bins=10)
    with pytest.raises(ValueError, match="no samples were summed"):
        classification_metrics_from_sum(np.zeros(25), n_bins=10)
    with pytest.raises(ValueError, match="vector must be finite"):
        regression_metrics_from_sum([1.0, 0.0, np.nan, 0.0, 0.0, 0.0])
    with pytest.raises(ValueError, match="needs length 6"):
        regression_metrics_from_sum(np.ones(5))
    with pytest.raises(ValueError, match="atol must be non-negative"):
        classification_error_bounds(np.ones(25), n_bins=10, atol=-1.0)
