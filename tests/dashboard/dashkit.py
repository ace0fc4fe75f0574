"""Helpers of the dashboard tests: in-test agents, job helpers, leak detectors.

A real coordinator on loopback with its dashboard, agents in threads and finished jobs.

The coordinator, its gRPC API and the dashboard's HTTP server are real (127.0.0.1); the agents
are the in-test agents of ``tests/net/loopback.py`` (sans-IO ``AgencyNode`` over real gRPC),
long-polling in threads. ``district-03`` declines every job on the second dataset, so that
job finishes with two agencies and a stated reason.
"""

from __future__ import annotations

import hashlib
import json
import re
import sys
import time
from base64 import b64encode
from dataclasses import dataclass, field
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "net"))

import loopback
from loopback import (
    AGENCIES,
    DATASET,
    Agent,
    auth,
    scientist,
    signing_keys,
)

from fedcity.net.auth import Principal
from fedcity.v1 import federation_pb2 as fpb

TOKENS = {**loopback.TOKENS, "ops": "token-of-ops"}
ROLES = {**loopback.ROLES, "ops": "operator"}
"""The loopback federation's principals and an operator."""
SECOND = "inspections_b"
"""A second dataset (the same rows); district-03 declines every job on it."""
DECLINE_REASON = "refused step 'glm.newton': not in its allowed_kinds"
KINDS = ["eval.model", "glm.newton", "stats.counts", "stats.mean", "stats.variance"]
CUTS = (0, 137, 349, 569)
"""Row ranges of the three agencies: 137, 212 and 220 rows (figures that must never show)."""
TERMINAL = ("succeeded", "failed", "cancelled")


class DashAgent(Agent):
    """An in-test agent that registers two datasets and may decline one of them."""

    def __init__(self, *args, declines: str | None = None, **kwargs):
        super().__init__(*args, **kwargs)
        self.tables[SECOND] = self.tables[DATASET]
        self.declines = declines
        self.declined: list[str] = []

    def register(self, datasets=None) -> fpb.RegisterResponse:
        from fedcity.net import messages

        return self.stub.Register(
            fpb.RegisterRequest(
                agency=self.name,
                datasets=[
                    fpb.DatasetInfo(name=n, feature_spec_json=messages.feature_spec_to_json(t.spec))
                    for n, t in self.tables.items()
                ],
                software_version="test",
                task_kinds=KINDS,
            ),
            metadata=auth(self.name),
            timeout=10,
        )

    def step(self, wait_ms: int = 0):
        a = self.fetch(wait_ms)
        if a is None:
            return None
        if a.action == fpb.ACTION_CONTRIBUTE and a.dataset == self.declines:
            self.stub.Decline(
                fpb.DeclineRequest(
                    agency=self.name, job_id=a.job_id, round=a.round, reason=DECLINE_REASON
                ),
                metadata=auth(self.name),
                timeout=10,
            )
            self.declined.append(a.job_id)
            return None
        kind, payload = self.compute(a)
        resp = self.upload(a.job_id, a.round, kind, payload)
        assert resp.stored
        self.uploads.append((a.job_id, a.round, kind, payload))
        return int(a.action)


@dataclass
class Federation:
    """The running coordinator, its dashboard URL, the agents and the finished jobs."""

    server: object
    url: str
    agents: list[DashAgent]
    jobs: dict[str, str]
    """Name → job id: ``full`` (analyst, evaluated), ``partial`` (analyst, district-03 left),
    ``rival`` (another scientist's job)."""
    figures: dict[str, list[float]] = field(default_factory=dict)
    """Each agency's own figures (row counts, label and feature sums): never shown."""

    def payloads(self) -> list[bytes]:
        """Every contribution and partial decryption the agents uploaded, and every stored
        event payload (contributions, partials, close records)."""
        out = [p for a in self.agents for *_, p in a.uploads]
        store = self.server.coordinator.store
        for job_id in self.jobs.values():
            out += [e.payload for e in store.events(job_id) if e.payload and e.type != "drop"]
        return out


def write_files(root: Path, key) -> dict[str, Path]:
    tpk, _ = key
    root.mkdir(parents=True, exist_ok=True)
    federation = root / "federation-public.json"
    federation.write_text(
        json.dumps(
            {
                "format": "fedcity.federation",
                "version": 1,
                "threshold_public_key": tpk.to_json_dict(),
                "agencies": {name: i + 1 for i, name in enumerate(AGENCIES)},
                "signing_keys": signing_keys(),
            }
        )
    )
    credentials = root / "credentials.json"
    credentials.write_text(
        json.dumps(
            {
                "principals": [
                    {
                        "name": name,
                        "role": ROLES[name],
                        "token_sha256": hashlib.sha256(token.encode()).hexdigest(),
                    }
                    for name, token in TOKENS.items()
                ]
            }
        )
    )
    return {"federation": federation, "credentials": credentials, "db": root / "coord.sqlite"}


def wait_for(check, *, timeout: float, what: str):
    deadline = time.monotonic() + timeout
    while True:
        value = check()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.05)


def job_state(server, owner: str, job_id: str) -> str:
    detail = server.coordinator.snapshot_job(Principal(owner, "scientist"), job_id)
    return detail.job.state


def submit(port: int, who: str, **fields) -> str:
    spec = fpb.JobSpec(
        **{
            "job_type": "logistic_regression",
            "params_json": json.dumps({"C": 0.5}),
            "dataset": DATASET,
            **fields,
        }
    )
    return scientist(port).SubmitJob(spec, metadata=auth(who), timeout=10).job_id


# -- what must never reach the dashboard --------------------------------------------------------
def payload_probes(payloads: list[bytes], *, window: int = 24) -> list[bytes]:
    """Byte strings whose presence would show a payload: raw, hex and base64 windows."""
    probes: set[bytes] = set()
    for payload in payloads:
        if len(payload) < window:
            continue
        for start_at in range(0, len(payload) - window + 1, max(window, len(payload) // 8)):
            chunk = payload[start_at : start_at + window]
            probes.add(chunk)
            probes.add(chunk.hex().encode())
            probes.add(chunk.hex().upper().encode())
            for shift in range(3):
                encoded = b64encode(payload[start_at + shift : start_at + shift + window])
                probes.add(encoded[:24])
    return sorted(probes)


def leaked_payload(body: bytes, probes: list[bytes]) -> bytes | None:
    """The first probe found in ``body`` (None: no payload bytes in it)."""
    return next((p for p in probes if p in body), None)


def figure_texts(figures: dict[str, list[float]]) -> list[re.Pattern[str]]:
    """Patterns of each agency's own figures as a page could print them."""
    patterns = []
    for values in figures.values():
        for v in values:
            forms = (
                {f"{int(v)}"} if v == int(v) else {f"{v:.2f}", f"{v:.4g}", f"{v:.6g}", f"{v:.3f}"}
            )
            for text in forms:
                patterns.append(re.compile(rf"(?<![\w.]){re.escape(text)}(?!\w|\.\d)"))
    return patterns


def leaked_figure(text: str, patterns: list[re.Pattern[str]]) -> str | None:
    """The first agency figure printed in ``text``."""
    for p in patterns:
        m = p.search(text)
        if m:
            return m.group(0)
    return None


def json_numbers(value) -> list[float]:
    """Every number in a parsed JSON document."""
    if isinstance(value, bool) or value is None:
        return []
    if isinstance(value, int | float):
        return [float(value)]
    if isinstance(value, dict):
        return [n for v in value.values() for n in json_numbers(v)]
    if isinstance(value, list):
        return [n for v in value for n in json_numbers(v)]
    return []
