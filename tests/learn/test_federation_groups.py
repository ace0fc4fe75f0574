"""The in-process federation decrypts in disjoint groups, as the coordinator does."""

import numpy as np
import pytest

from fedcity.crypto import deal_threshold_key
from fedcity.learn import LocalFederation, LogisticRegressionJob

SIZES = (4, 8, 15, 30, 43)


@pytest.fixture(scope="module")
def key_2_of_5():
    return deal_threshold_key(512, threshold=2, parties=5)


def test_groups_decrypt_parts_and_release_the_same_model(
    breast_cancer, key_2_of_5, key_3_of_5, skewed_split
):
    """2-of-5: two groups of two and one holder in reserve; 3-of-5 decrypts whole."""
    frame, spec = breast_cancer
    agencies = skewed_split(frame, spec, sort_by="mean_texture", sizes=SIZES)
    with LocalFederation(agencies, threshold=3, key=key_3_of_5) as fed:
        whole = LogisticRegressionJob(C=1.0).fit(fed)
    with LocalFederation(agencies, threshold=2, key=key_2_of_5) as fed:
        split = LogisticRegressionJob(C=1.0).fit(fed)
        state = next(iter(fed.jobs.values()))
    np.testing.assert_allclose(
        split.model_params_["beta"], whole.model_params_["beta"], rtol=0, atol=1e-10
    )
    rounds = state.rounds
    parted = [r for r in rounds if len(r.parts) > 1]
    assert parted  # the Newton rounds carry several ciphertexts
    for rnd in parted:
        assert len(rnd.parts) == 2 and len(rnd.decryptors) == 4
        k = len(rnd.aggregate.ciphertexts)
        assert [j for p in rnd.parts for j in range(p.start, p.stop)] == list(range(k))
        for p in rnd.parts:
            assert len(rnd.members(p.index)) == 2
    for rnd in rounds:
        if len(rnd.parts) <= 1:
            assert len(rnd.decryptors) == 2
