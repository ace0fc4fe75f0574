"""fedcity's Flower components in Flower's simulation engine (Ray), with real processes.

One run_simulation per test (about 10 s each on 2 cores): a secure run equal to plaintext
FedAvg within the quantization bound, with one committee member dropping out between
training and decryption in every round.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from typing import Any

import numpy as np
import pytest
from conftest import NODES
from flower_apps import (
    SHAPES,
    fail_on_decrypt,
    initial_arrays,
    local_step,
    make_client_app,
    plain_fedavg,
    weight_of,
)
from flwr.app import ArrayRecord, Context, Message
from flwr.common.serde import message_to_proto
from flwr.serverapp import Grid, ServerApp

from fedcity.flower import FlowerKeyFiles, SecureAggregationMod, SecureFedAvg, average_error_bound

pytest.importorskip("ray", reason="Flower's simulation engine needs flwr[simulation] (Ray)")

ROUNDS = 2


def simulate(client_mods: list[Any], strategy_factory: Any) -> tuple[Any, dict[str, Any]]:
    from flwr.simulation import run_simulation

    out: dict[str, Any] = {}
    server = ServerApp()

    @server.main()
    def main(grid: Grid, context: Context) -> None:
        strategy = strategy_factory()
        out["strategy"] = strategy
        out["result"] = strategy.start(
            grid=grid, initial_arrays=initial_arrays(), num_rounds=ROUNDS, timeout=120
        )

    run_simulation(
        server_app=server,
        client_app=make_client_app(client_mods),
        num_supernodes=NODES,
        backend_config={"client_resources": {"num_cpus": 1}, "init_args": {"num_cpus": 2}},
    )
    logging.getLogger("flwr").handlers.clear()
    return out["strategy"], out


def test_simulation_secure_fedavg_with_a_dropout_equals_plaintext_fedavg(
    keys: FlowerKeyFiles,
) -> None:
    class Recording(SecureFedAvg):
        """Keeps the serialized train replies the ServerApp receives."""

        def aggregate_train(self, server_round: int, replies: Iterable[Message]) -> Any:
            replies = list(replies)
            received.extend(message_to_proto(m).SerializeToString() for m in replies)
            return super().aggregate_train(server_round, replies)

    received: list[bytes] = []

    def factory() -> SecureFedAvg:
        return Recording(
            keys.public,
            max_weight=100.0,
            fraction_evaluate=0.0,
            min_train_nodes=NODES,
            decrypt_timeout=60.0,
        )

    mods = [fail_on_decrypt({0}), SecureAggregationMod(key_dir=keys.root)]
    strategy, out = simulate(mods, factory)
    arrays: ArrayRecord = out["result"].arrays
    got = {n: arrays[n].numpy().astype(np.float64) for n in SHAPES}
    want = plain_fedavg(NODES, ROUNDS)
    spec = strategy._spec(1, NODES)
    bound = average_error_bound(spec, NODES, sum(weight_of(p) for p in range(NODES)) / 100.0)
    for n in SHAPES:
        assert np.max(np.abs(got[n] - want[n])) <= ROUNDS * bound + 1e-6
    assert [r.released for r in strategy.rounds_] == [True] * ROUNDS
    for rec in strategy.rounds_:
        assert len(rec.contributors) == NODES
        assert len(rec.failed_decryptors) == 1  # node-0 (share 1) dropped; another replaced it
        assert len(rec.decryptors) == 2
        assert "dropped out" in next(iter(rec.failed_decryptors.values()))
    # what reached the ServerApp: ciphertexts, no float encoding of any node's update
    blob = b"".join(received)
    assert len(received) == NODES * ROUNDS
    model = initial_arrays()
    for p in range(NODES):
        local = local_step(model, p, 1)
        for n in SHAPES:
            delta = local[n].numpy().astype(np.float64) - model[n].numpy().astype(np.float64)
            for values in (local[n].numpy(), delta):
                for dt in ("<f4", "<f8"):
                    assert values.ravel()[:3].astype(dt).tobytes() not in blob
