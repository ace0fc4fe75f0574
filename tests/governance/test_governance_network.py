"""Audit anchors and budgets over the network: real coordinator (TLS), real agent daemons.

Three agencies answer differentially private queries through real gRPC on loopback. Every
upload's acknowledgement carries the coordinator's signed audit head, which each agent keeps;
the logs cross-check clean, and a coordinator that later rewrites its log with its own key
is caught by ``fedcity audit verify``. Each agency's budget (ε = 1.5 a month) takes one query
of ε = 1; the second is refused by every agency before anything is computed, and the ledgers
do not change.
"""

from __future__ import annotations

import sqlite3
import time

import numpy as np
import pandas as pd
import pytest
from auditkit import rewrite
from daemons import agency_toml, running_agents, tls_coordinator, wait_connected

from fedcity.cli import main
from fedcity.crypto.signing import SigningKey
from fedcity.governance.audit import COORDINATOR, cross_check
from fedcity.governance.auditlog import coordinator_log_path, read_log
from fedcity.governance.ledger import Ledger
from fedcity.net.ceremony import deal_federation, load_federation, read_token
from fedcity.net.client import Client
from fedcity.net.coordinator import CoordinatorConfig, serve

AGENCIES = ["d1", "d2", "d3"]
PRIVACY = {"epsilon": 1.0, "delta": 1e-6, "noise": "gaussian"}
SPEC = {
    "table": "requests",
    "columns": {"ward": {"levels": ["w1", "w2", "w3"]}, "amount": {"clip": [0, 5000]}},
    "group_by": ["ward"],
    "aggregate": [
        {"name": "n", "func": "count"},
        {"name": "total", "func": "sum", "column": "amount"},
    ],
    "disclosure": {"min_count": 10},
    "privacy": PRIVACY,
}


TABLE = """
[tables.requests]
path = "requests.csv"
columns = { ward = "category", amount = "integer" }

[policy]
budget = { epsilon = 1.5, delta = 1e-5, period = "month" }
"""


@pytest.fixture(scope="module")
def federation(tmp_path_factory):
    root = tmp_path_factory.mktemp("governance")
    files = deal_federation(root, AGENCIES, 2, key_bits=512)
    db = root / "coordinator.sqlite"
    server = tls_coordinator(root, files)
    rng = np.random.default_rng(5)
    configs = {}
    for agency in AGENCIES:
        folder = files.shares[agency].parent
        n = 90
        pd.DataFrame(
            {"ward": rng.choice(["w1", "w2", "w3"], n), "amount": rng.integers(0, 5000, n)}
        ).to_csv(folder / "requests.csv", index=False)
        configs[agency] = str(agency_toml(folder, agency, server.port, TABLE, log=False))
    address = f"127.0.0.1:{server.port}"
    client = Client(address, read_token(files.scientist_tokens["analyst"]), ca_file=files.ca_cert)
    try:
        with running_agents(list(configs.values())) as agents:
            wait_connected(client, len(AGENCIES))
            yield {
                "root": root,
                "files": files,
                "client": client,
                "db": db,
                "configs": configs,
                "agents": {a.config.agency: a for a in agents},
            }
    finally:
        client.close()
        server.stop(grace=1.0)


def _run(client: Client, spec) -> object:
    job = client.submit_query(spec)
    events = list(client.watch(job, timeout=120))
    assert events and events[-1].finished
    return events[-1]


def _logs(fed):
    agents = {a: read_log(fed["agents"][a].config.audit_file) for a in AGENCIES}
    return read_log(coordinator_log_path(fed["db"])), agents


def _settled(fed, timeout: float = 20.0):
    """The logs once every agent has recorded the acknowledgement of its last upload (the job
    ends when the coordinator takes the last partial decryption, a moment before its sender
    reads the answer)."""
    deadline = time.monotonic() + timeout
    while True:
        coordinator, agents = _logs(fed)
        taken = {}
        for r in coordinator:
            if r.type in ("contribution", "partial"):
                taken[r.body["agency"]] = taken.get(r.body["agency"], 0) + 1
        if all(
            sum(r.type == "anchor" and "upload" in r.body for r in agents[a]) == taken.get(a, 0)
            for a in AGENCIES
        ):
            return coordinator, agents
        assert time.monotonic() < deadline, "agents did not record every acknowledgement"
        time.sleep(0.05)


def _backup(src, dst) -> None:
    """A consistent copy of a live SQLite file (its WAL included)."""
    live = sqlite3.connect(f"file:{src}?mode=ro", uri=True)
    copy = sqlite3.connect(dst)
    try:
        live.backup(copy)
    finally:
        live.close()
        copy.close()


def _charges(fed):
    out = {}
    for a in AGENCIES:
        with Ledger(fed["agents"][a].config.ledger_file) as ledger:
            out[a] = ledger.charges()
    return out


def test_dp_query_is_charged_and_every_upload_is_anchored(federation, capsys):
    done = _run(federation["client"], SPEC)
    assert done.state == "succeeded", done.failure
    charges = _charges(federation)
    for a in AGENCIES:
        assert [(c["dataset"], c["job"], c["epsilon"], c["delta"]) for c in charges[a]] == [
            ("requests", done.job_id, 1.0, 1e-6)
        ]
    coordinator, agents = _settled(federation)
    keys = load_federation(federation["files"].public).signing_keys
    summaries = cross_check(coordinator, agents, agency_keys=keys)
    assert all(s.ok for s in summaries), [str(f) for s in summaries for f in s.findings]
    uploads = [r for r in coordinator if r.type in ("contribution", "partial")]
    assert {r.body["agency"] for r in uploads if r.type == "contribution"} == set(AGENCIES)
    assert sum(r.type == "partial" for r in uploads) >= 2
    assert next(r.type for r in coordinator if r.job == done.job_id) == "job"
    assert [r for r in coordinator if r.job == done.job_id][-1].body["state"] == "succeeded"
    for a, records in agents.items():
        anchors = [r for r in records if r.type == "anchor" and r.job == done.job_id]
        sent = {r.body["sha256"] for r in records if r.type in ("contribution", "partial")}
        accepted = [r for r in uploads if r.body["agency"] == a and r.body["sha256"] in sent]
        # every upload the coordinator took was acknowledged with its signed head (a late
        # partial decryption, after the release, is refused and gets none)
        assert anchors and len(anchors) == len(accepted)
        for anchor in anchors:
            head = anchor.body["anchor"]
            target = coordinator[head["records"] - 1]
            assert target.hash.hex() == head["head"]
            assert (
                target.body["agency"] == a
                and target.body["sha256"] == (anchor.body["upload"]["sha256"])
            )
        budget = [r for r in records if r.type == "budget"]
        assert budget[-1].body["spent_epsilon"] == 1.0
    code = main(
        [
            "audit",
            "verify",
            str(coordinator_log_path(federation["db"])),
            "--against",
            *(str(federation["agents"][a].config.audit_file) for a in AGENCIES),
            "--federation",
            str(federation["files"].public),
        ]
    )
    out = capsys.readouterr().out
    assert code == 0, out
    assert out.count(": OK") == 4
    assert "signed heads held by the agencies" in out.splitlines()[0]  # the coordinator's


def test_query_beyond_the_budget_is_refused_and_the_ledgers_do_not_change(federation, capsys):
    before = _charges(federation)
    _, agents_before = _logs(federation)
    done = _run(federation["client"], SPEC)
    assert done.state == "failed"
    assert "privacy budget" in done.failure and "would be exceeded" in done.failure
    assert _charges(federation) == before
    coordinator, agents = _logs(federation)
    ours = [r for r in coordinator if r.job == done.job_id]
    assert ours[0].type == "job" and ours[-1].type == "result"
    assert ours[-1].body["state"] == "failed"
    declines = [r for r in ours if r.type == "decline"]
    assert declines and all("would be exceeded" in r.body["reason"] for r in declines)
    assert not [r for r in ours if r.type in ("contribution", "partial")]
    for a in AGENCIES:
        new = agents[a][len(agents_before[a]) :]
        types = [r.type for r in new if r.job == done.job_id]
        assert "contribution" not in types and "partial" not in types  # nothing computed
        assert "decline" in types
        refused = [r for r in new if r.type == "budget"]
        assert refused and "would be exceeded" in refused[0].body["refused"]
    code = main(["agent", "budget", "--config", federation["configs"]["d2"]])
    out = capsys.readouterr().out
    assert code == 0
    assert "budget epsilon=1.5, delta=1e-05 per dataset per month" in out
    assert "epsilon 0.5 of 1.5" in out
    assert "requests" in out and "(1 job)" in out


def test_a_coordinator_rewriting_its_log_is_caught_by_the_agents(federation, tmp_path, capsys):
    src = coordinator_log_path(federation["db"])
    copy = tmp_path / "coordinator.audit.sqlite"
    _backup(src, copy)
    con = sqlite3.connect(f"file:{federation['db']}?mode=ro", uri=True)
    (seed,) = con.execute("SELECT value FROM secrets WHERE name = 'audit-signing-key'").fetchone()
    con.close()
    key = SigningKey(bytes(seed))
    records = read_log(copy)
    assert records[0].body["public_key"] == key.public_key.hex()
    k = next(
        i for i, r in enumerate(records) if r.type == "contribution" and r.body["agency"] == "d2"
    )

    def hide_d2(items):  # claim another contribution from d2, re-signing everything after it
        time_, type_, job, round_, body = items[k]
        items[k] = (time_, type_, job, round_, {**body, "sha256": "00" * 32})
        return items

    rewrite(copy, key, COORDINATOR, hide_d2)
    alone = main(["audit", "verify", str(copy)])
    assert alone == 0  # consistent and signed: only the agents can tell
    capsys.readouterr()
    agent_logs = [str(federation["agents"][a].config.audit_file) for a in AGENCIES]
    code = main(["audit", "verify", str(copy), "--against", *agent_logs])
    out = capsys.readouterr().out
    assert code == 1
    assert f"rewritten [record {k}]" in out, out
    # an agency's log with a record removed is caught too, and located
    agent_copy = tmp_path / "d3.audit.sqlite"
    _backup(federation["agents"]["d3"].config.audit_file, agent_copy)
    con = sqlite3.connect(agent_copy, isolation_level=None)
    pos = con.execute("SELECT pos FROM records WHERE type = 'contribution' LIMIT 1").fetchone()[0]
    con.execute("DELETE FROM records WHERE pos = ?", (pos,))
    con.close()
    code = main(
        [
            "audit",
            "verify",
            str(coordinator_log_path(federation["db"])),
            "--against",
            *agent_logs[:2],
            str(agent_copy),
        ]
    )
    out = capsys.readouterr().out
    assert code == 1 and "d3: " in out and f"deleted [record {pos - 1}]" in out, out


def test_enrollments_are_recorded_in_the_coordinators_audit_log(tmp_path):
    from fedcity.governance.audit import verify_log
    from fedcity.governance.enrollment import CADirectory, EnrollmentRegistry
    from fedcity.net.client import enroll

    files = deal_federation(tmp_path / "fed", ["e1", "e2"], 2, key_bits=512)
    folder = CADirectory.init(tmp_path / "ca", "riverside", ("localhost", "127.0.0.1"))
    db = tmp_path / "coordinator.sqlite"
    server = serve(
        CoordinatorConfig(
            listen="127.0.0.1:0",
            db=db,
            federation=files.public,
            credentials="",
            ca_dir=folder.root,
            enroll_listen="127.0.0.1:0",
            max_wait=0.5,
            tick_interval=0.1,
        )
    )
    registry = EnrollmentRegistry(folder.registry)
    try:
        for name, role in (("e1", "agency"), ("analyst", "scientist")):
            enroll(
                f"127.0.0.1:{server.enroll_port}",
                ca_file=folder.ca_cert,
                token=registry.invite(name, role),
                name=name,
                out=tmp_path / "creds" / name,
            )
        records = read_log(coordinator_log_path(db))
    finally:
        registry.close()
        server.stop(grace=0)
    assert verify_log(records).ok
    enrolled = [(r.body["action"], r.body["name"], r.body["role"]) for r in records[1:]]
    assert enrolled == [("enroll", "e1", "agency"), ("enroll", "analyst", "scientist")]
    assert all(r.type == "enroll" and r.body["serial"] for r in records[1:])
