"""Differential privacy through the whole federation: noise scale and accounting."""

import numpy as np
import pytest

from fedcity.core import JobFailed, TaskRequest, local_step
from fedcity.learn import LocalFederation, LogisticRegressionJob
from fedcity.learn.algorithm import Algorithm
from fedcity.learn.dp import DPPlan
from fedcity.privacy import DPConfig

DIM = 1500


@local_step("test.zeros")
def _zeros(params, data):
    return np.zeros(DIM)


class _Repeat(Algorithm):
    """Releases the sum of every agency's zero vector ``times`` times."""

    def __init__(self, times):
        self.times = times
        self.released = []

    def next_request(self):
        if len(self.released) >= self.times:
            return None
        return TaskRequest("test.zeros", {}, DIM, clip=1.0, label="zeros", private=True)

    def update(self, request, released, record):
        self.released.append(released)


def test_released_sum_carries_noise_of_the_calibrated_scale(diabetes, key_3_of_5, skewed_split):
    frame, spec = diabetes
    agencies = skewed_split(frame, spec, sort_by="bmi", sizes=(1, 1, 1, 1, 1))
    config = DPConfig(epsilon=2.0, delta=1e-6, clip_norm=1.0, rounds=2)
    with LocalFederation(agencies, threshold=3, min_agencies=5, key=key_3_of_5, seed=11) as fed:
        plan = DPPlan(config, n_contributors_min=fed.min_agencies)
        algo = _Repeat(2)
        fed.run(algo, dp=plan)
        expected = plan.noise.expected_sum_std(5)
        stored = [rnd.task.dp for rnd in fed.jobs[next(iter(fed.jobs))].rounds]
    noise = np.concatenate(algo.released)
    assert abs(noise.mean()) < 4 * expected / np.sqrt(noise.size)
    assert noise.std() == pytest.approx(expected, rel=0.1)
    assert all(p["noise"] == "gaussian" and p["share"] > 0 for p in stored)
    eps, delta = plan.spent()
    assert 0 < eps <= 2.0 + 1e-9 and delta <= 1e-6
    # a third release would exceed the planned budget: refused before anything is sent
    with pytest.raises(JobFailed, match="privacy budget"):
        plan.check()


def test_dp_job_reports_privacy_spent_and_refuses_rounds_beyond_budget(breast_cancer, skewed_split):
    # Contributions are protected at the agency level (zero-out adjacency: a whole agency's
    # vector), so with five agencies the noise is large; this checks the plumbing, not accuracy.
    frame, spec = breast_cancer
    agencies = skewed_split(frame, spec, sort_by="mean_radius", sizes=(1, 1, 1, 1, 1))
    config = DPConfig(epsilon=30.0, delta=1e-5, clip_norm=4.0, rounds=4, noise="skellam")
    fed = LocalFederation(agencies, encrypted=False, min_agencies=5, seed=3)
    result = LogisticRegressionJob(C=1.0, max_iter=4, privacy=config).fit(fed)
    eps, delta = result.privacy_
    assert 0 < eps <= 30.0 and 0 < delta <= 1e-5
    assert [r.kind for r in result.history_].count("glm.newton") == 4
    exact = LogisticRegressionJob(C=1.0).fit(LocalFederation(agencies, encrypted=False))
    assert not np.allclose(result.estimator_[-1].coef_, exact.estimator_[-1].coef_)
    with pytest.raises(JobFailed, match="privacy budget"):
        LogisticRegressionJob(C=1.0, max_iter=5, privacy=config).fit(fed)


def test_privacy_parameters_are_keyword_only_and_validated():
    with pytest.raises(TypeError):
        DPConfig(1.0, 1e-6, 1.0)  # type: ignore[misc]
    with pytest.raises(ValueError, match="delta"):
        DPConfig(epsilon=1.0, delta=2.0, clip_norm=1.0)
    with pytest.raises(TypeError, match="DPConfig"):
        DPPlan({"epsilon": 1.0}, n_contributors_min=3)
