"""The data scientist sees what happened: job list, status, logs, departures with reasons.

Real coordinator on loopback; in-test agents driven step by step (``loopback.Agent``), and a
real agent daemon for the clean-stop case.
"""

from __future__ import annotations

import json
import threading
import time

import grpc
import pytest
from loopback import (
    AGENCIES,
    auth,
    channel,
    drive,
    refused,
    registered_agents,
    runtime,
    scientist,
    start,
    submit,
)

from fedcity.net import messages
from fedcity.net.client import Client, ClientError
from fedcity.v1 import federation_pb2 as fpb
from fedcity.v1 import federation_pb2_grpc as fpb_grpc

Code = grpc.StatusCode


def _client(server) -> Client:
    return Client(f"127.0.0.1:{server.port}", "token-of-analyst", insecure=True)


def test_a_departing_agency_is_named_with_its_reason(files, key, data, servers):
    server = start(files)
    servers.append(server)
    agents = registered_agents(server, key, data)
    job_id = submit(server.port, min_agencies=2).job_id
    watch = scientist(server.port).WatchJob(
        fpb.JobRef(job_id=job_id), metadata=auth("analyst"), timeout=60
    )
    first = next(iter(watch))
    assert first.status.participants == 3 and first.status.job_type == "logistic_regression"
    # district-03 stops its agent: it leaves at once, with its reason
    reply = agents[2].stub.Leave(
        fpb.LeaveRequest(agency=AGENCIES[2], reason="the agent received SIGTERM"),
        metadata=auth(AGENCIES[2]),
        timeout=10,
    )
    assert reply.jobs_left == 1
    notice = next(e for e in watch if e.notice)
    assert notice.notice.startswith(f"{AGENCIES[2]} left the job: stopped its agent")
    assert "SIGTERM" in notice.notice
    watch.cancel()
    drive(agents[:2], lambda: runtime(server, job_id).state != "running")
    with _client(server) as client:
        status = client.status(job_id)
        assert status.state == "succeeded"
        assert status.departures == {AGENCIES[2]: "stopped its agent (the agent received SIGTERM)"}
        assert status.summary.endswith(f"with 2 of 3 agencies ({AGENCIES[2]} left)")
        result = client.result(job_id)
        assert result["job"]["left"] == status.departures
        logs = client.logs(job_id)
        listed = client.jobs()
    assert logs[0].split(" ", 2)[2].startswith("submitted by analyst: logistic_regression")
    assert any(f"round 1: {AGENCIES[0]} contributed" in line for line in logs)
    assert any(line.startswith("round 1 released: statistics") for line in logs)
    assert any(f"{AGENCIES[2]} left: stopped its agent" in line for line in logs)
    assert logs[-2].startswith("succeeded after") and "finished with 2 of 3" in logs[-1]
    assert [e.job_id for e in listed] == [job_id]


def test_the_cli_lists_explains_and_exports_jobs(
    files, key, data, servers, tmp_path, capsys, monkeypatch
):
    import pickle

    monkeypatch.setenv("COLUMNS", "200")  # rich tables: no truncation in the captured output

    from fedcity.cli import main

    server = start(files)
    servers.append(server)
    agents = registered_agents(server, key, data)
    job_id = submit(server.port).job_id
    drive(agents, lambda: runtime(server, job_id).state != "running")
    token = tmp_path / "token"
    token.write_text("token-of-analyst")
    token.chmod(0o600)
    connect = [
        "--coordinator",
        f"127.0.0.1:{server.port}",
        "--insecure",
        "--token-file",
        str(token),
    ]
    assert main(["job", "list", *connect]) == 0
    out = capsys.readouterr().out
    assert job_id in out and "logistic_regression" in out and "succeeded" in out
    assert main(["job", "status", job_id, *connect]) == 0
    assert capsys.readouterr().out.startswith(f"job {job_id} succeeded after")
    assert main(["job", "logs", job_id, *connect]) == 0
    logs = capsys.readouterr().out
    assert "submitted by analyst" in logs and "round 1 released" in logs
    model = tmp_path / "model.pkl"
    assert main(["job", "result", job_id, *connect, "--model", str(model)]) == 0
    assert "load it with pickle.load" in capsys.readouterr().out
    frame, _, _ = data
    estimator = pickle.loads(model.read_bytes())
    proba = estimator.predict_proba(frame)
    assert proba.shape == (len(frame), 2)
    assert main(["job", "result", job_id, *connect, "--model", str(model)]) == 1  # no overwrite
    assert main(["job", "list", *connect, "--limit", "501"]) == 2


def test_a_decline_reason_reaches_the_failure(files, key, data, servers):
    server = start(files)
    servers.append(server)
    agents = registered_agents(server, key, data)
    job_id = submit(server.port, min_agencies=3).job_id
    a = agents[1].fetch(wait_ms=2000)
    agents[1].stub.Decline(
        fpb.DeclineRequest(
            agency=AGENCIES[1],
            job_id=job_id,
            round=a.round,
            reason=f"agency '{AGENCIES[1]}': labels must be 0/1, found 2.0",
        ),
        metadata=auth(AGENCIES[1]),
        timeout=10,
    )
    drive([agents[0], agents[2]], lambda: runtime(server, job_id).state != "running")
    rt = runtime(server, job_id)
    assert rt.state == "failed"
    assert "why agencies left" in rt.failure and "labels must be 0/1, found 2.0" in rt.failure
    with _client(server) as client:
        assert "labels must be 0/1" in client.status(job_id).departures[AGENCIES[1]]


def test_a_job_an_agency_policy_refuses_is_refused_at_submission(files, key, data, servers):
    server = start(files)
    servers.append(server)
    agents = registered_agents(server, key, data)
    # district-02 allows only the preprocessing statistics
    agents[1].stub.Register(
        fpb.RegisterRequest(
            agency=AGENCIES[1],
            datasets=[
                fpb.DatasetInfo(name=n, feature_spec_json=messages.feature_spec_to_json(t.spec))
                for n, t in agents[1].tables.items()
            ],
            software_version="test",
            task_kinds=["stats.counts", "stats.mean", "stats.variance"],
        ),
        metadata=auth(AGENCIES[1]),
        timeout=10,
    )
    details = refused(Code.FAILED_PRECONDITION, lambda: submit(server.port))
    assert f"{AGENCIES[1]} does not allow ['glm.newton']" in details
    assert "allowed_kinds" in details
    # without it, the job is accepted
    assert submit(server.port, agencies=[AGENCIES[0], AGENCIES[2]]).job_id


def test_listing_and_logs_are_bounded_and_own_jobs_only(files, key, data, servers):
    server = start(files)
    servers.append(server)
    registered_agents(server, key, data)
    job_id = submit(server.port).job_id
    jobs = scientist(server.port)
    refused(
        Code.INVALID_ARGUMENT,
        lambda: jobs.ListJobs(fpb.ListJobsRequest(limit=501), metadata=auth("analyst"), timeout=5),
        match="exceeds 500",
    )
    rival = jobs.ListJobs(fpb.ListJobsRequest(), metadata=auth("rival"), timeout=5)
    assert list(rival.jobs) == []
    for call in (jobs.GetStatus, jobs.JobLogs):
        refused(
            Code.PERMISSION_DENIED,
            lambda call=call: call(fpb.JobRef(job_id=job_id), metadata=auth("rival"), timeout=5),
        )
    refused(
        Code.PERMISSION_DENIED,
        lambda: fpb_grpc.AgentServiceStub(channel(server.port)).Leave(
            fpb.LeaveRequest(agency=AGENCIES[0]), metadata=auth(AGENCIES[1]), timeout=5
        ),
    )


def test_a_cleanly_stopped_daemon_leaves_at_once(tmp_path, servers):
    from fedcity.net.agent import Agent, AgentConfig
    from fedcity.net.ceremony import deal_federation, read_token
    from fedcity.net.coordinator import CoordinatorConfig, serve

    files = deal_federation(tmp_path, ["d1", "d2"], 2, key_bits=512)
    # heartbeats every 30 s: the liveness timeout (90 s) cannot be what disconnects it
    server = serve(
        CoordinatorConfig(
            listen="127.0.0.1:0",
            db=tmp_path / "coordinator.sqlite",
            federation=files.public,
            credentials=files.credentials,
            insecure=True,
            heartbeat_interval=30.0,
        )
    )
    servers.append(server)
    folder = files.shares["d1"].parent
    (folder / "t.csv").write_text("ward,x\na,1\nb,2\n")
    (folder / "agency.toml").write_text(
        f"""agency = "d1"
coordinator = "127.0.0.1:{server.port}"
insecure = true
token_file = "token"
key_file = "share.json"
signing_key_file = "signing-key.json"
federation_file = "../../federation-public.json"

[tables.t]
path = "t.csv"
columns = {{ ward = "category", x = "integer" }}
"""
    )
    agent = Agent(AgentConfig.from_toml(folder / "agency.toml"), fetch_wait_ms=500)
    thread = threading.Thread(target=agent.run, kwargs={"handle_signals": False}, daemon=True)
    thread.start()
    token = read_token(files.scientist_tokens["analyst"])
    with Client(f"127.0.0.1:{server.port}", token, insecure=True) as client:
        deadline = time.monotonic() + 30
        while not any(a.connected for a in client.agencies() if a.name == "d1"):
            assert time.monotonic() < deadline, "the agent did not connect"
            time.sleep(0.05)
        info = next(a for a in client.agencies() if a.name == "d1")
        assert info.tables == {"t": {"ward": "category", "x": "integer"}}
        agent.stop()
        thread.join(timeout=20)
        assert not thread.is_alive()
        assert not next(a for a in client.agencies() if a.name == "d1").connected
        # a new job leaves the departed agency out by default (it is not dropped later)
        spec = {"table": "t", "aggregate": [{"name": "n", "func": "count"}]}
        with pytest.raises(ClientError, match=r"0 agencies \[\] take part"):
            client.submit_query(spec)
    assert json.loads(files.public.read_text())["agencies"]


def test_a_dp_job_with_an_evaluation_is_refused(files, key, data, servers):
    server = start(files)
    servers.append(server)
    registered_agents(server, key, data)
    details = refused(
        Code.INVALID_ARGUMENT,
        lambda: submit(
            server.port,
            privacy_json=json.dumps({"epsilon": 1.0, "delta": 1e-6, "clip_norm": 1.0}),
            evaluate_dataset="inspections",
        ),
    )
    assert "released exactly, outside its privacy budget" in details
