"""FederatedPreprocessor follows scikit-learn's estimator API and input-validation conventions.

``parametrize_with_checks`` runs the full ``check_estimator`` suite on the default
``FederatedPreprocessor()`` (every column numeric, like ``StandardScaler``); no check needs to be
marked as an expected failure. Instances with declared columns fix the number (and, with
categorical columns, the names and kinds) of their input columns, which the generic checks
cannot know, so the same conventions are tested for them directly below.
"""

from __future__ import annotations

import json
import warnings

import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp
from sklearn.base import BaseEstimator, clone
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler
from sklearn.utils import get_tags
from sklearn.utils.estimator_checks import parametrize_with_checks

from fedcity.data import FederatedPreprocessor


@parametrize_with_checks([FederatedPreprocessor()])
def test_sklearn_estimator_checks(estimator: BaseEstimator, check: object) -> None:
    check(estimator)  # type: ignore[operator]


def test_tags() -> None:
    tags = get_tags(FederatedPreprocessor())
    assert not tags.input_tags.allow_nan
    assert not tags.input_tags.sparse
    assert not tags.input_tags.categorical
    assert tags.transformer_tags.preserves_dtype == ["float64"]
    assert get_tags(FederatedPreprocessor(categorical={"k": ("a",)})).input_tags.categorical


@pytest.fixture
def data() -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(7)
    X = np.column_stack([rng.normal(3.0, 2.0, 40), rng.exponential(5.0, 40)])
    return X, rng.uniform(0.0, 3.0, 40)


# ---- declared numeric columns, array input ----------------------------------------------------


def test_declared_numeric_columns_are_positional_for_arrays(
    data: tuple[np.ndarray, np.ndarray],
) -> None:
    X, w = data
    frame = pd.DataFrame({"b": X[:, 1], "other": 0.0, "a": X[:, 0]})
    on_array = FederatedPreprocessor(numeric=("a", "b")).fit(X, sample_weight=w)
    on_frame = FederatedPreprocessor(numeric=("a", "b")).fit(frame, sample_weight=w)
    reference = StandardScaler().fit(X, sample_weight=w)
    for pre in (on_array, on_frame):
        np.testing.assert_allclose(pre.mean_, reference.mean_, rtol=1e-12)
        np.testing.assert_allclose(pre.var_, reference.var_, rtol=1e-10)
        np.testing.assert_allclose(pre.scale_, reference.scale_, rtol=1e-10)
        np.testing.assert_allclose(pre.transform(X), reference.transform(X), atol=1e-10)
        np.testing.assert_allclose(pre.transform(frame), reference.transform(X), atol=1e-10)
        np.testing.assert_allclose(pre.transform(X.tolist()), reference.transform(X), atol=1e-10)
        assert list(pre.get_feature_names_out()) == ["a", "b"]
        assert list(pre.feature_names_in_) == ["a", "b"]
        assert pre.n_features_in_ == 2
        assert pre.numeric_ == ("a", "b")


def test_declared_numeric_array_with_wrong_column_count(
    data: tuple[np.ndarray, np.ndarray],
) -> None:
    X, _ = data
    pre = FederatedPreprocessor(numeric=("a", "b"))
    three = np.column_stack([X, X[:, 0]])
    expected = "X has 3 features, but FederatedPreprocessor is expecting 2 features as input."
    with pytest.raises(ValueError, match=expected):
        pre.fit(three)
    pre.fit(X)
    with pytest.raises(ValueError, match=expected):
        pre.transform(three)
    with pytest.raises(ValueError, match="X has 1 features"):
        pre.transform(X[:, :1])


@pytest.mark.parametrize(
    ("bad", "error", "message"),
    [
        (np.array([[1.0, np.nan], [2.0, 3.0]]), ValueError, "Input X contains NaN"),
        (np.array([[1.0, np.inf], [2.0, 3.0]]), ValueError, "Input X contains infinity"),
        (sp.csr_matrix([[1.0, 2.0], [2.0, 3.0]]), TypeError, "dense data is required"),
        (np.array([[1.0 + 1j, 2.0], [2.0, 3.0]]), ValueError, "Complex data not supported"),
        (np.array([1.0, 2.0]), ValueError, "Expected 2D array"),
        (np.empty((0, 2)), ValueError, r"0 sample\(s\)"),
        (np.array([["1.0", "x"], ["2.0", "3.0"]], dtype=object), ValueError, "convert"),
    ],
)
def test_declared_numeric_array_validation(bad: object, error: type, message: str) -> None:
    good = np.array([[1.0, 2.0], [2.0, 5.0]])
    with pytest.raises(error, match=message):
        FederatedPreprocessor(numeric=("a", "b")).fit(bad)
    fitted = FederatedPreprocessor(numeric=("a", "b")).fit(good)
    with pytest.raises(error, match=message):
        fitted.transform(bad)


def test_sample_weight_validation(data: tuple[np.ndarray, np.ndarray]) -> None:
    X, w = data
    for pre in (FederatedPreprocessor(), FederatedPreprocessor(numeric=("a", "b"))):
        with pytest.raises(ValueError, match="at least one non-zero"):
            pre.fit(X, sample_weight=np.zeros(len(X)))
        with pytest.raises(ValueError, match=r"Negative values.*sample_weight"):
            pre.fit(X, sample_weight=-w)
        with pytest.raises(ValueError, match=r"sample_weight\.shape"):
            pre.fit(X, sample_weight=w[:-1])
        with pytest.raises(ValueError, match="sample_weight contains NaN"):
            pre.fit(X, sample_weight=np.where(w > 1, np.nan, w))
        # zero weights are the same as dropping the rows, integer weights as repeating them
        keep = w > 1.0
        dropped = clone(pre).fit(X[keep])
        zeroed = clone(pre).fit(X, sample_weight=keep.astype(float))
        np.testing.assert_allclose(zeroed.mean_, dropped.mean_, rtol=1e-12)
        np.testing.assert_allclose(zeroed.scale_, dropped.scale_, rtol=1e-10)
        counts = np.arange(len(X)) % 3
        repeated = clone(pre).fit(np.repeat(X, counts, axis=0))
        weighted = clone(pre).fit(X, sample_weight=counts)
        np.testing.assert_allclose(weighted.mean_, repeated.mean_, rtol=1e-12)
        np.testing.assert_allclose(weighted.scale_, repeated.scale_, rtol=1e-10)


def test_categorical_columns_need_a_dataframe() -> None:
    pre = FederatedPreprocessor(numeric=("x",), categorical={"k": ("a", "b")})
    with pytest.raises(TypeError, match=r"categorical columns \['k'\] needs X as a pandas"):
        pre.fit(np.array([[1.0, 0.0], [2.0, 1.0]]))
    frame = pd.DataFrame({"x": [1.0, 2.0], "k": ["a", "b"]})
    pre.fit(frame)
    with pytest.raises(TypeError, match="DataFrame"):
        pre.transform(frame.to_numpy())


def test_declared_input_features_are_checked() -> None:
    pre = FederatedPreprocessor(numeric=("a", "b")).fit([[1.0, 2.0], [3.0, 5.0]])
    expected = ["a", "b"]
    assert list(pre.get_feature_names_out(["x0", "x1"])) == expected  # positional
    assert list(pre.get_feature_names_out(["b", "z", "a"])) == expected  # by name
    with pytest.raises(ValueError, match="input_features must name every declared column"):
        pre.get_feature_names_out(["a"])
    mixed = FederatedPreprocessor(numeric=("x",), categorical={"k": ("a", "b")})
    mixed.fit(pd.DataFrame({"x": [1.0, 2.0], "k": ["a", "b"]}))
    assert list(mixed.get_feature_names_out(["k", "x", "y"])) == ["x", "k_a", "k_b"]
    with pytest.raises(ValueError, match="input_features must name every declared column"):
        mixed.get_feature_names_out(["x0", "x1"])


# ---- nothing declared: every column numeric ---------------------------------------------------


def test_default_standardises_every_column_like_standard_scaler(
    data: tuple[np.ndarray, np.ndarray],
) -> None:
    X, w = data
    pre = FederatedPreprocessor().fit(X, sample_weight=w)
    reference = StandardScaler().fit(X, sample_weight=w)
    np.testing.assert_allclose(pre.transform(X), reference.transform(X), atol=1e-10)
    assert pre.numeric_ == ("x0", "x1")
    assert not hasattr(pre, "feature_names_in_")
    assert pre.n_features_in_ == 2
    assert list(pre.get_feature_names_out()) == ["x0", "x1"]
    assert list(pre.get_feature_names_out(["u", "v"])) == ["u", "v"]
    with pytest.raises(ValueError, match="X has 3 features, but FederatedPreprocessor"):
        pre.transform(np.column_stack([X, X[:, 0]]))


def test_default_on_a_dataframe_follows_validate_data(
    data: tuple[np.ndarray, np.ndarray],
) -> None:
    X, _ = data
    frame = pd.DataFrame(X, columns=["u", "v"])
    pre = FederatedPreprocessor().fit(frame)
    assert list(pre.feature_names_in_) == ["u", "v"]
    assert pre.numeric_ == ("u", "v")
    assert list(pre.get_feature_names_out()) == ["u", "v"]
    out = pre.set_output(transform="pandas").transform(frame)
    assert list(out.columns) == ["u", "v"]
    pre.set_output(transform="default")
    with pytest.raises(ValueError, match="feature names should match"):
        pre.transform(frame.rename(columns={"v": "w"}))
    with pytest.warns(UserWarning, match="does not have valid feature names"):
        pre.transform(X)
    # refitting on an array forgets the names
    pre.fit(X)
    assert not hasattr(pre, "feature_names_in_")
    assert pre.numeric_ == ("x0", "x1")


def test_default_with_non_numeric_columns_says_to_declare_columns() -> None:
    frame = pd.DataFrame({"x": [1.0, 2.0], "kind": ["a", "b"]})
    with pytest.raises(ValueError, match=r"column\(s\) \['kind'\] are not numeric.*declare"):
        FederatedPreprocessor().fit(frame)


def test_default_state_round_trips_through_json(data: tuple[np.ndarray, np.ndarray]) -> None:
    X, w = data
    for inputs in (X, pd.DataFrame(X, columns=["u", "v"])):
        pre = FederatedPreprocessor().fit(inputs, sample_weight=w)
        again = FederatedPreprocessor.from_dict(json.loads(json.dumps(pre.to_dict())))
        np.testing.assert_array_equal(again.transform(inputs), pre.transform(inputs))
        assert list(again.get_feature_names_out()) == list(pre.get_feature_names_out())
        assert again.n_features_in_ == 2
        assert hasattr(again, "feature_names_in_") == hasattr(pre, "feature_names_in_")


def test_default_in_a_pipeline_does_not_warn(data: tuple[np.ndarray, np.ndarray]) -> None:
    X, _ = data
    frame = pd.DataFrame(X, columns=["u", "v"])
    pipeline = make_pipeline(FederatedPreprocessor(), StandardScaler())
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        pipeline.fit(frame).transform(frame)
    assert list(pipeline.get_feature_names_out()) == ["u", "v"]
