"""Decryption groups and optimistic combination in the round state machine (real Paillier)."""

from __future__ import annotations

import dataclasses
import hashlib

import numpy as np
import pytest
from gmpy2 import mpz

from fedcity.core import (
    AgencyNode,
    AggregationRound,
    ContributionVerifier,
    Evidence,
    PaillierScheme,
    ProtocolError,
    RejectedContribution,
    RoundPhase,
    SignedContribution,
    Task,
    TaskRequest,
)
from fedcity.core.rounds import ProofsNeeded
from fedcity.crypto import PackingSpec, SlotRangeError, deal_threshold_key, serde
from fedcity.crypto.signing import SigningKey, Statement
from fedcity.learn import stats  # noqa: F401  (registers the vetted stats steps)

NAMES = tuple(f"agency-{i}" for i in range(5))
LENGTH = 60  # values; with the overflow slot 61, several ciphertexts at 512 bits


@pytest.fixture(scope="module")
def key_2of5():
    return deal_threshold_key(512, threshold=2, parties=5)


@pytest.fixture(scope="module")
def signing():
    return {name: SigningKey.generate() for name in NAMES}


def _task() -> Task:
    req = TaskRequest("stats.mean", {"total_weight": 1.0}, LENGTH, clip=8.0)
    spec = PackingSpec(clip=8.0, precision_bits=40, max_summands=5, n_length=512)
    return Task("job-g", 0, req, spec)


def _world(key, *, optimistic: bool, signing=None):
    tpk, shares = key
    scheme = PaillierScheme(tpk, optimistic=optimistic)
    verifier = None
    if signing is not None:
        verifier = ContributionVerifier(
            {a: k.public_key for a, k in signing.items()}, tpk.public_key.key_id
        )
    nodes = {
        name: AgencyNode(name, None, scheme, share=s, verifier=verifier)
        for name, s in zip(NAMES, shares, strict=True)
    }
    task = _task()
    rnd = AggregationRound(
        task,
        scheme,
        participants=list(NAMES),
        min_contributors=3,
        share_index_of={n: nodes[n].share.index for n in NAMES},
    )
    rng = np.random.default_rng(3)
    vectors = {n: rng.uniform(-8, 8, task.vector_length) for n in NAMES}
    payloads = {n: scheme.seal(vectors[n], task.spec) for n in NAMES}
    for n in NAMES:
        rnd.submit(n, payloads[n])
    agg = rnd.close()
    expected = np.sum(list(vectors.values()), axis=0)[:LENGTH]
    return scheme, nodes, task, rnd, agg, payloads, expected


def _decrypt(nodes, task, rnd, agg, agency, **kw):
    part = rnd.part_for(agency)
    where = None if part is None else (part.start, part.stop)
    return nodes[agency].decrypt_share(task, agg, summands_min=3, part=where, **kw)


def _tol(task: Task) -> float:
    return 5 * task.spec.step * len(NAMES)


def test_groups_cover_every_ciphertext_once_and_release_the_sum(key_2of5):
    scheme, nodes, task, rnd, agg, _, expected = _world(key_2of5, optimistic=False)
    k = len(rnd.aggregate.ciphertexts)
    plan = rnd.plan_decryption(list(NAMES))
    assert len(rnd.parts) == 2 and k >= 2  # ⌊5/2⌋ groups of t=2, one spare
    covered = [j for p in rnd.parts for j in range(p.start, p.stop)]
    assert covered == list(range(k))  # every ciphertext exactly once, in order
    assert sorted(plan) == list(NAMES[:4])  # disjoint groups; agency-4 is the spare
    for p in rnd.parts:
        assert [a for a, q in plan.items() if q == p] == [
            a for a in NAMES if rnd.part_of.get(a) == p.index
        ]
        assert len([a for a in plan if plan[a] == p]) == 2
    for a in plan:
        assert not rnd.ready
        rnd.submit_partial(a, _decrypt(nodes, task, rnd, agg, a))
    assert rnd.ready
    np.testing.assert_allclose(rnd.release(), expected, atol=_tol(task))
    # each decryptor worked on its part only
    for a in plan:
        part = rnd.part_for(a)
        assert part is not None
        pd = serde.partial_decryption_from_bytes(rnd.partials[a], scheme.public_key)
        assert len(pd.partials) == part.stop - part.start < k


def test_a_partial_for_the_wrong_part_or_from_an_unassigned_holder_is_refused(key_2of5):
    _, nodes, task, rnd, agg, _, _ = _world(key_2of5, optimistic=False)
    rnd.plan_decryption(list(NAMES))
    whole = nodes["agency-0"].decrypt_share(task, agg, summands_min=3)
    with pytest.raises(RejectedContribution, match="not of the aggregate"):
        rnd.submit_partial("agency-0", whole)
    with pytest.raises(RejectedContribution, match="not asked"):
        rnd.submit_partial("agency-4", whole)
    assert rnd.partials == {}
    with pytest.raises(ProtocolError, match="already planned"):
        rnd.plan_decryption(list(NAMES))


def test_a_dropped_decryptors_part_alone_is_reassigned(key_2of5):
    _, nodes, task, rnd, agg, _, expected = _world(key_2of5, optimistic=False)
    plan = rnd.plan_decryption(list(NAMES))
    before = dict(rnd.part_of)
    for a in ("agency-0", "agency-1", "agency-2"):
        rnd.submit_partial(a, _decrypt(nodes, task, rnd, agg, a))
    assert rnd.reassign("agency-0", NAMES) is None  # it answered: nothing moves
    gone = "agency-3"
    assert rnd.reassign(gone, [a for a in NAMES if a != gone]) == "agency-4"
    assert rnd.part_of["agency-4"] == before[gone]
    assert {a: p for a, p in rnd.part_of.items() if a != "agency-4"} == {
        a: p for a, p in before.items() if a != gone
    }
    live = [a for a in NAMES if a != gone]
    assert rnd.reassign("agency-4", live) is None  # no live holder is without a part
    rnd.part_of["agency-4"] = before[gone]  # (undo the probe above)
    assert not rnd.ready
    rnd.submit_partial("agency-4", _decrypt(nodes, task, rnd, agg, "agency-4"))
    assert rnd.part_for("agency-4") == plan[gone]
    np.testing.assert_allclose(rnd.release(), expected, atol=_tol(task))


def test_fewer_than_2t_holders_decrypt_the_whole_aggregate_as_before(key_2of5):
    _, nodes, task, rnd, agg, _, expected = _world(key_2of5, optimistic=False)
    plan = rnd.plan_decryption(["agency-2", "agency-0", "agency-1"])
    assert len(rnd.parts) == 1 and sorted(plan) == ["agency-0", "agency-2"]
    assert rnd.part_for("agency-2") is None
    rnd.submit_partial("agency-3", _decrypt(nodes, task, rnd, agg, "agency-3"))  # any holder
    rnd.submit_partial("agency-1", _decrypt(nodes, task, rnd, agg, "agency-1"))
    np.testing.assert_allclose(rnd.release(), expected, atol=_tol(task))


def _evidence(signing, key_id, task, payloads):
    def sig(agency, payload):
        st = Statement.for_payload(task.job_id, task.round, "contribution", agency, key_id, payload)
        return signing[agency].sign(st)

    return Evidence(
        task.job_id,
        task.round,
        tuple(
            SignedContribution(a, sig(a, p), hashlib.sha256(p).digest(), p)
            for a, p in payloads.items()
        ),
    )


def test_a_decryptor_checks_its_part_against_the_signed_contributions(key_2of5, signing):
    scheme, nodes, task, rnd, agg, payloads, expected = _world(
        key_2of5, optimistic=False, signing=signing
    )
    key_id = scheme.public_key.key_id
    evidence = _evidence(signing, key_id, task, payloads)
    rnd.plan_decryption(list(NAMES))
    for a in list(rnd.part_of):
        rnd.submit_partial(a, _decrypt(nodes, task, rnd, agg, a, evidence=evidence))
    np.testing.assert_allclose(rnd.release(), expected, atol=_tol(task))

    # a coordinator that swaps one ciphertext of the second part for a contribution's
    vec = serde.encrypted_vector_from_bytes(agg, scheme.public_key)
    single = serde.encrypted_vector_from_bytes(payloads["agency-0"], scheme.public_key)
    second = rnd.parts[1]
    vec.ciphertexts[second.start] = single.ciphertexts[second.start]
    forged = serde.encrypted_vector_to_bytes(vec)
    fresh = AgencyNode("agency-2", None, scheme, share=nodes["agency-2"].share)
    fresh.verifier = ContributionVerifier({a: k.public_key for a, k in signing.items()}, key_id)
    # ... is caught by the group decrypting that part, naming the absolute position
    with pytest.raises(RejectedContribution, match=f"ciphertext {second.start} differs"):
        fresh.decrypt_share(
            task, forged, summands_min=3, evidence=evidence, part=(second.start, second.stop)
        )
    # ... and cannot be caught by the other group, which never decrypts that ciphertext
    first = rnd.parts[0]
    out = fresh.decrypt_share(
        task, forged, summands_min=3, evidence=evidence, part=(first.start, first.stop)
    )
    pd = serde.partial_decryption_from_bytes(out, scheme.public_key)
    assert len(pd.partials) == first.stop - first.start


def _cheat(scheme, payload: bytes, *, shift: int) -> bytes:
    """A share holder's wrong partial without proof: value 0 times (1+n)^shift."""
    pd = serde.partial_decryption_from_bytes(payload, scheme.public_key)
    n, nsq = scheme.public_key.n, scheme.public_key.nsquare
    bad = list(pd.partials)
    bad[0] = bad[0] * pow(1 + n, shift, nsq) % nsq if shift else bad[0] * 4 % nsq
    return serde.partial_decryption_to_bytes(
        dataclasses.replace(pd, partials=tuple(mpz(c) for c in bad)), scheme.public_key
    )


@pytest.mark.parametrize("shift", [0, 1 << 510])
def test_a_wrong_unproven_partial_is_detected_named_and_its_part_reassigned(key_2of5, shift):
    """Garbage (shift 0: not a decryption) or an out-of-range shift: detected, then named."""
    scheme, nodes, task, rnd, agg, _, expected = _world(key_2of5, optimistic=True)
    rnd.plan_decryption(list(NAMES))
    cheater = "agency-2"
    for a in list(rnd.part_of):
        payload = _decrypt(nodes, task, rnd, agg, a)
        pd = serde.partial_decryption_from_bytes(payload, scheme.public_key)
        assert not pd.proven  # optimistic: no proof attached
        rnd.submit_partial(a, _cheat(scheme, payload, shift=shift) if a == cheater else payload)
    assert rnd.ready
    with pytest.raises(ProofsNeeded) as info:
        rnd.release()
    group = [a for a in NAMES if rnd.part_of.get(a) == rnd.part_of[cheater]]
    assert sorted(info.value.agencies) == sorted(group)  # only the failing part's group
    assert not rnd.ready and rnd.phase is RoundPhase.DECRYPTING
    for a in group:
        valid = rnd.submit_proof(a, nodes[a].prove_share(task))
        assert valid is (a != cheater)
    assert list(rnd.cheaters) == [cheater]
    assert cheater not in rnd.partials
    with pytest.raises(RejectedContribution, match="wrong partial"):
        rnd.submit_partial(cheater, _decrypt(nodes, task, rnd, agg, cheater))
    spare = rnd.reassign(cheater, NAMES)
    assert spare == "agency-4"
    rnd.submit_partial(spare, _decrypt(nodes, task, rnd, agg, spare))
    np.testing.assert_allclose(rnd.release(), expected, atol=_tol(task))


def test_an_in_range_shift_passes_the_optimistic_check(key_2of5):
    """The documented limit: a crafted (1+n)^y factor shifts the sum undetected."""
    scheme, nodes, task, rnd, agg, _, expected = _world(key_2of5, optimistic=True)
    rnd.plan_decryption(list(NAMES))
    cheater = "agency-0"
    tk = scheme.threshold_key
    mates = [a for a in NAMES if rnd.part_of.get(a) == rnd.part_of[cheater]]
    i, j = (nodes[a].share.index for a in mates)
    mu = 2 * (tk.delta * j // (j - i))  # the cheater's combination coefficient
    n = scheme.public_key.n
    # shift slot 0 by one quantization step: y·μ/(4Δ²) ≡ 1 (mod n)
    y = 4 * tk.delta**2 * pow(mu, -1, n) % n
    for a in mates:
        payload = _decrypt(nodes, task, rnd, agg, a)
        rnd.submit_partial(a, _cheat(scheme, payload, shift=y) if a == cheater else payload)
    for a in rnd.part_of:
        if a not in mates:
            rnd.submit_partial(a, _decrypt(nodes, task, rnd, agg, a))
    released = rnd.release()  # no check fails: only proofs would have caught it
    assert released[0] == pytest.approx(expected[0] + task.spec.step, abs=_tol(task))
    np.testing.assert_allclose(released[1:], expected[1:], atol=_tol(task))


def test_out_of_range_is_raised_only_after_the_partials_are_proven(key_2of5):
    """Contract with range audits: SlotRangeError means a contribution, never a decryptor."""
    scheme, nodes, task, rnd, agg, _, _ = _world(key_2of5, optimistic=True)
    # a contribution out of range: an extra aggregate with one slot far above the limit
    n = scheme.public_key.n
    vec = serde.encrypted_vector_from_bytes(agg, scheme.public_key)
    top = 1 << (scheme.public_key.n_length - 2)  # above the last slot
    vec.ciphertexts[0] = vec.ciphertexts[0] * pow(1 + n, top, n * n) % (n * n)
    rnd.aggregate = vec
    rnd.aggregate_bytes = agg = serde.encrypted_vector_to_bytes(vec)
    rnd.plan_decryption(list(NAMES))
    for a in list(rnd.part_of):
        rnd.submit_partial(a, _decrypt(nodes, task, rnd, agg, a))
    with pytest.raises(ProofsNeeded):
        rnd.release()
    for a in list(rnd.proofs_asked):
        assert rnd.submit_proof(a, nodes[a].prove_share(task))
    assert rnd.ready and not rnd.cheaters
    with pytest.raises(SlotRangeError) as info:
        rnd.release()
    assert info.value.ciphertext == 0
    assert rnd.decryptors_of(0) == sorted(a for a in NAMES if rnd.part_of.get(a) == 0)


def test_without_optimistic_mode_an_unproven_partial_is_refused(key_2of5):
    _, nodes, task, rnd, agg, _, _ = _world(key_2of5, optimistic=True)
    strict = PaillierScheme(rnd.scheme.threshold_key)
    payload = nodes["agency-0"].decrypt_share(task, agg, summands_min=3)
    with pytest.raises(RejectedContribution, match="carries no proof"):
        strict.open_partial(payload, rnd.aggregate)


def test_spares_are_kept_out_of_the_groups(key_2of5):
    _, _, _, rnd, _, _, _ = _world(key_2of5, optimistic=False)
    with pytest.raises(ValueError, match="spares"):
        rnd.plan_decryption(list(NAMES), spares=-1)
    plan = rnd.plan_decryption(list(NAMES), spares=2)  # ⌊(5-2)/2⌋ = 1: decrypted whole
    assert len(rnd.parts) == 1 and sorted(plan) == list(NAMES[:2])


def test_a_restarted_round_recovers_the_plan_from_stored_partials(key_2of5):
    """Replay (``verify=False``) of partials of parts, without the plan: found by digest."""
    scheme, nodes, task, rnd, agg, payloads, expected = _world(key_2of5, optimistic=False)
    rnd.plan_decryption(list(NAMES))
    stored = {a: _decrypt(nodes, task, rnd, agg, a) for a in rnd.part_of}
    again = AggregationRound(
        task,
        scheme,
        participants=list(NAMES),
        min_contributors=3,
        share_index_of=dict(rnd.share_index_of),
    )
    for n in NAMES:
        again.submit(n, payloads[n])
    again.close()
    for a, payload in stored.items():
        again.submit_partial(a, payload, verify=False)
    assert again.parts == rnd.parts and again.part_of == rnd.part_of
    np.testing.assert_allclose(again.release(), expected, atol=_tol(task))
