"""Contribution integrity over real loopback gRPC: signed uploads, decryptor-side checks.

(a) a previous round's aggregate relabelled as one summand, or an agency's own old
    contribution, replayed into a later round is refused, signed or not, store unchanged;
(b) a contribution signed by another agency, or for another job, round, kind or key, is
    refused with PERMISSION_DENIED, one without a signature with INVALID_ARGUMENT;
(c) a deviating coordinator that serves one agency's contribution as the aggregate makes the
    real agent daemons decline, naming the mismatch, and nothing is decrypted;
(d) an honest job with the real agent daemons (ceremony keys, TLS) still equals the
    in-process federation; every stored upload carries a valid signature and every close
    event the digests of the contributions its aggregate adds.
"""

from __future__ import annotations

import dataclasses
import hashlib
import threading
from pathlib import Path

import numpy as np
from harness import Setup, wait_until
from loopback import (
    AGENCIES,
    DATASET,
    SIGNING,
    Code,
    auth,
    drive,
    refused,
    registered_agents,
    runtime,
    snapshot,
    start,
    submit,
)

from fedcity.core.rounds import RoundPhase
from fedcity.crypto import KeyShare
from fedcity.crypto.signing import SigningKey, Statement
from fedcity.learn import LocalFederation, LogisticRegressionJob
from fedcity.net.agent import Agent as AgentDaemon
from fedcity.net.agent import AgentConfig
from fedcity.net.ceremony import deal_federation, load_federation, read_token
from fedcity.net.client import Client
from fedcity.net.coordinator import CoordinatorConfig, serve
from fedcity.net.integrity import parse_close_record
from fedcity.net.store import Store
from fedcity.v1 import crypto_pb2 as cpb
from fedcity.v1 import federation_pb2 as fpb

CONTRIBUTION = fpb.PAYLOAD_KIND_CONTRIBUTION


def _relabelled(payload: bytes, summands: int) -> bytes:
    msg = cpb.EncryptedVector.FromString(payload)
    msg.summands = summands
    return msg.SerializeToString()


def _fresh_round(server, job_id, min_done):
    def ready() -> bool:
        rt = runtime(server, job_id)
        rnd = rt.driver.round
        return (
            rt.rounds_done >= min_done
            and rnd.phase is RoundPhase.COLLECTING
            and not rnd.contributions
            and rt.driver.rounds[rnd.task.round - 1].task.spec == rnd.task.spec
        )

    return ready


# -- (a) and (b): what the coordinator accepts ------------------------------------------------
def test_relabelled_previous_aggregate_is_refused_signed_or_not(files, key, data, servers):
    server = start(files)
    servers.append(server)
    agents = registered_agents(server, key, data)
    job_id = submit(server.port).job_id
    drive(agents, _fresh_round(server, job_id, 2))
    rnd = runtime(server, job_id).driver.round
    r = rnd.task.round
    attacker = agents[0]
    stream = attacker.stub.FetchAggregate(
        fpb.AggregateRef(job_id=job_id, round=r - 1), metadata=auth(attacker.name), timeout=10
    )
    old_aggregate = b"".join(c.data for c in stream)
    forged = _relabelled(old_aggregate, 1)  # the same layout as round r: it would fit
    own_old = next(p for j, rr, k, p in attacker.uploads if rr == r - 1 and k == CONTRIBUTION)
    own_old_signature = attacker.sign(job_id, r - 1, CONTRIBUTION, own_old)
    before = snapshot(files["db"])
    cases = [
        # unsigned, as it used to be accepted
        (Code.INVALID_ARGUMENT, dict(payload=forged, signature=b""), "carries no signature"),
        # signed by the attacker, but for the round the aggregate came from
        (
            Code.PERMISSION_DENIED,
            dict(payload=forged, signature=attacker.sign(job_id, r - 1, CONTRIBUTION, forged)),
            f"round {r}",
        ),
        # uploaded for the wrong (previous) round, validly signed for it: that round took
        # the attacker's real contribution, which stands
        (Code.ALREADY_EXISTS, dict(payload=forged, round_=r - 1), "the first upload stands"),
        # the attacker's own contribution of round r - 1, replayed with its old signature
        (
            Code.PERMISSION_DENIED,
            dict(payload=own_old, signature=own_old_signature),
            "not 'district-01''s signature",
        ),
    ]
    for code, upload, match in cases:
        upload = {"round_": r, **upload}
        refused(
            code,
            lambda u=upload: attacker.upload(
                job_id,
                u["round_"],
                CONTRIBUTION,
                u["payload"],
                **{k: v for k, v in u.items() if k == "signature"},
            ),
            match=match,
        )
        assert snapshot(files["db"]) == before
    assert not runtime(server, job_id).driver.round.contributions


def test_uploads_signed_for_other_fields_or_by_another_agency_are_refused(
    files, key, data, servers
):
    server = start(files)
    servers.append(server)
    agents = registered_agents(server, key, data)
    job_id = submit(server.port).job_id
    a1 = agents[0]
    assignment = a1.fetch()
    kind, payload = a1.compute(assignment)
    r = assignment.round
    key_id = key[0].key_id
    statement = Statement.for_payload(job_id, r, "contribution", a1.name, key_id, payload)
    genuine = a1.signing.sign(statement)

    def signed(**changes):
        return a1.signing.sign(dataclasses.replace(statement, **changes))

    before = snapshot(files["db"])
    forgeries = {
        "another agency's key": SIGNING[AGENCIES[1]].sign(statement),
        "another job": signed(job_id="0123456789ab"),
        "another round": signed(round=r + 1),
        "another kind": signed(kind="partial"),
        "another key id": signed(key_id=bytes(16)),
        "another agency's name": signed(agency=AGENCIES[1]),
        "another payload": signed(digest=hashlib.sha256(b"other").digest()),
        "a fresh key outside the federation": SigningKey.generate().sign(statement),
        "a damaged signature": bytes([genuine[0] ^ 1]) + genuine[1:],
    }
    for what, signature in forgeries.items():
        message = refused(
            Code.PERMISSION_DENIED,
            lambda s=signature: a1.upload(job_id, r, kind, payload, signature=s),
            match="signature on this upload is not 'district-01''s signature",
        )
        assert f"job {job_id}, round {r}" in message, what
        assert snapshot(files["db"]) == before, what
    refused(
        Code.INVALID_ARGUMENT,
        lambda: a1.upload(job_id, r, kind, payload, signature=b""),
        match="carries no signature",
    )
    refused(
        Code.PERMISSION_DENIED,
        lambda: a1.upload(job_id, r, kind, payload, signature=b"\0" * 10),
        match="is 10 bytes",
    )
    assert snapshot(files["db"]) == before
    # the genuine signature is accepted, and stored with the event
    assert a1.upload(job_id, r, kind, payload).stored
    events = [e for e in server.coordinator.store.events(job_id) if e.type == "contribution"]
    assert [(e.agency, e.signature) for e in events] == [(a1.name, genuine)]


# -- (c): a deviating coordinator -------------------------------------------------------------
def _write_federation(root: Path, data) -> Setup:
    """A real ceremony (512-bit 2-of-3 key, signing keys, TLS) and one CSV per agency."""
    _, spec, tables = data
    files = deal_federation(root / "fed", list(AGENCIES), 2, key_bits=512)
    csv = {}
    for table in tables:
        csv[table.agency] = root / "data" / f"{table.agency}.csv"
        csv[table.agency].parent.mkdir(parents=True, exist_ok=True)
        table.to_frame().to_csv(csv[table.agency], index=False)
    return Setup(root / "fed", files, list(AGENCIES), 2, DATASET, spec, csv)


def _run_daemons(setup: Setup, server, root: Path):
    daemons = []
    for agency in setup.agencies:
        path = setup.write_agent_config(
            root / "agents" / agency, agency, f"127.0.0.1:{server.port}"
        )
        daemons.append(
            AgentDaemon(
                AgentConfig.from_toml(path), fetch_wait_ms=300, backoff_base=0.05, backoff_cap=0.5
            )
        )
    threads = [
        threading.Thread(target=d.run, kwargs={"handle_signals": False}, daemon=True)
        for d in daemons
    ]
    for t in threads:
        t.start()
    return daemons, threads


def _serve(setup: Setup, root: Path):
    files = setup.files
    return serve(
        CoordinatorConfig(
            listen="127.0.0.1:0",
            db=root / "coordinator.sqlite",
            federation=files.public,
            credentials=files.credentials,
            tls_cert=files.server_cert,
            tls_key=files.server_key,
            heartbeat_interval=0.5,
            max_wait=0.5,
            tick_interval=0.05,
        )
    )


def _client(setup: Setup, server) -> Client:
    token = read_token(setup.files.scientist_tokens["analyst"])
    return Client(f"127.0.0.1:{server.port}", token, ca_file=setup.files.ca_cert, timeout=15)


def _run_job(setup: Setup, server, timeout: float):
    """Submit the logistic regression once the three agents are connected; its last event."""
    with _client(setup, server) as client:
        wait_until(
            lambda: sum(a.connected for a in client.agencies()) == 3,
            timeout=30,
            what="three agents",
        )
        job_id = client.submit("logistic_regression", {"C": 0.5}, DATASET)
        *_, last = client.watch(job_id, timeout=timeout)
        result = client.result(job_id) if last.state == "succeeded" else None
    return job_id, last, result


def _events(root: Path, job_id: str):
    store = Store(root / "coordinator.sqlite")
    try:
        return store.events(job_id)
    finally:
        store.close()


def test_decryptors_decline_a_single_contribution_served_as_the_aggregate(data, tmp_path):
    setup = _write_federation(tmp_path, data)
    server = _serve(setup, tmp_path)
    core = server.coordinator
    honest = core.aggregate
    victim = AGENCIES[1]
    served: list[int] = []

    def deviating(principal, ref):
        """Serve the victim's contribution relabelled as an aggregate of everyone."""
        with core._lock:
            rnd = core._jobs[ref.job_id].driver.rounds[ref.round]
            forged = _relabelled(rnd.contributions[victim], len(rnd.contributors))
        assert forged != honest(principal, ref)
        served.append(ref.round)
        return forged

    core.aggregate = deviating
    daemons, (job_id, last, _) = _job_with_daemons(setup, server, tmp_path, 60)
    assert served, "no decryptor was asked"
    assert last.state == "failed"
    events = _events(tmp_path, job_id)
    assert not [e for e in events if e.type == "partial"]  # nothing was decrypted
    drops = [e for e in events if e.type == "drop"]
    assert len(drops) >= 2
    for e in drops:
        reason = e.payload.decode()
        assert f"agency {e.agency!r} refuses to decrypt" in reason
        assert "is not the product of the 3 signed contributions" in reason
    declined = [
        entry for d in daemons for entry in d.served if entry["action"] == "partial_decrypt"
    ]
    # every asked decryptor refused; one whose refusal came after the job had already failed
    # (two refusals leave too few decryptors) is told so ("rejected"), having decrypted nothing
    assert declined and all(e["outcome"] in ("declined", "rejected") for e in declined)
    assert any(e["outcome"] == "declined" for e in declined)
    assert all("is not the product" in e["reason"] for e in declined)


def _job_with_daemons(setup, server, tmp_path, timeout):
    """Run one job with the real agent daemons, then stop them and the server."""
    daemons, threads = _run_daemons(setup, server, tmp_path)
    try:
        return daemons, _run_job(setup, server, timeout)
    finally:
        for d in daemons:
            d.stop()
        for t in threads:
            t.join(timeout=10)
        server.stop(grace=0)


# -- (d): the honest job with the real daemons --------------------------------------------------
def test_honest_job_with_real_agents_equals_the_local_federation(data, tmp_path):
    setup = _write_federation(tmp_path, data)
    shares = [KeyShare.load(setup.files.shares[a]) for a in AGENCIES]
    tables = setup.tables()
    with LocalFederation(
        [tables[a] for a in AGENCIES], threshold=2, key=(shares[0].threshold_key, shares)
    ) as fed:
        reference = LogisticRegressionJob(C=0.5).fit(fed)
    server = _serve(setup, tmp_path)
    daemons, (job_id, last, result) = _job_with_daemons(setup, server, tmp_path, 90)
    assert last.state == "succeeded", last.failure
    np.testing.assert_allclose(
        result["model"]["beta"], reference.model_params_["beta"], rtol=0, atol=1e-8
    )
    federation = load_federation(setup.files.public)
    events = _events(tmp_path, job_id)
    contributions: dict[int, dict[str, bytes]] = {}
    for e in events:
        if e.type in ("contribution", "partial"):
            statement = Statement.for_payload(
                job_id, e.round, e.type, e.agency, federation.key_id, e.payload
            )
            assert federation.signing_keys[e.agency].verify(statement, e.signature)
        if e.type == "contribution":
            contributions.setdefault(e.round, {})[e.agency] = e.payload
        if e.type == "close":
            digests = {a: hashlib.sha256(p).hexdigest() for a, p in contributions[e.round].items()}
            assert parse_close_record(e.payload) == digests
    # every decryptor logged the contributions it checked before decrypting
    checked = [entry for d in daemons for entry in d.served if entry["action"] == "partial_decrypt"]
    assert len(checked) == 2 * len(result["history"])
    assert all(sorted(entry["contributions"]) == list(AGENCIES) for entry in checked)


def test_contributions_are_shown_only_to_the_rounds_decryptors(files, key, data, servers):
    server = start(files)
    servers.append(server)
    agents = registered_agents(server, key, data)
    job_id = submit(server.port).job_id
    ref = fpb.AggregateRef(job_id=job_id, round=0)
    fetch = lambda a: list(  # noqa: E731
        a.stub.FetchContributions(ref, metadata=auth(a.name), timeout=10)
    )
    refused(Code.FAILED_PRECONDITION, lambda: fetch(agents[0]), match="is not being decrypted")
    for a in agents:
        assert a.step() == fpb.ACTION_CONTRIBUTE
    asked = agents[0].fetch()
    assert asked.action == fpb.ACTION_PARTIAL_DECRYPT
    assert sorted(runtime(server, job_id).asked[0]) == [AGENCIES[0], AGENCIES[1]]
    refused(Code.FAILED_PRECONDITION, lambda: fetch(agents[2]), match="was not asked to decrypt")
    refused(
        Code.PERMISSION_DENIED,
        lambda: agents[0].stub.FetchContributions(ref, metadata=auth("analyst"), timeout=10),
    )
    evidence = agents[0].evidence(asked)
    rnd = runtime(server, job_id).driver.round
    assert evidence.agencies == list(AGENCIES)
    assert {c.agency: c.payload for c in evidence.contributions} == rnd.contributions
    for c in evidence.contributions:
        statement = Statement(job_id, 0, "contribution", c.agency, key[0].key_id, c.digest)
        assert SIGNING[c.agency].public_key.verify(statement, c.signature)
