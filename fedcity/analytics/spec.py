"""Declarative query specifications: what a data scientist asks, never code or SQL.

A :class:`QuerySpec` names one table, declares the public domain of every column it uses
(category levels, month levels, numeric clip ranges and fixed-point decimals), groups by
declared categorical columns, filters with simple comparisons, and lists aggregates. It is
validated twice before any agency works: structurally when parsed (:meth:`QuerySpec.from_dict`,
:meth:`QuerySpec.from_toml`), and against the registered :class:`TableSchema` of the table
(:meth:`QuerySpec.validate_against`). Every problem is a :class:`QueryError` whose message
names the offending part of the spec.

The canonical JSON form (:meth:`QuerySpec.to_json`) is deterministic: it travels as the job's
parameters, so every agency computes exactly the same vector layout.

Numbers are fixed-point: a numeric column with clip range ``[lo, hi]`` and ``decimals`` ``d``
is encoded per row as ``round(clip(x, lo, hi) * 10^d)``, an exact integer. ``d`` defaults to
0 for integer columns and to the largest value up to 6 that keeps the range within
:data:`MAX_RANGE_BITS` bits for float columns (or columns whose type is not yet known).
"""

from __future__ import annotations

import itertools
import json
import math
import re
import tomllib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

__all__ = [
    "AGGREGATE_FUNCS",
    "COLUMN_TYPES",
    "MAX_AGGREGATES",
    "MAX_CELLS",
    "MAX_LEVELS",
    "MAX_SPEC_BYTES",
    "Aggregate",
    "ColumnSpec",
    "Disclosure",
    "Filter",
    "GroupBy",
    "QueryError",
    "QuerySpec",
    "TableSchema",
]

COLUMN_TYPES = ("category", "integer", "float", "date", "text")
"""Column types a table schema may declare."""
NUMERIC_TYPES = ("integer", "float")
AGGREGATE_FUNCS = ("count", "sum", "mean", "var", "std", "ratio", "histogram", "quantile")
"""Aggregate functions of a query."""
OPS = ("==", "!=", "<", "<=", ">", ">=", "in", "not in")
"""Comparison operators of ``where`` filters."""
DATE_PARTS = ("month", "year")
"""How a date column is grouped."""

MAX_NAME = 128
MAX_SCHEMA_COLUMNS = 1024
MAX_LEVELS = 10_000
MAX_CELLS = 100_000
MAX_CELLS_3D = 1_000
"""Most cells of a query without DP grouped by three or more columns (suppression cost)."""
MAX_AGGREGATES = 64
MAX_BINS = 1_000
MAX_WHERE = 32
MAX_IN = 10_000
MAX_GROUP_BY = 8
MAX_DECIMALS = 9
MAX_RANGE_BITS = 40
"""Largest clip range, in bits of fixed-point units (keeps sums of squares in 128 bits)."""
MAX_SPEC_BYTES = 1_000_000
"""Largest canonical JSON of a spec (it travels in every task)."""
MAX_SCALE = 1e12
DEFAULT_MIN_COUNT = 10
DEFAULT_FLOAT_DECIMALS = 6

_AGG_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]{0,63}$")
_MONTH = re.compile(r"^\d{4}-(0[1-9]|1[0-2])$")
_YEAR = re.compile(r"^\d{4}$")
_DAY = re.compile(r"^\d{4}-(0[1-9]|1[0-2])-(0[1-9]|[12]\d|3[01])$")
RESERVED_NAMES = frozenset({"n_agencies", "status", "reason", "noise_scale", "cell"})
"""Result columns an aggregate may not be named after."""


class QueryError(ValueError):
    """A query specification (or its schema) is invalid; the message says where and why."""


def _check_name(what: str, name: object) -> str:
    if not isinstance(name, str) or not name or len(name) > MAX_NAME:
        raise QueryError(f"{what} must be a non-empty string of at most {MAX_NAME} characters")
    if any(ord(c) < 32 for c in name):
        raise QueryError(f"{what} {name!r} contains control characters")
    return name


def _no_unknown(what: str, given: Mapping[str, Any], allowed: Sequence[str]) -> None:
    unknown = sorted(set(given) - set(allowed))
    if unknown:
        raise QueryError(f"{what}: unknown key(s) {unknown}; allowed: {sorted(allowed)}")


def _number(what: str, value: object) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise QueryError(f"{what} must be a number, got {value!r}")
    x = float(value)
    if not math.isfinite(x):
        raise QueryError(f"{what} must be finite, got {value!r}")
    return x


def _mapping(what: str, value: object) -> Mapping[str, Any]:
    if not isinstance(value, Mapping):
        raise QueryError(f"{what} must be a table/object, got {type(value).__name__}")
    return value


# -- table schema ---------------------------------------------------------------------------
@dataclass(frozen=True, eq=True)
class TableSchema:
    """What an agency declares about one of its tables: names and types, never data.

    Parameters
    ----------
    name : str
        The table's name (queries refer to it).
    columns : mapping of str to str
        Column name to type, one of :data:`COLUMN_TYPES`.
    """

    name: str
    columns: Mapping[str, str]

    def __post_init__(self) -> None:
        _check_name("table name", self.name)
        cols = _mapping(f"table {self.name!r}: columns", self.columns)
        if not cols:
            raise QueryError(f"table {self.name!r} declares no columns")
        if len(cols) > MAX_SCHEMA_COLUMNS:
            raise QueryError(
                f"table {self.name!r} declares {len(cols)} columns; the limit is "
                f"{MAX_SCHEMA_COLUMNS}"
            )
        for col, kind in cols.items():
            _check_name(f"table {self.name!r}: column name", col)
            if kind not in COLUMN_TYPES:
                raise QueryError(
                    f"table {self.name!r}: column {col!r} has type {kind!r}; "
                    f"types are {list(COLUMN_TYPES)}"
                )
        object.__setattr__(self, "columns", dict(cols))

    def __hash__(self) -> int:
        return hash((self.name, tuple(sorted(self.columns.items()))))

    def to_dict(self) -> dict[str, Any]:
        """``{"name": ..., "columns": {column: type}}``."""
        return {"name": self.name, "columns": dict(self.columns)}

    def to_json(self) -> str:
        """Canonical JSON."""
        return json.dumps(self.to_dict(), sort_keys=True, separators=(",", ":"))

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> TableSchema:
        """Parse ``{"name": ..., "columns": {...}}``."""
        data = _mapping("table schema", data)
        _no_unknown("table schema", data, ["name", "columns"])
        if "name" not in data or "columns" not in data:
            raise QueryError('a table schema needs "name" and "columns"')
        return cls(data["name"], _mapping("table schema columns", data["columns"]))

    @classmethod
    def from_json(cls, text: str) -> TableSchema:
        """Parse the JSON form."""
        if len(text) > MAX_SPEC_BYTES:
            raise QueryError(f"table schema JSON exceeds {MAX_SPEC_BYTES} bytes")
        try:
            return cls.from_dict(json.loads(text))
        except json.JSONDecodeError as exc:
            raise QueryError(f"table schema is not valid JSON: {exc}") from exc


# -- parts of a query -----------------------------------------------------------------------
@dataclass(frozen=True)
class ColumnSpec:
    """The public domain a query declares for one column.

    Attributes
    ----------
    type : str or None
        The column's type if declared (filled in by :meth:`QuerySpec.validate_against`).
    levels : tuple of str or None
        Category levels, or ``"YYYY-MM"`` / ``"YYYY"`` levels of a date grouped by month/year.
    clip : (float, float) or None
        Clip range of a numeric column (required when it is summed).
    decimals : int or None
        Fixed-point decimals of a numeric column (None: the default, see module docs).
    """

    type: str | None = None
    levels: tuple[str, ...] | None = None
    clip: tuple[float, float] | None = None
    decimals: int | None = None

    def resolved_decimals(self, name: str) -> int:
        """The decimals actually used for this column."""
        if self.clip is None:
            return 0
        if self.decimals is not None:
            return self.decimals
        if self.type == "integer":
            d = 0
        else:
            d = DEFAULT_FLOAT_DECIMALS
            while d > 0 and _range_bits(self.clip, d) > MAX_RANGE_BITS:
                d -= 1
        if _range_bits(self.clip, d) > MAX_RANGE_BITS:
            raise QueryError(
                f"column {name!r}: clip range {list(self.clip)} spans more than "
                f"2^{MAX_RANGE_BITS} units even at {d} decimals; narrow the clip range"
            )
        return d

    def units(self, name: str) -> tuple[int, int, int]:
        """``(decimals, LO, HI)``: the clip range in fixed-point integer units."""
        if self.clip is None:
            raise QueryError(f"column {name!r} declares no clip range")
        d = self.resolved_decimals(name)
        lo, hi = self.clip
        return d, round(lo * 10**d), round(hi * 10**d)


def _range_bits(clip: tuple[float, float], decimals: int) -> int:
    lo, hi = clip
    return int(round(hi * 10**decimals) - round(lo * 10**decimals)).bit_length()


@dataclass(frozen=True)
class GroupBy:
    """One grouping dimension: a category column, or a date column by month or year."""

    column: str
    by: str | None = None


@dataclass(frozen=True)
class Filter:
    """``column op value``; ``value`` is a list for ``in`` and ``not in``.

    SQL semantics: a row whose ``column`` is missing never matches (not even ``!=`` or
    ``not in``), unlike a pandas mask on NaN. Numbers compare the raw value (before clipping);
    dates compare with ``"YYYY-MM-DD"``.
    """

    column: str
    op: str
    value: Any


@dataclass(frozen=True)
class Aggregate:
    """One output statistic per cell.

    ``count`` (rows; with ``column``: non-missing values), ``sum``, ``mean``, ``var``, ``std``
    (``ddof=1`` like pandas), ``ratio`` (``scale · Σnumerator / Σdenominator``; without a
    denominator, per row), ``histogram`` (counts on ``bins`` edges, numpy's convention: the last
    bin is closed) and ``quantile`` (``q`` within ``tolerance``, pandas' linear interpolation).
    """

    name: str
    func: str
    column: str | None = None
    numerator: str | None = None
    denominator: str | None = None
    scale: float = 1.0
    bins: tuple[float, ...] | None = None
    q: float | None = None
    tolerance: float | None = None

    @property
    def summed_columns(self) -> tuple[str, ...]:
        """Columns whose values this aggregate sums (they need a clip range)."""
        if self.func in ("sum", "mean", "var", "std", "quantile"):
            assert self.column is not None
            return (self.column,)
        if self.func == "ratio":
            assert self.numerator is not None
            return (self.numerator,) + ((self.denominator,) if self.denominator else ())
        return ()

    @property
    def columns(self) -> tuple[str, ...]:
        """Every column the aggregate reads."""
        cols = [self.column, self.numerator, self.denominator]
        return tuple(c for c in cols if c)

    def to_dict(self) -> dict[str, Any]:
        """Canonical form (only the fields that apply to ``func``)."""
        out: dict[str, Any] = {"name": self.name, "func": self.func}
        if self.column is not None:
            out["column"] = self.column
        if self.func == "ratio":
            out["numerator"] = self.numerator
            if self.denominator is not None:
                out["denominator"] = self.denominator
            out["scale"] = self.scale
        if self.bins is not None:
            out["bins"] = list(self.bins)
        if self.func == "quantile":
            out["q"] = self.q
            out["tolerance"] = self.tolerance
        return out


@dataclass(frozen=True)
class Disclosure:
    """Disclosure-control settings: the smallest released count and number of agencies."""

    min_count: int = DEFAULT_MIN_COUNT
    min_agencies: int | None = None


_AGG_KEYS: dict[str, tuple[str, ...]] = {
    "count": ("column",),
    "sum": ("column",),
    "mean": ("column",),
    "var": ("column",),
    "std": ("column",),
    "ratio": ("numerator", "denominator", "scale"),
    "histogram": ("column", "bins"),
    "quantile": ("column", "q", "tolerance"),
}


def _parse_aggregate(i: int, raw: object) -> Aggregate:
    data = _mapping(f"aggregate #{i + 1}", raw)
    name = data.get("name")
    if not isinstance(name, str) or not _AGG_NAME.match(name):
        raise QueryError(
            f"aggregate #{i + 1}: name must match [A-Za-z_][A-Za-z0-9_]* (at most 64 "
            f"characters), got {name!r}"
        )
    what = f"aggregate {name!r}"
    func = data.get("func")
    if func not in AGGREGATE_FUNCS:
        raise QueryError(f"{what}: func must be one of {list(AGGREGATE_FUNCS)}, got {func!r}")
    _no_unknown(what, data, ["name", "func", *_AGG_KEYS[func]])
    column = data.get("column")
    if column is not None:
        _check_name(f"{what}: column", column)
    if func in ("sum", "mean", "var", "std", "histogram", "quantile") and column is None:
        raise QueryError(f"{what}: func {func!r} needs a column")
    numerator = denominator = None
    scale = 1.0
    if func == "ratio":
        numerator = data.get("numerator")
        if numerator is None:
            raise QueryError(f"{what}: a ratio needs a numerator column")
        _check_name(f"{what}: numerator", numerator)
        denominator = data.get("denominator")
        if denominator is not None:
            _check_name(f"{what}: denominator", denominator)
        scale = _number(f"{what}: scale", data.get("scale", 1.0))
        if not 0 < scale <= MAX_SCALE:
            raise QueryError(f"{what}: scale must lie in (0, {MAX_SCALE:g}], got {scale}")
    bins = None
    if func == "histogram":
        raw_bins = data.get("bins")
        if not isinstance(raw_bins, list | tuple) or len(raw_bins) < 2:
            raise QueryError(f"{what}: bins must be a list of at least 2 edges, got {raw_bins!r}")
        if len(raw_bins) > MAX_BINS + 1:
            raise QueryError(f"{what}: {len(raw_bins) - 1} bins exceed the limit of {MAX_BINS}")
        bins = tuple(_number(f"{what}: bin edge", b) for b in raw_bins)
        for a, b in itertools.pairwise(bins):
            if not a < b:
                raise QueryError(
                    f"{what}: bin edges must be strictly increasing, got {a:g} then {b:g}"
                )
    q = tolerance = None
    if func == "quantile":
        q = _number(f"{what}: q", data.get("q"))
        if not 0.0 <= q <= 1.0:
            raise QueryError(f"{what}: q must lie in [0, 1], got {q}")
        tolerance = _number(f"{what}: tolerance", data.get("tolerance"))
        if not tolerance > 0:
            raise QueryError(f"{what}: tolerance must be positive, got {tolerance}")
    return Aggregate(
        name=name,
        func=func,
        column=column,
        numerator=numerator,
        denominator=denominator,
        scale=scale,
        bins=bins,
        q=q,
        tolerance=tolerance,
    )


def _month_range(start: str, stop: str, col: str) -> tuple[str, ...]:
    for v in (start, stop):
        if not isinstance(v, str) or not _MONTH.match(v):
            raise QueryError(f"column {col!r}: from/to must be months 'YYYY-MM', got {v!r}")
    y0, m0 = map(int, start.split("-"))
    y1, m1 = map(int, stop.split("-"))
    n = (y1 - y0) * 12 + (m1 - m0) + 1
    if n < 1:
        raise QueryError(f"column {col!r}: from {start} is after to {stop}")
    if n > MAX_LEVELS:
        raise QueryError(f"column {col!r}: {n} months exceed the limit of {MAX_LEVELS} levels")
    return tuple(f"{y0 + (m0 - 1 + k) // 12:04d}-{(m0 - 1 + k) % 12 + 1:02d}" for k in range(n))


def _parse_column(name: str, raw: object) -> ColumnSpec:
    what = f"column {name!r}"
    data = _mapping(what, raw)
    _no_unknown(what, data, ["type", "levels", "clip", "decimals", "from", "to"])
    kind = data.get("type")
    if kind is not None and kind not in COLUMN_TYPES:
        raise QueryError(f"{what}: type must be one of {list(COLUMN_TYPES)}, got {kind!r}")
    levels: tuple[str, ...] | None = None
    if "from" in data or "to" in data:
        if "levels" in data:
            raise QueryError(f"{what}: give either levels or from/to, not both")
        if "from" not in data or "to" not in data:
            raise QueryError(f"{what}: from/to need both ends")
        levels = _month_range(data["from"], data["to"], name)
    elif "levels" in data:
        raw_levels = data["levels"]
        if not isinstance(raw_levels, list | tuple) or not raw_levels:
            raise QueryError(f"{what}: levels must be a non-empty list, got {raw_levels!r}")
        if len(raw_levels) > MAX_LEVELS:
            raise QueryError(f"{what}: {len(raw_levels)} levels exceed the limit of {MAX_LEVELS}")
        for lv in raw_levels:
            if not isinstance(lv, str) or len(lv) > MAX_NAME:
                raise QueryError(
                    f"{what}: levels must be strings of at most {MAX_NAME} characters, got {lv!r}"
                )
        if len(set(raw_levels)) != len(raw_levels):
            dup = sorted({lv for lv in raw_levels if raw_levels.count(lv) > 1})
            raise QueryError(f"{what}: repeated levels {dup[:10]}")
        levels = tuple(raw_levels)
    clip = None
    if "clip" in data:
        raw_clip = data["clip"]
        if not isinstance(raw_clip, list | tuple) or len(raw_clip) != 2:
            raise QueryError(f"{what}: clip must be [low, high], got {raw_clip!r}")
        lo = _number(f"{what}: clip low", raw_clip[0])
        hi = _number(f"{what}: clip high", raw_clip[1])
        if not lo < hi:
            raise QueryError(f"{what}: clip low must be below clip high, got [{lo:g}, {hi:g}]")
        clip = (lo, hi)
    decimals = data.get("decimals")
    if decimals is not None:
        if isinstance(decimals, bool) or not isinstance(decimals, int):
            raise QueryError(f"{what}: decimals must be an integer, got {decimals!r}")
        if not 0 <= decimals <= MAX_DECIMALS:
            raise QueryError(f"{what}: decimals must lie in [0, {MAX_DECIMALS}], got {decimals}")
        if clip is None:
            raise QueryError(f"{what}: decimals apply to a clip range; declare clip")
    if clip is not None and levels is not None:
        raise QueryError(f"{what}: a column has either levels (categorical) or clip (numeric)")
    if kind is not None:
        if clip is not None and kind not in NUMERIC_TYPES:
            raise QueryError(f"{what}: clip is for integer/float columns, not {kind!r}")
        if levels is not None and kind not in ("category", "date"):
            raise QueryError(f"{what}: levels are for category/date columns, not {kind!r}")
    spec = ColumnSpec(type=kind, levels=levels, clip=clip, decimals=decimals)
    if clip is not None:
        d = spec.resolved_decimals(name)
        lo_u, hi_u = clip[0] * 10**d, clip[1] * 10**d
        if abs(lo_u - round(lo_u)) > 1e-6 or abs(hi_u - round(hi_u)) > 1e-6:
            raise QueryError(
                f"{what}: clip bounds {list(clip)} are not multiples of 10^-{d} (decimals={d})"
            )
        if _range_bits(clip, d) > MAX_RANGE_BITS:
            raise QueryError(
                f"{what}: clip range {list(clip)} at {d} decimals spans "
                f"2^{_range_bits(clip, d)} units; the limit is 2^{MAX_RANGE_BITS} (narrow "
                "the range or lower decimals)"
            )
    return spec


def _parse_group(i: int, raw: object) -> GroupBy:
    if isinstance(raw, str):
        return GroupBy(_check_name(f"group_by #{i + 1}", raw))
    data = _mapping(f"group_by #{i + 1}", raw)
    _no_unknown(f"group_by #{i + 1}", data, ["column", "by"])
    col = _check_name(f"group_by #{i + 1}: column", data.get("column"))
    by = data.get("by")
    if by is not None and by not in DATE_PARTS:
        raise QueryError(f"group_by {col!r}: by must be one of {list(DATE_PARTS)}, got {by!r}")
    return GroupBy(col, by)


def _scalar(what: str, value: object) -> str | float:
    if isinstance(value, str):
        if len(value) > MAX_NAME:
            raise QueryError(f"{what}: string values have at most {MAX_NAME} characters")
        return value
    return _number(what, value)


def _parse_filter(i: int, raw: object) -> Filter:
    what = f"where #{i + 1}"
    data = _mapping(what, raw)
    _no_unknown(what, data, ["column", "op", "value"])
    col = _check_name(f"{what}: column", data.get("column"))
    op = data.get("op")
    if op not in OPS:
        raise QueryError(f"{what} ({col!r}): op must be one of {list(OPS)}, got {op!r}")
    if "value" not in data:
        raise QueryError(f"{what} ({col!r}): missing value")
    value = data["value"]
    if op in ("in", "not in"):
        if not isinstance(value, list | tuple) or not value:
            raise QueryError(f"{what} ({col!r}): {op!r} needs a non-empty list, got {value!r}")
        if len(value) > MAX_IN:
            raise QueryError(f"{what} ({col!r}): {len(value)} values exceed {MAX_IN}")
        items = tuple(_scalar(f"{what} ({col!r})", v) for v in value)
        if len({type(v) for v in items}) > 1:
            raise QueryError(f"{what} ({col!r}): mixes strings and numbers")
        return Filter(col, op, items)
    return Filter(col, op, _scalar(f"{what} ({col!r})", value))


# -- the query --------------------------------------------------------------------------------
@dataclass(frozen=True)
class QuerySpec:
    """A declarative group-by query over one table (see the module docs and docs/analytics.md).

    Build it with :meth:`from_dict`, :meth:`from_toml` or :meth:`from_json`; the constructor
    does not validate.
    """

    table: str
    columns: Mapping[str, ColumnSpec]
    group_by: tuple[GroupBy, ...]
    aggregates: tuple[Aggregate, ...]
    where: tuple[Filter, ...] = ()
    disclosure: Disclosure = field(default_factory=Disclosure)
    privacy: Mapping[str, Any] | None = None

    # -- parsing ------------------------------------------------------------------------------
    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> QuerySpec:
        """Parse and validate a spec given as plain data (TOML/JSON shape).

        Raises
        ------
        QueryError
            Any structural problem (the message names it).
        """
        data = _mapping("query spec", data)
        _no_unknown(
            "query spec",
            data,
            ["table", "columns", "group_by", "where", "aggregate", "disclosure", "privacy"],
        )
        table = _check_name("table", data.get("table"))
        raw_cols = _mapping("columns", data.get("columns", {}))
        if len(raw_cols) > MAX_SCHEMA_COLUMNS:
            raise QueryError(
                f"columns: {len(raw_cols)} declared; the limit is {MAX_SCHEMA_COLUMNS}"
            )
        columns = {_check_name("column name", c): _parse_column(c, v) for c, v in raw_cols.items()}
        raw_groups = data.get("group_by", [])
        if isinstance(raw_groups, str):
            raw_groups = [raw_groups]
        if not isinstance(raw_groups, list | tuple):
            raise QueryError(f"group_by must be a list, got {raw_groups!r}")
        if len(raw_groups) > MAX_GROUP_BY:
            raise QueryError(f"group_by has {len(raw_groups)} columns; the limit is {MAX_GROUP_BY}")
        groups = tuple(_parse_group(i, g) for i, g in enumerate(raw_groups))
        raw_where = data.get("where", [])
        if not isinstance(raw_where, list | tuple):
            raise QueryError(f"where must be a list of filters, got {raw_where!r}")
        if len(raw_where) > MAX_WHERE:
            raise QueryError(f"where has {len(raw_where)} filters; the limit is {MAX_WHERE}")
        where = tuple(_parse_filter(i, w) for i, w in enumerate(raw_where))
        raw_aggs = data.get("aggregate")
        if not isinstance(raw_aggs, list | tuple) or not raw_aggs:
            raise QueryError("a query needs at least one [[aggregate]]")
        if len(raw_aggs) > MAX_AGGREGATES:
            raise QueryError(f"{len(raw_aggs)} aggregates exceed the limit of {MAX_AGGREGATES}")
        aggs = tuple(_parse_aggregate(i, a) for i, a in enumerate(raw_aggs))
        raw_disc = _mapping("disclosure", data.get("disclosure", {}))
        _no_unknown("disclosure", raw_disc, ["min_count", "min_agencies"])
        min_count = raw_disc.get("min_count", DEFAULT_MIN_COUNT)
        min_agencies = raw_disc.get("min_agencies")
        for key, value in (("min_count", min_count), ("min_agencies", min_agencies)):
            if value is None:
                continue
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise QueryError(f"disclosure: {key} must be a positive integer, got {value!r}")
        privacy = data.get("privacy")
        if privacy is not None:
            privacy = dict(_mapping("privacy", privacy))
        spec = cls(
            table=table,
            columns=columns,
            group_by=groups,
            aggregates=aggs,
            where=where,
            disclosure=Disclosure(min_count, min_agencies),
            privacy=privacy or None,
        )
        spec._check()
        return spec

    @classmethod
    def from_toml(cls, source: str | Path) -> QuerySpec:
        """Parse a TOML file (a path) or TOML text (a string containing a newline or ``=``)."""
        text: str
        if isinstance(source, Path) or ("\n" not in source and "=" not in source):
            path = Path(source)
            try:
                if path.stat().st_size > MAX_SPEC_BYTES:
                    raise QueryError(f"query file {path} exceeds {MAX_SPEC_BYTES} bytes")
                text = path.read_text(encoding="utf-8")
            except OSError as exc:
                raise QueryError(f"cannot read query file {path}: {exc}") from exc
        else:
            text = source
        if len(text) > MAX_SPEC_BYTES:
            raise QueryError(f"query spec exceeds {MAX_SPEC_BYTES} bytes")
        try:
            data = tomllib.loads(text)
        except tomllib.TOMLDecodeError as exc:
            raise QueryError(f"query spec is not valid TOML: {exc}") from exc
        return cls.from_dict(data)

    @classmethod
    def from_json(cls, text: str | bytes) -> QuerySpec:
        """Parse the JSON form (canonical or not)."""
        if len(text) > MAX_SPEC_BYTES:
            raise QueryError(f"query spec JSON exceeds {MAX_SPEC_BYTES} bytes")
        try:
            data = json.loads(text)
        except json.JSONDecodeError as exc:
            raise QueryError(f"query spec is not valid JSON: {exc}") from exc
        return cls.from_dict(data)

    # -- canonical form -----------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        """Plain data that :meth:`from_dict` reads back to an equal spec."""
        cols: dict[str, Any] = {}
        for name, c in self.columns.items():
            entry: dict[str, Any] = {}
            if c.type is not None:
                entry["type"] = c.type
            if c.levels is not None:
                entry["levels"] = list(c.levels)
            if c.clip is not None:
                entry["clip"] = list(c.clip)
            if c.decimals is not None:
                entry["decimals"] = c.decimals
            cols[name] = entry
        out: dict[str, Any] = {
            "table": self.table,
            "columns": cols,
            "group_by": [
                {"column": g.column} | ({"by": g.by} if g.by else {}) for g in self.group_by
            ],
            "where": [
                {
                    "column": f.column,
                    "op": f.op,
                    "value": list(f.value) if isinstance(f.value, tuple) else f.value,
                }
                for f in self.where
            ],
            "aggregate": [a.to_dict() for a in self.aggregates],
            "disclosure": {"min_count": self.disclosure.min_count}
            | (
                {"min_agencies": self.disclosure.min_agencies}
                if self.disclosure.min_agencies is not None
                else {}
            ),
        }
        if self.privacy:
            out["privacy"] = dict(self.privacy)
        return out

    def to_json(self) -> str:
        """Canonical JSON: sorted keys, no spaces; equal specs give equal strings."""
        return json.dumps(self.to_dict(), sort_keys=True, separators=(",", ":"), allow_nan=False)

    # -- derived layout -------------------------------------------------------------------------
    @property
    def dims(self) -> tuple[int, ...]:
        """Number of levels per group-by column (the result's shape)."""
        return tuple(len(self.levels_of(g)) for g in self.group_by)

    @property
    def n_cells(self) -> int:
        """Number of cells: the product of the group-by columns' levels (1 without groups)."""
        return math.prod(self.dims)

    def levels_of(self, group: GroupBy) -> tuple[str, ...]:
        """The declared levels of a group-by column."""
        levels = self.columns[group.column].levels
        assert levels is not None
        return levels

    def group_names(self) -> list[str]:
        """Result column names of the group-by dimensions (date columns get ``_month``...)."""
        return [g.column if g.by is None else f"{g.column}_{g.by}" for g in self.group_by]

    def used_columns(self) -> list[str]:
        """Every column the query reads, in first-use order."""
        out: list[str] = []
        for c in (
            [g.column for g in self.group_by]
            + [f.column for f in self.where]
            + [c for a in self.aggregates for c in a.columns]
        ):
            if c not in out:
                out.append(c)
        return out

    def resolved(self) -> QuerySpec:
        """The same spec with every numeric column's decimals made explicit."""
        cols = {
            name: replace(c, decimals=c.resolved_decimals(name)) if c.clip is not None else c
            for name, c in self.columns.items()
        }
        return replace(self, columns=cols)

    # -- validation -----------------------------------------------------------------------------
    def _check(self) -> None:
        """Schema-independent checks (called by the parsers)."""
        names = [a.name for a in self.aggregates]
        dup = sorted({n for n in names if names.count(n) > 1})
        if dup:
            raise QueryError(f"duplicate aggregate name(s) {dup}")
        group_names = self.group_names()
        if len(set(g.column for g in self.group_by)) != len(self.group_by):
            raise QueryError("group_by names a column twice")
        for n in names:
            if n in RESERVED_NAMES or n in group_names:
                raise QueryError(
                    f"aggregate name {n!r} clashes with a result column "
                    f"({sorted(RESERVED_NAMES | set(group_names))})"
                )
        for g in self.group_by:
            col = self.columns.get(g.column)
            if col is None or col.levels is None:
                raise QueryError(
                    f"group_by {g.column!r}: declare its levels under [columns.{g.column}] "
                    "(the group domain is public and the same for every agency)"
                )
            if col.type is not None and col.type not in ("category", "date"):
                raise QueryError(
                    f"group_by {g.column!r}: a {col.type} column cannot be grouped by; "
                    "group by category columns or dates by month/year"
                )
            if g.by is not None:
                if col.type not in (None, "date"):
                    raise QueryError(f"group_by {g.column!r}: by={g.by!r} needs a date column")
                pattern = _MONTH if g.by == "month" else _YEAR
                bad = [lv for lv in col.levels if not pattern.match(lv)]
                if bad:
                    fmt = "YYYY-MM" if g.by == "month" else "YYYY"
                    raise QueryError(
                        f"group_by {g.column!r} by {g.by}: levels must look like {fmt}, got "
                        f"{bad[0]!r}"
                    )
            elif col.type == "date":
                raise QueryError(f"group_by {g.column!r}: group a date column by month or year")
        if self.n_cells > MAX_CELLS:
            raise QueryError(
                f"group_by {[g.column for g in self.group_by]} makes {self.n_cells} cells; "
                f"the limit is {MAX_CELLS}"
            )
        if len(self.group_by) >= 3 and not self.privacy and self.n_cells > MAX_CELLS_3D:
            raise QueryError(
                f"group_by {[g.column for g in self.group_by]} makes {self.n_cells} cells in "
                f"{len(self.group_by)} dimensions; complementary suppression audits at most "
                f"{MAX_CELLS_3D} cells in three or more dimensions (its linear programs grow "
                "fast): group by fewer columns or levels, or use differential privacy"
            )
        grouped_dates = {g.column for g in self.group_by if g.by is not None}
        for f in self.where:
            col = self.columns.get(f.column)
            values = f.value if isinstance(f.value, tuple) else (f.value,)
            if col is not None and col.levels is not None and f.column not in grouped_dates:
                if f.op not in ("==", "!=", "in", "not in"):
                    raise QueryError(
                        f"where {f.column!r}: a category column takes ==, !=, in or not in, "
                        f"not {f.op!r}"
                    )
                undeclared = [v for v in values if v not in col.levels]
                if undeclared:
                    raise QueryError(
                        f"where {f.column!r}: value {undeclared[0]!r} is not a declared level "
                        f"of {f.column!r}"
                    )
            if col is not None and col.clip is not None and any(isinstance(v, str) for v in values):
                raise QueryError(f"where {f.column!r}: compare a numeric column to numbers")
            if (
                f.op in ("<", "<=", ">", ">=")
                and isinstance(f.value, str)
                and not _DAY.match(f.value)
            ):
                raise QueryError(
                    f"where {f.column!r}: {f.op} compares numbers or dates 'YYYY-MM-DD', "
                    f"got {f.value!r}"
                )
        for a in self.aggregates:
            for c in a.columns:
                col = self.columns.get(c)
                if col is not None and col.levels is not None:
                    raise QueryError(
                        f"aggregate {a.name!r} ({a.func}) on categorical column {c!r}: only "
                        "integer and float columns can be aggregated; count rows per level "
                        "with group_by"
                    )
                if (
                    col is not None
                    and col.type in ("text", "category", "date")
                    and (a.func != "count")
                ):
                    raise QueryError(
                        f"aggregate {a.name!r} ({a.func}) on {col.type} column {c!r}: only "
                        "integer and float columns can be aggregated"
                    )
            for c in a.summed_columns:
                col = self.columns.get(c)
                if col is None or col.clip is None:
                    raise QueryError(
                        f"aggregate {a.name!r} ({a.func}) sums column {c!r}, which declares no "
                        f"clip range; add [columns.{c}] clip = [low, high]"
                    )
        size = len(self.to_json())
        if size > MAX_SPEC_BYTES:
            raise QueryError(f"query spec JSON is {size} bytes; the limit is {MAX_SPEC_BYTES}")

    def validate_against(self, schema: TableSchema) -> QuerySpec:
        """Check the spec against a table's schema; returns it with column types filled in.

        Raises
        ------
        QueryError
            Unknown table or column, wrong type, or an operation the type does not support.
        """
        if schema.name != self.table:
            raise QueryError(f"unknown table {self.table!r}; the agencies declare {schema.name!r}")
        for used in set(self.used_columns()) | set(self.columns):
            if used not in schema.columns:
                raise QueryError(
                    f"unknown column {used!r} in table {schema.name!r}; columns: "
                    f"{sorted(schema.columns)[:50]}"
                )
        cols: dict[str, ColumnSpec] = {}
        for name, c in self.columns.items():
            kind = schema.columns[name]
            if c.type is not None and c.type != kind:
                raise QueryError(
                    f"column {name!r}: the query declares type {c.type!r}, table "
                    f"{schema.name!r} has {kind!r}"
                )
            cols[name] = replace(c, type=kind)
        for f in self.where:
            kind = schema.columns[f.column]
            values = f.value if isinstance(f.value, tuple) else (f.value,)
            if kind in NUMERIC_TYPES and any(isinstance(v, str) for v in values):
                raise QueryError(
                    f"where {f.column!r}: wrong type: {kind} column compared to a string"
                )
            if kind in ("category", "text", "date") and any(not isinstance(v, str) for v in values):
                raise QueryError(
                    f"where {f.column!r}: wrong type: {kind} column compared to a number"
                )
            if kind in ("category", "text") and f.op not in ("==", "!=", "in", "not in"):
                raise QueryError(f"where {f.column!r}: a {kind} column takes ==, !=, in, not in")
            if kind == "date":
                bad = [v for v in values if not _DAY.match(str(v))]
                if bad:
                    raise QueryError(
                        f"where {f.column!r}: dates look like YYYY-MM-DD, got {bad[0]!r}"
                    )
            if kind == "category" and (f.column not in cols or cols[f.column].levels is None):
                raise QueryError(
                    f"where {f.column!r}: declare the levels of category column {f.column!r} "
                    f"under [columns.{f.column}]"
                )
        for a in self.aggregates:
            for read in a.columns:
                kind = schema.columns[read]
                if kind not in NUMERIC_TYPES:
                    raise QueryError(
                        f"aggregate {a.name!r} ({a.func}) on {kind} column {read!r}: only integer "
                        "and float columns can be aggregated"
                    )
        spec = replace(self, columns=cols)
        spec._check()
        return spec.resolved()
