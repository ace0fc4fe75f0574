"""The agent against a real gRPC server on 127.0.0.1 (a fake AgentService speaking the proto).

The fake hands out assignments built from fedcity.core / fedcity.learn objects under a 512-bit
threshold key from the real key ceremony, and records what the agent sends back.
"""

from __future__ import annotations

import hashlib
import json
import logging
import queue
import threading
import time
from concurrent import futures
from contextlib import contextmanager

import grpc
import numpy as np
import pandas as pd
import pytest

import fedcity.learn  # noqa: F401  (registers the vetted steps)
from fedcity.core import PaillierScheme, Task, TaskRequest
from fedcity.core.integrity import Evidence, SignedContribution
from fedcity.core.tasks import LOCAL_STEPS
from fedcity.crypto import KeyShare, PackingSpec, combine_partial_decryptions, partial_decrypt
from fedcity.crypto.signing import SigningKey, Statement
from fedcity.net.agent import Agent, AgentConfig, AgentError, ConfigError
from fedcity.net.ceremony import deal_federation, load_federation, read_token
from fedcity.net.integrity import evidence_to_bytes, sign_upload
from fedcity.net.messages import (
    MAX_MESSAGE_BYTES,
    assemble,
    chunks,
    feature_spec_from_json,
    task_to_assignment,
)
from fedcity.v1 import federation_pb2 as fpb
from fedcity.v1 import federation_pb2_grpc as fpb_grpc

AGENCIES = ["district-01", "district-02", "district-03"]
SPEC = PackingSpec(clip=1024.0, precision_bits=32, max_summands=3, n_length=512)
STEP = 2 * SPEC.clip / (2**32 - 1)


# -- fixtures -----------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def federation(tmp_path_factory):
    root = tmp_path_factory.mktemp("agent")
    files = deal_federation(root / "fed", AGENCIES, 2, key_bits=512)
    shares = {a: KeyShare.load(files.shares[a]) for a in AGENCIES}
    rng = np.random.default_rng(3)
    data = root / "data"
    data.mkdir()
    n = 25
    pd.DataFrame(
        {
            "pastFail": rng.integers(0, 3, n).astype(float),
            "timeSinceLast": rng.uniform(0, 5, n),
            "inspector": rng.choice(["blue", "green"], n),
            "critical_found": rng.integers(0, 2, n).astype(float),
        }
    ).to_csv(data / "inspections.csv", index=False)
    pd.DataFrame({"area": rng.uniform(0, 9, 12), "approved": np.ones(12)}).to_csv(
        data / "permits.csv", index=False
    )
    return {"root": root, "files": files, "shares": shares}


def config_text(**overrides):
    """A valid agency.toml for district-01 (relative paths), with top-level overrides."""
    top = {
        "agency": '"district-01"',
        "coordinator": '"127.0.0.1:1"',
        "token_file": '"fed/agencies/district-01/token"',
        "share_file": '"fed/agencies/district-01/share.json"',
        "signing_key_file": '"fed/agencies/district-01/signing-key.json"',
        "federation_file": '"fed/federation-public.json"',
        "ca_file": '"fed/tls/ca.pem"',
        "log_file": '"logs/agent.jsonl"',
    }
    top.update({k: v for k, v in overrides.items() if not k.startswith("_")})
    lines = [f"{k} = {v}" for k, v in top.items() if v is not None]
    lines += [
        "",
        "[datasets.inspections]",
        'path = "data/inspections.csv"',
        'numeric = ["pastFail", "timeSinceLast"]',
        'categorical = { inspector = ["blue", "green"] }',
        'label = "critical_found"',
        'weight = ""',
        "",
        "[datasets.permits]",
        'path = "data/permits.csv"',
        'numeric = ["area"]',
        'label = "approved"',
        "",
        "[policy]",
        overrides.get(
            "_policy",
            'allowed_kinds = ["stats.counts", "stats.mean", "stats.variance", "eval.model"]',
        ),
    ]
    return "\n".join(lines) + "\n"


def write_config(root, port=1, **overrides):
    path = root / f"agency-{port}.toml"
    path.write_text(config_text(coordinator=f'"127.0.0.1:{port}"', **overrides))
    return AgentConfig.from_toml(path)


class FakeCoordinator(fpb_grpc.AgentServiceServicer):
    """Implements AgentService just enough to drive one agent."""

    def __init__(self, key_id: bytes):
        self.key_id = key_id
        self.work: queue.Queue[fpb.Assignment] = queue.Queue()
        self.aggregates: dict[tuple[str, int], bytes] = {}
        self.evidence: dict[tuple[str, int], bytes] = {}
        self.stored: dict[tuple, bytes] = {}
        self.attempts: list[tuple[fpb.ChunkHeader, bytes]] = []
        self.answers: list[bool] = []
        self.declines: list[fpb.DeclineRequest] = []
        self.registrations: list[fpb.RegisterRequest] = []
        self.auth: list[tuple[str, str | None]] = []
        self.heartbeats = 0
        self.fail_uploads = 0
        self.refuse = None

    def _seen(self, method, context):
        self.auth.append((method, dict(context.invocation_metadata()).get("authorization")))
        if self.refuse is not None:
            context.abort(*self.refuse)

    def Register(self, request, context):  # noqa: N802
        self._seen("Register", context)
        self.registrations.append(request)
        return fpb.RegisterResponse(heartbeat_interval_ms=100, key_id=self.key_id)

    def Heartbeat(self, request, context):  # noqa: N802
        self._seen("Heartbeat", context)
        self.heartbeats += 1
        return fpb.HeartbeatResponse(heartbeat_interval_ms=100)

    def FetchWork(self, request, context):  # noqa: N802
        self._seen("FetchWork", context)
        try:
            a = self.work.get(timeout=min(request.wait_ms, 300) / 1000)
        except queue.Empty:
            return fpb.FetchWorkResponse()
        return fpb.FetchWorkResponse(assignment=a)

    def FetchAggregate(self, request, context):  # noqa: N802
        self._seen("FetchAggregate", context)
        payload = self.aggregates.get((request.job_id, request.round))
        if payload is None:
            context.abort(grpc.StatusCode.NOT_FOUND, "no such aggregate")
        yield from chunks(
            payload,
            job_id=request.job_id,
            round=request.round,
            agency="",
            kind=fpb.PAYLOAD_KIND_AGGREGATE,
            chunk_bytes=1000,  # several chunks
        )

    def FetchContributions(self, request, context):  # noqa: N802
        self._seen("FetchContributions", context)
        payload = self.evidence.get((request.job_id, request.round))
        if payload is None:
            context.abort(grpc.StatusCode.NOT_FOUND, "no such round")
        yield from chunks(
            payload,
            job_id=request.job_id,
            round=request.round,
            agency="",
            kind=fpb.PAYLOAD_KIND_EVIDENCE,
            chunk_bytes=1000,
        )

    def Upload(self, request_iterator, context):  # noqa: N802
        self._seen("Upload", context)
        header, payload = assemble(request_iterator)
        self.attempts.append((header, payload))
        if self.fail_uploads:
            self.fail_uploads -= 1
            context.abort(grpc.StatusCode.UNAVAILABLE, "simulated outage")
        key = (header.job_id, header.round, header.agency, header.kind)
        if key in self.stored:
            if self.stored[key] != payload:
                context.abort(grpc.StatusCode.ALREADY_EXISTS, "a different payload stands")
            self.answers.append(False)
            return fpb.UploadResponse(stored=False)
        self.stored[key] = payload
        self.answers.append(True)
        return fpb.UploadResponse(stored=True)

    def Decline(self, request, context):  # noqa: N802
        self._seen("Decline", context)
        self.declines.append(request)
        return fpb.DeclineResponse()


class Server:
    """A TLS gRPC server on 127.0.0.1 that can be stopped and started on the same port."""

    def __init__(self, files, fake, port=0):
        self.files = files
        self.fake = fake
        self.port = port
        self.server = None

    def start(self):
        server = grpc.server(
            futures.ThreadPoolExecutor(max_workers=8),
            options=[
                ("grpc.max_send_message_length", MAX_MESSAGE_BYTES),
                ("grpc.max_receive_message_length", MAX_MESSAGE_BYTES),
            ],
        )
        fpb_grpc.add_AgentServiceServicer_to_server(self.fake, server)
        creds = grpc.ssl_server_credentials(
            [(self.files.server_key.read_bytes(), self.files.server_cert.read_bytes())]
        )
        port = server.add_secure_port(f"127.0.0.1:{self.port}", creds)
        assert port, "could not bind"
        self.port = port
        server.start()
        self.server = server
        return self

    def stop(self):
        if self.server is not None:
            self.server.stop(0).wait()
            self.server = None


@pytest.fixture
def coordinator(federation):
    fake = FakeCoordinator(federation["shares"]["district-01"].threshold_key.key_id)
    server = Server(federation["files"], fake).start()
    yield server
    server.stop()


@contextmanager
def running(agent):
    errors = []

    def target():
        try:
            agent.run(handle_signals=False)
        except BaseException as exc:  # reported by the test
            errors.append(exc)

    thread = threading.Thread(target=target, daemon=True)
    thread.start()
    try:
        yield errors
    finally:
        agent.stop()
        thread.join(timeout=10)
        assert not thread.is_alive(), "the agent did not stop"


def wait_for(predicate, timeout=15.0, what="condition"):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.02)
    raise AssertionError(f"timed out waiting for {what}")


def make_agent(federation, port, **overrides):
    config = write_config(federation["root"], port, **overrides)
    return Agent(config, fetch_wait_ms=300, backoff_base=0.05, backoff_cap=0.5)


def counts_task(job="job-1", rnd=0, categorical=("inspector",)):
    length = 2 + (2 if "inspector" in categorical else 0)
    request = TaskRequest(
        "stats.counts",
        {"categorical": list(categorical)},
        length,
        clip=SPEC.clip,
        integer_valued=True,
        label="counts",
    )
    return Task(job, rnd, request, SPEC)


def signed_evidence(federation, job_id, round_, payloads, *, signed_round=None):
    """``ContributionEvidence`` bytes: each payload signed by its agency's ceremony key."""
    key_id = federation["shares"]["district-01"].threshold_key.key_id
    entries = []
    for agency, payload in payloads.items():
        _, key = SigningKey.load(federation["files"].signing_keys[agency])
        signature = sign_upload(
            key,
            payload,
            job_id=job_id,
            round=round_ if signed_round is None else signed_round,
            kind=fpb.PAYLOAD_KIND_CONTRIBUTION,
            agency=agency,
            key_id=key_id,
        )
        entries.append(
            SignedContribution(agency, signature, hashlib.sha256(payload).digest(), payload)
        )
    return evidence_to_bytes(Evidence(job_id, round_, tuple(entries)))


def decrypt(federation, vec, who=("district-02", "district-03")):
    shares = federation["shares"]
    tpk = shares[who[0]].threshold_key
    return combine_partial_decryptions(tpk, vec, [partial_decrypt(shares[a], vec) for a in who])


# -- the agent at work --------------------------------------------------------------------------
def test_contribution_is_a_valid_encrypted_vector(federation, coordinator):
    fake = coordinator.fake
    agent = make_agent(federation, coordinator.port)
    task = counts_task()
    assignment = task_to_assignment(task, fpb.ACTION_CONTRIBUTE, summands_min=2)
    assignment.dataset = "inspections"
    fake.work.put(assignment)
    with running(agent) as errors:
        wait_for(lambda: fake.stored, what="an upload")
        wait_for(lambda: fake.heartbeats >= 1, what="a heartbeat")
    assert not errors
    ((key, payload),) = fake.stored.items()
    assert key == ("job-1", 0, "district-01", fpb.PAYLOAD_KIND_CONTRIBUTION)
    header = fake.attempts[0][0]  # signed for exactly this job, round, kind, agency and key
    statement = Statement.for_payload(
        "job-1", 0, "contribution", "district-01", header_key_id(federation), payload
    )
    public = load_federation(federation["files"].public).signing_keys["district-01"]
    assert public.verify(statement, bytes(header.signature))
    scheme = PaillierScheme(federation["shares"]["district-01"].threshold_key)
    vec = scheme.open(payload, SPEC, task.vector_length)  # key id, layout, one summand
    frame = pd.read_csv(federation["root"] / "data" / "inspections.csv")
    expected = [
        len(frame),
        len(frame),
        (frame.inspector == "blue").sum(),
        (frame.inspector == "green").sum(),
        0.0,  # no overflow
    ]
    np.testing.assert_allclose(decrypt(federation, vec), expected, atol=2 * STEP)

    registration = fake.registrations[0]
    assert registration.agency == "district-01"
    assert {d.name for d in registration.datasets} == {"inspections", "permits"}
    spec = feature_spec_from_json(
        next(d for d in registration.datasets if d.name == "inspections").feature_spec_json
    )
    assert spec.categorical == {"inspector": ("blue", "green")}
    assert set(registration.task_kinds) == {
        "stats.counts",
        "stats.mean",
        "stats.variance",
        "eval.model",
    }
    token = read_token(federation["files"].agency_tokens["district-01"])
    methods = {m for m, _ in fake.auth}
    assert {"Register", "Heartbeat", "FetchWork", "Upload"} <= methods
    assert {value for _, value in fake.auth} == {f"Bearer {token}"}

    (line,) = (federation["root"] / "logs" / "agent.jsonl").read_text().splitlines()
    entry = json.loads(line)
    assert {"time", "job", "round", "kind", "action", "seconds", "bytes"} <= set(entry)
    assert entry["job"] == "job-1" and entry["action"] == "contribute"
    assert entry["outcome"] == "uploaded" and entry["bytes"] == len(payload)


def test_the_assignment_names_the_dataset(federation, coordinator):
    fake = coordinator.fake
    agent = make_agent(federation, coordinator.port, log_file=None)
    task = counts_task(categorical=())
    a = task_to_assignment(task, fpb.ACTION_CONTRIBUTE, summands_min=2)
    a.dataset = "permits"
    fake.work.put(a)
    missing = task_to_assignment(
        counts_task("job-2", categorical=()), fpb.ACTION_CONTRIBUTE, summands_min=2
    )
    missing.dataset = "parking"
    fake.work.put(missing)
    with running(agent):
        wait_for(lambda: fake.stored and fake.declines, what="an upload and a refusal")
    scheme = PaillierScheme(federation["shares"]["district-01"].threshold_key)
    vec = scheme.open(next(iter(fake.stored.values())), SPEC, task.vector_length)
    np.testing.assert_allclose(decrypt(federation, vec), [12, 12, 0], atol=2 * STEP)
    assert fake.declines[0].job_id == "job-2"
    assert "offers no dataset 'parking'" in fake.declines[0].reason


@pytest.mark.parametrize("workers", [1, 2])
def test_partial_decryption_of_an_aggregate(federation, coordinator, workers):
    """Also with ``crypto_workers = 2``: the same proof-carrying partial from worker processes."""
    fake = coordinator.fake
    shares = federation["shares"]
    scheme = PaillierScheme(shares["district-01"].threshold_key)
    task = counts_task("job-9", 3)
    x2 = np.array([5.0, 5.0, 2.0, 3.0, 0.0])
    x3 = np.array([7.0, 6.5, 4.0, 3.0, 0.0])
    sealed = {"district-02": scheme.seal(x2, SPEC), "district-03": scheme.seal(x3, SPEC)}
    contributions = [scheme.open(p, SPEC, 5) for p in sealed.values()]
    aggregate = scheme.add(contributions)
    fake.aggregates[("job-9", 3)] = scheme.aggregate_to_bytes(aggregate)
    fake.evidence[("job-9", 3)] = signed_evidence(federation, "job-9", 3, sealed)
    fake.work.put(task_to_assignment(task, fpb.ACTION_PARTIAL_DECRYPT, summands_min=2))
    # a lone contribution dressed up as an aggregate: refused by the agency's own floor (2),
    # although the coordinator claims one summand is enough
    fake.aggregates[("job-9", 4)] = scheme.aggregate_to_bytes(contributions[0])
    fake.evidence[("job-9", 4)] = signed_evidence(
        federation, "job-9", 4, {"district-02": sealed["district-02"]}
    )
    fake.work.put(
        task_to_assignment(counts_task("job-9", 4), fpb.ACTION_PARTIAL_DECRYPT, summands_min=1)
    )
    agent = make_agent(federation, coordinator.port, log_file=None, crypto_workers=str(workers))
    assert agent.config.crypto_workers == workers
    with running(agent):
        wait_for(lambda: fake.stored and fake.declines, what="a partial and a refusal")
    assert agent.node.scheme.pool is None  # the workers stop with the agent
    ((key, payload),) = fake.stored.items()
    assert key == ("job-9", 3, "district-01", fpb.PAYLOAD_KIND_PARTIAL)
    mine = scheme.open_partial(payload, aggregate)  # the proof verifies
    assert mine.share_index == 1
    other = partial_decrypt(shares["district-03"], aggregate)
    released = combine_partial_decryptions(scheme.threshold_key, aggregate, [mine, other])
    np.testing.assert_allclose(released, x2 + x3, atol=2 * STEP)
    assert "refuses to decrypt an aggregate of 1" in fake.declines[0].reason
    assert {"FetchAggregate", "FetchContributions"} <= {m for m, _ in fake.auth}
    header = fake.attempts[0][0]
    statement = Statement.for_payload(
        "job-9", 3, "partial", "district-01", header_key_id(federation), payload
    )
    public = load_federation(federation["files"].public).signing_keys["district-01"]
    assert public.verify(statement, bytes(header.signature))


def header_key_id(federation):
    return federation["shares"]["district-01"].threshold_key.key_id


def test_decryptor_declines_an_aggregate_that_is_not_the_signed_sum(federation, coordinator):
    """A deviating coordinator hands out one agency's contribution relabelled as an aggregate
    of two, next to two genuine signed contributions: the agent declines, naming the mismatch,
    and uploads nothing."""
    fake = coordinator.fake
    scheme = PaillierScheme(federation["shares"]["district-01"].threshold_key)
    sealed = {
        "district-02": scheme.seal(np.array([5.0, 5.0, 2.0, 3.0, 0.0]), SPEC),
        "district-03": scheme.seal(np.array([7.0, 6.5, 4.0, 3.0, 0.0]), SPEC),
    }
    victim = scheme.open(sealed["district-02"], SPEC, 5)
    relabelled = type(victim)(victim.public_key, SPEC, 5, 2, victim.ciphertexts)
    fake.aggregates[("job-x", 0)] = scheme.aggregate_to_bytes(relabelled)
    fake.evidence[("job-x", 0)] = signed_evidence(federation, "job-x", 0, sealed)
    # and a round whose evidence is signed for another round
    honest = scheme.add([scheme.open(p, SPEC, 5) for p in sealed.values()])
    fake.aggregates[("job-x", 1)] = scheme.aggregate_to_bytes(honest)
    fake.evidence[("job-x", 1)] = signed_evidence(federation, "job-x", 1, sealed, signed_round=0)
    for r in (0, 1):
        fake.work.put(
            task_to_assignment(counts_task("job-x", r), fpb.ACTION_PARTIAL_DECRYPT, summands_min=2)
        )
    agent = make_agent(federation, coordinator.port)
    with running(agent) as errors:
        wait_for(lambda: len(fake.declines) == 2, what="two refusals")
    assert not errors and not fake.attempts
    reasons = {d.round: d.reason for d in fake.declines}
    assert "is not the product of the 2 signed contributions" in reasons[0]
    assert "signature of 'district-02' is not valid" in reasons[1]
    assert [e["outcome"] for e in agent.served] == ["declined", "declined"]


def test_declines_unvetted_refused_and_failing_tasks(federation, coordinator):
    fake = coordinator.fake
    unvetted = task_to_assignment(counts_task("evil"), fpb.ACTION_CONTRIBUTE, summands_min=2)
    unvetted.kind = "evil.exfiltrate"
    assert "evil.exfiltrate" not in LOCAL_STEPS
    newton = Task("glm", 0, TaskRequest("glm.newton", {}, 3), SPEC)
    broken = counts_task("broken", categorical=("no_such_column",))
    for a in (
        unvetted,
        task_to_assignment(newton, fpb.ACTION_CONTRIBUTE, summands_min=2),
        task_to_assignment(newton, fpb.ACTION_PARTIAL_DECRYPT, summands_min=2),
        task_to_assignment(broken, fpb.ACTION_CONTRIBUTE, summands_min=2),
    ):
        fake.work.put(a)
    agent = make_agent(federation, coordinator.port, log_file=None)
    with running(agent) as errors:
        wait_for(lambda: len(fake.declines) == 4, what="four refusals")
    assert not errors and not fake.attempts
    reasons = {(d.job_id, d.round): d.reason for d in fake.declines}
    assert "'evil.exfiltrate' is not vetted" in reasons[("evil", 0)]
    assert all(d.agency == "district-01" for d in fake.declines)
    glm = [d.reason for d in fake.declines if d.job_id == "glm"]
    assert len(glm) == 2 and all("policy refuses 'glm.newton'" in r for r in glm)
    assert "failed locally (KeyError)" in reasons[("broken", 0)]
    assert "no_such_column" not in reasons[("broken", 0)]  # details stay at the agency
    assert [e["outcome"] for e in agent.served] == ["declined"] * 4


def test_reuploads_the_same_bytes_after_a_failure(federation, coordinator):
    fake = coordinator.fake
    fake.fail_uploads = 1
    task = counts_task("job-r")
    assignment = task_to_assignment(task, fpb.ACTION_CONTRIBUTE, summands_min=2)
    fake.work.put(assignment)
    agent = make_agent(federation, coordinator.port, log_file=None)
    with running(agent):
        wait_for(lambda: fake.stored, what="the upload after the outage")
        fake.work.put(assignment)  # the same assignment again: the same bytes, not new ones
        wait_for(lambda: len(fake.answers) == 2, what="the repeated upload")
    assert len(fake.attempts) == 3
    assert len({payload for _, payload in fake.attempts}) == 1
    assert fake.answers == [True, False]
    assert len(fake.registrations) == 2  # registered again after the UNAVAILABLE
    assert [e["outcome"] for e in agent.served] == ["uploaded", "already_stored"]


def test_retries_until_the_coordinator_is_back(federation, coordinator, caplog):
    fake = coordinator.fake
    agent = make_agent(federation, coordinator.port, log_file=None)
    caplog.set_level(logging.WARNING, logger="fedcity.net.agent")
    with running(agent) as errors:
        wait_for(lambda: fake.registrations, what="registration")
        coordinator.stop()
        time.sleep(1.0)  # the agent backs off while nobody answers
        retries = [r.getMessage() for r in caplog.records if "retrying in" in r.getMessage()]
        assert len(retries) >= 2 and any("UNAVAILABLE" in m for m in retries)
        coordinator.start()  # same port, same fake
        fake.work.put(
            task_to_assignment(counts_task("after"), fpb.ACTION_CONTRIBUTE, summands_min=2)
        )
        wait_for(lambda: fake.stored, what="an upload after the restart")
        assert len(fake.registrations) >= 2
    assert not errors
    assert agent.stopping


def test_stops_promptly_during_a_long_poll(federation, coordinator):
    config = write_config(federation["root"], coordinator.port, log_file=None)
    agent = Agent(config, fetch_wait_ms=20_000)
    with running(agent):
        wait_for(lambda: coordinator.fake.registrations, what="registration")
        time.sleep(0.3)
        started = time.monotonic()
        agent.stop()
    assert time.monotonic() - started < 3


def test_stops_on_a_foreign_key(federation, coordinator):
    coordinator.fake.key_id = b"\x01" * 16
    agent = make_agent(federation, coordinator.port, log_file=None)
    with pytest.raises(AgentError, match=r"serves federation key 0101.*wrong federation"):
        agent.run(handle_signals=False)


def test_stops_on_a_refused_token(federation, coordinator):
    coordinator.fake.refuse = (grpc.StatusCode.UNAUTHENTICATED, "unknown token")
    agent = make_agent(federation, coordinator.port, log_file=None)
    with pytest.raises(AgentError, match="UNAUTHENTICATED: unknown token"):
        agent.run(handle_signals=False)


def test_plaintext_to_loopback(federation):
    fake = FakeCoordinator(federation["shares"]["district-01"].threshold_key.key_id)
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=4))
    fpb_grpc.add_AgentServiceServicer_to_server(fake, server)
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    try:
        agent = make_agent(federation, port, insecure="true", ca_file=None, log_file=None)
        assert agent.config.ca_file is None
        with running(agent):
            wait_for(lambda: fake.registrations, what="registration")
    finally:
        server.stop(0).wait()


# -- loading --------------------------------------------------------------------------------
def test_agent_reports_bad_share_and_data(federation, tmp_path):
    config = write_config(federation["root"])
    bad_share = tmp_path / "share.json"
    bad_share.write_text("{}")
    with pytest.raises(AgentError, match=r"key file .*share\.json has no 'format' field"):
        Agent(AgentConfig(**{**config.__dict__, "share_file": bad_share}))
    bad_share.write_text('{"format": "fedcity.paillier.key-share"}')
    with pytest.raises(AgentError, match=r"key file .*share\.json: "):
        Agent(AgentConfig(**{**config.__dict__, "share_file": bad_share}))
    bad_data = tmp_path / "inspections.csv"
    bad_data.write_text("pastFail,critical_found\n1,0\n")
    datasets = dict(config.datasets)
    datasets["inspections"] = type(datasets["inspections"])(
        "inspections", bad_data, datasets["inspections"].spec
    )
    with pytest.raises(AgentError, match=r"dataset 'inspections'.*missing"):
        Agent(AgentConfig(**{**config.__dict__, "datasets": datasets}))


def test_agent_refuses_a_signing_key_or_federation_that_does_not_fit(federation, tmp_path):
    config = write_config(federation["root"])
    files = federation["files"]
    other = {**config.__dict__, "signing_key_file": files.signing_keys["district-02"]}
    with pytest.raises(AgentError, match="signing key of agency 'district-02', not of"):
        Agent(AgentConfig(**other))
    foreign = tmp_path / "signing-key.json"
    SigningKey.generate().save(foreign, "district-01")
    with pytest.raises(AgentError, match="does not match the public signing key"):
        Agent(AgentConfig(**{**config.__dict__, "signing_key_file": foreign}))
    elsewhere = deal_federation(tmp_path / "other", ["district-01", "x"], 1, key_bits=256)
    with pytest.raises(AgentError, match=r"describes federation key .*wrong federation file"):
        Agent(AgentConfig(**{**config.__dict__, "federation_file": elsewhere.public}))


# -- configuration --------------------------------------------------------------------------
def test_config_defaults_and_paths(federation):
    root = federation["root"]
    path = root / "defaults.toml"
    path.write_text(config_text(_policy="", log_file=None))
    config = AgentConfig.from_toml(path)
    assert config.agency == "district-01"
    assert config.token_file == (root / "fed/agencies/district-01/token").resolve()
    assert config.datasets["inspections"].path == (root / "data/inspections.csv").resolve()
    assert config.datasets["inspections"].spec.weight is None
    assert list(config.datasets) == ["inspections", "permits"]
    assert config.allowed_kinds == frozenset(LOCAL_STEPS)
    assert config.min_summands == 2 and config.log_file is None and not config.insecure


@pytest.mark.parametrize(
    ("overrides", "match"),
    [
        ({"agency": None}, "key 'agency' is required"),
        ({"agency": "5"}, "key 'agency' must be a non-empty string"),
        ({"agency": '"district 01"'}, "key 'agency' must use letters"),
        ({"coordinator": None}, "key 'coordinator' is required"),
        ({"coordinator": '"127.0.0.1"'}, "key 'coordinator'.*host:port"),
        ({"coordinator": '"127.0.0.1:70000"'}, "key 'coordinator'.*port between"),
        ({"insecure": '"yes"'}, "key 'insecure' must be true or false"),
        (
            {"insecure": "true", "coordinator": '"10.0.0.5:50051"'},
            "insecure = true is allowed only for a loopback coordinator",
        ),
        ({"ca_file": None}, "key 'ca_file' is required"),
        ({"ca_file": '"nope.pem"'}, "key 'ca_file' names .*nope.pem', which does not exist"),
        ({"token_file": None}, "key 'token_file' is required"),
        ({"token_file": '"missing-token"'}, "key 'token_file' names .*does not exist"),
        ({"share_file": '"data"'}, "key 'share_file' names .*is not a regular file"),
        ({"signing_key_file": None}, "key 'signing_key_file' is required .*signing-key.json"),
        ({"federation_file": None}, "key 'federation_file' is required .*federation-public"),
        ({"federation_file": '"nope.json"'}, "key 'federation_file' names .*does not exist"),
        ({"log_file": "3"}, "key 'log_file' must be a non-empty string"),
        ({"crypto_workers": "0"}, r"'crypto_workers' must be an integer in \[1, 64\], got 0"),
        ({"crypto_workers": "65"}, r"'crypto_workers' must be an integer in \[1, 64\]"),
        ({"crypto_workers": '"2"'}, r"'crypto_workers' must be an integer in \[1, 64\]"),
        ({"crypto_workers": "true"}, r"'crypto_workers' must be an integer in \[1, 64\]"),
        (
            {"key_file": '"fed/agencies/district-01/share.json"'},
            "give key_file or share_file",
        ),
        ({"agnecy": '"x"'}, r"unknown key\(s\) \['agnecy'\]"),
        ({"_policy": 'allowed_kinds = ["evil.kind"]'}, r"unvetted kind\(s\) \['evil.kind'\]"),
        ({"_policy": 'allowed_kinds = "stats.counts"'}, "'allowed_kinds' must be a list"),
        ({"_policy": "min_summands = 0"}, "'min_summands' must be a positive integer"),
        ({"_policy": "allow = []"}, r"\[policy\] unknown key\(s\) \['allow'\]"),
    ],
)
def test_config_errors(federation, overrides, match):
    path = federation["root"] / "bad.toml"
    path.write_text(config_text(**overrides))
    with pytest.raises(ConfigError, match=match) as info:
        AgentConfig.from_toml(path)
    assert str(info.value).startswith(str(path))


@pytest.mark.parametrize(
    ("old", "new", "match"),
    [
        ('path = "data/inspections.csv"\n', "", r"\[datasets.inspections\] key 'path' is required"),
        ('"data/inspections.csv"', '"data/inspections.txt"', "key 'path' names .*does not exist"),
        ('"data/permits.csv"', '"fed/tls/ca.pem"', "key 'path' must name a .csv, .parquet"),
        ('numeric = ["area"]', 'numeric = "area"', r"\[datasets.permits\] key 'numeric' must"),
        (
            'categorical = { inspector = ["blue", "green"] }',
            'categorical = { inspector = "blue" }',
            "key 'categorical' must be a table",
        ),
        ('label = "approved"\n', "", r"\[datasets.permits\] key 'label' is required"),
        ('weight = ""', "weight = 1", "key 'weight' must be a column name"),
        ('label = "approved"', 'label = "area"', "invalid columns: label 'area' is also"),
        ('label = "approved"', 'lable = "approved"', r"unknown key\(s\) \['lable'\]"),
        ("[datasets.permits]", "[datasets.'bad name']", "names use letters"),
        ("agency =", "agency = = ", "invalid TOML"),
    ],
)
def test_dataset_config_errors(federation, old, new, match):
    text = config_text()
    assert old in text
    path = federation["root"] / "bad-dataset.toml"
    path.write_text(text.replace(old, new, 1))
    with pytest.raises(ConfigError, match=match):
        AgentConfig.from_toml(path)


def test_config_needs_datasets_and_a_file(federation):
    path = federation["root"] / "nodata.toml"
    text = config_text()
    path.write_text(text[: text.index("[datasets.inspections]")])
    need = r"at least one \[datasets.<name>\] .* or \[tables.<name>\]"
    with pytest.raises(ConfigError, match=need):
        AgentConfig.from_toml(path)
    with pytest.raises(ConfigError, match="cannot read config file"):
        AgentConfig.from_toml(federation["root"] / "absent.toml")
