r"""``fedcity audit verify|export`` and ``fedcity agent budget``: the governance read-outs.

::

    fedcity audit verify coordinator.audit.sqlite --against d1.audit.sqlite d2.audit.sqlite \
        [--federation federation-public.json]
    fedcity audit verify d1.audit.sqlite --federation federation-public.json
    fedcity audit export coordinator.audit.sqlite --out coordinator-audit.jsonl
    fedcity agent budget --config agency.toml

``verify`` exits with 0 when every log checks out and 1 when anything was found (each finding
names the party, the first record at fault and what happened to it); a log can be an audit
log file or its JSON Lines export.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

__all__ = ["add_audit_commands", "add_budget_command", "run_audit", "run_budget"]


def add_audit_commands(commands: Any, parser_class: type[argparse.ArgumentParser]) -> None:
    """Add ``audit verify|export`` to the ``fedcity`` command's subparsers."""
    audit = commands.add_parser("audit", help="check and export audit logs")
    actions = audit.add_subparsers(dest="action", metavar="ACTION", required=True)
    verify = actions.add_parser(
        "verify",
        help="check a log's chain and signatures, and agents' logs against the coordinator's",
        description="Check an audit log: every record's hash, signature and place in the "
        "chain. With --against, LOG is the coordinator's log and each AGENT_LOG is checked "
        "with it: the coordinator's log against the chain heads it signed for the agents, "
        "and each agent's log against the uploads the coordinator recorded from it.",
    )
    verify.add_argument("log", type=Path, metavar="LOG", help="an audit log (or its export)")
    verify.add_argument(
        "--against",
        type=Path,
        nargs="+",
        default=[],
        metavar="AGENT_LOG",
        help="agencies' audit logs to cross-check with LOG (the coordinator's)",
    )
    verify.add_argument(
        "--federation",
        type=Path,
        default=None,
        help="federation-public.json: check agencies' records under their listed keys",
    )
    export = actions.add_parser("export", help="write a log as JSON Lines")
    export.add_argument("log", type=Path, metavar="LOG", help="an audit log")
    export.add_argument("--out", type=Path, required=True, help="new .jsonl file (required)")


def add_budget_command(agent: Any, parser_class: type[argparse.ArgumentParser]) -> None:
    """Add ``agent budget`` to the ``fedcity agent`` subparsers."""
    budget = agent.add_parser(
        "budget",
        help="the privacy budget this agency spent per dataset and period",
        description="Print the agency's budget ([policy] budget) and its ledger: the (epsilon, "
        "delta) charged per dataset and period, and what is left in the current period.",
    )
    budget.add_argument(
        "--config", type=Path, required=True, help="the agency's agency.toml (required)"
    )


def _keys(federation: Path | None) -> dict[str, Any]:
    if federation is None:
        return {}
    from fedcity.net.ceremony import load_federation

    return dict(load_federation(federation).signing_keys)


def run_audit(args: argparse.Namespace, out: Any = None) -> int:
    """``fedcity audit verify|export``; returns the exit code."""
    from fedcity.governance.audit import (
        COORDINATOR,
        AuditError,
        LogSummary,
        cross_check,
        verify_log,
    )
    from fedcity.governance.auditlog import export_jsonl, read_log

    stream = out or sys.stdout
    if args.action == "export":
        n = export_jsonl(read_log(args.log), args.out)
        print(f"wrote {n} records of {args.log} to {args.out}", file=stream)
        return 0
    keys = _keys(args.federation)
    records = read_log(args.log)
    summaries: Sequence[LogSummary]
    if args.against:
        agents: dict[str, Any] = {}
        for path in args.against:
            theirs = read_log(path)
            party = theirs[0].party if theirs else path.stem
            if party in agents or party == COORDINATOR:
                raise AuditError(f"{path}: a second log of {party!r}")
            agents[party] = theirs
        summaries = cross_check(records, agents, agency_keys=keys)
    else:
        party = records[0].party if records else None
        summaries = [verify_log(records, key=keys.get(party or ""), party=party)]
    bad = 0
    for s in summaries:
        key = s.public_key.hex()[:16] + "…" if s.public_key is not None else "unknown"
        state = "OK" if s.ok else f"{len(s.findings)} problem(s)"
        if s.anchors:
            state += f" (checked against {s.anchors} signed heads held by the agencies)"
        print(f"{s.party}: {s.records} records, key {key}: {state}", file=stream)
        for f in s.findings:
            at = "" if f.position is None else f" [record {f.position}]"
            print(f"  {f.problem}{at}: {f.message}", file=stream)
        bad += not s.ok
    return 1 if bad else 0


def run_budget(args: argparse.Namespace, out: Any = None) -> int:
    """``fedcity agent budget``; returns the exit code."""
    from fedcity.governance.ledger import period_of, read_spent
    from fedcity.net.agentconfig import AgentConfig

    stream = out or sys.stdout
    config = AgentConfig.from_toml(args.config)
    budget = config.budget
    if budget is None:
        print(f"agency {config.agency}: no privacy budget ([policy] budget) is set", file=stream)
    else:
        print(
            f"agency {config.agency}: budget epsilon={budget.epsilon:g}, delta={budget.delta:g} "
            f"per dataset per {budget.period}",
            file=stream,
        )
    if config.ledger_file is None or not config.ledger_file.exists():
        print("ledger: nothing charged yet", file=stream)
        return 0
    spent = read_spent(config.ledger_file)
    print(f"ledger {config.ledger_file}:", file=stream)
    if budget is not None:
        current = period_of(budget.period)
        names = sorted({*config.datasets, *config.tables, *(s.dataset for s in spent)})
        print(f"  {budget.period} {current}, left to spend:", file=stream)
        for name in names:
            used = next((s for s in spent if s.dataset == name and s.period == current), None)
            e = used.epsilon if used else 0.0
            d = used.delta if used else 0.0
            print(
                f"    {name:<24} epsilon {max(budget.epsilon - e, 0.0):.6g} of "
                f"{budget.epsilon:g}, delta {max(budget.delta - d, 0.0):.3g} of "
                f"{budget.delta:g}",
                file=stream,
            )
    print("  spent per dataset and period:", file=stream)
    if not spent:
        print("    (none)", file=stream)
    for s in spent:
        print(
            f"    {s.period:<10} {s.dataset:<24} epsilon {s.epsilon:.6g}  delta {s.delta:.3g}  "
            f"({s.jobs} job{'s' if s.jobs != 1 else ''})",
            file=stream,
        )
    return 0
