"""Conversions between the protocol core and ``fedcity.v1`` messages, without I/O.

Everything here validates what it reads and raises :class:`MessageError` (a ``ValueError``)
with a precise message; the gRPC shells map it to ``INVALID_ARGUMENT``.
"""

from __future__ import annotations

import hashlib
import json
import math
from collections.abc import Iterable, Iterator, Mapping
from typing import Any

from fedcity.core.tasks import LOCAL_STEPS, Task, TaskRequest
from fedcity.crypto import CryptoError
from fedcity.crypto.serde import packing_spec_from_proto, packing_spec_to_proto
from fedcity.data.dataset import FeatureSpec
from fedcity.v1 import federation_pb2 as fpb

__all__ = [
    "CHUNK_BYTES",
    "MAX_MESSAGE_BYTES",
    "MAX_PAYLOAD_BYTES",
    "MessageError",
    "assemble",
    "assignment_to_task",
    "chunks",
    "feature_spec_from_json",
    "feature_spec_to_json",
    "parse_json_object",
    "task_to_assignment",
]

CHUNK_BYTES = 1 << 20
"""Largest data field of one Chunk (1 MiB)."""
MAX_MESSAGE_BYTES = 4 << 20
"""gRPC message-size limit set on every channel and server (4 MiB)."""
MAX_PAYLOAD_BYTES = 1 << 30
"""Largest payload a stream may carry (1 GiB)."""


class MessageError(ValueError):
    """A message that is well-formed protobuf but not a valid fedcity message."""


def parse_json_object(text: str, what: str) -> dict[str, Any]:
    """Parse a JSON object field, refusing NaN/Infinity and non-objects."""
    if not text:
        return {}

    def no_constants(name: str) -> Any:
        raise MessageError(f"{what}: {name} is not allowed in JSON")

    try:
        value = json.loads(text, parse_constant=no_constants)
    except json.JSONDecodeError as exc:
        raise MessageError(f"{what} is not valid JSON (line {exc.lineno}: {exc.msg})") from exc
    if not isinstance(value, dict):
        raise MessageError(f"{what} must be a JSON object")
    return value


# -- feature specs ----------------------------------------------------------------------------
def feature_spec_to_json(spec: FeatureSpec) -> str:
    """The declared columns of a dataset as canonical JSON (sorted keys)."""
    return json.dumps(
        {
            "numeric": list(spec.numeric),
            "categorical": {c: list(v) for c, v in spec.categorical.items()},
            "label": spec.label,
            "weight": spec.weight,
        },
        sort_keys=True,
    )


def feature_spec_from_json(text: str) -> FeatureSpec:
    """Inverse of :func:`feature_spec_to_json`, validated by :class:`FeatureSpec`."""
    data = parse_json_object(text, "feature spec")
    try:
        return FeatureSpec(
            numeric=tuple(data["numeric"]),
            categorical={str(c): tuple(v) for c, v in dict(data.get("categorical", {})).items()},
            label=str(data["label"]),
            weight=data.get("weight"),
        )
    except KeyError as exc:
        raise MessageError(f"feature spec lacks {exc}") from exc
    except (TypeError, ValueError) as exc:
        raise MessageError(f"invalid feature spec: {exc}") from exc


# -- tasks ------------------------------------------------------------------------------------
def task_to_assignment(task: Task, action: int, *, summands_min: int) -> fpb.Assignment:
    """What an agent needs to act on ``task``."""
    req = task.request
    return fpb.Assignment(
        job_id=task.job_id,
        round=task.round,
        action=action,  # type: ignore[arg-type]
        kind=req.kind,
        params_json=json.dumps(dict(req.params), sort_keys=True, allow_nan=False),
        request_length=req.length,
        clip=req.clip,
        precision_bits=req.precision_bits,
        integer_valued=req.integer_valued,
        label=req.label,
        private=req.private,
        spec=packing_spec_to_proto(task.spec),
        dp_json="" if task.dp is None else json.dumps(dict(task.dp), sort_keys=True),
        summands_min=summands_min,
    )


def assignment_to_task(msg: fpb.Assignment) -> Task:
    """Rebuild the :class:`Task` an agency runs; refuses unknown (unvetted) kinds."""
    if msg.kind not in LOCAL_STEPS:
        raise MessageError(f"task kind {msg.kind!r} is not vetted by this agent")
    if not msg.job_id:
        raise MessageError("assignment lacks a job id")
    if not math.isfinite(msg.clip) or msg.clip <= 0:
        raise MessageError(f"assignment clip must be positive and finite, got {msg.clip}")
    try:
        request = TaskRequest(
            msg.kind,
            parse_json_object(msg.params_json, "task parameters"),
            int(msg.request_length),
            clip=msg.clip,
            precision_bits=msg.precision_bits,
            integer_valued=msg.integer_valued,
            label=msg.label,
            private=msg.private,
        )
        spec = packing_spec_from_proto(msg.spec)
    except (ValueError, CryptoError) as exc:
        raise MessageError(f"invalid assignment: {exc}") from exc
    dp = parse_json_object(msg.dp_json, "DP parameters") if msg.dp_json else None
    return Task(msg.job_id, msg.round, request, spec, dp=dp)


# -- chunked payloads -------------------------------------------------------------------------
def chunks(
    payload: bytes,
    *,
    job_id: str,
    round: int,
    agency: str,
    kind: int,
    chunk_bytes: int = CHUNK_BYTES,
) -> Iterator[fpb.Chunk]:
    """Split ``payload`` into Chunk messages, the header (with size and SHA-256) first."""
    header = fpb.ChunkHeader(
        job_id=job_id,
        round=round,
        agency=agency,
        kind=kind,  # type: ignore[arg-type]
        total_bytes=len(payload),
        sha256=hashlib.sha256(payload).digest(),
    )
    first = True
    for start in range(0, max(len(payload), 1), chunk_bytes):
        piece = payload[start : start + chunk_bytes]
        yield fpb.Chunk(header=header, data=piece) if first else fpb.Chunk(data=piece)
        first = False


def assemble(
    stream: Iterable[fpb.Chunk], *, max_bytes: int = MAX_PAYLOAD_BYTES
) -> tuple[fpb.ChunkHeader, bytes]:
    """Join a chunk stream, checking the header, the size limits and the SHA-256."""
    header: fpb.ChunkHeader | None = None
    parts: list[bytes] = []
    size = 0
    for i, chunk in enumerate(stream):
        if i == 0:
            if not chunk.HasField("header"):
                raise MessageError("the first chunk must carry the header")
            header = chunk.header
            if header.total_bytes > max_bytes:
                raise MessageError(
                    f"payload of {header.total_bytes} bytes exceeds the limit of {max_bytes}"
                )
        elif chunk.HasField("header"):
            raise MessageError(f"chunk {i} carries a second header")
        if len(chunk.data) > CHUNK_BYTES:
            raise MessageError(
                f"chunk {i} holds {len(chunk.data)} bytes; the limit is {CHUNK_BYTES}"
            )
        size += len(chunk.data)
        assert header is not None
        if size > header.total_bytes:
            raise MessageError(f"stream carries more than the announced {header.total_bytes} bytes")
        parts.append(chunk.data)
    if header is None:
        raise MessageError("empty upload stream")
    if size != header.total_bytes:
        raise MessageError(f"stream ended after {size} of {header.total_bytes} bytes")
    payload = b"".join(parts)
    if hashlib.sha256(payload).digest() != header.sha256:
        raise MessageError("payload does not match the SHA-256 in its header")
    return header, payload


def job_params(spec: fpb.JobSpec) -> Mapping[str, Any]:
    """The job's parameters as a dict (validated JSON object)."""
    return parse_json_object(spec.params_json, "job parameters")
