"""LocalFederation with precomputed encryption randomness: same model, pools used once each."""

from __future__ import annotations

import numpy as np
import pytest

from fedcity.learn import LocalFederation, LogisticRegressionJob


def _agencies(skewed_split, breast_cancer):
    frame, spec = breast_cancer
    return skewed_split(frame, spec, sort_by="mean_radius", sizes=[3, 1, 1, 2, 1])


def test_pooled_federation_trains_the_same_model(key_3_of_5, skewed_split, breast_cancer):
    agencies = _agencies(skewed_split, breast_cancer)
    plain = LogisticRegressionJob(C=1.0).fit(LocalFederation(agencies, key=key_3_of_5))
    with LocalFederation(agencies, key=key_3_of_5, randomness_pool=200) as fed:
        pools = [node.randomness for node in fed.agencies.values()]
        assert all(p is not None and len(p) == 0 for p in pools)
        assert fed.precompute_randomness() == 5 * 200
        pooled = LogisticRegressionJob(C=1.0).fit(fed)
    final = pooled.estimator_[-1]
    np.testing.assert_array_equal(final.coef_, plain.estimator_[-1].coef_)
    np.testing.assert_array_equal(final.intercept_, plain.estimator_[-1].intercept_)
    for p in pools:
        assert p is not None and p.pooled > 0 and p.pooled + len(p) == 200
        assert p.fresh == p.requested - p.pooled  # what the pool lacked was computed fresh


def test_no_pool_by_default_and_sizes_are_checked(key_3_of_5, skewed_split, breast_cancer):
    agencies = _agencies(skewed_split, breast_cancer)
    fed = LocalFederation(agencies, key=key_3_of_5)
    assert all(node.randomness is None for node in fed.agencies.values())
    assert fed.precompute_randomness() == 0
    clear = LocalFederation(agencies, encrypted=False, randomness_pool=8)
    assert all(node.randomness is None for node in clear.agencies.values())
    for bad in (-1, 2**21, True, 1.5):
        with pytest.raises(ValueError, match="randomness_pool must"):
            LocalFederation(agencies, key=key_3_of_5, randomness_pool=bad)  # type: ignore[arg-type]
