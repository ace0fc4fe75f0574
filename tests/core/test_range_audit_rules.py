"""Range audits (issue 8 item 16): find, exclude and record the agency that overflowed a slot.

Real 512-bit threshold keys, real range proofs, real Ed25519 signatures. The malicious agencies
are test-only subclasses of :class:`AgencyNode` defined here.
"""

from __future__ import annotations

import hashlib
import json
from typing import Any

import numpy as np
import numpy.typing as npt
import pytest

from fedcity.core import audit as ra
from fedcity.core.aggregation import KeyHolderScheme, PaillierScheme
from fedcity.core.errors import JobFailed, RejectedContribution
from fedcity.core.integrity import ContributionVerifier, Evidence, SignedContribution
from fedcity.core.nodes import AgencyNode
from fedcity.core.tasks import Task, TaskRequest
from fedcity.crypto import (
    EncryptedVector,
    PackingSpec,
    deal_threshold_key,
    generate_keypair,
    serde,
)
from fedcity.crypto.signing import SigningKey, Statement
from fedcity.learn.federation import LocalFederation
from fedcity.learn.jobs import LogisticRegressionJob

NAMES = ("agency-0", "agency-1", "agency-2")
pytestmark = pytest.mark.filterwarnings("ignore::sklearn.exceptions.ConvergenceWarning")


# -- malicious agencies (test only) -----------------------------------------------------------
def _overflowing_payload(node: AgencyNode, task: Task, v: npt.NDArray[np.float64]) -> bytes:
    """Pack honestly, then set the last value slot to ``2^w - 1`` (far above ``upper``).

    Any value above ``upper`` breaks the agency's own range proof; the aggregate check catches
    only sums above ``s·upper``. In the last slot this one always does: either the sum stays
    below ``2^w`` (and above ``s·upper``) or it carries into padding or above the last slot.
    """
    spec = task.spec
    q = spec.quantize(v)
    q[-1] = (1 << spec.slot_bits) - 1
    pk = node.scheme.public_key  # type: ignore[attr-defined]
    cts = [pk.raw_encrypt(m) for m in spec.pack(q)]
    return serde.encrypted_vector_to_bytes(EncryptedVector(pk, spec, len(q), 1, cts))


class SilentOverflow(AgencyNode):
    """Overflows one slot and keeps no opening, so it cannot answer the audit."""

    def _seal(self, task: Task, v: npt.NDArray[np.float64], noise: Any) -> bytes:
        return _overflowing_payload(self, task, v)


class LyingOverflow(SilentOverflow):
    """Overflows one slot and answers the audit with a signed proof that does not verify."""

    def answer_range_audit(
        self, task: Task, evidence: ra.OutOfRange, *, signing_key: SigningKey, key_id: bytes
    ) -> ra.RangeAnswer:
        digest = dict(evidence.contributors)[self.name]
        proof = b"\x01" + bytes(64)
        i = evidence.ciphertext
        st = ra.answer_statement(task.job_id, task.round, self.name, key_id, i, digest, proof)
        return ra.RangeAnswer(self.name, i, digest, proof, signing_key.sign(st))


def _turn(fed: LocalFederation, name: str, cls: type[AgencyNode]) -> None:
    fed.agencies[name].__class__ = cls


def _fit(fed: LocalFederation) -> Any:
    return LogisticRegressionJob(C=1.0, max_iter=4).fit(fed)


# -- in-process federation --------------------------------------------------------------------
@pytest.mark.parametrize("culprit_cls", [SilentOverflow, LyingOverflow])
def test_local_federation_excludes_the_culprit_and_trains_on_the_honest(
    small_threshold_key: Any, three_datasets: Any, culprit_cls: type[AgencyNode]
) -> None:
    fed = LocalFederation(three_datasets, threshold=2, key=small_threshold_key)
    _turn(fed, "agency-1", culprit_cls)
    result = _fit(fed)
    (state,) = fed.jobs.values()
    (exclusion,) = state.exclusions
    assert exclusion.agency == "agency-1" and exclusion.round == 0
    how = "range proof failed" if culprit_cls is LyingOverflow else "every other contributor did"
    assert how in exclusion.reason
    assert exclusion.reason.startswith("agency-1 was excluded from round 0: its contribution")
    assert "agency-1" in state.dropped
    assert all(node.openings.rounds(state.job_id) == [] for node in fed.agencies.values())
    assert all("agency-1" not in r.contributors for r in state.history)
    honest = [d for d in three_datasets if d.agency != "agency-1"]
    alone = _fit(LocalFederation(honest, threshold=2, key_bits=512))
    assert len(result.history_) == len(alone.history_)
    assert json.dumps(result.model_params_, sort_keys=True) == json.dumps(
        alone.model_params_, sort_keys=True
    )


def test_two_silent_culprits_fail_the_job_naming_both(three_datasets: Any) -> None:
    key = deal_threshold_key(512, threshold=1, parties=3)
    fed = LocalFederation(three_datasets, threshold=1, min_agencies=1, key=key)
    _turn(fed, "agency-0", SilentOverflow)
    _turn(fed, "agency-2", SilentOverflow)
    with pytest.raises(JobFailed, match="did not answer the range audit within 120 s") as info:
        _fit(fed)
    assert "agency-0, agency-2" in str(info.value)


def test_without_an_audit_the_old_failure_stands(
    small_threshold_key: Any, three_datasets: Any
) -> None:
    fed = LocalFederation(three_datasets, threshold=2, key=small_threshold_key)
    fed.signing_keys = {}  # no keys: no audit possible
    fed._audit_settings = lambda: None  # type: ignore[method-assign]
    _turn(fed, "agency-1", SilentOverflow)
    with pytest.raises(JobFailed, match="decrypts out of range"):
        _fit(fed)


# -- the decision rule, sans-IO ---------------------------------------------------------------
def _task(spec: PackingSpec, round_: int = 0, length: int = 3) -> Task:
    return Task(
        "job-a", round_, TaskRequest("stats.mean", {"total_weight": 1.0}, length, clip=4.0), spec
    )


class _World:
    """Three agencies, a 2-of-3 key, one round with agency-1 overflowing ciphertext 0."""

    def __init__(self, key: Any, datasets: Any) -> None:
        tpk, shares = key
        self.scheme = PaillierScheme(tpk)
        self.key_id = tpk.public_key.key_id
        self.spec = PackingSpec(clip=4.0, precision_bits=12, max_summands=3, n_length=512)
        self.task = _task(self.spec)
        self.signing = {n: SigningKey.generate() for n in NAMES}
        self.verify_keys = {n: k.public_key for n, k in self.signing.items()}
        self.nodes = {
            n: AgencyNode(n, d, self.scheme, share=s, verifier=self.verifier())
            for n, d, s in zip(NAMES, datasets, shares, strict=True)
        }
        self.payloads: dict[str, bytes] = {}
        for n, node in self.nodes.items():
            v = np.array([0.5, -1.0, 2.0, 0.0])
            if n == "agency-1":
                self.payloads[n] = _overflowing_payload(node, self.task, v)
            else:
                self.payloads[n] = node._seal(self.task, v, None)
        vectors = [self.scheme.open(self.payloads[n], self.spec, 4) for n in NAMES]
        self.aggregate = self.scheme.add(vectors)
        self.aggregate_bytes = self.scheme.aggregate_to_bytes(self.aggregate)
        self.partials = {
            n: self.nodes[n].scheme.partial(self.nodes[n].share, self.aggregate)
            for n in ("agency-0", "agency-2")
        }
        self.out_of_range = ra.OutOfRange(
            "job-a",
            0,
            0,
            self.aggregate_bytes,
            tuple(self.partials.items()),
            tuple((n, hashlib.sha256(self.payloads[n]).digest()) for n in NAMES),
        )

    def verifier(self) -> ContributionVerifier:
        return ContributionVerifier({n: k.public_key for n, k in self.signing.items()}, self.key_id)

    def signature(self, name: str) -> bytes:
        st = Statement.for_payload(
            "job-a", 0, "contribution", name, self.key_id, self.payloads[name]
        )
        return self.signing[name].sign(st)

    def evidence(self, names: tuple[str, ...]) -> Evidence:
        return Evidence(
            "job-a",
            0,
            tuple(
                SignedContribution(
                    n,
                    self.signature(n),
                    hashlib.sha256(self.payloads[n]).digest(),
                    self.payloads[n],
                )
                for n in names
            ),
        )

    def answer(self, name: str) -> ra.RangeAnswer:
        return self.nodes[name].answer_range_audit(
            self.task, self.out_of_range, signing_key=self.signing[name], key_id=self.key_id
        )

    def audit(self) -> ra.RangeAudit:
        return ra.RangeAudit(self.task, self.out_of_range, dict(self.payloads))

    def verify(self, answer: ra.RangeAnswer) -> bool:
        return ra.verify_answer(
            self.scheme,
            self.verify_keys[answer.agency],
            self.key_id,
            self.task,
            0,
            self.payloads[answer.agency],
            answer,
        )


@pytest.fixture(scope="module")
def world(small_threshold_key: Any, three_datasets: Any) -> _World:
    return _World(small_threshold_key, three_datasets)


def test_honest_answers_verify_and_elimination_names_the_silent_one(world: _World) -> None:
    audit = world.audit()
    for n in ("agency-0", "agency-2"):
        answer = world.answer(n)
        assert world.verify(answer)
        assert audit.record(answer, True)
        assert not audit.record(answer, True)  # an identical repeat
    assert audit.awaiting == ["agency-1"]
    outcome = audit.decide(seconds=120)
    assert outcome.failure is None
    (exclusion,) = outcome.excluded
    assert (exclusion.agency, exclusion.how) == ("agency-1", ra.ELIMINATED)
    assert "did not prove its range; every other contributor did" in exclusion.reason


def test_the_culprit_cannot_prove_and_an_honest_agency_refuses_an_unjustified_audit(
    world: _World,
) -> None:
    with pytest.raises(RejectedContribution, match="keeps no opening"):
        world.answer("agency-1")
    # the same evidence about an in-range aggregate (the honest two only) is refused
    honest = [world.scheme.open(world.payloads[n], world.spec, 4) for n in ("agency-0", "agency-2")]
    agg = world.scheme.add(honest)
    partials = tuple(
        (n, world.scheme.partial(world.nodes[n].share, agg)) for n in ("agency-0", "agency-2")
    )
    fake = ra.OutOfRange(
        "job-a",
        0,
        0,
        world.scheme.aggregate_to_bytes(agg),
        partials,
        tuple((n, hashlib.sha256(world.payloads[n]).digest()) for n in ("agency-0", "agency-2")),
    )
    with pytest.raises(RejectedContribution, match="decrypts in range"):
        world.nodes["agency-0"].answer_range_audit(
            world.task, fake, signing_key=world.signing["agency-0"], key_id=world.key_id
        )
    # partial decryptions whose proofs fail justify nothing either
    forged = ra.OutOfRange(
        "job-a", 0, 0, world.aggregate_bytes, partials, world.out_of_range.contributors
    )
    with pytest.raises(RejectedContribution):
        ra.check_out_of_range(world.scheme, world.task, forged)


def test_two_silent_agencies_fail_the_round_naming_them(world: _World) -> None:
    audit = world.audit()
    audit.record(world.answer("agency-0"), True)
    outcome = audit.decide(seconds=7)
    assert outcome.excluded == ()
    assert outcome.silent == ("agency-1", "agency-2")
    assert outcome.failure is not None
    assert "agency-1, agency-2 did not answer the range audit within 7 s" in outcome.failure


def test_a_failing_signed_proof_excludes_and_a_forged_signature_counts_for_nothing(
    world: _World,
) -> None:
    liar = LyingOverflow.answer_range_audit(
        world.nodes["agency-1"],  # type: ignore[arg-type]
        world.task,
        world.out_of_range,
        signing_key=world.signing["agency-1"],
        key_id=world.key_id,
    )
    assert world.verify(liar) is False
    forged = ra.RangeAnswer(
        "agency-0",
        0,
        liar.contribution_digest,
        liar.proof,
        world.signing["agency-1"].sign(
            ra.answer_statement("job-a", 0, "agency-0", world.key_id, 0, b"\0" * 32, b"x")
        ),
    )
    with pytest.raises(RejectedContribution):
        world.verify(forged)
    audit = world.audit()
    audit.record(liar, False)
    outcome = audit.decide(seconds=120)
    assert [(e.agency, e.how) for e in outcome.excluded] == [("agency-1", ra.FAILED)]
    # an honest agency's proof moved to another ciphertext or contribution does not verify
    honest = world.answer("agency-0")
    moved = ra.RangeAnswer("agency-0", 1, honest.contribution_digest, honest.proof, b"")
    with pytest.raises(RejectedContribution, match="audit asks about"):
        world.verify(moved)


def test_all_valid_proofs_blame_the_coordinator(world: _World) -> None:
    audit = ra.RangeAudit(
        world.task,
        world.out_of_range,
        {n: world.payloads[n] for n in ("agency-0", "agency-2")},
    )
    for n in ("agency-0", "agency-2"):
        audit.record(world.answer(n), True)
    outcome = audit.decide(seconds=120)
    assert outcome.excluded == ()
    assert outcome.failure is not None and "coordinator" in outcome.failure


# -- decryptors and the second aggregate ------------------------------------------------------
def _second(world: _World) -> tuple[bytes, Evidence]:
    remaining = ("agency-0", "agency-2")
    agg = world.scheme.add([world.scheme.open(world.payloads[n], world.spec, 4) for n in remaining])
    return world.scheme.aggregate_to_bytes(agg), world.evidence(remaining)


def _first_decryption(world: _World, node: AgencyNode) -> None:
    node.decrypt_share(
        world.task, world.aggregate_bytes, summands_min=2, evidence=world.evidence(NAMES)
    )


def test_a_decryptor_refuses_an_unjustified_second_aggregate(
    small_threshold_key: Any, three_datasets: Any
) -> None:
    world = _World(small_threshold_key, three_datasets)
    node = world.nodes["agency-0"]
    _first_decryption(world, node)
    second, evidence = _second(world)
    with pytest.raises(RejectedContribution, match="needs a range-audit justification"):
        node.decrypt_share(world.task, second, summands_min=2, evidence=evidence)
    # an honest agency "excluded" with a valid proof: the justification is refused too
    audit = world.audit()
    audit.record(world.answer("agency-0"), True)
    audit.record(world.answer("agency-2"), True)
    audit.decide(seconds=1)
    signatures = {n: world.signature(n) for n in NAMES}
    framed = ra.Justification(
        world.out_of_range,
        tuple(audit.answers.values()),
        (
            ra.ExcludedContribution(
                "agency-2", ra.FAILED, world.payloads["agency-2"], signatures["agency-2"]
            ),
        ),
    )
    framed_agg = world.scheme.add(
        [world.scheme.open(world.payloads[n], world.spec, 4) for n in ("agency-0", "agency-1")]
    )
    with pytest.raises(RejectedContribution, match="verifies: its exclusion"):
        node.decrypt_share(
            world.task,
            world.scheme.aggregate_to_bytes(framed_agg),
            summands_min=2,
            evidence=world.evidence(("agency-0", "agency-1")),
            justification=framed,
        )


def test_a_decryptor_accepts_a_justified_second_aggregate(
    small_threshold_key: Any, three_datasets: Any
) -> None:
    world = _World(small_threshold_key, three_datasets)
    node = world.nodes["agency-2"]
    _first_decryption(world, node)
    audit = world.audit()
    audit.record(world.answer("agency-0"), True)
    audit.record(world.answer("agency-2"), True)
    audit.decide(seconds=1)
    justification = audit.justification({n: world.signature(n) for n in NAMES})
    second, evidence = _second(world)
    partial = node.decrypt_share(
        world.task, second, summands_min=2, evidence=evidence, justification=justification
    )
    assert partial
    # elimination needs every other contributor's valid signed proof: without one, refused
    short = ra.Justification(
        justification.out_of_range,
        tuple(a for a in justification.answers if a.agency != "agency-2"),
        justification.excluded,
    )
    with pytest.raises(RejectedContribution, match="lacks the signed answer"):
        ra.check_justification(
            world.scheme,
            world.verify_keys,
            world.key_id,
            world.task,
            {n: world.payloads[n] for n in ("agency-0", "agency-2")},
            short,
        )


# -- the key-holder mode ----------------------------------------------------------------------
def test_key_holder_mode_excludes_a_failing_proof_but_never_by_elimination(
    three_datasets: Any,
) -> None:
    pk, sk = generate_keypair(512)
    fed = LocalFederation(three_datasets, key=(pk, sk), key_holder="agency-0")
    assert isinstance(fed.scheme, KeyHolderScheme)
    _turn(fed, "agency-2", LyingOverflow)
    _fit(fed)
    (state,) = fed.jobs.values()
    assert [(e.agency, e.how) for e in state.exclusions] == [("agency-2", ra.FAILED)]
    fed = LocalFederation(three_datasets, key=(pk, sk), key_holder="agency-0")
    _turn(fed, "agency-2", SilentOverflow)
    with pytest.raises(JobFailed, match="key-holder mode cannot exclude by elimination"):
        _fit(fed)


def test_openings_keeper_is_bounded_and_shows_nothing(world: _World) -> None:
    keeper = ra.OpeningsKeeper(rounds_per_job=2, max_jobs=2)
    node = AgencyNode("agency-0", None, world.scheme)
    node.openings = keeper
    for job in ("a", "b", "c"):
        for r in range(3):
            node._seal(Task(job, r, world.task.request, world.spec), np.zeros(4), None)
    assert keeper.rounds("a") == []
    assert keeper.rounds("b") == keeper.rounds("c") == [1, 2]
    assert repr(keeper) == "<OpeningsKeeper jobs=2>"
    kept = keeper.get("c", 2)
    assert kept is not None and "Openings" not in repr(kept)
    keeper.forget("c")
    assert keeper.get("c", 2) is None
    assert len(kept.openings) == 0  # cleared, not just unreferenced
