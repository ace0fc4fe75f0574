"""Exact federated GLMs equal scikit-learn on the pooled data (issue: learning core, item 3)."""

import pickle

import numpy as np
import pandas as pd
import pytest
from sklearn.linear_model import LogisticRegression, PoissonRegressor, Ridge
from sklearn.pipeline import make_pipeline

from fedcity.data.preprocess import FederatedPreprocessor
from fedcity.learn import LocalFederation, LogisticRegressionJob, PoissonRegressionJob, RidgeJob

SIZES = (2, 5, 10, 30, 53)  # percent-like shares: the largest agency is 26x the smallest


def _pooled_reference(estimator, frame, spec):
    pre = FederatedPreprocessor(numeric=spec.numeric, categorical=dict(spec.categorical))
    return make_pipeline(pre, estimator).fit(frame, frame[spec.label])


def _assert_same_model(result, reference, frame):
    ours, ref = result.estimator_[-1], reference[-1]
    coef, ref_coef = np.ravel(ours.coef_), np.ravel(ref.coef_)
    rel = np.max(np.abs(coef - ref_coef)) / np.max(np.abs(ref_coef))
    assert rel < 1e-4, f"coefficients differ by {rel:.2e} relative"
    assert np.ravel(ours.intercept_)[0] == pytest.approx(
        np.ravel(ref.intercept_)[0], rel=1e-4, abs=1e-6
    )
    if hasattr(ref, "predict_proba"):
        p, q = result.estimator_.predict_proba(frame), reference.predict_proba(frame)
    else:
        p, q = result.estimator_.predict(frame), reference.predict(frame)
    scale = max(1.0, float(np.max(np.abs(q))))
    assert np.max(np.abs(p - q)) / scale < 1e-4


@pytest.mark.parametrize("encrypted", [True, False])
def test_logistic_equals_sklearn_on_breast_cancer_non_iid(
    breast_cancer, key_3_of_5, skewed_split, encrypted
):
    frame, spec = breast_cancer
    agencies = skewed_split(frame, spec, sort_by="mean_radius", sizes=SIZES)
    assert len({round(a.y().mean(), 2) for a in agencies}) > 2  # labels differ by agency
    with LocalFederation(agencies, threshold=3, key=key_3_of_5, encrypted=encrypted) as fed:
        result = LogisticRegressionJob(C=0.5).fit(fed)
    ref = _pooled_reference(LogisticRegression(C=0.5, tol=1e-12, max_iter=10_000), frame, spec)
    _assert_same_model(result, ref, frame)
    newton_rounds = [r for r in result.history_ if r.kind == "glm.newton"]
    assert len(newton_rounds) <= 10
    assert all(r.contributors == sorted(a.agency for a in agencies) for r in result.history_)
    restored = pickle.loads(pickle.dumps(result.estimator_))
    np.testing.assert_array_equal(restored.predict(frame), result.estimator_.predict(frame))


def test_ridge_equals_sklearn_on_diabetes_in_one_newton_round(diabetes, key_3_of_5, skewed_split):
    frame, spec = diabetes
    agencies = skewed_split(frame, spec, sort_by="bmi", sizes=SIZES)
    with LocalFederation(agencies, threshold=3, key=key_3_of_5) as fed:
        result = RidgeJob(alpha=3.0).fit(fed)
    _assert_same_model(result, _pooled_reference(Ridge(alpha=3.0), frame, spec), frame)
    assert [r.kind for r in result.history_].count("glm.newton") == 1


def test_poisson_equals_sklearn_on_count_data(key_3_of_5):
    rng = np.random.default_rng(3)
    frames = []
    for i, n in enumerate((25, 60, 150, 400, 1200)):
        f = pd.DataFrame(
            {
                "rain_mm": rng.gamma(2.0 + i, 3.0, n),
                "population_k": rng.normal(50 + 10 * i, 8, n),
                "district_type": rng.choice(["res", "com"] if i % 2 else ["res", "ind"], n),
            }
        )
        eta = 0.04 * f.rain_mm + 0.01 * (f.population_k - 60) + 0.4 * (f.district_type == "com")
        f["requests"] = rng.poisson(np.exp(eta))
        frames.append(f)
    frame = pd.concat(frames, ignore_index=True)
    from fedcity.data.dataset import AgencyDataset, FeatureSpec

    spec = FeatureSpec(
        numeric=("rain_mm", "population_k"),
        categorical={"district_type": ("res", "com", "ind")},
        label="requests",
    )
    agencies = [AgencyDataset.from_frame(f, spec, agency=f"d{i}") for i, f in enumerate(frames)]
    with LocalFederation(agencies, threshold=3, key=key_3_of_5) as fed:
        result = PoissonRegressionJob(alpha=0.05).fit(fed)
    ref = _pooled_reference(PoissonRegressor(alpha=0.05, tol=1e-12, max_iter=10_000), frame, spec)
    _assert_same_model(result, ref, frame)


def test_job_parameters_are_validated():
    for bad in (0, -1.0, float("nan"), "1"):
        with pytest.raises(ValueError, match="C must be"):
            LogisticRegressionJob(C=bad)
    with pytest.raises(ValueError, match="alpha must be"):
        RidgeJob(alpha=-1.0)
    with pytest.raises(ValueError, match="alpha must be"):
        PoissonRegressionJob(alpha=float("inf"))


def test_federated_evaluation_equals_pooled_metrics(breast_cancer, key_3_of_5, skewed_split):
    from sklearn.metrics import accuracy_score, brier_score_loss, log_loss, roc_auc_score

    frame, spec = breast_cancer
    train = frame.sample(frac=0.7, random_state=0)
    test = frame.drop(train.index)
    agencies = skewed_split(train, spec, sort_by="mean_radius", sizes=SIZES)
    test_agencies = skewed_split(test, spec, sort_by="mean_radius", sizes=SIZES)
    with LocalFederation(agencies, threshold=3, key=key_3_of_5) as fed:
        result = LogisticRegressionJob().fit(fed)
        got = fed.evaluate(result, test_agencies)
    p = result.estimator_.predict_proba(test)[:, 1]
    y = test[spec.label]
    assert got["log_loss"] == pytest.approx(log_loss(y, p), rel=1e-6)
    assert got["brier"] == pytest.approx(brier_score_loss(y, p), rel=1e-6)
    assert got["accuracy"] == pytest.approx(accuracy_score(y, p >= 0.5), abs=1e-9)
    assert got["roc_auc"] == pytest.approx(roc_auc_score(y, p), abs=1e-3)


def test_federated_evaluation_of_a_regression(diabetes, key_3_of_5, skewed_split):
    from sklearn.metrics import mean_absolute_error, r2_score, root_mean_squared_error

    frame, spec = diabetes
    agencies = skewed_split(frame, spec, sort_by="bmi", sizes=SIZES)
    with LocalFederation(agencies, threshold=3, key=key_3_of_5) as fed:
        result = RidgeJob(alpha=1.0).fit(fed)
        got = fed.evaluate(result)
    pred = result.estimator_.predict(frame)
    y = frame[spec.label]
    assert got["rmse"] == pytest.approx(root_mean_squared_error(y, pred), rel=1e-6)
    assert got["mae"] == pytest.approx(mean_absolute_error(y, pred), rel=1e-6)
    assert got["r2"] == pytest.approx(r2_score(y, pred), rel=1e-6)


def test_poisson_survives_heavy_tailed_counts_by_backtracking(key_3_of_5):
    """A wild early step overflows every packing bound; Newton backtracks instead of failing."""
    from fedcity.data import make_city

    city = make_city(5, task="service_demand", n_samples=6000, seed=2026)
    assert (
        city.train_frame()[city.spec.label].max() > 100 * city.train_frame()[city.spec.label].mean()
    )
    with LocalFederation(list(city.agencies), threshold=3, key=key_3_of_5) as fed:
        result = PoissonRegressionJob(alpha=0.01, max_iter=40).fit(fed)
    frame = city.train_frame()
    ref = _pooled_reference(
        PoissonRegressor(alpha=0.01, tol=1e-12, max_iter=10_000), frame, city.spec
    )
    _assert_same_model(result, ref, frame)


def test_iteration_settings_are_validated_before_any_round():
    with pytest.raises(ValueError, match="max_iter"):
        LogisticRegressionJob(max_iter=0)
    with pytest.raises(ValueError, match="tol"):
        RidgeJob(tol=-1.0)
