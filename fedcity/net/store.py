"""The coordinator's durable state: one SQLite file, an append-only event log per job.

The coordinator never stores a derived value it could recompute. A job is its submitted
specification plus the events its :class:`~fedcity.learn.driver.JobDriver` accepted, in
order::

    contribution  an agency's accepted upload for a round (ciphertext bytes)
    drop          an agency left the job (declined, stopped heart-beating); payload: reason
    close         collection of a round was closed (all arrived, or the deadline passed);
                  payload: the SHA-256 of every contribution its aggregate adds (JSON)
    partial       an accepted, verified partial decryption of a round's aggregate
    cancel        the data scientist cancelled the job; payload: reason

Replaying the events through a fresh driver rebuilds the exact state, including the
encrypted aggregates (homomorphic addition is deterministic). Every event is written in its
own transaction with ``synchronous=FULL`` in WAL mode *before* the RPC that caused it is
acknowledged, so an acknowledged upload survives a crash or ``kill -9``. A refused upload
writes nothing.

Tables (schema version 2)::

    meta(key, value)            -- schema_version, state ('open' / 'closed'), state_detail
    jobs(id, spec, state, failure, result, rounds_done, created, updated,
         event_count, event_chain)
    events(job_id, seq, type, agency, round, payload, at, chain, signature)
                                -- (job_id, seq) unique
    agencies(name, datasets, last_seen)
    secrets(name, value)

Each job's events form a hash chain: ``chain = SHA-256(previous || encoding)``, where
``previous`` is the chain of the job's event ``seq - 1`` (32 zero bytes for ``seq`` 0) and
``encoding`` is :func:`event_encoding` (job, seq, type, agency, round and the payload's
SHA-256). ``jobs.event_count`` and ``jobs.event_chain`` hold the length and the last link,
written in the same transaction as the event. ``events.signature`` holds the uploading
agency's Ed25519 signature of a contribution or partial decryption (None for other events);
it is not part of the chain, as it verifies on its own against ``federation-public.json``
(:mod:`fedcity.crypto.signing`).

A damaged file is refused rather than silently read as less than it held. When
:class:`Store` opens an existing file it checks, before the coordinator uses it:

1. the file is a SQLite database (a zero-byte or foreign file is not "empty");
2. the main file does not record an unclosed session while its ``-wal`` file is missing
   (the main file was copied or kept without it, so acknowledged events may be lost);
3. the schema version (``meta``) and every expected table and column;
4. ``PRAGMA quick_check`` and ``PRAGMA foreign_key_check``;
5. every event's link of its job's hash chain, gap-free sequence numbers, and the chain
   length and head recorded in ``jobs``.

Any failure raises :class:`StoreError` with what is wrong, which file, and what to do.
:func:`verify_file` runs the same checks without writing anything and :func:`backup_file`
makes a consistent online copy (``fedcity coordinator check-store`` / ``backup``, in
:mod:`fedcity.net.storecheck`). The store does no protocol checks;
:mod:`fedcity.net.coordinator` decides what to write. One coordinator (one :class:`Store`)
per file.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import logging
import operator
import os
import secrets
import socket
import sqlite3
import threading
import time
from collections.abc import Iterator, Sequence
from contextlib import closing, contextmanager, suppress
from dataclasses import dataclass, replace
from pathlib import Path

__all__ = [
    "EVENT_TYPES",
    "GENESIS",
    "JOB_STATES",
    "SCHEMA_VERSION",
    "TERMINAL_STATES",
    "AgencyRow",
    "Event",
    "JobRow",
    "JobSummary",
    "JobUpdate",
    "Store",
    "StoreError",
    "StoreSummary",
    "backup_file",
    "chain_link",
    "event_encoding",
    "verify_file",
]

log = logging.getLogger(__name__)

SCHEMA_VERSION = 2
"""Version of the tables this fedcity reads and writes (``meta.schema_version``).

1: no ``meta`` table, no hash chain (``PRAGMA user_version`` = 1). 2: ``meta``, the hash
chain over events and the open/closed marker.
"""
EVENT_TYPES = ("contribution", "drop", "close", "partial", "cancel")
"""Types of the events a job's log may hold."""
JOB_STATES = ("queued", "running", "succeeded", "failed", "cancelled")
"""Values of ``jobs.state``."""
TERMINAL_STATES = frozenset({"succeeded", "failed", "cancelled"})
GENESIS = bytes(32)
"""The ``previous`` link of a job's first event."""

DOCS = "docs/operations.md, section 'The coordinator's database'"
"""Where the operator reads what a refusal means and what to do."""
_RESTORE_STEPS = (
    "(stop the coordinator, copy the backup into place, delete any stale -wal and -shm files "
    f"next to it, start); see {DOCS}"
)
_RESTORE = f"Keep this file for inspection and restore the latest backup {_RESTORE_STEPS}"
_SQLITE_MAGIC = b"SQLite format 3\x00"

_SCHEMA = f"""
CREATE TABLE meta (
    key   TEXT PRIMARY KEY,
    value TEXT NOT NULL
);
CREATE TABLE jobs (
    id          TEXT PRIMARY KEY,
    spec        TEXT NOT NULL,
    state       TEXT NOT NULL CHECK (state IN ({", ".join(repr(s) for s in JOB_STATES)})),
    failure     TEXT,
    result      TEXT,
    rounds_done INTEGER NOT NULL DEFAULT 0,
    created     REAL NOT NULL,
    updated     REAL NOT NULL,
    event_count INTEGER NOT NULL DEFAULT 0,
    event_chain BLOB
);
CREATE TABLE events (
    job_id  TEXT NOT NULL REFERENCES jobs(id),
    seq     INTEGER NOT NULL,
    type    TEXT NOT NULL CHECK (type IN ({", ".join(repr(t) for t in EVENT_TYPES)})),
    agency  TEXT,
    round   INTEGER,
    payload BLOB,
    at      REAL NOT NULL,
    chain   BLOB NOT NULL,
    signature BLOB,
    PRIMARY KEY (job_id, seq)
);
CREATE TABLE agencies (
    name      TEXT PRIMARY KEY,
    datasets  TEXT NOT NULL,
    last_seen REAL
);
CREATE TABLE secrets (
    name  TEXT PRIMARY KEY,
    value BLOB NOT NULL
);
CREATE INDEX jobs_by_state ON jobs(state);
"""

_COLUMNS: dict[str, tuple[str, ...]] = {
    "meta": ("key", "value"),
    "jobs": (
        "id",
        "spec",
        "state",
        "failure",
        "result",
        "rounds_done",
        "created",
        "updated",
        "event_count",
        "event_chain",
    ),
    "events": ("job_id", "seq", "type", "agency", "round", "payload", "at", "chain", "signature"),
    "agencies": ("name", "datasets", "last_seen"),
    "secrets": ("name", "value"),
}
"""Every table and column a version-2 file must have (more are tolerated)."""

_SET_META = (
    "INSERT INTO meta (key, value) VALUES (?, ?) "
    "ON CONFLICT(key) DO UPDATE SET value = excluded.value"
)


class StoreError(RuntimeError):
    """The database cannot be opened, is damaged, or is not a fedcity coordinator database."""


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
    """One row of ``events``: something a job's driver accepted (``signature``: an upload's)."""

    job_id: str
    seq: int
    type: str
    agency: str | None
    round: int | None
    payload: bytes | None
    at: float
    signature: bytes | None = None


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


@dataclass(frozen=True)
class JobSummary:
    """One job as the checks saw it: its state and its verified event count."""

    id: str
    state: str
    events: int


@dataclass(frozen=True)
class StoreSummary:
    """What the checks of a coordinator database found (all passed).

    Attributes
    ----------
    path : Path
        The main database file.
    schema_version : int
        ``meta.schema_version``.
    quick_check : str
        The result of ``PRAGMA quick_check`` (``"ok"``).
    jobs : tuple of JobSummary
        Every job, by id, with its number of events (each one's chain link verified).
    clean_close : bool
        Whether the main file says its last session was closed cleanly. False while a
        coordinator runs, or after a crash (its ``-wal`` file then holds the latest commits).
    wal_bytes : int or None
        Size of the ``-wal`` file next to it (None: there is none).
    state_detail : str
        Who last opened or closed the file, and when.
    seconds : float
        Time the checks took.
    """

    path: Path
    schema_version: int
    quick_check: str
    jobs: tuple[JobSummary, ...]
    clean_close: bool
    wal_bytes: int | None
    state_detail: str
    seconds: float

    @property
    def events(self) -> int:
        """Number of events of all jobs."""
        return sum(j.events for j in self.jobs)


# -- hash chain -------------------------------------------------------------------------------
def event_encoding(
    job_id: str,
    seq: int,
    type: str,
    agency: str | None,
    round: int | None,
    payload: bytes | None,
) -> bytes:
    """The canonical encoding of an event that its chain link commits to.

    Compact JSON (ASCII, no spaces) of ``[job_id, seq, type, agency, round, payload_sha256]``,
    where ``payload_sha256`` is the hex SHA-256 of the payload and None/``null`` stands for a
    missing agency, round or payload. The time ``at`` is not covered.

    Raises
    ------
    TypeError
        A field has a type a stored event cannot have.
    """
    if not (isinstance(job_id, str) and isinstance(type, str)):
        raise TypeError("job_id and type must be str")
    if agency is not None and not isinstance(agency, str):
        raise TypeError("agency must be str or None")
    if isinstance(seq, bool) or not isinstance(seq, int):
        raise TypeError("seq must be int")
    if round is not None and (isinstance(round, bool) or not isinstance(round, int)):
        raise TypeError("round must be int or None")
    if payload is not None and not isinstance(payload, bytes | bytearray | memoryview):
        raise TypeError("payload must be bytes or None")
    digest = None if payload is None else hashlib.sha256(payload).hexdigest()
    fields = [job_id, seq, type, agency, round, digest]
    return json.dumps(fields, separators=(",", ":"), ensure_ascii=True).encode("ascii")


def chain_link(
    previous: bytes,
    job_id: str,
    seq: int,
    type: str,
    agency: str | None,
    round: int | None,
    payload: bytes | None,
) -> bytes:
    """``SHA-256(previous || event_encoding(...))``: an event's link of its job's chain.

    Parameters
    ----------
    previous : bytes
        The link of the job's previous event, or :data:`GENESIS` for its first.
    job_id, seq, type, agency, round, payload
        The event's fields, as stored.

    Returns
    -------
    bytes
        32 bytes.
    """
    encoded = event_encoding(job_id, seq, type, agency, round, payload)
    return hashlib.sha256(bytes(previous) + encoded).digest()


# -- checks -----------------------------------------------------------------------------------
def _wal_path(path: Path) -> Path:
    """The ``-wal`` file SQLite uses for ``path`` (next to the file a symlink points to)."""
    return Path(os.path.realpath(path) + "-wal")


def _uri(path: Path, query: str) -> str:
    return f"{Path(os.path.abspath(path)).as_uri()}?{query}"


@dataclass(frozen=True)
class _FileState:
    """What the checks read from the files before opening a normal connection."""

    wal_bytes: int | None
    main_state: str | None
    main_detail: str


def _check_file(path: Path) -> _FileState:
    """Checks that need no normal connection: a SQLite file, and no lost ``-wal``.

    Without a ``-wal`` (or with an empty one) the main file is the whole database: its
    open/closed marker is read with ``immutable=1``, which creates no ``-wal`` or ``-shm``
    file (a created empty ``-wal`` would hide the loss from the next start). With a non-empty
    ``-wal`` the marker is not needed, and the main file may be changing under a running
    coordinator's checkpoints, so it is not read here.
    """
    if not path.is_file():
        raise StoreError(f"{path} is not a regular file; give the coordinator database file")
    size = path.stat().st_size
    if size == 0:
        raise StoreError(
            f"coordinator database {path} is an empty (zero-byte) file, not a database: a "
            "missing file is created fresh, but an empty one means the database was "
            f"truncated or replaced and its jobs would be lost. {_RESTORE}. Only if no "
            "coordinator ever ran on it, delete the file to start with an empty database"
        )
    with path.open("rb") as f:
        header = f.read(100)
    if not header.startswith(_SQLITE_MAGIC):
        raise StoreError(
            f"{path} is not a SQLite database (its first bytes are not the SQLite header): "
            f"give --db the coordinator's database file. If it was one, it is destroyed. "
            f"{_RESTORE}"
        )
    wal = _wal_path(path)
    wal_bytes = wal.stat().st_size if wal.exists() else None
    wal_mode = len(header) > 19 and header[18] == 2 and header[19] == 2
    if wal_bytes:
        return _FileState(wal_bytes, None, "")
    try:
        with closing(
            sqlite3.connect(_uri(path, "immutable=1"), uri=True, isolation_level=None)
        ) as con:
            found = con.execute(
                "SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'meta'"
            ).fetchone()
            rows = (
                con.execute(
                    "SELECT key, value FROM meta WHERE key IN ('state', 'state_detail')"
                ).fetchall()
                if found
                else []
            )
    except sqlite3.DatabaseError as exc:
        raise StoreError(f"coordinator database {path} is damaged ({exc}). {_RESTORE}") from exc
    marker = {str(k): str(v) for k, v in rows}
    state_ = marker.get("state")
    detail = marker.get("state_detail", "")
    if wal_mode and state_ == "open":  # and the -wal is missing or empty (returned above)
        lost = "is missing" if wal_bytes is None else "is empty"
        raise StoreError(
            f"coordinator database {path} was not closed cleanly ({detail or 'last session'}), "
            f"yet its write-ahead log {wal} {lost}: the commits since that session opened, "
            "acknowledged uploads among them, exist only in that file, so the main file was "
            "copied or kept without it. Starting would silently roll those events back. "
            f"Put the matching {wal.name} back next to it and start again; without it, keep "
            "this file for inspection and restore the latest backup made with 'fedcity "
            "coordinator backup' (a plain copy of a running coordinator's file is not one) "
            f"{_RESTORE_STEPS}"
        )
    return _FileState(wal_bytes, state_, detail)


def _schema_version(con: sqlite3.Connection, path: Path) -> int:
    tables = {
        str(r[0])
        for r in con.execute("SELECT name FROM sqlite_master WHERE type = 'table'").fetchall()
    }
    if "meta" not in tables:
        user_version = int(con.execute("PRAGMA user_version").fetchone()[0])
        if user_version == 1 and {"jobs", "events"} <= tables:
            raise StoreError(
                f"coordinator database {path} has schema version 1, written by an older "
                f"fedcity without the events' hash chain; this fedcity reads version "
                f"{SCHEMA_VERSION} only. Finish its jobs with the older fedcity, then start "
                "this one with a new --db file"
            )
        what = "an empty SQLite database" if not tables else "a SQLite database of another kind"
        raise StoreError(
            f"{path} is {what}, not a fedcity coordinator database (it has no meta table). "
            "Give --db the coordinator's database file, or a path where none exists yet to "
            f"start afresh. If it was the coordinator's database, it is damaged. {_RESTORE}"
        )
    row = con.execute("SELECT value FROM meta WHERE key = 'schema_version'").fetchone()
    try:
        version = int(row[0]) if row is not None else None
    except (TypeError, ValueError):
        version = None
    if version is None:
        raise StoreError(
            f"coordinator database {path} records no valid schema version in its meta "
            f"table: it is damaged or not a fedcity database. {_RESTORE}"
        )
    if version < SCHEMA_VERSION:
        raise StoreError(
            f"coordinator database {path} has schema version {version}, older than the "
            f"version {SCHEMA_VERSION} this fedcity reads. Finish its jobs with the fedcity "
            "that wrote it, then start this one with a new --db file"
        )
    if version > SCHEMA_VERSION:
        raise StoreError(
            f"coordinator database {path} has schema version {version}, written by a newer "
            f"fedcity; this one reads version {SCHEMA_VERSION} only. Upgrade fedcity"
        )
    for table, columns in _COLUMNS.items():
        if table not in tables:
            raise StoreError(
                f"coordinator database {path} has no table {table!r} (schema version "
                f"{version} requires it): the file was altered. {_RESTORE}"
            )
        present = {str(r[1]) for r in con.execute(f"PRAGMA table_info({table})").fetchall()}
        missing = [c for c in columns if c not in present]
        if missing:
            raise StoreError(
                f"coordinator database {path}: table {table!r} lacks column(s) "
                f"{', '.join(missing)} (schema version {version} requires them): the file "
                f"was altered. {_RESTORE}"
            )
    return version


def _quick_check(con: sqlite3.Connection, path: Path) -> str:
    rows = [str(r[0]) for r in con.execute("PRAGMA quick_check(20)").fetchall()]
    if rows != ["ok"]:
        raise StoreError(
            f"coordinator database {path} fails SQLite's integrity check (PRAGMA quick_check: "
            f"{'; '.join(rows)}). {_RESTORE}"
        )
    orphans = con.execute("PRAGMA foreign_key_check").fetchmany(5)
    if orphans:
        where = ", ".join(f"{r[0]} row {r[1]}" for r in orphans)
        raise StoreError(
            f"coordinator database {path} has rows that refer to missing jobs ({where}): "
            f"the file was altered. {_RESTORE}"
        )
    return "ok"


def _verify_chain(con: sqlite3.Connection, path: Path) -> tuple[JobSummary, ...]:
    jobs = con.execute(
        "SELECT id, state, event_count, event_chain FROM jobs ORDER BY id"
    ).fetchall()
    out = []
    for job_id, state, count, head in jobs:
        previous = GENESIS
        n = 0
        cursor = con.execute(
            "SELECT seq, type, agency, round, payload, chain FROM events "
            "WHERE job_id = ? ORDER BY seq",
            (job_id,),
        )
        for seq, type_, agency, round_, payload, chain in cursor:
            if seq != n:
                raise StoreError(
                    f"coordinator database {path}: job {job_id} has no event seq {n} (its "
                    f"log jumps to seq {seq}): events were deleted. {_RESTORE}"
                )
            try:
                expected = chain_link(previous, job_id, seq, type_, agency, round_, payload)
            except TypeError:
                expected = b""
            if not isinstance(chain, bytes) or chain != expected:
                raise StoreError(
                    f"coordinator database {path}: job {job_id} event seq {seq} ({type_}) "
                    "does not match its hash chain: the event (its payload, type, agency or "
                    f"round) or its chain link was altered or damaged. {_RESTORE}"
                )
            previous = expected
            n += 1
        if n != count:
            raise StoreError(
                f"coordinator database {path}: job {job_id} recorded {count} events but its "
                f"log holds {n}: events were {'lost' if n < count else 'added'} outside "
                f"fedcity. {_RESTORE}"
            )
        if n and head != previous:
            raise StoreError(
                f"coordinator database {path}: job {job_id}: the chain head recorded in jobs "
                f"does not match its last event (seq {n - 1}): the file was altered. {_RESTORE}"
            )
        out.append(JobSummary(str(job_id), str(state), n))
    return tuple(out)


def _verify(con: sqlite3.Connection, path: Path, file_state: _FileState) -> StoreSummary:
    """Schema, integrity and hash chain, in one read transaction (a consistent snapshot)."""
    started = time.perf_counter()
    con.execute("BEGIN")
    try:
        version = _schema_version(con, path)
        quick = _quick_check(con, path)
        jobs = _verify_chain(con, path)
        row = con.execute("SELECT value FROM meta WHERE key = 'state_detail'").fetchone()
    finally:
        con.execute("ROLLBACK")
    return StoreSummary(
        path=path,
        schema_version=version,
        quick_check=quick,
        jobs=jobs,
        clean_close=file_state.main_state == "closed",
        wal_bytes=file_state.wal_bytes,
        state_detail=str(row[0]) if row is not None else file_state.main_detail,
        seconds=time.perf_counter() - started,
    )


def _damaged(path: Path, exc: sqlite3.Error) -> StoreError:
    return StoreError(f"coordinator database {path} cannot be read ({exc}). {_RESTORE}")


def verify_file(path: str | os.PathLike[str]) -> StoreSummary:
    """Run every check :class:`Store` runs at start, without writing anything.

    The file is opened read-only (``mode=ro``; ``immutable=1`` when there is no ``-wal``
    file, so that none is created). Safe while a coordinator runs on the file.

    Parameters
    ----------
    path : str or path-like
        The coordinator's database file.

    Returns
    -------
    StoreSummary
        What was found, when every check passed.

    Raises
    ------
    StoreError
        The first check that failed, with what to do.
    """
    path = Path(path)
    if not os.path.lexists(path):
        raise StoreError(f"{path} does not exist; give --db the coordinator's database file")
    state = _check_file(path)
    query = "immutable=1" if state.wal_bytes is None else "mode=ro"
    try:
        with closing(
            sqlite3.connect(_uri(path, query), uri=True, isolation_level=None, timeout=30.0)
        ) as con:
            return _verify(con, path, state)
    except sqlite3.Error as exc:
        raise _damaged(path, exc) from exc


def _session(verb: str) -> str:
    when = dt.datetime.now(dt.UTC).isoformat(timespec="seconds")
    return f"{verb} by pid {os.getpid()} on {socket.gethostname()} at {when}"


def _fsync(path: Path, *, directory: bool = False) -> None:
    fd = os.open(path, os.O_RDONLY | (os.O_DIRECTORY if directory else 0))
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _remove_sqlite_files(path: Path) -> None:
    for suffix in ("", "-wal", "-shm", "-journal"):
        with suppress(FileNotFoundError):
            os.unlink(f"{path}{suffix}")


def _publish(tmp: Path, path: Path) -> bool:
    """Give the finished file ``tmp`` the name ``path`` unless it exists; True if it did."""
    _fsync(tmp)
    try:
        os.link(tmp, path)
    except FileExistsError:
        return False
    except OSError:  # a file system without hard links
        if os.path.lexists(path):
            return False
        os.replace(tmp, path)
    _fsync(path.parent, directory=True)
    return True


def _new_file(path: Path) -> Path:
    """A fresh, private (0600) empty file next to ``path`` to build a database in."""
    tmp = path.with_name(f".{path.name}.{secrets.token_hex(6)}.tmp")
    os.close(os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600))
    return tmp


def _create(path: Path) -> None:
    """Create an empty database at ``path`` atomically: built aside, then linked in place.

    A crash while creating leaves no half-made file at ``path`` (which would be refused).
    """
    try:
        tmp = _new_file(path)
    except OSError as exc:
        raise StoreError(f"cannot create coordinator database {path}: {exc}") from exc
    try:
        with closing(sqlite3.connect(tmp, isolation_level=None)) as con:
            con.executescript(f"BEGIN IMMEDIATE;{_SCHEMA}PRAGMA user_version={SCHEMA_VERSION};")
            con.executemany(
                _SET_META,
                [
                    ("schema_version", str(SCHEMA_VERSION)),
                    ("state", "closed"),
                    ("state_detail", _session("created")),
                ],
            )
            con.execute("COMMIT")
            con.execute("PRAGMA journal_mode=WAL")
        _publish(tmp, path)  # if another process created it meanwhile, that one is checked
    except (sqlite3.Error, OSError) as exc:
        raise StoreError(f"cannot create coordinator database {path}: {exc}") from exc
    finally:
        _remove_sqlite_files(tmp)


def backup_file(source: str | os.PathLike[str], dest: str | os.PathLike[str]) -> StoreSummary:
    """Copy a coordinator database consistently, online, and verify the copy.

    Uses SQLite's online backup (:meth:`sqlite3.Connection.backup`) from a read-only
    connection: a coordinator may keep running and writing; the copy is the state of one
    instant. The copy is marked as cleanly closed (it needs no ``-wal`` file), created with
    mode 0600 (it holds the coordinator's secrets), checked like :func:`verify_file` and only
    then given the name ``dest``.

    Parameters
    ----------
    source : str or path-like
        The coordinator's database file.
    dest : str or path-like
        Where to write the copy; must not exist.

    Returns
    -------
    StoreSummary
        The checks of the copy.

    Raises
    ------
    StoreError
        ``dest`` exists, the source cannot be read, or the copy fails a check.
    """
    source, dest = Path(source), Path(dest)
    for p in (dest, Path(f"{dest}-wal"), Path(f"{dest}-shm")):
        if os.path.lexists(p):
            raise StoreError(f"{p} exists; refusing to overwrite it: choose a new backup path")
    if not dest.parent.is_dir():
        raise StoreError(f"cannot write the backup {dest}: {dest.parent} is not a directory")
    if not os.path.lexists(source):
        raise StoreError(f"{source} does not exist; give --db the coordinator's database file")
    _check_file(source)
    try:
        tmp = _new_file(dest)
    except OSError as exc:
        raise StoreError(f"cannot write the backup {dest}: {exc}") from exc
    try:
        with (
            closing(
                sqlite3.connect(
                    _uri(source, "mode=ro"), uri=True, isolation_level=None, timeout=30.0
                )
            ) as src,
            closing(sqlite3.connect(tmp, isolation_level=None)) as dst,
        ):
            _schema_version(src, source)  # a clear refusal before copying anything else
            src.backup(dst)
            dst.execute("BEGIN IMMEDIATE")
            dst.executemany(
                _SET_META,
                [("state", "closed"), ("state_detail", _session(f"backup of {source} taken"))],
            )
            dst.execute("COMMIT")
            dst.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        summary = verify_file(tmp)
        if not _publish(tmp, dest):
            raise StoreError(f"{dest} exists; refusing to overwrite it: choose a new backup path")
    except sqlite3.Error as exc:
        raise _damaged(source, exc) from exc
    except StoreError as exc:
        message = str(exc).replace(str(tmp), f"(the copy of {source})")
        raise StoreError(f"backup of {source} refused: {message}") from exc
    except OSError as exc:
        raise StoreError(f"cannot write the backup {dest}: {exc}") from exc
    finally:
        _remove_sqlite_files(tmp)
    return replace(summary, path=dest, clean_close=True, wal_bytes=None)


class Store:
    """The coordinator database (thread-safe; one connection behind a lock).

    Opening an existing file runs every check (see the module documentation) and then marks
    the file as open, in the main file itself (a checkpoint), so that a copy of it without
    its ``-wal`` file is recognised later; :meth:`close` marks it closed again.

    Parameters
    ----------
    path : str or path-like
        The SQLite file; created with its schema if (and only if) missing.

    Attributes
    ----------
    summary : StoreSummary
        What the checks at open found.

    Raises
    ------
    StoreError
        The file is not a coordinator database, has another schema version, is damaged, or
        was separated from its ``-wal`` file; the message says what to do.
    """

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = Path(path)
        self._lock = threading.Lock()
        self._closed = False
        if not os.path.lexists(self.path):
            _create(self.path)
        file_state = _check_file(self.path)
        try:
            self._db = sqlite3.connect(
                self.path, isolation_level=None, check_same_thread=False, timeout=30.0
            )
        except sqlite3.Error as exc:
            raise StoreError(f"cannot open coordinator database {self.path}: {exc}") from exc
        try:
            self.summary = _verify(self._db, self.path, file_state)
            mode = self._db.execute("PRAGMA journal_mode=WAL").fetchone()[0]
            if str(mode).lower() != "wal":
                raise StoreError(f"{self.path}: cannot switch the database to WAL mode ({mode})")
            self._db.execute("PRAGMA synchronous=FULL")
            self._db.execute("PRAGMA foreign_keys=ON")
            self._mark("open")
            # FULL (not TRUNCATE): the marker reaches the main file and the -wal keeps its
            # frames, so a crashed session never leaves an empty -wal behind
            busy = self._db.execute("PRAGMA wal_checkpoint(FULL)").fetchone()[0]
            if busy:
                raise StoreError(
                    f"cannot mark coordinator database {self.path} as open: another process "
                    "keeps it busy (is a second coordinator running on it?)"
                )
        except sqlite3.Error as exc:
            self._db.close()
            raise _damaged(self.path, exc) from exc
        except BaseException:
            self._db.close()
            raise

    def _mark(self, state: str) -> None:
        with self._transaction() as db:
            db.executemany(
                _SET_META,
                [("state", state), ("state_detail", _session(state.replace("open", "opened")))],
            )

    def close(self) -> None:
        """Mark the file closed, checkpoint it into the main file, close the connection.

        Committed data is on disk already; a failure to mark only makes the next start treat
        the file as not closed cleanly (which needs its ``-wal`` file). Idempotent.
        """
        with self._lock:
            if self._closed:
                return
            self._closed = True
            try:
                self._mark("closed")
                busy = self._db.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchone()[0]
                if busy:
                    log.warning("%s: closed; a reader kept its -wal from being merged", self.path)
            except sqlite3.Error as exc:
                log.warning("%s: could not mark the database closed: %s", self.path, exc)
            finally:
                self._db.close()

    def probe(self, size: int = 1 << 16) -> None:
        """Write and commit ``size`` bytes, then remove them: raises while storage fails.

        The coordinator calls it while paused by a failed write (disk full, I/O error) to
        learn when storage works again; it commits, so the write really reaches the disk.
        """
        with self._transaction() as db:
            db.execute("CREATE TABLE IF NOT EXISTS probe (data BLOB NOT NULL)")
            db.execute("INSERT INTO probe (data) VALUES (?)", (bytes(size),))
        with self._transaction() as db:
            db.execute("DELETE FROM probe")

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

    # -- the federation it serves -------------------------------------------------------------
    def bind_federation(self, key_id: str, federation_file: str = "--federation") -> None:
        """Record the federation key this database serves; refuse another federation's.

        The first start records ``key_id`` (hex) in ``meta``; later starts must present the
        same key, since the stored jobs, contributions and partial decryptions belong to it.

        Raises
        ------
        StoreError
            The database belongs to another federation.
        """
        with self._lock, self._transaction() as db:
            row = db.execute("SELECT value FROM meta WHERE key = 'federation_key_id'").fetchone()
            if row is None:
                db.execute(_SET_META, ("federation_key_id", key_id))
                return
        if row[0] != key_id:
            raise StoreError(
                f"{self.path} belongs to another federation (key {row[0][:16]}…), not to the "
                f"one in {federation_file} (key {key_id[:16]}…): start with that federation's "
                "federation-public.json and credentials, or give this federation a new --db"
            )

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
        signature: bytes | None = None,
    ) -> int:
        """Append one event (and optionally change the job's row) in one durable transaction.

        The event's link of the job's hash chain is computed and stored with it, and so is
        ``signature`` (an upload's Ed25519 signature), if given.

        Returns
        -------
        int
            The event's sequence number within its job (from 0).

        Raises
        ------
        KeyError
            No job ``job_id``.
        """
        if type not in EVENT_TYPES:
            raise ValueError(f"unknown event type {type!r}")
        round = None if round is None else int(operator.index(round))
        payload = None if payload is None else bytes(payload)
        now = time.time()
        with self._lock, self._transaction() as db:
            row = db.execute(
                "SELECT event_count, event_chain FROM jobs WHERE id = ?", (job_id,)
            ).fetchone()
            if row is None:
                raise KeyError(f"no job {job_id!r} in the store")
            seq = int(row[0])
            previous = GENESIS if row[1] is None else bytes(row[1])
            chain = chain_link(previous, job_id, seq, type, agency, round, payload)
            db.execute(
                "INSERT INTO events (job_id, seq, type, agency, round, payload, at, chain, "
                "signature) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (job_id, seq, type, agency, round, payload, now, chain, signature),
            )
            db.execute(
                "UPDATE jobs SET event_count = ?, event_chain = ?, updated = ? WHERE id = ?",
                (seq + 1, chain, now, job_id),
            )
            if update is not None:
                self._apply_update(db, job_id, update, now)
        return seq

    def events(self, job_id: str) -> list[Event]:
        """A job's events in sequence order."""
        with self._lock:
            rows = self._db.execute(
                "SELECT job_id, seq, type, agency, round, payload, at, signature FROM events "
                "WHERE job_id = ? ORDER BY seq",
                (job_id,),
            ).fetchall()
        return [
            Event(
                r[0],
                r[1],
                r[2],
                r[3],
                r[4],
                None if r[5] is None else bytes(r[5]),
                r[6],
                None if r[7] is None else bytes(r[7]),
            )
            for r in rows
        ]

    def event_outline(self, job_id: str, limit: int) -> list[Event]:
        """A job's last ``limit`` events in order, without upload payloads.

        Only the payloads of ``drop`` and ``cancel`` events (their reasons, in words) are
        read; contributions and partial decryptions are left on disk.
        """
        with self._lock:
            rows = self._db.execute(
                "SELECT job_id, seq, type, agency, round, "
                "CASE WHEN type IN ('drop', 'cancel') THEN payload END, at FROM events "
                "WHERE job_id = ? ORDER BY seq DESC LIMIT ?",
                (job_id, int(limit)),
            ).fetchall()
        return [
            Event(r[0], r[1], r[2], r[3], r[4], None if r[5] is None else bytes(r[5]), r[6])
            for r in reversed(rows)
        ]

    def departures(self, job_id: str) -> dict[str, str]:
        """Agency → the reason stored with its ``drop`` event, for one job."""
        with self._lock:
            rows = self._db.execute(
                "SELECT agency, payload FROM events WHERE job_id = ? AND type = 'drop' "
                "ORDER BY seq",
                (job_id,),
            ).fetchall()
        return {
            str(a): bytes(p).decode(errors="replace") if p is not None else "left"
            for a, p in rows
            if a is not None
        }

    def jobs_of(self, submitter: str | None, limit: int) -> list[JobRow]:
        """The newest ``limit`` jobs one data scientist (None: anyone) submitted (no results)."""
        with self._lock:
            rows = self._db.execute(
                "SELECT id, spec, state, failure, NULL, rounds_done, created, updated FROM jobs "
                "WHERE ? IS NULL OR json_extract(spec, '$.submitted_by') = ? "
                "ORDER BY created DESC, id LIMIT ?",
                (submitter, submitter, int(limit)),
            ).fetchall()
        return [JobRow(*r) for r in rows]

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
