"""The coordinator's read-only snapshot calls (what the dashboard reads), and its charts."""

from __future__ import annotations

import json
import math
import re

import grpc
import pytest
from dashkit import AGENCIES, DECLINE_REASON

from fedcity.dashboard import ChartCache, result_charts, result_summary, stacked_bars_svg
from fedcity.dashboard.charts import MAX_BARS
from fedcity.net.auth import Principal
from fedcity.net.coordinator.config import StatusError
from fedcity.net.coordinator.snapshot import MAX_SNAPSHOT_JOBS, MAX_SNAPSHOT_ROUNDS, round_info

ANALYST = Principal("analyst", "scientist")


def refused(code, call) -> str:
    with pytest.raises(StatusError) as info:
        call()
    assert info.value.code == code, info.value.message
    return info.value.message


# -- snapshots --------------------------------------------------------------------------------
def test_roles(federation):
    core = federation.server.coordinator
    agency = Principal(AGENCIES[0], "agency")
    for call in (
        lambda: core.snapshot_health(agency),
        lambda: core.snapshot_jobs(agency, 10),
        lambda: core.snapshot_job(agency, federation.jobs["full"]),
        lambda: core.snapshot_result(agency, federation.jobs["full"]),
    ):
        refused(grpc.StatusCode.PERMISSION_DENIED, call)
    operator = Principal("ops", "operator")
    assert core.snapshot_health(operator).members == 3
    listed = core.snapshot_jobs(operator, 10)  # every scientist's jobs, as ListJobs gives them
    assert {j.id for j in listed} == set(federation.jobs.values())
    for call in (
        lambda: core.snapshot_job(operator, federation.jobs["full"]),
        lambda: core.snapshot_result(operator, federation.jobs["full"]),
    ):
        refused(grpc.StatusCode.PERMISSION_DENIED, call)
    rival = Principal("rival", "scientist")
    message = refused(
        grpc.StatusCode.PERMISSION_DENIED,
        lambda: core.snapshot_job(rival, federation.jobs["full"]),
    )
    assert "analyst" not in message
    refused(
        grpc.StatusCode.PERMISSION_DENIED,
        lambda: core.snapshot_result(rival, federation.jobs["partial"]),
    )


def test_bounds_and_lookups(federation):
    core = federation.server.coordinator
    for limit in (0, -1, MAX_SNAPSHOT_JOBS + 1):
        refused(grpc.StatusCode.INVALID_ARGUMENT, lambda n=limit: core.snapshot_jobs(ANALYST, n))
    refused(grpc.StatusCode.INVALID_ARGUMENT, lambda: core.snapshot_jobs(ANALYST, True))
    refused(grpc.StatusCode.INVALID_ARGUMENT, lambda: core.snapshot_job(ANALYST, "x" * 5000))
    refused(grpc.StatusCode.NOT_FOUND, lambda: core.snapshot_job(ANALYST, "0" * 12))
    assert len(core.snapshot_jobs(ANALYST, 1)) == 1
    assert MAX_SNAPSHOT_ROUNDS >= 100


def test_snapshots_are_copies(federation):
    core = federation.server.coordinator
    job_id = federation.jobs["partial"]
    detail = core.snapshot_job(ANALYST, job_id)
    assert detail.job.departures == (("district-03", f"declined round 0: {DECLINE_REASON}"),)
    detail.rounds[0].seconds["aggregation"] = -1.0  # a copy: the coordinator is unaffected
    again = core.snapshot_job(ANALYST, job_id)
    assert again.rounds[0].seconds["aggregation"] >= 0
    rt = core._recent.get(job_id) or core._jobs[job_id]
    assert json.loads(rt.records[0])["seconds"]["aggregation"] >= 0
    health = core.snapshot_health(ANALYST)
    assert {a.name for a in health.agencies} == set(AGENCIES)
    with pytest.raises(AttributeError):
        health.connected = 0  # frozen


def test_a_round_record_keeps_counts_not_names():
    record = {
        "round": 4,
        "kind": "glm.newton",
        "label": "Newton 1",
        "contributors": ["a", "b", "c"],
        "decryptors": ["a", "b"],
        "bytes_per_agency": 1000.0,
        "bytes_to_decryptors": 2048,
        "seconds": {"aggregation": 0.5, "odd": "x"},
        "loss": float("nan"),
    }
    info = round_info(record)
    assert info.number == 5 and info.contributors == 3 and info.decryptors == 2
    assert info.upload_bytes == 3000 and info.decrypt_bytes == 2048
    assert info.seconds == {"aggregation": 0.5, "odd": 0.0}
    assert info.loss is not None and math.isnan(info.loss)
    assert round_info({})


# -- charts and summaries -----------------------------------------------------------------------
def test_stacked_bars_are_escaped_and_bounded():
    svg = str(
        stacked_bars_svg(
            ["1", "2", "3"],
            {"<script>alert(1)</script>": [1.0, 2.0, float("nan")], "b&c": [0.5, -1.0, 3.0]},
            title='t"itle',
            unit="s",
            element_id="c1",
        )
    )
    assert "<script" not in svg and "&lt;script&gt;" in svg and "b&amp;c" in svg
    assert svg.count('class="bar"') == 4  # non-finite and negative values draw nothing
    assert 'id="c1"' in svg and "t&#34;itle" in svg
    assert not re.search(r"style=", svg)  # nothing the page's CSP would block
    many = str(
        stacked_bars_svg(
            [str(i) for i in range(2000)], {"s": [1.0] * 2000}, title="t", unit="s", element_id="c2"
        )
    )
    assert many.count('class="bar"') == MAX_BARS
    with pytest.raises(ValueError, match="2 values for 3 bars"):
        stacked_bars_svg(["1", "2", "3"], {"s": [1.0, 2.0]}, title="t", unit="s", element_id="x")


def test_result_summary_and_charts_of_a_query(key):
    import pandas as pd

    from fedcity.analytics import LocalTable, TableSchema, run_query

    schema = TableSchema("permits", {"ward": "category", "units": "integer"})
    tables = [
        LocalTable(
            pd.DataFrame({"ward": ["w1"] * 12 + ["w2"] * (11 + i), "units": range(23 + i)}),
            schema,
            agency=name,
        )
        for i, name in enumerate(AGENCIES)
    ]
    spec = {
        "table": "permits",
        "group_by": ["ward"],
        "columns": {"ward": {"levels": ["w1", "w2"]}, "units": {"clip": [0, 100]}},
        "aggregate": [
            {"name": "n", "func": "count"},
            {"name": "u", "func": "sum", "column": "units"},
        ],
        "disclosure": {"min_count": 10},
    }
    result = run_query(spec, tables, key=key)
    text = result.to_json()
    assert result_charts(text) == ["query"]
    summary = result_summary(text)
    assert summary["kind"] == "query" and summary["rows_total"] == 2
    assert summary["columns"][:3] == ["ward", "n", "u"]
    assert [row[1] for row in summary["rows"]] == [36, 36]
    svg = ChartCache(size=1).svg("0" * 12, "query", text)
    assert svg.lstrip().startswith(b"<?xml") and b"<svg" in svg
    with pytest.raises(KeyError):
        ChartCache().svg("0" * 12, "roc", text)
    assert result_charts("not json") == [] and result_charts('{"format": "other"}') == []
