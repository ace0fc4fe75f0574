"""The networked coordinator: real gRPC on 127.0.0.1, a real SQLite file, in-test agents.

Agents here are the sans-IO :class:`AgencyNode` plus :mod:`fedcity.net.messages` over a real
channel, so these tests pin the coordinator's behaviour independently of the agent daemon.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.request
from pathlib import Path

import grpc
import numpy as np
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from loopback import (
    AGENCIES,
    DATASET,
    Agent,
    Code,
    auth,
    betas,
    channel,
    drive,
    job_state,
    refused,
    registered_agents,
    runtime,
    scientist,
    signing_keys,
    snapshot,
    start,
    submit,
)

from fedcity.core.nodes import AgencyNode
from fedcity.core.rounds import RoundPhase
from fedcity.crypto.signing import Statement
from fedcity.data.dataset import AgencyDataset, FeatureSpec
from fedcity.learn.jobs import estimator_from_result_json
from fedcity.net import messages
from fedcity.net.auth import AuthError
from fedcity.net.coordinator import (
    CoordinatorConfig,
    ManualClock,
    main,
    serve,
)
from fedcity.v1 import crypto_pb2 as cpb
from fedcity.v1 import federation_pb2 as fpb
from fedcity.v1 import federation_pb2_grpc as fpb_grpc


# -- tests ------------------------------------------------------------------------------------
def test_network_job_equals_local_federation(files, key, data, local_result, servers):
    frame, spec, tables = data
    metrics_port = _free_port()
    server = start(files, metrics_port=metrics_port)
    servers.append(server)
    agents = [Agent(n, t, key).connect(server.port) for n, t in zip(AGENCIES, tables, strict=True)]
    for a in agents:
        reply = a.register()
        assert reply.key_id == key[0].key_id and reply.heartbeat_interval_ms == 5000

    health = health_pb2_grpc.HealthStub(channel(server.port))
    for service in ("", "fedcity.v1.AgentService", "fedcity.v1.JobService"):
        reply = health.Check(health_pb2.HealthCheckRequest(service=service), timeout=5)
        assert reply.status == health_pb2.HealthCheckResponse.SERVING

    listed = scientist(server.port).ListAgencies(
        fpb.ListAgenciesRequest(), metadata=auth("analyst"), timeout=5
    )
    assert [a.name for a in listed.agencies] == list(AGENCIES)
    assert all(a.connected and a.datasets[0].name == DATASET for a in listed.agencies)

    status = submit(server.port)
    assert status.state == fpb.JOB_STATE_RUNNING and status.current_round_label
    stop = threading.Event()
    threads = [threading.Thread(target=a.run, args=(stop,), daemon=True) for a in agents]
    for t in threads:
        t.start()
    events = list(
        scientist(server.port).WatchJob(
            fpb.JobRef(job_id=status.job_id), metadata=auth("analyst"), timeout=60
        )
    )
    stop.set()
    for t in threads:
        t.join(timeout=10)
    assert not [e for a in agents for e in a.errors]

    final = events[-1].status
    assert final.state == fpb.JOB_STATE_SUCCEEDED, final.failure
    records = [json.loads(e.round_record_json) for e in events if e.round_record_json]
    assert [r["kind"] for r in records] == [r.kind for r in local_result.history_]
    assert all(r["contributors"] == list(AGENCIES) and len(r["decryptors"]) == 2 for r in records)
    assert final.rounds_done == len(records)

    result = scientist(server.port).GetResult(
        fpb.JobRef(job_id=status.job_id), metadata=auth("analyst"), timeout=10
    )
    np.testing.assert_allclose(
        betas(result.result_json), local_result.model_params_["beta"], rtol=0, atol=1e-8
    )
    pipeline = estimator_from_result_json(result.result_json, spec)
    np.testing.assert_allclose(
        pipeline.predict_proba(frame)[:, 1],
        local_result.estimator_.predict_proba(frame)[:, 1],
        rtol=0,
        atol=1e-8,
    )

    # the store: only ciphertexts and aggregates' partial decryptions, every event accounted
    n_rounds = len(records)
    kinds = [row[2] for row in snapshot(files["db"])[0]]
    assert kinds.count("contribution") == 3 * n_rounds
    assert kinds.count("close") == n_rounds and kinds.count("partial") == 2 * n_rounds
    text = urllib.request.urlopen(f"http://127.0.0.1:{server.metrics_port}/metrics").read()
    metrics = text.decode()
    assert f"fedcity_rounds_released_total {float(n_rounds)}" in metrics
    assert "fedcity_connected_agencies 3.0" in metrics
    assert 'fedcity_upload_bytes_total{kind="contribution"}' in metrics


def test_restart_mid_collection_and_mid_decryption_loses_nothing(
    files, key, data, local_result, servers
):
    _, _, tables = data
    agents = [Agent(n, t, key) for n, t in zip(AGENCIES, tables, strict=True)]

    # first run: several rounds, then two of three contributions of a round
    first = start(files)
    servers.append(first)
    for a in agents:
        a.connect(first.port).register()
    job_id = submit(first.port).job_id

    def collecting_fresh_round() -> bool:
        rt = runtime(first, job_id)
        rnd = rt.driver.round
        return rt.rounds_done >= 6 and rnd.phase is RoundPhase.COLLECTING and not rnd.contributions

    drive(agents, collecting_fresh_round)
    open_round = runtime(first, job_id).driver.round.task.round
    assert agents[0].step() == fpb.ACTION_CONTRIBUTE
    assert agents[1].step() == fpb.ACTION_CONTRIBUTE
    acknowledged = {a.name: a.uploads[-1][3] for a in agents[:2]}
    stored_before = snapshot(files["db"])[0]
    first.stop(grace=0)

    # second run: the two acknowledged uploads are back; the third completes the round
    second = start(files)
    servers.append(second)
    for a in agents:
        a.connect(second.port)
    rnd = runtime(second, job_id).driver.round
    assert rnd.task.round == open_round and rnd.phase is RoundPhase.COLLECTING
    assert rnd.contributions == acknowledged
    assert snapshot(files["db"])[0] == stored_before
    assert agents[0].fetch() is None  # not asked again: its upload counts
    again = agents[0].upload(
        job_id, open_round, fpb.PAYLOAD_KIND_CONTRIBUTION, acknowledged[AGENCIES[0]]
    )
    assert again.stored is False  # an identical retry is acknowledged, not stored twice
    assert agents[2].step() == fpb.ACTION_CONTRIBUTE
    assert runtime(second, job_id).driver.round.phase is RoundPhase.DECRYPTING
    assert agents[0].step() == fpb.ACTION_PARTIAL_DECRYPT
    second.stop(grace=0)

    # third run: mid-decryption; the stored partial stands, another share holder completes
    third = start(files)
    servers.append(third)
    for a in agents:
        a.connect(third.port)
    rnd = runtime(third, job_id).driver.round
    assert rnd.phase is RoundPhase.DECRYPTING and list(rnd.partials) == [AGENCIES[0]]
    drive(agents, lambda: job_state(third.port, job_id) == fpb.JOB_STATE_SUCCEEDED)
    result = scientist(third.port).GetResult(
        fpb.JobRef(job_id=job_id), metadata=auth("analyst"), timeout=10
    )
    np.testing.assert_allclose(
        betas(result.result_json), local_result.model_params_["beta"], rtol=0, atol=1e-8
    )
    history = json.loads(result.result_json)["history"]
    assert len(history) == len(local_result.history_)
    events = snapshot(files["db"])[0]
    contributions = {(row[3], row[4]): row[5] for row in events if row[2] == "contribution"}
    for name, payload in acknowledged.items():
        assert contributions[(name, open_round)] == payload


def test_bad_inputs_get_precise_status_and_leave_the_store_unchanged(files, key, data, servers):
    _, spec, _ = data
    server = start(files)
    servers.append(server)
    agents = registered_agents(server, key, data)
    job_id = submit(server.port).job_id
    a1, a2, a3 = agents
    assignment = a1.fetch()
    assert assignment is not None and assignment.action == fpb.ACTION_CONTRIBUTE
    assert assignment.dataset == DATASET and assignment.summands_min == 2
    kind, valid = a1.compute(assignment)
    r0 = assignment.round
    port = server.port
    jobs = scientist(port)
    raw = channel(port)
    before = snapshot(files["db"])

    def unchanged() -> None:
        assert snapshot(files["db"]) == before

    def forged(**changes) -> bytes:
        msg = cpb.EncryptedVector.FromString(valid)
        for k, v in changes.items():
            setattr(msg, k, v)
        return msg.SerializeToString()

    width = 2 * key[0].public_key.n_length // 8
    ciphertexts = cpb.EncryptedVector.FromString(valid).ciphertexts
    cases = [
        # authentication and roles
        (Code.UNAUTHENTICATED, lambda: a1.stub.Register(fpb.RegisterRequest(agency=a1.name))),
        (
            Code.UNAUTHENTICATED,
            lambda: a1.stub.Heartbeat(
                fpb.HeartbeatRequest(agency=a1.name),
                metadata=(("authorization", "Bearer nope"),),
            ),
        ),
        (
            Code.UNAUTHENTICATED,
            lambda: jobs.SubmitJob(fpb.JobSpec(), metadata=(("authorization", "Basic x"),)),
        ),
        (
            Code.PERMISSION_DENIED,
            lambda: a1.stub.Register(fpb.RegisterRequest(agency=a1.name), metadata=auth("analyst")),
        ),
        (
            Code.PERMISSION_DENIED,
            lambda: jobs.SubmitJob(fpb.JobSpec(job_type="ridge"), metadata=auth(a1.name)),
        ),
        (
            Code.PERMISSION_DENIED,
            lambda: a1.stub.Register(fpb.RegisterRequest(agency=a2.name), metadata=auth(a1.name)),
        ),
        (
            Code.PERMISSION_DENIED,
            lambda: a1.stub.FetchWork(fpb.FetchWorkRequest(agency=a2.name), metadata=auth(a1.name)),
        ),
        (Code.PERMISSION_DENIED, lambda: a1.upload(job_id, r0, kind, valid, agency=a2.name)),
        # stale or wrong references
        (Code.FAILED_PRECONDITION, lambda: a1.upload("0123456789ab", r0, kind, valid)),
        (Code.FAILED_PRECONDITION, lambda: a1.upload(job_id, r0 + 1, kind, valid)),
        (Code.FAILED_PRECONDITION, lambda: a1.upload(job_id, r0, fpb.PAYLOAD_KIND_PARTIAL, valid)),
        (
            Code.FAILED_PRECONDITION,
            lambda: a1.stub.FetchAggregate(
                fpb.AggregateRef(job_id=job_id, round=r0), metadata=auth(a1.name)
            ),
        ),
        (Code.INVALID_ARGUMENT, lambda: a1.upload(job_id, r0, fpb.PAYLOAD_KIND_AGGREGATE, valid)),
        # broken streams
        (Code.INVALID_ARGUMENT, lambda: a1.stub.Upload(iter([]), metadata=auth(a1.name))),
        (
            Code.INVALID_ARGUMENT,
            lambda: a1.stub.Upload(iter([fpb.Chunk(data=valid)]), metadata=auth(a1.name)),
        ),
        (
            Code.INVALID_ARGUMENT,
            lambda: a1.stub.Upload(_truncated(a1, job_id, r0, valid), metadata=auth(a1.name)),
        ),
        (
            Code.INVALID_ARGUMENT,
            lambda: a1.stub.Upload(_bad_sha(a1, job_id, r0, valid), metadata=auth(a1.name)),
        ),
        (
            Code.INVALID_ARGUMENT,
            lambda: a1.stub.Upload(_announcing(a1, job_id, r0, 2**31), metadata=auth(a1.name)),
        ),
        (
            Code.INVALID_ARGUMENT,
            lambda: a1.upload(job_id, r0, kind, valid + b"\0" * (1 << 20), chunk_bytes=2 << 20),
        ),
        (
            Code.RESOURCE_EXHAUSTED,
            lambda: _big_channel_upload(port, a1, job_id, r0, 5 << 20),
        ),
        # payloads the round refuses
        (Code.INVALID_ARGUMENT, lambda: a1.upload(job_id, r0, kind, b"not a protobuf \xff")),
        (
            Code.INVALID_ARGUMENT,
            lambda: a1.upload(
                job_id, r0, kind, forged(ciphertexts=b"\xff" * width + ciphertexts[width:])
            ),
        ),
        (
            Code.INVALID_ARGUMENT,
            lambda: a1.upload(
                job_id, r0, kind, forged(ciphertexts=bytes(width) + ciphertexts[width:])
            ),
        ),
        (Code.INVALID_ARGUMENT, lambda: a1.upload(job_id, r0, kind, forged(key_id=bytes(16)))),
        (Code.INVALID_ARGUMENT, lambda: a1.upload(job_id, r0, kind, forged(summands=2))),
        (Code.INVALID_ARGUMENT, lambda: a1.upload(job_id, r0, kind, forged(length=3))),
        # malformed protobuf on the wire
        (
            Code.INVALID_ARGUMENT,
            lambda: raw.unary_unary(
                "/fedcity.v1.JobService/SubmitJob",
                request_serializer=None,
                response_deserializer=None,
            )(b"\xff\xff\xff", metadata=auth("analyst"), timeout=5),
        ),
        (
            Code.INVALID_ARGUMENT,
            lambda: raw.stream_unary(
                "/fedcity.v1.AgentService/Upload",
                request_serializer=None,
                response_deserializer=None,
            )(iter([b"\x0a\xff"]), metadata=auth(a1.name), timeout=5),
        ),
        # registrations
        (
            Code.INVALID_ARGUMENT,
            lambda: a1.stub.Register(
                fpb.RegisterRequest(
                    agency=a1.name, datasets=[fpb.DatasetInfo(name="bad", feature_spec_json="{")]
                ),
                metadata=auth(a1.name),
            ),
        ),
        (
            Code.INVALID_ARGUMENT,
            lambda: a1.stub.Register(
                fpb.RegisterRequest(
                    agency=a1.name,
                    datasets=[fpb.DatasetInfo(name="x", feature_spec_json='{"numeric": []}')],
                ),
                metadata=auth(a1.name),
            ),
        ),
        # jobs
        (Code.INVALID_ARGUMENT, lambda: submit(port, job_type="random_forest")),
        (Code.INVALID_ARGUMENT, lambda: submit(port, params_json="{C: 1}")),
        (Code.INVALID_ARGUMENT, lambda: submit(port, params_json='{"C": 1, "penalty": "l1"}')),
        (Code.INVALID_ARGUMENT, lambda: submit(port, params_json='{"C": -1}')),
        (Code.INVALID_ARGUMENT, lambda: submit(port, privacy_json='{"epsilon": 1}')),
        (Code.INVALID_ARGUMENT, lambda: submit(port, dataset="")),
        (Code.INVALID_ARGUMENT, lambda: submit(port, agencies=[a1.name, a1.name])),
        (Code.NOT_FOUND, lambda: submit(port, agencies=[a1.name, "district-99"])),
        (Code.NOT_FOUND, lambda: submit(port, dataset="permits")),
        (Code.NOT_FOUND, lambda: submit(port, evaluate_dataset="permits")),
        (Code.FAILED_PRECONDITION, lambda: submit(port, agencies=[a1.name])),
        (Code.FAILED_PRECONDITION, lambda: submit(port, min_agencies=4)),
        (
            Code.NOT_FOUND,
            lambda: jobs.GetResult(fpb.JobRef(job_id="0123456789ab"), metadata=auth("analyst")),
        ),
        (
            Code.FAILED_PRECONDITION,
            lambda: jobs.GetResult(fpb.JobRef(job_id=job_id), metadata=auth("analyst")),
        ),
        (
            Code.NOT_FOUND,
            lambda: jobs.CancelJob(fpb.JobRef(job_id="0123456789ab"), metadata=auth("analyst")),
        ),
        (
            Code.NOT_FOUND,
            lambda: jobs.WatchJob(fpb.JobRef(job_id="0123456789ab"), metadata=auth("analyst")),
        ),
    ]
    for code, call in cases:
        refused(code, call)
        unchanged()

    # declared columns that differ between agencies
    other = FeatureSpec(numeric=("mean_radius",), categorical={}, label="target")
    a3.register({DATASET: spec, "permits": other})
    a2.register({DATASET: spec, "permits": spec})
    before = snapshot(files["db"])
    refused(
        Code.FAILED_PRECONDITION,
        lambda: submit(port, dataset="permits", agencies=[a2.name, a3.name]),
        match="other columns",
    )
    unchanged()

    # the first upload stands: a different second one is refused, an identical one acknowledged
    assert a1.upload(job_id, r0, kind, valid).stored
    before = snapshot(files["db"])
    other_payload = a1.node.contribute(messages.assignment_to_task(assignment))
    refused(
        Code.ALREADY_EXISTS,
        lambda: a1.upload(job_id, r0, kind, other_payload),
        match="first upload stands",
    )
    unchanged()
    assert a1.upload(job_id, r0, kind, valid).stored is False
    unchanged()
    rnd = runtime(server, job_id).driver.round
    assert rnd.contributions[a1.name] == valid

    # decrypting: contributions are late; a partial made with someone else's share is refused
    assert a2.step() == fpb.ACTION_CONTRIBUTE and a3.step() == fpb.ACTION_CONTRIBUTE
    assert rnd.phase is RoundPhase.DECRYPTING
    ask = a1.fetch()  # the first t share holders are asked
    assert ask is not None and ask.action == fpb.ACTION_PARTIAL_DECRYPT
    assert sorted(runtime(server, job_id).asked[r0]) == [a1.name, a2.name]
    holder, impostor = a1, a2
    _, partial = holder.compute(ask)
    before = snapshot(files["db"])
    refused(
        Code.INVALID_ARGUMENT,
        lambda: impostor.upload(job_id, r0, fpb.PAYLOAD_KIND_PARTIAL, partial),
        match="holds share",
    )
    refused(  # a contributor's late second upload: the first stands, whatever the phase
        Code.ALREADY_EXISTS,
        lambda: a3.upload(job_id, r0, kind, valid),
        match="first upload stands",
    )
    refused(
        Code.INVALID_ARGUMENT,
        lambda: holder.upload(
            job_id, r0, fpb.PAYLOAD_KIND_PARTIAL, partial[:-1] + bytes([partial[-1] ^ 1])
        ),
    )
    unchanged()


def _header_chunk(agent, job_id, round_, total, sha, data=b""):
    statement = Statement(job_id, round_, "contribution", agent.name, agent.key_id, sha)
    header = fpb.ChunkHeader(
        job_id=job_id,
        round=round_,
        agency=agent.name,
        kind=fpb.PAYLOAD_KIND_CONTRIBUTION,
        total_bytes=total,
        sha256=sha,
        signature=agent.signing.sign(statement),  # valid for the claimed digest
    )
    return fpb.Chunk(header=header, data=data)


def _truncated(agent, job_id, round_, payload):
    half = len(payload) // 2
    yield _header_chunk(
        agent, job_id, round_, len(payload), hashlib.sha256(payload).digest(), payload[:half]
    )


def _bad_sha(agent, job_id, round_, payload):
    yield _header_chunk(agent, job_id, round_, len(payload), bytes(32), payload)


def _announcing(agent, job_id, round_, total):
    yield _header_chunk(agent, job_id, round_, total, bytes(32), b"x")


def _big_channel_upload(port, agent, job_id, round_, size):
    """One 5 MiB message: over the server's 4 MiB limit (gRPC refuses it itself)."""
    options = [("grpc.max_send_message_length", 16 << 20)]
    stub = fpb_grpc.AgentServiceStub(grpc.insecure_channel(f"127.0.0.1:{port}", options=options))
    payload = bytes(size)
    chunk = _header_chunk(agent, job_id, round_, size, hashlib.sha256(payload).digest(), payload)
    return stub.Upload(iter([chunk]), metadata=auth(agent.name), timeout=10)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_silent_agency_is_dropped_and_a_slow_one_misses_the_deadline(files, key, data, servers):
    """Deadlines run on an injected clock: the verdicts do not depend on the machine's load."""
    clock = ManualClock()
    server = start(files, liveness_timeout=1.5, collect_timeout=0.5, clock=clock)
    servers.append(server)
    agents = registered_agents(server, key, data)
    job_id = submit(server.port).job_id
    slow, silent = agents[1], agents[2]
    slow.ignore_rounds = {2}  # never answers round 2: the round closes at its deadline
    drive(agents, lambda: runtime(server, job_id).rounds_done >= 3, server=server, clock=clock)

    def dropped() -> bool:  # the silent agency stops calling: dropped after the timeout
        rt = runtime(server, job_id)
        return rt.driver is None or silent.name in rt.driver.dropped

    drive(agents[:2], dropped, server=server, clock=clock)
    assert runtime(server, job_id).state == "running"
    finished = lambda: job_state(server.port, job_id) != fpb.JOB_STATE_RUNNING  # noqa: E731
    drive(agents[:2], finished, server=server, clock=clock)
    result = scientist(server.port).GetResult(
        fpb.JobRef(job_id=job_id), metadata=auth("analyst"), timeout=10
    )
    history = json.loads(result.result_json)["history"]
    by_round = {r["round"]: r for r in history}
    assert by_round[2]["contributors"] == [AGENCIES[0], AGENCIES[2]]
    assert by_round[1]["contributors"] == list(AGENCIES)
    assert history[-1]["contributors"] == [AGENCIES[0], AGENCIES[1]]
    drops = [r for r in snapshot(files["db"])[0] if r[2] == "drop"]
    assert [(r[3], "no heartbeat" in r[5].decode()) for r in drops] == [(silent.name, True)]


def test_decline_cancel_and_watch(files, key, data, servers):
    server = start(files)
    servers.append(server)
    agents = registered_agents(server, key, data)
    port = server.port
    job_id = submit(port).job_id
    a = agents[2].fetch()
    agents[2].stub.Decline(
        fpb.DeclineRequest(agency=agents[2].name, job_id=job_id, round=a.round, reason="policy"),
        metadata=auth(agents[2].name),
        timeout=5,
    )
    drive(agents[:2], lambda: runtime(server, job_id).rounds_done >= 2)
    rt = runtime(server, job_id)
    assert rt.driver.dropped == {agents[2].name}
    assert json.loads(rt.records[0])["contributors"] == [AGENCIES[0], AGENCIES[1]]
    refused(
        Code.FAILED_PRECONDITION,
        lambda: agents[2].upload(job_id, rt.driver.task.round, fpb.PAYLOAD_KIND_CONTRIBUTION, b"x"),
        match="dropped",
    )

    jobs = scientist(port)
    watch = jobs.WatchJob(fpb.JobRef(job_id=job_id), metadata=auth("analyst"), timeout=30)
    first = next(watch)
    assert first.status.state == fpb.JOB_STATE_RUNNING
    status = jobs.CancelJob(fpb.JobRef(job_id=job_id), metadata=auth("analyst"), timeout=5)
    assert status.state == fpb.JOB_STATE_CANCELLED and "analyst" in status.failure
    rest = list(watch)
    assert rest[-1].status.state == fpb.JOB_STATE_CANCELLED
    assert len([e for e in rest if e.round_record_json]) >= 2
    assert jobs.CancelJob(fpb.JobRef(job_id=job_id), metadata=auth("analyst")).state == (
        fpb.JOB_STATE_CANCELLED
    )
    refused(
        Code.FAILED_PRECONDITION,
        lambda: jobs.GetResult(fpb.JobRef(job_id=job_id), metadata=auth("analyst")),
        match="cancelled",
    )
    refused(
        Code.FAILED_PRECONDITION,
        lambda: agents[0].upload(job_id, 0, fpb.PAYLOAD_KIND_CONTRIBUTION, b"x"),
    )
    types = [r[2] for r in snapshot(files["db"])[0]]
    assert types[0] == "drop" and types[-1] == "cancel"
    server.stop(grace=0)

    # after a restart the finished job is still known, with its state and failure
    again = start(files)
    servers.append(again)
    assert job_state(again.port, job_id) == fpb.JOB_STATE_CANCELLED
    assert not again.coordinator._jobs


def test_fedavg_with_evaluation_over_the_network(files, key, data, servers):
    """FedAvg travels as declarative parameters; a second stage scores a declared dataset.

    (A regressor keeps the evaluation vector short; a classifier's ROC histogram costs
    seconds of 512-bit encryption and adds nothing to what is tested here.)
    """
    frame, spec, tables = data
    server = start(files)
    servers.append(server)
    agents = [
        Agent(n, t, key, tables={"holdout": t}).connect(server.port)
        for n, t in zip(AGENCIES, tables, strict=True)
    ]
    for a in agents:
        a.register()
    params = {
        "estimator": {
            "class": "MLPRegressor",
            "params": {"hidden_layer_sizes": [4], "learning_rate_init": 0.01},
        },
        "rounds": 2,
        "seed": 3,
    }
    job_id = submit(
        server.port,
        job_type="fedavg",
        params_json=json.dumps(params),
        evaluate_dataset="holdout",
    ).job_id
    drive(agents, lambda: job_state(server.port, job_id) != fpb.JOB_STATE_RUNNING)
    result = scientist(server.port).GetResult(
        fpb.JobRef(job_id=job_id), metadata=auth("analyst"), timeout=10
    )
    out = json.loads(result.result_json)
    assert out["model"]["type"] == "fedavg" and out["job"]["evaluate_dataset"] == "holdout"
    assert [r["kind"] for r in out["history"]][-2:] == ["fedavg.local", "fedavg.local"]
    pipeline = estimator_from_result_json(result.result_json, spec)
    pred = pipeline.predict(frame)
    rmse = float(np.sqrt(np.mean((frame[spec.label] - pred) ** 2)))
    assert out["metrics"]["rmse"] == pytest.approx(rmse, rel=1e-6)
    assert out["metrics"]["mean_poisson_deviance"] is None  # NaN is not JSON
    events = [r for r in snapshot(files["db"])[0] if r[2] == "close"]
    assert len(events) == len(out["history"]) + 1  # training rounds, then the evaluation


def test_listen_rules_and_tls(files, key, tmp_path, servers):
    with pytest.raises(AuthError, match="only allowed on a loopback"):
        start(files, listen="0.0.0.0:0")
    with pytest.raises(AuthError, match="TLS is required"):
        serve(
            CoordinatorConfig(
                listen="127.0.0.1:0",
                db=files["db"],
                federation=files["federation"],
                credentials=files["credentials"],
            )
        )
    cert, private_key = _self_signed(tmp_path)
    server = serve(
        CoordinatorConfig(
            listen="127.0.0.1:0",
            db=files["db"],
            federation=files["federation"],
            credentials=files["credentials"],
            tls_cert=cert,
            tls_key=private_key,
        )
    )
    servers.append(server)
    creds = grpc.ssl_channel_credentials(root_certificates=Path(cert).read_bytes())
    secure = grpc.secure_channel(f"127.0.0.1:{server.port}", creds)
    reply = fpb_grpc.JobServiceStub(secure).ListAgencies(
        fpb.ListAgenciesRequest(), metadata=auth("analyst"), timeout=10
    )
    assert [a.name for a in reply.agencies] == list(AGENCIES)
    plain = health_pb2_grpc.HealthStub(channel(server.port))
    refused(Code.UNAVAILABLE, lambda: plain.Check(health_pb2.HealthCheckRequest(), timeout=2))


def _self_signed(tmp_path):
    import ipaddress

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    private = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "fedcity test")])
    now = dt.datetime.now(dt.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(private.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=1))
        .add_extension(
            x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
            critical=False,
        )
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(private, hashes.SHA256())
    )
    cert_path, key_path = tmp_path / "server.pem", tmp_path / "server.key"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(
        private.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    key_path.chmod(0o600)  # a key others can read is refused at start
    return str(cert_path), str(key_path)


def test_main_refuses_bad_configuration(files, capsys):
    base = ["--db", str(files["db"]), "--federation", str(files["federation"])]
    base += ["--credentials", str(files["credentials"])]
    assert main(["coordinator", "serve", *base, "--listen", "0.0.0.0:0", "--insecure"]) == 2
    assert "loopback" in capsys.readouterr().err
    assert main(["serve", *base, "--listen", "127.0.0.1:0"]) == 2
    assert "TLS is required" in capsys.readouterr().err
    bad = Path(files["federation"]).with_name("broken.json")
    bad.write_text('{"format": "fedcity.federation", "version": 2}')
    args = ["--db", str(files["db"]), "--federation", str(bad)]
    args += ["--credentials", str(files["credentials"]), "--insecure"]
    assert main(args) == 2
    assert "unsupported version" in capsys.readouterr().err
    assert not files["db"].exists()  # nothing was created for a refused configuration


def test_serve_process_stops_gracefully_on_sigterm(files):
    port = _free_port()
    cmd = [sys.executable, "-m", "fedcity.net.coordinator", "serve", "--insecure"]
    cmd += ["--listen", f"127.0.0.1:{port}", "--db", str(files["db"])]
    cmd += ["--federation", str(files["federation"]), "--credentials", str(files["credentials"])]
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    proc = subprocess.Popen(cmd, stderr=subprocess.PIPE, text=True, env=env)
    try:
        fast_retry = [
            ("grpc.initial_reconnect_backoff_ms", 50),
            ("grpc.max_reconnect_backoff_ms", 100),
        ]
        health = health_pb2_grpc.HealthStub(
            grpc.insecure_channel(f"127.0.0.1:{port}", options=fast_retry)
        )
        deadline = time.monotonic() + 30
        while True:
            try:
                reply = health.Check(health_pb2.HealthCheckRequest(), timeout=1)
                break
            except grpc.RpcError:
                assert proc.poll() is None and time.monotonic() < deadline, proc.stderr.read()
                time.sleep(0.1)
        assert reply.status == health_pb2.HealthCheckResponse.SERVING
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=15) == 0
        assert "stopped" in proc.stderr.read()
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


# -- single-key-holder federations ------------------------------------------------------------
HOLDER = AGENCIES[1]


@pytest.fixture(scope="module")
def kh_key():
    from fedcity.crypto import generate_keypair

    return generate_keypair(512)


@pytest.fixture
def kh_files(files, kh_key):
    pk, _ = kh_key
    files["federation"].write_text(
        json.dumps(
            {
                "format": "fedcity.federation",
                "version": 1,
                "decryption": "key-holder",
                "public_key": pk.to_json_dict(),
                "key_holder": HOLDER,
                "agencies": {name: int(name == HOLDER) for name in AGENCIES},
                "signing_keys": signing_keys(),
            }
        )
    )
    return files


class KeyHolderAgent(Agent):
    def __init__(self, name: str, table: AgencyDataset, kh_key):
        from fedcity.core.aggregation import KeyHolderScheme

        pk, sk = kh_key
        super().__init__(name, table, None)
        self.key_id = pk.key_id
        self.node = AgencyNode(
            name,
            table,
            KeyHolderScheme(pk),
            share=sk if name == HOLDER else None,
            verifier=self.verifier(),
        )


def test_key_holder_federation_over_the_network(kh_files, kh_key, data, local_result, servers):
    """Only the key holder decrypts; it gets a blinded aggregate; a restart mid-decryption
    re-blinds identically; a wrong answer is refused with the store unchanged."""
    import dataclasses

    from fedcity.crypto import serde

    pk, sk = kh_key
    _, _, tables = data
    agents = [KeyHolderAgent(n, t, kh_key) for n, t in zip(AGENCIES, tables, strict=True)]
    # no ticker: after the refused answer the key holder is the only decryptor left, and a
    # tick before the restart below would fail the job (this test restarts it instead)
    first = start(kh_files, tick_interval=3600)
    servers.append(first)
    for a in agents:
        assert a.connect(first.port).register().key_id == pk.key_id
    # the key holder must take part
    refused(
        Code.FAILED_PRECONDITION,
        lambda: submit(first.port, agencies=[AGENCIES[0], AGENCIES[2]]),
        match=f"agency {HOLDER!r} holds the federation's decryption key",
    )
    job_id = submit(first.port).job_id

    def decrypting() -> bool:
        rt = runtime(first, job_id)
        return rt.rounds_done >= 3 and rt.driver.round.phase is RoundPhase.DECRYPTING

    drive(agents, decrypting)
    rnd = runtime(first, job_id).driver.round
    r = rnd.task.round
    blinded = serde.encrypted_vector_from_bytes(rnd.aggregate_bytes, pk)
    true_sum = rnd.aggregate.vector
    assert blinded.digest() != true_sum.digest()
    # non-holders are never asked to decrypt
    assert agents[0].fetch() is None and agents[2].fetch() is None
    assignment = agents[1].fetch()
    assert assignment.action == fpb.ACTION_PARTIAL_DECRYPT
    kind, good = agents[1].compute(assignment)
    dec = serde.keyholder_decryption_from_bytes(good, pk)
    # what the key holder decrypted is masked: not the aggregate's plaintexts
    clear = [sk.raw_decrypt(c) for c in true_sum.ciphertexts]
    assert all(s != m for s, m in zip(dec.plaintexts, clear, strict=True))
    ms = list(dec.plaintexts)
    ms[-1] = (ms[-1] + 1) % pk.n
    bad = serde.keyholder_decryption_to_bytes(dataclasses.replace(dec, plaintexts=tuple(ms)), pk)
    before = snapshot(kh_files["db"])
    refused(
        Code.INVALID_ARGUMENT,
        lambda: agents[1].upload(job_id, r, kind, bad),
        match="does not match the blinded aggregate",
    )
    assert snapshot(kh_files["db"]) == before
    first.stop(grace=0)

    # restart mid-decryption: the replayed round is blinded with the stored key, so the
    # honest answer computed before the restart is accepted
    second = start(kh_files)
    servers.append(second)
    for a in agents:
        a.connect(second.port)
    again = runtime(second, job_id).driver.round
    assert again.aggregate_bytes == rnd.aggregate_bytes
    assert agents[1].upload(job_id, r, kind, good).stored
    drive(agents, lambda: job_state(second.port, job_id) == fpb.JOB_STATE_SUCCEEDED)
    result = scientist(second.port).GetResult(
        fpb.JobRef(job_id=job_id), metadata=auth("analyst"), timeout=10
    )
    np.testing.assert_allclose(
        betas(result.result_json), local_result.model_params_["beta"], rtol=0, atol=1e-8
    )
    history = json.loads(result.result_json)["history"]
    assert all(h["decryptors"] == [HOLDER] for h in history)


def test_replay_does_not_verify_stored_partials_again(
    files, key, data, local_result, servers, monkeypatch
):
    """Partials were verified before they were stored; a restart replays them unverified."""
    import fedcity.core.aggregation as aggregation

    _, _, tables = data
    agents = [Agent(n, t, key) for n, t in zip(AGENCIES, tables, strict=True)]
    first = start(files)
    servers.append(first)
    for a in agents:
        a.connect(first.port).register()
    job_id = submit(first.port).job_id
    drive(agents, lambda: runtime(first, job_id).rounds_done >= 4)
    first.stop(grace=0)
    stored = sum(1 for row in snapshot(files["db"])[0] if row[2] == "partial")
    assert stored >= 8

    calls = []
    real = aggregation.verify_partial_decryption
    monkeypatch.setattr(
        aggregation,
        "verify_partial_decryption",
        lambda *a, **k: calls.append(1) or real(*a, **k),
    )
    second = start(files)
    servers.append(second)
    assert runtime(second, job_id).rounds_done >= 4
    assert calls == []  # nothing verified while replaying
    for a in agents:
        a.connect(second.port)
    drive(agents, lambda: job_state(second.port, job_id) == fpb.JOB_STATE_SUCCEEDED)
    assert calls  # live partials are still verified
    result = scientist(second.port).GetResult(
        fpb.JobRef(job_id=job_id), metadata=auth("analyst"), timeout=10
    )
    np.testing.assert_allclose(
        betas(result.result_json), local_result.model_params_["beta"], rtol=0, atol=1e-8
    )
