"""The in-process federation: dropouts, failure reasons, and what the coordinator holds."""

import numpy as np
import pytest

from fedcity.core import JobFailed
from fedcity.crypto import EncryptedVector
from fedcity.crypto.serde import encrypted_vector_from_bytes
from fedcity.learn import LocalFederation, LogisticRegressionJob

SIZES = (4, 8, 15, 30, 43)


def test_agency_dropping_out_mid_job_is_dropped_and_job_completes(
    breast_cancer, key_3_of_5, skewed_split
):
    frame, spec = breast_cancer
    agencies = skewed_split(frame, spec, sort_by="mean_texture", sizes=SIZES)
    with LocalFederation(agencies, threshold=3, min_agencies=3, key=key_3_of_5) as fed:
        gone = agencies[4].agency
        fed.schedule_dropout(gone, at_round=6)  # after statistics and a Newton round or two
        result = LogisticRegressionJob(C=1.0).fit(fed)
    contributors = result.contributors_
    first_without = next(i for i, c in enumerate(contributors) if gone not in c)
    assert first_without >= 4  # it took part in the statistics rounds
    assert all(gone in c and len(c) == 5 for c in contributors[:first_without])
    assert all(gone not in c and len(c) == 4 for c in contributors[first_without:])
    assert result.history_[-1].kind == "glm.newton" and first_without < len(contributors)
    accuracy = (result.estimator_.predict(frame) == frame[spec.label]).mean()
    assert accuracy > 0.9


def test_job_fails_cleanly_when_fewer_than_threshold_remain(
    breast_cancer, key_3_of_5, skewed_split
):
    frame, spec = breast_cancer
    agencies = skewed_split(frame, spec, sort_by="mean_texture", sizes=SIZES)
    with LocalFederation(agencies, threshold=3, min_agencies=2, key=key_3_of_5) as fed:
        for a in agencies[:3]:
            fed.schedule_dropout(a.agency, at_round=4)
        with pytest.raises(JobFailed, match=r"2 agencies remain to take part; .* t=3 decryptors"):
            LogisticRegressionJob().fit(fed)


def test_federation_configuration_is_validated(breast_cancer, skewed_split, key_3_of_5):
    frame, spec = breast_cancer
    agencies = skewed_split(frame, spec, sort_by="mean_texture", sizes=SIZES)
    with pytest.raises(ValueError, match="unique"):
        LocalFederation([agencies[0], agencies[0]], encrypted=False)
    with pytest.raises(ValueError, match="threshold must lie"):
        LocalFederation(agencies, threshold=6, encrypted=False)
    with pytest.raises(ValueError, match="3-of-5, the federation needs 2-of-5"):
        LocalFederation(agencies, threshold=2, key=key_3_of_5)
    with pytest.raises(ValueError, match="at least one agency"):
        LocalFederation([])


def test_coordinator_receives_and_stores_only_ciphertext(breast_cancer, key_3_of_5, skewed_split):
    frame, spec = breast_cancer
    agencies = skewed_split(frame, spec, sort_by="mean_texture", sizes=SIZES)
    tpk, _ = key_3_of_5
    with LocalFederation(agencies, threshold=3, key=key_3_of_5) as fed:
        result = LogisticRegressionJob().fit(fed)
        state = fed.jobs[result.job_id_]
        stored = list(fed.coordinator_storage(result.job_id_))
        # what each agency computed locally, in the clear, for every round of the job
        secrets = []
        for rnd in state.rounds:
            for name in rnd.contributors:
                v = fed.agencies[name].local_vector(rnd.task)
                secrets.append(v.astype("<f8").tobytes())
                q = rnd.task.spec.quantize(np.append(v, 0.0))
                secrets += [m.to_bytes(64, "big") for m in rnd.task.spec.pack(q)]
            for opened in rnd._opened.values():
                assert isinstance(opened, EncryptedVector)  # never a plaintext object
    raw_records = [
        a.X_numeric()[i].astype("<f8").tobytes() for a in agencies for i in range(0, a.n_samples, 7)
    ]
    assert stored and secrets
    blob = b"\x00".join(stored)
    for needle in secrets + raw_records:
        assert needle not in blob
    # every stored contribution and aggregate is a valid ciphertext vector under the job key
    for rnd in state.rounds:
        for payload in [*rnd.contributions.values(), rnd.aggregate_bytes]:
            vec = encrypted_vector_from_bytes(payload, tpk.public_key)
            assert all(0 < c < tpk.public_key.nsquare for c in vec.ciphertexts)


def test_encryption_off_gives_the_same_model(breast_cancer, key_3_of_5, skewed_split):
    frame, spec = breast_cancer
    agencies = skewed_split(frame, spec, sort_by="mean_texture", sizes=SIZES)
    with LocalFederation(agencies, threshold=3, key=key_3_of_5) as fed:
        enc = LogisticRegressionJob().fit(fed)
    plain = LogisticRegressionJob().fit(LocalFederation(agencies, encrypted=False))
    np.testing.assert_allclose(
        enc.estimator_[-1].coef_, plain.estimator_[-1].coef_, rtol=1e-6, atol=1e-8
    )
    assert enc.bytes_per_agency_ > 0 and plain.bytes_per_agency_ > 0


def test_fractional_sample_weights_are_not_rounded_in_the_statistics():
    import pandas as pd

    from fedcity.data.dataset import AgencyDataset, FeatureSpec
    from fedcity.learn.stats import FederatedStatistics

    spec = FeatureSpec(numeric=("x",), categorical={}, label="y", weight="w")
    rng = np.random.default_rng(0)
    frames = [
        pd.DataFrame({"x": rng.normal(size=n), "y": 0.0, "w": rng.uniform(0.1, 2.0, n)})
        for n in (20, 30, 40)
    ]
    agencies = [AgencyDataset.from_frame(f, spec, agency=f"a{i}") for i, f in enumerate(frames)]
    stats = FederatedStatistics(spec)
    LocalFederation(agencies, encrypted=False).run(stats)
    pooled = pd.concat(frames)
    assert stats.total_weight_ == pytest.approx(pooled.w.sum(), rel=1e-12)
    assert stats.n_samples_ == 90
    assert stats.mean_[0] == pytest.approx(np.average(pooled.x, weights=pooled.w), rel=1e-9)


# -- single-key-holder mode -----------------------------------------------------------------
@pytest.fixture(scope="module")
def keyholder_key():
    from fedcity.crypto import generate_keypair

    return generate_keypair(512)


def test_key_holder_mode_gives_the_threshold_model(
    breast_cancer, key_3_of_5, keyholder_key, skewed_split
):
    frame, spec = breast_cancer
    agencies = skewed_split(frame, spec, sort_by="mean_texture", sizes=SIZES)
    holder = agencies[2].agency
    with LocalFederation(agencies, key=keyholder_key, key_holder=holder) as fed:
        assert fed.threshold == 1 and fed.share_index_of == {holder: 1}
        kh = LogisticRegressionJob().fit(fed)
        state = fed.jobs[kh.job_id_]
        # only the key holder decrypted, and every round had the usual contributors
        assert all(rnd.decryptors == [holder] for rnd in state.rounds)
        assert all(len(rnd.contributors) == 5 for rnd in state.rounds)
    with LocalFederation(agencies, threshold=3, key=key_3_of_5) as fed:
        th = LogisticRegressionJob().fit(fed)
    np.testing.assert_allclose(
        kh.estimator_[-1].coef_, th.estimator_[-1].coef_, rtol=1e-9, atol=1e-12
    )


def test_key_holder_sees_only_blinded_aggregates(breast_cancer, keyholder_key, skewed_split):
    """The coordinator stores ciphertexts; the key holder decrypts masked values only."""
    from fedcity.crypto.serde import keyholder_decryption_from_bytes

    frame, spec = breast_cancer
    agencies = skewed_split(frame, spec, sort_by="mean_texture", sizes=SIZES)
    pk, sk = keyholder_key
    holder = agencies[0].agency
    with LocalFederation(agencies, key=keyholder_key, key_holder=holder) as fed:
        result = LogisticRegressionJob().fit(fed)
        state = fed.jobs[result.job_id_]
        for rnd in state.rounds:
            for payload in rnd.contributions.values():
                vec = encrypted_vector_from_bytes(payload, pk)
                assert all(0 < c < pk.nsquare for c in vec.ciphertexts)
            # what the key holder was sent is not the aggregate, and what it saw decrypts to
            # values that are not the aggregate's plaintexts
            sent = encrypted_vector_from_bytes(rnd.aggregate_bytes, pk)
            true_sum = rnd.aggregate.vector
            assert sent.digest() != true_sum.digest()
            seen = keyholder_decryption_from_bytes(rnd.partials[holder], pk).plaintexts
            clear = [sk.raw_decrypt(c) for c in true_sum.ciphertexts]
            assert all(s != m for s, m in zip(seen, clear, strict=True))


def test_key_holder_configuration_is_validated(
    breast_cancer, skewed_split, key_3_of_5, keyholder_key
):
    frame, spec = breast_cancer
    agencies = skewed_split(frame, spec, sort_by="mean_texture", sizes=SIZES)
    with pytest.raises(ValueError, match="is not one of the agencies"):
        LocalFederation(agencies, key=keyholder_key, key_holder="nobody")
    with pytest.raises(ValueError, match="has no threshold"):
        LocalFederation(agencies, key=keyholder_key, key_holder=agencies[0].agency, threshold=3)
    with pytest.raises(ValueError, match=r"takes key=\(PublicKey, PrivateKey\)"):
        LocalFederation(agencies, key=key_3_of_5, key_holder=agencies[0].agency)
    with pytest.raises(ValueError, match="takes key=\\(ThresholdPublicKey"):
        LocalFederation(agencies, threshold=3, key=keyholder_key)
