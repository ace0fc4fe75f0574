"""Federated queries over the network: real coordinator (TLS), real agent daemons, the CLI.

Three agencies hold a service-request table each. A query grouped by ward runs through
``fedcity query run``; its released table equals pandas on the pooled rows, a ward that only
one agency holds is suppressed and never decrypted, and nothing the coordinator stores holds
one agency's own figure.
"""

from __future__ import annotations

import json
import sqlite3
import time

import numpy as np
import pandas as pd
import pytest
from daemons import agency_toml, running_agents, tls_coordinator, wait_connected

from fedcity.cli import main
from fedcity.crypto.serde import encrypted_vector_from_bytes
from fedcity.net.ceremony import deal_federation, load_federation, read_token
from fedcity.net.client import Client, ClientError

AGENCIES = ["d1", "d2", "d3"]
SOLO_TOTAL = 7_654_321
"""d3's own sum of ``amount`` in ward w4, the only ward no other agency holds."""

SPEC = """
table = "requests"
group_by = ["ward"]

[columns.ward]
levels = ["w1", "w2", "w3", "w4"]

[columns.amount]
clip = [0, 10000000]

[columns.days]
clip = [0, 100]
decimals = 2

[[aggregate]]
name = "n"
func = "count"

[[aggregate]]
name = "total"
func = "sum"
column = "amount"

[[aggregate]]
name = "mean_days"
func = "mean"
column = "days"

[[aggregate]]
name = "sd_days"
func = "std"
column = "days"

[disclosure]
min_count = 10
"""


def _frame(rng: np.random.Generator, agency: str) -> pd.DataFrame:
    wards = ["w1", "w2", "w3"]
    n = {"d1": 40, "d2": 55, "d3": 30}[agency]
    frame = pd.DataFrame(
        {
            "ward": rng.choice(wards, n),
            "amount": rng.integers(0, 5000, n),
            "days": np.round(rng.uniform(0, 60, n), 2),
            "note": ["free text stays home"] * n,
        }
    )
    if agency == "d3":  # a ward only d3 serves: 12 rows summing to SOLO_TOTAL
        solo = pd.DataFrame(
            {
                "ward": ["w4"] * 12,
                "amount": [SOLO_TOTAL - 11 * 1000] + [1000] * 11,
                "days": [1.5] * 12,
                "note": ["x"] * 12,
            }
        )
        frame = pd.concat([frame, solo], ignore_index=True)
    return frame


TABLE = """
[tables.requests]
path = "requests.csv"
columns = { ward = "category", amount = "integer", days = "float", note = "text" }

[policy]
"""


@pytest.fixture(scope="module")
def federation(tmp_path_factory):
    root = tmp_path_factory.mktemp("query")
    files = deal_federation(root, AGENCIES, 2, key_bits=512)
    server = tls_coordinator(root, files)
    rng = np.random.default_rng(11)
    frames, configs = {}, []
    for agency in AGENCIES:
        folder = files.shares[agency].parent
        frames[agency] = _frame(rng, agency)
        frames[agency].to_csv(folder / "requests.csv", index=False)
        # d2 insists on cells of at least 12 rows (raising the federation's 10)
        floor = 12 if agency == "d2" else 10
        configs.append(
            agency_toml(folder, agency, server.port, TABLE + f"min_cell_count = {floor}")
        )
    address = f"127.0.0.1:{server.port}"
    token = files.scientist_tokens["analyst"]
    client = Client(address, read_token(token), ca_file=files.ca_cert)
    connect = ["--coordinator", address, "--ca-file", str(files.ca_cert)]
    connect += ["--token-file", str(token)]
    try:
        with running_agents(configs):
            wait_connected(client, len(AGENCIES))
            yield {
                "root": root,
                "files": files,
                "client": client,
                "connect": connect,
                "frames": frames,
                "db": root / "coordinator.sqlite",
            }
    finally:
        client.close()
        server.stop(grace=1.0)


def _run(federation, capsys, spec_text: str, *extra: str) -> tuple[int, str, str]:
    spec = federation["root"] / f"spec-{time.monotonic_ns()}.toml"
    spec.write_text(spec_text)
    code = main(["query", "run", *federation["connect"], str(spec), *extra])
    out = capsys.readouterr()
    return code, out.out, out.err


def test_query_over_the_network_equals_pandas_and_suppresses_the_solo_ward(federation, capsys):
    spec = SPEC.replace("min_count = 10", "min_count = 12")
    out_csv = federation["root"] / "cells.csv"
    chart = federation["root"] / "chart.png"
    code, out, err = _run(
        federation, capsys, spec, "--out", str(out_csv), "--plot", str(chart), "--timeout", "120"
    )
    assert code == 0, err
    assert "succeeded" in out and "w1" in out  # the printed table
    assert chart.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    cells = pd.read_csv(out_csv).set_index("ward")

    pooled = pd.concat(federation["frames"].values(), ignore_index=True)
    expected = pooled.groupby("ward").agg(
        n=("amount", "size"),
        total=("amount", "sum"),
        mean_days=("days", "mean"),
        sd_days=("days", "std"),
    )
    for ward in ("w1", "w2", "w3"):
        row = cells.loc[ward]
        assert row["status"] == "released"
        assert row["n"] == expected.loc[ward, "n"]
        assert row["total"] == expected.loc[ward, "total"]
        assert row["mean_days"] == pytest.approx(expected.loc[ward, "mean_days"], rel=1e-12)
        assert row["sd_days"] == pytest.approx(expected.loc[ward, "sd_days"], rel=1e-9)
    solo = cells.loc["w4"]
    assert solo["status"] == "suppressed" and solo["n_agencies"] == 1
    assert "agencies" in str(solo["reason"])
    assert pd.isna(solo["total"]) and pd.isna(solo["n"])


def test_the_coordinator_never_holds_an_agencys_own_figure(federation, capsys):
    code, _, err = _run(federation, capsys, SPEC.replace("min_count = 10", "min_count = 12"))
    assert code == 0, err
    raw = federation["db"].read_bytes()
    wal = federation["db"].with_name(federation["db"].name + "-wal")
    if wal.exists():
        raw += wal.read_bytes()
    # d3's own total of its solo ward, in every encoding a plaintext store could use
    figure = SOLO_TOTAL
    for encoding in (
        str(figure).encode(),
        figure.to_bytes(8, "little"),
        figure.to_bytes(8, "big"),
        np.float64(figure).tobytes(),
    ):
        assert encoding not in raw
    # every stored contribution is a sealed vector of ciphertexts, never a plaintext vector
    with sqlite3.connect(federation["db"]) as db:
        rows = db.execute(
            "SELECT payload FROM events WHERE type = 'contribution' AND payload IS NOT NULL"
        ).fetchall()
    assert rows
    public_key = load_federation(federation["files"].public).public_key
    for (payload,) in rows:
        vec = encrypted_vector_from_bytes(bytes(payload), public_key)
        assert vec.ciphertexts and all(0 < c < public_key.nsquare for c in vec.ciphertexts)
    results = [
        json.loads(r[0])
        for r in sqlite3.connect(federation["db"]).execute(
            "SELECT result FROM jobs WHERE result IS NOT NULL"
        )
    ]
    assert results
    released = json.dumps(results)
    assert str(SOLO_TOTAL) not in released


def test_an_agency_policy_refusal_reaches_the_scientist(federation, capsys):
    # d2's policy wants cells of 12 rows or more; the federation's floor of 10 is not enough
    code, out, err = _run(federation, capsys, SPEC, "--min-agencies", "3", "--timeout", "120")
    assert code != 0
    assert "d2" in out + err and "min_cell_count" in out + err


def test_bad_queries_are_refused_before_any_agency_works(federation, capsys):
    def served(agency: str) -> set[str]:
        """The jobs an agency's task log names (earlier tests' jobs may still log)."""
        path = federation["files"].shares[agency].parent / "served.jsonl"
        lines = path.read_text().splitlines() if path.exists() else []
        return {json.loads(line)["job"] for line in lines}

    known = {e.job_id for e in federation["client"].jobs(500)}
    # an unknown column: refused by the coordinator against the registered tables
    code, _, err = _run(
        federation, capsys, SPEC.replace('column = "amount"', 'column = "amount_usd"')
    )
    assert code != 0 and "amount_usd" in err
    # summing a text column: refused against the schema
    bad = SPEC.replace("[columns.amount]", "[columns.note]\nclip = [0, 1]\n\n[columns.amount]")
    bad = bad.replace('column = "amount"', 'column = "note"')
    code, _, err = _run(federation, capsys, bad)
    assert code != 0 and "note" in err
    # below the federation's floor
    code, _, err = _run(federation, capsys, SPEC.replace("min_count = 10", "min_count = 3"))
    assert code != 0 and "minimum is 10" in err
    # an unknown table
    code, _, err = _run(federation, capsys, SPEC.replace('"requests"', '"permits"', 1))
    assert code != 0 and "permits" in err
    # structurally invalid: refused locally, before any call
    code, _, err = _run(federation, capsys, SPEC.replace('func = "count"', 'func = "median"'))
    assert code == 2 or code == 1
    assert "median" in err
    # a refused query creates no job, and no agency served any job but earlier tests' ones
    # (which may still be finishing)
    assert {e.job_id for e in federation["client"].jobs(500)} == known
    for a in AGENCIES:
        assert served(a) <= known, f"{a} worked on a refused query"


def test_client_api_returns_a_query_result(federation):
    client = federation["client"]
    spec = SPEC.replace("min_count = 10", "min_count = 12")
    path = federation["root"] / "api.toml"
    path.write_text(spec)
    job_id = client.submit_query(path)
    for event in client.watch(job_id, timeout=120):
        last = event
    assert last.state == "succeeded", last.failure
    result = client.query_result(job_id)
    assert set(result.frame["ward"]) == {"w1", "w2", "w3", "w4"}
    with pytest.raises(ClientError):
        client.query_result("0" * 12)
