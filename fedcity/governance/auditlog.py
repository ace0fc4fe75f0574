"""A party's audit log on disk: one SQLite file of signed, chained records.

The records and their checks are :mod:`fedcity.governance.audit`; this module only stores
and reads them. Every append is one ``BEGIN IMMEDIATE`` transaction that reads the last
stored record, chains and signs the next one and inserts it (``synchronous=FULL``, WAL), so
several processes of one party (the daemon and ``fedcity agent approve``) can append to the
same file. Tables::

    meta(key, value)        -- format, party
    records(pos INTEGER PRIMARY KEY, seq, time, party, type, job, round, body, prev, hash,
            signature)      -- body: canonical JSON; prev, hash, signature: bytes

The file enforces nothing else (no unique or check constraints): a tampered file must still
be readable so that :func:`~fedcity.governance.audit.verify_log` can say what was done to it.
"""

from __future__ import annotations

import json
import os
import sqlite3
import threading
from collections.abc import Iterable, Iterator, Mapping
from contextlib import closing, contextmanager
from pathlib import Path
from typing import Any

from fedcity.crypto.signing import SigningKey
from fedcity.governance.audit import (
    Anchor,
    AuditChain,
    AuditError,
    AuditRecord,
)

__all__ = [
    "LOG_FORMAT",
    "MAX_LOG_RECORDS",
    "AuditLog",
    "coordinator_log_path",
    "export_jsonl",
    "read_log",
]

LOG_FORMAT = "fedcity.audit-log.v1"
"""``meta.format`` of an audit log file."""
MAX_LOG_RECORDS = 50_000_000
"""Most records :func:`read_log` reads from one file."""
_SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS records (
    pos INTEGER PRIMARY KEY,
    seq INTEGER,
    time TEXT,
    party TEXT,
    type TEXT,
    job TEXT,
    round INTEGER,
    body TEXT,
    prev BLOB,
    hash BLOB,
    signature BLOB
);
"""
_COLUMNS = "seq, time, party, type, job, round, body, prev, hash, signature"


def _connect(path: Path, *, readonly: bool = False) -> sqlite3.Connection:
    if readonly:
        con = sqlite3.connect(
            f"{path.resolve().as_uri()}?mode=ro", uri=True, check_same_thread=False
        )
    else:
        con = sqlite3.connect(path, isolation_level=None, check_same_thread=False, timeout=30.0)
        con.execute("PRAGMA journal_mode=WAL")
        con.execute("PRAGMA synchronous=FULL")
    return con


def _row_to_record(row: tuple[Any, ...]) -> AuditRecord:
    """A stored row as a record; malformed columns become values that fail verification."""
    seq, time, party, type_, job, round_, body, prev, hash_, signature = row
    try:
        parsed = json.loads(body) if isinstance(body, str) else None
    except ValueError:
        parsed = None
    if not isinstance(parsed, dict):
        parsed = {"unreadable_body": str(body)[:200]}
    return AuditRecord(
        seq=seq if isinstance(seq, int) else -1,
        time=str(time),
        party=str(party),
        type=str(type_),
        job=str(job) if job is not None else "",
        round=round_ if isinstance(round_, int) else None,
        body=parsed,
        prev=bytes(prev) if isinstance(prev, bytes) else b"",
        hash=bytes(hash_) if isinstance(hash_, bytes) else b"",
        signature=bytes(signature) if isinstance(signature, bytes) else b"",
    )


def _body_text(record: AuditRecord) -> str:
    return json.dumps(dict(record.body), sort_keys=True, separators=(",", ":"), ensure_ascii=True)


class AuditLog:
    """One party's audit log file (created with its record 0 on first use).

    Parameters
    ----------
    path : path-like
        The SQLite file (created, with its directory, if missing).
    party : str
        ``"coordinator"`` or the agency's name.
    key : SigningKey
        The party's signing key; an existing log must have been opened with the same key.

    Raises
    ------
    AuditError
        The file is not an audit log, belongs to another party, or was started with another
        key.
    """

    def __init__(self, path: str | os.PathLike[str], party: str, key: SigningKey) -> None:
        self.path = Path(path)
        self.party = party
        self.key = key
        self._lock = threading.Lock()
        AuditChain(party, key)  # validates party and key
        self.path.parent.mkdir(parents=True, exist_ok=True)
        try:
            self._con = _connect(self.path)
            with self._transaction() as con:
                for statement in _SCHEMA.split(";"):
                    if statement.strip():
                        con.execute(statement)
                meta = dict(con.execute("SELECT key, value FROM meta").fetchall())
                if not meta:
                    con.execute(
                        "INSERT INTO meta (key, value) VALUES ('format', ?), ('party', ?)",
                        (LOG_FORMAT, party),
                    )
                elif meta.get("format") != LOG_FORMAT:
                    raise AuditError(f"{self.path} is not a fedcity audit log")
                elif meta.get("party") != party:
                    raise AuditError(
                        f"{self.path} is the audit log of {meta.get('party')!r}, not of {party!r}"
                    )
                first = con.execute(
                    f"SELECT {_COLUMNS} FROM records ORDER BY pos LIMIT 1"
                ).fetchone()
                if first is None:
                    self._insert(con, AuditChain(party, key).opening())
                elif _row_to_record(first).body.get("public_key") != key.public_key.hex():
                    raise AuditError(
                        f"audit log {self.path} was started with another signing key than "
                        f"{key.public_key.hex()[:16]}… (it belongs to another key file or "
                        "coordinator database): keep it for the record, move it away and start "
                        "again to begin a new audit log"
                    )
        except sqlite3.Error as exc:
            raise AuditError(f"audit log {self.path}: {exc}") from exc

    def __repr__(self) -> str:
        return f"<AuditLog {self.party!r} {self.path}>"

    @contextmanager
    def _transaction(self) -> Iterator[sqlite3.Connection]:
        with self._lock:
            con = self._con
            con.execute("BEGIN IMMEDIATE")
            try:
                yield con
            except BaseException:
                con.execute("ROLLBACK")
                raise
            con.execute("COMMIT")

    @staticmethod
    def _insert(con: sqlite3.Connection, record: AuditRecord) -> None:
        con.execute(
            f"INSERT INTO records ({_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
            (
                record.seq,
                record.time,
                record.party,
                record.type,
                record.job,
                record.round,
                _body_text(record),
                record.prev,
                record.hash,
                record.signature,
            ),
        )

    def _chain(self, con: sqlite3.Connection) -> AuditChain:
        last = con.execute("SELECT seq, hash FROM records ORDER BY pos DESC LIMIT 1").fetchone()
        if last is None:
            return AuditChain(self.party, self.key)
        seq, head = last
        if not isinstance(seq, int) or not isinstance(head, bytes) or len(head) != 32:
            raise AuditError(f"{self.path}: the last record is damaged; verify the log")
        return AuditChain(self.party, self.key, records=seq + 1, head=head)

    def append(
        self,
        type: str,
        *,
        job: str = "",
        round: int | None = None,
        body: Mapping[str, Any] | None = None,
    ) -> AuditRecord:
        """Sign, chain and durably store the next record.

        Raises
        ------
        AuditError
            A malformed record (see :meth:`AuditChain.next`) or a storage failure.
        """
        return self.append_and_anchor(type, job=job, round=round, body=body)[0]

    def append_and_anchor(
        self,
        type: str,
        *,
        job: str = "",
        round: int | None = None,
        body: Mapping[str, Any] | None = None,
    ) -> tuple[AuditRecord, Anchor]:
        """:meth:`append`, and the signed head right after this record (one transaction)."""
        try:
            with self._transaction() as con:
                chain = self._chain(con)
                record = chain.next(type, job=job, round=round, body=body)
                self._insert(con, record)
                chain.advance(record)
        except sqlite3.Error as exc:
            raise AuditError(f"audit log {self.path}: {exc}") from exc
        return record, chain.anchor()

    def anchor(self) -> Anchor:
        """The signed head of the log as it is now."""
        with self._lock:
            chain = self._chain(self._con)
        return chain.anchor()

    def records(self) -> list[AuditRecord]:
        """Every record in stored order."""
        with self._lock:
            rows = self._con.execute(f"SELECT {_COLUMNS} FROM records ORDER BY pos").fetchall()
        return [_row_to_record(r) for r in rows]

    def close(self) -> None:
        """Close the file (idempotent)."""
        with self._lock:
            self._con.close()

    def __enter__(self) -> AuditLog:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def read_log(path: str | os.PathLike[str]) -> list[AuditRecord]:
    """Read a log file without writing to it: an audit log (SQLite) or its JSON Lines export.

    Raises
    ------
    AuditError
        Unreadable, not an audit log, or more than :data:`MAX_LOG_RECORDS` records.
    """
    p = Path(path)
    if not p.is_file():
        raise AuditError(f"audit log {p} {'is not a file' if p.exists() else 'does not exist'}")
    with p.open("rb") as fh:
        magic = fh.read(16)
    if magic != b"SQLite format 3\x00":
        return _read_jsonl(p)
    try:
        with closing(_connect(p, readonly=True)) as con:
            meta = dict(con.execute("SELECT key, value FROM meta").fetchall())
            if meta.get("format") != LOG_FORMAT:
                raise AuditError(f"{p} is a SQLite file but not a fedcity audit log")
            rows = con.execute(
                f"SELECT {_COLUMNS} FROM records ORDER BY pos LIMIT ?", (MAX_LOG_RECORDS + 1,)
            ).fetchall()
    except sqlite3.Error as exc:
        raise AuditError(f"cannot read audit log {p}: {exc}") from exc
    if len(rows) > MAX_LOG_RECORDS:
        raise AuditError(f"{p} holds more than {MAX_LOG_RECORDS} records")
    return [_row_to_record(r) for r in rows]


def _read_jsonl(p: Path) -> list[AuditRecord]:
    out: list[AuditRecord] = []
    try:
        with p.open(encoding="utf-8") as fh:
            for n, line in enumerate(fh, 1):
                if not line.strip():
                    continue
                if len(out) >= MAX_LOG_RECORDS:
                    raise AuditError(f"{p} holds more than {MAX_LOG_RECORDS} records")
                try:
                    out.append(AuditRecord.from_json_dict(json.loads(line)))
                except ValueError as exc:
                    raise AuditError(f"{p} line {n}: {exc}") from exc
    except (OSError, UnicodeDecodeError) as exc:
        raise AuditError(
            f"cannot read {p} as an audit log or its JSON Lines export: {exc}"
        ) from exc
    return out


def export_jsonl(records: Iterable[AuditRecord], out: str | os.PathLike[str]) -> int:
    """Write records as JSON Lines (one :meth:`AuditRecord.to_json_dict` per line).

    Returns
    -------
    int
        Records written.

    Raises
    ------
    AuditError
        ``out`` exists (never overwritten) or cannot be written.
    """
    target = Path(out)
    n = 0
    try:
        with target.open("x", encoding="utf-8") as fh:
            for r in records:
                fh.write(json.dumps(r.to_json_dict(), sort_keys=True, ensure_ascii=True) + "\n")
                n += 1
    except FileExistsError as exc:
        raise AuditError(f"{target} exists; refusing to overwrite it") from exc
    except OSError as exc:
        raise AuditError(f"cannot write {target}: {exc.strerror or exc}") from exc
    return n


def coordinator_log_path(store_path: str | os.PathLike[str]) -> Path:
    """Where the coordinator keeps its audit log: ``<db stem>.audit<suffix>`` beside its store."""
    p = Path(store_path)
    return p.with_name(f"{p.stem}.audit{p.suffix or '.sqlite'}")
