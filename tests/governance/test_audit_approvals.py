"""A person's approval or denial of a job is a signed record of the agency's audit log.

Real coordinator (TLS) and agent daemons on loopback; ``d2`` holds queries for approval.
``fedcity agent approve`` and ``deny`` decide while the daemon runs; d2's log then reads
job → approve → contribution for the first query and job → deny → decline for the second,
and every log still cross-checks clean.
"""

from __future__ import annotations

from contextlib import ExitStack

import numpy as np
import pandas as pd
from daemons import agency_toml, running_agents, tls_coordinator, wait_connected, wait_until

from fedcity.cli import main
from fedcity.governance.audit import cross_check
from fedcity.governance.auditlog import coordinator_log_path, read_log
from fedcity.net.agent import AgentConfig
from fedcity.net.ceremony import deal_federation, load_federation, read_token
from fedcity.net.client import Client

AGENCIES = ["d1", "d2", "d3"]
SPEC = {
    "table": "requests",
    "columns": {"ward": {"levels": ["w1", "w2"]}},
    "group_by": ["ward"],
    "aggregate": [{"name": "n", "func": "count"}],
    "disclosure": {"min_count": 10},
}


TABLE = """
[tables.requests]
path = "requests.csv"
columns = { ward = "category" }

[policy]
"""


def test_approvals_and_denials_are_audited(tmp_path):
    files = deal_federation(tmp_path, AGENCIES, 2, key_bits=512)
    db = tmp_path / "coordinator.sqlite"
    server = tls_coordinator(tmp_path, files)
    rng = np.random.default_rng(4)
    configs = {}
    for agency in AGENCIES:
        folder = files.shares[agency].parent
        pd.DataFrame({"ward": rng.choice(["w1", "w2"], 50)}).to_csv(
            folder / "requests.csv", index=False
        )
        approval = 'approval = ["query"]' if agency == "d2" else ""
        path = agency_toml(folder, agency, server.port, TABLE + approval, log=False)
        configs[agency] = str(path)
    client = Client(
        f"127.0.0.1:{server.port}",
        read_token(files.scientist_tokens["analyst"]),
        ca_file=files.ca_cert,
    )
    stack = ExitStack()
    stack.enter_context(running_agents(list(configs.values())))
    try:
        wait_connected(client, len(AGENCIES))
        approved = client.submit_query(SPEC)
        wait_until(lambda: client.status(approved).waiting, "d2 to hold the first query")
        d2 = ["--config", configs["d2"]]
        assert main(["agent", "approve", approved, *d2, "--by", "clerk"]) == 0
        wait_until(lambda: client.status(approved).state == "succeeded", "the first query")
        denied = client.submit_query(SPEC)
        wait_until(lambda: client.status(denied).waiting, "d2 to hold the second query")
        assert main(["agent", "deny", denied, *d2, "--by", "clerk", "--reason", "not now"]) == 0
        wait_until(lambda: client.status(denied).state != "running", "the second query")
        audit = AgentConfig.from_toml(configs["d2"]).audit_file
        wait_until(
            lambda: any(r.type == "deny" for r in read_log(audit)), "d2 to record the denial"
        )
        records = read_log(audit)
        first = [r for r in records if r.job == approved]
        assert [r.type for r in first][:3] == ["job", "approve", "contribution"]
        assert first[1].body["by"] == "clerk" and first[1].body["submitted_by"] == "analyst"
        second = [r for r in records if r.job == denied]
        assert [r.type for r in second] == ["job", "deny", "decline"]
        assert second[1].body["reason"] == "not now"
        assert "not now" in second[2].body["reason"]
        summaries = cross_check(
            read_log(coordinator_log_path(db)),
            {a: read_log(AgentConfig.from_toml(configs[a]).audit_file) for a in AGENCIES},
            agency_keys=load_federation(files.public).signing_keys,
        )
        assert all(s.ok for s in summaries), [str(f) for s in summaries for f in s.findings]
    finally:
        stack.close()
        client.close()
        server.stop(grace=1.0)
