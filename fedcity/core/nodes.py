"""The agency side of the protocol, without I/O.

An :class:`AgencyNode` holds one agency's dataset and key share. Given a :class:`Task` it runs
the vetted local step, bounds the result (clipping with an overflow flag, or L2 clipping and
integer noise under differential privacy), and seals it with the aggregation scheme. Given an
encrypted aggregate it checks that the aggregate is large enough to release and, given a
:class:`~fedcity.core.integrity.ContributionVerifier`, that it is the sum of enough agencies'
signed contributions, then returns its partial decryption. The agent daemon and the
in-process federation both drive this class.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np
import numpy.typing as npt

from fedcity.core.aggregation import AggregationScheme, DecryptionKey, PaillierScheme
from fedcity.core.audit import OpeningsKeeper
from fedcity.core.errors import RejectedContribution
from fedcity.core.integrity import ContributionVerifier, Evidence
from fedcity.core.rounds import overflow_flag
from fedcity.core.tasks import LOCAL_STEPS, Task

if TYPE_CHECKING:
    from fedcity.core.audit import Justification, OutOfRange, RangeAnswer
    from fedcity.crypto.pool import RandomnessPool
    from fedcity.crypto.signing import SigningKey
    from fedcity.data.dataset import AgencyDataset
    from fedcity.privacy import DPFloor

__all__ = ["AgencyNode", "LocalTimings"]

TaskPolicy = Callable[[Task], bool]
"""Decides whether an agency runs a task (the hook for per-job approval and budgets)."""


@dataclass
class LocalTimings:
    """Seconds an agency spent per stage, accumulated over a job."""

    local_training: float = 0.0
    encryption: float = 0.0
    partial_decryption: float = 0.0
    bytes_sent: int = 0
    extra: dict[str, float] = field(default_factory=dict)


class AgencyNode:
    """One agency: its data, its key share, and what it is willing to run.

    Parameters
    ----------
    name : str
    dataset : AgencyDataset or None
        Its learning dataset (None for an agency that only answers queries).
    scheme : AggregationScheme
    share : KeyShare or PrivateKey, optional
        This agency's share of the threshold key, or the full private key if it is the
        federation's key holder (None: it cannot help decrypt).
    policy : callable, optional
        ``policy(task) -> bool``; a task it refuses raises :class:`RejectedContribution`.
        By default every vetted task kind is allowed.
    rng : numpy.random.Generator, optional
        Only for tests: a deterministic source of differential-privacy noise. By default
        every noise share is drawn from the OS CSPRNG (:mod:`fedcity.privacy.noise`).
    dp_floor : DPFloor, optional
        The agency's floor on coordinator-sent DP settings (from its policy). Settings are
        always checked for sanity and consistency (:meth:`fedcity.privacy.DPFloor.check`);
        a refusal names the rule and happens before the data is read.
    verifier : ContributionVerifier, optional
        When given, :meth:`decrypt_share` decrypts only aggregates shown with evidence that
        they are the sum of enough agencies' signed contributions.
    tables : mapping of str to LocalTable, optional
        Analytics tables by name; steps named ``query.*`` read ``tables[params["table"]]``.
    randomness : RandomnessPool, optional
        Encryption randomness precomputed for the scheme's public key
        (:mod:`fedcity.crypto.pool`); sealing takes from it (each pair once) and computes
        fresh what it lacks. The agent daemon fills it while idle between rounds.
    """

    def __init__(
        self,
        name: str,
        dataset: AgencyDataset | None,
        scheme: AggregationScheme,
        *,
        share: DecryptionKey | None = None,
        policy: TaskPolicy | None = None,
        rng: np.random.Generator | None = None,
        verifier: ContributionVerifier | None = None,
        tables: Mapping[str, Any] | None = None,
        dp_floor: DPFloor | None = None,
        randomness: RandomnessPool | None = None,
    ) -> None:
        self.name = name
        self.dataset = dataset
        self.datasets: dict[str, AgencyDataset] = {} if dataset is None else {"train": dataset}
        """Named local tables a task may ask for (``"train"`` and e.g. ``"test"``)."""
        self.tables: dict[str, Any] = dict(tables or {})
        """Analytics tables by name (:class:`fedcity.analytics.LocalTable`) for ``query.*``."""
        self.scheme = scheme
        self.share = share
        self.policy = policy
        self.rng = rng
        """Test-only noise source; None (the default): the OS CSPRNG."""
        self.dp_floor = dp_floor
        self.randomness = randomness
        """Precomputed encryption randomness used when sealing (None: computed fresh)."""
        self.timings = LocalTimings()
        self.served: list[tuple[str, int, str]] = []
        """(job id, round, kind) of every task this agency answered: its local log."""
        self.verifier = verifier
        self._unproven: dict[tuple[str, int], tuple[Any, bytes]] = {}
        self.verified: list[tuple[str, int, dict[str, str]]] = []
        """(job id, round, contributor → SHA-256) of every aggregate checked before decrypting."""
        self.openings = OpeningsKeeper()
        """Openings of its recent encrypted contributions, in memory only (range audits)."""

    def __repr__(self) -> str:
        n = "-" if self.dataset is None else self.dataset.n_samples
        return f"<AgencyNode {self.name!r} n={n} tables={sorted(self.tables)}>"

    def local_vector(self, task: Task) -> npt.NDArray[np.float64]:
        """Run the task's vetted local step on this agency's data (plaintext, stays here)."""
        kind = task.request.kind
        step = LOCAL_STEPS.get(kind)
        if step is None:
            raise RejectedContribution(f"agency {self.name!r}: task kind {kind!r} is not vetted")
        if self.policy is not None and not self.policy(task):
            raise RejectedContribution(f"agency {self.name!r}: policy refuses {kind!r}")
        data: Any
        if kind.startswith("query."):  # analytics steps read a named table, not a dataset
            which = str(task.request.params.get("table", ""))
            data = self.tables.get(which)
            if data is None:
                raise RejectedContribution(f"agency {self.name!r} holds no table {which!r}")
        else:
            which = str(task.request.params.get("dataset", "train"))
            data = self.datasets.get(which)
            if data is None:
                raise RejectedContribution(f"agency {self.name!r} holds no {which!r} dataset")
        start = time.perf_counter()
        v = np.asarray(step(task.request.params, data), dtype=np.float64)
        self.timings.local_training += time.perf_counter() - start
        if v.shape != (task.request.length,):
            raise RejectedContribution(
                f"agency {self.name!r}: step {kind!r} returned shape {v.shape}, "
                f"expected ({task.request.length},)"
            )
        if not np.isfinite(v).all():
            pos = int(np.flatnonzero(~np.isfinite(v))[0])
            raise RejectedContribution(
                f"agency {self.name!r}: step {kind!r} produced a non-finite value at {pos}"
            )
        return v

    def check_dp(self, task: Task, *, declared_epsilon: float | None = None) -> None:
        """Refuse a task's DP settings that are absurd, inconsistent or below the floor.

        ``declared_epsilon`` is the ``ε`` the job declared at submission, when known (the
        agent passes it: its budget ledger charges that figure).

        Raises
        ------
        RejectedContribution
            Naming the rule (``[policy]`` key or sanity rule) and what was asked.
        """
        from fedcity.privacy import DPFloor, FloorViolation

        if not task.dp:
            kind = task.request.kind
            query_dp = kind.startswith("query.") and task.request.params.get("dp")
            if self.dp_floor is not None and self.dp_floor.require_dp and not query_dp:
                raise RejectedContribution(
                    f"agency {self.name!r} refuses the privacy settings (rule require_dp): "
                    f"policy: round {task.round} ({kind}) would release exact sums over its "
                    "data; this agency requires differential privacy (require_dp = true)"
                )
            return

        if not getattr(self.scheme, "encrypted", True):
            raise RejectedContribution(
                f"agency {self.name!r} refuses differential privacy without encryption: the "
                "aggregator would see its contribution with only its own noise share"
            )
        floor = self.dp_floor if self.dp_floor is not None else DPFloor()
        try:
            floor.check(
                task.dp,
                step=task.spec.step,
                noise_bound=task.spec.noise_bound,
                dim=task.request.length,
                max_summands=task.spec.max_summands,
                declared_epsilon=declared_epsilon,
            )
        except FloorViolation as exc:
            raise RejectedContribution(
                f"agency {self.name!r} refuses the privacy settings (rule {exc.rule}): {exc}"
            ) from exc

    def contribute(self, task: Task) -> bytes:
        """Compute, bound and seal this agency's contribution to ``task``.

        Under differential privacy the settings are checked first (:meth:`check_dp`), then
        the update is L2-clipped and a noise share from the OS CSPRNG is added.
        """
        self.check_dp(task)
        v = self.local_vector(task)
        start = time.perf_counter()
        noise: Any = None
        if task.dp:
            from fedcity.privacy import clip_l2, sample_noise

            kind = task.dp["noise"]
            v = clip_l2(v, float(task.dp["clip_norm"]))
            noise = sample_noise(
                kind,
                float(task.dp["share"]),
                len(v),
                bound=task.spec.noise_bound,
                rng=self.rng,
            )
        else:
            flag = overflow_flag(task.spec.clip)
            over = bool((np.abs(v) > task.spec.clip).any())
            v = np.append(v, flag if over else 0.0)
        payload = self._seal(task, v, noise)
        self.timings.encryption += time.perf_counter() - start
        self.timings.bytes_sent += len(payload)
        self.served.append((task.job_id, task.round, task.request.kind))
        return payload

    def scheme_for(self, task: Task) -> AggregationScheme:
        """The scheme of ``task``'s round: this node's, or lwr-masked if the task opts in.

        Raises :class:`RejectedContribution` for a scheme this node cannot use.
        """
        from fedcity.core.masked_scheme import scheme_for_task

        try:
            return scheme_for_task(self.scheme, task)
        except RejectedContribution as exc:
            raise RejectedContribution(f"agency {self.name!r}: {exc}") from exc

    def _seal(self, task: Task, v: npt.NDArray[np.float64], noise: Any) -> bytes:
        """Seal; with Paillier, keep the ciphertexts' openings for a range audit."""
        scheme = self.scheme_for(task)
        if scheme is not self.scheme:  # lwr-masked: nothing to audit, no openings kept
            return scheme.seal(v, task.spec, noise)
        public_key = getattr(self.scheme, "public_key", None)
        if public_key is None or not getattr(self.scheme, "encrypted", False):
            return self.scheme.seal(v, task.spec, noise)
        from fedcity.crypto import encrypt_vector_with_openings, serde

        pool = getattr(self.scheme, "pool", None)
        vector, openings = encrypt_vector_with_openings(
            public_key, v, task.spec, pool=pool, noise=noise, randomness=self.randomness
        )
        payload = serde.encrypted_vector_to_bytes(vector)
        self.openings.keep(task.job_id, task.round, payload, vector, openings)
        return payload

    def answer_range_audit(
        self, task: Task, evidence: OutOfRange, *, signing_key: SigningKey, key_id: bytes
    ) -> RangeAnswer:
        """Prove, and sign, that ciphertext ``i`` of this agency's contribution is in range.

        Refuses (:class:`RejectedContribution`) an audit whose evidence does not show the
        aggregate out of range, or a round whose opening it no longer keeps
        (:func:`fedcity.core.audit.answer_audit`).
        """
        from fedcity.core.audit import answer_audit

        start = time.perf_counter()
        try:
            return answer_audit(
                self.name, signing_key, key_id, self.openings, self.scheme, task, evidence
            )
        finally:
            extra = self.timings.extra
            extra["range_proof"] = extra.get("range_proof", 0.0) + time.perf_counter() - start

    def decrypt_share(
        self,
        task: Task,
        aggregate_bytes: bytes,
        *,
        summands_min: int,
        evidence: Evidence | None = None,
        justification: Justification | None = None,
        part: tuple[int, int] | None = None,
    ) -> bytes:
        """Partially decrypt an aggregate of at least ``summands_min`` contributions.

        With ``part = (start, stop)`` (a decryption group's share of the work, threshold key
        only) only ciphertexts ``start..stop-1`` are checked against the evidence and
        partially decrypted. A partial sent without proof (optimistic combination) is kept
        so that :meth:`prove_share` can prove it if the coordinator asks.

        An agency refuses to help decrypt anything that is not an aggregate of enough
        agencies, so the coordinator cannot use it to read a single contribution. The
        ``summands`` label alone only catches an honest coordinator's mistakes; with a
        :attr:`verifier`, ``evidence`` (the round's signed contributions) is required and
        checked first, which stops a deviating coordinator from relabelling one contribution
        as an aggregate (see docs/trust-model.md). Under differential privacy the minimum is
        at least the ``n_contributors`` the noise shares were calibrated for (``task.dp``):
        fewer shares in a sum would carry less noise than the job's ``ε`` assumes.
        """
        if task.dp:  # the noise was calibrated for this many shares: never decrypt fewer
            n_dp = task.dp.get("n_contributors")
            if isinstance(n_dp, int) and not isinstance(n_dp, bool):
                summands_min = max(summands_min, n_dp)
        scheme = self.scheme_for(task)
        aggregate = scheme.aggregate_from_bytes(aggregate_bytes, task.spec, task.vector_length)
        summands = getattr(aggregate, "summands", summands_min)
        if summands < summands_min:
            raise RejectedContribution(
                f"agency {self.name!r} refuses to decrypt an aggregate of {summands} "
                f"contribution(s); the job requires at least {summands_min}"
            )
        if self.verifier is not None:
            if evidence is None:
                raise RejectedContribution(
                    f"agency {self.name!r} decrypts only aggregates shown with their signed "
                    "contributions; none were given"
                )
            start = time.perf_counter()
            try:
                digests = self.verifier.check(
                    scheme,
                    task,
                    aggregate,
                    evidence,
                    summands_min=summands_min,
                    justification=justification,
                    part=part,
                )
            except RejectedContribution as exc:
                raise RejectedContribution(
                    f"agency {self.name!r} refuses to decrypt: {exc}"
                ) from exc
            finally:
                extra = self.timings.extra
                extra["aggregate_check"] = extra.get("aggregate_check", 0.0) + (
                    time.perf_counter() - start
                )
            self.verified.append((task.job_id, task.round, digests))
        if part is not None:
            if not isinstance(scheme, PaillierScheme):
                raise RejectedContribution("only a threshold aggregate is decrypted in parts")
            try:
                aggregate = scheme.part(aggregate, *part)
            except ValueError as exc:
                raise RejectedContribution(f"agency {self.name!r}: {exc}") from exc
        start = time.perf_counter()
        payload = scheme.partial(self.share, aggregate)
        self.timings.partial_decryption += time.perf_counter() - start
        self.timings.bytes_sent += len(payload)
        if getattr(scheme, "optimistic", False):
            self._unproven[(task.job_id, task.round)] = (aggregate, payload)
            while len(self._unproven) > 8:
                del self._unproven[next(iter(self._unproven))]
        return payload

    def prove_share(self, task: Task) -> bytes:
        """The proof exchange: this agency's last partial of ``task``'s round, now proven.

        Proves only what this agency itself sent (kept by :meth:`decrypt_share`), for the
        aggregate (part) it checked then; costs the proof, not the partial decryption.
        """
        kept = self._unproven.get((task.job_id, task.round))
        if kept is None or not isinstance(self.scheme, PaillierScheme):
            raise RejectedContribution(
                f"agency {self.name!r} sent no unproven partial decryption for round "
                f"{task.round} of job {task.job_id}"
            )
        start = time.perf_counter()
        payload = self.scheme.prove(self.share, *kept)
        self.timings.partial_decryption += time.perf_counter() - start
        self.timings.bytes_sent += len(payload)
        return payload
