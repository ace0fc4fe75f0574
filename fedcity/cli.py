"""The ``fedcity`` command line: key ceremony, coordinator, agent and jobs.

::

    fedcity data synth --agencies 5 --out data/
    fedcity keys deal --agencies a,b,c --threshold 2 --out federation/ [--data-dir data/]
    fedcity coordinator serve ...            (options: fedcity coordinator serve --help)
    fedcity coordinator check-store --db coordinator.sqlite
    fedcity coordinator backup --db coordinator.sqlite --to backup.sqlite
    fedcity agent run --config agency.toml
    fedcity job submit --coordinator HOST:PORT --token-file F --ca-file tls/ca.pem
                       --type logistic_regression --params '{"C": 1.0}' --dataset inspections
    fedcity job watch JOB | job status JOB | job logs JOB | job list | job cancel JOB
    fedcity job result JOB [--out result.json] [--model model.pkl] [--plot DIR]
    fedcity query run spec.toml [--out cells.csv] [--plot chart.png]   (connection as for job)
    fedcity query check spec.toml | query result JOB [--out F] [--plot F]
    fedcity agencies list

Connection options may also come from ``FEDCITY_COORDINATOR``, ``FEDCITY_TOKEN_FILE`` and
``FEDCITY_CA_FILE``. Errors are reported on one line of stderr; the exit code is 2 for a
command-line mistake and 1 for anything that went wrong while running; ``check-store`` and
``backup`` exit with 2 when they refuse a database (as the coordinator does at start).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, NoReturn

__all__ = ["main", "run_interruptible"]

EXIT_OK = 0
EXIT_FAILURE = 1
EXIT_USAGE = 2


class _UsageError(Exception):
    """A command-line mistake found after parsing (exit code 2)."""


class _Failure(Exception):
    """A runtime failure with a message for the user (exit code 1)."""


class _Parser(argparse.ArgumentParser):
    """An argument parser that reports errors on one line."""

    def error(self, message: str) -> NoReturn:
        """Print a one-line error and exit with code 2."""
        self.exit(EXIT_USAGE, f"{self.prog}: error: {message} (see --help)\n")


# -- argument helpers ---------------------------------------------------------------------------
def _names(text: str) -> list[str]:
    names = [n.strip() for n in text.split(",")]
    if not text.strip() or any(not n for n in names):
        raise argparse.ArgumentTypeError(f"expected a comma-separated list of names, got {text!r}")
    return names


def _json_object(text: str) -> dict[str, Any]:
    def no_constants(name: str) -> Any:
        raise argparse.ArgumentTypeError(f"{name} is not allowed in JSON")

    try:
        value = json.loads(text, parse_constant=no_constants)
    except json.JSONDecodeError as exc:
        raise argparse.ArgumentTypeError(
            f"invalid JSON ({exc.msg} at column {exc.colno}): {text!r}"
        ) from exc
    if not isinstance(value, dict):
        raise argparse.ArgumentTypeError(f"expected a JSON object, got {text!r}")
    return value


def _non_negative(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected an integer, got {text!r}") from None
    if value < 0:
        raise argparse.ArgumentTypeError(f"expected a non-negative integer, got {value}")
    return value


def _agencies_or_count(text: str) -> list[str]:
    """``N`` (district-1 … district-N, as ``make_city`` names them) or ``a,b,c``."""
    if text.strip().isdigit():
        n = int(text)
        if not 1 <= n <= 100:
            raise argparse.ArgumentTypeError(f"expected 1 to 100 agencies, got {n}")
        from fedcity.data.synthetic import make_city

        return [a.agency for a in make_city(max(n, 2), n_samples=30 * max(n, 2)).agencies][:n]
    return _names(text)


def _positive_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
    if not value > 0 or value == float("inf"):
        raise argparse.ArgumentTypeError(f"expected a positive number, got {text!r}")
    return value


def _connection_options() -> _Parser:
    parent = _Parser(add_help=False)
    group = parent.add_argument_group("connection")
    group.add_argument(
        "--coordinator",
        metavar="HOST:PORT",
        default=None,
        help="coordinator address (default: $FEDCITY_COORDINATOR)",
    )
    group.add_argument(
        "--token-file",
        type=Path,
        default=None,
        help="your bearer token file, e.g. scientists/analyst/token (default: $FEDCITY_TOKEN_FILE)",
    )
    group.add_argument(
        "--ca-file",
        type=Path,
        default=None,
        help="the federation's CA certificate, tls/ca.pem (default: $FEDCITY_CA_FILE)",
    )
    group.add_argument(
        "--cert-file",
        type=Path,
        default=None,
        help="your certificate from `fedcity login` (mutual TLS; default: $FEDCITY_CERT_FILE)",
    )
    group.add_argument(
        "--key-file",
        type=Path,
        default=None,
        help="the key of --cert-file (default: $FEDCITY_KEY_FILE)",
    )
    group.add_argument(
        "--insecure",
        action="store_true",
        help="plaintext connection, only to a loopback coordinator started with --insecure "
        "(default: TLS)",
    )
    return parent


def build_parser() -> _Parser:
    """The ``fedcity`` argument parser."""
    parser = _Parser(
        prog="fedcity",
        description="Privacy-preserving federated analytics between city agencies.",
        epilog="Exit codes: 0 success, 1 runtime failure, 2 command-line mistake.",
    )
    from fedcity import __version__

    parser.add_argument("--version", action="version", version=f"fedcity {__version__}")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    connection = _connection_options()

    # keys
    keys = commands.add_parser("keys", help="key ceremony").add_subparsers(
        dest="action", metavar="ACTION", required=True
    )
    deal = keys.add_parser(
        "deal",
        help="deal a threshold key, tokens and TLS certificates for a new federation",
        description="Deal a threshold Paillier key (one share per agency), bearer tokens "
        "(agencies and data scientists), the coordinator's token hashes, and a TLS CA with "
        "a server certificate. Existing files are never overwritten.",
    )
    deal.add_argument(
        "--agencies",
        type=_names,
        required=True,
        metavar="A,B,C",
        help="agency names, one key share each (required)",
    )
    mode = deal.add_mutually_exclusive_group(required=True)
    mode.add_argument(
        "--threshold",
        type=int,
        help="agencies needed to decrypt (t of n; one of --threshold and --key-holder is "
        "required); 1 lets any single agency decrypt everything",
    )
    mode.add_argument(
        "--key-holder",
        metavar="AGENCY",
        help="instead of a threshold key, give one ordinary private key to this agency: "
        "decryption about 20x cheaper, but the key holder and the coordinator must not "
        "collude (see docs/trust-model.md; default: a threshold key, --threshold)",
    )
    deal.add_argument(
        "--committee",
        type=_names,
        default=None,
        metavar="A,B,C",
        help="a decryption committee: only these agencies get a share (--threshold of them "
        "decrypt), the others only encrypt; for large federations (default: every agency)",
    )
    deal.add_argument(
        "--out", type=Path, required=True, metavar="DIR", help="folder to write (required)"
    )
    deal.add_argument(
        "--key-bits",
        type=int,
        default=2048,
        help="Paillier modulus size (default 2048; 1024 only for a trial)",
    )
    deal.add_argument(
        "--coordinator",
        metavar="HOST:PORT",
        default=None,
        help="address the agents dial, written into each agency.toml (default: the first "
        "--tls-hosts entry, port 50051)",
    )
    deal.add_argument(
        "--data-dir",
        type=Path,
        default=None,
        metavar="DIR",
        help="sample data from `fedcity data synth --out DIR`: each agency.toml points at "
        "DIR/<agency>/flood.csv (default: data/flood.csv in the agency's folder)",
    )
    deal.add_argument(
        "--scientists",
        type=_names,
        default=["analyst"],
        metavar="NAMES",
        help="data scientists who may submit jobs (default: analyst)",
    )
    deal.add_argument(
        "--tls-hosts",
        type=_names,
        default=["127.0.0.1", "localhost"],
        metavar="HOSTS",
        help="names/addresses of the coordinator in its certificate (default: 127.0.0.1,localhost)",
    )

    # coordinator (delegated)
    coordinator = commands.add_parser("coordinator", help="run the coordinator").add_subparsers(
        dest="action", metavar="ACTION", required=True
    )
    coordinator.add_parser(
        "serve",
        help="serve agents and data scientists (options: fedcity coordinator serve --help)",
        add_help=False,
    )
    check_store = coordinator.add_parser(
        "check-store",
        help="check the coordinator's database read-only (safe while it runs)",
        description="Run every check the coordinator runs on its database at start (schema, "
        "SQLite quick_check, the events' hash chain, a lost -wal file) without writing "
        "anything, and print a summary. Exit code 0 if all pass, 2 with the reason if not.",
    )
    check_store.add_argument("--db", type=Path, required=True, help="the database file (required)")
    backup = coordinator.add_parser(
        "backup",
        help="consistent online backup of the coordinator's database (safe while it runs)",
        description="Copy the database with SQLite's online backup (the coordinator may keep "
        "running), then check the copy like check-store. DEST must not exist. Restore: see "
        "docs/operations.md.",
    )
    backup.add_argument("--db", type=Path, required=True, help="the database file (required)")
    backup.add_argument(
        "--to", type=Path, required=True, metavar="DEST", help="new backup file (required)"
    )

    # agent
    from fedcity.governance.cli import add_ca_commands, add_enroll_command

    add_ca_commands(commands, _Parser)
    from fedcity.governance.cli import add_renew_command

    add_renew_command(commands, _Parser)
    add_enroll_command(
        commands, "login", "enroll as a data scientist or operator (mutual TLS)", _Parser
    ).set_defaults(action="enroll")
    agent = commands.add_parser("agent", help="run an agency's agent").add_subparsers(
        dest="action", metavar="ACTION", required=True
    )
    add_enroll_command(
        agent, "enroll", "enroll this agency with an invitation (mutual TLS)", _Parser
    )
    from fedcity.governance.cli import add_approval_commands

    add_approval_commands(agent, _Parser)
    from fedcity.governance.auditcli import add_audit_commands, add_budget_command

    add_budget_command(agent, _Parser)
    add_audit_commands(commands, _Parser)
    run = agent.add_parser(
        "run",
        help="serve vetted tasks on this agency's data until stopped (SIGTERM/SIGINT)",
        description="Dial out to the coordinator and serve vetted tasks on local data.",
    )
    run.add_argument(
        "--config", type=Path, required=True, help="the agency's agency.toml (required)"
    )
    run.add_argument(
        "--log-level",
        default="info",
        choices=["debug", "info", "warning", "error"],
        help="least severe messages shown (default: info)",
    )

    # data
    data = commands.add_parser("data", help="sample data for a trial").add_subparsers(
        dest="action", metavar="ACTION", required=True
    )
    synth = data.add_parser(
        "synth",
        help="write a synthetic table per agency (for trying a federation)",
        description="Write OUT/<agency>/<task>.csv (one district's training rows, very "
        "unequal sizes and feature mixes) and OUT/<agency>/<task>_holdout.csv (its held-out "
        "rows) for every agency, drawn by fedcity.data.make_city. `fedcity keys deal "
        "--data-dir OUT` writes agency.toml files that declare them.",
    )
    synth.add_argument(
        "--agencies",
        type=_agencies_or_count,
        required=True,
        metavar="N|A,B,C",
        help="a number N (agencies district-1 ... district-N) or names (required)",
    )
    synth.add_argument(
        "--out", type=Path, required=True, metavar="DIR", help="folder to write (required)"
    )
    synth.add_argument(
        "--task",
        default="flood",
        choices=["flood", "fire", "service_demand", "elder_risk"],
        help="which synthetic table (default: flood; label flooded, 0/1)",
    )
    synth.add_argument(
        "--rows",
        type=int,
        default=6000,
        metavar="N",
        help="training rows over all agencies, at least 30 per agency (default: 6000)",
    )
    synth.add_argument("--seed", type=int, default=2026, help="random seed (default: 2026)")
    synth.add_argument(
        "--force", action="store_true", help="overwrite existing files (default: refuse)"
    )

    # jobs
    job = commands.add_parser("job", help="submit and follow jobs").add_subparsers(
        dest="action", metavar="ACTION", required=True
    )
    submit = job.add_parser("submit", parents=[connection], help="submit a job")
    submit.add_argument(
        "--type",
        dest="job_type",
        required=True,
        help="logistic_regression, ridge, poisson_regression or fedavg (required)",
    )
    submit.add_argument(
        "--params",
        type=_json_object,
        default={},
        metavar="JSON",
        help="job parameters, e.g. '{\"C\": 1.0}' (default: {}, the job type's defaults)",
    )
    submit.add_argument(
        "--dataset", required=True, help="dataset name the agencies declared (required)"
    )
    submit.add_argument(
        "--agencies", type=_names, default=[], metavar="A,B", help="participants (default: all)"
    )
    submit.add_argument(
        "--min-agencies",
        type=_non_negative,
        default=0,
        metavar="N",
        help="fewest contributors per round (default: the coordinator's)",
    )
    submit.add_argument(
        "--evaluate-dataset",
        default="",
        metavar="NAME",
        help="evaluate the model on this dataset after training (default: no evaluation)",
    )
    submit.add_argument(
        "--privacy",
        type=_json_object,
        default=None,
        metavar="JSON",
        help='differential privacy, e.g. \'{"epsilon": 1.0, "delta": 1e-6}\' (default: none)',
    )
    submit.add_argument(
        "--watch", action="store_true", help="follow the job until it ends (default: return)"
    )
    submit.add_argument(
        "--timeout",
        type=_positive_float,
        default=None,
        metavar="SECONDS",
        help="with --watch: give up after (default: wait until the job ends)",
    )
    watch = job.add_parser("watch", parents=[connection], help="follow a job until it ends")
    watch.add_argument("job_id", metavar="JOB")
    watch.add_argument(
        "--timeout",
        type=_positive_float,
        default=None,
        metavar="SECONDS",
        help="give up after (default: wait until the job ends)",
    )
    result = job.add_parser("result", parents=[connection], help="print or save a job's result")
    result.add_argument("job_id", metavar="JOB")
    result.add_argument(
        "--out", type=Path, default=None, help="write the JSON to this file (default: print it)"
    )
    result.add_argument(
        "--model",
        type=Path,
        default=None,
        metavar="FILE.pkl",
        help="write the trained scikit-learn pipeline (pickle; load with pickle.load; "
        "default: none)",
    )
    result.add_argument(
        "--plot",
        type=Path,
        default=None,
        metavar="DIR",
        help="save charts (PNG) in this folder (default: none)",
    )
    result.add_argument(
        "--force", action="store_true", help="overwrite --out/--model files (default: refuse)"
    )
    cancel = job.add_parser("cancel", parents=[connection], help="cancel a job")
    cancel.add_argument("job_id", metavar="JOB")
    status = job.add_parser("status", parents=[connection], help="one job's state and progress")
    status.add_argument("job_id", metavar="JOB")
    listing_jobs = job.add_parser("list", parents=[connection], help="your jobs, newest first")
    listing_jobs.add_argument(
        "--limit", type=int, default=50, metavar="N", help="at most N jobs (default 50, max 500)"
    )
    logs = job.add_parser("logs", parents=[connection], help="a job's history in words")
    logs.add_argument("job_id", metavar="JOB")

    query = commands.add_parser("query", help="federated queries").add_subparsers(
        dest="action", metavar="ACTION", required=True
    )
    check = query.add_parser("check", help="validate a query spec (TOML) without sending it")
    check.add_argument("spec", type=Path, metavar="SPEC.toml")
    outputs = _Parser(add_help=False)
    outputs.add_argument(
        "--out",
        type=Path,
        default=None,
        help="also write the table (.csv, .parquet or .json; default: print only)",
    )
    outputs.add_argument(
        "--plot",
        type=Path,
        default=None,
        metavar="FILE",
        help="draw a chart (.png or .svg; default: none)",
    )
    outputs.add_argument(
        "--force", action="store_true", help="overwrite --out/--plot files (default: refuse)"
    )
    qrun = query.add_parser(
        "run", parents=[connection, outputs], help="run a query and print its table"
    )
    qrun.add_argument("spec", type=Path, metavar="SPEC.toml")
    qrun.add_argument(
        "--agencies", type=_names, default=[], metavar="A,B", help="participants (default: all)"
    )
    qrun.add_argument(
        "--min-agencies",
        type=_non_negative,
        default=0,
        metavar="N",
        help="fewest contributors per round (default: the coordinator's)",
    )
    qrun.add_argument(
        "--timeout",
        type=_positive_float,
        default=None,
        metavar="SECONDS",
        help="give up after (default: wait until the query ends)",
    )
    qresult = query.add_parser(
        "result", parents=[connection, outputs], help="print a finished query's table"
    )
    qresult.add_argument("job_id", metavar="JOB")

    agencies = commands.add_parser("agencies", help="agencies the coordinator knows")
    agencies_actions = agencies.add_subparsers(dest="action", metavar="ACTION", required=True)
    listing = agencies_actions.add_parser("list", parents=[connection], help="list agencies")
    listing.add_argument(
        "--json", action="store_true", help="machine-readable output (default: a table)"
    )
    return parser


# -- commands -----------------------------------------------------------------------------------
def _keys_deal(args: argparse.Namespace) -> int:
    from rich.console import Console

    from fedcity.net.ceremony import deal_federation

    if args.key_holder is not None:
        if args.key_holder not in args.agencies:
            raise _UsageError(f"--key-holder {args.key_holder!r} is not one of --agencies")
        args.threshold = 1
    elif not 1 <= args.threshold <= len(args.agencies):
        raise _UsageError(
            f"--threshold must lie between 1 and the number of agencies ({len(args.agencies)})"
        )
    if args.key_bits < 256 or args.key_bits % 16:
        raise _UsageError("--key-bits must be a multiple of 16 and at least 256")
    if args.data_dir is not None and not args.data_dir.is_dir():
        raise _UsageError(
            f"--data-dir {args.data_dir} is not a folder; write the sample data first with "
            f"`fedcity data synth --agencies {','.join(args.agencies)} --out {args.data_dir}`"
        )
    console = Console(stderr=True)
    what = (
        f"a {args.key_bits}-bit key held by {args.key_holder}"
        if args.key_holder
        else f"a {args.key_bits}-bit {args.threshold}-of-{len(args.agencies)} threshold key"
    )
    with console.status(f"dealing {what}"):
        files = deal_federation(
            args.out,
            args.agencies,
            args.threshold,
            key_bits=args.key_bits,
            scientists=args.scientists,
            tls_hosts=args.tls_hosts,
            key_holder=args.key_holder,
            coordinator=args.coordinator,
            data_dir=args.data_dir,
            committee=args.committee,
        )
    print(f"federation written to {files.root}")
    print(f"  public (everyone):        {files.public}, {files.ca_cert}")
    print(f"  coordinator only:         {files.credentials.parent}/ (token hashes, TLS key)")
    for a in files.agency_tokens:
        key = files.key_file(a)
        signing = files.signing_keys[a].name
        print(f"  agency {a}: {key.parent}/ ({key.name}, {signing}, token, ca.pem, agency.toml)")
    for s, path in files.scientist_tokens.items():
        print(f"  scientist {s}: {path} (and ca.pem)")
    first = next(iter(files.agency_configs.values()))
    print(f"each agency starts its agent with: fedcity agent run --config {first}")
    print("hand each folder only to its owner; the full key and the CA key were not kept")
    if args.key_holder is None and args.threshold == 1 and len(args.agencies) > 1:
        _warn(
            "--threshold 1 lets any single agency's share decrypt alone: that agency, given "
            "the ciphertexts the coordinator holds, can read every other agency's individual "
            "contributions; use at least 2 (e.g. a majority) outside a trial"
        )
    return EXIT_OK


def _warn(message: str) -> None:
    print(f"warning: {message}", file=sys.stderr)


def _data_synth(args: argparse.Namespace) -> int:
    from fedcity.data.sample import write_sample_data

    written = write_sample_data(
        args.out, args.agencies, task=args.task, rows=args.rows, seed=args.seed, force=args.force
    )
    for agency, path in written.tables.items():
        print(
            f"{agency}: {path} ({written.rows[agency]:,} rows), held-out rows in "
            f"{written.holdout[agency]}"
        )
    print(
        f"agency.toml files that declare these tables: fedcity keys deal --data-dir {args.out} ..."
    )
    return EXIT_OK


def _coordinator_serve(argv: list[str]) -> int:
    import importlib

    try:
        coordinator = importlib.import_module("fedcity.net.coordinator")
    except ImportError as exc:
        raise _Failure(f"the coordinator is not available in this installation: {exc}") from exc
    code = coordinator.main(argv)
    return int(code) if isinstance(code, int) else EXIT_OK


def _coordinator_store(args: argparse.Namespace) -> int:
    from fedcity.net.storecheck import backup_command, check_command

    if args.action == "check-store":
        return check_command(args.db)
    if args.action == "backup":
        return backup_command(args.db, args.to)
    raise _UsageError(f"unknown coordinator action {args.action!r}")  # pragma: no cover


def _agent_run(args: argparse.Namespace) -> int:
    import logging

    from fedcity.net.agent import Agent, AgentConfig

    logging.basicConfig(
        level=getattr(logging, args.log_level.upper()),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    config = AgentConfig.from_toml(args.config)
    logger = logging.getLogger("fedcity.net.agent")
    logger.info("agent %s: configuration %s", config.agency, args.config.resolve())
    for what, path in _config_paths(config):
        logger.info("  %-18s %s", what, path)
    agent = Agent(config)
    logger.info(
        "agent %s starting: coordinator %s (%s)",
        config.agency,
        config.coordinator,
        "plaintext" if config.insecure else "TLS",
    )
    agent.run()
    return EXIT_OK


def _config_paths(config: Any) -> list[tuple[str, Path]]:
    """Every file an agent configuration names, resolved (as the agent will open them)."""
    out: list[tuple[str, Path]] = [
        ("token", config.token_file),
        ("key", config.share_file),
        ("signing key", config.signing_key_file),
        ("federation", config.federation_file),
    ]
    if config.ca_file is not None:
        out.append(("CA", config.ca_file))
    if config.log_file is not None:
        out.append(("task log", config.log_file))
    if config.audit_file is not None:
        out.append(("audit log", config.audit_file))
    if config.budget is not None and config.ledger_file is not None:
        out.append(("budget ledger", config.ledger_file))
    out += [(f"dataset {name}", dc.path) for name, dc in config.datasets.items()]
    out += [(f"table {name}", tc.path) for name, tc in config.tables.items()]
    return out


def _client(args: argparse.Namespace) -> Any:
    if args.insecure and args.ca_file is not None:
        raise _UsageError("give either --ca-file or --insecure, not both")
    address = args.coordinator or os.environ.get("FEDCITY_COORDINATOR")
    token_file = args.token_file or os.environ.get("FEDCITY_TOKEN_FILE")
    ca_file = None if args.insecure else args.ca_file or os.environ.get("FEDCITY_CA_FILE")
    cert_file = args.cert_file or os.environ.get("FEDCITY_CERT_FILE")
    key_file = args.key_file or os.environ.get("FEDCITY_KEY_FILE")
    if not address:
        raise _UsageError("--coordinator is required (or set FEDCITY_COORDINATOR)")
    if (cert_file is None) != (key_file is None):
        raise _UsageError("give --cert-file and --key-file together")
    if not token_file and not cert_file:
        raise _UsageError(
            "--token-file is required (or set FEDCITY_TOKEN_FILE), or --cert-file/--key-file "
            "after `fedcity login`"
        )
    if not ca_file and not args.insecure:
        raise _UsageError("give --ca-file (the federation's tls/ca.pem) or --insecure")
    from fedcity.net.channel import AddressError, is_loopback, parse_address

    try:
        host, _ = parse_address(address)
    except AddressError as exc:
        raise _UsageError(f"--coordinator: {exc}") from exc
    if args.insecure and not is_loopback(host):
        raise _UsageError("--insecure is allowed only with a loopback --coordinator")
    from fedcity.net.ceremony import read_token
    from fedcity.net.client import Client

    _CONNECTION.update(address=address, insecure=args.insecure, ca_file=ca_file)
    token = read_token(token_file) if token_file and not cert_file else None
    return Client(
        address,
        token,
        ca_file=ca_file,
        insecure=args.insecure,
        cert_file=cert_file,
        key_file=key_file,
    )


_CONNECTION: dict[str, Any] = {}
"""The coordinator this command dialled (to explain a failed connection)."""


def _explain_connection(message: str) -> str:
    """A client's "cannot reach" error in one actionable sentence, when it can be told why."""
    if not _CONNECTION or "cannot reach the coordinator" not in message:
        return message
    from fedcity.net.channel import diagnose_connection

    diagnosis = diagnose_connection(
        _CONNECTION["address"],
        message,
        insecure=_CONNECTION["insecure"],
        ca_file=_CONNECTION["ca_file"],
    )
    return message if diagnosis is None else diagnosis.message


def _watch(client: Any, job_id: str, timeout: float | None) -> int:
    from rich.console import Console

    console = Console(stderr=True)
    last = None
    for event in client.watch(job_id, console=console, timeout=timeout):
        last = event
    if last is None:
        raise _Failure(f"job {job_id}: the coordinator sent no status")
    print(last.summary)
    if last.state == "succeeded" and last.job_type != "query":
        _print_metrics(client.result(job_id))
    return EXIT_OK if last.state == "succeeded" else EXIT_FAILURE


def _number(value: Any) -> str:
    """Counts as integers, other figures with 6 significant digits."""
    if isinstance(value, bool):
        return str(value)
    if isinstance(value, int) or (isinstance(value, float) and value.is_integer()):
        return f"{int(value):,}"
    if isinstance(value, float):
        return f"{value:.6g}"
    return str(value)


def _print_metrics(result: dict[str, Any]) -> None:
    """The federated evaluation's metrics (if the job was evaluated), one per line."""
    metrics = result.get("metrics")
    if not isinstance(metrics, dict) or not metrics:
        return
    print("evaluation:")
    for name, value in metrics.items():
        if isinstance(value, int | float):
            print(f"  {name:<24} {_number(value)}")


def _print_jobs(events: list[Any]) -> None:
    import datetime as dt

    from rich.console import Console
    from rich.table import Table

    table = Table()
    for column in ("job", "type", "dataset", "state", "rounds", "agencies", "submitted (UTC)"):
        table.add_column(column, no_wrap=True)
    for e in events:
        when = dt.datetime.fromtimestamp(e.submitted_unix, dt.UTC).strftime("%Y-%m-%d %H:%M")
        kept = e.participants - len(e.departures)
        agencies = f"{kept}/{e.participants}" if e.departures else str(e.participants)
        table.add_row(e.job_id, e.job_type, e.dataset, e.state, str(e.rounds_done), agencies, when)
    Console().print(table)


def _warn_min_agencies(args: argparse.Namespace) -> None:
    if args.min_agencies == 1:
        _warn(
            "--min-agencies 1 lets a round be released with one agency's contribution alone: "
            "its result is then that agency's own figures (agencies with min_summands >= 2 "
            "decline to decrypt it)"
        )


def _job(args: argparse.Namespace) -> int:
    if args.action == "submit":
        _warn_min_agencies(args)
    with _client(args) as client:
        if args.action == "submit":
            job_id = client.submit(
                args.job_type,
                args.params,
                args.dataset,
                agencies=args.agencies,
                min_agencies=args.min_agencies,
                evaluate_dataset=args.evaluate_dataset,
                privacy=args.privacy,
            )
            print(job_id, flush=True)
            return _watch(client, job_id, args.timeout) if args.watch else EXIT_OK
        if args.action == "watch":
            return _watch(client, args.job_id, args.timeout)
        if args.action == "result":
            return _job_result(client, args)
        if args.action == "status":
            event = client.status(args.job_id)
            print(event.summary)
            if event.round_label and event.state == "running":
                print(f"  current round: {event.round_label}")
            for agency, reason in event.waiting.items():
                print(f"  waiting for {agency}: {reason}")
            for agency, reason in event.departures.items():
                print(f"  {agency} left: {reason}")
            if event.failure:
                print(f"  failure: {event.failure}")
            return EXIT_OK
        if args.action == "list":
            if not 1 <= args.limit <= 500:
                raise _UsageError("--limit must lie in [1, 500]")
            _print_jobs(client.jobs(args.limit))
            return EXIT_OK
        if args.action == "logs":
            for line in client.logs(args.job_id):
                print(line)
            return EXIT_OK
        if args.action == "cancel":
            event = client.cancel(args.job_id)
            print(f"job {event.job_id} {event.state}")
            return EXIT_OK
    raise _UsageError(f"unknown job action {args.action!r}")  # pragma: no cover


def _job_result(client: Any, args: argparse.Namespace) -> int:
    for path in (args.out, args.model):
        if path is not None and path.exists() and not args.force:
            raise _Failure(f"{path} exists; use --force to overwrite it")
    result = client.result(args.job_id)
    text = json.dumps(result, indent=2, sort_keys=True) + "\n"
    if args.out is None and args.model is None and args.plot is None:
        sys.stdout.write(text)
    if args.out is not None:
        args.out.write_text(text, encoding="utf-8")
        print(f"result of job {args.job_id} written to {args.out}")
    if args.out is not None or args.model is not None or args.plot is not None:
        _print_metrics(result)
    if args.model is not None:
        import pickle

        estimator = client.estimator(args.job_id)
        args.model.write_bytes(pickle.dumps(estimator))
        print(
            f"model of job {args.job_id} written to {args.model} "
            f"({type(estimator).__name__}; load it with pickle.load)"
        )
    if args.plot is not None:
        from fedcity.plots import save_job_plots

        args.plot.mkdir(parents=True, exist_ok=True)
        for path in save_job_plots(result, args.plot):
            print(f"chart written to {path}")
    return EXIT_OK


def _query(args: argparse.Namespace) -> int:
    from fedcity.analytics.spec import QuerySpec

    if args.action == "check":
        spec = QuerySpec.from_toml(args.spec)
        print(
            f"{args.spec}: valid query on table {spec.table!r}: {spec.n_cells} cells, "
            f"{len(spec.aggregates)} aggregates, cells under {spec.disclosure.min_count} rows "
            "suppressed"
        )
        return EXIT_OK
    for path in (args.out, args.plot):
        if path is not None and path.exists() and not args.force:
            raise _Failure(f"{path} exists; use --force to overwrite it")
    if args.action == "run":
        _warn_min_agencies(args)
    with _client(args) as client:
        if args.action == "run":
            spec = QuerySpec.from_toml(args.spec)  # a bad spec fails here, before any call
            job_id = client.submit_query(
                spec, agencies=args.agencies, min_agencies=args.min_agencies
            )
            print(f"query {job_id} submitted", file=sys.stderr, flush=True)
            if _watch(client, job_id, args.timeout) != EXIT_OK:
                return EXIT_FAILURE
        else:
            job_id = args.job_id
        result = client.query_result(job_id)
    print(result)
    if args.out is not None:
        suffix = args.out.suffix.lower()
        if suffix == ".csv":
            result.to_csv(args.out)
        elif suffix in (".parquet", ".pq"):
            result.to_parquet(args.out)
        elif suffix == ".json":
            args.out.write_text(result.to_json(), encoding="utf-8")
        else:
            raise _UsageError(f"--out {args.out}: use a .csv, .parquet or .json file")
        print(f"table written to {args.out}", file=sys.stderr)
    if args.plot is not None:
        print(f"chart written to {result.plot(args.plot)}", file=sys.stderr)
    return EXIT_OK


def _agencies(args: argparse.Namespace) -> int:
    import datetime as dt

    with _client(args) as client:
        infos = client.agencies()
    if args.json:
        from fedcity.net.messages import feature_spec_to_json

        out = [
            {
                "name": i.name,
                "connected": i.connected,
                "last_seen_unix": i.last_seen_unix,
                "datasets": {n: json.loads(feature_spec_to_json(s)) for n, s in i.datasets.items()},
                "tables": i.tables,
            }
            for i in infos
        ]
        print(json.dumps(out, indent=2, sort_keys=True))
        return EXIT_OK
    from rich.console import Console
    from rich.table import Table

    table = Table("agency", "connected", "last seen (UTC)", "datasets", "query tables")
    for i in infos:
        seen = (
            dt.datetime.fromtimestamp(i.last_seen_unix, dt.UTC).strftime("%Y-%m-%d %H:%M:%S")
            if i.last_seen_unix
            else "never"
        )
        sets = ", ".join(
            f"{n} ({len(s.features)} features, label {s.label})" for n, s in i.datasets.items()
        )
        tables = ", ".join(f"{n} ({len(c)} columns)" for n, c in i.tables.items())
        table.add_row(i.name, "yes" if i.connected else "no", seen, sets or "-", tables or "-")
    Console().print(table)
    return EXIT_OK


def _dispatch(args: argparse.Namespace) -> int:
    if args.command == "keys":
        return _keys_deal(args)
    if args.command == "coordinator":
        return _coordinator_store(args)
    if args.command == "renew":
        from fedcity.governance.cli import run_renew

        return run_renew(args)
    if args.command == "agent" and args.action in ("pending", "approve", "deny"):
        from fedcity.governance.cli import run_approval

        return run_approval(args)
    if args.command in ("ca", "login") or (args.command, args.action) == ("agent", "enroll"):
        from fedcity.governance.cli import run_ca, run_enroll

        return run_ca(args) if args.command == "ca" else run_enroll(args)
    if args.command == "audit" or (args.command, args.action) == ("agent", "budget"):
        from fedcity.governance.auditcli import run_audit, run_budget

        return run_audit(args) if args.command == "audit" else run_budget(args)
    if args.command == "agent":
        return _agent_run(args)
    if args.command == "data":
        return _data_synth(args)
    if args.command == "job":
        return _job(args)
    if args.command == "query":
        return _query(args)
    if args.command == "agencies":
        return _agencies(args)
    raise _UsageError(f"unknown command {args.command!r}")  # pragma: no cover


_KNOWN_ERRORS = (
    ("fedcity.net.agent", "AgentError"),
    ("fedcity.net.agent", "ConfigError"),
    ("fedcity.net.ceremony", "CeremonyError"),
    ("fedcity.net.channel", "AddressError"),
    ("fedcity.net.client", "ClientError"),
    ("fedcity.crypto.errors", "CryptoError"),
    ("fedcity.data.dataset", "DataError"),
    ("fedcity.analytics.spec", "QueryError"),
    ("fedcity.data.sample", "SampleError"),
    ("fedcity.governance.audit", "AuditError"),
    ("fedcity.governance.ledger", "LedgerError"),
)


def _is_known(exc: BaseException) -> bool:
    """Whether ``exc``'s message is a complete answer for the user (no traceback needed).

    Only modules already imported are consulted: an exception of their types can only come
    from a module that was loaded, and the error path stays fast.
    """
    if isinstance(exc, OSError):
        return True
    for module, name in _KNOWN_ERRORS:
        loaded = sys.modules.get(module)
        cls = getattr(loaded, name, None) if loaded is not None else None
        if isinstance(cls, type) and isinstance(exc, cls):
            return True
    return False


def main(argv: Sequence[str] | None = None) -> int:
    """Run the ``fedcity`` command; returns the exit code.

    Parameters
    ----------
    argv : sequence of str, optional
        Arguments without the program name (default: ``sys.argv[1:]``).

    Returns
    -------
    int
        0 on success, 1 on a runtime failure, 2 on a command-line mistake.
    """
    args_list = list(sys.argv[1:] if argv is None else argv)
    prog = "fedcity"
    if not os.environ.get("FEDCITY_DEBUG"):  # gRPC's own log lines would repeat our messages
        os.environ.setdefault("GRPC_VERBOSITY", "NONE")
    try:
        if args_list[:2] == ["coordinator", "serve"]:
            prog = "fedcity coordinator serve"
            return _coordinator_serve(args_list[2:])
        args = build_parser().parse_args(args_list)
        prog = f"fedcity {args.command} {args.action}"
        return _dispatch(args)
    except _UsageError as exc:
        print(f"{prog}: error: {exc} (see --help)", file=sys.stderr)
        return EXIT_USAGE
    except _Failure as exc:
        print(f"{prog}: error: {exc}", file=sys.stderr)
        return EXIT_FAILURE
    except KeyboardInterrupt:
        print(f"{prog}: interrupted", file=sys.stderr)
        return 130
    except Exception as exc:
        if _is_known(exc):
            print(f"{prog}: error: {_explain_connection(_one_line(exc))}", file=sys.stderr)
            return EXIT_FAILURE
        if os.environ.get("FEDCITY_DEBUG"):
            raise
        print(
            f"{prog}: internal error: {type(exc).__name__}: {_one_line(exc)} "
            "(set FEDCITY_DEBUG=1 for a traceback)",
            file=sys.stderr,
        )
        return EXIT_FAILURE


def run_interruptible(main_function: Callable[[], int], prog: str) -> int:
    """Run a script's ``main()``; Ctrl-C ends it with one line on stderr and exit code 130.

    A second Ctrl-C while the first one unwinds (closing files, stopping worker processes)
    is ignored, so the clean-up is not cut short by a traceback.

    Parameters
    ----------
    main_function : callable
        The script's ``main`` (no arguments; it reads ``sys.argv``).
    prog : str
        Named in the message.

    Returns
    -------
    int
        ``main_function()``'s exit code, or 130 after Ctrl-C.
    """
    import signal
    import threading

    if threading.current_thread() is not threading.main_thread():
        return main_function()
    previous = signal.getsignal(signal.SIGINT)
    interrupted = False

    def once(signum: int, frame: Any) -> None:
        nonlocal interrupted
        if not interrupted:
            interrupted = True
            raise KeyboardInterrupt

    signal.signal(signal.SIGINT, once)
    try:
        return main_function()
    except KeyboardInterrupt:
        print(f"{prog}: interrupted (Ctrl-C)", file=sys.stderr)
        return 130
    finally:
        signal.signal(signal.SIGINT, previous)


def _one_line(exc: BaseException) -> str:
    if isinstance(exc, OSError) and exc.filename is not None:
        return f"{exc.strerror or exc}: {exc.filename}"
    return " ".join(str(exc).split()) or type(exc).__name__


if __name__ == "__main__":
    sys.exit(main())
