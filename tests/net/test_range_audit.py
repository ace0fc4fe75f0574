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
from fedcity.net.coordinator.liveness import ManualClock
from fedcity.net.coordinator.runtime import JobRuntime, build, record_json, replay

AGENCIES = ["r1", "r2", "r3"]
AUDIT_SECONDS = 30.0


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


class LateLyingOverflow(AgencyNode):
    """Honest while a round fits one ciphertext; then overflows and answers a failing proof."""

    def _seal(self, task: Task, v: npt.NDArray[np.float64], noise: Any) -> bytes:
        if task.spec.n_ciphertexts(task.vector_length) < 2:
            return super()._seal(task, v, noise)
        return SilentOverflow._seal(self, task, v, noise)  # type: ignore[arg-type]

    def answer_range_audit(self, *args: Any, **kwargs: Any) -> ra.RangeAnswer:
        return LyingOverflow.answer_range_audit(self, *args, **kwargs)  # type: ignore[arg-type]


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


def _serve(root: Any, agencies: list[str], threshold: int, **deal: Any) -> Any:
    files = deal_federation(root, agencies, threshold, key_bits=512, **deal)
    rng = np.random.default_rng(29)
    for agency in agencies:
        write_visits(files.key_file(agency).parent / "visits.csv", rng, 60)
    clock = ManualClock()  # the audit deadline passes when the test says so, not by load
    server = tls_coordinator(  # liveness far beyond the audit deadline: only the audit ends
        root, files, audit_timeout=AUDIT_SECONDS, liveness_timeout=100 * AUDIT_SECONDS, clock=clock
    )
    client = Client(
        f"127.0.0.1:{server.port}",
        read_token(files.scientist_tokens["analyst"]),
        ca_file=files.ca_cert,
    )
    configs = []
    for a in agencies:  # key-holder mode: agencies other than the holder keep a public key
        path = agency_toml(files.key_file(a).parent, a, server.port, VISITS, log=False)
        text = path.read_text().replace('"share.json"', f'"{files.key_file(a).name}"')
        path.write_text(text)
        configs.append(path)
    try:
        yield {
            "server": server,
            "client": client,
            "configs": configs,
            "agencies": agencies,
            "clock": clock,
        }
    finally:
        client.close()
        server.stop(grace=1.0)


@pytest.fixture(scope="module")
def federation(tmp_path_factory):
    yield from _serve(tmp_path_factory.mktemp("range-audit"), AGENCIES, 2)


def _run(federation: dict[str, Any], culprit: str, cls: type[AgencyNode], **submit: Any) -> Any:
    client: Client = federation["client"]
    with running_agents(federation["configs"]) as agents:
        wait_until(lambda: all(a.registrations for a in agents), "agents registered")
        for a in agents:
            if a.config.agency in culprit.split(","):
                a.node.__class__ = cls  # test-only: this daemon now overflows one slot
        job = client.submit("logistic_regression", {"C": 1.0, "max_iter": 4}, "visits", **submit)
        if cls is SilentOverflow:  # every other contributor answered: let the deadline pass
            core = federation["server"].coordinator
            honest = {a for a in federation["agencies"] if a not in culprit.split(",")}

            def answered() -> bool:
                with core._lock:
                    rt = core._jobs.get(job)
                    audit = None if rt is None or rt.driver is None else rt.driver.auditing
                    return audit is not None and set(audit.answers) == honest

            wait_until(answered, "the honest agencies answered the range audit")
            federation["clock"].advance(AUDIT_SECONDS)
        events = list(client.watch(job, timeout=120))
    return job, events


def _excluded(
    federation: dict[str, Any], culprit: str, cls: type[AgencyNode], why: str, late: bool = False
) -> Any:
    client: Client = federation["client"]
    job, events = _run(federation, culprit, cls)
    final = events[-1]
    assert final.state == "succeeded", final
    assert set(final.departures) == {culprit}
    reason = final.departures[culprit]
    match = re.fullmatch(
        rf"{culprit} was excluded from round (\d+): its contribution to ciphertext \d+ is out "
        rf"of range \({re.escape(why)}\)",
        reason,
    )
    assert match is not None, reason
    first = int(match.group(1))
    assert (first > 0) == late
    assert any(e.notice == f"{culprit} left the job: {reason}" for e in events)  # job watch
    status = client.status(job)
    assert status.departures == {culprit: reason}  # job status
    assert any(reason in line for line in client.logs(job))  # job logs
    result = client.result(job)
    history = result["history"][first:]
    assert history and all(culprit not in r["contributors"] for r in history)
    assert all(len(r["contributors"]) == len(federation["agencies"]) - 1 for r in history)
    audit = _replays_to_the_same_outcome(federation, job, culprit)
    log = federation["server"].coordinator.audit  # the coordinator's signed audit log
    (record,) = [r for r in log.records() if r.type == "exclusion" and r.job == job]
    assert record.body["excluded"] == {culprit: audit.outcome.excluded[0].how}
    answers = [r for r in log.records() if r.type == "range-proof" and r.job == job]
    valid = {r.body["agency"]: r.body["valid"] for r in answers}
    assert valid.pop(culprit, False) is False and all(valid.values())  # silent: no record
    if first:  # the culprit contributed honestly before: another model than the honest ones'
        return audit
    # the model is the one the two honest agencies train alone
    honest = [a for a in federation["agencies"] if a != culprit]
    with running_agents(federation["configs"]) as agents:
        wait_until(lambda: all(a.registrations for a in agents), "agents registered")
        alone = client.submit(
            "logistic_regression", {"C": 1.0, "max_iter": 4}, "visits", agencies=honest
        )
        assert list(client.watch(alone, timeout=120))[-1].state == "succeeded"
    assert client.result(alone)["model"] == result["model"]
    return audit


def _replays_to_the_same_outcome(federation: dict[str, Any], job: str, culprit: str) -> Any:
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
    return next(iter(driver.audits.values()))

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
    assert "r1, r3 did not answer the range audit within 30 s" in final.failure
    assert final.departures == {}  # nobody can be singled out: nobody is excluded


def test_key_holder_mode_excludes_an_agency_whose_proof_fails(tmp_path_factory):
    """The key holder re-verifies the failing proof on the culprit's own contribution."""
    root = tmp_path_factory.mktemp("range-audit-key-holder")
    for fed in _serve(root, AGENCIES, 1, key_holder="r1"):
        _excluded(fed, "r2", LyingOverflow, "range proof failed")


def test_decryption_groups_audit_the_part_that_overflowed(tmp_path_factory):
    """Five share holders, t = 2: a round is decrypted by two groups, each its own part."""
    root = tmp_path_factory.mktemp("range-audit-groups")
    for fed in _serve(root, ["g1", "g2", "g3", "g4", "g5"], 2):
        audit = _excluded(fed, "g3", LateLyingOverflow, "range proof failed", late=True)
        assert audit.evidence.part is not None  # only the overflowing part's partials shown
