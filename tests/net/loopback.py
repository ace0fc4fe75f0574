"""An in-process federation on loopback for the coordinator's tests: constants, in-test agents
and helpers shared by ``test_coordinator``, ``test_hardening``, ``test_integrity`` and
``test_limits`` (their fixtures live in ``conftest.py``).

Agents here are the sans-IO :class:`AgencyNode` plus :mod:`fedcity.net.messages` over a real
channel, so the tests pin the coordinator's behaviour independently of the agent daemon.
"""

from __future__ import annotations

import hashlib
import json
import sqlite3
import threading
from pathlib import Path

import grpc
import numpy as np
import pytest

from fedcity.core.aggregation import PaillierScheme
from fedcity.core.errors import RejectedContribution
from fedcity.core.integrity import ContributionVerifier
from fedcity.core.nodes import AgencyNode
from fedcity.crypto.signing import SigningKey
from fedcity.data.dataset import AgencyDataset
from fedcity.net import messages, rangeaudit
from fedcity.net.coordinator import (
    CoordinatorConfig,
    CoordinatorServer,
    serve,
)
from fedcity.net.integrity import evidence_from_bytes, sign_upload
from fedcity.v1 import federation_pb2 as fpb
from fedcity.v1 import federation_pb2_grpc as fpb_grpc

AGENCIES = ("district-01", "district-02", "district-03")
TOKENS = {name: f"token-of-{name}" for name in (*AGENCIES, "analyst", "rival")}
ROLES = {**dict.fromkeys(AGENCIES, "agency"), "analyst": "scientist", "rival": "scientist"}
SIGNING = {
    name: SigningKey(hashlib.sha256(f"test signing key of {name}".encode()).digest())
    for name in AGENCIES
}
"""Each agency's Ed25519 signing key (fixed seeds; listed in the federation file)."""
DATASET = "inspections"
VETTED = sorted(
    {"stats.counts", "stats.mean", "stats.variance", "glm.newton", "eval.model"}
    | {"fedavg.local", "fedavg.label_counts", "query.presence", "query.cells", "query.quantile"}
)
"""Task kinds the in-test agents declare they run (every vetted step)."""
Code = grpc.StatusCode
CHANNEL_OPTIONS = [
    ("grpc.max_send_message_length", messages.MAX_MESSAGE_BYTES),
    ("grpc.max_receive_message_length", messages.MAX_MESSAGE_BYTES),
]


def signing_keys() -> dict[str, str]:
    """The federation file's ``signing_keys`` object."""
    return {name: key.public_key.hex() for name, key in SIGNING.items()}


def start(files, *, clock=None, **overrides) -> CoordinatorServer:
    settings = {
        "listen": "127.0.0.1:0",
        "db": files["db"],
        "federation": files["federation"],
        "credentials": files["credentials"],
        "insecure": True,
        "tick_interval": 0.05,
        **overrides,
    }
    return serve(CoordinatorConfig(**settings), clock=clock)


def auth(name: str) -> tuple[tuple[str, str]]:
    return (("authorization", f"Bearer {TOKENS[name]}"),)


def channel(port: int) -> grpc.Channel:
    return grpc.insecure_channel(f"127.0.0.1:{port}", options=CHANNEL_OPTIONS)


class Agent:
    """An agency's side of the protocol, driven step by step by the test."""

    def __init__(self, name: str, table: AgencyDataset, key, *, tables=None):
        self.name = name
        self.signing = SIGNING[name]
        self.key_id = bytes(16)  # the federation key's id, set with the key
        if key is not None:
            tpk, shares = key
            share = shares[AGENCIES.index(name)]
            self.key_id = tpk.key_id
            self.node = AgencyNode(
                name, table, PaillierScheme(tpk), share=share, verifier=self.verifier()
            )
        self.tables = {DATASET: table, **(tables or {})}
        self.uploads: list[tuple[str, int, int, bytes]] = []
        self.errors: list[BaseException] = []
        self.ignore_rounds: set[int] = set()

    def verifier(self) -> ContributionVerifier:
        return ContributionVerifier({a: k.public_key for a, k in SIGNING.items()}, self.key_id)

    def sign(self, job_id, round_, kind, payload, *, agency=None) -> bytes:
        return sign_upload(
            self.signing,
            payload,
            job_id=job_id,
            round=round_,
            kind=kind,
            agency=agency or self.name,
            key_id=self.key_id,
        )

    def evidence(self, a: fpb.Assignment):
        """The round's signed contributions, as a decryptor fetches them."""
        stream = self.stub.FetchContributions(
            fpb.AggregateRef(job_id=a.job_id, round=a.round), metadata=auth(self.name), timeout=10
        )
        header, payload = messages.assemble(stream)
        assert header.kind == fpb.PAYLOAD_KIND_EVIDENCE
        msg = fpb.ContributionEvidence.FromString(payload)
        self.justification = None  # a re-aggregated round's range-audit justification
        if msg.HasField("justification"):
            self.justification = rangeaudit.justification_from_proto(
                msg.justification, max_agencies=len(AGENCIES), max_proof=len(payload)
            )
        return evidence_from_bytes(payload, max_contributions=len(AGENCIES))

    def connect(self, port: int) -> Agent:
        self.channel = channel(port)
        self.stub = fpb_grpc.AgentServiceStub(self.channel)
        return self

    def register(self, datasets=None) -> fpb.RegisterResponse:
        declared = datasets or {n: t.spec for n, t in self.tables.items()}
        return self.stub.Register(
            fpb.RegisterRequest(
                agency=self.name,
                datasets=[
                    fpb.DatasetInfo(name=n, feature_spec_json=messages.feature_spec_to_json(s))
                    for n, s in declared.items()
                ],
                software_version="test",
                task_kinds=VETTED,
            ),
            metadata=auth(self.name),
            timeout=10,
        )

    def fetch(self, wait_ms: int = 0) -> fpb.Assignment | None:
        resp = self.stub.FetchWork(
            fpb.FetchWorkRequest(agency=self.name, wait_ms=wait_ms),
            metadata=auth(self.name),
            timeout=wait_ms / 1000 + 10,
        )
        return resp.assignment if resp.HasField("assignment") else None

    def compute(self, a: fpb.Assignment) -> tuple[int, bytes]:
        """The payload for an assignment (empty for a range audit it cannot answer)."""
        task = messages.assignment_to_task(a)
        if a.action == fpb.ACTION_CONTRIBUTE:
            self.node.datasets = {**self.tables, "train": self.tables[a.dataset]}
            return fpb.PAYLOAD_KIND_CONTRIBUTION, self.node.contribute(task)
        if a.action == fpb.ACTION_RANGE_PROOF:
            stream = self.stub.FetchAuditEvidence(
                fpb.AggregateRef(job_id=a.job_id, round=a.round),
                metadata=auth(self.name),
                timeout=10,
            )
            _, data = messages.assemble(stream)
            evidence = rangeaudit.out_of_range_from_bytes(data, max_agencies=len(AGENCIES))
            try:
                answer = self.node.answer_range_audit(
                    task, evidence, signing_key=self.signing, key_id=self.key_id
                )
            except RejectedContribution:
                return fpb.PAYLOAD_KIND_RANGE_PROOF, b""  # it cannot prove: it stays silent
            return fpb.PAYLOAD_KIND_RANGE_PROOF, rangeaudit.answer_to_bytes(answer)
        stream = self.stub.FetchAggregate(
            fpb.AggregateRef(job_id=a.job_id, round=a.round), metadata=auth(self.name), timeout=10
        )
        _, aggregate = messages.assemble(stream)
        evidence = self.evidence(a)
        return fpb.PAYLOAD_KIND_PARTIAL, self.node.decrypt_share(
            task,
            aggregate,
            summands_min=a.summands_min,
            evidence=evidence,
            justification=self.justification,
        )

    def upload(
        self, job_id, round_, kind, payload, *, agency=None, chunk_bytes=None, signature=None
    ):
        """Upload ``payload``, signed by this agency for exactly these fields by default."""
        if signature is None and kind in (
            fpb.PAYLOAD_KIND_CONTRIBUTION,
            fpb.PAYLOAD_KIND_PARTIAL,
            fpb.PAYLOAD_KIND_RANGE_PROOF,
        ):
            signature = self.sign(job_id, round_, kind, payload, agency=agency)
        stream = messages.chunks(
            payload,
            job_id=job_id,
            round=round_,
            agency=agency or self.name,
            kind=kind,
            chunk_bytes=chunk_bytes or messages.CHUNK_BYTES,
            signature=signature or b"",
        )
        return self.stub.Upload(stream, metadata=auth(self.name), timeout=30)

    def step(self, wait_ms: int = 0) -> int | None:
        """Fetch one assignment and carry it out; returns its action (None: no work)."""
        a = self.fetch(wait_ms)
        if a is None:
            return None
        if a.action == fpb.ACTION_CONTRIBUTE and a.round in self.ignore_rounds:
            return None  # a slow agency: never answers this round
        kind, payload = self.compute(a)
        if not payload:  # a range audit left unanswered
            return int(a.action)
        resp = self.upload(a.job_id, a.round, kind, payload)
        assert resp.stored
        self.uploads.append((a.job_id, a.round, kind, payload))
        return int(a.action)

    def run(self, stop: threading.Event) -> None:
        """Long-poll and work until ``stop`` (an agent daemon in miniature)."""
        try:
            while not stop.is_set():
                self.step(wait_ms=300)
        except BaseException as exc:  # reported by the test
            if not stop.is_set():
                self.errors.append(exc)


def registered_agents(server: CoordinatorServer, key, data, cls: type[Agent] = Agent) -> list:
    """One in-test agent per agency of the ``data`` fixture, connected and registered."""
    _, _, tables = data
    agents = [cls(n, t, key).connect(server.port) for n, t in zip(AGENCIES, tables, strict=True)]
    for a in agents:
        a.register()
    return agents


def scientist(port: int) -> fpb_grpc.JobServiceStub:
    return fpb_grpc.JobServiceStub(channel(port))


def submit(port: int, **fields) -> fpb.JobStatus:
    spec = fpb.JobSpec(
        **{
            "job_type": "logistic_regression",
            "params_json": json.dumps({"C": 0.5}),
            "dataset": DATASET,
            **fields,
        }
    )
    return scientist(port).SubmitJob(spec, metadata=auth("analyst"), timeout=10)


def job_state(port: int, job_id: str) -> int:
    events = scientist(port).WatchJob(
        fpb.JobRef(job_id=job_id), metadata=auth("analyst"), timeout=10
    )
    state = next(iter(events)).status.state
    events.cancel()
    return int(state)


def runtime(server: CoordinatorServer, job_id: str):
    """The coordinator's in-memory view of a job (white-box checks)."""
    core = server.coordinator
    return core._jobs.get(job_id) or core._recent[job_id]


def drive(agents, until, *, limit: int = 2000, server=None, clock=None, dt: float = 0.1):
    """Step agents round robin (no waiting) until ``until()`` holds after a step.

    With a manual ``clock``, each pass moves it ``dt`` seconds forward and lets the
    ``server``'s coordinator look at the new time, so deadlines pass in a known order
    whatever the machine's load.
    """
    for _ in range(limit):
        if clock is not None:
            clock.advance(dt)
            server.coordinator.tick()
        for a in agents:
            a.step()
            if until():
                return
    raise AssertionError("the job did not get there")


def snapshot(db: Path):
    """Everything the store holds that a refused input must not change."""
    con = sqlite3.connect(f"file:{db}?mode=ro", uri=True)
    try:
        return (
            con.execute(
                "SELECT job_id, seq, type, agency, round, payload FROM events ORDER BY job_id, seq"
            ).fetchall(),
            con.execute(
                "SELECT id, spec, state, failure, result, rounds_done FROM jobs ORDER BY id"
            ).fetchall(),
            con.execute("SELECT name, datasets FROM agencies ORDER BY name").fetchall(),
        )
    finally:
        con.close()


def refused(code: grpc.StatusCode, call, *, match: str = "") -> str:
    with pytest.raises(grpc.RpcError) as info:
        result = call()
        if hasattr(result, "__next__"):
            list(result)
    assert info.value.code() == code, info.value.details()
    assert match in (info.value.details() or ""), info.value.details()
    return str(info.value.details())


def betas(result_json: str) -> np.ndarray:
    return np.asarray(json.loads(result_json)["model"]["beta"])
