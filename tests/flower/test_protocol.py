"""The sans-IO record layout and update encoding of fedcity.flower."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from flwr.app import Array, ArrayRecord, ConfigRecord
from hypothesis import given, settings
from hypothesis import strategies as st

from fedcity.crypto import KeyFileError
from fedcity.flower import FlowerKeyFiles, RoundSpec, load_node_key
from fedcity.flower.__main__ import main as cli
from fedcity.flower.keys import shared_public_key
from fedcity.flower.protocol import (
    STAGE_TRAIN,
    apply_average,
    array_to_bytes,
    bytes_to_array,
    encode_update,
)

SPEC = RoundSpec(b"k" * 16, 1.0, 20, 10, 50.0, 512, 1)


def record(**arrays: np.ndarray) -> ArrayRecord:
    return ArrayRecord({k: Array(v) for k, v in arrays.items()})


@settings(max_examples=40, deadline=None)
@given(
    st.lists(st.integers(min_value=0, max_value=80), min_size=1, max_size=6),
    st.integers(min_value=0, max_value=2**31),
)
def test_encoded_updates_sum_to_the_sample_weighted_average(weights: list[int], seed: int) -> None:
    if sum(min(w, SPEC.max_weight) for w in weights) == 0:
        weights = [*weights[:-1], 1]
    rng = np.random.default_rng(seed)
    g = record(a=rng.normal(size=(3, 2)).astype(np.float32), b=rng.normal(size=4))
    locals_ = [
        record(
            a=(g["a"].numpy() + rng.uniform(-1, 1, (3, 2))).astype(np.float32),
            b=g["b"].numpy() + rng.uniform(-1, 1, 4),
        )
        for _ in weights
    ]
    total = sum(encode_update(g, loc, w, SPEC) for loc, w in zip(locals_, weights, strict=True))
    new = apply_average(g, np.asarray(total), SPEC)
    capped = [min(w, SPEC.max_weight) for w in weights]
    for name in ("a", "b"):
        want = (
            sum(
                c * (loc[name].numpy().astype(np.float64) - g[name].numpy().astype(np.float64))
                for c, loc in zip(capped, locals_, strict=True)
            )
            / sum(capped)
            + g[name].numpy()
        )
        assert new[name].numpy().dtype == g[name].numpy().dtype
        np.testing.assert_allclose(new[name].numpy(), want, rtol=1e-5, atol=1e-5)


def test_encode_update_validates_its_inputs() -> None:
    g = record(a=np.zeros(3))
    with pytest.raises(ValueError, match="differ from the global"):
        encode_update(g, record(b=np.zeros(3)), 1.0, SPEC)
    with pytest.raises(ValueError, match="trained shape"):
        encode_update(g, record(a=np.zeros(4)), 1.0, SPEC)
    with pytest.raises(ValueError, match="NaN or infinite"):
        encode_update(g, record(a=np.array([0.0, np.nan, 0.0])), 1.0, SPEC)
    with pytest.raises(ValueError, match="sample weight"):
        encode_update(g, record(a=np.zeros(3)), -1.0, SPEC)
    with pytest.raises(ValueError, match="only float models"):
        encode_update(record(a=np.zeros(3, dtype=np.int64)), record(a=np.zeros(3)), 1.0, SPEC)
    with pytest.raises(ValueError, match="total weight is zero"):
        apply_average(g, np.zeros(4), SPEC)


def test_round_spec_round_trips_and_names_a_bad_field() -> None:
    cfg = SPEC.to_config(STAGE_TRAIN)
    assert RoundSpec.from_config(cfg) == SPEC
    del cfg["max-weight"]
    with pytest.raises(ValueError, match="'max-weight'"):
        RoundSpec.from_config(cfg)
    bad = SPEC.to_config(STAGE_TRAIN)
    bad["precision-bits"] = "20"
    with pytest.raises(ValueError, match="'precision-bits' has the wrong type"):
        RoundSpec.from_config(bad)
    with pytest.raises(ValueError, match="stage"):
        SPEC.to_config("unmask")
    with pytest.raises(ValueError, match="key_id"):
        RoundSpec(b"short", 1.0, 20, 10, 50.0, 512, 1)


def test_payload_records_carry_bytes_only() -> None:
    blob = bytes(range(256)) * 3
    assert array_to_bytes(bytes_to_array(blob)) == blob
    with pytest.raises(ValueError, match="uint8"):
        array_to_bytes(ArrayRecord({"bytes": Array(np.zeros(4))}))
    with pytest.raises(ValueError, match="one array"):
        array_to_bytes(ArrayRecord({"x": Array(np.zeros(4, dtype=np.uint8))}))
    assert isinstance(ConfigRecord({"x": blob})["x"], bytes)


def test_node_keys_share_one_public_key_object(keys: FlowerKeyFiles) -> None:
    a, b = load_node_key(keys.nodes["node-3"]), load_node_key(keys.nodes["node-0"])
    assert shared_public_key(a) is shared_public_key(b)  # one encryption table per process


def test_key_file_errors_are_named(tmp_path: Path) -> None:
    with pytest.raises(KeyFileError, match="cannot read"):
        load_node_key(tmp_path / "missing.json")
    (tmp_path / "other.json").write_text('{"format": "something-else"}')
    with pytest.raises(KeyFileError, match="neither a key share"):
        load_node_key(tmp_path / "other.json")


def test_deal_command(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    args = [
        "deal",
        str(tmp_path / "k"),
        "--nodes",
        "3",
        "--committee",
        "2",
        "--threshold",
        "2",
        "--key-bits",
        "512",
    ]
    assert cli(args) == 0
    lines = capsys.readouterr().out.splitlines()
    assert [ln.split()[0] for ln in lines] == ["public", "node-0", "node-1", "node-2"]
    assert [ln.split()[2] for ln in lines] == ["0", "1", "2", "0"]
    assert cli(args) == 2  # never overwrites
    assert "refusing to overwrite" in capsys.readouterr().err


# -- the decryption plan ---------------------------------------------------------------------
@settings(max_examples=200, deadline=None)
@given(
    st.integers(min_value=1, max_value=8),
    st.integers(min_value=0, max_value=8),
    st.integers(min_value=0, max_value=3),
    st.integers(min_value=1, max_value=300),
)
def test_plan_gives_every_block_c_distinct_members_and_spreads_the_work(
    t: int, more: int, spare: int, n_ct: int
) -> None:
    from fedcity.flower.protocol import merge_ranges, plan_decryption

    members = [100 + 7 * i for i in range(t + more)]
    blocks, assignment = plan_decryption(members, n_ct, t, t + spare)
    k, c = len(members), min(t + spare, len(members))
    # the blocks partition the ciphertexts in order
    assert blocks[0][0] == 0 and blocks[-1][1] == n_ct
    assert all(a < b for a, b in blocks) and all(
        blocks[i][1] == blocks[i + 1][0] for i in range(len(blocks) - 1)
    )
    holders = {b: [m for m, bs in assignment.items() if b in bs] for b in range(len(blocks))}
    assert all(len(h) == c for h in holders.values())  # c distinct decryptors per block
    assert set(assignment) <= set(members)
    if c < k and n_ct >= k:  # k blocks: every member decrypts exactly c of them
        assert len(blocks) == k and all(len(bs) == c for bs in assignment.values())
        sizes = [sum(b - a for a, b in merge_ranges(blocks, bs)) for bs in assignment.values()]
        assert max(sizes) - min(sizes) <= c  # near-equal shares of the work
    if c == k:
        assert blocks == [(0, n_ct)]


def test_plan_refuses_too_few_or_repeated_members() -> None:
    from fedcity.flower.protocol import plan_decryption

    with pytest.raises(ValueError, match="cannot decrypt with threshold 3"):
        plan_decryption([1, 2], 10, 3)
    with pytest.raises(ValueError, match="distinct"):
        plan_decryption([1, 1, 2], 10, 2)
    with pytest.raises(ValueError, match="copies"):
        plan_decryption([1, 2, 3], 10, 2, 1)


def test_parts_round_trip_and_validation() -> None:
    from fedcity.flower.protocol import flat_parts, merge_ranges, parse_parts

    blocks = [(0, 3), (3, 6), (6, 9), (9, 10)]
    ranges = merge_ranges(blocks, [3, 0, 1])
    assert ranges == [(0, 6), (9, 10)]
    assert parse_parts(flat_parts(ranges), 10) == ranges
    assert parse_parts(None, 10) == [(0, 10)]
    for bad in ([0, 6, 5, 7], [0, 11], [3, 3], [0], [], "0,6", [0, True], [4, 6, 0, 2]):
        with pytest.raises(ValueError, match="part"):
            parse_parts(bad, 10)


def test_aggregate_view_is_the_ranges_ciphertexts(keys: FlowerKeyFiles) -> None:
    from fedcity.crypto import PackingSpec, encrypt_vector
    from fedcity.flower.protocol import aggregate_view

    pk = shared_public_key(load_node_key(keys.public)).public_key
    spec = PackingSpec(clip=1.0, precision_bits=12, max_summands=4, n_length=pk.n_length)
    vec = encrypt_vector(pk, np.linspace(-1, 1, 5 * spec.slots_per_ciphertext), spec)
    assert aggregate_view(vec, [(0, 5)]) is vec
    view = aggregate_view(vec, [(0, 2), (4, 5)])
    assert view.ciphertexts == [vec.ciphertexts[i] for i in (0, 1, 4)]
    assert view.length == 3 * spec.slots_per_ciphertext and view.summands == vec.summands
    assert view.digest() == aggregate_view(vec, [(0, 2), (4, 5)]).digest() != vec.digest()


# -- train metrics inside the encrypted vector ------------------------------------------------
METRIC_SPEC = RoundSpec(b"k" * 16, 1.0, 20, 10, 50.0, 512, 1, ("loss", "acc"), 10.0)


@settings(max_examples=40, deadline=None)
@given(
    st.lists(
        st.tuples(
            st.integers(min_value=1, max_value=80),
            st.floats(min_value=-20, max_value=20),
            st.floats(min_value=0, max_value=1),
        ),
        min_size=1,
        max_size=6,
    )
)
def test_metrics_decode_to_their_sample_weighted_average(
    nodes: list[tuple[int, float, float]],
) -> None:
    from fedcity.flower.protocol import split_average

    g = record(a=np.zeros(3))
    total = sum(
        encode_update(g, record(a=np.full(3, 0.1)), w, METRIC_SPEC, [loss, acc])
        for w, loss, acc in nodes
    )
    new, metrics = split_average(g, np.asarray(total), METRIC_SPEC)
    capped = [min(w, METRIC_SPEC.max_weight) for w, _, _ in nodes]
    want_loss = sum(c * np.clip(x, -10, 10) for c, (_, x, _) in zip(capped, nodes, strict=True))
    want_acc = sum(c * y for c, (_, _, y) in zip(capped, nodes, strict=True))
    assert metrics["loss"] == pytest.approx(want_loss / sum(capped), abs=1e-9)
    assert metrics["acc"] == pytest.approx(want_acc / sum(capped), abs=1e-9)
    np.testing.assert_allclose(new["a"].numpy(), 0.1)


def test_metric_settings_travel_and_are_validated() -> None:
    cfg = METRIC_SPEC.to_config(STAGE_TRAIN)
    assert RoundSpec.from_config(cfg) == METRIC_SPEC
    assert RoundSpec.from_config(SPEC.to_config(STAGE_TRAIN)).metrics == ()
    for metrics, bound in ((("a", "a"), 1.0), (("",), 1.0), (("a",), 0.0), (("a",), np.inf)):
        with pytest.raises(ValueError, match="metric"):
            RoundSpec(b"k" * 16, 1.0, 20, 10, 50.0, 512, 1, metrics, bound)
    g = record(a=np.zeros(3))
    with pytest.raises(ValueError, match="metric value"):
        encode_update(g, g, 1.0, METRIC_SPEC, [1.0])
    with pytest.raises(ValueError, match="NaN"):
        encode_update(g, g, 1.0, METRIC_SPEC, [1.0, float("nan")])


@settings(max_examples=300, deadline=None)
@given(
    st.floats(min_value=1e-3, max_value=1e3),
    st.floats(min_value=1e-15, max_value=0.999),
)
def test_precision_policy_is_fedavgs(clip: float, ratio: float) -> None:
    from fedcity.core import precision as learn
    from fedcity.flower.protocol import SECAGG_PLUS_ACCURACY, precision_for

    assert SECAGG_PLUS_ACCURACY == learn.SECAGG_PLUS_ACCURACY
    accuracy = clip * ratio
    try:
        want = learn.precision_for(clip, learn.check_accuracy(accuracy, clip))
    except ValueError:
        with pytest.raises(ValueError):
            precision_for(clip, accuracy)
        return
    assert precision_for(clip, accuracy) == want
    assert precision_for(1.0, SECAGG_PLUS_ACCURACY) == 20
