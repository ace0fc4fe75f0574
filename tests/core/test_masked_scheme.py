"""MaskedScheme: the lwr-masked aggregation as an AggregationScheme (sans-IO, 512-bit keys)."""

from __future__ import annotations

import dataclasses
import hashlib

import numpy as np
import pytest

from fedcity.core import (
    ContributionVerifier,
    Evidence,
    KeyHolderScheme,
    PaillierScheme,
    RejectedContribution,
    SignedContribution,
    Task,
    TaskRequest,
)
from fedcity.core.masked_scheme import (
    MaskedAggregate,
    MaskedDecodeError,
    MaskedScheme,
    scheme_for_task,
)
from fedcity.crypto import PackingSpec, generate_keypair, khprf, partial_decrypt, serde
from fedcity.crypto.signing import SigningKey, Statement
from fedcity.learn import stats  # noqa: F401  (registers the vetted stats steps)

NAMES = ("agency-0", "agency-1", "agency-2")
SPEC = PackingSpec(clip=1.0, precision_bits=16, max_summands=3, n_length=512)


def _task(round_: int = 0, aggregation: str = "lwr-masked", **kw: object) -> Task:
    req = TaskRequest("stats.mean", {"aggregation": aggregation}, 6, clip=1.0)
    return Task("job-m", round_, req, SPEC, **kw)  # type: ignore[arg-type]


@pytest.fixture()
def scheme(small_threshold_key) -> MaskedScheme:
    tpk, _ = small_threshold_key
    s = scheme_for_task(PaillierScheme(tpk), _task())
    assert isinstance(s, MaskedScheme)
    return s


def _updates() -> dict[str, np.ndarray]:
    rng = np.random.default_rng(3)
    return {n: rng.uniform(-1, 1, 7) for n in NAMES}


def _release(scheme: MaskedScheme, shares, aggregate: MaskedAggregate) -> np.ndarray:
    partials = [scheme.open_partial(scheme.partial(s, aggregate), aggregate) for s in shares[:2]]
    return scheme.release(aggregate, partials)


def test_seal_add_release_round_trip_through_bytes(scheme, small_threshold_key) -> None:
    _, shares = small_threshold_key
    updates = _updates()
    payloads = {n: scheme.seal(u, SPEC) for n, u in updates.items()}
    for p in payloads.values():
        assert len(p) <= scheme.payload_limit("contribution", SPEC, 7)
    opened = [scheme.open(p, SPEC, 7) for p in payloads.values()]
    aggregate = scheme.add(opened)
    assert isinstance(aggregate, MaskedAggregate) and aggregate.summands == 3
    stored = scheme.aggregate_to_bytes(aggregate)
    again = scheme.aggregate_from_bytes(stored, SPEC, 7)  # a restart, or a decryptor
    assert again.ciphertexts == aggregate.ciphertexts
    assert np.array_equal(again.masked, aggregate.masked)
    partial = scheme.partial(shares[0], again)
    assert len(partial) <= scheme.payload_limit("partial", SPEC, 7)
    total = _release(scheme, shares, again)
    expected = sum(np.clip(u, -1, 1) for u in updates.values())
    np.testing.assert_allclose(total, expected, atol=3 * SPEC.step)


def test_open_refuses_malformed_contributions(scheme, small_threshold_key) -> None:
    payload = scheme.seal(np.zeros(7), SPEC)
    with pytest.raises(RejectedContribution, match="not an lwr-masked payload"):
        scheme.open(serde.encrypted_vector_to_bytes(scheme.open(payload, SPEC, 7)), SPEC, 7)
    with pytest.raises(RejectedContribution, match="has 7 masked values, the round expects 8"):
        scheme.open(payload, SPEC, 8)
    with pytest.raises(RejectedContribution, match="truncated"):
        scheme.open(payload[:40], SPEC, 7)
    two = scheme.aggregate_to_bytes(scheme.add([scheme.open(payload, SPEC, 7)] * 2))
    with pytest.raises(RejectedContribution, match="must be one summand"):
        scheme.open(two, SPEC, 7)
    other = MaskedScheme(scheme.threshold_key, SPEC, job="job-m", round_index=0)
    other_spec = dataclasses.replace(SPEC, max_summands=2)
    with pytest.raises(RejectedContribution, match="not this masked round's"):
        other.open(payload, other_spec, 7)
    wide = MaskedScheme(
        scheme.threshold_key, SPEC, job="job-m", round_index=0, params=khprf.LWR_2048
    )
    raw = bytearray(wide.seal(np.zeros(7), SPEC))
    head = len(b"fedcity.masked.v1\x00") + 4
    raw[head + 3] = 0xFF  # value 0 >= p = 2^28 (4 bytes per value)
    with pytest.raises(RejectedContribution, match="masked value is >= p"):
        wide.open(bytes(raw), SPEC, 7)


def test_a_value_off_the_grid_fails_without_naming_anyone(scheme, small_threshold_key) -> None:
    _, shares = small_threshold_key
    payloads = [bytearray(scheme.seal(u, SPEC)) for u in _updates().values()]
    head = len(b"fedcity.masked.v1\x00") + 4
    y = int.from_bytes(payloads[1][head : head + 3], "little")
    shift = (scheme.params.p >> scheme.spec.scale_bits) // 2 << scheme.spec.scale_bits
    payloads[1][head : head + 3] = ((y + shift) % scheme.params.p).to_bytes(3, "little")
    aggregate = scheme.add([scheme.open(bytes(p), SPEC, 7) for p in payloads])
    with pytest.raises(MaskedDecodeError, match="malformed") as info:
        _release(scheme, shares, aggregate)
    assert "agency" not in str(info.value)


def test_decryptor_check_applies_to_the_encrypted_keys(scheme, small_threshold_key) -> None:
    tpk, _ = small_threshold_key
    keys = {n: SigningKey.generate() for n in NAMES}
    verifier = ContributionVerifier({a: k.public_key for a, k in keys.items()}, tpk.key_id)
    task = _task()
    payloads = {n: scheme.seal(u, SPEC) for n, u in _updates().items()}

    def evidence(chosen: dict[str, bytes]) -> Evidence:
        return Evidence(
            task.job_id,
            task.round,
            tuple(
                SignedContribution(
                    a,
                    keys[a].sign(
                        Statement.for_payload(
                            task.job_id, task.round, "contribution", a, tpk.key_id, p
                        )
                    ),
                    hashlib.sha256(p).digest(),
                    p,
                )
                for a, p in chosen.items()
            ),
        )

    honest = scheme.add([scheme.open(p, SPEC, 7) for p in payloads.values()])
    assert set(verifier.check(scheme, task, honest, evidence(payloads), summands_min=2)) == set(
        NAMES
    )
    # relabelled: agency-0's key counted twice, shown with two agencies' contributions
    first = scheme.open(payloads[NAMES[0]], SPEC, 7)
    two = dict(list(payloads.items())[:2])
    fake = scheme.add([first, first])
    fresh = ContributionVerifier({a: k.public_key for a, k in keys.items()}, tpk.key_id)
    with pytest.raises(RejectedContribution, match="is not the product of the 2 signed"):
        fresh.check(scheme, task, fake, evidence(two), summands_min=2)
    # the same check on a decryption group's part of the key sum
    part = fresh.check(
        scheme,
        task,
        scheme.add([scheme.open(p, SPEC, 7) for p in two.values()]),
        evidence(two),
        summands_min=2,
        part=(0, 2),
    )
    assert set(part) == set(two)
    # one aggregate per round: a second, different one is refused
    with pytest.raises(RejectedContribution, match="already helped decrypt another aggregate"):
        verifier.check(
            scheme,
            task,
            scheme.add([scheme.open(p, SPEC, 7) for p in two.values()]),
            evidence(two),
            summands_min=2,
        )


def test_scheme_for_task_picks_or_refuses(small_threshold_key) -> None:
    tpk, shares = small_threshold_key
    base = PaillierScheme(tpk)
    assert scheme_for_task(base, _task(aggregation="paillier")) is base
    masked = scheme_for_task(base, _task(round_=4))
    assert isinstance(masked, MaskedScheme) and masked.round_index == 4
    assert (masked.job, masked.round_index) == ("job-m", 4)  # the PRF input (job, round)
    with pytest.raises(RejectedContribution, match="aggregation must be one of"):
        scheme_for_task(base, _task(aggregation="masked"))
    with pytest.raises(RejectedContribution, match="does not support differential privacy"):
        scheme_for_task(base, _task(dp={"noise": "skellam"}))
    pk, _ = generate_keypair(512)
    with pytest.raises(RejectedContribution, match="needs the federation's threshold key"):
        scheme_for_task(KeyHolderScheme(pk), _task())
    too_many = dataclasses.replace(SPEC, max_summands=1000, precision_bits=16)
    with pytest.raises(RejectedContribution, match="Use at most"):
        scheme_for_task(base, Task("job-m", 0, _task().request, too_many))
    # a partial decryption of the key sum is of lambda values only, whatever the model size
    s = scheme_for_task(base, _task())
    assert isinstance(s, MaskedScheme)
    agg = s.add([s.open(s.seal(np.zeros(7), SPEC), SPEC, 7)])
    pd = partial_decrypt(shares[0], agg)
    key_spec = khprf.key_packing_spec(khprf.DEFAULT_PARAMS, 3, 512)
    assert len(pd.partials) == key_spec.n_ciphertexts(khprf.DEFAULT_PARAMS.dimension)
