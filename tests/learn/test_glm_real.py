"""Each federated GLM equals scikit-learn on pooled real data (FATE sets, Chicago inspections).

The data is read from ``../shared/data`` (or ``$FEDCITY_DATA``); without it these tests skip
with a message naming the public source.
"""

import numpy as np
import pytest
from sklearn.linear_model import LogisticRegression, PoissonRegressor, Ridge
from sklearn.pipeline import make_pipeline

from fedcity.data import DataUnavailable, FederatedPreprocessor, real
from fedcity.learn import LocalFederation, LogisticRegressionJob, PoissonRegressionJob, RidgeJob


def _load(loader, *args, **kwargs):
    try:
        return loader(*args, **kwargs)
    except DataUnavailable as exc:
        pytest.skip(str(exc))


def _pooled(data, estimator):
    spec = data.spec
    pre = FederatedPreprocessor(numeric=spec.numeric, categorical=dict(spec.categorical))
    train = data.train_frame()
    return make_pipeline(pre, estimator).fit(train, train[spec.label])


def _check(result, reference, frame, *, rel=1e-4):
    ours, ref = np.ravel(result.estimator_[-1].coef_), np.ravel(reference[-1].coef_)
    assert np.max(np.abs(ours - ref)) / np.max(np.abs(ref)) < rel
    if hasattr(reference, "predict_proba"):
        p, q = result.estimator_.predict_proba(frame), reference.predict_proba(frame)
    else:
        p, q = result.estimator_.predict(frame), reference.predict(frame)
    assert np.max(np.abs(p - q)) / max(1.0, float(np.max(np.abs(q)))) < rel


def test_logistic_on_fate_breast_horizontal_split():
    data = _load(real.load_fate_horizontal, "breast")
    with LocalFederation(list(data.agencies), key_bits=512) as fed:
        result = LogisticRegressionJob(C=1.0).fit(fed)
    _check(result, _pooled(data, LogisticRegression(C=1.0, tol=1e-12, max_iter=10_000)), data.test)


def test_logistic_on_chicago_inspections_across_police_districts():
    data = _load(real.load_chicago_inspections)
    sizes = data.sizes.values()
    assert len(data.agencies) > 20 and min(sizes) < 10 < 1000 < max(sizes)  # very unequal
    with LocalFederation(list(data.agencies), threshold=3, key_bits=512) as fed:
        result = LogisticRegressionJob(C=1.0).fit(fed)
    _check(result, _pooled(data, LogisticRegression(C=1.0, tol=1e-12, max_iter=10_000)), data.test)


def test_ridge_on_fate_motor():
    data = _load(real.load_fate_motor)
    with LocalFederation(list(data.agencies), key_bits=512) as fed:
        result = RidgeJob(alpha=1.0).fit(fed)
    _check(result, _pooled(data, Ridge(alpha=1.0)), data.test)


def test_poisson_on_fate_dvisits():
    data = _load(real.load_fate_dvisits)
    with LocalFederation(list(data.agencies), key_bits=512) as fed:
        result = PoissonRegressionJob(alpha=0.01).fit(fed)
    reference = _pooled(data, PoissonRegressor(alpha=0.01, tol=1e-12, max_iter=10_000))
    _check(result, reference, data.test)


def test_logistic_on_fate_default_credit():
    data = _load(real.load_fate_horizontal, "default_credit")
    with LocalFederation(list(data.agencies), key_bits=512) as fed:
        result = LogisticRegressionJob(C=0.5).fit(fed)
    _check(result, _pooled(data, LogisticRegression(C=0.5, tol=1e-12, max_iter=10_000)), data.test)
