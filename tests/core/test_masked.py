"""The opt-in masked aggregation scheme (LWR key-homomorphic masks, Paillier-encrypted keys)."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from fedcity.core.errors import RejectedContribution
from fedcity.core.masked import (
    MAX_PREPARED,
    KeyReuseError,
    KeySumDecryptor,
    MaskedAggregator,
    MaskedContribution,
    MaskedDecodeError,
    MaskedSpec,
    MaskingAgent,
    run_masked_round,
)
from fedcity.crypto import (
    PackingSpec,
    deal_threshold_key,
    encrypt_vector,
    generate_keypair,
    khprf,
)
from fedcity.crypto.khprf import LWRParams

BITS = 512
SMALL = LWRParams("test-48-q32-p24", dimension=48, log_q=32, log_p=24, table_log_q=0)


@pytest.fixture(scope="module")
def key_3of6():
    return deal_threshold_key(BITS, threshold=3, parties=6)


@pytest.fixture(scope="module")
def holder():
    return generate_keypair(BITS)


def _updates(n: int, d: int, seed: int) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    return {f"agency-{i}": rng.uniform(-1.2, 1.2, d) for i in range(n)}


def _round(tpk, spec, updates, job="job", rnd=0):
    agg = MaskedAggregator(
        tpk.public_key, spec, job=job, round_index=rnd, length=len(next(iter(updates.values())))
    )
    for name, u in updates.items():
        agg.add(MaskingAgent(name, tpk.public_key, spec).mask(u, job=job, round_index=rnd))
    return agg


def _key_sum(key, spec, agg, job="job", rnd=0):
    tpk, shares = key
    aggregate = agg.key_aggregate()
    contribs = list(agg.contributions_.values())
    partials = [
        KeySumDecryptor(s, min_contributions=2).partial(
            contribs, aggregate, job=job, round_index=rnd
        )
        for s in shares[: tpk.threshold]
    ]
    return khprf.combine_key_sum(tpk, spec.params, aggregate, partials)


# -- correctness ---------------------------------------------------------------------------
@settings(max_examples=8, deadline=None)
@given(n=st.integers(2, 6), d=st.integers(1, 1500), seed=st.integers(0, 2**32 - 1))
def test_the_sum_of_quantized_updates_is_recovered_exactly(key_3of6, n, d, seed):
    spec = MaskedSpec(precision_bits=16, max_summands=6, params=SMALL)
    ups = _updates(n, d, seed)
    agg = _round(key_3of6[0], spec, ups, rnd=seed)
    got = agg.unmask_integers(_key_sum(key_3of6, spec, agg, rnd=seed))
    want = sum(spec.quantizer.quantize(u) for u in ups.values())
    assert got.dtype == np.uint64
    assert np.array_equal(got, want)


def test_run_masked_round_with_the_published_parameter_set(key_3of6):
    spec = MaskedSpec(precision_bits=16, max_summands=6)  # LWR_1024
    assert spec.params is khprf.LWR_1024
    ups = _updates(6, 2100, 3)
    tpk, shares = key_3of6
    total = run_masked_round(ups, tpk, shares, spec, job="mlp", round_index=7)
    assert np.abs(total - sum(np.clip(u, -1, 1) for u in ups.values())).max() <= (
        6 * spec.quantizer.step / 2 + 1e-12
    )


def test_the_spec_leaves_room_for_the_error_and_refuses_what_does_not_fit():
    spec = MaskedSpec(precision_bits=16, max_summands=10)
    assert spec.scale_bits == 4 and (1 << spec.scale_bits) > 2 * spec.error_bound
    assert (10 * spec.quantizer.levels + 1) << spec.scale_bits <= spec.params.p
    assert MaskedSpec(max_summands=1).scale_bits == 0
    with pytest.raises(ValueError, match="Use at most 16 precision bits"):
        MaskedSpec(precision_bits=17, max_summands=10)
    MaskedSpec(precision_bits=20, max_summands=10, params=khprf.LWR_2048)
    for bad in ({"max_summands": 0}, {"max_summands": True}, {"clip": -1.0}, {"params": "x"}):
        with pytest.raises(ValueError):
            MaskedSpec(**bad)  # type: ignore[arg-type]


# -- freshness -----------------------------------------------------------------------------
def test_every_round_gets_a_fresh_key_and_reuse_is_refused(holder):
    pk, sk = holder
    spec = MaskedSpec(max_summands=4, params=SMALL)
    agent = MaskingAgent("a", pk, spec)
    u = np.zeros(10)
    keys = [
        khprf.decrypt_key_sum(sk, SMALL, agent.mask(u, job="j", round_index=r).encrypted_key)
        for r in range(3)
    ]
    assert not np.array_equal(keys[0], keys[1]) and not np.array_equal(keys[1], keys[2])
    with pytest.raises(KeyReuseError, match="already masked"):
        agent.mask(u, job="j", round_index=1)
    fixed = khprf.generate_key(SMALL)
    agent.mask(u, job="j", round_index=10, key=fixed)
    with pytest.raises(KeyReuseError, match="already used"):
        agent.mask(u, job="j", round_index=11, key=fixed)
    agent.mask(u, job="j", round_index=11)  # the refused call consumed nothing


# -- what the coordinator sees -------------------------------------------------------------
def test_a_masked_vector_looks_nothing_like_its_update(holder):
    pk, _ = holder
    spec = MaskedSpec(precision_bits=16, max_summands=4, params=SMALL)
    d = 8192
    update = np.sin(np.arange(d) / 50.0)  # a strongly structured update
    c = MaskingAgent("a", pk, spec).mask(update, job="j", round_index=0)
    y = c.masked.astype(np.float64)
    scaled = (spec.quantizer.quantize(update).astype(np.float64)) * (1 << spec.scale_bits)
    p = spec.params.p
    # statistical sanity, not a proof: uniform-looking over Z_p, uncorrelated with the update
    assert abs(y.mean() / p - 0.5) < 0.02
    assert abs(np.corrcoef(y, scaled)[0, 1]) < 0.05
    assert np.mean(np.abs(y - scaled) < p / 100) < 0.05
    hist = np.histogram(y, bins=16, range=(0, p))[0]
    assert hist.min() > d / 16 * 0.8
    # a second agency with the same update gets an unrelated masked vector
    y2 = MaskingAgent("b", pk, spec).mask(update, job="j", round_index=0).masked
    assert np.mean(c.masked == y2) < 0.01


def test_coordinator_visible_bytes_hold_no_plain_encoding_of_the_update(holder):
    pk, _ = holder
    spec = MaskedSpec(precision_bits=16, max_summands=4, params=SMALL)
    update = np.linspace(-1, 1, 256)
    c = MaskingAgent("a", pk, spec).mask(update, job="j", round_index=0)
    blob = c.masked_bytes(spec) + c.encrypted_key.ciphertext_bytes() + c.masked.tobytes()
    assert len(c.masked_bytes(spec)) == 256 * spec.value_bytes == 256 * 3
    assert c.nbytes(spec) == 256 * 3 + c.encrypted_key.nbytes
    u = spec.quantizer.quantize(update)
    encodings = [
        update.tobytes(),
        update.astype(np.float32).tobytes(),
        u.astype("<u2").tobytes(),
        u.astype("<u4").tobytes(),
        (u << np.uint64(spec.scale_bits)).astype("<u4").tobytes(),
        u.astype("<u4").view(np.uint8).reshape(-1, 4)[:, :3].tobytes(),
    ]
    for enc in encodings:
        for start in range(0, len(enc) - 24, 24):
            assert enc[start : start + 24] not in blob


# -- malformed inputs ----------------------------------------------------------------------
def test_the_aggregator_refuses_malformed_contributions(key_3of6, holder):
    tpk, _ = key_3of6
    pk = tpk.public_key
    spec = MaskedSpec(max_summands=3, params=SMALL)
    d = 20
    agg = MaskedAggregator(pk, spec, job="j", round_index=0, length=d)
    good = MaskingAgent("a", pk, spec).mask(np.zeros(d), job="j", round_index=0)
    agg.add(good)

    def variant(**kw):
        fields = {
            "agency": "b",
            "job": "j",
            "round_index": 0,
            "masked": good.masked,
            "encrypted_key": good.encrypted_key,
        }
        fields.update(kw)
        return MaskedContribution(**fields)

    cases = [
        (variant(agency="a"), "already contributed"),
        (variant(job="k"), "is for job"),
        (variant(round_index=1), "round 1"),
        (variant(masked=good.masked[:-1]), "shape"),
        (variant(masked=good.masked.astype(np.int64)), "uint32"),
        (variant(masked=np.full(d, spec.params.p, np.uint32)), ">= p"),
        (variant(encrypted_key=good.encrypted_key + good.encrypted_key), "summands 2"),
        (
            variant(
                encrypted_key=MaskingAgent("x", holder[0], spec)
                .mask(np.zeros(d), job="j", round_index=0)
                .encrypted_key
            ),
            "another Paillier key",
        ),
        (
            variant(
                encrypted_key=encrypt_vector(
                    pk,
                    np.zeros(SMALL.dimension),
                    PackingSpec(precision_bits=16, max_summands=3, n_length=BITS),
                )
            ),
            "must be one",
        ),
    ]
    for contribution, match in cases:
        with pytest.raises(RejectedContribution, match=match):
            agg.add(contribution)
    assert agg.n_contributions == 1
    agg.add(variant(agency="b"))
    agg.add(variant(agency="c"))
    with pytest.raises(RejectedContribution, match="full"):
        agg.add(variant(agency="d"))
    with pytest.raises(ValueError, match="length"):
        MaskedAggregator(pk, spec, job="j", round_index=0, length=0)


def test_decryptors_check_the_key_sum_and_decrypt_one_per_round(key_3of6):
    tpk, shares = key_3of6
    spec = MaskedSpec(max_summands=6, params=SMALL)
    agg = _round(tpk, spec, _updates(4, 30, 1))
    contribs = list(agg.contributions_.values())
    aggregate = agg.key_aggregate()
    dec = KeySumDecryptor(shares[0], min_contributions=2)
    with pytest.raises(RejectedContribution, match="at least 2"):
        dec.partial(contribs[:1], contribs[0].encrypted_key, job="job", round_index=0)
    with pytest.raises(RejectedContribution, match="not the product"):
        dec.partial(contribs[1:], contribs[0].encrypted_key * 3, job="job", round_index=0)
    with pytest.raises(RejectedContribution, match="appears twice"):
        dec.partial([contribs[0], contribs[0]], aggregate, job="job", round_index=0)
    with pytest.raises(RejectedContribution, match="round 0"):
        dec.partial(contribs, aggregate, job="job", round_index=1)
    doubled = MaskedContribution(
        "agency-9", "job", 0, contribs[0].masked, contribs[0].encrypted_key * 2
    )
    with pytest.raises(RejectedContribution, match="not one key"):
        dec.partial(
            [contribs[1], doubled],
            contribs[1].encrypted_key + doubled.encrypted_key,
            job="job",
            round_index=0,
        )
    dec.partial(contribs, aggregate, job="job", round_index=0)
    dec.partial(contribs, aggregate, job="job", round_index=0)  # the same sum again is fine
    subset = sum(c.encrypted_key for c in contribs[:3])
    with pytest.raises(RejectedContribution, match="already decrypted"):
        dec.partial(contribs[:3], subset, job="job", round_index=0)
    with pytest.raises(ValueError, match="min_contributions"):
        KeySumDecryptor(shares[0], min_contributions=0)


def test_a_tampered_masked_vector_or_wrong_key_sum_is_detected(key_3of6):
    tpk, _ = key_3of6
    spec = MaskedSpec(max_summands=6, params=SMALL)
    ups = _updates(5, 200, 2)
    agg = _round(tpk, spec, ups)
    key_sum = _key_sum(key_3of6, spec, agg)
    agg.unmask_integers(key_sum)
    with pytest.raises(MaskedDecodeError, match="residual"):
        agg.unmask_integers(khprf.generate_key(SMALL))
    # one agency shifts a value by half a scale step: the residual leaves the bound
    ups2 = dict(ups)
    agg2 = MaskedAggregator(tpk.public_key, spec, job="job", round_index=5, length=200)
    for i, (name, u) in enumerate(ups2.items()):
        c = MaskingAgent(name, tpk.public_key, spec).mask(u, job="job", round_index=5)
        if i == 0:
            y = c.masked.copy()
            y[17] = (y[17] + (1 << (spec.scale_bits - 1))) & np.uint32(spec.params.p - 1)
            c = MaskedContribution(c.agency, c.job, c.round_index, y, c.encrypted_key)
        agg2.add(c)
    with pytest.raises(MaskedDecodeError, match="value 17"):
        agg2.unmask_integers(_key_sum(key_3of6, spec, agg2, rnd=5))


def test_run_masked_round_validates_its_inputs(key_3of6):
    tpk, shares = key_3of6
    spec = MaskedSpec(max_summands=6, params=SMALL)
    with pytest.raises(ValueError, match="at least one"):
        run_masked_round({}, tpk, shares, spec, job="j", round_index=0)
    with pytest.raises(ValueError, match="one length"):
        run_masked_round(
            {"a": np.zeros(3), "b": np.zeros(4)}, tpk, shares, spec, job="j", round_index=0
        )
    with pytest.raises(ValueError, match="t=3"):
        run_masked_round({"a": np.zeros(3)}, tpk, shares[:2], spec, job="j", round_index=0)
    with pytest.raises(ValueError, match="finite"):
        run_masked_round(
            {"a": np.array([0.0, np.nan]), "b": np.zeros(2)},
            tpk,
            shares,
            spec,
            job="j",
            round_index=0,
        )


def test_prepared_masks_give_the_same_sums_and_keep_the_rules(key_3of6):
    tpk = key_3of6[0]
    pk = tpk.public_key
    spec = MaskedSpec(max_summands=6, params=SMALL)
    ups = _updates(3, 50, 8)
    agents = {name: MaskingAgent(name, pk, spec) for name in ups}
    for agent in agents.values():
        agent.prepare(job="job", round_index=4, length=50)  # before the update exists
    agg = MaskedAggregator(pk, spec, job="job", round_index=4, length=50)
    for name, u in ups.items():
        agg.add(agents[name].mask(u, job="job", round_index=4))
    got = agg.unmask_integers(_key_sum(key_3of6, spec, agg, rnd=4))
    assert np.array_equal(got, sum(spec.quantizer.quantize(u) for u in ups.values()))
    a = agents["agency-0"]
    with pytest.raises(KeyReuseError, match="already masked"):
        a.prepare(job="job", round_index=4, length=50)
    a.prepare(job="job", round_index=5, length=50)
    with pytest.raises(KeyReuseError, match="already prepared"):
        a.prepare(job="job", round_index=5, length=50)
    with pytest.raises(ValueError, match="prepared for 50"):
        a.mask(np.zeros(49), job="job", round_index=5)
    with pytest.raises(ValueError, match="its own key"):
        a.mask(np.zeros(50), job="job", round_index=5, key=khprf.generate_key(SMALL))
    for r in range(6, 6 + MAX_PREPARED - 1):
        a.prepare(job="job", round_index=r, length=5)
    with pytest.raises(ValueError, match="already prepared"):
        a.prepare(job="job", round_index=99, length=5)
    with pytest.raises(ValueError, match="length"):
        MaskingAgent("z", pk, spec).prepare(job="job", round_index=0, length=0)
    assert "prepared=4" in repr(a) and "SMALL" not in repr(a)
