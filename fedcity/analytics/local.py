"""An agency's table and the local computations of a query, in DuckDB.

A :class:`LocalTable` is one agency's table (CSV, Parquet or, for tests and examples, a pandas
DataFrame) with its declared :class:`~fedcity.analytics.spec.TableSchema`. It is validated on
load: every declared column must exist and every value must cast to its declared type; the
error names the agency, table and column, with an example value.

The vetted local steps ``query.presence``, ``query.cells`` and ``query.quantile`` turn a
round's public parameters into the agency's integer vector. All SQL is generated from the
validated spec only: identifiers are quoted, every literal (filter values, clip bounds, levels,
bins, brackets) is bound as a parameter or passed as a registered relation, and DuckDB
aggregates in place, so no row ever enters Python.

Exactness: every quantity is an exact non-negative integer (row counts, fixed-point sums offset
by the clip's lower bound, sums of squares, bin counts), split into base-``2^b`` limbs; ``b``
is chosen by the coordinator (see :mod:`fedcity.analytics.query`; under differential privacy
by :func:`limb_bits_for`). The vector is packed at its integers' own width
(:class:`~fedcity.core.precision.ExactIntegers`, task parameters ``value_bits``,
``unit_bits`` and, for noised entries, ``value_offset``).
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import pandas as pd

from fedcity.analytics.spec import (
    Aggregate,
    QueryError,
    QuerySpec,
    TableSchema,
)
from fedcity.core.precision import ExactIntegers
from fedcity.core.tasks import local_step

__all__ = [
    "LIMB_BITS",
    "MAX_LIMB_BITS",
    "ROW_BITS",
    "DataError",
    "LocalTable",
    "Quantity",
    "block_of",
    "cell_quantities",
    "from_limbs",
    "limb_bits_for",
    "quote_ident",
    "to_limbs",
]

LIMB_BITS = 30
"""Default bits per limb (the layout's worst case is sized with it)."""
MIN_LIMB_BITS = 24
MAX_LIMB_BITS = 40
"""Largest limb: entries stay within the driver's largest packing clip (2^40)."""
ROW_BITS = 36
"""Most rows one agency may hold in one cell (2^36 ≈ 6.9 · 10^10)."""

_SQL_TYPES = {
    "category": "VARCHAR",
    "text": "VARCHAR",
    "integer": "BIGINT",
    "float": "DOUBLE",
    "date": "DATE",
}
_CACHE_SIZE = 4


class DataError(ValueError):
    """An agency's table does not match its declared schema (or a query's expectations)."""


def quote_ident(name: str) -> str:
    """A SQL identifier, double-quoted with embedded quotes doubled (never interpolated raw)."""
    if "\x00" in name:
        raise QueryError(f"identifier {name!r} contains a NUL character")
    return '"' + name.replace('"', '""') + '"'


# -- the per-cell layout shared by the coordinator and the agencies ---------------------------
@dataclass(frozen=True)
class Quantity:
    """One exact integer per cell.

    ``kind`` is ``"n"`` (rows), ``"nn"`` (non-missing values of ``column``), ``"s"`` (sum of
    offset fixed-point values), ``"ss"`` (sum of their squares) or ``"h"`` (rows in bin
    ``bin`` of histogram ``aggregate``). ``bits`` bounds one agency's value.
    """

    key: str
    kind: str
    column: str | None = None
    aggregate: str | None = None
    bin: int | None = None
    bits: int = ROW_BITS

    @property
    def limbs(self) -> int:
        """Limbs of this quantity at the default limb size."""
        return self.n_limbs(LIMB_BITS)

    def n_limbs(self, limb_bits: int) -> int:
        """Limbs of this quantity with ``limb_bits``-bit limbs."""
        return -(-self.bits // limb_bits)


def cell_quantities(spec: QuerySpec) -> list[Quantity]:
    """The quantities computed per eligible cell, in vector order (deterministic)."""
    out: dict[str, Quantity] = {"n": Quantity("n", "n")}

    def add(q: Quantity) -> None:
        out.setdefault(q.key, q)

    def range_bits(col: str) -> int:
        _, lo, hi = spec.columns[col].units(col)
        return max(1, (hi - lo).bit_length())

    for a in spec.aggregates:
        if a.func == "count" and a.column:
            add(Quantity(f"nn:{a.column}", "nn", a.column))
        elif a.func == "histogram":
            assert a.bins is not None
            for j in range(len(a.bins) - 1):
                add(Quantity(f"h:{a.name}:{j}", "h", a.column, a.name, j))
        else:
            for col in a.summed_columns:
                add(Quantity(f"nn:{col}", "nn", col))
                if a.func != "quantile":
                    add(Quantity(f"s:{col}", "s", col, bits=ROW_BITS + range_bits(col)))
                if a.func in ("var", "std"):
                    add(Quantity(f"ss:{col}", "ss", col, bits=ROW_BITS + 2 * range_bits(col)))
    return list(out.values())


def limb_bits_for(agencies: int) -> int:
    """Largest limb size whose sums over ``agencies`` contributions decode exactly.

    The driver packs with ``p = min(52, 61 - h)`` bits of precision, ``h = ceil(log2 s)``
    headroom bits for ``s`` summands, and clip ``C = 2^b``: the sum's quantization error is at
    most ``s·C/(2^p - 1)`` and the float decoding's ``s·2C·2^-53`` (plus the conversion of the
    slot sum), so ``b = min(40, p - 3 - h', 48 - h')`` with ``h' = ceil(log2 s)`` keeps the total
    error below 1/4 and the rounding exact.
    """
    if isinstance(agencies, bool) or not isinstance(agencies, int) or agencies < 1:
        raise ValueError(f"agencies must be a positive integer, got {agencies!r}")
    h = (agencies - 1).bit_length()
    p = min(52, 61 - h)
    bits = min(MAX_LIMB_BITS, p - 3 - h, 48 - h)
    if bits < MIN_LIMB_BITS:
        raise ValueError(f"{agencies} agencies are too many to sum limbs exactly")
    return bits


def to_limbs(value: int, n_limbs: int, bits: int = LIMB_BITS) -> list[int]:
    """Split a non-negative integer into ``n_limbs`` base-``2^bits`` limbs, lowest first.

    Raises
    ------
    ValueError
        ``value`` is negative or needs more limbs.
    """
    if value < 0 or value.bit_length() > n_limbs * bits:
        raise ValueError(f"{value} does not fit in {n_limbs} limbs of {bits} bits")
    mask = (1 << bits) - 1
    return [(value >> (bits * i)) & mask for i in range(n_limbs)]


def from_limbs(limbs: Sequence[int], bits: int = LIMB_BITS) -> int:
    """Recombine (summed) limbs, lowest first; sums of limbs may exceed one limb's range."""
    return sum(int(v) << (bits * i) for i, v in enumerate(limbs))


def _limb_bits(params: Mapping[str, Any]) -> int:
    bits = params.get("limb_bits", LIMB_BITS)
    if isinstance(bits, bool) or not isinstance(bits, int):
        raise QueryError(f"limb_bits must be an integer, got {bits!r}")
    if not MIN_LIMB_BITS <= bits <= MAX_LIMB_BITS:
        raise QueryError(f"limb_bits must lie in [{MIN_LIMB_BITS}, {MAX_LIMB_BITS}], got {bits}")
    return bits


def _exact(params: Mapping[str, Any], values: Any) -> npt.NDArray[np.float64]:
    """The step's integers as the coordinator asked them packed.

    With ``value_bits`` and ``unit_bits`` in the task: the floats of
    :class:`~fedcity.core.precision.ExactIntegers`, which the packing quantizes back to
    exactly these integers (plus ``value_offset``, which makes noised entries non-negative)
    at their own width. Without: the integers as floats.
    """
    if "unit_bits" not in params and "value_bits" not in params:
        return np.asarray(values, dtype=np.float64)
    bits, unit = params.get("value_bits", 0), params.get("unit_bits", -1)
    offset = params.get("value_offset", 0)
    if isinstance(offset, bool) or not isinstance(offset, int) or offset < 0:
        raise QueryError(f"value_offset must be a non-negative integer, got {offset!r}")
    try:
        codec = ExactIntegers(bits, unit)
        return codec.encode(np.asarray(values, dtype=np.float64) + float(offset))
    except ValueError as exc:
        raise QueryError(f"exact packing (value_bits={bits!r}, unit_bits={unit!r}): {exc}") from exc


def eligible_from_ranges(ranges: Sequence[Sequence[int]], n_cells: int) -> list[int]:
    """Cell indices from ``[[start, stop), ...]`` ranges (validated)."""
    cells: list[int] = []
    last = 0
    for r in ranges:
        if not isinstance(r, Sequence) or len(r) != 2:
            raise QueryError(f"a cell range is [start, stop), got {r!r}")
        a, b = int(r[0]), int(r[1])
        if not last <= a < b <= n_cells:
            raise QueryError(f"cell ranges must be increasing within [0, {n_cells}), got {r!r}")
        cells.extend(range(a, b))
        last = b
    return cells


def ranges_from_cells(cells: Sequence[int]) -> list[list[int]]:
    """Compact ``[[start, stop), ...]`` ranges of sorted cell indices."""
    out: list[list[int]] = []
    for c in cells:
        if out and out[-1][1] == c:
            out[-1][1] = c + 1
        else:
            out.append([c, c + 1])
    return out


@dataclass
class CellAggregates:
    """One agency's exact per-cell quantities for a spec (stays at the agency)."""

    quantities: list[Quantity]
    values: dict[int, tuple[int, ...]]
    """Cell index -> one integer per quantity (cells without matching rows are absent)."""
    out_of_domain: int
    """Rows that pass the filters but whose group value is missing or not a declared level."""


# -- the table ---------------------------------------------------------------------------------
class LocalTable:
    """One agency's table, validated against its declared schema.

    Parameters
    ----------
    source : str, Path or pandas.DataFrame
        A ``.csv`` or ``.parquet`` file, or a DataFrame (tests and examples).
    schema : TableSchema
        Declared columns and types; other columns of the file are ignored.
    agency : str
        The agency's name (used in error messages).
    materialize : bool, optional
        Copy the declared columns into DuckDB's memory once (default for CSV, which would
        otherwise be parsed again in every round); Parquet and DataFrames are scanned in place.

    Raises
    ------
    DataError
        The file is missing or unreadable, a declared column is absent, or a value does not
        cast to its column's type (agency, table, column and an example are named).
    """

    def __init__(
        self,
        source: str | Path | pd.DataFrame,
        schema: TableSchema,
        *,
        agency: str = "agency",
        materialize: bool | None = None,
    ) -> None:
        import duckdb

        if not isinstance(schema, TableSchema):
            raise TypeError(f"schema must be a TableSchema, got {type(schema).__name__}")
        if not isinstance(agency, str) or not agency or len(agency) > 128:
            raise ValueError(
                f"agency must be a non-empty name of at most 128 characters, got {agency!r}"
            )
        if not isinstance(source, str | Path | pd.DataFrame):
            raise TypeError(f"source must be a path or a DataFrame, got {type(source).__name__}")
        self.schema = schema
        self.agency = agency
        self._lock = threading.RLock()  # one DuckDB statement (and its relations) at a time
        self._cache: OrderedDict[str, CellAggregates] = OrderedDict()
        self._con = duckdb.connect(":memory:")
        where = f"agency {agency!r}, table {schema.name!r}"
        self.path: Path | None = None
        try:
            if isinstance(source, pd.DataFrame):
                self._con.register("__src", source)
                columns = [str(c) for c in source.columns]
                kind = "frame"
            else:
                self.path = Path(source)
                if not self.path.is_file():
                    raise DataError(f"{where}: no such file {str(self.path)!r}")
                suffix = self.path.suffix.lower()
                if suffix == ".csv":
                    rel = self._con.read_csv(str(self.path), header=True, all_varchar=True)
                    kind = "csv"
                elif suffix in (".parquet", ".pq"):
                    rel = self._con.read_parquet(str(self.path))
                    kind = "parquet"
                else:
                    raise DataError(f"{where}: {self.path.name} is neither .csv nor .parquet")
                rel.create_view("__src")
                columns = list(rel.columns)
        except duckdb.Error as exc:
            raise DataError(f"{where}: cannot read {source!r}: {exc}") from exc
        missing = [c for c in schema.columns if c not in columns]
        if missing:
            raise DataError(
                f"{where}: declared column(s) {missing} are not in the data (it has {columns[:30]})"
            )
        self._validate_types(where)
        select = ", ".join(_load_expr(c, t) for c, t in schema.columns.items())
        if materialize is None:
            materialize = kind == "csv"
        what = "TABLE" if materialize else "VIEW"
        self._con.execute(f"CREATE {what} __data AS SELECT {select} FROM __src")
        rows = self._con.execute("SELECT count(*) FROM __data").fetchall()
        self.n_rows = int(rows[0][0])

    def __repr__(self) -> str:
        return f"<LocalTable {self.schema.name!r} of {self.agency!r}: {self.n_rows} rows>"

    @classmethod
    def from_frame(
        cls, frame: pd.DataFrame, schema: TableSchema, *, agency: str = "agency"
    ) -> LocalTable:
        """A table held in a pandas DataFrame (tests and examples)."""
        return cls(frame, schema, agency=agency)

    @property
    def name(self) -> str:
        """The table's name."""
        return self.schema.name

    def close(self) -> None:
        """Release DuckDB's memory."""
        self._con.close()

    def _validate_types(self, where: str) -> None:
        checks: list[tuple[str, str, str]] = []
        for col, kind in self.schema.columns.items():
            q = quote_ident(col)
            if kind == "integer":
                dbl = f"TRY_CAST({q} AS DOUBLE)"
                bad = (
                    f"{q} IS NOT NULL AND ({dbl} IS NULL OR isnan({dbl}) OR {dbl} <> floor({dbl})"
                    f" OR TRY_CAST({q} AS BIGINT) IS NULL)"
                )
            elif kind == "float":
                bad = f"{q} IS NOT NULL AND TRY_CAST({q} AS DOUBLE) IS NULL"
            elif kind == "date":
                bad = f"{q} IS NOT NULL AND TRY_CAST({q} AS DATE) IS NULL"
            else:
                continue
            checks.append((col, kind, bad))
        if not checks:
            return
        parts = []
        for _, _, bad in checks:
            parts.append(f"count(*) FILTER (WHERE {bad})")
        for col, _, bad in checks:
            parts.append(f"CAST(first({quote_ident(col)}) FILTER (WHERE {bad}) AS VARCHAR)")
        row = self._con.execute(f"SELECT {', '.join(parts)} FROM __src").fetchall()[0]
        k = len(checks)
        for i, (col, kind, _) in enumerate(checks):
            if row[i]:
                raise DataError(
                    f"{where}: column {col!r} is declared {kind} but {row[i]} value(s) are not "
                    f"(e.g. {row[k + i]!r})"
                )

    # -- SQL from a validated spec -------------------------------------------------------------
    def _check_spec(self, spec: QuerySpec) -> QuerySpec:
        if spec.table != self.schema.name:
            raise QueryError(
                f"agency {self.agency!r} has no table {spec.table!r} (it serves "
                f"{self.schema.name!r})"
            )
        # the agency's own check: the same precise messages as at the coordinator
        checked = spec.validate_against(self.schema)
        for name, c in spec.columns.items():
            if c.clip is not None and c.decimals is None:
                raise QueryError(f"column {name!r}: a task must carry resolved decimals")
        return checked

    def _value_expr(self, spec: QuerySpec, col: str, params: list[Any]) -> str:
        """Offset fixed-point integer ``round(clip(x) · 10^d) - LO`` in ``[0, HI - LO]``."""
        d, lo_units, _ = spec.columns[col].units(col)
        lo, hi = spec.columns[col].clip or (0.0, 0.0)
        params.extend([lo, lo, hi, hi, float(10**d), lo_units])
        x = f"CAST({quote_ident(col)} AS DOUBLE)"
        # CASE keeps NULL as NULL (least/greatest would ignore it and return a bound)
        return (
            f"(CAST(round(CASE WHEN {x} < ? THEN ? WHEN {x} > ? THEN ? ELSE {x} END * ?) "
            "AS BIGINT) - ?)"
        )

    def _filters(self, spec: QuerySpec, params: list[Any]) -> str:
        clauses = []
        for f in spec.where:
            kind = self.schema.columns[f.column]
            cast = {"date": "DATE", "integer": "DOUBLE", "float": "DOUBLE"}.get(kind, "VARCHAR")
            col = quote_ident(f.column)
            if kind in ("integer", "float"):
                col = f"CAST({col} AS DOUBLE)"
            if f.op in ("in", "not in"):
                values = list(f.value)
                marks = ", ".join(f"CAST(? AS {cast})" for _ in values)
                params.extend(values)
                neg = "NOT " if f.op == "not in" else ""
                clauses.append(f"{col} {neg}IN ({marks})")
            else:
                op = {"==": "="}.get(f.op, f.op)
                params.append(f.value)
                clauses.append(f"{col} {op} CAST(? AS {cast})")
        return " AND ".join(clauses) if clauses else "TRUE"

    def _cell_source(
        self, spec: QuerySpec, extra: Sequence[str], params: list[Any]
    ) -> tuple[str, list[str]]:
        """``SELECT <cell> AS __cell, <extra...> FROM __data <joins> WHERE <filters>``."""
        joins = []
        registered = []
        cell_terms = []
        stride = 1
        strides = []
        for g in reversed(spec.group_by):
            strides.append(stride)
            stride *= len(spec.levels_of(g))
        strides.reverse()
        for i, (g, s) in enumerate(zip(spec.group_by, strides, strict=True)):
            name = f"__lv{i}"
            levels = spec.levels_of(g)
            frame = pd.DataFrame(
                {"level": pd.Series(levels, dtype=object), "idx": np.arange(len(levels))}
            )
            self._con.register(name, frame)
            registered.append(name)
            col = quote_ident(g.column)
            if g.by == "month":
                key = f"strftime(__data.{col}, '%Y-%m')"
            elif g.by == "year":
                key = f"strftime(__data.{col}, '%Y')"
            else:
                key = f"CAST(__data.{col} AS VARCHAR)"
            joins.append(f"LEFT JOIN {name} AS __g{i} ON __g{i}.level = {key}")
            cell_terms.append(f"__g{i}.idx * {int(s)}")
        cell = " + ".join(cell_terms) if cell_terms else "0"
        # the parameters of `extra` come first (they appear first in the statement)
        where = self._filters(spec, params)
        cols = ", ".join([f"CAST({cell} AS BIGINT) AS __cell", *extra])
        return f"SELECT {cols} FROM __data {' '.join(joins)} WHERE {where}", registered

    def aggregate(self, spec: QuerySpec) -> CellAggregates:
        """Exact per-cell quantities of ``spec`` on this table (memoised per spec).

        Raises
        ------
        QueryError
            The spec does not fit this table's schema.
        DataError
            A quantity exceeds its declared bound (e.g. more than 2^36 rows in a cell).
        """
        key = spec.to_json()
        with self._lock:
            hit = self._cache.get(key)
            if hit is not None:
                self._cache.move_to_end(key)
                return hit
        self._check_spec(spec)
        quantities = cell_quantities(spec)
        params: list[Any] = []
        extra: list[str] = []
        value_cols: dict[str, str] = {}
        for q in quantities:
            if q.column is not None and q.kind in ("nn", "s", "ss") and q.column not in value_cols:
                alias = f"__y{len(value_cols)}"
                extra.append(f"{self._value_expr(spec, q.column, params)} AS {alias}")
                value_cols[q.column] = alias
        hist_cols: dict[str, str] = {}
        aggs = {a.name: a for a in spec.aggregates}
        for a in spec.aggregates:
            if a.func == "histogram":
                alias = f"__h{len(hist_cols)}"
                extra.append(f"{self._bin_expr(a, params)} AS {alias}")
                hist_cols[a.name] = alias
        selects = []
        for q in quantities:
            if q.kind == "n":
                selects.append("count(*)")
            elif q.kind == "nn":
                selects.append(f"count({value_cols[q.column or '']})")
            elif q.kind == "s":
                selects.append(f"CAST(sum({value_cols[q.column or '']}) AS HUGEINT)")
            elif q.kind == "ss":
                y = value_cols[q.column or ""]
                selects.append(f"CAST(sum(CAST({y} AS HUGEINT) * {y}) AS HUGEINT)")
            else:
                assert q.aggregate in aggs
                selects.append(
                    f"count(*) FILTER (WHERE {hist_cols[q.aggregate]} = {int(q.bin or 0)})"
                )
        with self._lock:
            source, registered = self._cell_source(spec, extra, params)
            sql = f"SELECT __cell, {', '.join(selects)} FROM ({source}) GROUP BY __cell"
            try:
                rows = self._con.execute(sql, params).fetchall()
            finally:
                for name in registered:
                    self._con.unregister(name)
        values: dict[int, tuple[int, ...]] = {}
        out_of_domain = 0
        for row in rows:
            ints = tuple(int(v or 0) for v in row[1:])
            if row[0] is None:
                out_of_domain = ints[0]
                continue
            values[int(row[0])] = ints
            for q, v in zip(quantities, ints, strict=True):
                if v < 0 or v.bit_length() > q.bits:
                    raise DataError(
                        f"agency {self.agency!r}: {q.key} = {v} in cell {row[0]} exceeds 2^{q.bits}"
                    )
        result = CellAggregates(quantities, values, out_of_domain)
        with self._lock:
            self._cache[key] = result
            while len(self._cache) > _CACHE_SIZE:
                self._cache.popitem(last=False)
        return result

    def _bin_expr(self, a: Aggregate, params: list[Any]) -> str:
        """Histogram bin of the raw value (numpy's rule: half-open bins, the last closed)."""
        assert a.bins is not None and a.column is not None
        x = f"CAST({quote_ident(a.column)} AS DOUBLE)"
        edges = list(a.bins)
        params.extend([edges[0], edges[-1]])
        parts = [f"CASE WHEN {x} IS NULL OR {x} < ? OR {x} > ? THEN NULL"]
        for j, e in enumerate(edges[1:-1]):
            params.append(e)
            parts.append(f"WHEN {x} < ? THEN {j}")
        parts.append(f"ELSE {len(edges) - 2} END")
        return " ".join(parts)

    def bracket_counts(
        self, spec: QuerySpec, column: str, targets: Sequence[Sequence[int]]
    ) -> dict[tuple[int, int], int]:
        """Counts of offset fixed-point values of ``column`` in bins of per-cell brackets.

        Parameters
        ----------
        targets : sequence of (target id, cell, low, high, bins)
            Bracket ``[low, high]`` (integer units) of ``cell`` split into ``bins`` bins;
            bin ``j`` holds values ``v`` with ``(v - low) · bins // (high - low + 1) == j``.

        Returns
        -------
        dict
            ``(target id, bin) -> count`` (zero counts omitted).
        """
        self._check_spec(spec)
        if not targets:
            return {}
        frame = pd.DataFrame(
            [list(map(int, t)) for t in targets], columns=["tid", "cell", "lo", "hi", "k"]
        )
        params: list[Any] = []
        y = self._value_expr(spec, column, params)
        with self._lock:
            source, registered = self._cell_source(spec, [f"{y} AS __y"], params)
            self._con.register("__targets", frame)
            registered.append("__targets")
            sql = (
                "SELECT t.tid, (d.__y - t.lo) * t.k // (t.hi - t.lo + 1) AS bin, count(*) "
                f"FROM ({source}) AS d JOIN __targets AS t "
                "ON d.__cell = t.cell AND d.__y BETWEEN t.lo AND t.hi GROUP BY 1, 2"
            )
            try:
                rows = self._con.execute(sql, params).fetchall()
            finally:
                for name in registered:
                    self._con.unregister(name)
        return {(int(t), int(b)): int(c) for t, b, c in rows}


def _load_expr(column: str, kind: str) -> str:
    """The typed column of the loaded table (a float NaN counts as missing, like pandas)."""
    q = quote_ident(column)
    cast = f"TRY_CAST({q} AS {_SQL_TYPES[kind]})"
    if kind == "float":
        cast = f"CASE WHEN isnan({cast}) THEN NULL ELSE {cast} END"
    return f"{cast} AS {q}"


# -- the vetted local steps --------------------------------------------------------------------
def _spec_of(params: Mapping[str, Any]) -> QuerySpec:
    spec = QuerySpec.from_dict(params["spec"])
    if params.get("table") != spec.table:
        raise QueryError(
            f"task table {params.get('table')!r} differs from the spec's {spec.table!r}"
        )
    return spec


def _as_table(table: Any) -> LocalTable:
    if not isinstance(table, LocalTable):
        raise QueryError(f"query steps run on a LocalTable, got {type(table).__name__}")
    return table


def block_of(q: Quantity) -> str:
    """The differential-privacy noise block of a quantity (:mod:`fedcity.analytics.privacy`)."""
    return f"h:{q.aggregate}" if q.kind == "h" else q.key


def _noised(
    params: Mapping[str, Any], values: Sequence[int], blocks: Sequence[str], agency: str
) -> list[int]:
    """``values`` plus this agency's noise share per block, each entry within ``2^limb_bits``."""
    from fedcity.analytics.privacy import sample_share

    dp = params["dp"]
    if not isinstance(dp, Mapping) or dp.get("noise") not in ("gaussian", "skellam"):
        raise QueryError(f"invalid differential-privacy parameters {dp!r}")
    bits = _limb_bits(params)
    out = list(values)
    for block in sorted(set(blocks)):
        idx = [i for i, b in enumerate(blocks) if b == block]
        try:
            share = float(dp["share"][block])
            bound = int(dp["noise_bound"][block])
        except (KeyError, TypeError, ValueError) as exc:
            raise QueryError(f"no noise parameters for block {block!r}") from exc
        noise = sample_share(dp["noise"], share, len(idx), bound=bound)
        for i, eta in zip(idx, noise.tolist(), strict=True):
            out[i] += int(eta)
    limit = (1 << bits) - 1
    big = [i for i, v in enumerate(out) if abs(v) > limit]
    if big:
        raise DataError(
            f"agency {agency!r}: a noised {blocks[big[0]]} value exceeds the encoding range "
            f"2^{bits} of a query with differential privacy (no limbs under DP); narrow the "
            "clip range or lower the decimals"
        )
    return out


@local_step("query.presence")
def presence_step(params: Mapping[str, Any], table: Any) -> npt.NDArray[np.float64]:
    """Per cell: 1 if this agency has at least one matching row, else 0.

    Not used under differential privacy (every cell is then computed in one noisy round).
    """
    spec = _spec_of(params)
    if params.get("dp"):
        raise QueryError("a query with differential privacy has no presence round")
    agg = _as_table(table).aggregate(spec)
    out = np.zeros(spec.n_cells, dtype=np.float64)
    for cell, vals in agg.values.items():
        if vals[0] > 0:
            out[cell] = 1.0
    return _exact(params, out)


@local_step("query.cells")
def cells_step(params: Mapping[str, Any], table: Any) -> npt.NDArray[np.float64]:
    """For the eligible cells only: every quantity's limbs, then the out-of-domain rows."""
    spec = _spec_of(params)
    bits = _limb_bits(params)
    cells = eligible_from_ranges(params["cells"], spec.n_cells)
    tab = _as_table(table)
    agg = tab.aggregate(spec)
    quantities = agg.quantities
    zero = (0,) * len(quantities)
    out: list[int] = []
    if params.get("dp"):  # one noised entry per quantity: no limbs (module notes of privacy)
        blocks: list[str] = []
        for cell in cells:
            out.extend(agg.values.get(cell, zero))
            blocks.extend(block_of(q) for q in quantities)
        out.append(agg.out_of_domain)
        blocks.append("n")
        return _exact(params, _noised(params, out, blocks, tab.agency))
    for cell in cells:
        vals = agg.values.get(cell, zero)
        for q, v in zip(quantities, vals, strict=True):
            out.extend(to_limbs(v, q.n_limbs(bits), bits))
    out.extend(to_limbs(agg.out_of_domain, -(-ROW_BITS // bits), bits))
    return _exact(params, out)


@local_step("query.quantile")
def quantile_step(params: Mapping[str, Any], table: Any) -> npt.NDArray[np.float64]:
    """Bin counts of each target bracket (``params["targets"]``), ``limbs`` limbs per bin."""
    spec = _spec_of(params)
    bits = _limb_bits(params)
    tab = _as_table(table)
    targets = params["targets"]  # [column, cell, lo, hi, bins, limbs]
    by_column: dict[str, list[list[int]]] = {}
    for tid, t in enumerate(targets):
        column = str(t[0])
        if column not in spec.columns or spec.columns[column].clip is None:
            raise QueryError(f"quantile target on undeclared column {column!r}")
        cell, lo, hi, k = (int(v) for v in t[1:5])
        _, lo_u, hi_u = spec.columns[column].units(column)
        if not (0 <= cell < spec.n_cells and 0 <= lo <= hi <= hi_u - lo_u and 1 <= k <= 1024):
            raise QueryError(f"invalid quantile target {t!r}")
        by_column.setdefault(column, []).append([tid, cell, lo, hi, k])
    counts: dict[tuple[int, int], int] = {}
    for column, ts in by_column.items():
        counts.update(tab.bracket_counts(spec, column, ts))
    out: list[int] = []
    for tid, t in enumerate(targets):
        k, limbs = int(t[4]), int(t[5])
        for j in range(k):
            out.extend(to_limbs(counts.get((tid, j), 0), limbs, bits))
    return _exact(params, out)
