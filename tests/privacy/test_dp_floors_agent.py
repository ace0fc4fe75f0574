"""Agency DP floors over the agent path: real coordinator (TLS) and agent daemons on loopback.

Each agent reads its floors from ``[policy]`` of ``agency.toml``; a DP training job whose
settings fall below one agency's floor is refused by that agency before anything is charged
or computed, and the data scientist sees the rule named in ``fedcity job watch``.
"""

from __future__ import annotations

import numpy as np
import pytest
from daemons import (
    VISITS,
    agency_toml,
    running_agents,
    tls_coordinator,
    wait_connected,
    write_visits,
)

from fedcity.data.dataset import FeatureSpec
from fedcity.governance.auditlog import read_log
from fedcity.governance.ledger import Ledger
from fedcity.learn.dp import public_preprocessing
from fedcity.net.ceremony import deal_federation, read_token
from fedcity.net.client import Client

AGENCIES = ["f1", "f2", "f3"]
FLOORS = {
    "f1": 'max_clip_norm = 0.5\nbudget = { epsilon = 10.0, delta = 1e-5, period = "total" }',
    "f2": "",
    "f3": "",
}


DATASET = (
    VISITS
    + """
[policy]
"""
)


@pytest.fixture(scope="module")
def federation(tmp_path_factory):
    root = tmp_path_factory.mktemp("floors")
    files = deal_federation(root, AGENCIES, 2, key_bits=512)
    server = tls_coordinator(root, files)
    rng = np.random.default_rng(5)
    configs = []
    for agency in AGENCIES:
        folder = files.shares[agency].parent
        write_visits(folder / "visits.csv", rng, 60)
        body = DATASET + FLOORS[agency]
        configs.append(agency_toml(folder, agency, server.port, body, log=False))
    client = Client(
        f"127.0.0.1:{server.port}",
        read_token(files.scientist_tokens["analyst"]),
        ca_file=files.ca_cert,
    )
    try:
        with running_agents(configs) as agents:
            wait_connected(client, len(AGENCIES))
            yield {"client": client, "agents": {a.config.agency: a for a in agents}}
    finally:
        client.close()
        server.stop(grace=1.0)


def _submit(client: Client, clip_norm: float) -> str:
    spec = FeatureSpec(numeric=("x1", "x2"), categorical={"kind": ("a", "b")}, label="y")
    pre = public_preprocessing(spec, ranges={"x1": (-4, 4), "x2": (-4, 4)}, total_weight=180)
    return client.submit(
        "logistic_regression",
        {"C": 1.0, "max_iter": 2, "preprocessing": pre.to_params()},
        "visits",
        privacy={"epsilon": 4.0, "delta": 1e-6, "clip_norm": clip_norm, "rounds": 2},
        min_agencies=3,
    )


def test_the_policy_floor_is_read_from_agency_toml(federation):
    floor = federation["agents"]["f1"].node.dp_floor
    assert floor is not None and floor.max_clip_norm == 0.5


def test_settings_below_an_agency_floor_are_refused_with_the_rule_and_nothing_charged(
    federation,
):
    client = federation["client"]
    job = _submit(client, clip_norm=1.0)
    events = list(client.watch(job, timeout=120))
    assert events[-1].state == "failed"
    assert "max_clip_norm" in events[-1].failure and "'f1'" in events[-1].failure
    assert events[-1].rounds_done == 0
    f1 = federation["agents"]["f1"]
    with Ledger(f1.config.ledger_file) as ledger:
        assert [c for c in ledger.charges() if c["job"] == job] == []
    types = [r.type for r in read_log(f1.config.audit_file) if r.job == job]
    assert "contribution" not in types and "budget" not in types


def test_settings_within_every_floor_run_and_are_charged(federation):
    client = federation["client"]
    job = _submit(client, clip_norm=0.5)
    events = list(client.watch(job, timeout=180))
    assert events[-1].state == "succeeded", events[-1].failure
    f1 = federation["agents"]["f1"]
    with Ledger(f1.config.ledger_file) as ledger:
        assert [(c["job"], c["epsilon"]) for c in ledger.charges()] == [(job, 4.0)]
