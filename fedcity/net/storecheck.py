"""``fedcity coordinator check-store`` and ``fedcity coordinator backup``.

::

    fedcity coordinator check-store --db coordinator.sqlite
    fedcity coordinator backup --db coordinator.sqlite --to backups/coordinator-2024-06-01.sqlite

``check-store`` runs every check the coordinator runs when it opens its database (see
:mod:`fedcity.net.store`) on a read-only connection: it writes nothing, and may run while a
coordinator serves. ``backup`` copies the database consistently while the coordinator runs
(SQLite's online backup), refuses to overwrite, and checks the copy the same way.

Both print a summary and return 0, or print the reason on stderr and return 2 (the exit code
of a coordinator that refuses its database at start).
"""

from __future__ import annotations

import datetime as dt
import os
import sys
from typing import TextIO

from fedcity.net.store import StoreError, StoreSummary, backup_file, verify_file

__all__ = ["EXIT_OK", "EXIT_REFUSED", "backup_command", "check_command", "format_summary"]

EXIT_OK = 0
EXIT_REFUSED = 2


def format_summary(summary: StoreSummary) -> str:
    """A few lines for an operator: the checks' results and the events of each job."""
    if summary.clean_close:
        session = "closed cleanly"
    else:
        wal = "missing" if summary.wal_bytes is None else f"{summary.wal_bytes} bytes"
        session = (
            f"not closed (a coordinator runs on it, or crashed; its -wal file, {wal}, "
            "holds the latest commits and must stay next to it)"
        )
    lines = [
        f"{summary.path}: OK",
        f"  schema version {summary.schema_version}, quick_check {summary.quick_check}, "
        "foreign keys ok",
        f"  last session: {session}",
        f"  {summary.state_detail}" if summary.state_detail else "",
        f"  {_count(len(summary.jobs), 'job')}, {_count(summary.events, 'event')}, hash chain "
        f"verified ({summary.seconds:.2f} s)",
    ]
    lines = [line for line in lines if line]
    width = max((len(j.id) for j in summary.jobs), default=0)
    for job in summary.jobs:
        lines.append(f"    job {job.id:<{width}}  {job.state:<9}  {_count(job.events, 'event')}")
    return "\n".join(lines)


def _count(n: int, noun: str) -> str:
    return f"{n} {noun}{'' if n == 1 else 's'}"


def _refused(prog: str, exc: StoreError, err: TextIO) -> int:
    print(f"{prog}: error: {exc}", file=err)
    return EXIT_REFUSED


def check_command(
    db: str | os.PathLike[str], *, out: TextIO | None = None, err: TextIO | None = None
) -> int:
    """``fedcity coordinator check-store --db DB``.

    Parameters
    ----------
    db : str or path-like
        The coordinator's database file.
    out, err : text streams, optional
        Where the summary and an error go (default: stdout, stderr).

    Returns
    -------
    int
        0 when every check passed, 2 otherwise.
    """
    out = sys.stdout if out is None else out
    err = sys.stderr if err is None else err
    try:
        summary = verify_file(db)
    except StoreError as exc:
        return _refused("fedcity coordinator check-store", exc, err)
    print(format_summary(summary), file=out)
    return EXIT_OK


def backup_command(
    db: str | os.PathLike[str],
    to: str | os.PathLike[str],
    *,
    out: TextIO | None = None,
    err: TextIO | None = None,
) -> int:
    """``fedcity coordinator backup --db DB --to DEST``.

    Parameters
    ----------
    db : str or path-like
        The coordinator's database file (the coordinator may be running).
    to : str or path-like
        The backup file to create; must not exist.
    out, err : text streams, optional
        Where the summary and an error go (default: stdout, stderr).

    Returns
    -------
    int
        0 when the copy was written and passed every check, 2 otherwise (nothing written).
    """
    out = sys.stdout if out is None else out
    err = sys.stderr if err is None else err
    started = dt.datetime.now(dt.UTC)
    try:
        summary = backup_file(db, to)
    except StoreError as exc:
        return _refused("fedcity coordinator backup", exc, err)
    print(f"backup of {db} written to {to} (as of {started:%Y-%m-%d %H:%M:%S} UTC)", file=out)
    print(format_summary(summary), file=out)
    return EXIT_OK
