"""GLM jobs refuse one-class labels and report convergence (issue 8, item 12)."""

import json
import warnings

import numpy as np
import pandas as pd
import pytest
from sklearn.exceptions import ConvergenceWarning

import fedcity.learn.federation as federation_module
from fedcity.core import JobFailed
from fedcity.data.dataset import AgencyDataset, FeatureSpec
from fedcity.learn import LocalFederation, LogisticRegressionJob, PoissonRegressionJob, RidgeJob
from fedcity.learn.driver import JobDriver
from fedcity.learn.jobs import estimator_from_result_json, result_to_json

SPEC = FeatureSpec(numeric=("rain_mm", "elevation_m"), categorical={"zone": ("a", "b")}, label="y")
SIZES = (12, 20, 33, 55, 80)  # 200 rows


def _agencies(labels):
    """Five agencies; ``labels(frame, index, rng)`` gives the labels of an agency's rows."""
    rng = np.random.default_rng(7)
    out, start = [], 0
    for i, n in enumerate(SIZES):
        frame = pd.DataFrame(
            {
                "rain_mm": rng.gamma(2.0, 10.0, n),
                "elevation_m": rng.normal(30.0, 8.0, n),
                "zone": rng.choice(["a", "b"], n),
            }
        )
        frame["y"] = labels(frame, np.arange(start, start + n), rng)
        out.append(AgencyDataset.from_frame(frame, SPEC, agency=f"district-{i}"))
        start += n
    return out


def _noisy_labels(frame, idx, rng):
    return (rng.random(idx.size) < 0.4).astype(float)


def _counts(frame, idx, rng):
    return rng.poisson(np.exp(0.02 * frame["rain_mm"])).astype(float)


@pytest.fixture
def recorded_drivers(monkeypatch):
    """Every JobDriver a LocalFederation builds (the coordinator's sans-IO job state)."""
    drivers = []

    class Recording(JobDriver):
        def __init__(self, *args, **kwargs):
            super().__init__(*args, **kwargs)
            drivers.append(self)

    monkeypatch.setattr(federation_module, "JobDriver", Recording)
    return drivers


@pytest.mark.parametrize("label", [1, 0])
def test_one_class_logistic_job_fails_naming_the_problem(key_3_of_5, recorded_drivers, label):
    agencies = _agencies(lambda frame, idx, rng: np.full(idx.size, float(label)))
    message = (
        f"logistic regression needs both classes: all 200 labels across the agencies are {label}"
    )
    with (
        LocalFederation(agencies, threshold=3, key=key_3_of_5) as fed,
        pytest.raises(JobFailed, match=message),
    ):
        LogisticRegressionJob().fit(fed)
    # refused from the first Newton round's sums, before any step was taken
    (driver,) = recorded_drivers
    assert driver.failure == message
    assert [r.kind for r in driver.records].count("glm.newton") == 0
    assert driver.rounds[-1].task.request.kind == "glm.newton"
    assert not any(driver.rounds[-1].task.request.params["beta"])


def test_one_class_logistic_job_fails_in_the_clear_too():
    agencies = _agencies(lambda frame, idx, rng: np.ones(idx.size))
    with (
        LocalFederation(agencies, threshold=3, encrypted=False) as fed,
        pytest.raises(JobFailed, match=r"needs both classes: all 200 labels .* are 1"),
    ):
        LogisticRegressionJob(C=10.0).fit(fed)


def test_a_single_row_of_the_other_class_is_enough(key_3_of_5):
    agencies = _agencies(lambda frame, idx, rng: (idx != 150).astype(float))  # one 0 among 200
    with LocalFederation(agencies, threshold=3, key=key_3_of_5) as fed:
        result = LogisticRegressionJob().fit(fed)
    assert result.converged_ is True
    assert result.estimator_[-1].intercept_[0] < 15


def test_non_convergence_warns_and_is_reported(key_3_of_5):
    agencies = _agencies(_noisy_labels)
    with (
        LocalFederation(agencies, threshold=3, key=key_3_of_5) as fed,
        pytest.warns(ConvergenceWarning, match=r"did not converge in 2 iterations") as caught,
    ):
        result = LogisticRegressionJob(max_iter=2).fit(fed)
    text = str(caught[0].message)
    assert "the last step changed a standardised coefficient by up to" in text
    assert "tol=1e-10" in text
    assert result.converged_ is False
    assert result.n_iter_ == 2
    assert result.last_step_ is not None and result.last_step_ > 1e-6
    assert list(result.estimator_[-1].n_iter_) == [2]
    # the networked result carries it, and rebuilding the model warns again
    data = json.loads(
        result_to_json(result, job={"job_type": "logistic_regression", "params": {"max_iter": 2}})
    )
    assert data["converged"] is False and data["n_iter"] == 2
    assert data["last_step"] == pytest.approx(result.last_step_)
    with pytest.warns(ConvergenceWarning, match="did not converge in 2 iterations"):
        rebuilt = estimator_from_result_json(json.dumps(data), SPEC)
    assert list(rebuilt[-1].n_iter_) == [2]


def test_poisson_non_convergence_warns_too():
    agencies = _agencies(_counts)
    with (
        LocalFederation(agencies, threshold=3, encrypted=False) as fed,
        pytest.warns(ConvergenceWarning, match="poisson regression .* in 2 iterations"),
    ):
        result = PoissonRegressionJob(max_iter=2).fit(fed)
    assert result.converged_ is False and result.n_iter_ == 2


@pytest.mark.parametrize(
    ("job", "counts"),
    [
        (LogisticRegressionJob(), False),
        (RidgeJob(alpha=1.0), False),
        (PoissonRegressionJob(alpha=0.1), True),
    ],
    ids=["logistic", "ridge", "poisson"],
)
def test_a_normal_fit_converges_without_warning(key_3_of_5, job, counts):
    agencies = _agencies(_counts if counts else _noisy_labels)
    with LocalFederation(agencies, threshold=3, key=key_3_of_5) as fed, warnings.catch_warnings():
        warnings.simplefilter("error", ConvergenceWarning)
        result = job.fit(fed)
    newton = [r for r in result.history_ if r.kind == "glm.newton"]
    assert result.converged_ is True
    assert result.n_iter_ == len(newton) < job.max_iter
    data = json.loads(result_to_json(result))
    assert data["converged"] is True and data["n_iter"] == result.n_iter_
    with warnings.catch_warnings():
        warnings.simplefilter("error", ConvergenceWarning)
        rebuilt = estimator_from_result_json(json.dumps(data), SPEC)
    assert np.ravel(rebuilt[-1].n_iter_)[0] == result.n_iter_
