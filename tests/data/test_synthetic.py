"""make_city: deterministic, skewed, non-IID, with a ground truth a pooled model recovers."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from sklearn.linear_model import LogisticRegression, PoissonRegressor
from sklearn.metrics import roc_auc_score

from fedcity.data import TASKS, FederatedPreprocessor, SyntheticCity, make_city


@pytest.fixture(scope="module")
def cities() -> dict[str, SyntheticCity]:
    return {task: make_city(task=task) for task in TASKS}  # type: ignore[arg-type]


def frames_equal(a: SyntheticCity, b: SyntheticCity) -> bool:
    return bool(a.train_frame().equals(b.train_frame()) and a.test.equals(b.test))


def test_tasks() -> None:
    assert set(TASKS) == {"flood", "fire", "service_demand", "elder_risk"}


@pytest.mark.parametrize("task", TASKS)
def test_deterministic_given_seed(task: str) -> None:
    one = make_city(5, task=task, n_samples=3000, seed=11)  # type: ignore[arg-type]
    two = make_city(5, task=task, n_samples=3000, seed=11)  # type: ignore[arg-type]
    assert frames_equal(one, two)
    assert one.coefficients == two.coefficients and one.intercept == two.intercept
    other = make_city(5, task=task, n_samples=3000, seed=12)  # type: ignore[arg-type]
    assert not frames_equal(one, other)
    assert other.coefficients == one.coefficients  # the model is fixed; the draw is not


def test_default_shape(cities: dict[str, SyntheticCity]) -> None:
    for task, city in cities.items():
        assert city.name == task
        assert city.n_train == 20000
        assert len(city.agencies) == 8
        assert len(city.test) == 5000
        assert set(city.test["district"]) <= set(city.agency_names)
        assert 4 <= len(city.spec.numeric) <= 8
        assert 1 <= len(city.spec.categorical) <= 2
        assert city.seed == 0


def test_sizes_are_zipf_skewed(cities: dict[str, SyntheticCity]) -> None:
    sizes = list(cities["flood"].sizes.values())
    assert sizes == sorted(sizes, reverse=True)
    assert min(sizes) >= 30
    assert sizes[0] / sizes[-1] > 15  # 1.5-Zipf over 8 districts: ~21
    assert sizes[0] > 0.4 * sum(sizes)


def test_size_edge_cases() -> None:
    flat = make_city(4, n_samples=1000, skew=0.0)
    assert sorted(flat.sizes.values()) == [250, 250, 250, 250]
    tight = make_city(8, n_samples=240, skew=3.0)
    assert list(tight.sizes.values()) == [30] * 8
    barely = make_city(8, n_samples=250, skew=3.0)
    assert min(barely.sizes.values()) == 30 and barely.n_train == 250
    many = make_city(12, n_samples=2000)
    assert many.agency_names[0] == "district-01" and many.agency_names[-1] == "district-12"


def test_features_are_non_iid(cities: dict[str, SyntheticCity]) -> None:
    city = cities["flood"]
    means = np.array([a.X_numeric().mean(axis=0) for a in city.agencies])
    stds = np.array([a.X_numeric().std(axis=0) for a in city.agencies])
    sizes = np.array([a.n_samples for a in city.agencies])
    # spread of district means far exceeds the sampling error of a mean
    sampling_error = (stds / np.sqrt(sizes)[:, None]).max(axis=0)
    assert np.all(means.std(axis=0) > 5 * sampling_error)


def test_category_mixes_differ_and_some_levels_are_missing(
    cities: dict[str, SyntheticCity],
) -> None:
    city = cities["flood"]
    counts = np.array([a.level_counts("land_use") for a in city.agencies])
    vocabulary = city.spec.categorical["land_use"]
    airport = vocabulary.index("airport")
    assert counts[:, airport].sum() == 0  # declared, held by nobody
    present = counts[:, :airport] > 0
    assert present.any(axis=0).all()  # every other level exists somewhere
    assert not present.all()  # but some districts lack some levels
    shares = counts / counts.sum(axis=1, keepdims=True)
    assert np.abs(shares - shares.mean(axis=0)).max() > 0.2


@pytest.mark.parametrize("task", ["flood", "fire", "elder_risk"])
def test_binary_labels(cities: dict[str, SyntheticCity], task: str) -> None:
    city = cities[task]
    assert city.task == "binary"
    y = np.concatenate([a.y() for a in city.agencies])
    assert set(np.unique(y)) == {0.0, 1.0}
    assert 0.03 < y.mean() < 0.5
    truth = city.true_mean(city.test)
    assert np.all((truth > 0) & (truth < 1))
    assert roc_auc_score(city.test[city.spec.label], truth) > 0.75


def test_poisson_labels(cities: dict[str, SyntheticCity]) -> None:
    city = cities["service_demand"]
    assert city.task == "poisson"
    y = np.concatenate([a.y() for a in city.agencies])
    assert np.all(y >= 0) and np.all(y == np.round(y))
    rate = city.true_mean(city.test)
    assert np.mean(city.test[city.spec.label]) == pytest.approx(rate.mean(), rel=0.05)


@pytest.mark.parametrize("task", ["flood", "service_demand"])
def test_pooled_model_recovers_ground_truth(cities: dict[str, SyntheticCity], task: str) -> None:
    city = cities[task]
    pooled = city.train_frame()
    pre = FederatedPreprocessor.from_summary(city.spec, city.summary())
    x = pre.transform(pooled)
    y = pooled[city.spec.label]
    if city.task == "binary":
        model = LogisticRegression(C=1e6, max_iter=5000).fit(x, y)
    else:
        model = PoissonRegressor(alpha=0.0, max_iter=5000).fit(x, y)
    coef = np.ravel(model.coef_)
    p = len(city.spec.numeric)
    raw = coef[:p] / pre.scale_
    truth = np.array([city.coefficients[c] for c in city.spec.numeric])
    np.testing.assert_allclose(raw, truth, rtol=0.2)
    names = list(pre.get_feature_names_out())
    for column, levels in pre.categories_.items():
        base = coef[names.index(f"{column}_{levels[0]}")]
        for level in levels[1:]:
            name = f"{column}_{level}"
            assert coef[names.index(name)] - base == pytest.approx(
                city.coefficients[name], abs=0.15
            )


def test_ground_truth_covers_every_one_hot_name(cities: dict[str, SyntheticCity]) -> None:
    for city in cities.values():
        expected = set(city.spec.numeric) | {
            f"{c}_{lv}" for c, levels in city.spec.categorical.items() for lv in levels
        }
        assert set(city.coefficients) == expected
    assert cities["flood"].coefficients["land_use_airport"] == 0.0


def test_linear_predictor_accepts_any_frame_with_the_features(
    cities: dict[str, SyntheticCity],
) -> None:
    city = cities["fire"]
    agency = city.agencies[0]
    eta = city.true_linear_predictor(agency.to_frame())
    assert eta.shape == (agency.n_samples,)
    assert np.all(np.isfinite(eta))
    shuffled = city.test.sample(frac=1.0, random_state=0)
    np.testing.assert_allclose(
        pd.Series(city.true_mean(shuffled), index=shuffled.index).sort_index(),
        city.true_mean(city.test),
    )


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"task": "earthquake"}, "unknown task"),
        ({"n_agencies": 0}, "n_agencies"),
        ({"n_agencies": 10, "n_samples": 299}, "too small"),
        ({"skew": -1.0}, "skew"),
        ({"skew": float("nan")}, "skew"),
        ({"heterogeneity": -0.1}, "heterogeneity"),
        ({"n_test": 0}, "n_test"),
    ],
)
def test_argument_errors(kwargs: dict[str, object], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        make_city(**kwargs)  # type: ignore[arg-type]


def test_homogeneous_city_has_similar_districts() -> None:
    city = make_city(4, n_samples=8000, skew=0.0, heterogeneity=0.0, seed=5)
    means = np.array([a.X_numeric().mean(axis=0) for a in city.agencies])
    spread = means.std(axis=0) / np.concatenate([a.X_numeric() for a in city.agencies]).std(axis=0)
    assert np.all(spread < 0.1)
