"""A job's history in words, for the data scientist (``fedcity job logs``, ``job watch``).

Pure functions over a :class:`~fedcity.net.coordinator.runtime.JobRuntime` and its stored
events (without upload payloads): rounds are numbered from 1, as people count them.
"""

from __future__ import annotations

import datetime as dt
import json
from collections.abc import Sequence
from typing import Any

from fedcity.net import messages
from fedcity.net.coordinator.runtime import JobRuntime
from fedcity.net.store import Event

__all__ = ["departure_notice", "describe_job"]


def _when(unix: float) -> str:
    return dt.datetime.fromtimestamp(unix, dt.UTC).strftime("%Y-%m-%d %H:%M:%S")


def departure_notice(agency: str, reason: str) -> str:
    """One line telling the data scientist that ``agency`` left a job, and why."""
    return messages.clipped(f"{agency} left the job: {reason}", 600)


def _record_line(record: dict[str, Any]) -> str:
    number = int(record.get("round", 0)) + 1
    what = record.get("label") or record.get("kind") or "round"
    contributors = record.get("contributors") or []
    line = f"round {number} released: {what} ({len(contributors)} contributors"
    loss = record.get("loss")
    if isinstance(loss, int | float):
        line += f", loss {loss:.6g}"
    return line + ")"


def describe_job(rt: JobRuntime, events: Sequence[Event]) -> list[str]:
    """The job's submission, every stored event and released round, and its outcome.

    Parameters
    ----------
    rt : JobRuntime
        The job (running, recent or loaded from the store).
    events : sequence of Event
        Its events in order (payloads only for ``drop`` and ``cancel``: their reasons).
    """
    spec = rt.spec
    agencies = ", ".join(str(a) for a in spec.get("agencies", []))
    lines = [
        f"{_when(rt.created)} submitted by {rt.owner or '?'}: {spec.get('job_type')} on "
        f"{spec.get('dataset')!r} with {agencies} "
        f"(at least {spec.get('min_agencies')} contributors per round)"
    ]
    if events and events[0].seq > 0:
        lines.append(f"... {events[0].seq} earlier events not shown ...")
    records: dict[int, dict[str, Any]] = {}
    for text in rt.records:
        try:
            record = json.loads(text)
        except ValueError:
            continue
        if isinstance(record, dict):
            records[int(record.get("round", -1))] = record
    told: set[int] = set()

    def release_before(round_: int | None) -> None:
        for number in sorted(r for r in records if r not in told):
            if round_ is not None and number >= round_:
                break
            lines.append(_record_line(records[number]))
            told.add(number)

    for ev in events:
        release_before(ev.round)
        at = _when(ev.at)
        where = "" if ev.round is None else f"round {ev.round + 1}: "
        reason = "" if ev.payload is None else ev.payload.decode(errors="replace")
        if ev.type == "contribution":
            lines.append(f"{at} {where}{ev.agency} contributed")
        elif ev.type == "close":
            lines.append(f"{at} {where}collection closed")
        elif ev.type == "partial":
            lines.append(f"{at} {where}{ev.agency} sent its partial decryption")
        elif ev.type == "drop":
            lines.append(f"{at} {where}{ev.agency} left: {messages.clipped(reason, 500)}")
        elif ev.type == "cancel":
            lines.append(f"{at} cancelled: {messages.clipped(reason, 300)}")
    release_before(None)
    if rt.state == "failed":
        lines.append(f"failed after {rt.rounds_done} rounds: {rt.failure or 'no reason given'}")
    elif rt.state in ("succeeded", "cancelled"):
        lines.append(f"{rt.state} after {rt.rounds_done} rounds")
    else:
        lines.append(f"{rt.state}: {rt.rounds_done} rounds done")
    if rt.left and rt.state == "succeeded":
        lines.append(
            f"finished with {len(spec.get('agencies', [])) - len(rt.left)} of "
            f"{len(spec.get('agencies', []))} agencies; left: {', '.join(rt.left)}"
        )
    return lines
