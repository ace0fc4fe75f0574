"""Encryption randomness precomputed while a Flower node process is idle."""

from __future__ import annotations

import time

import numpy as np
import pytest
from conftest import NODES
from flower_apps import LocalGrid, initial_arrays, make_client_app, plain_fedavg

from fedcity.flower import FlowerKeyFiles, SecureAggregationMod, SecureFedAvg, load_public_key
from fedcity.flower.precompute import IdlePrecompute, busy, precompute_for


def wait_for(condition: object, seconds: float = 30.0) -> bool:
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        if condition():  # type: ignore[operator]
            return True
        time.sleep(0.02)
    return False


def test_idle_thread_fills_to_recent_demand_only_while_no_message_is_handled(
    keys: FlowerKeyFiles,
) -> None:
    pk = load_public_key(keys.public).public_key
    pre = IdlePrecompute(pk, max_size=50)
    try:
        with busy():
            pre.record(1, 30)
            time.sleep(0.3)
            assert len(pre.pool) == 0  # busy: the thread waits
        assert wait_for(lambda: len(pre.pool) == 30)  # idle: filled to the round's demand
        pre.record(2, 80)
        assert pre.target == 50  # capped by max_size
        assert wait_for(lambda: len(pre.pool) == 50)
        pre.record(3, 5)
        pre.record(4, 5)
        assert pre.target == 5  # the last two rounds' demand
        assert len(pre.pool.take(50)) == 50 and pre.pool.pooled == 50
    finally:
        pre.close()
    assert len(pre.pool) == 0


def test_mod_seals_with_precomputed_randomness(keys: FlowerKeyFiles) -> None:
    def secure_run(rounds: int) -> dict[str, np.ndarray]:
        strategy = SecureFedAvg(
            keys.public, max_weight=100.0, fraction_evaluate=0.0, min_train_nodes=NODES
        )
        grid = LocalGrid(make_client_app([SecureAggregationMod(key_dir=keys.root)]), NODES)
        res = strategy.start(
            grid=grid, initial_arrays=initial_arrays(), num_rounds=rounds, timeout=30
        )
        assert all(r.released for r in strategy.rounds_)
        return {n: res.arrays[n].numpy().astype(np.float64) for n in res.arrays}

    secure_run(1)  # the first round seals with fresh randomness and sets the demand
    pre = precompute_for(load_public_key(keys.public).public_key)
    assert pre.target >= NODES  # at least one ciphertext per node
    assert wait_for(lambda: len(pre.pool) >= pre.target)  # filled while idle
    before = pre.pool.pooled
    got = secure_run(2)
    assert pre.pool.pooled - before >= NODES  # round 1 of this run sealed from the pool
    want = plain_fedavg(NODES, 2)
    for n in want:
        assert np.max(np.abs(got[n] - want[n])) < 1e-4  # and the sums still decrypt right


def test_mod_without_pool_and_bad_settings(keys: FlowerKeyFiles) -> None:
    with pytest.raises(ValueError, match="randomness_pool"):
        SecureAggregationMod(randomness_pool=-1)
    with pytest.raises(ValueError, match="max_size"):
        precompute_for(load_public_key(keys.public).public_key, 0)
    grid = LocalGrid(
        make_client_app([SecureAggregationMod(key_dir=keys.root, randomness_pool=0)]), NODES
    )
    strategy = SecureFedAvg(keys.public, max_weight=100.0, fraction_evaluate=0.0)
    strategy.start(grid=grid, initial_arrays=initial_arrays(), num_rounds=1, timeout=30)
    assert strategy.rounds_[0].released
