r"""``fedcity ca ...``, ``fedcity agent enroll`` and ``fedcity login``: the enrollment commands.

::

    fedcity ca init --dir ca/ --federation riverside --host coordinator.example.org
    fedcity ca invite district-01 --role agency --dir ca/ [--ttl-hours 24] [--out token.txt]
    fedcity ca revoke district-01 --dir ca/
    fedcity ca list --dir ca/
    fedcity agent enroll --coordinator HOST:ENROLL_PORT --ca-file ca.pem --name district-01 \\
                         --token-file token.txt --out agencies/district-01/tls
    fedcity login --coordinator HOST:ENROLL_PORT --ca-file ca.pem --name analyst \\
                  --token-file token.txt --out ~/.fedcity/analyst

The CA folder is the operator's: it lives beside the coordinator, which reads its revocations
on every call (``fedcity coordinator serve --ca-dir ca/ --enroll-listen HOST:PORT``).
"""

from __future__ import annotations

import argparse
import datetime as dt
import sys
from pathlib import Path
from typing import Any

__all__ = ["add_ca_commands", "add_enroll_command", "run_ca", "run_enroll"]


def add_ca_commands(commands: Any, parser_class: type[argparse.ArgumentParser]) -> None:
    """Add ``ca init|invite|revoke|list`` to the ``fedcity`` command's subparsers."""
    ca = commands.add_parser("ca", help="the federation's certificate authority (operator)")
    actions = ca.add_subparsers(dest="action", metavar="ACTION", required=True)
    folder = parser_class(add_help=False)
    folder.add_argument(
        "--dir", type=Path, required=True, help="the CA folder (created by `ca init`; required)"
    )
    init = actions.add_parser("init", parents=[folder], help="create the CA and the server cert")
    init.add_argument("--federation", required=True, help="the federation's name (required)")
    init.add_argument(
        "--host",
        action="append",
        default=None,
        metavar="NAME",
        help="a host name or address the coordinator is reached at (repeatable; default: "
        "localhost and 127.0.0.1)",
    )
    invite = actions.add_parser(
        "invite", parents=[folder], help="a one-time enrollment token for a new principal"
    )
    invite.add_argument("name", help="the agency's or person's name")
    invite.add_argument(
        "--role", required=True, choices=["agency", "scientist", "operator"], help="(required)"
    )
    invite.add_argument(
        "--ttl-hours", type=float, default=24.0, help="the token expires after (default: 24)"
    )
    invite.add_argument(
        "--out", type=Path, default=None, help="write the token to this file instead of stdout"
    )
    revoke = actions.add_parser(
        "revoke", parents=[folder], help="revoke every certificate of a name (next call refused)"
    )
    revoke.add_argument("name")
    actions.add_parser("list", parents=[folder], help="issued certificates and their state")


def add_enroll_command(
    subparsers: Any, name: str, help_text: str, parser_class: type[argparse.ArgumentParser]
) -> Any:
    """Add an enrollment command (``agent enroll`` or ``login``) to ``subparsers``."""
    enroll = subparsers.add_parser(name, help=help_text)
    enroll.add_argument(
        "--coordinator", required=True, metavar="HOST:PORT", help="its enrollment port (required)"
    )
    enroll.add_argument(
        "--ca-file", type=Path, required=True, help="the federation's ca.pem (required)"
    )
    enroll.add_argument("--name", required=True, help="the invited name (required)")
    enroll.add_argument(
        "--token-file", type=Path, required=True, help="file holding the invitation (required)"
    )
    enroll.add_argument(
        "--out", type=Path, required=True, help="folder for key.pem and cert.pem (required)"
    )
    return enroll


def run_ca(args: argparse.Namespace) -> int:
    """Run a ``fedcity ca`` action; returns the exit code."""
    from fedcity.governance.enrollment import CADirectory, EnrollmentRegistry

    folder = CADirectory(args.dir)
    if args.action == "init":
        hosts = tuple(args.host or ("localhost", "127.0.0.1"))
        CADirectory.init(args.dir, args.federation, hosts)
        print(f"CA created in {args.dir}: give {folder.ca_cert} to every party;")
        print(f"{folder.ca_key} (owner-only) never leaves this folder.")
        print(
            f"serve with: fedcity coordinator serve --ca-dir {args.dir} --enroll-listen HOST:PORT"
        )
        return 0
    folder.authority()  # the folder must hold a CA (and a private key nobody else reads)
    registry = EnrollmentRegistry(folder.registry)
    try:
        if args.action == "invite":
            token = registry.invite(args.name, args.role, ttl=args.ttl_hours * 3600.0)
            if args.out is None:
                print(token)
            else:
                from fedcity.secretfiles import write_secret

                write_secret(args.out, (token + "\n").encode())
                print(f"invitation of {args.name} ({args.role}) written to {args.out}")
            print(
                f"valid for {args.ttl_hours:g} h, once; send it to {args.name} over a channel "
                "you trust",
                file=sys.stderr,
            )
        elif args.action == "revoke":
            n = registry.revoke(args.name)
            print(
                f"revoked {n} certificate(s) of {args.name}; the coordinator refuses its next call"
            )
        elif args.action == "list":
            for c in registry.certificates():
                state = "revoked" if c.revoked else "valid"
                until = dt.datetime.fromtimestamp(c.not_after, dt.UTC).strftime("%Y-%m-%d")
                print(f"{c.name:<24} {c.role:<10} {state:<8} until {until}  serial {c.serial:x}")
    finally:
        registry.close()
    return 0


def add_renew_command(commands: Any, parser_class: type[argparse.ArgumentParser]) -> Any:
    """Add ``fedcity renew``: a fresh certificate (and key) before the current one expires."""
    renew = commands.add_parser(
        "renew", help="renew your certificate before it expires (mutual TLS)"
    )
    renew.add_argument(
        "--coordinator", required=True, metavar="HOST:PORT", help="its main port (required)"
    )
    renew.add_argument("--ca-file", type=Path, required=True, help="ca.pem (required)")
    renew.add_argument("--cert-file", type=Path, required=True, help="replaced (required)")
    renew.add_argument("--key-file", type=Path, required=True, help="replaced (required)")
    renew.set_defaults(action="renew")
    return renew


def run_renew(args: argparse.Namespace) -> int:
    """Run ``fedcity renew``; returns the exit code."""
    from fedcity.net.client import renew

    role = renew(
        args.coordinator, ca_file=args.ca_file, cert_file=args.cert_file, key_file=args.key_file
    )
    print(f"renewed ({role}): {args.cert_file} and a new key in {args.key_file}")
    return 0


def run_enroll(args: argparse.Namespace) -> int:
    """Run ``fedcity agent enroll`` or ``fedcity login``; returns the exit code."""
    from fedcity.net.client import enroll

    token = args.token_file.read_text(encoding="utf-8").strip()
    key, cert, role = enroll(
        args.coordinator, ca_file=args.ca_file, token=token, name=args.name, out=args.out
    )
    print(f"enrolled {args.name} as {role}: certificate {cert}, key {key} (owner-only)")
    if role == "agency":
        print(f'in agency.toml: tls_cert_file = "{cert}" and tls_key_file = "{key}"')
    else:
        print(f"connect with --cert-file {cert} --key-file {key}")
    return 0


def add_approval_commands(agent: Any, parser_class: type[argparse.ArgumentParser]) -> None:
    """Add ``agent pending``, ``agent approve`` and ``agent deny`` (while the daemon runs)."""
    config = parser_class(add_help=False)
    config.add_argument(
        "--config", type=Path, required=True, help="the agency's agency.toml (required)"
    )
    agent.add_parser("pending", parents=[config], help="jobs waiting for your approval")
    approve = agent.add_parser("approve", parents=[config], help="let a waiting job run")
    approve.add_argument("job_id", metavar="JOB")
    approve.add_argument("--by", default=None, help="who decides (default: the login name, $USER)")
    deny = agent.add_parser("deny", parents=[config], help="refuse a waiting job, with a reason")
    deny.add_argument("job_id", metavar="JOB")
    deny.add_argument("--reason", required=True, help="sent to the data scientist (required)")
    deny.add_argument("--by", default=None, help="who decides (default: $USER)")


def run_approval(args: argparse.Namespace) -> int:
    """Run ``agent pending|approve|deny``; returns the exit code."""
    import getpass

    from fedcity.governance.approvals import ApprovalBook
    from fedcity.net.agentconfig import AgentConfig

    config = AgentConfig.from_toml(args.config)
    if config.approvals_file is None:  # pragma: no cover - always set by the config
        print("this agency keeps no approvals file", file=sys.stderr)
        return 1
    book = ApprovalBook(config.approvals_file)
    try:
        if args.action == "pending":
            waiting = book.jobs(waiting_only=True)
            if not waiting:
                print("no job is waiting for approval")
            for p in waiting:
                when = dt.datetime.fromtimestamp(p.seen, dt.UTC).strftime("%Y-%m-%d %H:%M")
                print(
                    f"{p.job_id}  {p.job_type:<20} by {p.submitted_by:<16} on {p.dataset!r} "
                    f"with {', '.join(p.agencies)} (since {when} UTC)"
                )
            return 0
        by = args.by or getpass.getuser()
        try:
            p = book.decide(
                args.job_id,
                approve=args.action == "approve",
                by=by,
                reason=getattr(args, "reason", "") or "",
            )
        except KeyError as exc:
            print(f"fedcity agent {args.action}: error: {exc.args[0]}", file=sys.stderr)
            return 1
        except ValueError as exc:
            print(f"fedcity agent {args.action}: error: {exc}", file=sys.stderr)
            return 1
        print(f"job {p.job_id} {p.decision} by {by}; the running agent acts on it within seconds")
        return 0
    finally:
        book.close()
