"""The coordinator's durable state: one SQLite file, an append-only event log per job.

The coordinator never stores a derived value it could recompute. A job is its submitted
specification plus the events its :class:`~fedcity.learn.driver.JobDriver` accepted, in
order::

    contribution  an agency's accepted upload for a round (ciphertext bytes)
    drop          an agency left the job (declined, stopped heart-beating); payload: reason
    close         collection of a round was closed (all arrived, or the deadline passed)
    partial       an accepted, verified partial decryption of a round's aggregate
    cancel        the data scientist cancelled the job; payload: reason

Replaying the events through a fresh driver rebuilds the exact state, including the
encrypted aggregates (homomorphic addition is deterministic). Every event is written in its
own transaction with ``synchronous=FULL`` in WAL mode *before* the RPC that caused it is
acknowledged, so an acknowledged upload survives a crash or ``kill -9``. A refused upload
writes nothing.

Tables::

    jobs(id, spec, state, failure, result, rounds_done, created, updated)
    events(job_id, seq, type, agency, round, payload, at)       -- (job_id, seq) unique
    agencies(name, datasets, last_seen)

The store does no protocol checks; :mod:`fedcity.net.coordinator` decides what to write.
"""

from __future__ import annotations

import os
import secrets
import sqlite3
import threading
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

__all__ = [
    "EVENT_TYPES",
    "JOB_STATES",
    "TERMINAL_STATES",
    "AgencyRow",
    "Event",
    "JobRow",
    "JobUpdate",
    "Store",
    "StoreError",
]

SCHEMA_VERSION = 1
EVENT_TYPES = ("contribution", "drop", "close", "partial", "cancel")
"""Types of the events a job's log may hold."""
JOB_STATES = ("queued", "running", "succeeded", "failed", "cancelled")
"""Values of ``jobs.state``."""
TERMINAL_STATES = frozenset({"succeeded", "failed", "cancelled"})

_SCHEMA = f"""
CREATE TABLE IF NOT EXISTS jobs (
    id          TEXT PRIMARY KEY,
    spec        TEXT NOT NULL,
    state       TEXT NOT NULL CHECK (state IN ({", ".join(repr(s) for s in JOB_STATES)})),
    failure     TEXT,
    result      TEXT,
    rounds_done INTEGER NOT NULL DEFAULT 0,
    created     REAL NOT NULL,
    updated     REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS events (
    job_id  TEXT NOT NULL REFERENCES jobs(id),
    seq     INTEGER NOT NULL,
    type    TEXT NOT NULL CHECK (type IN ({", ".join(repr(t) for t in EVENT_TYPES)})),
    agency  TEXT,
    round   INTEGER,
    payload BLOB,
    at      REAL NOT NULL,
    PRIMARY KEY (job_id, seq)
);
CREATE TABLE IF NOT EXISTS agencies (
    name      TEXT PRIMARY KEY,
    datasets  TEXT NOT NULL,
    last_seen REAL
);
CREATE TABLE IF NOT EXISTS secrets (
    name  TEXT PRIMARY KEY,
    value BLOB NOT NULL
);
CREATE INDEX IF NOT EXISTS jobs_by_state ON jobs(state);
"""


class StoreError(RuntimeError):
    """The database cannot be opened or is not a fedcity coordinator database."""


@dataclass(frozen=True)
class JobRow:
    """One row of ``jobs``."""

    id: str
    spec: str
    state: str
    failure: str | None
    result: str | None
    rounds_done: int
    created: float
    updated: float


@dataclass(frozen=True)
class Event:
    """One row of ``events``: something a job's driver accepted."""

    job_id: str
    seq: int
    type: str
    agency: str | None
    round: int | None
    payload: bytes | None
    at: float


@dataclass(frozen=True)
class AgencyRow:
    """One row of ``agencies``: what an agency declared when it last registered."""

    name: str
    datasets: str
    last_seen: float | None


@dataclass(frozen=True)
class JobUpdate:
    """A change of a job's row written in the same transaction as an event."""

    state: str
    failure: str | None = None
    result: str | None = None
    rounds_done: int | None = None


class Store:
    """The coordinator database (thread-safe; one connection behind a lock).

    Parameters
    ----------
    path : str or path-like
        The SQLite file; created with its schema if missing.

    Raises
    ------
    StoreError
        The file is not a SQLite database, or was written by another schema version.
    """

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = Path(path)
        self._lock = threading.Lock()
        try:
            self._db = sqlite3.connect(
                self.path, isolation_level=None, check_same_thread=False, timeout=30.0
            )
            mode = self._db.execute("PRAGMA journal_mode=WAL").fetchone()[0]
            if str(mode).lower() != "wal":
                raise StoreError(f"{self.path}: cannot switch the database to WAL mode ({mode})")
            self._db.execute("PRAGMA synchronous=FULL")
            self._db.execute("PRAGMA foreign_keys=ON")
            version = int(self._db.execute("PRAGMA user_version").fetchone()[0])
            if version not in (0, SCHEMA_VERSION):
                raise StoreError(
                    f"{self.path} has schema version {version}; this fedcity reads "
                    f"version {SCHEMA_VERSION}"
                )
            # executescript commits any open transaction first, so it carries its own
            self._db.executescript(
                f"BEGIN IMMEDIATE;{_SCHEMA}PRAGMA user_version={SCHEMA_VERSION};COMMIT;"
            )
        except sqlite3.DatabaseError as exc:
            raise StoreError(f"cannot open coordinator database {self.path}: {exc}") from exc

    def close(self) -> None:
        """Close the connection (committed data is already on disk)."""
        with self._lock:
            self._db.close()

    @contextmanager
    def _transaction(self) -> Iterator[sqlite3.Connection]:
        """``BEGIN IMMEDIATE`` ... ``COMMIT``; rolled back on any exception."""
        self._db.execute("BEGIN IMMEDIATE")
        try:
            yield self._db
        except BaseException:
            self._db.execute("ROLLBACK")
            raise
        self._db.execute("COMMIT")

    # -- coordinator secrets ----------------------------------------------------------------
    def secret(self, name: str, size: int) -> bytes:
        """The coordinator's secret ``name`` (``size`` random bytes made on first use).

        Kept in the database so that it lives and is backed up with the state it protects
        (the key-holder mode's blinding key: a replayed round must be blinded identically).
        """
        with self._lock, self._transaction() as db:
            db.execute(
                "INSERT OR IGNORE INTO secrets (name, value) VALUES (?, ?)",
                (name, secrets.token_bytes(size)),
            )
            row = db.execute("SELECT value FROM secrets WHERE name = ?", (name,)).fetchone()
        value = bytes(row[0])
        if len(value) != size:
            raise StoreError(f"{self.path}: secret {name!r} has {len(value)} bytes, not {size}")
        return value

    # -- jobs -------------------------------------------------------------------------------
    def create_job(self, job_id: str, spec: str, *, state: str = "running") -> JobRow:
        """Insert a new job; fails if the id exists."""
        now = time.time()
        with self._lock, self._transaction() as db:
            db.execute(
                "INSERT INTO jobs (id, spec, state, created, updated) VALUES (?, ?, ?, ?, ?)",
                (job_id, spec, state, now, now),
            )
        return JobRow(job_id, spec, state, None, None, 0, now, now)

    def update_job(self, job_id: str, update: JobUpdate) -> None:
        """Change a job's state (and failure, result, rounds done) without an event."""
        with self._lock, self._transaction() as db:
            self._apply_update(db, job_id, update, time.time())

    @staticmethod
    def _apply_update(db: sqlite3.Connection, job_id: str, update: JobUpdate, now: float) -> None:
        cur = db.execute(
            "UPDATE jobs SET state = ?, failure = COALESCE(?, failure), "
            "result = COALESCE(?, result), rounds_done = COALESCE(?, rounds_done), "
            "updated = ? WHERE id = ?",
            (update.state, update.failure, update.result, update.rounds_done, now, job_id),
        )
        if cur.rowcount != 1:
            raise KeyError(f"no job {job_id!r} in the store")

    def job(self, job_id: str) -> JobRow | None:
        """One job, or None."""
        with self._lock:
            row = self._db.execute(
                "SELECT id, spec, state, failure, result, rounds_done, created, updated "
                "FROM jobs WHERE id = ?",
                (job_id,),
            ).fetchone()
        return None if row is None else JobRow(*row)

    def jobs(self, states: Sequence[str] | None = None) -> list[JobRow]:
        """Jobs (optionally only those in ``states``), oldest first."""
        query = "SELECT id, spec, state, failure, result, rounds_done, created, updated FROM jobs"
        args: tuple[str, ...] = ()
        if states is not None:
            query += f" WHERE state IN ({', '.join('?' * len(states))})"
            args = tuple(states)
        with self._lock:
            rows = self._db.execute(query + " ORDER BY created, id", args).fetchall()
        return [JobRow(*r) for r in rows]

    # -- events -----------------------------------------------------------------------------
    def append_event(
        self,
        job_id: str,
        type: str,
        *,
        agency: str | None = None,
        round: int | None = None,
        payload: bytes | None = None,
        update: JobUpdate | None = None,
    ) -> int:
        """Append one event (and optionally change the job's row) in one durable transaction.

        Returns
        -------
        int
            The event's sequence number within its job (from 0).
        """
        if type not in EVENT_TYPES:
            raise ValueError(f"unknown event type {type!r}")
        now = time.time()
        with self._lock, self._transaction() as db:
            seq = int(
                db.execute(
                    "SELECT COALESCE(MAX(seq), -1) + 1 FROM events WHERE job_id = ?", (job_id,)
                ).fetchone()[0]
            )
            db.execute(
                "INSERT INTO events (job_id, seq, type, agency, round, payload, at) "
                "VALUES (?, ?, ?, ?, ?, ?, ?)",
                (job_id, seq, type, agency, round, payload, now),
            )
            if update is not None:
                self._apply_update(db, job_id, update, now)
            else:
                db.execute("UPDATE jobs SET updated = ? WHERE id = ?", (now, job_id))
        return seq

    def events(self, job_id: str) -> list[Event]:
        """A job's events in sequence order."""
        with self._lock:
            rows = self._db.execute(
                "SELECT job_id, seq, type, agency, round, payload, at FROM events "
                "WHERE job_id = ? ORDER BY seq",
                (job_id,),
            ).fetchall()
        return [
            Event(r[0], r[1], r[2], r[3], r[4], None if r[5] is None else bytes(r[5]), r[6])
            for r in rows
        ]

    def count_events(self, job_id: str | None = None) -> int:
        """Number of stored events (of one job, or of all)."""
        with self._lock:
            if job_id is None:
                row = self._db.execute("SELECT COUNT(*) FROM events").fetchone()
            else:
                row = self._db.execute(
                    "SELECT COUNT(*) FROM events WHERE job_id = ?", (job_id,)
                ).fetchone()
        return int(row[0])

    # -- agencies ---------------------------------------------------------------------------
    def register_agency(self, name: str, datasets: str, last_seen: float) -> None:
        """Insert or replace an agency's declared datasets."""
        with self._lock, self._transaction() as db:
            db.execute(
                "INSERT INTO agencies (name, datasets, last_seen) VALUES (?, ?, ?) "
                "ON CONFLICT(name) DO UPDATE SET datasets = excluded.datasets, "
                "last_seen = excluded.last_seen",
                (name, datasets, last_seen),
            )

    def touch_agency(self, name: str, last_seen: float) -> None:
        """Record an agency's last heartbeat (no-op for an unregistered agency)."""
        with self._lock, self._transaction() as db:
            db.execute("UPDATE agencies SET last_seen = ? WHERE name = ?", (last_seen, name))

    def agencies(self) -> list[AgencyRow]:
        """Every registered agency, by name."""
        with self._lock:
            rows = self._db.execute(
                "SELECT name, datasets, last_seen FROM agencies ORDER BY name"
            ).fetchall()
        return [AgencyRow(*r) for r in rows]
