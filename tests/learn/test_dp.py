"""Differential privacy through the whole federation: noise scale and accounting."""

import json

import numpy as np
import pytest

from fedcity.core import JobFailed, TaskRequest, local_step
from fedcity.learn import LocalFederation, LogisticRegressionJob
from fedcity.learn.algorithm import Algorithm
from fedcity.learn.dp import DPPlan, public_preprocessing
from fedcity.learn.jobs import job_from_spec, result_to_json
from fedcity.privacy import DPConfig, distributed_epsilon, quantized_sensitivity

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


def _public(frame, spec):
    """Public preprocessing: ranges a scientist would know without looking at the data."""
    ranges = {c: (0.0, float(np.ceil(frame[c].max() * 1.5))) for c in spec.numeric}
    return public_preprocessing(spec, ranges=ranges, total_weight=500)


def test_dp_job_reports_privacy_spent_and_refuses_rounds_beyond_budget(
    breast_cancer, key_3_of_5, skewed_split
):
    # Contributions are protected at the agency level (zero-out adjacency: a whole agency's
    # vector), so with five agencies the noise is large; this checks the plumbing, not accuracy.
    frame, spec = breast_cancer
    agencies = skewed_split(frame, spec, sort_by="mean_radius", sizes=(1, 1, 1, 1, 1))
    config = DPConfig(epsilon=30.0, delta=1e-5, clip_norm=4.0, rounds=4, noise="skellam")
    pre = _public(frame, spec)
    fed = LocalFederation(agencies, threshold=3, min_agencies=5, key=key_3_of_5, seed=3)
    result = LogisticRegressionJob(C=1.0, max_iter=4, privacy=config, preprocessing=pre).fit(fed)
    eps, delta = result.privacy_
    assert 0 < eps <= 30.0 and 0 < delta <= 1e-5
    assert [r.kind for r in result.history_] == ["glm.newton"] * 4
    exact = LogisticRegressionJob(C=1.0).fit(LocalFederation(agencies, encrypted=False))
    x = frame[list(spec.features)]
    assert not np.allclose(result.estimator_.predict_proba(x), exact.estimator_.predict_proba(x))
    with pytest.raises(JobFailed, match="privacy budget"):
        LogisticRegressionJob(C=1.0, max_iter=5, privacy=config, preprocessing=pre).fit(fed)


def test_dp_job_without_public_preprocessing_is_refused(breast_cancer):
    # Today's bug: a DP job released its preprocessing counts, means and variances exactly
    # while reporting only the training epsilon.
    config = DPConfig(epsilon=1.0, delta=1e-6, clip_norm=1.0, rounds=2)
    with pytest.raises(ValueError, match="needs public preprocessing"):
        LogisticRegressionJob(C=1.0, max_iter=2, privacy=config)
    with pytest.raises(ValueError, match="needs public preprocessing"):
        job_from_spec("ridge", {"alpha": 1.0}, {"epsilon": 1.0, "delta": 1e-6, "clip_norm": 1.0})
    frame, spec = breast_cancer
    pre = _public(frame, spec).to_params()
    job = job_from_spec(
        "ridge",
        {"alpha": 1.0, "max_iter": 2, "preprocessing": pre},
        {"epsilon": 1.0, "delta": 1e-6, "clip_norm": 1.0, "rounds": 2},
    )
    assert job.preprocessing is not None and job.preprocessing.to_params() == pre


def test_dp_job_releases_no_exact_statistic_and_reports_every_release(
    breast_cancer, key_3_of_5, skewed_split
):
    """Removing one record moves nothing exact; the reported epsilon covers every release."""
    frame, spec = breast_cancer
    pre = _public(frame, spec)
    config = DPConfig(epsilon=8.0, delta=1e-6, clip_norm=2.0, rounds=3)
    results, plans = [], []
    for drop in (False, True):
        data = frame.drop(index=frame.index[0]) if drop else frame
        agencies = skewed_split(data, spec, sort_by="mean_radius", sizes=(1, 1, 1, 1, 1))
        with LocalFederation(agencies, threshold=3, min_agencies=5, key=key_3_of_5) as fed:
            job = LogisticRegressionJob(C=1.0, max_iter=3, privacy=config, preprocessing=pre)
            results.append(job.fit(fed))
            rounds = fed.jobs[results[-1].job_id_].rounds
            plans.append([rnd.task.dp for rnd in rounds])
    with_row, without_row = results
    # nothing released exactly: the preprocessing is the public one in both runs, and every
    # round's contribution carried noise
    assert with_row.preprocessing_ == without_row.preprocessing_ == pre
    assert all(p is not None and p["share"] > 0 for run in plans for p in run)
    assert [r.kind for r in with_row.history_] == ["glm.newton"] * 3
    # the reported epsilon is that of all 3 releases, recomputed independently
    dp = plans[0][0]
    step = 2 * dp["clip_norm"] / (2**16 - 1)
    n_coef = pre.n_features + 1
    dim = n_coef + n_coef * (n_coef + 1) // 2 + 1
    sens = quantized_sensitivity(clip_norm=dp["clip_norm"], step=step, dim=dim)
    expected = distributed_epsilon(
        noise="gaussian",
        share=dp["share"],
        honest_shares=5,
        sensitivity=sens,
        releases=3,
        delta=config.delta_rdp,
    )
    assert with_row.privacy_[0] == pytest.approx(expected, rel=1e-9)
    assert with_row.privacy_[0] <= 8.0 * (1 + 1e-6)
    report = with_row.privacy_report_
    assert report["releases"] == 3 and report["epsilon"] == with_row.privacy_[0]
    # against a contributing agency (4 shares unknown to it) and for one record: larger
    assert report["epsilon"] < report["epsilon_against_agency"]
    assert report["epsilon"] < report["epsilon_record"] < report["epsilon_record_against_agency"]
    assert json.loads(result_to_json(with_row))["privacy"]["epsilon_record"] == pytest.approx(
        report["epsilon_record"]
    )


def test_dp_without_encryption_is_refused(breast_cancer, skewed_split):
    frame, spec = breast_cancer
    agencies = skewed_split(frame, spec, sort_by="mean_radius", sizes=(1, 1, 1))
    config = DPConfig(epsilon=4.0, delta=1e-6, clip_norm=1.0, rounds=2)
    job = LogisticRegressionJob(
        C=1.0, max_iter=2, privacy=config, preprocessing=_public(frame, spec)
    )
    with pytest.raises(ValueError, match="needs encryption"):
        job.fit(LocalFederation(agencies, encrypted=False, min_agencies=3))


def test_privacy_parameters_are_keyword_only_and_validated():
    with pytest.raises(TypeError):
        DPConfig(1.0, 1e-6, 1.0)  # type: ignore[misc]
    with pytest.raises(ValueError, match="delta"):
        DPConfig(epsilon=1.0, delta=2.0, clip_norm=1.0)
    with pytest.raises(TypeError, match="DPConfig"):
        DPPlan({"epsilon": 1.0}, n_contributors_min=3)


def test_colluding_contributors_are_accounted_when_configured(diabetes, key_3_of_5, skewed_split):
    frame, spec = diabetes
    agencies = skewed_split(frame, spec, sort_by="bmi", sizes=(1, 1, 1, 1, 1))
    with LocalFederation(agencies, threshold=3, min_agencies=3, key=key_3_of_5) as fed:
        reports = {}
        for colluding in (0, 1):
            config = DPConfig(epsilon=2.0, delta=1e-6, clip_norm=1.0, rounds=2, colluding=colluding)
            plan = DPPlan(config, n_contributors_min=fed.min_agencies)
            fed.run(_Repeat(2), dp=plan)
            reports[colluding] = plan.report()
            assert plan.noise.calibration.n_contributors == 3 - colluding
    # without colluders the budget holds only against outsiders; with one, also against
    # any single contributing agency
    assert reports[0]["epsilon_against_agency"] > 2.0 * (1 + 1e-6)
    assert reports[1]["epsilon_against_agency"] <= 2.0 * (1 + 1e-6)
    # the accountant's epsilon already assumes the colluding coalition (conservative)
    assert reports[1]["epsilon_against_agency"] == pytest.approx(reports[1]["epsilon"])
    with pytest.raises(ValueError, match="leaves no honest contributor"):
        DPPlan(DPConfig(epsilon=1.0, delta=1e-6, clip_norm=1.0, colluding=3), n_contributors_min=3)
