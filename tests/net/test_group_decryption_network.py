"""Decryption groups over the network: each share holder decrypts only its part.

With a 1-of-3 key, three share holders form ``⌊3/1⌋ = 3`` disjoint groups; the coordinator
hands each its part (``Assignment.part_start/part_stop``), checks the partial against that
part, and combines the parts. The model equals the in-process federation's.
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
        if k < 3:  # fewer ciphertexts than groups: min(3, k) parts (1: the whole, unsplit)
            assert len(entries) == k
            continue
        split += 1
        assert sorted(e[1] for e in entries) == list(AGENCIES)  # three disjoint groups
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
    assert len(rnd.parts) == 3
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
