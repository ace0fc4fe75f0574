"""An agency's local book of jobs: those waiting for a person's decision, and those it served.

One SQLite file per agency, shared by the running agent and the ``fedcity agent pending``,
``approve`` and ``deny`` commands (WAL mode, short transactions, so both can use it at once).
The agent records a job that needs approval when its first assignment arrives and holds the
assignment; it reads the decision on its next turn. It also records every job it served (its
dataset and participants), which the differencing rule checks new jobs against.
"""

from __future__ import annotations

import json
import os
import sqlite3
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from fedcity.governance.policy import JobFacts

__all__ = ["MAX_REASON_CHARS", "ApprovalBook", "Pending"]

MAX_REASON_CHARS = 500
"""Longest reason a denial may give (it travels to the data scientist)."""

_SCHEMA = """
CREATE TABLE IF NOT EXISTS approvals (
    job_id TEXT PRIMARY KEY,
    job_type TEXT NOT NULL,
    submitted_by TEXT NOT NULL,
    dataset TEXT NOT NULL,
    agencies TEXT NOT NULL,
    privacy TEXT,
    seen REAL NOT NULL,
    decision TEXT CHECK (decision IN ('approved', 'denied')),
    reason TEXT,
    decided_by TEXT,
    decided_at REAL
);
CREATE TABLE IF NOT EXISTS served (
    job_id TEXT PRIMARY KEY,
    dataset TEXT NOT NULL,
    agencies TEXT NOT NULL,
    at REAL NOT NULL
);
"""


@dataclass(frozen=True)
class Pending:
    """A job as the book holds it."""

    job_id: str
    job_type: str
    submitted_by: str
    dataset: str
    agencies: tuple[str, ...]
    seen: float
    decision: str | None
    reason: str | None
    decided_by: str | None


class ApprovalBook:
    """Jobs waiting for approval and jobs served, in one SQLite file.

    Parameters
    ----------
    path : path-like
    clock : callable, optional
    """

    def __init__(
        self, path: str | os.PathLike[str], *, clock: Callable[[], float] | None = None
    ) -> None:
        self.path = Path(path)
        self._clock = clock or time.time
        self._lock = threading.Lock()
        self._db = sqlite3.connect(self.path, check_same_thread=False, isolation_level=None)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA busy_timeout=5000")
        self._db.executescript(_SCHEMA)

    def close(self) -> None:
        """Close the database."""
        with self._lock:
            self._db.close()

    def ask(self, job: JobFacts) -> str | None:
        """Record ``job`` as waiting (once); returns its decision so far (None: waiting)."""
        with self._lock:
            self._db.execute(
                "INSERT OR IGNORE INTO approvals (job_id, job_type, submitted_by, dataset, "
                "agencies, privacy, seen) VALUES (?, ?, ?, ?, ?, ?, ?)",
                (
                    job.job_id,
                    job.job_type,
                    job.submitted_by,
                    job.dataset,
                    json.dumps(list(job.agencies)),
                    None if job.privacy is None else json.dumps(dict(job.privacy)),
                    float(self._clock()),
                ),
            )
            row = self._db.execute(
                "SELECT decision FROM approvals WHERE job_id = ?", (job.job_id,)
            ).fetchone()
        return None if row is None else row[0]

    def decision(self, job_id: str) -> tuple[str, str] | None:
        """``(decision, reason)`` once a person decided, else None."""
        with self._lock:
            row = self._db.execute(
                "SELECT decision, reason FROM approvals WHERE job_id = ?", (job_id,)
            ).fetchone()
        if row is None or row[0] is None:
            return None
        return str(row[0]), str(row[1] or "")

    def decide(self, job_id: str, *, approve: bool, by: str, reason: str = "") -> Pending:
        """Approve or deny a waiting job (a decision is final).

        Raises
        ------
        KeyError
            No such job is waiting in this book.
        ValueError
            Already decided, or an oversized reason.
        """
        if len(reason) > MAX_REASON_CHARS:
            raise ValueError(f"the reason is {len(reason)} characters; at most {MAX_REASON_CHARS}")
        if not approve and not reason.strip():
            raise ValueError("a denial needs a reason (the data scientist reads it)")
        with self._lock:
            self._db.execute("BEGIN IMMEDIATE")
            try:
                row = self._db.execute(
                    "SELECT decision FROM approvals WHERE job_id = ?", (job_id,)
                ).fetchone()
                if row is None:
                    raise KeyError(f"no job {job_id!r} is waiting for approval here")
                if row[0] is not None:
                    raise ValueError(f"job {job_id} was already {row[0]}")
                self._db.execute(
                    "UPDATE approvals SET decision = ?, reason = ?, decided_by = ?, "
                    "decided_at = ? WHERE job_id = ?",
                    (
                        "approved" if approve else "denied",
                        reason.strip(),
                        by,
                        float(self._clock()),
                        job_id,
                    ),
                )
            except BaseException:
                self._db.execute("ROLLBACK")
                raise
            self._db.execute("COMMIT")
        return next(p for p in self.jobs() if p.job_id == job_id)

    def jobs(self, *, waiting_only: bool = False) -> list[Pending]:
        """Jobs in the book, oldest first (only undecided ones with ``waiting_only``)."""
        query = (
            "SELECT job_id, job_type, submitted_by, dataset, agencies, seen, decision, reason, "
            "decided_by FROM approvals"
        )
        if waiting_only:
            query += " WHERE decision IS NULL"
        with self._lock:
            rows = self._db.execute(query + " ORDER BY seen, job_id").fetchall()
        return [
            Pending(r[0], r[1], r[2], r[3], tuple(json.loads(r[4])), r[5], r[6], r[7], r[8])
            for r in rows
        ]

    def served(self, job: JobFacts) -> None:
        """Record that this agency served ``job`` (for the differencing rule)."""
        with self._lock:
            self._db.execute(
                "INSERT OR IGNORE INTO served (job_id, dataset, agencies, at) VALUES (?, ?, ?, ?)",
                (job.job_id, job.dataset, json.dumps(sorted(job.agencies)), float(self._clock())),
            )

    def earlier(self, dataset: str, *, besides: str) -> list[frozenset[str]]:
        """Participant sets of the jobs served on ``dataset``, other than job ``besides``."""
        with self._lock:
            rows = self._db.execute(
                "SELECT agencies FROM served WHERE dataset = ? AND job_id != ? "
                "ORDER BY at DESC LIMIT 1000",
                (dataset, besides),
            ).fetchall()
        return [frozenset(json.loads(r[0])) for r in rows]
