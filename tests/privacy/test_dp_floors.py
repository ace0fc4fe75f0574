"""An agency's local floor on coordinator-sent DP settings (sans-IO node and policy).

Today's bug: an agency noised its contribution with whatever the coordinator sent, so a noise
share of 1e-3 or a noise_bound of 0 (the sampler then draws only zeros) gave no noise at all.
"""

from __future__ import annotations

import dataclasses
import secrets

import numpy as np
import pandas as pd
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from fedcity.core import RejectedContribution, Task, TaskRequest, local_step
from fedcity.core.aggregation import KeyHolderScheme, PaillierScheme, PlaintextScheme
from fedcity.core.nodes import AgencyNode
from fedcity.crypto import deal_threshold_key, decrypt_vector, generate_keypair
from fedcity.data.dataset import AgencyDataset, FeatureSpec
from fedcity.governance.policy import AgencyPolicy, PolicyError
from fedcity.learn.dp import DPPlan
from fedcity.privacy import DPConfig, DPFloor, FloorViolation

DIM = 40
SPEC = FeatureSpec(numeric=("x",), categorical={}, label="y")


@local_step("test.floor_ones")
def _ones(params, data):
    return np.full(DIM, 0.01)


class _Reads:
    """Counts how often the local step read the data (a refusal must read nothing)."""

    n = 0


@local_step("test.floor_count_reads")
def _count_reads(params, data):
    _Reads.n += 1
    return np.full(DIM, 0.01)


@pytest.fixture(scope="module")
def keypair():
    return generate_keypair(512)


@pytest.fixture(scope="module")
def dataset():
    frame = pd.DataFrame({"x": np.arange(10.0), "y": np.arange(10) % 2})
    return AgencyDataset.from_frame(frame, SPEC, agency="a")


def _honest(kind="test.floor_ones", **config):
    """A task with the settings an honest coordinator sends (3 contributors, ε = 2)."""
    cfg = DPConfig(**{"epsilon": 2.0, "delta": 1e-6, "clip_norm": 1.0, "rounds": 4, **config})
    plan = DPPlan(cfg, n_contributors_min=3)
    request = TaskRequest(kind, {}, DIM, clip=1.0, private=True)
    spec = plan.spec_for(request, 3, 512)
    return Task("job", 0, request, spec, dp=plan.task_params(spec, 3)), plan


def _node(keypair, dataset, **kw):
    pk, _ = keypair
    return AgencyNode("a", dataset, KeyHolderScheme(pk), **kw)


def test_honest_settings_pass_and_the_noise_is_really_added(keypair, dataset):
    task, plan = _honest()
    node = _node(keypair, dataset)
    payload = node.contribute(task)
    _, sk = keypair
    released = decrypt_vector(sk, node.scheme.aggregate_from_bytes(payload, task.spec, DIM))
    # one share's noise: std share·step, far above the 0.01 signal's quantization error
    noise = np.asarray(released) - 0.01
    assert noise.std() > 0.3 * plan.noise.calibration.share * task.spec.step


@pytest.mark.parametrize(
    ("change", "rule"),
    [
        ({"share": 1e-3}, "share"),  # a tiny discrete Gaussian share: no noise
        ({"noise": "laplace"}, "noise"),
        ({"epsilon": 1e9}, "epsilon"),
        ({"delta": 0.5}, "delta"),
        ({"rounds": 0}, "n_contributors"),
        ({"n_contributors": 10_000}, "n_contributors"),  # more shares than can be summed
        ({"share": 30.0}, "stated_epsilon"),  # honest-looking, but far less noise than stated
    ],
)
def test_absurd_or_inconsistent_settings_are_refused_before_reading_data(
    keypair, dataset, change, rule
):
    task, _ = _honest(kind="test.floor_count_reads")
    bad = dataclasses.replace(task, dp={**task.dp, **change})
    before = _Reads.n
    with pytest.raises(RejectedContribution, match=f"rule {rule}"):
        _node(keypair, dataset).contribute(bad)
    assert _Reads.n == before  # nothing read, nothing computed


def test_a_noise_bound_that_cuts_the_noise_off_is_refused(keypair, dataset):
    task, _ = _honest()
    for bound in (0, task.spec.noise_bound // 2):
        bad = dataclasses.replace(task, spec=dataclasses.replace(task.spec, noise_bound=bound))
        with pytest.raises(RejectedContribution, match="rule noise_bound"):
            _node(keypair, dataset).contribute(bad)


def test_a_skellam_share_of_1e_3_is_refused(keypair, dataset):
    task, _ = _honest(noise="skellam")
    bad = dataclasses.replace(task, dp={**task.dp, "share": 1e-3})
    with pytest.raises(RejectedContribution, match="rule stated_epsilon"):
        _node(keypair, dataset).contribute(bad)


def test_the_agency_floor_refuses_settings_below_it_naming_the_rule(keypair, dataset):
    task, plan = _honest()
    z = plan.noise.noise_multiplier
    cases = [
        (DPFloor(min_noise_multiplier=2 * z), "min_noise_multiplier"),
        (DPFloor(max_clip_norm=0.5), "max_clip_norm"),
        (DPFloor(min_noise_bound=task.spec.noise_bound + 1), "min_noise_bound"),
        (DPFloor(max_epsilon=1.0), "max_epsilon"),
        (DPFloor(max_delta=1e-7), "max_delta"),
    ]
    for floor, rule in cases:
        with pytest.raises(RejectedContribution, match=f"rule {rule}"):
            _node(keypair, dataset, dp_floor=floor).contribute(task)
        with pytest.raises(FloorViolation) as info:
            floor.check(task.dp, step=task.spec.step, noise_bound=task.spec.noise_bound, dim=DIM)
        assert info.value.rule == rule
    # at the floor exactly: accepted, and the recomputed figures match the coordinator's
    floor = DPFloor(min_noise_multiplier=z * (1 - 1e-9), max_clip_norm=1.0, max_epsilon=2.0)
    implied = floor.check(task.dp, step=task.spec.step, noise_bound=task.spec.noise_bound, dim=DIM)
    assert implied.noise_multiplier == pytest.approx(z, rel=1e-6)
    assert implied.epsilon == pytest.approx(plan.noise.epsilon, rel=1e-9)
    _node(keypair, dataset, dp_floor=floor).contribute(task)


def test_dp_without_encryption_is_refused_by_the_agency(dataset):
    task, _ = _honest()
    node = AgencyNode("a", dataset, PlaintextScheme())
    with pytest.raises(RejectedContribution, match="without encryption"):
        node.contribute(task)


def test_policy_reads_the_floors_and_refuses_absurd_ones():
    policy = AgencyPolicy.from_dict(
        {
            "min_noise_multiplier": 0.8,
            "max_clip_norm": 2,
            "min_noise_bound": 100,
            "max_epsilon": 4,
            "max_delta": 1e-6,
        }
    )
    assert policy.dp_floor() == DPFloor(
        min_noise_multiplier=0.8,
        max_clip_norm=2.0,
        min_noise_bound=100,
        max_epsilon=4.0,
        max_delta=1e-6,
    )
    for table, match in (
        ({"min_noise_multiplier": 0}, "min_noise_multiplier must be a number"),
        ({"max_clip_norm": float("inf")}, "max_clip_norm must be a number"),
        ({"min_noise_bound": -1}, "min_noise_bound must be a non-negative integer"),
        ({"max_epsilon": 1e4}, "max_epsilon must be a number"),
        ({"max_delta": 0.5}, "max_delta must be a number"),
    ):
        with pytest.raises(PolicyError, match=match):
            AgencyPolicy.from_dict(table)


def test_noise_comes_from_the_os_csprng_unless_a_test_source_is_injected(
    keypair, dataset, monkeypatch
):
    task, _ = _honest()
    node = _node(keypair, dataset)
    assert node.rng is None  # no long-lived generator to seed, share or leak
    calls = []
    original = secrets.token_bytes

    def counting(n: int) -> bytes:
        calls.append(n)
        return original(n)

    monkeypatch.setattr(secrets, "token_bytes", counting)
    node.contribute(task)
    assert sum(calls) >= 8 * DIM  # every share value drawn from CSPRNG bytes


def test_require_dp_refuses_exact_rounds_before_reading_data(keypair, dataset):
    # Today a job declaring privacy could still be sent exact rounds (its preprocessing
    # statistics were), and require_dp only looked at the job's declaration.
    floor = AgencyPolicy.from_dict({"require_dp": True}).dp_floor()
    assert floor.require_dp
    exact = Task(
        "job",
        0,
        TaskRequest("test.floor_count_reads", {}, DIM, clip=1.0),
        _honest()[0].spec,
    )
    before = _Reads.n
    with pytest.raises(RejectedContribution, match="rule require_dp"):
        _node(keypair, dataset, dp_floor=floor).contribute(exact)
    assert _Reads.n == before
    task, _ = _honest()
    _node(keypair, dataset, dp_floor=floor).contribute(task)  # a DP round: served
    _node(keypair, dataset, dp_floor=DPFloor()).contribute(exact)  # no require_dp: served


def test_an_agency_never_decrypts_fewer_shares_than_the_noise_was_calibrated_for(keypair, dataset):
    # The noise of each share is sigma²/n for n = n_contributors; a sum of fewer carries less.
    task, _ = _honest()  # calibrated for 3 contributors
    tpk, shares = deal_threshold_key(512, threshold=2, parties=3)
    node = AgencyNode("a", dataset, PaillierScheme(tpk), share=shares[0])
    scheme = node.scheme
    two = [scheme.open(node.contribute(task), task.spec, DIM) for _ in range(2)]
    aggregate = scheme.aggregate_to_bytes(scheme.add(two))
    with pytest.raises(RejectedContribution, match=r"aggregate of 2 contribution.*at least 3"):
        node.decrypt_share(task, aggregate, summands_min=2)
    three = [*two, scheme.open(node.contribute(task), task.spec, DIM)]
    node.decrypt_share(task, scheme.aggregate_to_bytes(scheme.add(three)), summands_min=2)


@pytest.mark.parametrize(
    "change",
    [
        {"share": 10**400},
        {"clip_norm": -(10**400)},
        {"epsilon": "4"},
        {"delta": None},
        {"n_contributors": True},
        {"rounds": 2.5},
        {"adjacency": ["zero_out"]},
    ],
)
def test_malformed_settings_are_refused_cleanly(change):
    task, _ = _honest()
    with pytest.raises(FloorViolation):
        DPFloor().check(
            {**task.dp, **change},
            step=task.spec.step,
            noise_bound=task.spec.noise_bound,
            dim=DIM,
        )


@settings(max_examples=15, deadline=None)
@given(
    epsilon=st.floats(0.2, 50.0),
    n=st.integers(1, 8),
    rounds=st.integers(1, 30),
    noise=st.sampled_from(["gaussian", "skellam"]),
    shrink=st.floats(1.05, 1e4),
)
def test_honest_settings_pass_and_any_smaller_share_is_refused(epsilon, n, rounds, noise, shrink):
    cfg = DPConfig(epsilon=epsilon, delta=1e-6, clip_norm=1.0, rounds=rounds, noise=noise)
    plan = DPPlan(cfg, n_contributors_min=n)
    request = TaskRequest("test.floor_ones", {}, DIM, clip=1.0, private=True)
    spec = plan.spec_for(request, n, 512)
    dp = plan.task_params(spec, n)
    implied = DPFloor().check(dp, step=spec.step, noise_bound=spec.noise_bound, dim=DIM)
    assert implied.epsilon <= epsilon * (1 + 1e-6)
    weaker = {**dp, "share": dp["share"] / shrink}
    with pytest.raises(FloorViolation) as info:
        DPFloor().check(weaker, step=spec.step, noise_bound=spec.noise_bound, dim=DIM)
    assert info.value.rule in {"stated_epsilon", "share"}


def test_noise_delivering_more_than_the_declared_epsilon_is_refused(keypair, dataset):
    # The ledger charges the epsilon the job declared at submission; a round whose noise
    # delivers more (whatever the round itself states) would under-charge it.
    task, _ = _honest()  # epsilon 2 stated in the round
    node = _node(keypair, dataset)
    node.check_dp(task, declared_epsilon=2.0)
    with pytest.raises(RejectedContribution, match=r"rule stated_epsilon.*states \(1\)"):
        node.check_dp(task, declared_epsilon=1.0)
