"""SecureFedAvg with the client mod, driven through an in-process grid (no Ray)."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import numpy as np
import pytest
from conftest import NODES, THRESHOLD
from flower_apps import (
    SHAPES,
    LocalGrid,
    fail_on_decrypt,
    initial_arrays,
    make_client_app,
    node_id_of,
    plain_fedavg,
    weight_of,
)
from flwr.app import Array, ArrayRecord, ConfigRecord, Message, MessageType, RecordDict
from flwr.common.serde import message_to_proto
from flwr.serverapp.strategy import FedAvg

from fedcity.crypto import KeyFileError
from fedcity.flower import (
    FlowerKeyFiles,
    SecureAggregationMod,
    SecureFedAvg,
    average_error_bound,
    load_node_key,
    load_public_key,
)
from fedcity.flower.protocol import CONFIG_KEY, STAGE_DECRYPT


def run(grid: LocalGrid, strategy: FedAvg, rounds: int = 2) -> dict[str, np.ndarray]:
    result = strategy.start(
        grid=grid, initial_arrays=initial_arrays(), num_rounds=rounds, timeout=30
    )
    final = result.arrays if len(result.arrays) else initial_arrays()  # empty: nothing released
    return {n: final[n].numpy().astype(np.float64) for n in SHAPES}


def secure(keys: FlowerKeyFiles, **kw: object) -> SecureFedAvg:
    kw.setdefault("max_weight", 100.0)
    return SecureFedAvg(
        keys.public,
        fraction_evaluate=0.0,
        min_train_nodes=NODES,
        **kw,  # type: ignore[arg-type]
    )


def bound(strategy: SecureFedAvg) -> float:
    total_weight = sum(weight_of(p) for p in range(NODES)) / strategy.max_weight
    spec = strategy._spec(1, NODES)
    # float32 storage of "w" adds its own rounding of values of size <= 1
    return average_error_bound(spec, NODES, total_weight) + 2e-7


def test_secure_round_equals_plaintext_fedavg_within_quantization(keys: FlowerKeyFiles) -> None:
    strategy = secure(keys)
    mod = SecureAggregationMod(key_dir=keys.root)
    got = run(LocalGrid(make_client_app([mod]), NODES), strategy, rounds=2)
    want = plain_fedavg(NODES, 2)
    # two rounds: the first round's error carries into the second's starting point
    for n in SHAPES:
        assert np.max(np.abs(got[n] - want[n])) <= 2 * bound(strategy)
        assert not np.allclose(got[n], initial_arrays()[n].numpy(), atol=1e-3)
    assert [r.released for r in strategy.rounds_] == [True, True]
    assert all(len(r.decryptors) == THRESHOLD for r in strategy.rounds_)
    # Flower's own FedAvg on the same grid gives the same model within the bound
    plain = run(
        LocalGrid(make_client_app(), NODES), FedAvg(fraction_evaluate=0.0, min_train_nodes=NODES)
    )
    for n in SHAPES:
        assert np.max(np.abs(got[n] - plain[n])) <= 2 * bound(strategy) + 1e-6


def _float_windows(a: np.ndarray) -> list[bytes]:
    """Every run of 3 consecutive values in float32 and float64 encodings (LE and BE)."""
    flat = np.asarray(a, dtype=np.float64).ravel()
    out = []
    for i in range(len(flat) - 2):
        for dt in ("<f4", ">f4", "<f8", ">f8"):
            out.append(flat[i : i + 3].astype(dt).tobytes())
    return out


def test_server_receives_ciphertexts_only(keys: FlowerKeyFiles) -> None:
    def received(mods: list[object], strategy: FedAvg) -> bytes:
        grid = LocalGrid(make_client_app(mods), NODES)
        run(grid, strategy, rounds=1)
        return b"".join(message_to_proto(m).SerializeToString() for m in grid.received)

    rec = initial_arrays()
    secrets = []
    for p in range(NODES):
        loc = local_step_arrays(rec, p)
        for n in SHAPES:
            secrets += _float_windows(loc[n])
            secrets += _float_windows(loc[n] - rec[n].numpy().astype(np.float64))
    plain = received([], FedAvg(fraction_evaluate=0.0, min_train_nodes=NODES))
    assert any(s in plain for s in secrets)  # the check finds a plaintext update
    blob = received([SecureAggregationMod(key_dir=keys.root)], secure(keys))
    assert not any(s in blob for s in secrets)
    # nor the sample counts or the app's train metrics
    assert b"num-examples" not in blob and b"train-loss" not in blob


def local_step_arrays(rec: object, pid: int) -> dict[str, np.ndarray]:
    from flower_apps import local_step

    loc = local_step(rec, pid, 1)  # type: ignore[arg-type]
    return {n: loc[n].numpy().astype(np.float64) for n in SHAPES}


@pytest.mark.parametrize("how", ["error", "silent"])
def test_decryptor_dropping_after_training_is_replaced(keys: FlowerKeyFiles, how: str) -> None:
    strategy = secure(keys, decrypt_timeout=1.0)
    mods: list[object] = [SecureAggregationMod(key_dir=keys.root)]
    if how == "error":
        mods.insert(0, fail_on_decrypt({0}))
    grid = LocalGrid(make_client_app(mods), NODES)
    if how == "silent":
        grid.silent_on_decrypt.add(node_id_of(0))
    got = run(grid, strategy, rounds=1)
    want = plain_fedavg(NODES, 1)
    for n in SHAPES:
        assert np.max(np.abs(got[n] - want[n])) <= bound(strategy)
    rec = strategy.rounds_[0]
    assert rec.released and rec.waves == 2
    assert node_id_of(0) in rec.failed_decryptors  # share 1 was asked first, then replaced
    assert node_id_of(0) in rec.contributors  # it did train
    assert sorted(rec.decryptors) == [node_id_of(1), node_id_of(2)]


def test_round_fails_cleanly_below_threshold(keys: FlowerKeyFiles) -> None:
    strategy = secure(keys, decrypt_timeout=1.0)
    app = make_client_app([fail_on_decrypt({0, 1}), SecureAggregationMod(key_dir=keys.root)])
    got = run(LocalGrid(app, NODES), strategy, rounds=1)
    for n in SHAPES:  # no release: the model stays the initial one
        np.testing.assert_array_equal(got[n], initial_arrays()[n].numpy())
    assert not strategy.rounds_[0].released
    assert len(strategy.rounds_[0].failed_decryptors) == 2


def test_spare_decryptor_avoids_a_second_wave(keys: FlowerKeyFiles) -> None:
    strategy = secure(keys, spare_decryptors=1)
    app = make_client_app([fail_on_decrypt({0}), SecureAggregationMod(key_dir=keys.root)])
    run(LocalGrid(app, NODES), strategy, rounds=1)
    assert strategy.rounds_[0].released and strategy.rounds_[0].waves == 1


def test_committee_outside_the_training_sample_is_discovered(keys: FlowerKeyFiles) -> None:
    class TrainOnTwo(SecureFedAvg):
        """Samples node-2 (a share holder) and node-3 (none) for training only."""

        def configure_train(self, *args: Any) -> Iterable[Message]:
            msgs = super().configure_train(*args)
            return [m for m in msgs if m.metadata.dst_node_id in trainers]

    trainers = {node_id_of(2), node_id_of(3)}
    strategy = TrainOnTwo(
        keys.public, fraction_evaluate=0.0, min_train_nodes=NODES, max_weight=100.0
    )
    grid = LocalGrid(make_client_app([SecureAggregationMod(key_dir=keys.root)]), NODES)
    run(grid, strategy, rounds=1)
    rec = strategy.rounds_[0]
    assert rec.released and set(rec.contributors) == trainers
    # one holder known (node-2) is fewer than t: discovery finds node-0/node-1 before the
    # first wave, and the live contributor node-2 is asked first
    assert set(strategy.holders_) == {node_id_of(0), node_id_of(1), node_id_of(2)}
    assert node_id_of(2) in rec.decryptors and rec.waves == 1


def _train_request(keys: FlowerKeyFiles, strategy: SecureFedAvg) -> tuple[LocalGrid, Message]:
    app = make_client_app([SecureAggregationMod(key_dir=keys.root)])
    grid = LocalGrid(app, NODES)
    [msg, *_] = list(strategy.configure_train(1, initial_arrays(), ConfigRecord(), grid))
    return grid, msg


def test_mod_refuses_a_train_request_without_fedcity_settings(keys: FlowerKeyFiles) -> None:
    grid, msg = _train_request(keys, secure(keys))
    del msg.content[CONFIG_KEY]
    [reply] = grid.send_and_receive([msg])
    assert reply.has_error() and "only encrypted updates" in reply.error.reason


def test_mod_refuses_another_key(keys: FlowerKeyFiles, tmp_path: object) -> None:
    from fedcity.flower import deal_flower_keys

    other = deal_flower_keys(tmp_path, 2, threshold=1, key_bits=512)  # type: ignore[arg-type]
    grid, msg = _train_request(keys, secure(other))  # server under another key
    [reply] = grid.send_and_receive([msg])
    assert reply.has_error() and "this node holds" in reply.error.reason


def test_decryptor_policy_single_contribution_and_one_aggregate_per_round(
    keys: FlowerKeyFiles,
) -> None:
    strategy = secure(keys, min_contributions=1)
    app = make_client_app([SecureAggregationMod(key_dir=keys.root)])
    grid = LocalGrid(app, NODES)
    msgs = list(strategy.configure_train(1, initial_arrays(), ConfigRecord(), grid))
    replies = list(grid.send_and_receive(msgs))
    scheme = strategy._scheme
    spec = strategy._round_spec
    assert spec is not None
    length = sum(int(np.prod(s)) for s, _ in SHAPES.values()) + 1
    from fedcity.flower.protocol import PAYLOAD_KEY, array_to_bytes, bytes_to_array

    vecs = [
        scheme.open(array_to_bytes(r.content[PAYLOAD_KEY]), spec.packing, length) for r in replies
    ]

    def ask(vector: object) -> Message:
        content = RecordDict(
            {
                PAYLOAD_KEY: bytes_to_array(scheme.aggregate_to_bytes(vector)),
                CONFIG_KEY: spec.to_config(STAGE_DECRYPT, length=length),
            }
        )
        req = Message(content, dst_node_id=node_id_of(0), message_type=MessageType.TRAIN)
        [reply] = grid.send_and_receive([req])
        return reply

    single = ask(vecs[0])  # one node's update alone: refused by the node's policy
    assert single.has_error() and "at least 2" in single.error.reason
    assert not ask(scheme.add(vecs)).has_error()
    again = ask(scheme.add(vecs[:2]))  # a second, different subset in the same round
    assert again.has_error() and "one aggregate per round" in again.error.reason


def test_non_member_cannot_decrypt(keys: FlowerKeyFiles) -> None:
    assert load_node_key(keys.nodes["node-3"]).__class__.__name__ == "ThresholdPublicKey"
    assert set(keys.committee) == {"node-0", "node-1", "node-2"}


def test_server_refuses_a_share_file(keys: FlowerKeyFiles) -> None:
    with pytest.raises(KeyFileError, match="public key only"):
        load_public_key(keys.nodes["node-0"])
    with pytest.raises(KeyFileError, match="public key only"):
        SecureFedAvg(keys.nodes["node-1"])


def test_dealer_validates_and_never_overwrites(keys: FlowerKeyFiles, tmp_path: object) -> None:
    from fedcity.flower import deal_flower_keys

    with pytest.raises(ValueError, match="overwrite"):
        deal_flower_keys(keys.root, 4, threshold=2, committee=3, key_bits=512)
    with pytest.raises(ValueError, match="threshold must lie in"):
        deal_flower_keys(tmp_path, 5, threshold=3, committee=2, key_bits=512)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="not in the federation"):
        deal_flower_keys(tmp_path, ["a", "b"], threshold=1, committee=["c"], key_bits=512)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="distinct"):
        deal_flower_keys(tmp_path, ["a", "a"], threshold=1, key_bits=512)  # type: ignore[arg-type]


def test_strategy_validates_its_settings(keys: FlowerKeyFiles) -> None:
    with pytest.raises(ValueError, match="clip"):
        SecureFedAvg(keys.public, clip=0.0)
    with pytest.raises(ValueError, match="max_weight"):
        SecureFedAvg(keys.public, max_weight=-1.0)
    with pytest.raises(ValueError, match="spare_decryptors"):
        SecureFedAvg(keys.public, spare_decryptors=-1)
    with pytest.raises(ValueError, match="min_summands"):
        SecureAggregationMod(min_summands=0)


# -- the decryption spread over the committee -------------------------------------------------
def big_arrays() -> ArrayRecord:
    """240 values: 11 ciphertexts under the tests' 512-bit key (23 slots of 22 bits)."""
    return ArrayRecord({"w": Array(np.linspace(-0.2, 0.2, 240).reshape(12, 20))})


def run_big(grid: LocalGrid, strategy: FedAvg) -> np.ndarray:
    result = strategy.start(grid=grid, initial_arrays=big_arrays(), num_rounds=1, timeout=30)
    return np.asarray(result.arrays["w"].numpy(), dtype=np.float64)


def decrypt_requests(grid: LocalGrid) -> dict[int, list[tuple[int, int]]]:
    from fedcity.flower.protocol import parse_parts

    out: dict[int, list[tuple[int, int]]] = {}
    for m in grid.sent:
        cfg = m.content.config_records.get(CONFIG_KEY)
        if cfg is not None and cfg.get("stage") == STAGE_DECRYPT:
            out.setdefault(m.metadata.dst_node_id, []).extend(parse_parts(cfg.get("parts"), 11))
    return out


@pytest.mark.parametrize("dropout", [False, True])
def test_committee_members_decrypt_disjoint_shares_of_the_aggregate(
    keys: FlowerKeyFiles, dropout: bool
) -> None:
    strategy = secure(keys)
    mods: list[object] = [SecureAggregationMod(key_dir=keys.root)]
    if dropout:
        mods.insert(0, fail_on_decrypt({0}))
    grid = LocalGrid(make_client_app(mods), NODES)
    got = run_big(grid, strategy)
    plain = run_big(
        LocalGrid(make_client_app(), NODES), FedAvg(fraction_evaluate=0.0, min_train_nodes=NODES)
    )
    spec = strategy._spec(1, NODES)
    total_weight = sum(weight_of(p) for p in range(NODES)) / strategy.max_weight
    assert spec.packing.n_ciphertexts(241) == 11
    assert np.max(np.abs(got - plain)) <= average_error_bound(spec, NODES, total_weight) + 1e-9
    rec = strategy.rounds_[0]
    assert rec.released
    asked = decrypt_requests(grid)
    committee = [node_id_of(p) for p in range(3)]
    assert set(asked) == set(committee)  # all three holders share the work (t = 2)
    if not dropout:
        assert rec.waves == 1 and sorted(rec.decryptors) == committee
        # each ciphertext is decrypted by exactly t = 2 members; each member does 2/3 of them
        counts = [sum(b - a for a, b in asked[n]) for n in committee]
        assert sum(counts) == 2 * 11 and max(counts) - min(counts) <= 2
        cover = [sum(a <= c < b for n in committee for a, b in asked[n]) for c in range(11)]
        assert cover == [2] * 11
    else:
        # node-0's blocks went to the other two in a second wave
        assert rec.waves == 2 and list(rec.failed_decryptors) == [node_id_of(0)]
        assert sorted(rec.decryptors) == committee[1:]
        for n in committee[1:]:
            assert sum(b - a for a, b in asked[n]) == 11  # only two left: both do all


def test_a_wrong_partial_decryption_is_named_and_replaced(keys: FlowerKeyFiles) -> None:
    """A member whose partials do not match its proof is refused; another decrypts instead."""
    from fedcity.crypto import serde
    from fedcity.flower.protocol import PAYLOAD_KEY, array_to_bytes, bytes_to_array

    def corrupt(msg: Message, ctx: Any, call_next: Any) -> Message:
        reply = call_next(msg, ctx)
        cfg = msg.content.config_records.get(CONFIG_KEY)
        if cfg is None or cfg.get("stage") != STAGE_DECRYPT or ctx.node_config["partition-id"]:
            return reply
        pk = load_public_key(keys.public).public_key
        pd = serde.partial_decryption_from_bytes(array_to_bytes(reply.content[PAYLOAD_KEY]), pk)
        bad = (pd.partials[0] * pd.partials[0] % pk.nsquare, *pd.partials[1:])
        forged = type(pd)(
            pd.key_id, pd.share_index, pd.vector_digest, bad, pd.challenge, pd.response
        )
        reply.content[PAYLOAD_KEY] = bytes_to_array(serde.partial_decryption_to_bytes(forged, pk))
        return reply

    strategy = secure(keys)
    grid = LocalGrid(make_client_app([corrupt, SecureAggregationMod(key_dir=keys.root)]), NODES)
    got = run_big(grid, strategy)
    rec = strategy.rounds_[0]
    assert rec.released and rec.waves == 2
    assert "failed its proof" in rec.failed_decryptors[node_id_of(0)]
    assert node_id_of(0) not in rec.decryptors
    plain = run_big(
        LocalGrid(make_client_app(), NODES), FedAvg(fraction_evaluate=0.0, min_train_nodes=NODES)
    )
    assert np.max(np.abs(got - plain)) <= 1e-4


def test_train_metrics_are_released_as_a_sample_weighted_average_only(
    keys: FlowerKeyFiles,
) -> None:
    strategy = secure(keys, train_metrics=["train-loss"], metric_bound=10.0)
    grid = LocalGrid(make_client_app([SecureAggregationMod(key_dir=keys.root)]), NODES)
    result = strategy.start(grid=grid, initial_arrays=initial_arrays(), num_rounds=1, timeout=30)
    weights = [weight_of(p) for p in range(NODES)]
    want = sum(w * 0.1 * p for p, w in enumerate(weights)) / sum(weights)  # flower_apps' loss
    got = result.train_metrics_clientapp[1]
    # rounding: metric_bound/clip times a model value's error bound
    tol = 10.0 * bound(strategy)
    assert abs(got["train-loss"] - want) <= tol and got["fedcity-contributions"] == NODES
    replies = b"".join(message_to_proto(m).SerializeToString() for m in grid.received)
    assert b"train-loss" not in replies  # no node's metric, not even its name, goes up


def test_a_node_without_a_requested_metric_contributes_nothing(keys: FlowerKeyFiles) -> None:
    strategy = secure(keys, train_metrics=["accuracy"], min_contributions=1)
    grid = LocalGrid(make_client_app([SecureAggregationMod(key_dir=keys.root)]), NODES)
    strategy.start(grid=grid, initial_arrays=initial_arrays(), num_rounds=1, timeout=30)
    rec = strategy.rounds_[0]
    assert not rec.released and len(rec.rejected) == NODES
    assert all("train metric 'accuracy'" in r for r in rec.rejected.values())


def test_holders_that_did_not_train_this_round_are_only_replacements(
    keys: FlowerKeyFiles,
) -> None:
    class SkipNode2InRound2(SecureFedAvg):
        def configure_train(self, server_round: int, *args: Any) -> Iterable[Message]:
            msgs = super().configure_train(server_round, *args)
            if server_round == 1:
                return msgs
            return [m for m in msgs if m.metadata.dst_node_id != node_id_of(2)]

    strategy = SkipNode2InRound2(
        keys.public, fraction_evaluate=0.0, min_train_nodes=NODES, max_weight=100.0
    )
    grid = LocalGrid(make_client_app([SecureAggregationMod(key_dir=keys.root)]), NODES)
    run_big(grid, strategy)  # round 1: all three holders share the decryption
    assert len(strategy.rounds_[0].decryptors) == 3
    grid.sent.clear()
    strategy.start(grid=grid, initial_arrays=big_arrays(), num_rounds=2, timeout=30)
    last = strategy.rounds_[-1]
    assert last.released and node_id_of(2) not in last.contributors
    asked = decrypt_requests(grid)
    # round 2 of this run: node-2 is a known holder but did not train; node-0/1 decrypt all
    round2 = [
        m.metadata.dst_node_id
        for m in grid.sent
        if (cfg := m.content.config_records.get(CONFIG_KEY)) is not None
        and cfg.get("stage") == STAGE_DECRYPT
        and cfg.get("server-round") == 2
    ]
    assert sorted(round2) == [node_id_of(0), node_id_of(1)] and node_id_of(2) in asked
    assert sorted(last.decryptors) == [node_id_of(0), node_id_of(1)]
