"""A classifier's federated evaluation over gRPC: its refinement rounds, metrics and curves."""

from __future__ import annotations

import json

import numpy as np
import pytest
from loopback import AGENCIES, Agent, auth, drive, job_state, scientist, snapshot, start, submit
from sklearn.metrics import log_loss, roc_auc_score

from fedcity.learn.jobs import estimator_from_result_json
from fedcity.learn.metrics import (
    EvaluationCurves,
    classification_metrics_from_sum,
    classification_statistics,
)
from fedcity.plots import save_job_plots
from fedcity.v1 import federation_pb2 as fpb


def test_logistic_job_with_evaluation_over_the_network(files, key, data, servers, tmp_path):
    frame, spec, tables = data
    server = start(files)
    servers.append(server)
    agents = [
        Agent(n, t, key, tables={"holdout": t}).connect(server.port)
        for n, t in zip(AGENCIES, tables, strict=True)
    ]
    for a in agents:
        a.register()
    job_id = submit(
        server.port,
        job_type="logistic_regression",
        params_json=json.dumps({"C": 0.5}),
        evaluate_dataset="holdout",
    ).job_id
    drive(agents, lambda: job_state(server.port, job_id) != fpb.JOB_STATE_RUNNING)
    assert job_state(server.port, job_id) == fpb.JOB_STATE_SUCCEEDED
    result = scientist(server.port).GetResult(
        fpb.JobRef(job_id=job_id), metadata=auth("analyst"), timeout=10
    )
    out = json.loads(result.result_json)
    pipeline = estimator_from_result_json(result.result_json, spec)
    p = pipeline.predict_proba(frame)[:, 1]
    y = frame[spec.label].to_numpy()
    exact = classification_metrics_from_sum(classification_statistics(y, p))
    metrics = out["metrics"]
    assert metrics["roc_auc"] == pytest.approx(exact["roc_auc"], rel=1e-9)
    assert metrics["roc_auc_tie_bound"] == pytest.approx(exact["roc_auc_tie_bound"], rel=1e-9)
    assert abs(metrics["roc_auc"] - roc_auc_score(y, p)) <= metrics["roc_auc_tie_bound"]
    assert metrics["log_loss"] == pytest.approx(log_loss(y, p), rel=1e-6)
    curves = EvaluationCurves.from_dict(out["curves"])
    assert curves.roc_auc == metrics["roc_auc"]
    assert np.trapezoid(curves.roc_tpr, curves.roc_fpr) == pytest.approx(metrics["roc_auc"])
    # the evaluation's rounds are not training history; it took more than one round
    closes = [r for r in snapshot(files["db"])[0] if r[2] == "close"]
    evaluation_rounds = len(closes) - len(out["history"])
    assert 2 <= evaluation_rounds <= 3
    assert all(r["kind"] != "eval.model" for r in out["history"])
    paths = save_job_plots(result.result_json, tmp_path / "charts", formats=["png"])
    assert {p.stem for p in paths} >= {"roc", "calibration", "training", "participation"}
