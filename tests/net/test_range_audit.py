"""Range audits over the network (issue 8 item 16): the agency that overflowed is named,
excluded and the job goes on.

Real TLS coordinator and agent daemons on loopback (512-bit keys). The malicious agents are
test-only subclasses of :class:`AgencyNode` swapped into a daemon here; nothing in production
code makes an agent malicious.
"""

from __future__ import annotations

import json
import re
from typing import Any

import numpy as np
import numpy.typing as npt
import pytest
from daemons import VISITS, agency_toml, running_agents, tls_coordinator, wait_until, write_visits

from fedcity.core import audit as ra
from fedcity.core.nodes import AgencyNode
from fedcity.core.tasks import Task
from fedcity.crypto import EncryptedVector, serde
from fedcity.crypto.signing import SigningKey
from fedcity.net.ceremony import deal_federation, read_token
from fedcity.net.client import Client
from fedcity.net.coordinator.runtime import JobRuntime, build, record_json, replay

AGENCIES = ["r1", "r2", "r3"]


class SilentOverflow(AgencyNode):
    """Sets its last value slot to ``2^w - 1`` (above ``upper``; the aggregate overflows)
    and keeps no opening, so it cannot answer the audit."""

    def _seal(self, task: Task, v: npt.NDArray[np.float64], noise: Any) -> bytes:
        spec = task.spec
        q = spec.quantize(v)
        q[-1] = (1 << spec.slot_bits) - 1
        pk = self.scheme.public_key  # type: ignore[attr-defined]
        cts = [pk.raw_encrypt(m) for m in spec.pack(q)]
        return serde.encrypted_vector_to_bytes(EncryptedVector(pk, spec, len(q), 1, cts))


class LyingOverflow(SilentOverflow):
    """Overflows the same way, then answers with a signed proof that does not verify."""

    def answer_range_audit(
        self, task: Task, evidence: ra.OutOfRange, *, signing_key: SigningKey, key_id: bytes
    ) -> ra.RangeAnswer:
        digest = dict(evidence.contributors)[self.name]
        proof = b"\x01" + bytes(96)
        i = evidence.ciphertext
        st = ra.answer_statement(task.job_id, task.round, self.name, key_id, i, digest, proof)
        return ra.RangeAnswer(self.name, i, digest, proof, signing_key.sign(st))


@pytest.fixture(scope="module")
def federation(tmp_path_factory):
    root = tmp_path_factory.mktemp("range-audit")
    files = deal_federation(root, AGENCIES, 2, key_bits=512)
    rng = np.random.default_rng(29)
    for agency in AGENCIES:
        write_visits(files.shares[agency].parent / "visits.csv", rng, 60)
    server = tls_coordinator(root, files, audit_timeout=2.0)
    client = Client(
        f"127.0.0.1:{server.port}",
        read_token(files.scientist_tokens["analyst"]),
        ca_file=files.ca_cert,
    )
    configs = [
        agency_toml(files.shares[a].parent, a, server.port, VISITS, log=False) for a in AGENCIES
    ]
    try:
        yield {"root": root, "files": files, "server": server, "client": client, "configs": configs}
    finally:
        client.close()
        server.stop(grace=1.0)


def _run(federation: dict[str, Any], culprit: str, cls: type[AgencyNode], **submit: Any) -> Any:
    client: Client = federation["client"]
    with running_agents(federation["configs"]) as agents:
        wait_until(lambda: all(a.registrations for a in agents), "agents registered")
        for a in agents:
            if a.config.agency in culprit.split(","):
                a.node.__class__ = cls  # test-only: this daemon now overflows one slot
        job = client.submit("logistic_regression", {"C": 1.0, "max_iter": 4}, "visits", **submit)
        events = list(client.watch(job, timeout=120))
    return job, events


def _excluded(federation: dict[str, Any], culprit: str, cls: type[AgencyNode], why: str) -> None:
    client: Client = federation["client"]
    job, events = _run(federation, culprit, cls)
    final = events[-1]
    assert final.state == "succeeded", final
    assert set(final.departures) == {culprit}
    reason = final.departures[culprit]
    assert re.fullmatch(
        rf"{culprit} was excluded from round 0: its contribution to ciphertext \d+ is out of "
        rf"range \({re.escape(why)}\)",
        reason,
    ), reason
    assert any(e.notice == f"{culprit} left the job: {reason}" for e in events)  # job watch
    status = client.status(job)
    assert status.departures == {culprit: reason}  # job status
    assert any(reason in line for line in client.logs(job))  # job logs
    result = client.result(job)
    assert result["history"] and all(culprit not in r["contributors"] for r in result["history"])
    assert all(len(r["contributors"]) == 2 for r in result["history"])
    _replays_to_the_same_outcome(federation, job, culprit)
    # the model is the one the two honest agencies train alone
    honest = [a for a in AGENCIES if a != culprit]
    with running_agents(federation["configs"]) as agents:
        wait_until(lambda: all(a.registrations for a in agents), "agents registered")
        alone = client.submit(
            "logistic_regression", {"C": 1.0, "max_iter": 4}, "visits", agencies=honest
        )
        assert list(client.watch(alone, timeout=120))[-1].state == "succeeded"
    assert client.result(alone)["model"] == result["model"]


def _replays_to_the_same_outcome(federation: dict[str, Any], job: str, culprit: str) -> None:
    """The stored events (answers stored as the audited round's partials, the deadline as its
    close, the exclusion as a drop) rebuild the same exclusions and rounds after a restart."""
    core = federation["server"].coordinator
    done = core._recent[job]
    fresh = JobRuntime(job, done.spec, "running", done.created)
    build(fresh, core.federation, core.scheme, audit_seconds=core.config.audit_timeout)
    with pytest.raises(ValueError, match="finished, yet it is stored as running"):
        replay(fresh, core.store.events(job), 0.0)
    driver = fresh.driver
    assert driver is not None
    assert [e.agency for e in driver.exclusions] == [culprit]

    def untimed(records: list[str]) -> list[dict[str, Any]]:
        return [{k: v for k, v in json.loads(r).items() if k != "seconds"} for r in records]

    assert untimed([record_json(r) for r in driver.records]) == untimed(done.records)
    assert fresh.left == done.left


def test_a_failing_range_proof_names_and_excludes_the_culprit(federation):
    _excluded(federation, "r2", LyingOverflow, "range proof failed")


def test_a_silent_culprit_is_excluded_by_elimination(federation):
    _excluded(
        federation, "r3", SilentOverflow, "did not prove its range; every other contributor did"
    )


def test_two_silent_culprits_fail_the_job_naming_both(federation):
    _, events = _run(federation, "r1,r3", SilentOverflow)
    final = events[-1]
    assert final.state == "failed", final
    assert "r1, r3 did not answer the range audit within 2 s" in final.failure
    assert final.departures == {}  # nobody can be singled out: nobody is excluded
