"""FedAvg's precision policy: the fewest bits for the requested accuracy, and the same loss.

The loss tests train the same FedAvg job twice with real threshold encryption (512-bit keys),
once at the default accuracy (half SecAgg+'s step) and once at the former fixed 40 bits, and
require the final loss to agree within ``LOSS_RTOL`` (relative): the two runs differ only by
the rounding of the packed weighted parameters (at most ``2^-19`` per value and agency at the
default). Measured relative differences of the pooled log loss after 3 rounds: 1.7e-5
(1,021 parameters), 2.0e-6 (9,997) and 6.2e-6 (Chicago, 27 districts).
"""

from __future__ import annotations

import math
import sys
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from sklearn.metrics import log_loss
from sklearn.neural_network import MLPClassifier

from fedcity.core.precision import (
    SECAGG_PLUS_ACCURACY,
    ExactIntegers,
    check_accuracy,
    precision_for,
    slot_efficiency,
    theoretical_slots,
)
from fedcity.core.tasks import TaskRequest
from fedcity.crypto import PackingSpec, deal_threshold_key
from fedcity.data import DataUnavailable, real
from fedcity.data.dataset import AgencyDataset, FeatureSpec
from fedcity.learn import LocalFederation
from fedcity.learn.design import Preprocessing, design_matrix
from fedcity.learn.fedavg import FedAvgJob, FederatedAveraging
from fedcity.learn.jobs import job_from_spec

BENCHMARKS = Path(__file__).resolve().parents[2] / "benchmarks"
LOSS_RTOL = 1e-4
"""Largest relative difference of the final loss between the default accuracy and 40 bits."""


def _pre(n_features: int = 3) -> Preprocessing:
    names = tuple(f"x{i}" for i in range(n_features))
    return Preprocessing(
        numeric=names,
        mean=(0.0,) * n_features,
        scale=(1.0,) * n_features,
        categorical=(),
        total_weight=100.0,
        n_samples=100,
    )


# -- the policy ------------------------------------------------------------------------------------
def test_secagg_plus_equivalence():
    # Flower 1.41's SecAggPlusWorkflow: clipping_range 8.0, quantization_range 2**22
    flwr = pytest.importorskip("flwr.server.workflow")
    workflow = flwr.SecAggPlusWorkflow(num_shares=3, reconstruction_threshold=2)
    step = 2 * workflow.clipping_range / workflow.quantization_range
    assert SECAGG_PLUS_ACCURACY == step / 2 == 2.0**-19
    # at SecAgg+'s clip: its integers in [0, 2^22] need 23 bits, and so do ours
    assert precision_for(workflow.clipping_range, SECAGG_PLUS_ACCURACY) == 23
    assert precision_for(64.0, SECAGG_PLUS_ACCURACY) == 26


@given(
    clip=st.floats(1e-3, 1e6),
    accuracy=st.floats(1e-12, 1e-1),
)
def test_precision_is_the_fewest_bits_meeting_the_accuracy(clip, accuracy):
    bits = precision_for(clip, accuracy)
    assert 8 <= bits <= 52
    if bits < 52:
        assert clip / ((1 << bits) - 1) <= accuracy  # half a step honours the accuracy
    if bits > 8:
        assert clip / ((1 << (bits - 1)) - 1) > accuracy  # one bit fewer would not


@pytest.mark.parametrize(
    ("accuracy", "clip", "message"),
    [
        (0.0, 64.0, "accuracy must be positive"),
        (-1e-6, 64.0, "accuracy must be positive"),
        (float("nan"), 64.0, "accuracy must be a positive finite number"),
        ("1e-6", 64.0, "accuracy must be a positive finite number"),
        (True, 64.0, "accuracy must be a positive finite number"),
        (64.0, 64.0, "must be below the clip"),
        (1e-15, 64.0, "needs 56 bits; packings hold at most 52"),
        (1e-6, 0.0, "clip must be positive"),
    ],
)
def test_accuracy_is_validated(accuracy, clip, message):
    with pytest.raises(ValueError, match=message):
        check_accuracy(accuracy, clip)


def test_fedavg_precision_follows_clip_and_accuracy():
    pre = _pre()
    algo = FederatedAveraging(SGDClassifierish(), pre, rounds=1, classes=[0, 1])
    request = algo.next_request()
    assert request is not None and request.precision_bits == 26  # clip 64, 2^-19
    # the driver widens the clip ×256 after an overflow: 8 more bits keep the accuracy
    assert algo.precision_bits_for(request, 64.0 * 256) == 34
    assert algo.precision_bits_for(request, 2.0**40) == 52  # capped at the packing's finest
    coarse = FederatedAveraging(
        SGDClassifierish(), pre, rounds=1, classes=[0, 1], clip=8.0, accuracy=1e-3
    )
    req = coarse.next_request()
    assert req is not None and req.precision_bits == 13  # 8 / (2^13 - 1) <= 1e-3 < 8 / 4095
    fixed = FederatedAveraging(SGDClassifierish(), pre, rounds=1, classes=[0, 1], precision_bits=40)
    req = fixed.next_request()
    assert req is not None and req.precision_bits == 40
    assert fixed.precision_bits_for(req, 2.0**20) == 40  # a fixed precision stays fixed


def SGDClassifierish():  # noqa: N802 - reads like the estimator it builds
    from sklearn.linear_model import SGDClassifier

    return SGDClassifier()


def test_other_rounds_keep_their_declared_precision():
    algo = FederatedAveraging(MLPClassifier(hidden_layer_sizes=(4,)), _pre(), rounds=1)
    counts = algo.next_request()
    assert counts is not None and counts.kind == "fedavg.label_counts"
    assert algo.precision_bits_for(counts, counts.clip) == counts.precision_bits


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"accuracy": 1e-6, "precision_bits": 40}, "not both"),
        ({"precision_bits": 7}, r"precision_bits must lie in \[8, 52\], got 7"),
        ({"precision_bits": 53}, r"precision_bits must lie in \[8, 52\], got 53"),
        ({"precision_bits": 40.0}, "precision_bits must be an integer"),
        ({"accuracy": 0}, "accuracy must be positive"),
        ({"clip": -1.0}, "clip must be positive and finite"),
        ({"clip": 1.0, "accuracy": 2.0}, "must be below the clip"),
    ],
)
def test_fedavg_job_validates_packing_parameters(kwargs, message):
    with pytest.raises(ValueError, match=message):
        FedAvgJob(MLPClassifier(), **kwargs)
    with pytest.raises(ValueError, match=message):
        FederatedAveraging(MLPClassifier(), _pre(), classes=[0, 1], **kwargs)


def test_job_spec_carries_accuracy_and_precision():
    estimator = {"class": "MLPClassifier", "params": {"hidden_layer_sizes": [4]}}
    job = job_from_spec("fedavg", {"estimator": estimator, "accuracy": 1e-4, "clip": 8.0}, None)
    assert isinstance(job, FedAvgJob) and job.accuracy == 1e-4 and job.clip == 8.0
    algo = job._algorithm(_pre())
    assert isinstance(algo, FederatedAveraging) and algo.precision_bits == 17
    job = job_from_spec("fedavg", {"estimator": estimator, "precision_bits": 40}, None)
    assert "precision_bits=40" in repr(job)
    with pytest.raises(ValueError, match="not both"):
        job_from_spec(
            "fedavg", {"estimator": estimator, "precision_bits": 40, "accuracy": 1e-4}, None
        )


def test_theoretical_slots_and_efficiency():
    assert theoretical_slots((1 << 26) - 1, 10, 2048) == 2047 // 30
    assert slot_efficiency(10_001, 148, 68) == 1.0  # only the last ciphertext is partial
    assert slot_efficiency(680, 11, 68) == pytest.approx(10 / 11)
    with pytest.raises(ValueError, match="summands must be a positive integer"):
        theoretical_slots(1, 0, 2048)


# -- the same loss as 40 bits ---------------------------------------------------------------------
def _fit(datasets, key, **packing):
    job = FedAvgJob(
        MLPClassifier(hidden_layer_sizes=(packing.pop("hidden"),)),
        rounds=packing.pop("rounds"),
        classes=[0, 1],
        seed=0,
        **packing,
    )
    with LocalFederation(datasets, threshold=3, key=key) as federation:
        result = job.fit(federation)
    xs = [design_matrix(result.preprocessing_, d) for d in datasets]
    x, y = np.vstack(xs), np.concatenate([d.y() for d in datasets])
    model = result.estimator_.named_steps["model"]
    loss = float(log_loss(y, model.predict_proba(x)[:, 1], labels=[0, 1]))
    records = [r for r in result.history_ if r.kind == "fedavg.local"]
    return loss, records


def _assert_same_loss(datasets, key, hidden, rounds):
    new, new_records = _fit(datasets, key, hidden=hidden, rounds=rounds)
    old, old_records = _fit(datasets, key, hidden=hidden, rounds=rounds, precision_bits=40)
    # the default really is coarser, and both runs trained a model of the expected size
    assert new_records[0].step > 1000 * old_records[0].step
    assert new_records[0].step <= 2 * SECAGG_PLUS_ACCURACY
    assert math.isfinite(new) and math.isfinite(old)
    assert new_records[0].bytes_per_agency < old_records[0].bytes_per_agency
    assert abs(new - old) <= LOSS_RTOL * old, (new, old)
    # the per-round training loss proxies agree as well
    for a, b in zip(new_records, old_records, strict=True):
        assert a.loss is not None and b.loss is not None
        assert abs(a.loss - b.loss) <= LOSS_RTOL * b.loss
    return new, old


@pytest.fixture(scope="module")
def key_3_of_10():
    return deal_threshold_key(512, threshold=3, parties=10)


@pytest.fixture(scope="module")
def bench_agencies():
    """The data of ``benchmarks/bench_network.py`` (its ``wide_frames``), 300 rows per agency."""
    if str(BENCHMARKS) not in sys.path:
        sys.path.insert(0, str(BENCHMARKS))
    from _common import wide_frames

    features = 49
    spec = FeatureSpec(
        numeric=tuple(f"x{j:02d}" for j in range(features)), categorical={}, label="y"
    )
    frames = wide_frames(10, 300, features)
    return [
        AgencyDataset.from_frame(f, spec, agency=f"agency-{i + 1:02d}")
        for i, f in enumerate(frames)
    ]


@pytest.mark.parametrize(("hidden", "params"), [(20, 1_021), (196, 9_997)])
def test_bench_workload_loss_unchanged(bench_agencies, key_3_of_10, hidden, params):
    assert (49 + 1) * hidden + hidden + 1 == params  # bench_network.mlp_params
    new, old = _assert_same_loss(bench_agencies, key_3_of_10, hidden, 3)
    print(f"{params} parameters: log loss {new:.8f} (default) vs {old:.8f} (40 bits)")


def test_chicago_inspections_loss_unchanged():
    try:
        data = real.load_chicago_inspections()
    except DataUnavailable as exc:
        pytest.skip(str(exc))
    agencies = list(data.agencies)
    key = deal_threshold_key(512, threshold=3, parties=len(agencies))
    new, old = _assert_same_loss(agencies, key, 16, 3)
    print(f"Chicago: log loss {new:.8f} (default) vs {old:.8f} (40 bits)")


def test_default_request_is_declared_with_the_policy():
    algo = FederatedAveraging(MLPClassifier(hidden_layer_sizes=(4,)), _pre(), classes=[0, 1])
    request = algo.next_request()
    assert isinstance(request, TaskRequest)
    assert request.precision_bits == precision_for(algo.clip, SECAGG_PLUS_ACCURACY)


# -- exact integers at their own width ------------------------------------------------------------
@settings(max_examples=80, deadline=None)
@given(
    bits=st.integers(1, 40),
    summands=st.integers(1, 8191),
    data=st.data(),
)
def test_exact_integers_sum_exactly_at_their_width(bits, summands, data):
    codec = ExactIntegers.for_summands(bits, summands)
    spec = PackingSpec(clip=codec.clip, precision_bits=codec.precision_bits, max_summands=summands)
    headroom = (summands - 1).bit_length()
    # the theoretical width, nothing more (values narrower than log2(2s + 1) bits are widened
    # to it so that the round's overflow indicator stays readable)
    width = max(bits, (2 * summands + 1).bit_length()) if bits > 1 else 1
    assert codec.bits == width and spec.slot_bits == width + headroom
    top = (1 << bits) - 1
    rows = data.draw(
        st.lists(st.lists(st.integers(0, top), min_size=4, max_size=4), min_size=1, max_size=6)
    )
    # the remaining summands send the largest value everywhere (the widest sum)
    rows = rows[:summands] + [[top] * 4] * (summands - len(rows[:summands]))
    total = np.zeros(4, dtype=np.uint64)
    for row in rows:
        q = spec.quantize(codec.encode(row))
        assert q.tolist() == row  # each integer quantizes to itself
        total += q
    released = spec.dequantize(spec.unpack(spec.pack(total), 4, summands), summands)
    assert codec.decode(released, summands) == [sum(col) for col in zip(*rows, strict=True)]


@pytest.mark.parametrize(
    ("bits", "summands"), [(1, 5), (2, 5), (3, 1), (4, 7), (24, 3), (36, 5), (40, 8191)]
)
def test_exact_integers_keep_the_overflow_indicator_readable(bits, summands):
    """An agency sends 0 in the round's overflow slot (min(1, clip) if it clipped)."""
    codec = ExactIntegers.for_summands(bits, summands)
    spec = PackingSpec(clip=codec.clip, precision_bits=codec.precision_bits, max_summands=summands)
    flag = min(1.0, spec.clip)
    zero = spec.quantize(np.zeros(1))
    quiet = spec.dequantize(zero * np.uint64(summands), summands)[0]
    assert quiet < 0.5 * flag  # no false overflow (AggregationRound.overflowed's threshold)
    if bits > 1:  # one clipping agency is seen
        raised = spec.quantize(np.array([flag])) + zero * np.uint64(summands - 1)
        assert spec.dequantize(raised, summands)[0] > 0.5 * flag


def test_exact_integers_validate():
    with pytest.raises(ValueError, match=r"exact integer width must be an integer in \[1, 48\]"):
        ExactIntegers(0, 0)
    with pytest.raises(ValueError, match=r"unit_bits must be an integer in \[0, 13\]"):
        ExactIntegers(30, 14)
    with pytest.raises(ValueError, match="summands exceed the 8191"):
        ExactIntegers.for_summands(30, 8192)
    codec = ExactIntegers.for_summands(8, 3)
    with pytest.raises(ValueError, match="position 1 is 256; exact packing takes integers in"):
        codec.encode([3, 256])
    with pytest.raises(ValueError, match=r"position 0 is 1\.5"):
        codec.encode([1.5])
    with pytest.raises(ValueError, match="not a sum of 3 exactly packed integers"):
        codec.decode([0.3], 3)
