"""FederatedPreprocessor: federated statistics give the same preprocessing as a central fit."""

from __future__ import annotations

import json
import pickle

import numpy as np
import pandas as pd
import pytest
from sklearn.base import clone
from sklearn.compose import ColumnTransformer
from sklearn.exceptions import NotFittedError
from sklearn.preprocessing import OneHotEncoder, StandardScaler

from fedcity.data import (
    AgencyDataset,
    FeatureSpec,
    FederatedPreprocessor,
    SummaryStatistics,
    SyntheticCity,
    make_city,
)


@pytest.fixture(scope="module")
def city() -> SyntheticCity:
    return make_city(6, task="fire", n_samples=6000, seed=3)


def central(spec: FeatureSpec) -> FederatedPreprocessor:
    return FederatedPreprocessor(numeric=spec.numeric, categorical=spec.categorical)


def assert_same_preprocessing(a: FederatedPreprocessor, b: FederatedPreprocessor) -> None:
    np.testing.assert_allclose(a.mean_, b.mean_, rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(a.scale_, b.scale_, rtol=1e-10)
    assert a.categories_ == b.categories_
    assert list(a.get_feature_names_out()) == list(b.get_feature_names_out())
    assert a.n_samples_seen_ == pytest.approx(b.n_samples_seen_, rel=1e-12)
    for column in a.level_counts_:
        np.testing.assert_array_equal(a.level_counts_[column], b.level_counts_[column])


def test_federated_statistics_equal_a_central_fit(city: SyntheticCity) -> None:
    spec = city.spec
    summaries = [a.summary() for a in city.agencies]
    federated = FederatedPreprocessor.from_statistics(
        spec,
        sum(s.count for s in summaries),
        sum(s.sums for s in summaries),
        sum(s.sums_of_squares for s in summaries),
        {c: sum(s.level_counts[c] for s in summaries) for c in spec.categorical},
    )
    pooled = city.train_frame()
    centralized = central(spec).fit(pooled)
    assert_same_preprocessing(federated, centralized)
    np.testing.assert_allclose(
        federated.transform(city.test), centralized.transform(city.test), rtol=0, atol=1e-10
    )
    # and from_summary is the same thing
    assert_same_preprocessing(FederatedPreprocessor.from_summary(spec, city.summary()), federated)


def test_declared_levels_nobody_holds_are_dropped(city: SyntheticCity) -> None:
    pre = FederatedPreprocessor.from_summary(city.spec, city.summary())
    assert "coal" in city.spec.categorical["heating_fuel"]
    assert pre.categories_["heating_fuel"] == ("gas", "electric", "oil", "wood")
    assert pre.level_counts_["heating_fuel"][-1] == 0
    assert "heating_fuel_coal" not in pre.get_feature_names_out()


def test_matches_sklearn_scaler_and_encoder(city: SyntheticCity) -> None:
    pooled = city.train_frame()
    pre = FederatedPreprocessor.from_summary(city.spec, city.summary())
    reference = ColumnTransformer(
        [
            ("num", StandardScaler(), list(city.spec.numeric)),
            (
                "cat",
                OneHotEncoder(
                    categories=[list(pre.categories_[c]) for c in city.spec.categorical],
                    handle_unknown="ignore",
                    sparse_output=False,
                ),
                list(city.spec.categorical),
            ),
        ]
    ).fit(pooled)
    scaler = reference.named_transformers_["num"]
    np.testing.assert_allclose(pre.mean_, scaler.mean_, rtol=1e-12)
    np.testing.assert_allclose(pre.scale_, scaler.scale_, rtol=1e-10)
    np.testing.assert_allclose(
        pre.transform(city.test), reference.transform(city.test), rtol=0, atol=1e-10
    )
    assert [n.split("__", 1)[1] for n in reference.get_feature_names_out()] == list(
        pre.get_feature_names_out()
    )


def test_weighted_federated_equals_weighted_central() -> None:
    spec = FeatureSpec(
        numeric=("x", "z"), categorical={"k": ("a", "b", "c")}, label="y", weight="w"
    )
    rng = np.random.default_rng(0)
    frames = []
    for n, shift in [(50, 0.0), (300, 2.0), (31, -5.0)]:
        frames.append(
            pd.DataFrame(
                {
                    "x": rng.normal(shift, 1.0, n),
                    "z": rng.exponential(3.0, n),
                    "k": rng.choice(["a", "b"], n),
                    "y": rng.integers(0, 2, n),
                    "w": rng.uniform(0, 4, n),
                }
            )
        )
    agencies = [AgencyDataset.from_frame(f, spec, agency=f"a{i}") for i, f in enumerate(frames)]
    federated = FederatedPreprocessor.from_summary(
        spec, SummaryStatistics.total(a.summary() for a in agencies)
    )
    pooled = pd.concat(frames, ignore_index=True)
    centralized = central(spec).fit(pooled, sample_weight=pooled["w"])
    assert_same_preprocessing(federated, centralized)
    reference = StandardScaler().fit(pooled[["x", "z"]], sample_weight=pooled["w"])
    np.testing.assert_allclose(federated.mean_, reference.mean_, rtol=1e-12)
    np.testing.assert_allclose(federated.scale_, reference.scale_, rtol=1e-10)
    assert federated.categories_ == {"k": ("a", "b")}


def test_constant_columns_get_scale_one() -> None:
    spec = FeatureSpec(numeric=("c", "x", "zero"), categorical={}, label="y")
    parts = [
        pd.DataFrame({"c": 1234.567, "x": np.arange(n, dtype=float), "zero": 0.0, "y": 0})
        for n in (7, 13, 29)
    ]
    agencies = [AgencyDataset.from_frame(p, spec, agency=str(i)) for i, p in enumerate(parts)]
    federated = FederatedPreprocessor.from_summary(
        spec, SummaryStatistics.total(a.summary() for a in agencies)
    )
    pooled = pd.concat(parts, ignore_index=True)
    centralized = central(spec).fit(pooled)
    for pre in (federated, centralized):
        assert pre.scale_[0] == 1.0 and pre.var_[0] == 0.0
        assert pre.scale_[2] == 1.0
        assert pre.scale_[1] != 1.0
        np.testing.assert_allclose(pre.transform(pooled)[:, [0, 2]], 0.0, atol=1e-9)
    np.testing.assert_allclose(
        federated.transform(pooled), StandardScaler().fit_transform(pooled[["c", "x", "zero"]])
    )


def test_unseen_and_undeclared_levels_encode_as_zeros() -> None:
    pre = FederatedPreprocessor(numeric=("x",), categorical={"k": ("a", "b", "c")})
    pre.fit(pd.DataFrame({"x": [0.0, 2.0], "k": ["a", "b"]}))
    out = pre.transform(pd.DataFrame({"x": [1.0, 1.0, 1.0, 1.0], "k": ["a", "b", "c", "zz"]}))
    np.testing.assert_array_equal(
        out, [[0.0, 1.0, 0.0], [0.0, 0.0, 1.0], [0.0, 0.0, 0.0], [0.0, 0.0, 0.0]]
    )
    assert out.dtype == np.float64


def test_transform_dataset_equals_transform_of_frame(city: SyntheticCity) -> None:
    pre = FederatedPreprocessor.from_summary(city.spec, city.summary())
    for agency in city.agencies:
        np.testing.assert_array_equal(
            pre.transform_dataset(agency), pre.transform(agency.to_frame())
        )
    other = FeatureSpec(numeric=("x",), categorical={}, label="y")
    stranger = AgencyDataset.from_frame(
        pd.DataFrame({"x": [1.0], "y": [0]}), other, agency="stranger"
    )
    with pytest.raises(ValueError, match="different spec"):
        pre.transform_dataset(stranger)
    reordered = FeatureSpec(
        numeric=city.spec.numeric,
        categorical=dict(reversed(list(city.spec.categorical.items()))),
        label=city.spec.label,
    )
    swapped = AgencyDataset.from_frame(city.agencies[0].to_frame(), reordered, agency="x")
    with pytest.raises(ValueError, match="different spec"):
        pre.transform_dataset(swapped)


def test_pickle_clone_params_and_json_state(city: SyntheticCity) -> None:
    pre = FederatedPreprocessor.from_summary(city.spec, city.summary())
    expected = pre.transform(city.test)
    np.testing.assert_array_equal(pickle.loads(pickle.dumps(pre)).transform(city.test), expected)
    state = json.loads(json.dumps(pre.to_dict()))
    np.testing.assert_array_equal(
        FederatedPreprocessor.from_dict(state).transform(city.test), expected
    )
    params = pre.get_params()
    assert params["numeric"] == city.spec.numeric
    fresh = clone(pre)
    assert not hasattr(fresh, "mean_")
    np.testing.assert_allclose(
        fresh.fit(city.train_frame()).transform(city.test), expected, atol=1e-10
    )


def test_fit_transform_and_pandas_output(city: SyntheticCity) -> None:
    pooled = city.train_frame()
    pre = central(city.spec)
    out = pre.fit_transform(pooled)
    assert out.shape == (len(pooled), len(pre.get_feature_names_out()))
    frame_out = central(city.spec).set_output(transform="pandas").fit(pooled).transform(pooled)
    assert isinstance(frame_out, pd.DataFrame)
    assert list(frame_out.columns) == list(pre.get_feature_names_out())


def test_not_fitted() -> None:
    pre = FederatedPreprocessor(numeric=("x",))
    with pytest.raises(NotFittedError):
        pre.transform(pd.DataFrame({"x": [1.0]}))
    with pytest.raises(NotFittedError):
        pre.get_feature_names_out()


@pytest.mark.parametrize(
    ("numeric", "categorical", "message"),
    [
        ((), None, "at least one"),
        ("x", None, "sequence"),
        (("x", "x"), None, "twice"),
        (("x",), {"x": ("a",)}, "twice"),
        (("",), None, "non-empty"),
        ((), {"k": ()}, "non-empty"),
        ((), {"k": ("a", "a")}, "repeated"),
        ((), {"k": ("a", 1)}, "strings"),
    ],
)
def test_bad_parameters_fail_at_fit(numeric: object, categorical: object, message: str) -> None:
    pre = FederatedPreprocessor(numeric=numeric, categorical=categorical)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match=message):
        pre.fit(pd.DataFrame({"x": [1.0], "k": ["a"]}))


def test_fit_and_transform_input_errors() -> None:
    pre = FederatedPreprocessor(numeric=("x",), categorical={"k": ("a", "b")})
    good = pd.DataFrame({"x": [1.0, 2.0], "k": ["a", "b"]})
    with pytest.raises(TypeError, match="DataFrame"):
        pre.fit(good.to_numpy())
    with pytest.raises(ValueError, match="missing column"):
        pre.fit(good[["x"]])
    with pytest.raises(ValueError, match="empty"):
        pre.fit(good.iloc[0:0])
    with pytest.raises(ValueError, match=r"'k'.*outside the declared vocabulary"):
        pre.fit(good.assign(k=["a", "q"]))
    with pytest.raises(ValueError, match=r"'x'.*missing"):
        pre.fit(good.assign(x=[1.0, np.nan]))
    with pytest.raises(ValueError, match="sample_weight"):
        pre.fit(good, sample_weight=[1.0, -1.0])
    with pytest.raises(ValueError, match="sample_weight"):
        pre.fit(good, sample_weight=[1.0])
    pre.fit(good)
    with pytest.raises(ValueError, match=r"'x'.*non-numeric"):
        pre.transform(good.assign(x=["1", "deep"]))
    with pytest.raises(ValueError, match=r"'k'.*missing"):
        pre.transform(good.assign(k=["a", None]))
    with pytest.raises(ValueError, match="repeated"):
        pre.transform(pd.concat([good, good[["x"]]], axis=1))


def test_from_statistics_rejects_inconsistent_input() -> None:
    spec = FeatureSpec(numeric=("x", "y2"), categorical={"k": ("a", "b")}, label="y")
    ok = {"k": np.array([3, 0])}
    build = FederatedPreprocessor.from_statistics
    assert build(spec, 3.0, [3.0, 6.0], [5.0, 14.0], ok).categories_ == {"k": ("a",)}
    with pytest.raises(ValueError, match="shape"):
        build(spec, 3.0, [3.0], [5.0, 14.0], ok)
    with pytest.raises(ValueError, match="count"):
        build(spec, 0.0, [3.0, 6.0], [5.0, 14.0], ok)
    with pytest.raises(ValueError, match="finite"):
        build(spec, 3.0, [np.inf, 6.0], [5.0, 14.0], ok)
    with pytest.raises(ValueError, match="exactly the categorical columns"):
        build(spec, 3.0, [3.0, 6.0], [5.0, 14.0], {})
    with pytest.raises(ValueError, match="shape"):
        build(spec, 3.0, [3.0, 6.0], [5.0, 14.0], {"k": [1, 1, 1]})
    with pytest.raises(ValueError, match="non-negative"):
        build(spec, 3.0, [3.0, 6.0], [5.0, 14.0], {"k": [4, -1]})
    with pytest.raises(ValueError, match="no declared level"):
        build(spec, 3.0, [3.0, 6.0], [5.0, 14.0], {"k": [0, 0]})


def test_slightly_negative_variance_from_rounding_is_clipped() -> None:
    spec = FeatureSpec(numeric=("x",), categorical={}, label="y")
    pre = FederatedPreprocessor.from_statistics(spec, 4.0, [8.0], [16.0 - 1e-12], {})
    assert pre.var_[0] == 0.0 and pre.scale_[0] == 1.0
