"""A differentially private training job is charged at its first assignment, or refused there.

Real coordinator (TLS) and agent daemons on loopback. The agencies charge the job's submitted
(ε, δ) at its first assignment, whatever that round is (exact preprocessing statistics, or a
noisy round when the job brings public preprocessing), so a job beyond the budget is refused
with nothing computed at all.
"""

from __future__ import annotations

import time

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

from fedcity.governance.auditlog import read_log
from fedcity.governance.ledger import Ledger
from fedcity.net.ceremony import deal_federation, read_token
from fedcity.net.client import Client, ClientError

AGENCIES = ["t1", "t2", "t3"]


BODY = (
    VISITS
    + """
[policy]
budget = { epsilon = 0.5, delta = 1e-5, period = "total" }
"""
)


@pytest.fixture(scope="module")
def federation(tmp_path_factory):
    root = tmp_path_factory.mktemp("training")
    files = deal_federation(root, AGENCIES, 2, key_bits=512)
    server = tls_coordinator(root, files)
    rng = np.random.default_rng(8)
    configs = []
    for agency in AGENCIES:
        folder = files.shares[agency].parent
        write_visits(folder / "visits.csv", rng, 80)
        configs.append(agency_toml(folder, agency, server.port, BODY, log=False))
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


def _params() -> dict:
    """The job's parameters; public preprocessing where DP jobs need it."""
    try:
        from fedcity.learn.dp import public_preprocessing  # type: ignore[attr-defined]
    except ImportError:
        return {"C": 1.0}
    from fedcity.data.dataset import FeatureSpec

    spec = FeatureSpec(numeric=("x1", "x2"), categorical={"kind": ("a", "b")}, label="y")
    pre = public_preprocessing(spec, ranges={"x1": (-4, 4), "x2": (-4, 4)}, total_weight=240)
    return {"C": 1.0, "preprocessing": pre.to_params()}


def _submit(client: Client, epsilon: float) -> str:
    return client.submit(
        "logistic_regression",
        _params(),
        "visits",
        privacy={"epsilon": epsilon, "delta": 1e-6, "clip_norm": 1.0, "rounds": 2},
    )


def _charges(fed) -> dict[str, list]:
    out = {}
    for name, agent in fed["agents"].items():
        with Ledger(agent.config.ledger_file) as ledger:
            out[name] = [(c["job"], c["epsilon"]) for c in ledger.charges()]
    return out


def test_a_training_job_beyond_the_budget_computes_nothing(federation):
    client = federation["client"]
    job = _submit(client, 1.0)
    events = list(client.watch(job, timeout=120))
    assert events[-1].state == "failed"
    assert "would be exceeded" in events[-1].failure
    assert events[-1].rounds_done == 0
    assert _charges(federation) == {a: [] for a in AGENCIES}
    for agent in federation["agents"].values():
        types = [r.type for r in read_log(agent.config.audit_file) if r.job == job]
        assert "contribution" not in types and "budget" in types and "decline" in types


def test_a_training_job_is_charged_at_its_first_assignment(federation):
    client = federation["client"]
    job = _submit(client, 0.25)

    def charged() -> bool:
        return all(c == [(job, 0.25)] for c in _charges(federation).values())

    deadline = time.monotonic() + 60
    while not charged():
        assert time.monotonic() < deadline, _charges(federation)
        time.sleep(0.1)
    try:  # it may already have ended on its own budget, even between two calls
        client.cancel(job)
    except ClientError as exc:
        assert "already failed" in str(exc), exc
    for agent in federation["agents"].values():
        records = [r for r in read_log(agent.config.audit_file) if r.job == job]
        types = [r.type for r in records]
        # charged at the job's first assignment, before anything was computed or sent
        assert types[:2] == ["job", "budget"]
        assert records[1].round == records[0].round == 0
