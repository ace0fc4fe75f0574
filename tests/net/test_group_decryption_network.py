"""Decryption groups over the network: each share holder decrypts only its part.

With a 1-of-3 key, three share holders form ``⌊(3-1)/1⌋ = 2`` disjoint groups and one holder
stays in reserve; the coordinator hands each decryptor its part
(``Assignment.part_start/part_stop``), checks the partial against that part, moves a silent
decryptor's part to the reserve, and combines the parts. The model equals the in-process
federation's.
"""

from __future__ import annotations

import pytest
from loopback import (
    AGENCIES,
    Agent,
    auth,
    betas,
    drive,
    job_state,
    runtime,
    scientist,
    snapshot,
    start,
    submit,
)

from fedcity.core.rounds import RoundPhase
from fedcity.crypto import deal_threshold_key, serde
from fedcity.learn import LocalFederation, LogisticRegressionJob
from fedcity.net import messages
from fedcity.v1 import federation_pb2 as fpb


@pytest.fixture(scope="module")
def key():
    """1-of-3: three holders, 2t = 2 <= 3, so every round is split three ways."""
    return deal_threshold_key(512, threshold=1, parties=3)


class PartAgent(Agent):
    """The in-test agent, decrypting the part it is assigned (as the agent daemon does)."""

    silent_decrypt = False

    def step(self, wait_ms: int = 0) -> int | None:
        if not self.silent_decrypt:
            return super().step(wait_ms)
        a = self.fetch(wait_ms)
        if a is None or a.action == fpb.ACTION_PARTIAL_DECRYPT:
            return None  # takes the assignment, never answers
        kind, payload = self.compute(a)
        assert self.upload(a.job_id, a.round, kind, payload).stored
        return int(a.action)

    def compute(self, a: fpb.Assignment) -> tuple[int, bytes]:
        if a.action != fpb.ACTION_PARTIAL_DECRYPT:
            return super().compute(a)
        stream = self.stub.FetchAggregate(
            fpb.AggregateRef(job_id=a.job_id, round=a.round), metadata=auth(self.name), timeout=10
        )
        _, aggregate = messages.assemble(stream)
        part = (a.part_start, a.part_stop) if a.part_stop else None
        payload = self.node.decrypt_share(
            messages.assignment_to_task(a),
            aggregate,
            summands_min=a.summands_min,
            evidence=self.evidence(a),
            part=part,
        )
        pk = self.node.scheme.public_key
        k = len(serde.encrypted_vector_from_bytes(aggregate, pk).ciphertexts)
        n = len(serde.partial_decryption_from_bytes(payload, pk).partials)
        PART_LOG.append((a.round, self.name, a.part_start, a.part_stop, k, n))
        return fpb.PAYLOAD_KIND_PARTIAL, payload


PART_LOG: list[tuple[int, str, int, int, int, int]] = []
"""(round, agency, part start, part stop, ciphertexts in the aggregate, partials sent)."""


def test_each_holder_decrypts_only_its_part_and_the_model_is_unchanged(files, key, data, servers):
    _, _, tables = data
    with LocalFederation(tables, threshold=1, key=key) as fed:
        local = LogisticRegressionJob(C=0.5).fit(fed)
    server = start(files)
    servers.append(server)
    agents = [
        PartAgent(n, t, key).connect(server.port) for n, t in zip(AGENCIES, tables, strict=True)
    ]
    for a in agents:
        a.register()
    job_id = submit(server.port).job_id
    drive(agents, lambda: job_state(server.port, job_id) == fpb.JOB_STATE_SUCCEEDED)
    result = scientist(server.port).GetResult(
        fpb.JobRef(job_id=job_id), metadata=auth("analyst"), timeout=10
    )
    assert betas(result.result_json) == pytest.approx(local.model_params_["beta"], abs=1e-8)

    log = list(PART_LOG)
    PART_LOG.clear()
    rounds = sorted({e[0] for e in log})
    assert rounds == list(range(len(rounds)))
    split = 0
    for r in rounds:
        entries = sorted((e for e in log if e[0] == r), key=lambda e: e[2])
        k = entries[0][4]
        if k < 2:  # one ciphertext: decrypted whole, by one holder
            assert len(entries) == 1
            continue
        split += 1
        assert sorted(e[1] for e in entries) == list(AGENCIES[:2])  # 2 groups, 1 in reserve
        covered = [j for e in entries for j in range(e[2], e[3])]
        assert covered == list(range(k))  # every ciphertext decrypted exactly once
        assert all(e[5] == e[3] - e[2] < k for e in entries)  # each sent its part only
    assert split >= 3  # the Newton rounds (gradient and Hessian: several ciphertexts)
    events = [row[2] for row in snapshot(files["db"])[0]]
    assert events.count("partial") == len(log)


def test_restart_mid_decryption_recovers_the_parts_from_the_stored_partials(
    files, key, data, servers
):
    _, _, tables = data
    agents = [PartAgent(n, t, key) for n, t in zip(AGENCIES, tables, strict=True)]
    first = start(files)
    servers.append(first)
    for a in agents:
        a.connect(first.port).register()
    job_id = submit(first.port).job_id

    def decrypting() -> bool:
        rnd = runtime(first, job_id).driver.round
        return (
            rnd is not None
            and rnd.phase is RoundPhase.DECRYPTING
            and len(rnd.aggregate.ciphertexts) >= 3
            and not rnd.partials
        )

    PART_LOG.clear()
    drive(agents, decrypting)
    rnd = runtime(first, job_id).driver.round
    assert len(rnd.parts) == 2
    plan = {a: rnd.part_for(a) for a in AGENCIES}
    assert agents[1].step() == fpb.ACTION_PARTIAL_DECRYPT
    first.stop(grace=0)

    second = start(files)
    servers.append(second)
    for a in agents:
        a.connect(second.port)
    again = runtime(second, job_id).driver.round
    assert again.phase is RoundPhase.DECRYPTING and list(again.partials) == [AGENCIES[1]]
    assert again.part_for(AGENCIES[1]) == plan[AGENCIES[1]]  # found from its digest
    drive(agents, lambda: job_state(second.port, job_id) == fpb.JOB_STATE_SUCCEEDED)
    PART_LOG.clear()


def test_a_silent_decryptors_part_moves_to_the_reserve(files, key, data, servers):
    """Deadlines on an injected clock: after ``decrypt_timeout`` the part is reassigned."""
    from fedcity.net.coordinator import ManualClock

    _, _, tables = data
    with LocalFederation(tables, threshold=1, key=key) as fed:
        local = LogisticRegressionJob(C=0.5).fit(fed)
    clock = ManualClock()
    server = start(files, clock=clock, decrypt_timeout=1.0, liveness_timeout=1e6)
    servers.append(server)
    agents = [PartAgent(n, t, key) for n, t in zip(AGENCIES, tables, strict=True)]
    for a in agents:
        a.connect(server.port).register()
    agents[0].silent_decrypt = True
    job_id = submit(server.port).job_id
    PART_LOG.clear()
    done = lambda: runtime(server, job_id).state != "running"  # noqa: E731
    drive(agents, done, server=server, clock=clock)
    assert job_state(server.port, job_id) == fpb.JOB_STATE_SUCCEEDED
    result = scientist(server.port).GetResult(
        fpb.JobRef(job_id=job_id), metadata=auth("analyst"), timeout=10
    )
    assert betas(result.result_json) == pytest.approx(local.model_params_["beta"], abs=1e-8)
    log = list(PART_LOG)
    PART_LOG.clear()
    assert {e[1] for e in log} == {AGENCIES[1], AGENCIES[2]}  # the reserve took the part
    for r in {e[0] for e in log if e[4] >= 2}:  # split rounds: both parts, by the two others
        entries = sorted((e for e in log if e[0] == r), key=lambda e: e[2])
        assert [j for e in entries for j in range(e[2], e[3])] == list(range(entries[0][4]))
        assert sorted(e[1] for e in entries) == [AGENCIES[1], AGENCIES[2]]


def test_real_agent_daemons_decrypt_their_parts_over_tls(tmp_path):
    """Four agent daemons, t = 1: three groups of one and one in reserve."""
    import sqlite3

    from daemons import agency_toml, running_agents, tls_coordinator, wait_connected, wait_until

    from fedcity.analytics.spec import QuerySpec
    from fedcity.net.ceremony import deal_federation, load_federation, read_token
    from fedcity.net.client import Client

    names = ["g1", "g2", "g3", "g4"]
    levels = [f"w{i:02d}" for i in range(40)]  # 40 cells: several ciphertexts at 512 bits
    spec = QuerySpec.from_dict(
        {
            "table": "requests",
            "group_by": ["ward"],
            "columns": {"ward": {"levels": levels}},
            "aggregate": [{"name": "n", "func": "count"}],
        }
    )
    files = deal_federation(tmp_path, names, 1, key_bits=512)
    server = tls_coordinator(tmp_path, files)
    configs = []
    for i, agency in enumerate(names):
        folder = files.shares[agency].parent
        rows = "\n".join(levels[(i + j) % 40] for j in range(800))
        (folder / "requests.csv").write_text("ward\n" + rows + "\n")
        body = '[tables.requests]\npath = "requests.csv"\ncolumns = { ward = "category" }\n'
        configs.append(agency_toml(folder, agency, server.port, body))
    client = Client(
        f"127.0.0.1:{server.port}",
        read_token(files.scientist_tokens["analyst"]),
        ca_file=files.ca_cert,
    )
    try:
        with running_agents(configs):
            wait_connected(client, len(names))
            job = client.submit_query(spec)
            wait_until(lambda: client.status(job).state != "running", "the query", 60)
            assert client.status(job).state == "succeeded", client.status(job).failure
            counts = client.query_result(job).frame["n"].tolist()
    finally:
        client.close()
        server.stop(grace=1.0)
    assert counts == [80] * 40  # 4 agencies × 800 rows spread evenly over 40 wards
    pk = load_federation(files.public).threshold_key
    with sqlite3.connect(tmp_path / "coordinator.sqlite") as db:
        rows = db.execute(
            "SELECT type, agency, round, payload FROM events WHERE job_id = ? AND type IN "
            "('close', 'partial')",
            (job,),
        ).fetchall()
    partials = [(a, r, p) for t, a, r, p in rows if t == "partial"]
    split = [
        (a, r, len(serde.partial_decryption_from_bytes(p, pk.public_key).partials))
        for a, r, p in partials
    ]
    by_round: dict[int, list[tuple[str, int]]] = {}
    for a, r, n in split:
        by_round.setdefault(r, []).append((a, n))
    assert any(len(v) == 3 for v in by_round.values())  # a split round: three groups of one
    for v in by_round.values():
        assert len(v) in (1, 3)
        sizes = [n for _, n in v]
        assert max(sizes) - min(sizes) <= 1  # near-equal parts (or the whole, unsplit)
