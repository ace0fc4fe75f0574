"""Two-round federated evaluation: the refinement gives the one-round 8,192-bin metrics."""

from __future__ import annotations

import math

import numpy as np
import numpy.typing as npt
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from sklearn.metrics import roc_auc_score, roc_curve

from fedcity.core.tasks import TaskRequest
from fedcity.learn import LocalFederation, LogisticRegressionJob
from fedcity.learn.algorithm import RoundRecord
from fedcity.learn.evaluation import (
    EvaluationMetrics,
    FederatedEvaluation,
    evaluation_progress,
    evaluation_statistics,
)
from fedcity.learn.metrics import (
    EvaluationCurves,
    calibration_curve_from_sums,
    classification_metrics_from_sum,
    classification_statistics,
    classification_summary,
    count_digits,
    histogram_refinement,
    pack_counts,
    roc_curve_from_histogram,
    summary_layout,
    summary_vector_length,
    unpack_counts,
)

Array = npt.NDArray[np.float64]
SIZES = (4, 8, 15, 30, 43)


def scores(n: int, seed: int, prevalence: float = 0.3) -> tuple[Array, Array]:
    rng = np.random.default_rng(seed)
    y = (rng.random(n) < prevalence).astype(float)
    p = 1.0 / (1.0 + np.exp(-(rng.normal(-1.0, 1.2, n) + 1.5 * y)))
    return y, p


def two_round_sum(
    parts: list[tuple[Array, Array, Array | None]], n_bins: int, coarse: int
) -> tuple[Array, Array, list[int]]:
    """Summary and refinement summed over agencies, in the clear."""
    summary = sum(
        classification_summary(y, p, w, n_bins=n_bins, coarse_bins=coarse) for y, p, w in parts
    )
    layout = summary_layout(coarse, 10)
    mixed = np.flatnonzero((summary[layout["positives"]] > 0) & (summary[layout["negatives"]] > 0))
    refined = sum(
        histogram_refinement(y, p, w, bins=mixed, n_bins=n_bins, coarse_bins=coarse)
        for y, p, w in parts
    )
    return np.asarray(summary), np.asarray(refined), [int(b) for b in mixed]


def record(contributors: list[str], step: float = 0.0) -> RoundRecord:
    return RoundRecord(0, "eval.model", "", contributors, [], 0.0, 0, step=step)


def run_in_clear(
    ev: FederatedEvaluation, parts: dict[str, tuple[Array, Array, Array | None]]
) -> list[TaskRequest]:
    """Drive a FederatedEvaluation with plaintext sums of the agencies' vectors."""
    asked = []
    while (request := ev.next_request()) is not None:
        asked.append(request)
        total = sum(evaluation_statistics(request.params, y, p, w) for y, p, w in parts.values())
        ev.update(request, np.asarray(total), record(list(parts)))
    return asked


# -- the statistics -------------------------------------------------------------------------
@pytest.mark.parametrize("weighted", [False, True])
def test_refined_histograms_are_the_fine_histograms_inside_mixed_bins(weighted: bool) -> None:
    y, p = scores(3000, 1)
    w = np.random.default_rng(2).gamma(2.0, 0.5, len(y)) if weighted else None
    parts = [(y[i::3], p[i::3], None if w is None else w[i::3]) for i in range(3)]
    summary, refined, mixed = two_round_sum(parts, 8192, 128)
    full = classification_statistics(y, p, w)
    fine_pos, fine_neg = full[5 : 5 + 8192].reshape(128, 64), full[5 + 8192 :].reshape(128, 64)
    half = len(refined) // 2
    np.testing.assert_allclose(refined[:half].reshape(-1, 64), fine_pos[mixed], rtol=1e-12)
    np.testing.assert_allclose(refined[half:].reshape(-1, 64), fine_neg[mixed], rtol=1e-12)
    layout = summary_layout(128, 10)
    np.testing.assert_allclose(summary[layout["positives"]], fine_pos.sum(axis=1), rtol=1e-12)
    np.testing.assert_allclose(summary[:5], full[:5], rtol=1e-12)
    assert summary[layout["fractional_weights"]][0] == (0 if w is None else np.sum(w % 1 != 0))
    assert len(summary) == summary_vector_length(128, 10) == 6 + 30 + 256


@settings(max_examples=30, deadline=None)
@given(
    n=st.integers(2, 300),
    seed=st.integers(0, 2**31),
    coarse=st.sampled_from([2, 8, 64, 256, (8, 64), (4, 32, 256)]),
    rounded=st.booleans(),
)
def test_refinement_rounds_equal_the_one_round_metrics(
    n: int, seed: int, coarse: int | tuple[int, ...], rounded: bool
) -> None:
    y, p = scores(n, seed, prevalence=0.5)
    y[:2] = [0.0, 1.0]
    if rounded:
        p = np.round(p, 1)  # exact ties, scores exactly 0 and 1
    parts = {f"a{i}": (y[i::3], p[i::3], None) for i in range(3)}
    ev = FederatedEvaluation({"type": "glm"}, "classification", n_bins=1024, coarse_bins=coarse)
    asked = run_in_clear(ev, parts)
    one_round = classification_metrics_from_sum(
        classification_statistics(y, p, n_bins=1024), n_bins=1024
    )
    assert ev.metrics_ is not None
    for name, value in one_round.items():
        assert ev.metrics_[name] == pytest.approx(value, rel=1e-12, abs=1e-15), name
    assert (
        abs(ev.metrics_["roc_auc"] - roc_auc_score(y, p))
        <= ev.metrics_["roc_auc_tie_bound"] + 1e-12
    )
    assert 1 <= len(asked) <= ev.max_rounds and ev.integer_counts_ == (len(asked) > 1)


def test_refinement_packs_counts_at_the_bits_they_need() -> None:
    y, p = scores(2000, 5)
    parts = {f"a{i}": (y[i::4], p[i::4], None) for i in range(4)}
    ev = FederatedEvaluation({"type": "glm"}, "classification")
    asked = run_in_clear(ev, parts)
    assert ev.levels_ == (64, 1024, 8192) and len(asked) == 3
    summary, *refinements = asked
    assert summary.precision_bits == 52 and summary.length == 6 + 30 + 128
    base = 2001  # total rows + 1 bounds every count
    digits = count_digits(base, 4)
    assert digits >= 2 and 16 * 4 * 4 * base**digits <= 2**52 < 16 * 4 * 4 * base ** (digits + 1)
    for request, bins in zip(refinements, ev.refined_bins_, strict=True):
        assert request.params["base"] == base and request.params["digits"] == digits
        assert request.clip == float(base**digits)
        assert request.precision_bits == (4 * 4 * base**digits).bit_length()
        r = request.params["fine_bins"] // request.params["coarse_bins"]
        assert request.params["bins"] == bins
        assert request.length == -(-2 * r * len(bins) // digits)
    assert sum(r.length for r in asked) < 16389 / 10


def test_packed_counts_round_trip() -> None:
    rng = np.random.default_rng(3)
    counts = rng.integers(0, 50, size=(5, 301)).astype(float)  # 5 agencies
    base, digits = 251, count_digits(251, 5)
    packed = sum(pack_counts(c, base=base, digits=digits) for c in counts)
    np.testing.assert_array_equal(
        unpack_counts(packed, base=base, digits=digits, length=301), counts.sum(axis=0)
    )
    with pytest.raises(
        ValueError, match=r"count 251.0 at position 1 is not an integer in \[0, 251\)"
    ):
        pack_counts([1.0, 251.0], base=base, digits=digits)
    with pytest.raises(ValueError, match="not an integer"):
        pack_counts([0.5], base=base, digits=digits)
    with pytest.raises(ValueError, match="exceeds 2\\*\\*52"):
        pack_counts([1.0], base=2**27, digits=2)


def test_fractional_weights_keep_52_bits() -> None:
    y, p = scores(500, 6)
    w = np.full(len(y), 0.5)
    parts = {f"a{i}": (y[i::2], p[i::2], w[i::2]) for i in range(2)}
    ev = FederatedEvaluation({"type": "glm"}, "classification")
    asked = run_in_clear(ev, parts)
    assert all(r.precision_bits == 52 and "base" not in r.params for r in asked)
    assert not ev.integer_counts_
    assert ev.metrics_ is not None and ev.metrics_["n"] == pytest.approx(250.0)
    one = classification_metrics_from_sum(classification_statistics(y, p, w))
    assert ev.metrics_["roc_auc"] == pytest.approx(one["roc_auc"], rel=1e-12)


def test_an_agency_leaving_between_rounds_falls_back_to_the_coarse_bins() -> None:
    y, p = scores(1000, 7)
    parts = {f"a{i}": (y[i::2], p[i::2], None) for i in range(2)}
    ev = FederatedEvaluation({"type": "glm"}, "classification")
    summary_request = ev.next_request()
    assert summary_request is not None
    s = sum(evaluation_statistics(summary_request.params, *v) for v in parts.values())
    ev.update(summary_request, np.asarray(s), record(["a0", "a1"]))
    refine = ev.next_request()
    assert refine is not None
    y0, p0, _ = parts["a0"]
    ev.update(refine, evaluation_statistics(refine.params, y0, p0), record(["a0"]))
    assert ev.metrics_ is not None and ev.next_request() is None
    assert "['a1'] left between the evaluation's rounds" in ev.metrics_.notes[0]
    coarse = classification_metrics_from_sum(classification_statistics(y, p, n_bins=64), n_bins=64)
    assert ev.metrics_["roc_auc"] == pytest.approx(coarse["roc_auc"], rel=1e-12)
    assert ev.metrics_["roc_auc_tie_bound"] == pytest.approx(coarse["roc_auc_tie_bound"])


def test_regression_and_legacy_stay_one_round() -> None:
    assert FederatedEvaluation({"type": "glm"}, "regression").max_rounds == 1
    legacy = FederatedEvaluation({"type": "glm"}, "classification", coarse_bins=None)
    request = legacy.next_request()
    assert request is not None and request.length == 16389 and "stage" not in request.params
    assert FederatedEvaluation({"type": "glm"}, "classification").max_rounds == 3
    for n_bins, levels in ((512, (64, 512)), (64, (64,)), (96, (96,)), (2048, (64, 1024, 2048))):
        ev = FederatedEvaluation({"type": "glm"}, "classification", n_bins=n_bins)
        assert ev.levels_ == levels
    assert FederatedEvaluation({"type": "glm"}, "classification", coarse_bins=8192).max_rounds == 1


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"coarse_bins": 100}, "coarse_bins=100 must divide n_bins=8192"),
        ({"n_bins": 1 << 17, "coarse_bins": 128}, "n_bins must be at most 65536"),
        ({"calibration_bins": 0}, "calibration_bins must be a positive integer"),
        ({"calibration_bins": 5000}, "calibration_bins must be at most 1000"),
        ({"threshold": 1.0}, r"threshold must lie in \(0, 1\)"),
    ],
)
def test_evaluation_validates(kwargs: dict[str, object], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        FederatedEvaluation({"type": "glm"}, "classification", **kwargs)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("bins", "message"),
    [
        ([], "non-empty list"),
        ([3, 2], "strictly increasing"),
        ([0, 64], r"must lie in \[0, 64\)"),
        ([-1], r"must lie in \[0, 64\)"),
        ([0.5], "must be integers"),
    ],
)
def test_agencies_refuse_bad_refinement_requests(bins: list[float], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        histogram_refinement([0, 1], [0.2, 0.7], bins=bins)


# -- curves ---------------------------------------------------------------------------------
def test_roc_curve_from_histograms_matches_sklearn_at_distinct_bins() -> None:
    y, p = scores(400, 9)
    idx = np.rint(p * 100).astype(int)  # scores on a grid: one score per bin of 101
    p = idx / 100.0
    pos = np.bincount(idx[y == 1], minlength=101).astype(float)
    neg = np.bincount(idx[y == 0], minlength=101).astype(float)
    fpr, tpr = roc_curve_from_histogram(pos, neg)
    ref_fpr, ref_tpr, _ = roc_curve(y, p, drop_intermediate=False)
    ours = set(zip(np.round(fpr, 12), np.round(tpr, 12), strict=True))
    theirs = set(zip(np.round(ref_fpr, 12), np.round(ref_tpr, 12), strict=True))
    assert ours <= theirs  # the same curve, collinear points dropped
    assert np.trapezoid(tpr, fpr) == pytest.approx(roc_auc_score(y, p), rel=1e-12)
    assert fpr[0] == tpr[0] == 0.0 and fpr[-1] == tpr[-1] == 1.0


def test_curves_round_trip_and_validate() -> None:
    y, p = scores(800, 10)
    parts = {"a": (y[:400], p[:400], None), "b": (y[400:], p[400:], None)}
    ev = FederatedEvaluation({"type": "glm"}, "classification")
    run_in_clear(ev, parts)
    assert ev.metrics_ is not None and ev.metrics_.curves is not None
    curves = ev.metrics_.curves
    assert EvaluationCurves.from_dict(curves.to_dict()) == curves
    assert curves.roc_auc == ev.metrics_["roc_auc"]
    pred, obs, weight = calibration_curve_from_sums(
        [2.0, 0.0, 4.0], [1.0, 0.0, 3.0], [0.2, 0.0, 3.0]
    )
    np.testing.assert_allclose(pred, [0.1, 0.75])
    np.testing.assert_allclose(obs, [0.5, 0.75])
    np.testing.assert_allclose(weight, [2.0, 4.0])
    assert sum(curves.calibration_weight) == pytest.approx(800.0)
    with pytest.raises(ValueError, match="same number"):
        EvaluationCurves((0.0, 1.0), (0.0,), 0.5, (), (), (), 10)
    with pytest.raises(ValueError, match="in \\[0, 1\\]"):
        EvaluationCurves((0.0, 2.0), (0.0, 1.0), 0.5, (), (), (), 10)
    with pytest.raises(ValueError, match="invalid evaluation curves"):
        EvaluationCurves.from_dict({"roc": {}})
    with pytest.raises(ValueError, match="both classes"):
        roc_curve_from_histogram([1.0, 2.0], [0.0, 0.0])


# -- with encryption ------------------------------------------------------------------------
@pytest.fixture(scope="module")
def fitted(breast_cancer, key_3_of_5, skewed_split):  # type: ignore[no-untyped-def]
    frame, spec = breast_cancer
    agencies = skewed_split(frame, spec, sort_by="mean_radius", sizes=SIZES)
    fed = LocalFederation(agencies, threshold=3, key=key_3_of_5)
    result = LogisticRegressionJob().fit(fed)
    yield fed, result, frame, spec
    fed.close()


def test_encrypted_two_rounds_equal_sklearn_and_the_one_round(fitted) -> None:  # type: ignore[no-untyped-def]
    fed, result, frame, spec = fitted
    got = fed.evaluate(result)
    assert isinstance(got, EvaluationMetrics) and got.curves is not None
    one = FederatedEvaluation(
        result.model_params_, "classification", dataset="train", coarse_bins=None
    )
    fed.run(one)
    assert one.metrics_ is not None
    p = result.estimator_.predict_proba(frame)[:, 1]
    y = frame[spec.label].to_numpy()
    exact = classification_metrics_from_sum(classification_statistics(y, p))
    assert got["roc_auc"] == exact["roc_auc"]  # integer counts: exactly the 8,192-bin AUC
    assert got["roc_auc_tie_bound"] == pytest.approx(exact["roc_auc_tie_bound"], rel=1e-12)
    for name in ("log_loss", "brier", "accuracy", "prevalence", "n"):
        assert got[name] == pytest.approx(one.metrics_[name], rel=1e-9)
    assert abs(got["roc_auc"] - roc_auc_score(y, p)) <= got["roc_auc_tie_bound"]


def test_evaluation_costs_a_fraction_of_the_one_round_upload(fitted) -> None:  # type: ignore[no-untyped-def]
    fed, result, _, _ = fitted
    two = FederatedEvaluation(result.model_params_, "classification", dataset="train")
    one = FederatedEvaluation(
        result.model_params_, "classification", dataset="train", coarse_bins=None
    )
    two_bytes = sum(r.bytes_per_agency for r in fed.run(two))
    one_bytes = sum(r.bytes_per_agency for r in fed.run(one))
    assert two_bytes < one_bytes / 4


def test_progress_bar_counts_the_rounds(fitted, capsys) -> None:  # type: ignore[no-untyped-def]
    fed, result, _, _ = fitted
    ev = FederatedEvaluation(result.model_params_, "classification", dataset="train")
    with evaluation_progress(True, ev.max_rounds) as callback:
        assert callback is not None
        records = fed.run(ev, progress=callback)
    assert 2 <= len(records) <= ev.max_rounds == 3
    with evaluation_progress(False, 2) as none:
        assert none is None


def test_result_json_carries_the_curves(fitted) -> None:  # type: ignore[no-untyped-def]
    import json

    from fedcity.learn.jobs import result_to_json

    fed, result, _, _ = fitted
    metrics = fed.evaluate(result)
    data = json.loads(result_to_json(result, metrics))
    assert data["metrics"]["roc_auc"] == metrics["roc_auc"]
    assert EvaluationCurves.from_dict(data["curves"]) == metrics.curves
    assert "curves" not in json.loads(result_to_json(result, dict(metrics)))
    assert not math.isnan(metrics.curves.roc_auc)  # type: ignore[union-attr]
