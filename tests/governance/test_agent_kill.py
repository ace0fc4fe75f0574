"""An agent daemon killed with SIGKILL in the middle of charging its budget charges nothing.

``d3`` runs as a real ``fedcity agent run`` process with the ledger's test hook, which holds
the charge's transaction open (the charge written, not committed) and signals that it got
there; the test kills the process at that point. The ledger then holds no charge and is not
locked, the audit log verifies, and the restarted agent gets the same assignment again and
charges the job exactly once; the query succeeds.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time

import numpy as np
import pandas as pd

from fedcity.governance.audit import cross_check, verify_log
from fedcity.governance.auditlog import coordinator_log_path, read_log
from fedcity.governance.ledger import HOLD_ENV, Ledger
from fedcity.net.agent import Agent, AgentConfig
from fedcity.net.ceremony import deal_federation, load_federation, read_token
from fedcity.net.client import Client
from fedcity.net.coordinator import CoordinatorConfig, serve

AGENCIES = ["d1", "d2", "d3"]
SPEC = {
    "table": "requests",
    "columns": {"ward": {"levels": ["w1", "w2"]}, "amount": {"clip": [0, 100]}},
    "group_by": ["ward"],
    "aggregate": [{"name": "n", "func": "count"}, {"name": "s", "func": "sum", "column": "amount"}],
    "disclosure": {"min_count": 10},
    "privacy": {"epsilon": 1.0, "delta": 1e-6, "noise": "gaussian"},
}


def _config(folder, agency: str, port: int) -> str:
    path = folder / "agency.toml"
    path.write_text(
        f"""agency = "{agency}"
coordinator = "127.0.0.1:{port}"
token_file = "token"
key_file = "share.json"
signing_key_file = "signing-key.json"
federation_file = "../../federation-public.json"
ca_file = "../../tls/ca.pem"

[tables.requests]
path = "requests.csv"
columns = {{ ward = "category", amount = "integer" }}

[policy]
budget = {{ epsilon = 3.0, delta = 1e-5, period = "month" }}
"""
    )
    return str(path)


def _wait(check, what: str, proc=None, timeout: float = 60.0):
    deadline = time.monotonic() + timeout
    while True:
        value = check()
        if value:
            return value
        if proc is not None and proc.poll() is not None:
            raise AssertionError(f"{what}: the agent exited with {proc.returncode}")
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.05)


def _agent_process(config: str, log, env: dict[str, str]) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-m", "fedcity.cli", "agent", "run", "--config", config],
        stdout=log,
        stderr=subprocess.STDOUT,
        env=env,
        start_new_session=True,
    )


def test_agent_killed_while_charging_leaves_no_charge_and_charges_once_after(tmp_path):
    files = deal_federation(tmp_path, AGENCIES, 2, key_bits=512)
    server = serve(
        CoordinatorConfig(
            listen="127.0.0.1:0",
            db=tmp_path / "coordinator.sqlite",
            federation=files.public,
            credentials=files.credentials,
            tls_cert=files.server_cert,
            tls_key=files.server_key,
            heartbeat_interval=0.5,
            liveness_timeout=120.0,  # the killed agency stays in the job until it is back
            collect_timeout=120.0,
            max_wait=1.0,
            tick_interval=0.1,
        )
    )
    rng = np.random.default_rng(3)
    configs = {}
    for agency in AGENCIES:
        folder = files.shares[agency].parent
        pd.DataFrame(
            {"ward": rng.choice(["w1", "w2"], 60), "amount": rng.integers(0, 100, 60)}
        ).to_csv(folder / "requests.csv", index=False)
        configs[agency] = _config(folder, agency, server.port)
    agents = [Agent(AgentConfig.from_toml(configs[a]), fetch_wait_ms=500) for a in AGENCIES[:2]]
    threads = [
        threading.Thread(target=a.run, kwargs={"handle_signals": False}, daemon=True)
        for a in agents
    ]
    for t in threads:
        t.start()
    d3 = AgentConfig.from_toml(configs["d3"])
    hold = tmp_path / "d3-inside-its-charge"
    env = {k: v for k, v in os.environ.items() if k != HOLD_ENV}
    log = (tmp_path / "d3.log").open("ab")
    procs = [_agent_process(configs["d3"], log, {**env, HOLD_ENV: str(hold)})]
    client = Client(
        f"127.0.0.1:{server.port}",
        read_token(files.scientist_tokens["analyst"]),
        ca_file=files.ca_cert,
    )
    try:
        _wait(lambda: sum(a.connected for a in client.agencies()) == 3, "three agents")
        job = client.submit_query(SPEC)
        _wait(hold.exists, "d3 inside its charge", procs[0])
        os.killpg(procs[0].pid, signal.SIGKILL)
        assert procs[0].wait(timeout=30) == -signal.SIGKILL

        with Ledger(d3.ledger_file) as ledger:  # nothing charged, nothing locked
            assert ledger.charges() == []
            assert ledger._con.execute("PRAGMA integrity_check").fetchone() == ("ok",)
        records = read_log(d3.audit_file)
        keys = load_federation(files.public).signing_keys
        assert verify_log(records, key=keys["d3"]).ok
        assert [r.type for r in records if r.job == job] == ["job"]  # seen, never charged

        procs.append(_agent_process(configs["d3"], log, env))  # back, without the hook
        events = list(client.watch(job, timeout=120))
        assert events[-1].state == "succeeded", events[-1].failure
        with Ledger(d3.ledger_file) as ledger:
            charges = ledger.charges()
        assert [(c["job"], c["epsilon"]) for c in charges] == [(job, 1.0)]
        _wait(
            lambda: any(r.type == "anchor" for r in read_log(d3.audit_file)),
            "d3's acknowledged upload",
        )
        summaries = cross_check(
            read_log(coordinator_log_path(tmp_path / "coordinator.sqlite")),
            {a: read_log(AgentConfig.from_toml(configs[a]).audit_file) for a in AGENCIES},
            agency_keys=keys,
        )
        assert all(s.ok for s in summaries), [str(f) for s in summaries for f in s.findings]
    finally:
        client.close()
        for p in procs:
            if p.poll() is None:
                os.killpg(p.pid, signal.SIGKILL)
                p.wait(timeout=30)
        log.close()
        for a in agents:
            a.stop()
        for t in threads:
            t.join(timeout=10)
        server.stop(grace=1.0)
