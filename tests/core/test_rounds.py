"""The coordinator's round state machine over real Paillier payloads."""

import copy

import numpy as np
import pytest

from fedcity.core import (
    AgencyNode,
    AggregationRound,
    JobFailed,
    PaillierScheme,
    PlaintextScheme,
    ProtocolError,
    RejectedContribution,
    RoundPhase,
    Task,
    TaskRequest,
)
from fedcity.crypto import PackingSpec, encrypt_vector
from fedcity.crypto.serde import encrypted_vector_to_bytes
from fedcity.learn import stats  # noqa: F401  (registers the vetted stats steps)


def _task(n_length=512, length=2, summands=3):
    req = TaskRequest("stats.mean", {"total_weight": 310.0}, length, clip=64.0)
    spec = PackingSpec(clip=64.0, precision_bits=40, max_summands=summands, n_length=n_length)
    return Task("job-1", 0, req, spec)


@pytest.fixture()
def setup(small_threshold_key, three_datasets):
    tpk, shares = small_threshold_key
    scheme = PaillierScheme(tpk)
    nodes = [
        AgencyNode(d.agency, d, scheme, share=s)
        for d, s in zip(three_datasets, shares, strict=True)
    ]
    task = _task()
    rnd = AggregationRound(
        task,
        scheme,
        participants=[n.name for n in nodes],
        min_contributors=2,
        share_index_of={n.name: n.share.index for n in nodes},
    )
    return tpk, scheme, nodes, task, rnd


def _snapshot(rnd):
    return (dict(rnd.contributions), dict(rnd.partials), rnd.phase, rnd.aggregate_bytes)


def test_full_round_releases_the_sum_of_local_vectors(setup):
    _tpk, _scheme, nodes, task, rnd = setup
    local = [n.local_vector(task) for n in nodes]
    for n in nodes:
        assert rnd.submit(n.name, n.contribute(task)) is True
    agg = rnd.close()
    assert rnd.phase is RoundPhase.DECRYPTING
    for n in nodes[:2]:
        rnd.submit_partial(n.name, n.decrypt_share(task, agg, summands_min=2))
    assert rnd.ready
    released = rnd.release()
    np.testing.assert_allclose(released, np.sum(local, axis=0), atol=1e-9)
    assert rnd.phase is RoundPhase.RELEASED
    assert not rnd.overflowed


def test_identical_repeat_upload_is_idempotent_and_different_second_upload_refused(setup):
    _, _, nodes, task, rnd = setup
    first = nodes[0].contribute(task)
    assert rnd.submit(nodes[0].name, first) is True
    assert rnd.submit(nodes[0].name, first) is False
    before = _snapshot(rnd)
    with pytest.raises(RejectedContribution, match="first upload stands"):
        rnd.submit(nodes[0].name, nodes[0].contribute(task))
    assert _snapshot(rnd) == before


@pytest.mark.parametrize(
    "mutate, message",
    [
        (lambda b: b[:-7], "invalid encrypted contribution"),
        (lambda b: b"\x00garbage" * 5, "invalid encrypted contribution"),
        (lambda b: b"", "expected"),
    ],
)
def test_malformed_payloads_are_refused_and_nothing_is_stored(setup, mutate, message):
    _, _, nodes, task, rnd = setup
    before = _snapshot(rnd)
    with pytest.raises(RejectedContribution, match=message):
        rnd.submit(nodes[0].name, mutate(nodes[0].contribute(task)))
    assert _snapshot(rnd) == before


def test_contribution_under_other_layout_or_two_summands_is_refused(setup):
    tpk, _, nodes, task, rnd = setup
    pk = tpk.public_key
    other_spec = PackingSpec(clip=32.0, precision_bits=40, max_summands=3, n_length=512)
    wrong_layout = encrypted_vector_to_bytes(encrypt_vector(pk, np.zeros(3), other_spec))
    with pytest.raises(RejectedContribution, match="packed as"):
        rnd.submit(nodes[0].name, wrong_layout)
    one = encrypt_vector(pk, np.zeros(3), task.spec)
    with pytest.raises(RejectedContribution, match="one summand"):
        rnd.submit(nodes[0].name, encrypted_vector_to_bytes(one + one))
    wrong_len = encrypted_vector_to_bytes(encrypt_vector(pk, np.zeros(5), task.spec))
    with pytest.raises(RejectedContribution, match="expects 3"):
        rnd.submit(nodes[0].name, wrong_len)
    assert rnd.contributions == {}


def test_unknown_agency_and_wrong_phase_are_refused(setup):
    _, _, nodes, task, rnd = setup
    with pytest.raises(RejectedContribution, match="not a participant"):
        rnd.submit("mallory", nodes[0].contribute(task))
    with pytest.raises(ProtocolError, match="not collecting partial"):
        rnd.submit_partial(nodes[0].name, b"x")
    for n in nodes:
        rnd.submit(n.name, n.contribute(task))
    rnd.close()
    with pytest.raises(ProtocolError, match="not collecting contributions"):
        rnd.submit(nodes[0].name, nodes[0].contribute(task))
    with pytest.raises(ProtocolError, match="verified partial"):
        rnd.release()


def test_too_few_contributors_fails_the_round(setup):
    _, _, nodes, task, rnd = setup
    rnd.submit(nodes[0].name, nodes[0].contribute(task))
    with pytest.raises(JobFailed, match="only 1 agencies contributed"):
        rnd.close()
    assert rnd.phase is RoundPhase.FAILED


def test_bad_partial_is_named_and_refused_and_another_share_completes(setup):
    _, _, nodes, task, rnd = setup
    for n in nodes:
        rnd.submit(n.name, n.contribute(task))
    agg = rnd.close()
    good0 = nodes[0].decrypt_share(task, agg, summands_min=2)
    # agency 1 replays agency 0's partial decryption as its own
    with pytest.raises(RejectedContribution, match="holds share 2 but sent a partial for share 1"):
        rnd.submit_partial(nodes[1].name, good0)
    # a corrupted partial fails its proof, naming the share
    corrupted = bytearray(nodes[1].decrypt_share(task, agg, summands_min=2))
    corrupted[-40] ^= 0x01
    with pytest.raises(RejectedContribution):
        rnd.submit_partial(nodes[1].name, bytes(corrupted))
    assert rnd.partials == {}
    rnd.submit_partial(nodes[0].name, good0)
    rnd.submit_partial(nodes[2].name, nodes[2].decrypt_share(task, agg, summands_min=2))
    assert rnd.decryptors == [nodes[0].name, nodes[2].name]
    assert rnd.release().shape == (2,)


def test_agency_refuses_to_decrypt_a_single_contribution(setup):
    _, _scheme, nodes, task, _ = setup
    single = nodes[0].contribute(task)
    with pytest.raises(RejectedContribution, match="refuses to decrypt an aggregate of 1"):
        nodes[1].decrypt_share(task, single, summands_min=2)


def test_overflow_flag_is_raised_when_an_agency_clips(setup):
    _tpk, scheme, nodes, task, _ = setup
    narrow = Task(
        task.job_id,
        1,
        TaskRequest("stats.mean", {"total_weight": 1.0}, 2, clip=0.01),
        PackingSpec(clip=0.01, precision_bits=30, max_summands=3, n_length=512),
    )
    rnd = AggregationRound(narrow, scheme, participants=[n.name for n in nodes], min_contributors=2)
    for n in nodes:
        rnd.submit(n.name, n.contribute(narrow))
    agg = rnd.close()
    for n in nodes[:2]:
        rnd.submit_partial(n.name, n.decrypt_share(narrow, agg, summands_min=2))
    rnd.release()
    assert rnd.overflowed


def test_plaintext_scheme_round_needs_no_decryption(three_datasets):
    scheme = PlaintextScheme()
    nodes = [AgencyNode(d.agency, d, scheme) for d in three_datasets]
    task = _task()
    rnd = AggregationRound(task, scheme, participants=[n.name for n in nodes], min_contributors=2)
    for n in nodes:
        rnd.submit(n.name, n.contribute(task))
    rnd.close()
    assert rnd.ready
    expected = np.sum([n.local_vector(task) for n in nodes], axis=0)
    np.testing.assert_allclose(rnd.release(), expected)


def test_node_refuses_unvetted_kinds_and_policy_refusals(setup, three_datasets):
    _, scheme, nodes, task, _ = setup
    forged = copy.copy(task)
    object.__setattr__(forged, "request", copy.copy(task.request))
    object.__setattr__(forged.request, "kind", "os.system")
    with pytest.raises(RejectedContribution, match="not vetted"):
        nodes[0].contribute(forged)
    strict = AgencyNode("strict", three_datasets[0], scheme, policy=lambda t: False)
    with pytest.raises(RejectedContribution, match="policy refuses"):
        strict.contribute(task)
    with pytest.raises(ValueError, match="unknown task kind"):
        TaskRequest("os.system", {}, 1)


# -- single-key-holder scheme ----------------------------------------------------------------
@pytest.fixture(scope="module")
def small_keypair():
    from fedcity.crypto import generate_keypair

    return generate_keypair(512)


def test_key_holder_round_blinds_verifies_and_releases(small_keypair, three_datasets):
    from fedcity.core import KeyHolderScheme

    pk, sk = small_keypair
    coordinator = KeyHolderScheme(pk, blinding_key=bytes(range(32)))
    agency_side = KeyHolderScheme(pk)
    nodes = [
        AgencyNode(d.agency, d, agency_side, share=sk if i == 0 else None)
        for i, d in enumerate(three_datasets)
    ]
    task = _task()
    rnd = AggregationRound(
        task,
        coordinator,
        participants=[n.name for n in nodes],
        min_contributors=2,
        share_index_of={nodes[0].name: 1},
    )
    local = [n.local_vector(task) for n in nodes]
    for n in nodes:
        rnd.submit(n.name, n.contribute(task))
    agg = rnd.close()
    # agencies cannot add (they hold no blinding key); non-holders cannot decrypt
    with pytest.raises(ValueError, match="only the coordinator"):
        agency_side.add([])
    with pytest.raises(RejectedContribution, match="does not hold the federation's private key"):
        nodes[1].decrypt_share(task, agg, summands_min=2)
    good = nodes[0].decrypt_share(task, agg, summands_min=2)
    # a tampered answer is refused and nothing is stored
    from fedcity.crypto import serde

    dec = serde.keyholder_decryption_from_bytes(good, pk)
    import dataclasses

    ms = list(dec.plaintexts)
    ms[0] = (ms[0] + 1) % pk.n
    bad = serde.keyholder_decryption_to_bytes(dataclasses.replace(dec, plaintexts=tuple(ms)), pk)
    before = _snapshot(rnd)
    with pytest.raises(RejectedContribution, match="does not match the blinded aggregate"):
        rnd.submit_partial(nodes[0].name, bad)
    with pytest.raises(RejectedContribution, match="invalid key-holder decryption"):
        rnd.submit_partial(nodes[0].name, b"\xff\x01")
    assert _snapshot(rnd) == before
    assert rnd.submit_partial(nodes[0].name, good) is True
    assert rnd.ready
    np.testing.assert_allclose(rnd.release(), np.sum(local, axis=0), atol=1e-9)
