"""An in-process federation: agencies, coordinator and algorithm in one Python process.

:class:`LocalFederation` deals a threshold key to the agencies, then drives rounds through the
same sans-IO objects the networked coordinator and agent use: every contribution is sealed by
an :class:`~fedcity.core.nodes.AgencyNode`, travels as bytes to an
:class:`~fedcity.core.rounds.AggregationRound` that holds only ciphertexts, and is released
only through ``t`` verified partial decryptions. It serves tests, examples and simulations.
"""

from __future__ import annotations

import secrets
import time
import uuid
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np

from fedcity.core.aggregation import (
    AggregationScheme,
    DecryptionKey,
    KeyHolderScheme,
    PaillierScheme,
    PlaintextScheme,
)
from fedcity.core.audit import AuditSettings, Exclusion
from fedcity.core.errors import AgencyUnavailable, JobFailed, RejectedContribution
from fedcity.core.nodes import AgencyNode
from fedcity.core.rounds import AggregationRound
from fedcity.core.tasks import Task
from fedcity.crypto import (
    BLINDING_KEY_BYTES,
    KeyShare,
    PrivateKey,
    PublicKey,
    ThresholdPublicKey,
    deal_threshold_key,
    generate_keypair,
)
from fedcity.crypto.pool import MAX_POOL_SIZE, RandomnessPool
from fedcity.crypto.signing import SigningKey
from fedcity.learn.algorithm import Algorithm, RoundRecord
from fedcity.learn.driver import JobDriver

if TYPE_CHECKING:
    from fedcity.data.dataset import AgencyDataset
    from fedcity.learn.jobs import FederatedResult

__all__ = ["LocalFederation"]


@dataclass
class _JobState:
    job_id: str
    history: list[RoundRecord] = field(default_factory=list)
    rounds: list[AggregationRound] = field(default_factory=list)
    dropped: set[str] = field(default_factory=set)
    dp_rounds: int = 0
    exclusions: list[Exclusion] = field(default_factory=list)


class LocalFederation:
    """Agencies and a coordinator in one process, speaking fedcity's protocol.

    Parameters
    ----------
    datasets : sequence of AgencyDataset
        One per agency; names (``dataset.agency``) must be unique and the feature specs equal.
    threshold : int, optional
        Agencies needed to decrypt (default: a majority). Not used with a key holder.
    min_agencies : int, optional
        Fewest contributors a released aggregate may have (default: ``threshold``, at
        least 2 when there are two or more agencies).
    key_bits : int, default 2048
        Threshold key size. Use >= 2048 for anything real; small keys are for tests.
    encrypted : bool, default True
        False runs the same job in the clear (a benchmark baseline, no privacy).
    key : (ThresholdPublicKey, list of KeyShare) or (PublicKey, PrivateKey), optional
        Reuse a dealt key instead of dealing a new one (threshold: share i goes to agency i;
        key holder: the private key goes to ``key_holder``).
    key_holder : str, optional
        Single-key-holder mode: this agency holds the full private key and decrypts blinded
        aggregates (about 20× cheaper than threshold decryption, but it rests on the key
        holder and the coordinator not colluding; see ``docs/trust-model.md``). Default: the
        threshold mode.
    workers : int, optional
        Worker processes for encryption and partial decryption (default: in process).
    randomness_pool : int, default 0
        Give every agency a :class:`~fedcity.crypto.pool.RandomnessPool` of this many pairs
        (0: none). Nothing fills them during a job (one process has no idle time between
        rounds); call :meth:`precompute_randomness` to stand for the agencies' idle time.
    seed : int, optional
        Seeds differential-privacy noise, for reproducible tests only.
    """

    def __init__(
        self,
        datasets: Sequence[AgencyDataset],
        *,
        threshold: int | None = None,
        min_agencies: int | None = None,
        key_bits: int = 2048,
        encrypted: bool = True,
        key: tuple[ThresholdPublicKey, Sequence[KeyShare]]
        | tuple[PublicKey, PrivateKey]
        | None = None,
        key_holder: str | None = None,
        workers: int | None = None,
        seed: int | None = None,
        randomness_pool: int = 0,
    ) -> None:
        if isinstance(randomness_pool, bool) or not isinstance(randomness_pool, int):
            raise ValueError(f"randomness_pool must be an integer, got {randomness_pool!r}")
        if not 0 <= randomness_pool <= MAX_POOL_SIZE:
            raise ValueError(
                f"randomness_pool must lie in [0, {MAX_POOL_SIZE}], got {randomness_pool}"
            )
        if not datasets:
            raise ValueError("a federation needs at least one agency")
        names = [d.agency for d in datasets]
        if len(set(names)) != len(names):
            dup = sorted({n for n in names if names.count(n) > 1})
            raise ValueError(f"agency names must be unique; repeated: {dup}")
        spec = datasets[0].spec
        for d in datasets[1:]:
            if d.spec != spec:
                raise ValueError(
                    f"agency {d.agency!r} declares other features than {datasets[0].agency!r}; "
                    "all agencies of a job must declare the same FeatureSpec"
                )
        parties = len(datasets)
        if key_holder is not None:
            if key_holder not in names:
                raise ValueError(f"key_holder {key_holder!r} is not one of the agencies {names}")
            if threshold not in (None, 1):
                raise ValueError("a key-holder federation has no threshold (one key decrypts)")
        t = threshold if threshold is not None else parties // 2 + 1
        if key_holder is not None:
            t = 1
        if not 1 <= t <= parties:
            raise ValueError(f"threshold must lie in [1, {parties}], got {t}")
        self.threshold = t
        self.key_holder = key_holder
        self.min_agencies = min_agencies if min_agencies is not None else max(t, min(2, parties))
        if not 1 <= self.min_agencies <= parties:
            raise ValueError(f"min_agencies must lie in [1, {parties}], got {self.min_agencies}")
        self.feature_spec = spec
        self.key_bits = key_bits
        self.encrypted = encrypted
        self._pool = None
        if workers:
            from fedcity.crypto import WorkerPool

            self._pool = WorkerPool(workers)
        shares: Sequence[DecryptionKey | None]
        scheme: AggregationScheme
        self.threshold_key: ThresholdPublicKey | None = None
        if encrypted and key_holder is not None:
            if key is None:
                key = generate_keypair(key_bits)
            pk, sk = key
            if not isinstance(pk, PublicKey) or not isinstance(sk, PrivateKey):
                raise ValueError("a key-holder federation takes key=(PublicKey, PrivateKey)")
            self.key_bits = pk.n_length
            shares = [sk if n == key_holder else None for n in names]
            scheme = KeyHolderScheme(
                pk, blinding_key=secrets.token_bytes(BLINDING_KEY_BYTES), pool=self._pool
            )
        elif encrypted:
            if key is None:
                key = deal_threshold_key(key_bits, threshold=t, parties=parties)
            tpk, key_shares = key
            if not isinstance(tpk, ThresholdPublicKey) or isinstance(key_shares, PrivateKey):
                raise ValueError("a threshold federation takes key=(ThresholdPublicKey, shares)")
            if tpk.parties != parties or tpk.threshold != t:
                raise ValueError(
                    f"the given key is {tpk.threshold}-of-{tpk.parties}, the federation needs "
                    f"{t}-of-{parties}"
                )
            self.threshold_key = tpk
            self.key_bits = tpk.public_key.n_length
            shares = list(key_shares)
            scheme = PaillierScheme(tpk, pool=self._pool)
        else:
            shares = [None] * parties
            scheme = PlaintextScheme()
        self.scheme = scheme
        rng = np.random.default_rng(seed) if seed is not None else None
        self.agencies: dict[str, AgencyNode] = {}
        for i, (d, s) in enumerate(zip(datasets, shares, strict=True)):
            node_rng = (
                np.random.default_rng([seed, i]) if rng is not None and seed is not None else None
            )
            randomness = None
            if randomness_pool and isinstance(scheme, PaillierScheme | KeyHolderScheme):
                randomness = RandomnessPool(scheme.public_key, randomness_pool)
            self.agencies[d.agency] = AgencyNode(
                d.agency, d, scheme, share=s, rng=node_rng, randomness=randomness
            )
        self.share_index_of = {
            name: node.share.index if isinstance(node.share, KeyShare) else 1
            for name, node in self.agencies.items()
            if node.share is not None
        }
        self._dropouts: dict[str, int] = {}
        self.jobs: dict[str, _JobState] = {}
        self.signing_keys = {name: SigningKey.generate() for name in self.agencies}
        """Each agency's Ed25519 key (it signs its range-audit answers)."""
        self.audit_seconds = 120.0
        """Range-audit answer deadline (in process: agencies answer at once or not at all)."""

    def close(self) -> None:
        """Stop worker processes, if any."""
        if self._pool is not None:
            self._pool.close()
            self._pool = None
            if isinstance(self.scheme, PaillierScheme | KeyHolderScheme):
                self.scheme.pool = None  # later jobs run in process rather than on a dead pool

    def __enter__(self) -> LocalFederation:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def precompute_randomness(self, count: int | None = None) -> int:
        """Fill every agency's randomness pool (what agencies do while idle between rounds).

        Parameters
        ----------
        count : int, optional
            Pairs to add per agency at most (default: until its pool is full).

        Returns
        -------
        int
            Pairs added over all agencies (0 without ``randomness_pool``).
        """
        return sum(
            node.randomness.refill(count)
            for node in self.agencies.values()
            if node.randomness is not None
        )

    # -- fault injection for tests and simulations ------------------------------------------
    def schedule_dropout(self, agency: str, *, at_round: int) -> None:
        """Make ``agency`` disappear from round ``at_round`` (counted over the whole job)."""
        if agency not in self.agencies:
            raise KeyError(f"unknown agency {agency!r}")
        self._dropouts[agency] = at_round

    def _check_alive(self, agency: str, state: _JobState) -> None:
        at = self._dropouts.get(agency)
        # state.rounds already holds the round being run: its index is len - 1
        if at is not None and len(state.rounds) - 1 >= at:
            raise AgencyUnavailable(f"agency {agency!r} stopped answering")

    # -- running ----------------------------------------------------------------------------
    def new_job(self) -> str:
        """Register a job and return its id."""
        job_id = uuid.uuid4().hex[:12]
        self.jobs[job_id] = _JobState(job_id)
        return job_id

    def run(
        self,
        algorithm: Algorithm,
        *,
        job_id: str | None = None,
        dp: Any = None,
        progress: Any = None,
    ) -> list[RoundRecord]:
        """Drive ``algorithm`` until it finishes; returns the records of its rounds.

        Raises
        ------
        JobFailed
            Fewer agencies than the minimum or the threshold remain, or the privacy budget
            is exhausted.
        """
        job_id = job_id or self.new_job()
        state = self.jobs.setdefault(job_id, _JobState(job_id))
        driver = JobDriver(
            job_id,
            algorithm,
            self.scheme,
            agencies=list(self.agencies),
            min_agencies=self.min_agencies,
            share_index_of=self.share_index_of,
            n_length=self.key_bits if self.encrypted else 2048,
            dp=dp,
            audit=self._audit_settings(),
        )
        for name in state.dropped:
            driver.drop(name)
        try:
            return self._drive(driver, state, progress)
        finally:  # openings are kept only while their job runs
            for node in self.agencies.values():
                node.openings.forget(job_id)

    def _drive(self, driver: JobDriver, state: _JobState, progress: Any) -> list[RoundRecord]:
        seen = 0
        task = driver.start()
        while task is not None:
            state.rounds.append(driver.rounds[-1])
            self._collect(driver, task, state)
            aggregate = driver.close_collection()
            if driver.task is task:  # encrypted: ask share holders until t answered
                self._decrypt(driver, task, aggregate, state)
            if driver.auditing is not None:  # out of range: find the culprit, re-aggregate
                self._audit(driver, task, state)
            state.dropped |= driver.dropped
            for record in driver.records[seen:]:
                state.history.append(record)
                if progress is not None:
                    progress(record)
            seen = len(driver.records)
            task = driver.task
        return driver.records

    def _collect(self, driver: JobDriver, task: Task, state: _JobState) -> None:
        for name in driver.awaiting_contributions():
            node = self.agencies[name]
            before = (node.timings.local_training, node.timings.encryption)
            try:
                self._check_alive(name, state)
                payload = node.contribute(task)
            except AgencyUnavailable:
                driver.drop(name)
                continue
            except ValueError as exc:
                if isinstance(exc, RejectedContribution):
                    raise JobFailed(str(exc)) from exc
                raise JobFailed(
                    f"agency {name!r} could not run {task.request.kind}: {exc}"
                ) from exc
            driver.add_seconds("local_training", node.timings.local_training - before[0])
            driver.add_seconds("encryption", node.timings.encryption - before[1])
            driver.submit_contribution(name, payload)

    def _audit_settings(self) -> AuditSettings | None:
        public_key = getattr(self.scheme, "public_key", None)
        if not self.encrypted or public_key is None:
            return None
        return AuditSettings(
            {name: key.public_key for name, key in self.signing_keys.items()},
            public_key.key_id,
            self.audit_seconds,
        )

    def _audit(self, driver: JobDriver, task: Task, state: _JobState) -> None:
        """Ask every contributor for its range proof, decide, decrypt the re-aggregation."""
        audit = driver.auditing
        settings = driver.audit_settings
        assert audit is not None and settings is not None
        before = len(driver.exclusions)
        for name in audit.awaiting:
            node = self.agencies[name]
            try:
                self._check_alive(name, state)
                answer = node.answer_range_audit(
                    task,
                    audit.evidence,
                    signing_key=self.signing_keys[name],
                    key_id=settings.key_id,
                )
            except (AgencyUnavailable, RejectedContribution):
                continue  # silent: the decision rule decides what that means
            try:
                driver.submit_range_answer(answer)
            except RejectedContribution:
                continue  # an answer that does not even carry its own valid signature
        try:
            if driver.auditing is not None:
                driver.close_audit()
        finally:
            state.exclusions.extend(driver.exclusions[before:])
            state.dropped |= driver.dropped
        rnd = driver.round
        if rnd is not None and driver.task is task:  # the re-aggregated round
            state.rounds.append(rnd)
            assert rnd.aggregate_bytes is not None
            self._decrypt(driver, task, rnd.aggregate_bytes, state)

    def _decrypt(self, driver: JobDriver, task: Task, aggregate: bytes, state: _JobState) -> None:
        rnd = driver.round
        if rnd is not None and self._split(driver, rnd):
            self._decrypt_parts(driver, task, aggregate, state, rnd)
            return
        for name in driver.decryption_candidates():
            if driver.task is not task or driver.auditing is not None:
                return  # released (and maybe the next round opened), or being audited
            node = self.agencies[name]
            before = node.timings.partial_decryption
            try:
                self._check_alive(name, state)
                partial = node.decrypt_share(task, aggregate, summands_min=self.min_agencies)
            except AgencyUnavailable:
                driver.drop(name)
                continue
            driver.add_seconds("partial_decryption", node.timings.partial_decryption - before)
            driver.submit_partial(name, partial)
        if driver.task is task and driver.auditing is None:
            driver.fail_decryption()

    def _split(self, driver: JobDriver, rnd: AggregationRound) -> bool:
        """Decryption groups, as the coordinator forms them (``2t + 1`` holders or more)."""
        t = self.scheme.threshold
        holders = driver.decryption_candidates()
        fresh = not rnd.parts and not rnd.partials
        if isinstance(self.scheme, PaillierScheme) and fresh and 1 <= t <= (len(holders) - 1) // 2:
            rnd.plan_decryption(holders, spares=1)
        return len(rnd.parts) > 1

    def _decrypt_parts(
        self,
        driver: JobDriver,
        task: Task,
        aggregate: bytes,
        state: _JobState,
        rnd: AggregationRound,
    ) -> None:
        """Each assigned agency decrypts its part; a failing one's part moves to a spare."""
        queue = sorted(a for a in rnd.part_of if a not in rnd.partials)
        while queue:
            name = queue.pop(0)
            if driver.task is not task or driver.auditing is not None:
                return  # released (and maybe the next round opened), or being audited
            part = rnd.part_for(name)
            if part is None:
                continue
            node = self.agencies[name]
            before = node.timings.partial_decryption
            try:
                self._check_alive(name, state)
                partial = node.decrypt_share(
                    task, aggregate, summands_min=self.min_agencies, part=(part.start, part.stop)
                )
            except AgencyUnavailable:
                driver.drop(name)
                spare = rnd.reassign(name, driver.decryption_candidates())
                if spare is not None:
                    queue.append(spare)
                continue
            driver.add_seconds("partial_decryption", node.timings.partial_decryption - before)
            driver.submit_partial(name, partial)
        if driver.task is task and driver.auditing is None:
            driver.fail_decryption()

    def active_agencies(self, job_id: str) -> list[str]:
        """Agencies still taking part in a job."""
        state = self.jobs[job_id]
        return [a for a in self.agencies if a not in state.dropped]

    def evaluate(
        self,
        result: FederatedResult,
        datasets: Sequence[AgencyDataset] | None = None,
        *,
        threshold: float = 0.5,
        n_bins: int | None = None,
        progress: bool = False,
    ) -> dict[str, float]:
        """Global metrics of a trained model from one secure sum over agencies.

        Parameters
        ----------
        result : FederatedResult
            What a job returned (its declarative model parameters are sent to agencies).
        datasets : sequence of AgencyDataset, optional
            Each agency's evaluation table, matched by agency name; by default every agency
            scores its training table.
        threshold : float, default 0.5
            Decision threshold for accuracy.
        n_bins : int, optional
            Score histogram bins for ROC AUC (default :data:`metrics.DEFAULT_N_BINS`).
        progress : bool, default False
            Show a progress bar of the evaluation's rounds.

        Returns
        -------
        EvaluationMetrics
            Global metrics (a ``dict`` of floats; ``.curves`` holds a classifier's ROC and
            calibration curves); no per-agency figure is released.
        """
        from fedcity.learn import metrics
        from fedcity.learn.evaluation import FederatedEvaluation, evaluation_progress

        which = "train"
        if datasets is not None:
            which = "test"
            for d in datasets:
                if d.agency not in self.agencies:
                    raise ValueError(f"no agency {d.agency!r} in this federation")
                if d.spec != self.feature_spec:
                    raise ValueError(
                        f"agency {d.agency!r}: evaluation data declares other features"
                    )
                self.agencies[d.agency].datasets[which] = d
            missing = set(self.agencies) - {d.agency for d in datasets}
            for name in missing:  # agencies without evaluation rows sit this round out
                self.agencies[name].datasets.pop(which, None)
        evaluation = FederatedEvaluation(
            result.model_params_,
            result.problem_,
            dataset=which,
            threshold=threshold,
            n_bins=n_bins or metrics.DEFAULT_N_BINS,
        )
        job_id = self.new_job()
        if datasets is not None:
            holders = {d.agency for d in datasets}
            self.jobs[job_id].dropped |= set(self.agencies) - holders
        with evaluation_progress(progress, evaluation.max_rounds) as callback:
            self.run(evaluation, job_id=job_id, progress=callback)
        assert evaluation.metrics_ is not None
        return evaluation.metrics_

    def coordinator_storage(self, job_id: str) -> Iterator[bytes]:
        """Every byte string the coordinator received or stored for a job.

        Used by privacy tests: with encryption on, all of it is ciphertext.
        """
        for rnd in self.jobs[job_id].rounds:
            yield from rnd.contributions.values()
            yield from rnd.partials.values()
            if rnd.aggregate_bytes is not None:
                yield rnd.aggregate_bytes


@contextmanager
def _timer(seconds: dict[str, float], stage: str) -> Iterator[None]:
    start = time.perf_counter()
    try:
        yield
    finally:
        seconds[stage] = seconds.get(stage, 0.0) + time.perf_counter() - start
