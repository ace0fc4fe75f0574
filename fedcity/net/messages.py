"""Conversions between the protocol core and ``fedcity.v1`` messages, without I/O.

Everything here validates what it reads and raises :class:`MessageError` (a ``ValueError``)
with a precise message; the gRPC shells map it to ``INVALID_ARGUMENT``.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import itertools
import json
import math
import re
from collections.abc import Iterable, Iterator, Mapping, Sequence
from typing import Any

from fedcity.core.tasks import LOCAL_STEPS, Task, TaskRequest
from fedcity.crypto import CryptoError
from fedcity.crypto.serde import packing_spec_from_proto, packing_spec_to_proto
from fedcity.data.dataset import FeatureSpec
from fedcity.v1 import federation_pb2 as fpb

__all__ = [
    "CHUNK_BYTES",
    "MAX_CATEGORY_LEVELS",
    "MAX_DATASETS",
    "MAX_FEATURE_COLUMNS",
    "MAX_FEATURE_SPEC_BYTES",
    "MAX_JSON_BYTES",
    "MAX_JSON_DEPTH",
    "MAX_MESSAGE_BYTES",
    "MAX_NAME_CHARS",
    "MAX_PAYLOAD_BYTES",
    "MAX_REGISTRATION_BYTES",
    "MAX_STATUS_CHARS",
    "MAX_TASK_KINDS",
    "MAX_VERSION_CHARS",
    "SHOWN_CHARS",
    "MessageError",
    "assemble",
    "assignment_to_task",
    "check_job_id",
    "check_name",
    "check_text",
    "chunks",
    "clipped",
    "feature_spec_from_json",
    "feature_spec_to_json",
    "json_depth",
    "parse_json_object",
    "parse_registration",
    "registration_from_json",
    "shown",
    "status_message",
    "task_to_assignment",
]

CHUNK_BYTES = 1 << 20
"""Largest data field of one Chunk (1 MiB)."""
MAX_MESSAGE_BYTES = 4 << 20
"""gRPC message-size limit set on every channel and server (4 MiB)."""
MAX_PAYLOAD_BYTES = 1 << 30
"""Largest payload a stream may carry (1 GiB)."""


MAX_JSON_BYTES = 64 << 10
"""Largest JSON text a client may send in one field (job parameters, privacy settings; 64 KiB)."""
MAX_JSON_DEPTH = 16
"""Deepest nesting of arrays and objects in any JSON field (real specs need 3 to 6 levels)."""
MAX_FEATURE_SPEC_BYTES = 32 << 10
"""Largest feature spec, as sent and in its canonical form (32 KiB)."""
MAX_FEATURE_COLUMNS = 1000
"""Most columns (numeric plus categorical) one feature spec declares."""
MAX_CATEGORY_LEVELS = 1000
"""Most levels one categorical column declares."""
MAX_DATASETS = 32
"""Most datasets one agency registers."""
MAX_REGISTRATION_BYTES = 128 << 10
"""Largest registration: dataset names plus canonical feature specs (128 KiB), so that a
federation of 16 agencies at the limit lists in half of :data:`MAX_MESSAGE_BYTES`."""
MAX_NAME_CHARS = 64
"""Longest agency or dataset name (the ceremony's agency names are at most 64 characters)."""
MAX_VERSION_CHARS = 128
"""Longest software version an agent reports."""
MAX_TASK_KINDS = 64
"""Most task kinds an agent reports (each at most :data:`MAX_NAME_CHARS` characters)."""
MAX_STATUS_CHARS = 2000
"""Longest status message a call answers with (gRPC metadata is limited to about 8 KiB)."""
SHOWN_CHARS = 80
"""How much of a client-supplied value :func:`shown` keeps for messages and logs."""

_JOB_ID = re.compile(r"[0-9a-f]{12}")
_JSON_STRING = re.compile(r'"[^"\\]*(?:\\.[^"\\]*)*"?', re.DOTALL)
_NOT_BRACKET = re.compile(r"[^\[\]{}]+")
_BRACKET_STEP = {"[": 1, "{": 1, "]": -1, "}": -1}


class MessageError(ValueError):
    """A message that is well-formed protobuf but not a valid fedcity message."""


# -- showing client values --------------------------------------------------------------------
def shown(value: object, limit: int = SHOWN_CHARS) -> str:
    """``repr(value)`` for a message or a log line, cut after about ``limit`` characters.

    A longer value keeps its first ``limit`` characters followed by ``…(N chars)``, N being the
    length of the string (or of the representation, for other values).

    Examples
    --------
    >>> shown("district-01")
    "'district-01'"
    >>> shown("x" * 1000, limit=4)
    "'xxxx'…(1000 chars)"
    """
    if isinstance(value, str):
        if len(value) <= limit:
            return repr(value)
        return f"{value[:limit]!r}…({len(value)} chars)"
    text = repr(value)
    return clipped(text, limit)


def clipped(text: str, limit: int) -> str:
    """``text`` if it has at most ``limit`` characters, else its start and ``…(N chars)``."""
    return text if len(text) <= limit else f"{text[:limit]}…({len(text)} chars)"


def status_message(text: str) -> str:
    """``text`` cut to fit a call's status (gRPC sends it percent-encoded in metadata).

    At most :data:`MAX_STATUS_CHARS` characters, and fewer if the percent-encoded form of
    non-ASCII text would exceed three times that.
    """
    out = clipped(text, MAX_STATUS_CHARS)
    if out.isascii() and "%" not in out:
        return out
    budget = 3 * MAX_STATUS_CHARS
    for i, ch in enumerate(out):
        budget -= 1 if " " <= ch <= "~" and ch != "%" else 3 * len(ch.encode("utf-8", "replace"))
        if budget < 0:
            return f"{out[:i]}…({len(text)} chars)"
    return out


def check_job_id(value: str) -> str:
    """A job id as the coordinator makes them (12 lowercase hexadecimal characters).

    Raises
    ------
    MessageError
        Any other string; the message shows at most a few characters of it.
    """
    if not _JOB_ID.fullmatch(value):
        raise MessageError(f"job_id must be 12 hexadecimal characters, got {shown(value, 16)}")
    return value


def check_text(value: str, what: str, max_chars: int) -> str:
    """A printable client string (possibly empty) of at most ``max_chars`` characters."""
    if len(value) > max_chars:
        raise MessageError(f"{what} holds {len(value)} characters; the limit is {max_chars}")
    if not value.isprintable():
        raise MessageError(f"{what} {shown(value)} holds non-printable characters")
    return value


def check_name(value: str, what: str) -> str:
    """An agency or dataset name: 1 to :data:`MAX_NAME_CHARS` printable characters, unpadded."""
    if not value:
        raise MessageError(f"{what} must be non-empty")
    check_text(value, what, MAX_NAME_CHARS)
    if value != value.strip():
        raise MessageError(f"{what} {shown(value)} must not start or end with blanks")
    return value


# -- bounded JSON -----------------------------------------------------------------------------
def json_depth(text: str) -> int:
    """How deeply arrays and objects nest in ``text`` (brackets inside strings do not count).

    Exact for valid JSON and never less than what a parser would recurse into for invalid
    JSON; the scan runs in linear time without recursion.

    Examples
    --------
    >>> json_depth('{"a": [1, {"b": "[[["}]}')
    3
    """
    brackets = _NOT_BRACKET.sub("", _JSON_STRING.sub("", text))
    return max(itertools.accumulate(map(_BRACKET_STEP.__getitem__, brackets)), default=0)


def parse_json_object(
    text: str,
    what: str,
    *,
    max_bytes: int = MAX_JSON_BYTES,
    max_depth: int = MAX_JSON_DEPTH,
) -> dict[str, Any]:
    """Parse a JSON object field within size and depth limits, refusing NaN/Infinity.

    The limits are checked on the text before it is parsed, so no input reaches the parser's
    recursion limit. An empty text is the empty object.

    Parameters
    ----------
    text : str
    what : str
        The field's name for messages, e.g. ``"params_json"``.
    max_bytes : int, default MAX_JSON_BYTES
        Largest UTF-8 size of ``text``.
    max_depth : int, default MAX_JSON_DEPTH
        Deepest nesting of arrays and objects (``{}`` is depth 1).

    Returns
    -------
    dict

    Raises
    ------
    MessageError
        Too large, too deep, not JSON, or not an object; the message names ``what``, the
        limit and what was found.
    """
    if not text:
        return {}
    size = len(text) if len(text) > max_bytes else len(text.encode("utf-8", "surrogatepass"))
    if size > max_bytes:
        raise MessageError(f"{what} holds {size} bytes of JSON; the limit is {max_bytes}")
    depth = json_depth(text)
    if depth > max_depth:
        raise MessageError(f"{what} nests {depth} levels deep; the limit is {max_depth}")

    def no_constants(name: str) -> Any:
        raise MessageError(f"{what}: {name} is not allowed in JSON")

    try:
        value = json.loads(text, parse_constant=no_constants)
    except json.JSONDecodeError as exc:
        raise MessageError(f"{what} is not valid JSON (line {exc.lineno}: {exc.msg})") from exc
    except MessageError:
        raise
    except (ValueError, RecursionError) as exc:  # e.g. an integer beyond int_max_str_digits
        raise MessageError(f"{what} is not acceptable JSON: {clipped(str(exc), 200)}") from exc
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


def feature_spec_from_json(text: str, what: str = "feature spec") -> FeatureSpec:
    """Inverse of :func:`feature_spec_to_json`, validated by :class:`FeatureSpec`.

    The text is bounded by :data:`MAX_FEATURE_SPEC_BYTES`, the columns by
    :data:`MAX_FEATURE_COLUMNS` and each vocabulary by :data:`MAX_CATEGORY_LEVELS`.
    """
    data = parse_json_object(text, what, max_bytes=MAX_FEATURE_SPEC_BYTES)
    numeric = data.get("numeric")
    categorical = data.get("categorical", {})
    if "numeric" not in data or "label" not in data:
        raise MessageError(f"{what} lacks {'numeric' if 'numeric' not in data else 'label'!r}")
    if not isinstance(numeric, list):
        raise MessageError(f"{what}: numeric must be a JSON array of column names")
    if not isinstance(categorical, dict):
        raise MessageError(f"{what}: categorical must be a JSON object of column: levels")
    columns = len(numeric) + len(categorical)
    if columns > MAX_FEATURE_COLUMNS:
        raise MessageError(f"{what} declares {columns} columns; the limit is {MAX_FEATURE_COLUMNS}")
    for column, levels in categorical.items():
        if isinstance(levels, list) and len(levels) > MAX_CATEGORY_LEVELS:
            raise MessageError(
                f"{what}: categorical column {shown(column)} declares {len(levels)} levels; "
                f"the limit is {MAX_CATEGORY_LEVELS}"
            )
    try:
        return FeatureSpec(
            numeric=tuple(numeric),
            categorical={str(c): tuple(v) for c, v in categorical.items()},
            label=str(data["label"]),
            weight=data.get("weight"),
        )
    except (TypeError, ValueError) as exc:
        raise MessageError(f"invalid {what}: {clipped(str(exc), 300)}") from exc


def parse_registration(datasets: Sequence[fpb.DatasetInfo]) -> dict[str, FeatureSpec]:
    """The datasets an agency registers, checked against every registration limit.

    Parameters
    ----------
    datasets : sequence of DatasetInfo
        As a ``RegisterRequest`` carries them.

    Returns
    -------
    dict of str to FeatureSpec

    Raises
    ------
    MessageError
        More than :data:`MAX_DATASETS` datasets, an invalid or repeated name, an invalid or
        too large feature spec, or more than :data:`MAX_REGISTRATION_BYTES` in all.
    """
    if len(datasets) > MAX_DATASETS:
        raise MessageError(
            f"the registration declares {len(datasets)} datasets; the limit is {MAX_DATASETS}"
        )
    declared: dict[str, FeatureSpec] = {}
    total = 0
    for i, ds in enumerate(datasets):
        name = check_name(ds.name, f"datasets[{i}].name")
        if name in declared:
            raise MessageError(f"dataset {shown(name)} declared twice")
        spec = feature_spec_from_json(ds.feature_spec_json, f"feature spec of {name!r}")
        size = len(feature_spec_to_json(spec))
        if size > MAX_FEATURE_SPEC_BYTES:
            raise MessageError(
                f"the feature spec of {name!r} takes {size} bytes in canonical form; the limit "
                f"is {MAX_FEATURE_SPEC_BYTES}"
            )
        total += size + len(name.encode())
        declared[name] = spec
    if total > MAX_REGISTRATION_BYTES:
        raise MessageError(
            f"the registration takes {total} bytes (dataset names and canonical feature specs); "
            f"the limit is {MAX_REGISTRATION_BYTES}"
        )
    return declared


TABLE_COLUMN_TYPES = frozenset({"category", "integer", "float", "date", "text"})
"""Column types a query table declares."""


def table_schema_to_json(name: str, columns: Mapping[str, str]) -> str:
    """A query table's declared column types as canonical JSON (sorted keys)."""
    return json.dumps({"name": name, "columns": dict(columns)}, sort_keys=True)


def table_schema_from_json(text: str, what: str = "table schema") -> tuple[str, dict[str, str]]:
    """Inverse of :func:`table_schema_to_json`: the table's name and column types, checked.

    Raises
    ------
    MessageError
        Over :data:`MAX_FEATURE_SPEC_BYTES`, more than :data:`MAX_FEATURE_COLUMNS` columns,
        an invalid name or an unknown column type.
    """
    data = parse_json_object(text, what, max_bytes=MAX_FEATURE_SPEC_BYTES, max_depth=2)
    unknown = sorted(set(data) - {"name", "columns"})
    if unknown or "columns" not in data:
        raise MessageError(
            f'{what} must be {{"name": ..., "columns": {{...}}}}, got keys '
            f"{shown(sorted(data), 200)}"
        )
    raw_name = data.get("name")
    if not isinstance(raw_name, str):
        raise MessageError(f"{what}: name must be a JSON string")
    name = check_name(raw_name, f"{what}: name")
    columns = data["columns"]
    if not isinstance(columns, dict) or not columns:
        raise MessageError(f"{what}: columns must be a non-empty JSON object of column: type")
    if len(columns) > MAX_FEATURE_COLUMNS:
        raise MessageError(
            f"{what} declares {len(columns)} columns; the limit is {MAX_FEATURE_COLUMNS}"
        )
    for column, kind in columns.items():
        check_name(column, f"{what}: column name")
        if kind not in TABLE_COLUMN_TYPES:
            raise MessageError(
                f"{what}: column {shown(column)} has type {shown(kind)}; types: "
                f"{sorted(TABLE_COLUMN_TYPES)}"
            )
    return name, dict(columns)


def parse_tables(tables: Sequence[fpb.TableInfo]) -> dict[str, dict[str, str]]:
    """The query tables an agency registers (name → column types), within the limits.

    Raises
    ------
    MessageError
        More than :data:`MAX_DATASETS` tables, an invalid or repeated name, a schema naming
        another table, or more than :data:`MAX_REGISTRATION_BYTES` in all.
    """
    if len(tables) > MAX_DATASETS:
        raise MessageError(
            f"the registration declares {len(tables)} tables; the limit is {MAX_DATASETS}"
        )
    declared: dict[str, dict[str, str]] = {}
    total = 0
    for i, info in enumerate(tables):
        name = check_name(info.name, f"tables[{i}].name")
        if name in declared:
            raise MessageError(f"table {shown(name)} declared twice")
        inner, columns = table_schema_from_json(info.schema_json, f"schema of table {name!r}")
        if inner != name:
            raise MessageError(f"the schema of table {name!r} names table {shown(inner)}")
        total += len(table_schema_to_json(name, columns))
        declared[name] = columns
    if total > MAX_REGISTRATION_BYTES:
        raise MessageError(
            f"the registration's tables take {total} bytes; the limit is {MAX_REGISTRATION_BYTES}"
        )
    return declared


def registration_to_json(
    datasets: Mapping[str, FeatureSpec],
    tables: Mapping[str, Mapping[str, str]],
    kinds: Iterable[str] = (),
    min_set_difference: int = 0,
) -> str:
    """A registration as stored: datasets, query tables and the steps the agency allows.

    ``{"datasets": {name: spec}, "tables": {name: schema}, "kinds": [kind, ...]}``.
    """
    return json.dumps(
        {
            "datasets": {n: feature_spec_to_json(s) for n, s in datasets.items()},
            "tables": {n: table_schema_to_json(n, c) for n, c in tables.items()},
            "kinds": sorted(kinds),
            "min_set_difference": int(min_set_difference),
        },
        sort_keys=True,
    )


def stored_min_set_difference(text: str) -> int:
    """The ``min_set_difference`` a stored registration carries (0 if none)."""
    try:
        value = json.loads(text).get("min_set_difference", 0)
    except (ValueError, AttributeError):
        return 0
    return value if isinstance(value, int) and 0 <= value <= 1000 else 0


def registration_from_json(
    text: str,
) -> tuple[dict[str, FeatureSpec], dict[str, dict[str, str]], list[str] | None]:
    """A stored registration under today's limits: datasets, query tables, allowed steps.

    Registrations stored before query tables existed (``{dataset: feature spec JSON}``)
    are read as datasets only; before allowed steps were stored, the steps are None
    (unknown until the agency registers again).
    """
    data = parse_json_object(
        text, "stored registration", max_bytes=4 * MAX_REGISTRATION_BYTES, max_depth=2
    )
    kinds: list[str] | None = None
    extra = {"kinds", "min_set_difference"}
    if {"datasets", "tables"} <= set(data) <= {"datasets", "tables"} | extra and all(
        isinstance(data[k], dict) for k in ("datasets", "tables")
    ):
        sets, tables = data["datasets"], data["tables"]
        raw_kinds = data.get("kinds")
        if raw_kinds is not None:
            if not isinstance(raw_kinds, list) or len(raw_kinds) > MAX_TASK_KINDS:
                raise MessageError("stored registration: kinds must be a list of task kinds")
            kinds = [check_name(k, "stored task kind") for k in raw_kinds if isinstance(k, str)]
    else:
        sets, tables = data, {}
    for what, group in (("dataset", sets), ("table", tables)):
        if len(group) > MAX_DATASETS:
            raise MessageError(f"the stored registration declares {len(group)} {what}s")
        for name, spec in group.items():
            if not isinstance(spec, str):
                raise MessageError(
                    f"stored registration: {what} {shown(name)} is not a JSON string"
                )
    declared = parse_registration(
        [fpb.DatasetInfo(name=name, feature_spec_json=spec) for name, spec in sets.items()]
    )
    offered = parse_tables(
        [fpb.TableInfo(name=name, schema_json=spec) for name, spec in tables.items()]
    )
    return declared, offered, kinds


# -- tasks ------------------------------------------------------------------------------------
def task_to_assignment(task: Task, action: int, *, summands_min: int) -> fpb.Assignment:
    """What an agent needs to act on ``task``."""
    req = task.request
    params, coefs = _split_binary_model(req.params)
    return fpb.Assignment(
        job_id=task.job_id,
        round=task.round,
        action=action,  # type: ignore[arg-type]
        kind=req.kind,
        params_json=json.dumps(params, sort_keys=True, allow_nan=False),
        coefs_f8=coefs,
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


_BINARY_MODEL_KEY = "coefs_f8"
"""Task parameter holding a model as base64 of float64 bytes; it travels as raw bytes."""


def _split_binary_model(params: Mapping[str, Any]) -> tuple[dict[str, Any], bytes]:
    """Move a base64 model out of the JSON parameters so it travels as raw bytes.

    Anything that is not valid base64 of whole float64 values stays in the JSON untouched
    (the step's own validation then names the problem at the agency).
    """
    out = dict(params)
    text = out.get(_BINARY_MODEL_KEY)
    if not isinstance(text, str):
        return out, b""
    try:
        raw = base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError):
        return out, b""
    if len(raw) % 8 or base64.b64encode(raw).decode("ascii") != text:
        return out, b""
    del out[_BINARY_MODEL_KEY]
    return out, raw


def assignment_to_task(msg: fpb.Assignment) -> Task:
    """Rebuild the :class:`Task` an agency runs; refuses unknown (unvetted) kinds."""
    if msg.kind not in LOCAL_STEPS:
        raise MessageError(f"task kind {msg.kind!r} is not vetted by this agent")
    if not msg.job_id:
        raise MessageError("assignment lacks a job id")
    if not math.isfinite(msg.clip) or msg.clip <= 0:
        raise MessageError(f"assignment clip must be positive and finite, got {msg.clip}")
    params = parse_json_object(msg.params_json, "task parameters", max_bytes=MAX_MESSAGE_BYTES)
    if msg.coefs_f8:
        if _BINARY_MODEL_KEY in params:
            raise MessageError(
                f"assignment carries the model twice: as coefs_f8 bytes and as params_json "
                f"entry {_BINARY_MODEL_KEY!r}"
            )
        if len(msg.coefs_f8) > MAX_MESSAGE_BYTES or len(msg.coefs_f8) % 8:
            raise MessageError(
                f"assignment coefs_f8 must be whole float64 values within {MAX_MESSAGE_BYTES} "
                f"bytes, got {len(msg.coefs_f8)} bytes"
            )
        params[_BINARY_MODEL_KEY] = base64.b64encode(msg.coefs_f8).decode("ascii")
    try:
        request = TaskRequest(
            msg.kind,
            params,
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
    dp = (
        parse_json_object(msg.dp_json, "DP parameters", max_bytes=MAX_MESSAGE_BYTES)
        if msg.dp_json
        else None
    )
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
    signature: bytes = b"",
) -> Iterator[fpb.Chunk]:
    """Split ``payload`` into Chunk messages, the header (with size and SHA-256) first.

    ``signature`` is the uploading agency's signature of the payload's statement
    (:mod:`fedcity.crypto.signing`); it travels in the header.
    """
    header = fpb.ChunkHeader(
        job_id=job_id,
        round=round,
        agency=agency,
        kind=kind,  # type: ignore[arg-type]
        total_bytes=len(payload),
        sha256=hashlib.sha256(payload).digest(),
        signature=signature,
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
