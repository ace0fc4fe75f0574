"""The coordinator's SQLite store refuses a damaged database instead of losing state silently.

Every test works on real files. The damages reproduced are those an attacker-style test
found: a dropped ``events`` table, a zero-byte file, the main file without its ``-wal``
(after writes by a process that did not close), and a flipped bit in a stored partial
decryption. A plain crash (``kill -9`` with the ``-wal`` in place) must keep reopening with
every acknowledged event.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import signal
import sqlite3
import stat
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from fedcity.cli import main as cli
from fedcity.net.store import (
    GENESIS,
    SCHEMA_VERSION,
    JobUpdate,
    Store,
    StoreError,
    chain_link,
    event_encoding,
    verify_file,
)

PARTIAL = b"\x5a\xa5PARTIAL-DECRYPTION:" + bytes(range(256)) * 4


def fill(path: Path, *, jobs: int = 2, rounds: int = 3) -> dict[str, list[bytes | None]]:
    """A store with ``jobs`` jobs of ``rounds`` rounds each (contributions, close, partials).

    Returns every job's payloads in sequence order. The store is closed cleanly.
    """
    store = Store(path)
    try:
        for j in range(jobs):
            job_id = f"job{j}"
            store.create_job(job_id, json.dumps({"type": "ridge", "n": j}))
            for r in range(rounds):
                for a in ("a", "b", "c"):
                    payload = hashlib.sha256(f"{job_id}/{r}/{a}".encode()).digest() * 40
                    store.append_event(job_id, "contribution", agency=a, round=r, payload=payload)
                store.append_event(job_id, "close", round=r)
                for a in ("a", "b"):
                    payload = PARTIAL + f"{job_id}/{r}/{a}".encode()
                    store.append_event(job_id, "partial", agency=a, round=r, payload=payload)
            store.append_event(job_id, "drop", agency="c", payload=b"stopped heart-beating")
        store.update_job("job0", JobUpdate(state="succeeded", result="{}", rounds_done=rounds))
    finally:
        store.close()
    return {f"job{j}": _payloads(path, f"job{j}") for j in range(jobs)}


def _payloads(path: Path, job_id: str) -> list[bytes | None]:
    con = sqlite3.connect(f"file:{path}?immutable=1", uri=True)
    try:
        rows = con.execute(
            "SELECT payload FROM events WHERE job_id = ? ORDER BY seq", (job_id,)
        ).fetchall()
    finally:
        con.close()
    return [None if r[0] is None else bytes(r[0]) for r in rows]


def main_file_events(path: Path) -> int:
    """Events in the main file alone (what a copy without the -wal would hold)."""
    con = sqlite3.connect(f"file:{path}?immutable=1", uri=True)
    try:
        return int(con.execute("SELECT COUNT(*) FROM events").fetchone()[0])
    finally:
        con.close()


def sqlite_files(path: Path) -> dict[str, bytes]:
    """The database file and any -wal/-shm next to it, by name, with their bytes."""
    return {p.name: p.read_bytes() for p in sorted(path.parent.glob(path.name + "*"))}


def raw_execute(path: Path, *sql: str) -> None:
    """Change the file behind the store's back, as an attacker or a broken tool would."""
    con = sqlite3.connect(path, isolation_level=None)
    try:
        for statement in sql:
            con.execute(statement)
    finally:
        con.close()


def refused(path: Path, *needles: str) -> str:
    """Opening ``path`` raises StoreError whose message contains every needle; returns it."""
    with pytest.raises(StoreError) as info:
        Store(path).close()
    message = str(info.value)
    for needle in needles:
        assert needle in message, message
    return message


# -- normal operation ---------------------------------------------------------------------------
def test_a_fresh_store_is_private_and_reopens_with_every_event_and_chain(tmp_path):
    db = tmp_path / "coord.sqlite"
    written = fill(db)
    assert stat.S_IMODE(db.stat().st_mode) == 0o600  # it holds the blinding key
    assert sorted(p.name for p in tmp_path.iterdir()) == ["coord.sqlite"]  # no leftovers
    store = Store(db)
    try:
        assert store.summary.schema_version == SCHEMA_VERSION
        assert store.summary.clean_close and store.summary.quick_check == "ok"
        assert {(j.id, j.events) for j in store.summary.jobs} == {
            (k, len(v)) for k, v in written.items()
        }
        for job_id, payloads in written.items():
            assert [e.payload for e in store.events(job_id)] == payloads
            assert [e.seq for e in store.events(job_id)] == list(range(len(payloads)))
        assert store.job("job0").state == "succeeded"
        with pytest.raises(KeyError, match="no job 'nope'"):
            store.append_event("nope", "close", round=0)
    finally:
        store.close()


def test_the_chain_is_the_documented_sha256_over_the_canonical_encoding(tmp_path):
    db = tmp_path / "coord.sqlite"
    fill(db, jobs=1, rounds=1)
    con = sqlite3.connect(f"file:{db}?immutable=1", uri=True)
    rows = con.execute(
        "SELECT job_id, seq, type, agency, round, payload, chain FROM events ORDER BY seq"
    ).fetchall()
    head = con.execute("SELECT event_count, event_chain FROM jobs").fetchone()
    con.close()
    previous = GENESIS
    for job_id, seq, type_, agency, round_, payload, chain in rows:
        digest = None if payload is None else hashlib.sha256(payload).hexdigest()
        encoding = json.dumps([job_id, seq, type_, agency, round_, digest], separators=(",", ":"))
        assert event_encoding(job_id, seq, type_, agency, round_, payload) == encoding.encode()
        assert chain == hashlib.sha256(previous + encoding.encode()).digest()
        assert chain == chain_link(previous, job_id, seq, type_, agency, round_, payload)
        previous = chain
    assert head == (len(rows), previous)


def test_a_plain_copy_of_a_cleanly_closed_main_file_opens(tmp_path):
    db = tmp_path / "coord.sqlite"
    written = fill(db)
    copy = tmp_path / "copy" / "coord.sqlite"
    copy.parent.mkdir()
    shutil.copy(db, copy)  # the main file alone: fine once the coordinator stopped
    store = Store(copy)
    try:
        assert store.count_events() == sum(len(v) for v in written.values())
    finally:
        store.close()


# -- the four damages ---------------------------------------------------------------------------
def test_a_dropped_events_table_is_refused(tmp_path):
    db = tmp_path / "coord.sqlite"
    fill(db)
    raw_execute(db, "DROP TABLE events")
    message = refused(db, str(db), "no table 'events'", "restore", "docs/operations.md")
    assert "backup" in message
    # nothing was re-created behind the operator's back
    con = sqlite3.connect(f"file:{db}?immutable=1", uri=True)
    tables = {r[0] for r in con.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
    con.close()
    assert "events" not in tables


def test_a_missing_column_is_refused(tmp_path):
    db = tmp_path / "coord.sqlite"
    fill(db)
    raw_execute(db, "ALTER TABLE events DROP COLUMN chain")
    refused(db, "table 'events' lacks column(s) chain", "restore")


def test_a_zero_byte_file_is_refused_and_left_alone(tmp_path):
    db = tmp_path / "coord.sqlite"
    db.touch()
    refused(db, str(db), "zero-byte", "restore", "docs/operations.md")
    assert sqlite_files(db) == {"coord.sqlite": b""}  # no schema, no -wal written into it


def test_a_file_that_is_not_sqlite_is_refused(tmp_path):
    db = tmp_path / "coord.sqlite"
    db.write_text("jobs: []\n")
    refused(db, str(db), "not a SQLite database")
    assert db.read_text() == "jobs: []\n"


def test_a_sqlite_file_of_another_kind_is_refused(tmp_path):
    db = tmp_path / "other.sqlite"
    raw_execute(db, "CREATE TABLE notes (x)")
    refused(db, "not a fedcity coordinator database")
    empty = tmp_path / "empty.sqlite"
    raw_execute(empty, "CREATE TABLE t (x)", "DROP TABLE t")  # a SQLite header, no tables
    refused(empty, "an empty SQLite database")


def test_a_flipped_bit_in_a_stored_partial_names_the_job_and_event(tmp_path):
    db = tmp_path / "coord.sqlite"
    fill(db)
    victim = PARTIAL + b"job1/2/b"
    seq = _payloads(db, "job1").index(victim)
    data = bytearray(db.read_bytes())
    at = data.find(victim)
    assert at > 0 and data.find(victim, at + 1) == -1
    data[at + 300] ^= 0x04  # one bit inside the ciphertext bytes
    db.write_bytes(bytes(data))
    # SQLite's own check sees a well-formed file: only the hash chain notices
    con = sqlite3.connect(f"file:{db}?immutable=1", uri=True)
    assert con.execute("PRAGMA quick_check").fetchall() == [("ok",)]
    con.close()
    refused(db, str(db), f"job job1 event seq {seq} (partial)", "does not match its hash chain")


@pytest.mark.parametrize(
    ("sql", "needle"),
    [
        ("UPDATE events SET round = 7 WHERE job_id = 'job0' AND seq = 4", "job job0 event seq 4"),
        ("UPDATE events SET agency = 'b' WHERE job_id = 'job1' AND seq = 0", "job1 event seq 0"),
        ("DELETE FROM events WHERE job_id = 'job0' AND seq = 3", "job job0 has no event seq 3"),
        (
            "DELETE FROM events WHERE job_id = 'job1' AND seq = "
            "(SELECT MAX(seq) FROM events WHERE job_id = 'job1')",
            "job job1 recorded 19 events but its log holds 18: events were lost",
        ),
        ("PRAGMA user_version = 1", None),  # harmless: meta holds the version
    ],
)
def test_altered_or_deleted_events_are_refused(tmp_path, sql, needle):
    db = tmp_path / "coord.sqlite"
    fill(db)
    raw_execute(db, sql)
    if needle is None:
        Store(db).close()
    else:
        refused(db, needle, "restore")


def test_an_older_or_newer_schema_version_is_refused(tmp_path):
    old = tmp_path / "v1.sqlite"  # what the fedcity before the hash chain wrote
    raw_execute(
        old,
        "PRAGMA journal_mode=WAL",
        "CREATE TABLE jobs (id TEXT PRIMARY KEY, spec TEXT NOT NULL, state TEXT NOT NULL, "
        "failure TEXT, result TEXT, rounds_done INTEGER NOT NULL DEFAULT 0, "
        "created REAL NOT NULL, updated REAL NOT NULL)",
        "CREATE TABLE events (job_id TEXT NOT NULL, seq INTEGER NOT NULL, type TEXT NOT NULL, "
        "agency TEXT, round INTEGER, payload BLOB, at REAL NOT NULL, PRIMARY KEY (job_id, seq))",
        "PRAGMA user_version = 1",
    )
    refused(old, "schema version 1", "older fedcity", f"reads version {SCHEMA_VERSION} only")
    new = tmp_path / "v3.sqlite"
    fill(new)
    raw_execute(new, "UPDATE meta SET value = '3' WHERE key = 'schema_version'")
    refused(new, "schema version 3", "newer fedcity", "Upgrade fedcity")


def test_a_damaged_btree_is_refused(tmp_path):
    db = tmp_path / "coord.sqlite"
    fill(db, jobs=3, rounds=10)
    data = bytearray(db.read_bytes())
    page = 4096
    assert len(data) > 6 * page
    data[5 * page : 5 * page + 16] = b"\xff" * 16  # scribble over a page header
    db.write_bytes(bytes(data))
    refused(db, str(db), "restore")


# -- a lost -wal file ---------------------------------------------------------------------------
def test_a_copy_of_the_main_file_taken_while_the_store_is_open_is_refused(tmp_path):
    db = tmp_path / "coord.sqlite"
    fill(db, jobs=1)
    store = Store(db)
    try:
        store.create_job("late", "{}")
        for i in range(5):
            store.append_event("late", "contribution", agency="a", round=i, payload=b"x" * 100)
        copy = tmp_path / "copy" / "coord.sqlite"
        copy.parent.mkdir()
        shutil.copy(db, copy)  # as `cp` of a running coordinator's database would
    finally:
        store.close()
    assert main_file_events(copy) < main_file_events(db)  # the copy really lacks events
    before = sqlite_files(copy)
    refused(
        copy, "not closed cleanly", "write-ahead log", "is missing", "fedcity coordinator backup"
    )
    refused(copy, "is missing")  # the refusal created nothing that would let a retry pass
    assert sqlite_files(copy) == before
    # a read-only reader creates an empty -wal next to it: still refused
    con = sqlite3.connect(f"file:{copy}?mode=ro", uri=True)
    con.execute("SELECT COUNT(*) FROM events").fetchone()
    con.close()
    assert Path(f"{copy}-wal").stat().st_size == 0
    refused(copy, "write-ahead log", "is empty")


CRASHER = """
import sys
from fedcity.net.store import JobUpdate, Store

store = Store(sys.argv[1])
store.create_job("crash", "{}")
for i in range(int(sys.argv[2])):
    store.append_event(
        "crash", "contribution", agency="abc"[i % 3], round=i // 3, payload=bytes([i]) * 2000
    )
store.append_event("crash", "close", round=0, update=JobUpdate(state="running", rounds_done=1))
print("acknowledged", flush=True)
sys.stdin.read()  # until killed
"""


def crash(db: Path, events: int) -> None:
    """A separate process appends events, reports them acknowledged, and is killed with -9."""
    proc = subprocess.Popen(
        [sys.executable, "-c", CRASHER, str(db), str(events)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert proc.stdout is not None
        assert proc.stdout.readline().strip() == "acknowledged"
        os.kill(proc.pid, signal.SIGKILL)
        assert proc.wait(timeout=30) == -signal.SIGKILL
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def test_sigkill_with_the_wal_in_place_reopens_and_loses_nothing(tmp_path):
    db = tmp_path / "coord.sqlite"
    fill(db, jobs=1)
    crash(db, 40)
    assert Path(f"{db}-wal").stat().st_size > 0
    assert main_file_events(db) < 19 + 41  # acknowledged events live in the -wal only
    summary = verify_file(db)  # read-only check of a crashed database works
    assert not summary.clean_close and summary.wal_bytes
    assert dict((j.id, j.events) for j in summary.jobs)["crash"] == 41
    for clean in (False, True):  # reopen after the crash, close, reopen: nothing lost
        store = Store(db)
        try:
            assert store.summary.clean_close is clean
            events = store.events("crash")
            assert len(events) == 41
            assert [e.payload for e in events[:40]] == [bytes([i]) * 2000 for i in range(40)]
            assert store.job("crash").rounds_done == 1
            assert len(store.events("job0")) == 19
        finally:
            store.close()


def test_sigkill_then_a_deleted_wal_is_refused(tmp_path):
    db = tmp_path / "coord.sqlite"
    fill(db, jobs=1)
    crash(db, 40)
    con = sqlite3.connect(f"file:{db}?mode=ro", uri=True)
    with_wal = con.execute("SELECT COUNT(*) FROM events").fetchone()[0]
    con.close()
    assert main_file_events(db) < with_wal == 19 + 41  # the -wal holds acknowledged events
    Path(f"{db}-wal").unlink()
    message = refused(db, str(db), "not closed cleanly", "coord.sqlite-wal is missing")
    assert "opened by pid" in message  # names the session that did not close
    assert not Path(f"{db}-wal").exists()


# -- check-store and backup ---------------------------------------------------------------------
def test_check_store_summarises_without_writing(tmp_path, capsys):
    db = tmp_path / "coord.sqlite"
    written = fill(db)
    before = sqlite_files(db)
    mtime = db.stat().st_mtime_ns
    assert cli(["coordinator", "check-store", "--db", str(db)]) == 0
    out = capsys.readouterr().out
    assert f"{db}: OK" in out and "quick_check ok" in out and "hash chain verified" in out
    assert "closed cleanly" in out and f"schema version {SCHEMA_VERSION}" in out
    for job_id, payloads in written.items():
        assert f"job {job_id}" in out and f"{len(payloads)} events" in out
    assert sqlite_files(db) == before and db.stat().st_mtime_ns == mtime  # no -wal, no -shm


def test_check_store_while_the_coordinator_runs_and_on_damage(tmp_path, capsys):
    db = tmp_path / "coord.sqlite"
    fill(db)
    store = Store(db)
    try:
        store.append_event("job1", "close", round=9)
        assert cli(["coordinator", "check-store", "--db", str(db)]) == 0
        out = capsys.readouterr().out
        assert "not closed" in out and "20 events" in out
    finally:
        store.close()
    raw_execute(db, "UPDATE events SET payload = X'00' WHERE job_id = 'job1' AND seq = 7")
    assert cli(["coordinator", "check-store", "--db", str(db)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("fedcity coordinator check-store: error: ")
    assert "job job1 event seq 7" in err
    (tmp_path / "zero.sqlite").touch()
    assert cli(["coordinator", "check-store", "--db", str(tmp_path / "zero.sqlite")]) == 2
    assert "zero-byte" in capsys.readouterr().err
    assert cli(["coordinator", "check-store", "--db", str(tmp_path / "none.sqlite")]) == 2
    assert "does not exist" in capsys.readouterr().err
    assert not (tmp_path / "none.sqlite").exists()


def test_check_store_and_backup_through_the_installed_command(tmp_path):
    db = tmp_path / "coord.sqlite"
    fill(db, jobs=1)
    run = [sys.executable, "-m", "fedcity.cli", "coordinator"]
    ok = subprocess.run([*run, "check-store", "--db", str(db)], capture_output=True, text=True)
    assert ok.returncode == 0 and "hash chain verified" in ok.stdout
    dest = tmp_path / "b.sqlite"
    done = subprocess.run([*run, "backup", "--db", str(db), "--to", str(dest)], text=True)
    assert done.returncode == 0 and dest.exists()
    raw_execute(db, "DROP TABLE events")
    bad = subprocess.run([*run, "check-store", "--db", str(db)], capture_output=True, text=True)
    assert bad.returncode == 2 and "no table 'events'" in bad.stderr


def test_backup_while_another_connection_writes_is_consistent_and_restorable(tmp_path, capsys):
    db = tmp_path / "coord.sqlite"
    fill(db, jobs=2, rounds=20)
    store = Store(db)
    stop = threading.Event()
    appended = [0]

    def writer() -> None:
        i = 0
        while not stop.is_set():
            store.append_event("job1", "contribution", agency="w", round=i, payload=b"w" * 3000)
            appended[0] += 1
            i += 1

    def wait_for(n: int) -> None:
        deadline = time.monotonic() + 60
        while appended[0] < n:
            assert thread.is_alive() and time.monotonic() < deadline
            time.sleep(0.001)

    thread = threading.Thread(target=writer)
    thread.start()
    # and a third connection is in the middle of a write transaction during the backup
    other = sqlite3.connect(db, isolation_level=None, timeout=30)
    try:
        wait_for(20)
        other.execute("BEGIN IMMEDIATE")
        other.execute(
            "INSERT INTO jobs (id, spec, state, created, updated) "
            "VALUES ('pending', '{}', 'queued', 0, 0)"
        )
        dest = tmp_path / "backups" / "coord-1.sqlite"
        dest.parent.mkdir()
        assert cli(["coordinator", "backup", "--db", str(db), "--to", str(dest)]) == 0
        other.execute("COMMIT")
        wait_for(appended[0] + 20)
    finally:
        other.close()
        stop.set()
        thread.join()
    out = capsys.readouterr().out
    assert f"written to {dest}" in out and "hash chain verified" in out
    assert stat.S_IMODE(dest.stat().st_mode) == 0o600
    assert sorted(p.name for p in dest.parent.iterdir()) == ["coord-1.sqlite"]
    assert store.job("pending") is not None
    source_events = store.events("job1")
    source_count = store.count_events()
    store.close()

    # the copy is one instant of the source: each job's log a prefix of the source's
    copy = Store(dest)
    try:
        assert copy.summary.clean_close  # needs no -wal file
        assert copy.job("pending") is None  # uncommitted then: not in the copy
        copied = copy.events("job1")
        assert len(copied) < len(source_events)
        assert [(e.seq, e.payload) for e in copied] == [
            (e.seq, e.payload) for e in source_events[: len(copied)]
        ]
        assert copy.events("job0") == events_of(db, "job0")
    finally:
        copy.close()

    # never overwrites
    snapshot = dest.read_bytes()
    assert cli(["coordinator", "backup", "--db", str(db), "--to", str(dest)]) == 2
    assert "exists; refusing to overwrite" in capsys.readouterr().err
    assert dest.read_bytes() == snapshot

    # restore: stop, copy the backup into place, delete stale -wal/-shm, start
    crash(db, 5)  # the live database is then lost, say, with a stale -wal left behind
    db.write_bytes(b"")
    refused(db, "zero-byte")
    shutil.copy(dest, db)
    for suffix in ("-wal", "-shm"):
        Path(f"{db}{suffix}").unlink(missing_ok=True)
    restored = Store(db)
    try:
        assert restored.count_events() == verify_file(dest).events < source_count
        assert restored.events("job1") == copied
    finally:
        restored.close()


def events_of(db: Path, job_id: str):
    store = Store(db)
    try:
        return store.events(job_id)
    finally:
        store.close()


def test_a_damaged_database_is_not_backed_up(tmp_path, capsys):
    db = tmp_path / "coord.sqlite"
    fill(db)
    raw_execute(db, "UPDATE events SET round = 5 WHERE job_id = 'job0' AND seq = 2")
    dest = tmp_path / "b.sqlite"
    assert cli(["coordinator", "backup", "--db", str(db), "--to", str(dest)]) == 2
    err = capsys.readouterr().err
    assert "backup of" in err and "job job0 event seq 2" in err
    assert sorted(p.name for p in tmp_path.iterdir() if p.name.startswith(("b.", ".b."))) == []
    db.unlink()
    Path(f"{db}-wal").unlink(missing_ok=True)
    Path(f"{db}-shm").unlink(missing_ok=True)
    assert cli(["coordinator", "backup", "--db", str(db), "--to", str(dest)]) == 2
    assert "does not exist" in capsys.readouterr().err
