"""Audit logs: any edit, deletion, reordering or truncation at any party is found and located."""

from __future__ import annotations

import hashlib
import json
import shutil
import sqlite3

import pytest
from auditkit import AGENCIES, federation, rewrite, sql, swap
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from fedcity.crypto import CryptoError
from fedcity.crypto.signing import DOMAIN, SigningKey, Statement
from fedcity.governance.audit import (
    AUDIT_DOMAIN,
    COORDINATOR,
    Anchor,
    AuditChain,
    AuditError,
    AuditRecord,
    cross_check,
    verify_log,
)
from fedcity.governance.auditlog import AuditLog, export_jsonl, read_log


@pytest.fixture(scope="module")
def pristine(tmp_path_factory):
    base = tmp_path_factory.mktemp("pristine")
    coord, agents, keys = federation(base)
    return base, coord, agents, keys


@pytest.fixture
def logs(pristine, tmp_path):
    """A fresh copy of the federation's logs for one test."""
    base, coord, agents, keys = pristine
    for p in base.iterdir():
        shutil.copy(p, tmp_path / p.name)
    return tmp_path / coord.name, {a: tmp_path / p.name for a, p in agents.items()}, keys


def check(coord, agents, keys):
    agency_keys = {a: keys[a].public_key for a in AGENCIES}
    return cross_check(
        read_log(coord), {a: read_log(p) for a, p in agents.items()}, agency_keys=agency_keys
    )


def findings_of(summaries, party):
    return [f for s in summaries if s.party == party for f in s.findings]


def test_honest_logs_verify(logs):
    coord, agents, keys = logs
    summaries = check(coord, agents, keys)
    assert [s.party for s in summaries] == [COORDINATOR, *sorted(AGENCIES)]
    assert all(s.ok for s in summaries), [str(f) for s in summaries for f in s.findings]
    records = read_log(coord)
    assert records[0].type == "open" and records[0].body["public_key"] == (
        keys[COORDINATOR].public_key.hex()
    )
    assert {r.type for r in records} >= {"open", "job", "contribution", "partial", "result"}
    assert sum(r.type == "anchor" for r in read_log(agents["north"])) == 8


def test_record_signature_is_domain_separated():
    key = SigningKey.generate()
    chain = AuditChain("north", key)
    record = chain.opening()
    assert record.signed_by(key.public_key)
    assert key.public_key.verify_message(AUDIT_DOMAIN, record.hash, record.signature)
    statement = Statement("j", 0, "contribution", "north", b"k" * 16, bytes(32))
    assert not key.public_key.verify(statement, record.signature)
    with pytest.raises(CryptoError, match="signing domain"):
        key.sign_message(DOMAIN, b"x")
    with pytest.raises(CryptoError, match="signing domain"):
        key.sign_message(b"fedcity.a\x00b\x00", b"x")


def test_chain_rules():
    key = SigningKey.generate()
    chain = AuditChain("north", key)
    with pytest.raises(AuditError, match="record 0"):
        chain.next("job", job="j")
    chain.advance(chain.opening())
    with pytest.raises(AuditError, match="record 0"):
        chain.opening()
    with pytest.raises(AuditError, match="unknown audit record type"):
        chain.next("gossip")
    with pytest.raises(AuditError, match="JSON-ready"):
        chain.next("job", body={"x": float("nan")})
    with pytest.raises(AuditError, match="exceeds"):
        chain.next("job", body={"x": "a" * 70_000})
    with pytest.raises(AuditError, match="round"):
        chain.next("job", round=-1)
    other = chain.next("job", job="j")
    with pytest.raises(AuditError, match="does not follow"):
        chain.advance(AuditRecord(**{**other.__dict__, "seq": 5}))


def test_log_refuses_another_key_or_party(tmp_path):
    key = SigningKey.generate()
    AuditLog(tmp_path / "a.sqlite", "north", key).close()
    with pytest.raises(AuditError, match="another signing key"):
        AuditLog(tmp_path / "a.sqlite", "north", SigningKey.generate())
    with pytest.raises(AuditError, match="audit log of 'north'"):
        AuditLog(tmp_path / "a.sqlite", "south", key)
    (tmp_path / "b.sqlite").write_bytes(b"not a database at all, certainly not an audit log")
    with pytest.raises(AuditError):
        read_log(tmp_path / "b.sqlite")


def test_anchor_signature():
    key = SigningKey.generate()
    anchor = Anchor.sign(key, 3, hashlib.sha256(b"x").digest())
    assert anchor.verify()
    assert Anchor.from_json_dict(anchor.to_json_dict()) == anchor
    assert not Anchor(4, anchor.head, anchor.public_key, anchor.signature).verify()
    assert not Anchor(3, bytes(32), anchor.public_key, anchor.signature).verify()
    # an audit record's signature is not an anchor's (distinct domains)
    record_sig = key.sign_message(AUDIT_DOMAIN, Anchor.message(3, anchor.head))
    assert not Anchor(3, anchor.head, anchor.public_key, record_sig).verify()


# -- tampering at any party ------------------------------------------------------------------
def _edit(path, pos):
    sql(path, "UPDATE records SET body = ? WHERE pos = ?", '{"sha256":"ff"}', pos)


def _edit_rehash(path, pos):
    con = sqlite3.connect(path, isolation_level=None)
    row = con.execute(
        "SELECT seq, time, party, type, job, round, body, prev, hash, signature FROM records "
        "WHERE pos = ?",
        (pos,),
    ).fetchone()
    con.close()
    body = {**json.loads(row[6]), "forged": True}
    record = AuditRecord(row[0], row[1], row[2], row[3], row[4], row[5], body, row[7], b"", row[9])
    digest = record.computed_hash()
    sql(
        path,
        "UPDATE records SET body = ?, hash = ? WHERE pos = ?",
        json.dumps(body, sort_keys=True, separators=(",", ":")),
        digest,
        pos,
    )


def _delete(path, pos):
    sql(path, "DELETE FROM records WHERE pos = ?", pos)


def _reorder(path, pos):
    swap(path, pos, pos + 1)


def _truncate(path, pos):
    sql(path, "DELETE FROM records WHERE pos >= ?", pos)


OPS = {
    "edited": _edit,
    "edited (re-hashed)": _edit_rehash,
    "deleted": _delete,
    "reordered": _reorder,
    "truncated": _truncate,
}


def _last_detectable(records, party):
    """Truncation is visible only up to the party's last exchange with another party."""
    kinds = ("contribution", "partial")
    if party == COORDINATOR:
        return max(i for i, r in enumerate(records) if r.type in kinds)
    return max(i for i, r in enumerate(records) if r.type in kinds)


@settings(
    max_examples=60,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture],
)
@given(
    party=st.sampled_from([COORDINATOR, *AGENCIES]),
    op=st.sampled_from(sorted(OPS)),
    where=st.floats(0, 1, exclude_max=True),
)
def test_any_tampering_is_found_and_located(pristine, tmp_path_factory, party, op, where):
    base, coord0, agents0, keys = pristine
    tmp = tmp_path_factory.mktemp("t")
    for p in base.iterdir():
        shutil.copy(p, tmp / p.name)
    coord = tmp / coord0.name
    agents = {a: tmp / p.name for a, p in agents0.items()}
    path = coord if party == COORDINATOR else agents[party]
    records = read_log(path)
    # deleting the last record is a truncation; swapping needs a successor
    last = len(records) - 2 if op in ("reordered", "deleted") else len(records) - 1
    if op == "truncated":
        last = _last_detectable(records, party)
    index = int(where * (last + 1))
    OPS[op](path, index + 1)  # SQLite positions start at 1
    found = findings_of(check(coord, agents, keys), party)
    assert found, f"{op} record {index} of {party}'s log went unnoticed"
    first = found[0]
    expected = op.split(" ")[0]
    assert first.problem == expected, str(first)
    assert first.position == index, str(first)
    # the other parties' logs are not blamed
    others = [f for s in check(coord, agents, keys) if s.party != party for f in s.findings]
    assert not others, [str(f) for f in others]


def test_agent_truncation_after_last_exchange_is_invisible_and_documented(logs):
    """The limit of any log: records after the party's last exchange have no witness."""
    coord, agents, keys = logs
    records = read_log(agents["north"])
    assert records[-1].type == "anchor"
    _truncate(agents["north"], len(records))  # the final anchor only
    assert all(s.ok for s in check(coord, agents, keys))


# -- a coordinator rewriting its own log -------------------------------------------------------
def test_coordinator_rewrite_of_an_upload_is_caught_by_anchors(logs):
    coord, agents, keys = logs
    records = read_log(coord)
    k = next(i for i, r in enumerate(records) if r.type == "contribution" and r.job == "job-1")

    def forge(items):
        time, type_, job, round_, body = items[k]
        items[k] = (time, type_, job, round_, {**body, "sha256": "ab" * 32})
        return items

    rewrite(coord, keys[COORDINATOR], COORDINATOR, forge)
    alone = verify_log(read_log(coord), party=COORDINATOR)
    assert alone.ok  # consistent and correctly signed on its own
    found = findings_of(check(coord, agents, keys), COORDINATOR)
    assert found and found[0].problem == "rewritten"
    assert found[0].position == k, str(found[0])


def test_coordinator_deleting_and_resigning_is_caught(logs):
    coord, agents, keys = logs
    records = read_log(coord)
    k = next(i for i, r in enumerate(records) if r.type == "job" and r.job == "job-1")
    rewrite(coord, keys[COORDINATOR], COORDINATOR, lambda items: items[:k] + items[k + 1 :])
    assert verify_log(read_log(coord), party=COORDINATOR).ok
    found = findings_of(check(coord, agents, keys), COORDINATOR)
    assert found and found[0].problem == "rewritten"
    message = found[0].message
    assert "deleted" in message
    # the deleted record lies in the range the finding names
    first, last = (int(x) for x in message.split("records among records ")[1].split(" ")[0:3:2])
    assert first <= k <= last, message


def test_coordinator_with_a_new_key_is_caught(logs):
    coord, agents, keys = logs
    other = SigningKey.generate()

    def rekey(items):
        time, type_, job, round_, body = items[0]
        items[0] = (time, type_, job, round_, {**body, "public_key": other.public_key.hex()})
        return items

    rewrite(coord, other, COORDINATOR, rekey)
    found = findings_of(check(coord, agents, keys), COORDINATOR)
    assert found and found[0].problem == "key"


def test_agent_rewriting_its_log_is_caught_by_the_coordinators_log(logs):
    coord, agents, keys = logs
    records = read_log(agents["south"])
    k = next(i for i, r in enumerate(records) if r.type == "partial")

    rewrite(agents["south"], keys["south"], "south", lambda items: items[:k] + items[k + 1 :])
    found = findings_of(check(coord, agents, keys), "south")
    assert found and found[0].problem == "deleted", found
    assert f"round {records[k].round}" in found[0].message


def test_export_round_trip_and_verify_from_jsonl(logs, tmp_path):
    coord, _, _ = logs
    out = tmp_path / "coord.jsonl"
    n = export_jsonl(read_log(coord), out)
    assert n == len(read_log(coord)) == len(out.read_text().splitlines())
    assert read_log(out) == read_log(coord)
    with pytest.raises(AuditError, match="exists"):
        export_jsonl(read_log(coord), out)
    lines = out.read_text().splitlines()
    doc = json.loads(lines[3])
    doc["body"]["bytes"] = 1
    lines[3] = json.dumps(doc)
    out.write_text("\n".join(lines) + "\n")
    summary = verify_log(read_log(out))
    assert summary.findings[0].problem == "edited" and summary.findings[0].position == 3


# -- the command line ---------------------------------------------------------------------------
def test_cli_verify_and_export(logs, tmp_path, capsys):
    from fedcity.cli import main

    coord, agents, _ = logs
    assert main(["audit", "verify", str(agents["north"])]) == 0
    assert "north: " in capsys.readouterr().out
    out = tmp_path / "north.jsonl"
    assert main(["audit", "export", str(agents["north"]), "--out", str(out)]) == 0
    assert "wrote" in capsys.readouterr().out
    assert main(["audit", "verify", str(out)]) == 0
    assert main(["audit", "export", str(agents["north"]), "--out", str(out)]) == 1
    assert "exists" in capsys.readouterr().err
    _edit(agents["north"], 7)
    against = ["--against", *(str(p) for p in agents.values())]
    assert main(["audit", "verify", str(coord), *against]) == 1
    text = capsys.readouterr().out
    assert "coordinator: " in text and "edited [record 6]" in text
    assert text.count(": OK") == 3  # the coordinator, south and east
    assert main(["audit", "verify", str(tmp_path / "missing.sqlite")]) == 1
    assert "does not exist" in capsys.readouterr().err
    assert main(["audit", "verify", str(coord), "--against", str(coord)]) == 1
    assert "a second log of 'coordinator'" in capsys.readouterr().err
