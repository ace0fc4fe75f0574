"""FedAvg with the opt-in ``aggregation="lwr-masked"`` scheme in a LocalFederation.

Real 512-bit threshold Paillier keys for the PRF keys, the real LWR parameter set; the released
model is compared with the default packed-Paillier scheme at the same precision.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest
from sklearn.neural_network import MLPClassifier

from fedcity.core.errors import JobFailed
from fedcity.core.masked_scheme import MaskedScheme, masked_precision_limit
from fedcity.core.nodes import AgencyNode
from fedcity.core.tasks import Task
from fedcity.crypto import deal_threshold_key, khprf
from fedcity.learn import FedAvgJob, LocalFederation
from fedcity.learn.jobs import job_from_spec

MLP = {"hidden_layer_sizes": (4,), "learning_rate_init": 0.01, "batch_size": 64, "random_state": 0}


@pytest.fixture(scope="module")
def agencies(breast_cancer: Any, skewed_split: Any) -> Any:
    frame, spec = breast_cancer
    return skewed_split(frame, spec, sort_by="mean_radius", sizes=(2, 3, 5))


@pytest.fixture(scope="module")
def key_2_of_3() -> Any:
    return deal_threshold_key(512, threshold=2, parties=3)


def _fit(agencies: Any, key: Any, **kw: Any) -> Any:
    with LocalFederation(agencies, key=key, key_bits=512) as federation:
        job = FedAvgJob(MLPClassifier(**MLP), rounds=2, classes=[0, 1], clip=4.0, **kw)
        return job, job.fit(federation)


def test_masked_model_equals_paillier_model_within_quantization(
    agencies: Any, key_2_of_3: Any
) -> None:
    bits = masked_precision_limit(3)
    assert bits == 20  # 3 summands of 20 bits, Δ = 4, fit in p = 2^24
    paillier, _ = _fit(agencies, key_2_of_3, precision_bits=bits)
    masked, result = _fit(agencies, key_2_of_3, precision_bits=bits, aggregation="lwr-masked")
    assert masked.aggregation == "lwr-masked"
    a, b = paillier.algorithm_, masked.algorithm_
    assert a is not None and b is not None
    step = 2 * 4.0 / ((1 << bits) - 1)
    # per value at most 3 contributors' rounding per round, amplified a little by training
    np.testing.assert_allclose(b.coef_vector_, a.coef_vector_, rtol=0, atol=50 * 3 * step)
    assert not np.array_equal(b.coef_vector_, np.zeros_like(b.coef_vector_))
    local = [r for r in result.history_ if r.kind == "fedavg.local"]
    assert len(local) == 2 and all(len(r.contributors) == 3 for r in local)
    # the masked rounds upload the masked values plus lambda=1024 key values under Paillier,
    # not the packed update: far fewer bytes than 4 values per model parameter
    n_params = b.coef_vector_.size
    assert all(r.bytes_per_agency < 3 * (n_params + 3) + 40_000 for r in local)


def test_masked_rounds_with_decryption_groups(breast_cancer: Any, skewed_split: Any) -> None:
    """2-of-5: the key sum is decrypted in two disjoint groups; the model is unchanged."""
    frame, spec = breast_cancer
    five = skewed_split(frame, spec, sort_by="mean_radius", sizes=(1, 2, 2, 3, 4))
    key = deal_threshold_key(512, threshold=2, parties=5)
    models = []
    for aggregation in ("paillier", "lwr-masked"):
        with LocalFederation(five, threshold=2, key=key) as federation:
            job = FedAvgJob(
                MLPClassifier(**MLP),
                rounds=1,
                classes=[0, 1],
                clip=4.0,
                precision_bits=masked_precision_limit(5),
                aggregation=aggregation,
            )
            job.fit(federation)
            assert job.algorithm_ is not None
            models.append(job.algorithm_.coef_vector_)
    step = 2 * 4.0 / ((1 << masked_precision_limit(5)) - 1)
    np.testing.assert_allclose(models[1], models[0], rtol=0, atol=5 * step)


def test_default_accuracy_is_capped_to_what_fits_p(agencies: Any, key_2_of_3: Any) -> None:
    """Without a fixed precision the masked rounds use at most what fits the PRF modulus."""
    _, result = _fit(agencies, key_2_of_3, aggregation="lwr-masked")
    local = [r for r in result.history_ if r.kind == "fedavg.local"]
    assert local and all(
        r.step == pytest.approx(2 * 4.0 / ((1 << masked_precision_limit(3)) - 1)) for r in local
    )


def test_malformed_masked_vector_fails_the_round_without_naming_a_culprit(
    agencies: Any, key_2_of_3: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A masked value shifted by half the plaintext range unmasks above n·L: the round fails."""
    seal = MaskedScheme.seal

    def bad_seal(self: MaskedScheme, vector: Any, spec: Any, noise: Any = None) -> bytes:
        payload = bytearray(seal(self, vector, spec, noise))
        if self._bad:  # type: ignore[attr-defined]
            head = len(b"fedcity.masked.v1\x00") + 4
            w = -(-self.params.log_p // 8)
            y = int.from_bytes(payload[head : head + w], "little")
            shift = (self.params.p >> self.spec.scale_bits) // 2 << self.spec.scale_bits
            payload[head : head + w] = ((y + shift) % self.params.p).to_bytes(w, "little")
        return bytes(payload)

    original = AgencyNode.scheme_for

    def scheme_for(self: AgencyNode, task: Task) -> Any:
        scheme = original(self, task)
        if isinstance(scheme, MaskedScheme):
            scheme._bad = self.name == agencies[0].agency  # type: ignore[attr-defined]
        return scheme

    monkeypatch.setattr(MaskedScheme, "seal", bad_seal)
    monkeypatch.setattr(AgencyNode, "scheme_for", scheme_for)
    with pytest.raises(JobFailed, match="the culprit cannot be identified"):
        _fit(agencies, key_2_of_3, aggregation="lwr-masked")


def test_refused_without_a_threshold_key(agencies: Any) -> None:
    with LocalFederation(agencies, key_holder=agencies[0].agency, key_bits=512) as federation:
        job = FedAvgJob(MLPClassifier(**MLP), rounds=1, classes=[0, 1], aggregation="lwr-masked")
        with pytest.raises(JobFailed, match="lwr-masked' needs the federation's threshold key"):
            job.fit(federation)
    with LocalFederation(agencies, encrypted=False) as federation:
        job = FedAvgJob(MLPClassifier(**MLP), rounds=1, classes=[0, 1], aggregation="lwr-masked")
        with pytest.raises(JobFailed, match="PlaintextScheme"):
            job.fit(federation)


def test_aggregation_parameter_is_validated() -> None:
    with pytest.raises(ValueError, match=r"must be one of \[.paillier., .lwr-masked.\]"):
        FedAvgJob(MLPClassifier(**MLP), aggregation="masked")
    with pytest.raises(ValueError, match="aggregation must be one of"):
        job_from_spec("fedavg", {"estimator": {"class": "MLPClassifier"}, "aggregation": 1}, None)
    job = job_from_spec(
        "fedavg", {"estimator": {"class": "MLPClassifier"}, "aggregation": "lwr-masked"}, None
    )
    assert isinstance(job, FedAvgJob) and job.aggregation == "lwr-masked"
    with pytest.raises(ValueError, match="offered only for fedavg jobs"):
        job_from_spec("ridge", {"aggregation": "lwr-masked"}, None)
    # paillier stays the default and names no parameter in the round's task
    assert FedAvgJob(MLPClassifier(**MLP)).aggregation == "paillier"


def test_precision_limit_follows_the_parameter_set() -> None:
    assert masked_precision_limit(10) == 16
    assert masked_precision_limit(10, khprf.LWR_2048) == 20
    assert masked_precision_limit(1 << 16) < masked_precision_limit(10)
