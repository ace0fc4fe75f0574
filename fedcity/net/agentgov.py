"""The agent daemon's governance duties: job policy, a person's approval, budget and audit log.

:class:`AgentGovernance` is mixed into :class:`fedcity.net.agent.Agent`; it holds no state of
its own and no sockets beyond the agent's stub (a held job is reported with ``Defer``). The
rules themselves live in :mod:`fedcity.governance` (policy, approvals, ledger, audit log); this
module applies them to what the coordinator hands the agent, before anything is computed, and
records what the agent sends (see ``docs/operations.md`` §8).
"""

from __future__ import annotations

import hashlib
import logging
from dataclasses import dataclass, field
from typing import Any

from fedcity.core.errors import RejectedContribution
from fedcity.core.tasks import Task
from fedcity.governance.approvals import ApprovalBook
from fedcity.governance.audit import Anchor, AuditError
from fedcity.governance.auditlog import AuditLog
from fedcity.governance.ledger import (
    BudgetRefused,
    Ledger,
    LedgerError,
    job_privacy_cost,
    privacy_cost,
)
from fedcity.governance.policy import JobFacts, PolicyRefusal
from fedcity.net.agentconfig import AgentConfig
from fedcity.v1 import federation_pb2 as fpb

__all__ = ["AgentGovernance"]

log = logging.getLogger("fedcity.net.agent")


@dataclass
class _Outgoing:
    """A payload or refusal for one assignment, kept until the coordinator has it."""

    job_id: str
    round: int
    action: int
    kind: str
    payload_kind: int = 0
    payload: bytes = b""
    reason: str = ""
    seconds: float = 0.0
    failures: int = 0
    signature: bytes = b""
    verified: dict[str, str] = field(default_factory=dict)
    attempt: int = 0
    """1 for the decryption of a round re-aggregated after a range audit."""

    @property
    def key(self) -> tuple[str, int, int, int]:
        return (self.job_id, self.round, self.action, self.attempt)

    @property
    def declined(self) -> bool:
        return not self.payload


_UPLOAD_KINDS: dict[int, str] = {
    int(fpb.PAYLOAD_KIND_CONTRIBUTION): "contribution",
    int(fpb.PAYLOAD_KIND_PARTIAL): "partial",
    int(fpb.PAYLOAD_KIND_RANGE_PROOF): "range-proof",
}
"""Audit record type of each uploaded payload kind."""


class AgentGovernance:
    """Policy, approvals, privacy budget and audit log of one agent (a mixin of ``Agent``)."""

    config: AgentConfig
    approvals: ApprovalBook | None
    audit: AuditLog | None
    ledger: Ledger | None
    _held: dict[tuple[str, int, int], fpb.Assignment]
    _decided: set[str]
    _jobs_seen: set[str]
    _tables: dict[str, Any]
    _stub: Any
    _metadata: tuple[tuple[str, str], ...]

    def _allows(self, task: Task) -> bool:  # pragma: no cover - Agent defines it
        raise NotImplementedError

    def _serve(self, a: fpb.Assignment) -> None:  # pragma: no cover - Agent defines it
        raise NotImplementedError

    def _hold_for_approval(self, a: fpb.Assignment) -> bool:
        """Apply the job-level policy; True when the assignment waits for a person.

        Raises
        ------
        RejectedContribution
            The policy refuses the job (the rule is named), or a person denied it.
        """
        if not a.HasField("job"):
            return False  # an older coordinator: the per-step policy still applies
        job = JobFacts.from_proto(a.job_id, a.dataset, a.job)
        rules = self.config.rules
        earlier: list[frozenset[str]] = []
        if self.approvals is not None and rules.min_set_difference:
            earlier = self.approvals.earlier(job.dataset, besides=job.job_id)
        try:
            rules.check(job, earlier)
        except PolicyRefusal as exc:
            raise RejectedContribution(f"agency {self.config.agency!r}: {exc}") from exc
        if not rules.needs_approval(job) or self.approvals is None:
            return False
        decision = self.approvals.ask(job)
        if decision is not None:
            self._audit_decision(job)
        if decision == "approved":
            return False
        if decision == "denied":
            _, reason = self.approvals.decision(job.job_id) or ("denied", "")
            raise RejectedContribution(
                f"agency {self.config.agency!r} denied job {job.job_id}: {reason}"
            )
        self._held[(a.job_id, int(a.round), int(a.action))] = a
        reason = (
            f"job type {job.job_type!r} from {job.submitted_by!r} needs a person's approval "
            f"at {self.config.agency} (fedcity agent approve {job.job_id})"
        )
        log.warning("job %s: held for approval (%s)", job.job_id, reason)
        self._stub.Defer(  # every time it is handed out: a restarted coordinator forgot
            fpb.DeferRequest(
                agency=self.config.agency, job_id=a.job_id, round=a.round, reason=reason
            ),
            timeout=15.0,
            metadata=self._metadata,
        )
        return True

    def _audit_decision(self, job: JobFacts) -> None:
        """A person's approval or denial of ``job`` into the audit log (once per job)."""
        if self.approvals is None or job.job_id in self._decided:
            return
        entry = next((p for p in self.approvals.jobs() if p.job_id == job.job_id), None)
        if entry is None or entry.decision is None:
            return
        self._decided.add(job.job_id)
        self._audit_append(
            "approve" if entry.decision == "approved" else "deny",
            job=job.job_id,
            body={
                "by": entry.decided_by or "",
                "reason": (entry.reason or "")[:2000],
                "job_type": job.job_type,
                "submitted_by": job.submitted_by,
            },
        )

    def _release_held(self) -> None:
        """Serve (or decline) held assignments whose job a person has decided on."""
        if not self._held or self.approvals is None:
            return
        for key, a in list(self._held.items()):
            if self.approvals.decision(a.job_id) is not None:
                del self._held[key]
                log.info("job %s: decided by a person; serving round %d", a.job_id, a.round)
                self._serve(a)

    # -- audit and budget -----------------------------------------------------------------------
    def _audit_append(self, type_: str, **fields: Any) -> None:
        """Append to the audit log (raises AuditError: the caller decides what follows)."""
        if self.audit is not None:
            self.audit.append(type_, **fields)

    def _audit_job(self, a: fpb.Assignment) -> None:
        """A job's first assignment seen by this agent (since it started)."""
        if a.job_id in self._jobs_seen:
            return
        if len(self._jobs_seen) > 100_000:
            self._jobs_seen.clear()
        self._audit_append(
            "job", job=a.job_id, round=int(a.round), body={"kind": a.kind, "dataset": a.dataset}
        )
        self._jobs_seen.add(a.job_id)

    @staticmethod
    def _declared_epsilon(a: fpb.Assignment) -> float | None:
        """The ε a job declared at submission (what the ledger charges), if it states one.

        The agency's DP floors are checked with it before any charge: the noise it is asked
        to add must deliver no more than that.
        """
        try:
            cost = job_privacy_cost(a.job.privacy_json) if a.HasField("job") else None
        except LedgerError:
            return None  # _charge refuses the job just after, naming the problem
        return None if cost is None else cost[0]

    def _charge(self, a: fpb.Assignment, task: Task) -> None:
        """Charge a DP job's (ε, δ) to the dataset's budget, or refuse the job (nothing computed).

        Policy and dataset are checked first, so a job the agency refuses anyway costs nothing.
        """
        budget, agency = self.config.budget, self.config.agency
        if budget is None or self.ledger is None:
            return
        try:  # the whole job's (ε, δ) as submitted, else this round's DP parameters
            cost = job_privacy_cost(a.job.privacy_json) if a.HasField("job") else None
            if cost is None:
                cost = privacy_cost(task)
        except LedgerError as exc:
            raise RejectedContribution(f"agency {agency!r}: {exc}") from exc
        if cost is None:
            return
        if not self._allows(task):
            raise RejectedContribution(f"agency {agency!r}: policy refuses {a.kind!r}")
        if task.request.kind.startswith("query."):
            dataset = str(task.request.params.get("table", ""))
        else:
            dataset = a.dataset or next(iter(self._tables), "")
        epsilon, delta = cost
        body: dict[str, Any] = {"dataset": dataset, "epsilon": epsilon, "delta": delta}
        try:
            spend = self.ledger.charge(dataset, a.job_id, epsilon, delta, budget)
        except BudgetRefused as exc:
            self._audit_append(
                "budget", job=a.job_id, round=int(a.round), body={**body, "refused": str(exc)}
            )
            raise RejectedContribution(f"agency {agency!r} refuses the job: {exc}") from exc
        except LedgerError as exc:
            raise RejectedContribution(
                f"agency {agency!r}: its privacy-budget ledger failed ({exc})"
            ) from exc
        if spend is not None:
            body.update(period=spend.period, spent_epsilon=spend.epsilon, spent_delta=spend.delta)
            self._audit_append("budget", job=a.job_id, round=int(a.round), body=body)
            log.info(
                "job %s charged epsilon=%g delta=%g to %r: %g/%g spent in %s",
                a.job_id,
                epsilon,
                delta,
                dataset,
                spend.epsilon,
                budget.epsilon,
                spend.period,
            )

    def _audit_outgoing(self, out: _Outgoing) -> None:
        """Record what is about to be sent; nothing is sent that could not be recorded."""
        try:
            if out.payload:
                kind = _UPLOAD_KINDS[out.payload_kind]
                body: dict[str, Any] = {
                    "kind": out.kind,
                    "sha256": hashlib.sha256(out.payload).hexdigest(),
                    "bytes": len(out.payload),
                }
                if out.verified:
                    body["contributions"] = dict(out.verified)
                self._audit_append(kind, job=out.job_id, round=out.round, body=body)
            else:
                self._audit_append(
                    "decline",
                    job=out.job_id,
                    round=out.round,
                    body={"kind": out.kind, "reason": out.reason[:2000]},
                )
        except AuditError as exc:
            log.error("job %s round %d: audit log failed: %s", out.job_id, out.round, exc)
            if out.payload:
                out.payload, out.signature = b"", b""
                out.reason = (
                    f"agency {self.config.agency!r}: its audit log cannot record the upload; "
                    "nothing is sent unrecorded"
                )

    def _audit_anchor(self, out: _Outgoing, stored: bool, msg: fpb.AuditAnchor) -> None:
        """Keep the coordinator's signed chain head that acknowledged an upload."""
        anchor = Anchor(
            int(msg.records), bytes(msg.head), bytes(msg.public_key), bytes(msg.signature)
        )
        if not anchor.verify():
            log.warning(
                "job %s round %d: the coordinator's audit anchor does not verify",
                out.job_id,
                out.round,
            )
        body: dict[str, Any] = {"anchor": anchor.to_json_dict(), "stored": stored}
        if stored:  # the anchored record is the coordinator's record of this very upload
            body["upload"] = {
                "type": _UPLOAD_KINDS[out.payload_kind],
                "job": out.job_id,
                "round": out.round,
                "agency": self.config.agency,
                "sha256": hashlib.sha256(out.payload).hexdigest(),
            }
        try:
            self._audit_append("anchor", job=out.job_id, round=out.round, body=body)
        except AuditError as exc:
            log.error("job %s round %d: audit log failed: %s", out.job_id, out.round, exc)
