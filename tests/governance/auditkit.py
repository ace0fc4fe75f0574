"""A small federation's audit logs, written as the coordinator and agents write them."""

from __future__ import annotations

import hashlib
import sqlite3
from pathlib import Path

from fedcity.crypto.signing import SigningKey
from fedcity.governance.audit import COORDINATOR
from fedcity.governance.auditlog import AuditLog

AGENCIES = ("north", "south", "east")


def exchange(
    coord: AuditLog, agent: AuditLog, job: str, round_: int, kind: str, payload: bytes
) -> None:
    """One upload: the agent records it, the coordinator records it and anchors, the agent
    keeps the anchor (what fedcity.net.agent and the coordinator's upload path do)."""
    digest = hashlib.sha256(payload).hexdigest()
    agent.append(kind, job=job, round=round_, body={"sha256": digest, "bytes": len(payload)})
    _, anchor = coord.append_and_anchor(
        kind,
        job=job,
        round=round_,
        body={"agency": agent.party, "sha256": digest, "bytes": len(payload)},
    )
    upload = {"type": kind, "job": job, "round": round_, "agency": agent.party, "sha256": digest}
    agent.append(
        "anchor", job=job, round=round_, body={"anchor": anchor.to_json_dict(), "upload": upload}
    )


def federation(tmp: Path, jobs: int = 2, rounds: int = 2) -> tuple[Path, dict[str, Path], dict]:
    """Logs of ``jobs`` jobs of ``rounds`` rounds; returns (coordinator path, agents, keys)."""
    keys = {name: SigningKey.generate() for name in (COORDINATOR, *AGENCIES)}
    coord = AuditLog(tmp / "coordinator.audit.sqlite", COORDINATOR, keys[COORDINATOR])
    agents = {a: AuditLog(tmp / f"{a}.audit.sqlite", a, keys[a]) for a in AGENCIES}
    for j in range(jobs):
        job = f"job-{j}"
        coord.append("job", job=job, body={"submitter": "ana", "spec_sha256": "00" * 32})
        for a in agents.values():
            a.append("job", job=job, body={"kind": "stats.mean"})
        for r in range(rounds):
            for a in agents.values():
                exchange(coord, a, job, r, "contribution", f"{job}/{r}/{a.party}".encode())
            for a in list(agents.values())[:2]:
                exchange(coord, a, job, r, "partial", f"{job}/{r}/{a.party}/p".encode())
        coord.append("result", job=job, body={"state": "succeeded", "sha256": "11" * 32})
    paths = {a: log.path for a, log in agents.items()}
    for log in (coord, *agents.values()):
        log.close()
    return coord.path, paths, keys


def sql(path: Path, statement: str, *args: object) -> None:
    con = sqlite3.connect(path, isolation_level=None)
    try:
        con.execute(statement, args)
    finally:
        con.close()


def positions(path: Path) -> list[int]:
    con = sqlite3.connect(path)
    try:
        return [p for (p,) in con.execute("SELECT pos FROM records ORDER BY pos")]
    finally:
        con.close()


def swap(path: Path, pos_a: int, pos_b: int) -> None:
    """Exchange the contents of two stored records (a reordering)."""
    cols = "seq, time, party, type, job, round, body, prev, hash, signature"
    con = sqlite3.connect(path, isolation_level=None)
    try:
        a = con.execute(f"SELECT {cols} FROM records WHERE pos = ?", (pos_a,)).fetchone()
        b = con.execute(f"SELECT {cols} FROM records WHERE pos = ?", (pos_b,)).fetchone()
        sets = ", ".join(f"{c.strip()} = ?" for c in cols.split(","))
        con.execute(f"UPDATE records SET {sets} WHERE pos = ?", (*b, pos_a))
        con.execute(f"UPDATE records SET {sets} WHERE pos = ?", (*a, pos_b))
    finally:
        con.close()


def rewrite(path: Path, key: SigningKey, party: str, transform) -> None:
    """The party re-writes its own log with its own key: ``transform`` maps the list of
    (time, type, job, round, body) to a new list, which is chained and signed afresh,
    keeping the original times."""
    from fedcity.governance.audit import AuditChain
    from fedcity.governance.auditlog import read_log

    old = read_log(path)
    items = transform([(r.time, r.type, r.job, r.round, dict(r.body)) for r in old])
    chain = AuditChain(party, key)
    new = []
    for time, type_, job, round_, body in items:
        record = chain.next(type_, job=job, round=round_, body=body, time=time)
        chain.advance(record)
        new.append(record)
    con = sqlite3.connect(path, isolation_level=None)
    try:
        con.execute("DELETE FROM records")
        for r in new:
            con.execute(
                "INSERT INTO records (seq, time, party, type, job, round, body, prev, hash, "
                "signature) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (
                    r.seq,
                    r.time,
                    r.party,
                    r.type,
                    r.job,
                    r.round,
                    __import__("json").dumps(dict(r.body), sort_keys=True, separators=(",", ":")),
                    r.prev,
                    r.hash,
                    r.signature,
                ),
            )
    finally:
        con.close()
