"""Charts of a federated job: what each figure holds, files written, inputs refused."""

from __future__ import annotations

import json
import xml.etree.ElementTree as ET
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from matplotlib.figure import Figure

from fedcity.learn import FedAvgJob, LocalFederation, LogisticRegressionJob
from fedcity.learn.jobs import result_to_json
from fedcity.plots import (
    MAX_AGENCIES,
    MAX_ROUNDS,
    plot_calibration,
    plot_coefficients,
    plot_participation,
    plot_roc,
    plot_training_curves,
    result_view,
    save_figure,
    save_job_plots,
    save_result_plots,
)

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
SIZES = (4, 8, 15, 30, 43)


@pytest.fixture(scope="module")
def logistic(breast_cancer, skewed_split, key_3_of_5):  # type: ignore[no-untyped-def]
    """A logistic job in which one agency drops out, and its federated evaluation."""
    frame, spec = breast_cancer
    agencies = skewed_split(frame, spec, sort_by="mean_texture", sizes=SIZES)
    with LocalFederation(agencies, threshold=3, min_agencies=3, key=key_3_of_5) as fed:
        fed.schedule_dropout(agencies[4].agency, at_round=6)
        result = LogisticRegressionJob().fit(fed)
        metrics = fed.evaluate(result)
    return result, metrics, spec


def lines(fig: Figure, axes: int = 0) -> list[Any]:
    return list(fig.axes[axes].get_lines())


# -- figure contents ------------------------------------------------------------------------
def test_training_curves_number_rounds_from_one(logistic) -> None:  # type: ignore[no-untyped-def]
    result, _, _ = logistic
    fig = plot_training_curves(result)
    loss_ax, metric_ax = fig.axes
    assert loss_ax.get_ylabel() == "training loss" and metric_ax.get_xlabel() == "round"
    assert loss_ax.get_title() == f"Training of job {result.job_id_}"
    (loss,) = loss_ax.get_lines()
    x, y = loss.get_data()
    newton = [i + 1 for i, r in enumerate(result.history_) if r.loss is not None]
    assert list(x) == newton and min(x) > 1  # statistics rounds first, counted from 1
    np.testing.assert_allclose(y, [r.loss for r in result.history_ if r.loss is not None])
    assert metric_ax.get_ylabel() == "seconds per round"
    assert len(metric_ax.patches) == len(result.history_)
    assert metric_ax.get_xlim() == (0.5, len(result.history_) + 0.5)


def test_training_curves_take_a_metric_per_round(logistic) -> None:  # type: ignore[no-untyped-def]
    result, _, _ = logistic
    n = len(result.history_)
    auc = [None] * (n - 2) + [0.9, 0.95]
    fig = plot_training_curves(result, metrics={"hold-out AUC": auc})
    (line,) = fig.axes[1].get_lines()
    assert line.get_label() == "hold-out AUC" and list(line.get_xdata()) == [n - 1, n]
    with pytest.raises(ValueError, match=r"metric 'auc' has 2 values; the result has \d+ rounds"):
        plot_training_curves(result, metrics={"auc": [0.1, 0.2]})


def test_roc_and_calibration_from_the_secure_histograms(logistic) -> None:  # type: ignore[no-untyped-def]
    _, metrics, _ = logistic
    curves = metrics.curves
    fig = plot_roc(metrics)
    model, chance = lines(fig)
    assert model.get_label() == f"model (AUC {metrics['roc_auc']:.4f})"
    assert list(chance.get_xdata()) == [0, 1]
    assert fig.axes[0].get_xlabel() == "false positive rate"
    assert fig.axes[0].get_ylabel() == "true positive rate"
    np.testing.assert_array_equal(model.get_xdata(), curves.roc_fpr)
    fig = plot_calibration(curves)
    _, points = lines(fig)
    assert points.get_label() == "model" and len(points.get_xdata()) == len(
        curves.calibration_predicted
    )
    assert fig.axes[1].get_xlabel() == "mean predicted probability"
    heights = [p.get_height() for p in fig.axes[1].patches]
    assert sum(heights) == pytest.approx(metrics["n"])


def test_participation_shows_who_contributed(logistic) -> None:  # type: ignore[no-untyped-def]
    result, _, _ = logistic
    fig = plot_participation(result)
    ax = fig.axes[0]
    (image,) = ax.get_images()
    grid = image.get_array()
    assert grid.shape == (5, len(result.history_))
    names = sorted({a for r in result.history_ for a in r.contributors})
    assert [t.get_text() for t in ax.get_yticklabels()] == names
    gone = names.index("agency-4")
    contributed = np.asarray(grid)[gone] > 0
    assert contributed[:4].all() and not contributed[-1]
    assert "contributors 4–5 per round" in ax.get_title()
    assert ax.get_xlabel() == "round" and ax.get_ylabel() == "agency"


def test_coefficients_carry_feature_names(logistic) -> None:  # type: ignore[no-untyped-def]
    result, _, _ = logistic
    fig = plot_coefficients(result, top=5)
    ax = fig.axes[0]
    labels = [t.get_text() for t in ax.get_yticklabels()]
    coef = np.asarray(result.model_params_["beta"][1:])
    names = result.preprocessing_.feature_names()
    top = [names[i] for i in np.argsort(-np.abs(coef), kind="stable")[:5]]
    assert labels == top[::-1] and len(ax.patches) == 5
    assert f"5 largest of {len(coef)}" in ax.get_title()
    with pytest.raises(ValueError, match=f"3 feature names for {len(coef)} coefficients"):
        plot_coefficients(result, feature_names=["a", "b", "c"])
    with pytest.raises(ValueError, match="top must be a positive integer"):
        plot_coefficients(result, top=0)


# -- files ----------------------------------------------------------------------------------
def test_save_result_plots_writes_valid_png_and_svg(logistic, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    result, metrics, _ = logistic
    paths = result.plot(tmp_path / "charts", metrics)
    names = sorted(p.name for p in paths)
    charts = ("calibration", "coefficients", "participation", "roc", "training")
    assert names == sorted(f"{c}.{ext}" for c in charts for ext in ("png", "svg"))
    for p in paths:
        assert p.exists() and p.stat().st_size > 1000
        if p.suffix == ".png":
            assert p.read_bytes()[:8] == PNG_MAGIC
        else:
            root = ET.parse(p).getroot()
            assert root.tag.endswith("svg")
    svg = (tmp_path / "charts" / "roc.svg").read_text()
    assert "false positive rate" in svg or "<path" in svg


def test_save_job_plots_reads_the_result_json(logistic, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    result, metrics, _ = logistic
    text = result_to_json(result, metrics)
    paths = save_job_plots(text, tmp_path, formats=["svg"])
    assert sorted(p.stem for p in paths) == [
        "calibration",
        "coefficients",
        "participation",
        "roc",
        "training",
    ]
    # without an evaluation there is no ROC or calibration chart
    plain = save_job_plots(json.loads(result_to_json(result)), tmp_path / "plain", formats="png")
    assert sorted(p.stem for p in plain) == ["coefficients", "participation", "training"]
    view = result_view(text)
    assert view.metrics is not None and view.metrics["roc_auc"] == metrics["roc_auc"]


def test_fedavg_results_get_no_coefficient_chart(breast_cancer, skewed_split, tmp_path) -> None:  # type: ignore[no-untyped-def]
    from sklearn.linear_model import SGDClassifier

    frame, spec = breast_cancer
    agencies = skewed_split(frame, spec, sort_by="mean_texture", sizes=SIZES)
    with LocalFederation(agencies, encrypted=False) as fed:
        result = FedAvgJob(SGDClassifier(loss="log_loss"), rounds=2, classes=[0, 1]).fit(fed)
    paths = save_result_plots(result, tmp_path, formats=["png"], prefix="sgd-")
    assert sorted(p.name for p in paths) == ["sgd-participation.png", "sgd-training.png"]
    with pytest.raises(ValueError, match="coefficient charts are for GLMs; this model is 'fedavg'"):
        plot_coefficients(result)


# -- refusals -------------------------------------------------------------------------------
def test_inputs_are_refused_clearly(logistic, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    result, metrics, _ = logistic
    fig = plot_roc(metrics)
    with pytest.raises(ValueError, match=r"end in .png or .svg, got 'roc.pdf'"):
        save_figure(fig, tmp_path / "roc.pdf")
    with pytest.raises(ValueError, match="formats must be chosen from"):
        save_result_plots(result, tmp_path, formats=["jpg"])
    with pytest.raises(ValueError, match="prefix must not hold a path separator"):
        save_result_plots(result, tmp_path, prefix="../x")
    with pytest.raises(ValueError, match="not a fedcity result"):
        save_job_plots('{"format": "other"}', tmp_path)
    with pytest.raises(ValueError, match="result is not valid JSON"):
        save_job_plots("{", tmp_path)
    with pytest.raises(ValueError, match="holds no evaluation curves"):
        plot_roc(result_to_json(result))
    data = json.loads(result_to_json(result))
    data["history"] = []
    with pytest.raises(ValueError, match="no rounds to draw"):
        plot_training_curves(data)
    record = data_record = json.loads(result_to_json(result))["history"][0]
    data["history"] = [data_record] * (MAX_ROUNDS + 1)
    with pytest.raises(ValueError, match="a chart draws at most 10,000"):
        plot_participation(data)
    record = dict(record, contributors=[f"a{i}" for i in range(MAX_AGENCIES + 1)])
    data["history"] = [record]
    with pytest.raises(ValueError, match="a chart draws at most 1,000"):
        plot_participation(data)
    bad = json.loads(result_to_json(result, metrics))
    bad["curves"]["roc"]["tpr"] = [0.0, 3.0, *bad["curves"]["roc"]["tpr"][2:]]
    with pytest.raises(ValueError, match="roc_tpr must hold finite values in"):
        save_job_plots(bad, tmp_path)
