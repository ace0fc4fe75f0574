"""Decryptor-side checks: an aggregate must be the product of enough signed contributions."""

from __future__ import annotations

import dataclasses
import hashlib

import numpy as np
import pytest

from fedcity.core import (
    AgencyNode,
    AggregationRound,
    ContributionVerifier,
    Evidence,
    KeyHolderScheme,
    PaillierScheme,
    RejectedContribution,
    SignedContribution,
    Task,
    TaskRequest,
)
from fedcity.crypto import PackingSpec, blind_vector, generate_keypair, serde
from fedcity.crypto.signing import SigningKey, Statement
from fedcity.learn import stats  # noqa: F401  (registers the vetted stats steps)

NAMES = ("agency-0", "agency-1", "agency-2")


def _task(round_: int = 0, *, noise_bound: int = 0) -> Task:
    req = TaskRequest("stats.mean", {"total_weight": 310.0}, 2, clip=64.0)
    spec = PackingSpec(
        clip=64.0, precision_bits=40, max_summands=3, n_length=512, noise_bound=noise_bound
    )
    return Task("job-1", round_, req, spec)


@pytest.fixture(scope="module")
def signing():
    return {name: SigningKey.generate() for name in NAMES}


def _sign(keys, key_id, task, agency, payload, /, **changes):
    statement = Statement.for_payload(
        task.job_id, task.round, "contribution", agency, key_id, payload
    )
    return keys[agency].sign(dataclasses.replace(statement, **changes))


def _evidence(keys, key_id, task, contributions, *, withhold=False):
    return Evidence(
        task.job_id,
        task.round,
        tuple(
            SignedContribution(
                agency,
                _sign(keys, key_id, task, agency, payload),
                hashlib.sha256(payload).digest(),
                None if withhold else payload,
            )
            for agency, payload in contributions.items()
        ),
    )


@pytest.fixture()
def world(small_threshold_key, three_datasets, signing):
    tpk, shares = small_threshold_key
    scheme = PaillierScheme(tpk)
    verifier = ContributionVerifier(
        {a: k.public_key for a, k in signing.items()}, tpk.public_key.key_id
    )
    nodes = [
        AgencyNode(name, d, scheme, share=s, verifier=verifier)
        for name, d, s in zip(NAMES, three_datasets, shares, strict=True)
    ]
    task = _task()
    rnd = AggregationRound(task, scheme, participants=list(NAMES), min_contributors=2)
    contributions = {n.name: n.contribute(task) for n in nodes}
    for agency, payload in contributions.items():
        rnd.submit(agency, payload)
    aggregate = rnd.close()
    return tpk, scheme, verifier, nodes, task, contributions, aggregate


def _parsed(tpk, aggregate):
    return serde.encrypted_vector_from_bytes(aggregate, tpk.public_key)


def _refused(node, task, aggregate, evidence, match, summands_min=2):
    with pytest.raises(RejectedContribution, match=match) as info:
        node.decrypt_share(task, aggregate, summands_min=summands_min, evidence=evidence)
    assert f"agency {node.name!r}" in str(info.value)
    assert not node.verified
    return str(info.value)


def test_honest_aggregate_is_accepted_and_the_digests_logged(world, signing):
    tpk, _scheme, _verifier, nodes, task, contributions, aggregate = world
    evidence = _evidence(signing, tpk.public_key.key_id, task, contributions)
    partial = nodes[0].decrypt_share(task, aggregate, summands_min=2, evidence=evidence)
    assert partial
    digests = {a: hashlib.sha256(p).hexdigest() for a, p in contributions.items()}
    assert nodes[0].verified == [("job-1", 0, digests)]
    assert nodes[0].timings.extra["aggregate_check"] > 0


def test_evidence_is_required_when_the_node_verifies(world):
    _tpk, _scheme, _verifier, nodes, task, _contributions, aggregate = world
    _refused(nodes[0], task, aggregate, None, "none were given")


def test_one_contribution_relabelled_as_an_aggregate_is_refused(world, signing):
    """The deviating coordinator's attack: one agency's ciphertexts sent as 'an aggregate'."""
    tpk, _scheme, _verifier, nodes, task, contributions, _aggregate = world
    key_id = tpk.public_key.key_id
    victim = contributions[NAMES[1]]
    single = serde.encrypted_vector_from_bytes(victim, tpk.public_key)
    for summands in (1, 3):
        forged = type(single)(
            single.public_key, single.spec, single.length, summands, single.ciphertexts
        )
        forged_bytes = serde.encrypted_vector_to_bytes(forged)
        # shown with the honest evidence of all three contributions
        evidence = _evidence(signing, key_id, task, contributions)
        alone = _evidence(signing, key_id, task, {NAMES[1]: victim})
        if summands == 1:  # the summands label alone already gives this one away
            for shown in (evidence, alone):
                _refused(nodes[0], task, forged_bytes, shown, "aggregate of 1 contribution")
            continue
        _refused(nodes[0], task, forged_bytes, evidence, "is not the product of the 3 signed")
        _refused(nodes[0], task, forged_bytes, alone, "showed 1 signed contribution")


def test_previous_rounds_aggregate_cannot_pose_as_a_contribution(world, signing):
    """An old aggregate relabelled as one summand has no valid signature for this round."""
    tpk, scheme, _verifier, nodes, task, contributions, aggregate = world
    key_id = tpk.public_key.key_id
    old = serde.encrypted_vector_from_bytes(aggregate, tpk.public_key)
    relabelled = serde.encrypted_vector_to_bytes(
        type(old)(old.public_key, old.spec, old.length, 1, old.ciphertexts)
    )
    nxt = _task(round_=1)
    fresh = {a: p for a, p in contributions.items() if a != NAMES[2]}
    fresh = {a: nodes[i].contribute(nxt) for i, a in enumerate(fresh)}
    total = scheme.add([scheme.open(p, nxt.spec, nxt.vector_length) for p in fresh.values()])
    with_old = scheme.add([total, scheme.open(relabelled, nxt.spec, nxt.vector_length)])
    forged_aggregate = serde.encrypted_vector_to_bytes(with_old)
    # the coordinator passes the relabelled aggregate off as agency-2's round-1 contribution
    # with agency-2's round-0 signature (the only one it has)
    stolen = SignedContribution(
        NAMES[2],
        _sign(signing, key_id, task, NAMES[2], contributions[NAMES[2]]),
        hashlib.sha256(relabelled).digest(),
        relabelled,
    )
    evidence = (*_evidence(signing, key_id, nxt, fresh).contributions, stolen)
    message = _refused(
        nodes[0], nxt, forged_aggregate, Evidence("job-1", 1, evidence), "signature of 'agency-2'"
    )
    assert "round 1 of job job-1" in message


@pytest.mark.parametrize(
    ("change", "match"),
    [
        ({"job_id": "job-2"}, "signature of 'agency-1' is not valid"),
        ({"round": 1}, "signature of 'agency-1' is not valid"),
        ({"kind": "partial"}, "signature of 'agency-1' is not valid"),
        ({"key_id": bytes(16)}, "signature of 'agency-1' is not valid"),
        ({"agency": "agency-0"}, "signature of 'agency-1' is not valid"),
    ],
)
def test_signature_over_another_job_round_kind_key_or_agency_is_refused(
    world, signing, change, match
):
    tpk, _scheme, _verifier, nodes, task, contributions, aggregate = world
    key_id = tpk.public_key.key_id
    evidence = _evidence(signing, key_id, task, contributions)
    c = evidence.contributions[1]
    bad = _sign(signing, key_id, task, c.agency, contributions[c.agency], **change)
    items = list(evidence.contributions)
    items[1] = dataclasses.replace(c, signature=bad)
    _refused(
        nodes[0], task, aggregate, dataclasses.replace(evidence, contributions=tuple(items)), match
    )


def test_signed_by_another_agency_is_refused(world, signing):
    tpk, _scheme, _verifier, nodes, task, contributions, aggregate = world
    key_id = tpk.public_key.key_id
    evidence = _evidence(signing, key_id, task, contributions)
    statement = Statement.for_payload(
        "job-1", 0, "contribution", NAMES[1], key_id, contributions[NAMES[1]]
    )
    items = list(evidence.contributions)
    items[1] = dataclasses.replace(items[1], signature=signing[NAMES[2]].sign(statement))
    _refused(
        nodes[0],
        task,
        aggregate,
        dataclasses.replace(evidence, contributions=tuple(items)),
        "signature of 'agency-1' is not valid",
    )


def test_malformed_evidence_is_refused(world, signing):
    tpk, _scheme, _verifier, nodes, task, contributions, aggregate = world
    key_id = tpk.public_key.key_id
    good = _evidence(signing, key_id, task, contributions)
    items = good.contributions
    cases = [
        (dataclasses.replace(good, round=1), "contributions of round 1 of job job-1"),
        (dataclasses.replace(good, job_id="job-9"), "of job job-9 for the aggregate"),
        (dataclasses.replace(good, contributions=(*items, items[0])), "lists 'agency-0' twice"),
        (
            dataclasses.replace(
                good, contributions=(*items[:2], dataclasses.replace(items[2], agency="x"))
            ),
            "'x', which is not a member",
        ),
        (
            dataclasses.replace(
                good,
                contributions=(
                    *items[:2],
                    dataclasses.replace(items[2], payload=items[2].payload + b"\0"),
                ),
            ),
            "does not match its SHA-256",
        ),
        (
            dataclasses.replace(
                good,
                contributions=(*items[:2], dataclasses.replace(items[2], payload=None)),
            ),
            "withheld the contribution of 'agency-2'",
        ),
        (dataclasses.replace(good, contributions=items[:2]), "claims 3 summands, but 2"),
    ]
    for evidence, match in cases:
        _refused(nodes[0], task, aggregate, evidence, match)
    # a signed contribution that is not a valid encrypted vector
    junk = b"not a protobuf \xff"
    forged = Evidence(
        "job-1",
        0,
        (
            *items[:2],
            SignedContribution(
                NAMES[2],
                _sign(signing, key_id, task, NAMES[2], junk),
                hashlib.sha256(junk).digest(),
                junk,
            ),
        ),
    )
    _refused(nodes[0], task, aggregate, forged, "the contribution of 'agency-2'")
    # more contributors required than shown
    verifier = nodes[0].verifier
    with pytest.raises(RejectedContribution, match="showed 3 signed contribution"):
        verifier.check(_scheme, task, _parsed(tpk, aggregate), good, summands_min=4)


def test_noisy_contributions_still_multiply_to_the_aggregate(small_threshold_key, signing):
    """Distributed DP noise is added before encryption: the aggregate is still the product."""
    tpk, _shares = small_threshold_key
    scheme = PaillierScheme(tpk)
    task = _task(noise_bound=1000)
    rng = np.random.default_rng(0)
    contributions = {
        a: scheme.seal(rng.normal(size=3), task.spec, rng.integers(-1000, 1001, size=3))
        for a in NAMES
    }
    aggregate = scheme.add(
        [scheme.open(p, task.spec, task.vector_length) for p in contributions.values()]
    )
    verifier = ContributionVerifier(
        {a: k.public_key for a, k in signing.items()}, tpk.public_key.key_id
    )
    evidence = _evidence(signing, tpk.public_key.key_id, task, contributions)
    digests = verifier.check(scheme, task, aggregate, evidence, summands_min=3)
    assert set(digests) == set(NAMES)


def test_key_holder_checks_signatures_and_count_without_payloads(three_datasets, signing):
    pk, sk = generate_keypair(512)
    scheme = KeyHolderScheme(pk)
    verifier = ContributionVerifier({a: k.public_key for a, k in signing.items()}, pk.key_id)
    task = _task()
    holder = AgencyNode(NAMES[0], three_datasets[0], scheme, share=sk, verifier=verifier)
    contributions = {a: scheme.seal(np.array([1.0, 2.0, 0.0]), task.spec) for a in NAMES}
    total = scheme._sum(
        [scheme.open(p, task.spec, task.vector_length) for p in contributions.values()]
    )
    blinded = serde.encrypted_vector_to_bytes(blind_vector(total, bytes(32)).blinded)
    evidence = _evidence(signing, pk.key_id, task, contributions, withhold=True)
    assert holder.decrypt_share(task, blinded, summands_min=2, evidence=evidence)
    assert holder.verified[-1][2] == evidence.digests()
    holder.verified.clear()
    fewer = dataclasses.replace(evidence, contributions=evidence.contributions[:1])
    _refused(holder, task, blinded, fewer, "showed 1 signed contribution")
    items = list(evidence.contributions)
    items[0] = dataclasses.replace(items[0], digest=bytes(32))
    _refused(
        holder,
        task,
        blinded,
        dataclasses.replace(evidence, contributions=tuple(items)),
        "signature of 'agency-0' is not valid",
    )
