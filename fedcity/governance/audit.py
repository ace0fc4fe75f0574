r"""Tamper-evident audit records: signed, hash-chained, cross-anchored (without I/O).

Every party (the coordinator and each agency's agent) keeps its own append-only log of what
it did with the federation's data: jobs submitted or seen, contributions sent or received
(the SHA-256 of the bytes), decryption shares, released results, refusals and budget
charges. A record is::

    seq      its position in the log (0, 1, 2, ...)
    time     UTC, ISO 8601 with milliseconds
    party    who keeps the log ("coordinator" or the agency's name)
    type     what happened (:data:`RECORD_TYPES`)
    job      the job id ("" when none)
    round    the round (None when none)
    body     details (a JSON object, see :data:`MAX_BODY_BYTES`)
    prev     the hash of record seq - 1 (32 zero bytes for record 0)
    hash     SHA-256 of the canonical encoding (:meth:`AuditRecord.encoding`)
    signature  the party's Ed25519 signature of ``b"fedcity.v1.audit\0" || hash``

Record 0 has type ``"open"`` and states the party's public key. The hash chain makes any
edited, deleted or reordered record visible (the next record's ``prev`` no longer matches, or
the content no longer matches its hash); the signature stops anyone without the party's key
from re-hashing an edit into a consistent chain. A party that rewrites its *own* log (it has
the key) is caught by **anchors**: the coordinator signs its chain head, ``(records, head)``
with domain ``b"fedcity.v1.audit-anchor\0"``, in its acknowledgement of every upload and the
agent stores that :class:`Anchor` in its own log; conversely the coordinator's log holds
every agency's signed upload (job, round, kind, SHA-256), which the agency's log must also
hold. :func:`verify_log` checks one log; :func:`cross_check` checks agents' logs against the
coordinator's; each returns :class:`Finding`\ s naming the first record at fault.

Pure computation: storage is :mod:`fedcity.governance.auditlog`.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from fedcity.crypto.errors import CryptoError
from fedcity.crypto.signing import SIGNATURE_BYTES, SigningKey, VerifyKey

__all__ = [
    "ANCHOR_DOMAIN",
    "AUDIT_DOMAIN",
    "COORDINATOR",
    "GENESIS",
    "MAX_BODY_BYTES",
    "RECORD_TYPES",
    "Anchor",
    "AuditChain",
    "AuditError",
    "AuditRecord",
    "Finding",
    "HeldAnchor",
    "LogSummary",
    "cross_check",
    "verify_log",
]

AUDIT_DOMAIN = b"fedcity.v1.audit\x00"
"""Signing domain of audit records."""
ANCHOR_DOMAIN = b"fedcity.v1.audit-anchor\x00"
"""Signing domain of chain-head anchors."""
GENESIS = bytes(32)
"""``prev`` of record 0."""
COORDINATOR = "coordinator"
"""The ``party`` of the coordinator's log."""
FORMAT = "fedcity.audit.v1"
"""First element of every record encoding (versioned)."""
RECORD_TYPES = frozenset(
    {
        "open",  # record 0: the party and its public key
        "job",  # a job submitted (coordinator) or first seen (agent)
        "contribution",  # a contribution sent (agent) or accepted (coordinator)
        "partial",  # a decryption share sent (agent) or accepted (coordinator)
        "decline",  # an assignment refused (agent) or an agency's refusal or departure
        "result",  # a job's end: released result (its SHA-256) or failure
        "anchor",  # the coordinator's signed chain head, received with an acknowledgement
        "budget",  # a privacy-budget charge or refusal
        "enroll",  # enrollment of an agency or a scientist
        "approve",  # a job approved by an agency's administrator
        "deny",  # a job denied by an agency's administrator
        "range-proof",  # a range-audit answer sent (agent) or accepted (coordinator)
        "exclusion",  # a range audit's outcome: agencies excluded from a round, or none
    }
)
"""Record types; the body's fields depend on the type."""
MAX_BODY_BYTES = 64 * 1024
"""Largest encoded body of one record."""
MAX_TEXT = 256
"""Longest party, type or job id."""
DIGEST_BYTES = 32


class AuditError(ValueError):
    """An invalid audit record, anchor or log; the message names the problem."""


def _canonical(value: Any) -> bytes:
    return json.dumps(
        value, sort_keys=True, separators=(",", ":"), ensure_ascii=True, allow_nan=False
    ).encode("ascii")


def _check_text(name: str, value: object, *, empty: bool = False) -> str:
    if not isinstance(value, str) or (not value and not empty) or len(value) > MAX_TEXT:
        raise AuditError(
            f"audit record: {name} must be a {'' if empty else 'non-empty '}string of at most "
            f"{MAX_TEXT} characters, got {value!r:.80}"
        )
    return value


def _check_body(body: object) -> dict[str, Any]:
    if not isinstance(body, Mapping):
        raise AuditError(f"audit record: body must be a JSON object, got {type(body).__name__}")
    try:
        encoded = _canonical(dict(body))
    except (TypeError, ValueError) as exc:
        raise AuditError(f"audit record: body is not JSON-ready: {exc}") from exc
    if len(encoded) > MAX_BODY_BYTES:
        raise AuditError(
            f"audit record: body of {len(encoded)} bytes exceeds {MAX_BODY_BYTES} bytes"
        )
    parsed: dict[str, Any] = json.loads(encoded)
    return parsed


def now_iso() -> str:
    """The current UTC time as stored in records."""
    return dt.datetime.now(dt.UTC).isoformat(timespec="milliseconds")


@dataclass(frozen=True)
class AuditRecord:
    """One signed, chained record (see the module docstring).

    Construct records with :class:`AuditChain`; this class only holds and checks them.
    """

    seq: int
    time: str
    party: str
    type: str
    job: str
    round: int | None
    body: Mapping[str, Any]
    prev: bytes
    hash: bytes
    signature: bytes

    def encoding(self) -> bytes:
        """The canonical bytes ``hash`` is the SHA-256 of (compact, sorted, ASCII JSON)."""
        return _canonical(
            [
                FORMAT,
                self.seq,
                self.time,
                self.party,
                self.type,
                self.job,
                self.round,
                dict(self.body),
                self.prev.hex(),
            ]
        )

    def computed_hash(self) -> bytes:
        """SHA-256 of :meth:`encoding` (equal to ``hash`` unless the record was edited)."""
        return hashlib.sha256(self.encoding()).digest()

    def signed_by(self, key: VerifyKey) -> bool:
        """Whether ``signature`` is ``key``'s signature of ``hash``."""
        return key.verify_message(AUDIT_DOMAIN, self.hash, self.signature)

    def to_json_dict(self) -> dict[str, Any]:
        """JSON-ready form (bytes as lowercase hex), as written by ``fedcity audit export``."""
        return {
            "seq": self.seq,
            "time": self.time,
            "party": self.party,
            "type": self.type,
            "job": self.job,
            "round": self.round,
            "body": dict(self.body),
            "prev": self.prev.hex(),
            "hash": self.hash.hex(),
            "signature": self.signature.hex(),
        }

    @classmethod
    def from_json_dict(cls, data: Mapping[str, Any]) -> AuditRecord:
        """Parse :meth:`to_json_dict`'s output; no signature or chain check (see verify_log).

        Raises
        ------
        AuditError
            A missing field or one of the wrong type or length.
        """
        if not isinstance(data, Mapping):
            raise AuditError("an audit record is a JSON object")
        missing = sorted(
            {"seq", "time", "party", "type", "job", "round", "body", "prev", "hash", "signature"}
            - set(data)
        )
        if missing:
            raise AuditError(f"audit record lacks field(s) {missing}")
        seq, rnd = data["seq"], data["round"]
        if isinstance(seq, bool) or not isinstance(seq, int) or seq < 0:
            raise AuditError(f"audit record: seq must be a non-negative integer, got {seq!r}")
        if rnd is not None and (isinstance(rnd, bool) or not isinstance(rnd, int) or rnd < 0):
            raise AuditError(f"audit record: round must be null or >= 0, got {rnd!r}")

        def raw(name: str, size: int) -> bytes:
            value = data[name]
            try:
                out = bytes.fromhex(value) if isinstance(value, str) else b""
            except ValueError:
                out = b""
            if len(out) != size:
                raise AuditError(f"audit record {seq}: {name} must be {size} bytes in hex")
            return out

        return cls(
            seq=seq,
            time=_check_text("time", data["time"]),
            party=_check_text("party", data["party"]),
            type=_check_text("type", data["type"]),
            job=_check_text("job", data["job"], empty=True),
            round=rnd,
            body=_check_body(data["body"]),
            prev=raw("prev", DIGEST_BYTES),
            hash=raw("hash", DIGEST_BYTES),
            signature=raw("signature", SIGNATURE_BYTES),
        )


@dataclass(frozen=True)
class Anchor:
    r"""A party's signed chain head: its log held ``records`` records, the last hashing to ``head``.

    Attributes
    ----------
    records : int
    head : bytes
        SHA-256 of record ``records - 1``.
    public_key : bytes
        The signer's Ed25519 key (32 bytes).
    signature : bytes
        Its signature of ``b"fedcity.v1.audit-anchor\0" || records (8 bytes, big-endian) ||
        head``.
    """

    records: int
    head: bytes
    public_key: bytes
    signature: bytes

    @staticmethod
    def message(records: int, head: bytes) -> bytes:
        """What an anchor's signature covers (after the domain)."""
        return int(records).to_bytes(8, "big") + bytes(head)

    @classmethod
    def sign(cls, key: SigningKey, records: int, head: bytes) -> Anchor:
        """``key``'s anchor of a log of ``records`` records ending in ``head``."""
        if isinstance(records, bool) or not isinstance(records, int) or records < 1:
            raise AuditError(f"an anchor covers at least one record, got {records!r}")
        if not isinstance(head, bytes) or len(head) != DIGEST_BYTES:
            raise AuditError("an anchor's head is a 32-byte SHA-256")
        signature = key.sign_message(ANCHOR_DOMAIN, cls.message(records, head))
        return cls(records, head, key.public_key.raw, signature)

    def verify(self) -> bool:
        """Whether the signature is valid under ``public_key`` (and the fields well-formed)."""
        if (
            isinstance(self.records, bool)
            or not isinstance(self.records, int)
            or not 1 <= self.records < 2**63
            or not isinstance(self.head, bytes)
            or len(self.head) != DIGEST_BYTES
        ):
            return False
        try:
            key = VerifyKey(bytes(self.public_key))
        except CryptoError:
            return False
        return key.verify_message(
            ANCHOR_DOMAIN, self.message(self.records, self.head), bytes(self.signature)
        )

    def to_json_dict(self) -> dict[str, Any]:
        """The fields as stored in an ``"anchor"`` record's body (hex)."""
        return {
            "records": self.records,
            "head": self.head.hex(),
            "public_key": self.public_key.hex(),
            "signature": self.signature.hex(),
        }

    @classmethod
    def from_json_dict(cls, data: Mapping[str, Any]) -> Anchor:
        """Parse :meth:`to_json_dict`'s output.

        Raises
        ------
        AuditError
        """
        try:
            records = data["records"]
            if isinstance(records, bool) or not isinstance(records, int):
                raise TypeError("records")
            return cls(
                records,
                bytes.fromhex(data["head"]),
                bytes.fromhex(data["public_key"]),
                bytes.fromhex(data["signature"]),
            )
        except (KeyError, TypeError, ValueError) as exc:
            raise AuditError(f"malformed anchor: {exc}") from exc


class AuditChain:
    """Builds a party's next records: chains and signs them (no storage).

    Parameters
    ----------
    party : str
        ``"coordinator"`` or the agency's name.
    key : SigningKey
        The party's Ed25519 key (an agency's ``signing-key.json``; the coordinator's audit
        key).
    records : int, default 0
        Records already in the log.
    head : bytes, default GENESIS
        The hash of its last record.
    """

    def __init__(
        self, party: str, key: SigningKey, *, records: int = 0, head: bytes = GENESIS
    ) -> None:
        self.party = _check_text("party", party)
        if not isinstance(key, SigningKey):
            raise AuditError(f"key must be a SigningKey, got {type(key).__name__}")
        if isinstance(records, bool) or not isinstance(records, int) or records < 0:
            raise AuditError(f"records must be a non-negative integer, got {records!r}")
        if not isinstance(head, bytes) or len(head) != DIGEST_BYTES:
            raise AuditError("head must be a 32-byte SHA-256")
        if (records == 0) != (head == GENESIS):
            raise AuditError("a log's head is the genesis value exactly when it is empty")
        self.key = key
        self.records = records
        self.head = head

    def next(
        self,
        type: str,
        *,
        job: str = "",
        round: int | None = None,
        body: Mapping[str, Any] | None = None,
        time: str | None = None,
    ) -> AuditRecord:
        """The next record (signed); call :meth:`advance` once it is stored.

        Raises
        ------
        AuditError
            An unknown type, a malformed field, an oversized body, or an ``"open"`` record
            anywhere but first (or a first record that is not ``"open"``).
        """
        if type not in RECORD_TYPES:
            raise AuditError(f"unknown audit record type {type!r}; types: {sorted(RECORD_TYPES)}")
        if (type == "open") != (self.records == 0):
            raise AuditError("record 0, and only record 0, has type 'open'")
        _check_text("job", job, empty=True)
        if round is not None and (
            isinstance(round, bool) or not isinstance(round, int) or round < 0
        ):
            raise AuditError(f"round must be None or a non-negative integer, got {round!r}")
        unsigned = AuditRecord(
            seq=self.records,
            time=_check_text("time", time or now_iso()),
            party=self.party,
            type=type,
            job=job,
            round=round,
            body=_check_body(body or {}),
            prev=self.head,
            hash=b"",
            signature=b"",
        )
        digest = unsigned.computed_hash()
        return AuditRecord(
            **{
                **unsigned.__dict__,
                "hash": digest,
                "signature": self.key.sign_message(AUDIT_DOMAIN, digest),
            }
        )

    def opening(self, time: str | None = None) -> AuditRecord:
        """Record 0: the party and its public key."""
        return self.next(
            "open", body={"party": self.party, "public_key": self.key.public_key.hex()}, time=time
        )

    def advance(self, record: AuditRecord) -> None:
        """Move the head past ``record`` (once it is durably stored)."""
        if record.seq != self.records or record.prev != self.head:
            raise AuditError(f"record {record.seq} does not follow the head ({self.records})")
        self.records += 1
        self.head = record.hash

    def anchor(self) -> Anchor:
        """The signed head of this party's log (at least one record must be stored)."""
        return Anchor.sign(self.key, self.records, self.head)


# -- verification ---------------------------------------------------------------------------
@dataclass(frozen=True)
class Finding:
    """One problem found in a log.

    Attributes
    ----------
    party : str
        Whose log.
    problem : str
        ``"edited"``, ``"deleted"``, ``"reordered"``, ``"truncated"``, ``"rewritten"``,
        ``"key"`` (signed by another key than expected), ``"missing"`` (a record another
        party's log proves should be there) or ``"empty"``.
    position : int or None
        The first record at fault (its position in the stored order), if one can be named.
    message : str
        A sentence naming the record and what is wrong with it.
    """

    party: str
    problem: str
    position: int | None
    message: str

    def __str__(self) -> str:
        return f"{self.party}: {self.message}"


@dataclass
class LogSummary:
    """What :func:`verify_log` established about one log."""

    party: str
    records: int
    public_key: VerifyKey | None
    findings: list[Finding] = field(default_factory=list)
    anchors: int = 0
    """Heads of this log held by other parties that were checked."""

    @property
    def ok(self) -> bool:
        """No finding."""
        return not self.findings


def _key_of(record: AuditRecord) -> VerifyKey | None:
    if record.type != "open" or record.seq != 0:
        return None
    try:
        return VerifyKey.from_hex(str(record.body.get("public_key")))
    except CryptoError:
        return None


def _describe(r: AuditRecord) -> str:
    what = f"seq {r.seq}, {r.type}"
    if r.job:
        what += f", job {r.job}"
    if r.round is not None:
        what += f", round {r.round}"
    return what


def verify_log(
    records: Sequence[AuditRecord],
    *,
    key: VerifyKey | None = None,
    party: str | None = None,
    anchors: Sequence[HeldAnchor] = (),
) -> LogSummary:
    """Check one log: every record's hash, signature, place in the chain, and anchors.

    Parameters
    ----------
    records : sequence of AuditRecord
        In stored order.
    key : VerifyKey, optional
        The party's known public key (e.g. an agency's from ``federation-public.json``);
        without it the key stated in record 0 is used, which only the anchors held by other
        parties can confirm.
    party : str, optional
        The expected party (default: the one record 0 names).
    anchors : sequence of HeldAnchor
        Heads of this log held by others. A log shorter than an anchor says it was is
        truncated; a record that differs from an anchored head (or is not the upload the
        anchor acknowledged) was rewritten, somewhere after the last anchor that matches.

    Returns
    -------
    LogSummary
        With the first structural finding (the chain cannot be trusted past it) and any
        anchor findings.
    """
    name = party or (records[0].party if records else "log")
    summary = LogSummary(name, len(records), key)
    findings = summary.findings
    if not records:
        if anchors:
            held = max(anchors, key=lambda h: h.anchor.records)
            n = held.anchor.records
            findings.append(
                Finding(
                    name,
                    "truncated",
                    0,
                    f"the log holds no record, but {held.holder} holds its signed head after "
                    f"{n} records: records 0 to {n - 1} were cut off",
                )
            )
        else:
            findings.append(
                Finding(name, "empty", None, "the log holds no record, not even record 0")
            )
        return summary
    stated = next((k for k in map(_key_of, records) if k is not None), None)
    if key is None:
        key = stated
        summary.public_key = stated
    elif stated is not None and stated != key:
        findings.append(
            Finding(
                name,
                "key",
                0,
                f"record 0 states key {stated.hex()[:16]}…, not the party's key "
                f"{key.hex()[:16]}…: the log was re-created with another key",
            )
        )
        return summary
    prev = GENESIS
    seqs = {r.seq: i for i, r in enumerate(records)}
    for i, r in enumerate(records):
        where = f"record at position {i} ({_describe(r)})"
        if r.party != name:
            findings.append(Finding(name, "edited", i, f"{where} names party {r.party!r}"))
            break
        if r.computed_hash() != r.hash:
            findings.append(
                Finding(
                    name, "edited", i, f"{where} was edited: its content does not match its hash"
                )
            )
            break
        if key is None:
            findings.append(
                Finding(
                    name,
                    "deleted" if records[0].seq != 0 else "edited",
                    0,
                    "record 0 (which states the party's key) is missing or was altered; "
                    "no signature can be checked",
                )
            )
            break
        if not r.signed_by(key):
            findings.append(
                Finding(
                    name,
                    "edited",
                    i,
                    f"{where} was edited (its hash recomputed): its signature does not verify "
                    "under the party's key",
                )
            )
            break
        if r.seq != i:
            if r.seq < i or i in seqs:
                j = seqs.get(i)
                at = f"; record {i} is at position {j}" if j is not None else ""
                findings.append(
                    Finding(
                        name,
                        "reordered",
                        i,
                        f"records were reordered: position {i} holds record {r.seq}{at}",
                    )
                )
            else:
                gap = f"record {i}" if r.seq == i + 1 else f"records {i} to {r.seq - 1}"
                findings.append(
                    Finding(
                        name,
                        "deleted",
                        i,
                        f"{gap} deleted: position {i} holds record {r.seq} ({_describe(r)})",
                    )
                )
            break
        if r.prev != prev:
            findings.append(
                Finding(
                    name,
                    "rewritten",
                    max(i - 1, 0),
                    f"record {i - 1} was replaced by another record signed with the party's "
                    f"key: record {i} ({_describe(r)}) chains to a different predecessor",
                )
            )
            break
        prev = r.hash
    confirmed = 0
    summary.anchors = len(anchors)
    for held in sorted(anchors, key=lambda h: h.anchor.records):
        finding = _check_anchor(name, records, key, held, confirmed)
        if finding is not None:
            findings.append(finding)
            break
        confirmed = max(confirmed, held.anchor.records)
    return summary


@dataclass(frozen=True)
class HeldAnchor:
    """An anchor of a log as another party holds it.

    Attributes
    ----------
    anchor : Anchor
    holder : str
        Where it is held (named in findings).
    upload : mapping or None
        What the anchored record must be (``type``, ``job``, ``round``, ``agency``,
        ``sha256``): the upload the anchor acknowledged, as the holder recorded it.
    """

    anchor: Anchor
    holder: str
    upload: Mapping[str, Any] | None = None


def _matches(record: AuditRecord, upload: Mapping[str, Any]) -> bool:
    return (
        record.type == upload.get("type")
        and record.job == upload.get("job")
        and record.round == upload.get("round")
        and record.body.get("agency") == upload.get("agency")
        and record.body.get("sha256") == upload.get("sha256")
    )


def _check_anchor(
    name: str,
    records: Sequence[AuditRecord],
    key: VerifyKey | None,
    held: HeldAnchor,
    confirmed: int,
) -> Finding | None:
    anchor, holder, upload = held.anchor, held.holder, held.upload
    n = anchor.records
    if not anchor.verify():
        return Finding(
            holder,
            "edited",
            None,
            f"an anchor of {name}'s log held by {holder} has an invalid signature (the "
            "holder's record of it was altered)",
        )
    if key is not None and anchor.public_key != key.raw:
        return Finding(
            name,
            "key",
            None,
            f"{holder} holds an anchor of {name}'s log signed with key "
            f"{anchor.public_key.hex()[:16]}…, but the log is signed with {key.hex()[:16]}…: "
            "the log was re-created with another key",
        )
    if n > len(records):
        return Finding(
            name,
            "truncated",
            len(records),
            f"the log holds {len(records)} records, but {holder} holds its signed head after "
            f"{n} records: records {len(records)} to {n - 1} were cut off",
        )
    target = records[n - 1]
    if target.hash == anchor.head and (upload is None or _matches(target, upload)):
        return None
    first = confirmed  # records before it are confirmed by earlier anchors
    where = f"records {first} to {n - 1}" if first < n - 1 else f"record {n - 1}"
    position: int | None = None
    if upload is None:
        detail = f"a record among {where} was changed"
    else:
        what = f"{upload.get('type')} of job {upload.get('job')} round {upload.get('round')}"
        found = [i for i, r in enumerate(records) if _matches(r, upload)]
        if not found:
            position = n - 1
            detail = f"record {n - 1}, its record of {holder}'s {what}, was edited or deleted"
        elif found[0] < n - 1:
            detail = (
                f"{holder}'s {what} is now record {found[0]}, not {n - 1}: records among "
                f"{where} were deleted"
            )
        elif found[0] > n - 1:
            detail = (
                f"{holder}'s {what} is now record {found[0]}, not {n - 1}: records were "
                f"inserted among {where}"
            )
        elif first == n - 1:
            position = n - 1
            detail = f"record {n - 1} was edited"
        else:
            detail = (
                f"record {n - 1} ({what}) is intact but chains to a different history: a "
                f"record among records {first} to {n - 2} was changed"
            )
    return Finding(
        name,
        "rewritten",
        position,
        f"the log was rewritten after the heads it signed: {detail} (checked against the "
        f"head it signed after {n} records, held by {holder})",
    )


def _anchors_in(records: Sequence[AuditRecord]) -> list[tuple[int, AuditRecord, Anchor]]:
    out = []
    for i, r in enumerate(records):
        if r.type == "anchor" and isinstance(r.body.get("anchor"), Mapping):
            try:
                out.append((i, r, Anchor.from_json_dict(r.body["anchor"])))
            except AuditError:
                continue
    return out


def _upload_key(r: AuditRecord, agency: str) -> tuple[str, str, int | None, str, str]:
    return (r.type, r.job, r.round, agency, str(r.body.get("sha256", "")))


def cross_check(
    coordinator: Sequence[AuditRecord],
    agents: Mapping[str, Sequence[AuditRecord]],
    *,
    agency_keys: Mapping[str, VerifyKey] | None = None,
) -> list[LogSummary]:
    """Verify the coordinator's log and agents' logs against each other.

    - each log on its own (:func:`verify_log`), agencies under their keys from
      ``agency_keys`` (``federation-public.json``) when given;
    - the coordinator's log against every anchor the agents hold (a coordinator that cut
      or rewrote its log, even re-signing it with its own key, no longer matches the heads
      it signed for the agents; the first such record is named, narrowed down by the
      agency's own record of the upload the anchor acknowledged);
    - every agent's log against the coordinator's: each upload the coordinator recorded
      from that agency (with the agency's upload signature) must be in the agency's log.

    Parameters
    ----------
    coordinator : sequence of AuditRecord
    agents : mapping of str to sequence of AuditRecord
        Agency name → its log.
    agency_keys : mapping of str to VerifyKey, optional

    Returns
    -------
    list of LogSummary
        The coordinator's first, then the agents' in name order.
    """
    keys = dict(agency_keys or {})
    held: list[HeldAnchor] = []
    for agency, records in sorted(agents.items()):
        for i, r, anchor in _anchors_in(records):
            upload = r.body.get("upload")
            held.append(
                HeldAnchor(
                    anchor,
                    f"agency {agency} (its record {i}, {_describe(r)})",
                    dict(upload) if isinstance(upload, Mapping) else None,
                )
            )
    coord = verify_log(coordinator, party=COORDINATOR, anchors=held)
    out = [coord]
    for agency, records in sorted(agents.items()):
        summary = verify_log(records, key=keys.get(agency), party=agency)
        empty = [f.problem for f in summary.findings] == ["empty"]
        if summary.ok or empty:
            missing = _missing_uploads(agency, coordinator, records)
            if missing is not None:
                summary.findings[:] = [missing]
        out.append(summary)
    return out


def _missing_uploads(
    agency: str, coordinator: Sequence[AuditRecord], records: Sequence[AuditRecord]
) -> Finding | None:
    """The first upload the coordinator recorded from ``agency`` that its log lacks."""
    kinds = ("contribution", "partial")
    where = {_upload_key(r, agency): i for i, r in enumerate(records) if r.type in kinds}
    theirs = [
        (i, c)
        for i, c in enumerate(coordinator)
        if c.type in kinds and c.body.get("agency") == agency
    ]
    last_found = -1  # the agent's record of the latest upload it does hold
    for n, (i, c) in enumerate(theirs):
        key = _upload_key(c, agency)
        if key in where:
            last_found = where[key]
            continue
        what = (
            f"the log lacks its {c.type} to job {c.job} round {c.round} (SHA-256 "
            f"{str(c.body.get('sha256'))[:16]}…), which the coordinator recorded as its record "
            f"{i} with {agency}'s upload signature"
        )
        if all(_upload_key(o, agency) not in where for _, o in theirs[n:]):
            return Finding(
                agency,
                "truncated",
                len(records),
                f"{what}: the log was cut off after its record {len(records) - 1}",
            )
        return Finding(
            agency,
            "deleted",
            None,
            f"{what}: a record after its record {last_found} was deleted (and the log re-signed)",
        )
    return None
