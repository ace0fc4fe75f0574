"""Agency policy: rules named on refusal, approvals while the daemon runs, differencing.

Unit tests of the sans-IO rules and the approval book, then a real coordinator on loopback
with three real agent daemons (threads) answering federated queries.
"""

from __future__ import annotations

import threading
import time

import pytest

from fedcity.analytics.spec import QuerySpec
from fedcity.cli import main
from fedcity.governance.approvals import ApprovalBook
from fedcity.governance.policy import (
    AgencyPolicy,
    JobFacts,
    PolicyError,
    PolicyRefusal,
    set_difference_breach,
)
from fedcity.net.agent import Agent, AgentConfig
from fedcity.net.ceremony import deal_federation, read_token
from fedcity.net.client import Client, ClientError
from fedcity.net.coordinator import CoordinatorConfig, serve

AGENCIES = ["d1", "d2", "d3"]
JOB = JobFacts("0" * 12, "query", "analyst", ("d1", "d2", "d3"), "requests")


def test_each_rule_refuses_with_its_name():
    with pytest.raises(PolicyRefusal, match="'rival' is not in allowed_scientists") as info:
        AgencyPolicy(allowed_scientists=("analyst",)).check(
            JobFacts("1" * 12, "ridge", "rival", ("d1", "d2"), "x")
        )
    assert info.value.rule == "allowed_scientists"
    with pytest.raises(PolicyRefusal, match="require_dp = true"):
        AgencyPolicy(require_dp=True).check(JOB)
    noisy = JobFacts("1" * 12, "ridge", "analyst", ("d1", "d2"), "x", {"epsilon": 8.0})
    with pytest.raises(PolicyRefusal, match=r"epsilon = 8.0; this agency allows at most 4.0"):
        AgencyPolicy(require_dp=True, max_epsilon=4.0).check(noisy)
    AgencyPolicy(require_dp=True, max_epsilon=8.0).check(noisy)
    with pytest.raises(PolicyRefusal, match=r"differ from an earlier job's .* by 1 agency"):
        AgencyPolicy(min_set_difference=2).check(JOB, [frozenset({"d1", "d2"})])
    AgencyPolicy(min_set_difference=2).check(JOB, [frozenset(AGENCIES)])  # the same set: fine
    assert set_difference_breach({"a", "b", "c"}, [{"a"}], 2) is None  # differs by 2
    assert AgencyPolicy(approval=("query",)).needs_approval(JOB)
    assert not AgencyPolicy(approval=("ridge",)).needs_approval(JOB)


@pytest.mark.parametrize(
    ("table", "match"),
    [
        ({"allowed_scientists": "analyst"}, "allowed_scientists must be a list"),
        ({"require_dp": "yes"}, "require_dp must be true or false"),
        ({"max_epsilon": -1}, "max_epsilon must be a number"),
        ({"max_delta": 2}, "max_delta must be a number"),
        ({"approval": [1]}, "approval must be a list"),
        ({"min_set_difference": -1}, "min_set_difference must be an integer"),
    ],
)
def test_bad_policies_are_refused(table, match):
    with pytest.raises(PolicyError, match=match):
        AgencyPolicy.from_dict(table)


def test_the_approval_book(tmp_path):
    book = ApprovalBook(tmp_path / "a.sqlite")
    assert book.ask(JOB) is None and book.ask(JOB) is None
    assert [p.job_id for p in book.jobs(waiting_only=True)] == [JOB.job_id]
    with pytest.raises(ValueError, match="a denial needs a reason"):
        book.decide(JOB.job_id, approve=False, by="clerk")
    with pytest.raises(KeyError, match="no job"):
        book.decide("f" * 12, approve=True, by="clerk")
    assert book.decide(JOB.job_id, approve=True, by="clerk").decision == "approved"
    with pytest.raises(ValueError, match="already approved"):
        book.decide(JOB.job_id, approve=False, by="clerk", reason="changed my mind")
    assert book.decision(JOB.job_id) == ("approved", "")
    book.served(JOB)
    assert book.earlier("requests", besides="x" * 12) == [frozenset(AGENCIES)]
    assert book.earlier("requests", besides=JOB.job_id) == []
    book.close()


SPEC = """
table = "requests"
group_by = ["ward"]

[columns.ward]
levels = ["w1", "w2"]

[[aggregate]]
name = "n"
func = "count"
"""


@pytest.fixture
def federation(tmp_path):
    files = deal_federation(
        tmp_path / "fed", AGENCIES, 2, key_bits=512, scientists=("analyst", "rival")
    )
    server = serve(
        CoordinatorConfig(
            listen="127.0.0.1:0",
            db=tmp_path / "coordinator.sqlite",
            federation=files.public,
            credentials=files.credentials,
            insecure=True,
            heartbeat_interval=0.5,
            max_wait=0.5,
            tick_interval=0.05,
        )
    )
    policies = {
        "d1": 'allowed_scientists = ["analyst"]',
        "d2": 'approval = ["query"]\nmin_set_difference = 2',
        "d3": "",
    }
    agents, threads, configs = [], [], {}
    for agency in AGENCIES:
        folder = files.shares[agency].parent
        rows = "\n".join(f"w{1 + i % 2}" for i in range(30))
        (folder / "requests.csv").write_text("ward\n" + rows + "\n")
        path = folder / "agency.toml"
        path.write_text(
            f"""agency = "{agency}"
coordinator = "127.0.0.1:{server.port}"
insecure = true
token_file = "token"
key_file = "share.json"
signing_key_file = "signing-key.json"
federation_file = "../../federation-public.json"
log_file = "served.jsonl"

[tables.requests]
path = "requests.csv"
columns = {{ ward = "category" }}

[policy]
{policies[agency]}
"""
        )
        configs[agency] = path
        agent = Agent(AgentConfig.from_toml(path), fetch_wait_ms=200)
        agents.append(agent)
        threads.append(
            threading.Thread(target=agent.run, kwargs={"handle_signals": False}, daemon=True)
        )
    for t in threads:
        t.start()
    address = f"127.0.0.1:{server.port}"
    clients = {
        who: Client(address, read_token(files.scientist_tokens[who]), insecure=True, timeout=10)
        for who in files.scientist_tokens
    }
    deadline = time.monotonic() + 20
    while sum(a.connected for a in clients["analyst"].agencies()) < 3:
        assert time.monotonic() < deadline, "agents did not connect"
        time.sleep(0.05)
    try:
        yield {"clients": clients, "configs": configs, "root": tmp_path}
    finally:
        for c in clients.values():
            c.close()
        for a in agents:
            a.stop()
        for t in threads:
            t.join(timeout=10)
        server.stop(grace=0)


def _until(check, what, timeout=30.0):
    deadline = time.monotonic() + timeout
    while not (value := check()):
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.05)
    return value


def test_approval_waits_then_runs_and_a_denial_reaches_the_scientist(federation, capsys):
    client = federation["clients"]["analyst"]
    job = client.submit_query(QuerySpec.from_toml(SPEC))
    status = _until(lambda: (s := client.status(job)).waiting and s, "d2 to hold the job")
    assert "needs a person's approval at d2" in status.waiting["d2"]
    assert status.state == "running"
    config = str(federation["configs"]["d2"])
    assert main(["agent", "pending", "--config", config]) == 0
    assert job in capsys.readouterr().out
    assert main(["agent", "approve", job, "--config", config, "--by", "clerk"]) == 0
    final = _until(lambda: (s := client.status(job)).state != "running" and s, "the job")
    assert final.state == "succeeded" and not final.departures
    # a denial: the job goes on without d2 (min 2 agencies) and says why
    job2 = client.submit_query(QuerySpec.from_toml(SPEC))
    _until(lambda: client.status(job2).waiting, "d2 to hold the second job")
    deny = ["agent", "deny", job2, "--config", config, "--reason", "not this month"]
    assert main(deny) == 0
    final = _until(lambda: (s := client.status(job2)).state != "running" and s, "job 2")
    assert "denied job" in final.departures["d2"] and "not this month" in final.departures["d2"]


def test_a_scientist_outside_the_policy_is_refused_with_the_rule(federation):
    rival = federation["clients"]["rival"]
    job = rival.submit_query(QuerySpec.from_toml(SPEC))
    # d1 refuses at once and names the rule (d2 holds the job for approval meanwhile)
    status = _until(lambda: (s := rival.status(job)).departures and s, "d1's refusal")
    assert "'rival' is not in allowed_scientists" in status.departures["d1"]
    assert rival.cancel(job).state == "cancelled"


def test_differencing_is_refused_at_submission(federation):
    client = federation["clients"]["analyst"]
    config = str(federation["configs"]["d2"])
    job = client.submit_query(QuerySpec.from_toml(SPEC))
    _until(lambda: client.status(job).waiting, "d2 to hold the job")
    assert main(["agent", "approve", job, "--config", config]) == 0
    _until(lambda: client.status(job).state == "succeeded", "the first job")
    with pytest.raises(ClientError, match=r"policy of d2: .* differ from job .* by 1") as info:
        client.submit_query(QuerySpec.from_toml(SPEC), agencies=["d1", "d3"])
    assert info.value.code_name == "FAILED_PRECONDITION"
