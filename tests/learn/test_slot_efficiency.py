"""Every learning job type fills its ciphertexts: at least 95 % of the theoretical slot count.

Theory (``fedcity.core.precision.theoretical_slots``): ``floor((n_length - 1) / (b + ceil(log2
K)))`` values per ciphertext for the precision ``b`` the algorithm *declares* for the round
and its ``K`` participants. Achieved: the ciphertexts actually uploaded (parsed from every
contribution of real 512-bit threshold-encrypted rounds), against the fewest the theory allows
for the values sent (only the last ciphertext may be partly empty). The sizes are realistic:
10 agencies of ``benchmarks/bench_network.py``'s data (49 features), a 50-coefficient
logistic regression (1,327 values per Newton round), FedAvg of its 9,997-parameter MLP
(10,001 values) and the federated evaluation of both models.
"""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
from sklearn.neural_network import MLPClassifier
from slots import round_slots

from fedcity.core.precision import SECAGG_PLUS_ACCURACY, precision_for
from fedcity.crypto import deal_threshold_key
from fedcity.data.dataset import AgencyDataset, FeatureSpec
from fedcity.learn import LocalFederation, LogisticRegressionJob
from fedcity.learn.fedavg import FedAvgJob

BENCHMARKS = Path(__file__).resolve().parents[2] / "benchmarks"
FEATURES = 49


@pytest.fixture(scope="module")
def agencies():
    """``bench_network.py``'s data (its ``wide_frames``), 10 agencies of 200 rows."""
    if str(BENCHMARKS) not in sys.path:
        sys.path.insert(0, str(BENCHMARKS))
    from _common import wide_frames

    spec = FeatureSpec(
        numeric=tuple(f"x{j:02d}" for j in range(FEATURES)), categorical={}, label="y"
    )
    return [
        AgencyDataset.from_frame(f, spec, agency=f"agency-{i + 1:02d}")
        for i, f in enumerate(wide_frames(10, 200, FEATURES))
    ]


@pytest.fixture(scope="module")
def key():
    return deal_threshold_key(512, threshold=3, parties=10)


def _declared(algorithm, rnd) -> int:
    """The precision the algorithm declares for the round at the clip it ran with (GLM,
    statistics and evaluation declare ``request.precision_bits``)."""
    if algorithm is None:
        return int(rnd.task.request.precision_bits)
    return int(algorithm.precision_bits_for(rnd.task.request, rnd.task.spec.clip))


def _check(rounds, algorithm, public_key, kinds):
    seen = {}
    for rnd in rounds:
        slots = round_slots(rnd, public_key, _declared(algorithm, rnd))
        assert slots.efficiency >= 0.95, slots
        seen.setdefault(slots.kind, []).append(slots)
    assert set(kinds) <= set(seen), sorted(seen)
    return seen


@pytest.fixture(scope="module")
def glm_run(agencies, key):
    with LocalFederation(agencies, threshold=3, key=key) as fed:
        job = LogisticRegressionJob(C=1.0)
        result = job.fit(fed)
        rounds = list(fed.jobs[result.job_id_].rounds)
        fed.evaluate(result, agencies)
        evaluation = [r for jid, st in fed.jobs.items() if jid != result.job_id_ for r in st.rounds]
    return rounds, evaluation


def test_glm_and_statistics_rounds_fill_their_ciphertexts(glm_run, key):
    rounds, _ = glm_run
    seen = _check(rounds, None, key[0].public_key, ["stats.mean", "glm.newton"])
    newton = seen["glm.newton"][0]
    assert newton.values == 50 + 50 * 51 // 2 + 1 + 1  # gradient, Hessian, loss, overflow
    assert newton.width == 48


def test_evaluation_rounds_fill_their_ciphertexts(glm_run, key):
    _, evaluation = glm_run
    seen = _check(evaluation, None, key[0].public_key, ["eval.model"])
    assert sum(len(v) for v in seen.values()) >= 2  # the summary and a refinement


def test_fedavg_rounds_fill_their_ciphertexts_at_the_policys_precision(agencies, key):
    with LocalFederation(agencies, threshold=3, key=key) as fed:
        job = FedAvgJob(MLPClassifier(hidden_layer_sizes=(196,)), rounds=1)  # counts labels
        result = job.fit(fed)
        rounds = list(fed.jobs[result.job_id_].rounds)
    algorithm = job.algorithm_
    assert algorithm is not None
    seen = _check(rounds, algorithm, key[0].public_key, ["fedavg.label_counts", "fedavg.local"])
    # label counts: exact integers at the row count's width (2,000 rows: 11 bits, widened to
    # 14 so that the overflow indicator stays readable for up to 8,191 agencies), not 52 bits
    assert seen["fedavg.label_counts"][0].width == 14
    local = seen["fedavg.local"][0]
    assert local.values == 9_997 + 3 + 1 and local.summands == 10
    # the declared precision is the policy's (26 bits at clip 64), not a fixed 40
    assert local.width == precision_for(64.0, SECAGG_PLUS_ACCURACY) == 26
    assert local.theory == 511 // (26 + 4)
