"""The released answer of a query: a DataFrame with one row per cell, and how it was made.

Columns of :attr:`QueryResult.frame`: the group-by columns (their declared levels), one column
per aggregate (histograms: one per bin, ``name[lo,hi)``; quantiles: ``name``, ``name_low``,
``name_high``, the bracket that holds the true value), ``n_agencies`` (public: the number of
agencies with a matching row), ``status`` (``"released"`` or ``"suppressed"``) and ``reason``
(why a cell is withheld). With differential privacy every figure is noisy (counts may even be
negative), ``noise_scale`` gives the standard deviation of the noise of each cell's row count,
and :attr:`QueryResult.privacy` states ε, δ, the noise kind, the neighbouring relation and the
noise standard deviation of every aggregate.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd

from fedcity.analytics.spec import QueryError, QuerySpec
from fedcity.learn.algorithm import RoundRecord

if TYPE_CHECKING:
    from fedcity.analytics.query import QueryAlgorithm

__all__ = ["RESULT_FORMAT", "QueryResult"]

RESULT_FORMAT = "fedcity.query_result"
MAX_RESULT_BYTES = 256 * 1024 * 1024
"""Largest JSON form of a result that :meth:`QueryResult.from_json` reads."""
_MAX_PLOTTED_GROUPS = 40


def _json_value(v: Any) -> Any:
    if v is None or v is pd.NA:
        return None
    if isinstance(v, bool | np.bool_):
        return bool(v)
    if isinstance(v, int | np.integer):
        return int(v)
    if isinstance(v, float | np.floating):
        return float(v) if math.isfinite(v) else None
    return str(v)


@dataclass
class QueryResult:
    """A query's released table and its provenance.

    Attributes
    ----------
    spec : QuerySpec
    frame : pandas.DataFrame
        One row per cell (see the module docs).
    out_of_domain : int or None
        Rows, summed over agencies, that passed the filters but whose group value is missing
        or not a declared level (so that domain mismatches are visible).
    history : list of RoundRecord
        Every round: kind, contributors, decryptors, bytes and seconds.
    job_id : str
    seconds : float
    n_agencies : int
        Agencies that took part.
    privacy : dict or None
        ``{"epsilon", "delta", "noise"}`` when differential privacy was applied.
    """

    spec: QuerySpec
    frame: pd.DataFrame
    out_of_domain: int | None = None
    history: list[RoundRecord] = field(default_factory=list)
    job_id: str = ""
    seconds: float = 0.0
    n_agencies: int = 0
    privacy: dict[str, Any] | None = None

    # -- construction -------------------------------------------------------------------------
    @classmethod
    def from_algorithm(
        cls,
        algorithm: QueryAlgorithm,
        *,
        history: Sequence[RoundRecord] = (),
        job_id: str = "",
        seconds: float = 0.0,
    ) -> QueryResult:
        """Build the result of a finished :class:`~fedcity.analytics.query.QueryAlgorithm`."""
        if not algorithm.finished or algorithm.agencies_ is None or algorithm.mask_ is None:
            raise QueryError("the query has not finished; no result yet")
        assert algorithm.totals_ is not None and algorithm.reasons_ is not None
        spec = algorithm.spec
        data: dict[str, Any] = {}
        names = spec.group_names()
        if spec.group_by:
            grids = np.meshgrid(
                *[np.arange(len(spec.levels_of(g))) for g in spec.group_by], indexing="ij"
            )
            for name, g, grid in zip(names, spec.group_by, grids, strict=True):
                levels = np.asarray(spec.levels_of(g), dtype=object)
                data[name] = levels[grid.reshape(-1)]
        values = algorithm.cell_values()
        for col, vals in values.items():
            data[col] = vals
        data["n_agencies"] = algorithm.agencies_.reshape(-1).astype(np.int64)
        mask = algorithm.mask_.reshape(-1)
        data["status"] = np.where(mask, "suppressed", "released").astype(object)
        data["reason"] = algorithm.reasons_.reshape(-1).astype(object)
        privacy = None
        plan = algorithm.plan_
        if plan is not None:
            data["n_agencies"] = pd.array([None] * spec.n_cells, dtype="Int64")  # not released
            data["noise_scale"] = np.full(spec.n_cells, float(plan.stddev_per_block["n"]))
            privacy = {
                **plan.to_dict(),
                "stddev_per_aggregate": plan.stddev_for([a.to_dict() for a in spec.aggregates]),
            }
        frame = _typed_frame(pd.DataFrame(data), spec)
        return cls(
            spec=spec,
            frame=frame,
            out_of_domain=algorithm.totals_.out_of_domain,
            history=list(history),
            job_id=job_id,
            seconds=seconds,
            n_agencies=algorithm.n_contributors_ or 0,
            privacy=privacy,
        )

    # -- accessors ----------------------------------------------------------------------------
    @property
    def released(self) -> pd.DataFrame:
        """Only the released cells."""
        return self.frame[self.frame["status"] == "released"]

    @property
    def bytes_total(self) -> int:
        """Bytes that crossed the network: uploads plus aggregates sent to decryptors."""
        return int(
            sum(
                r.bytes_per_agency * len(r.contributors) + r.bytes_to_decryptors
                for r in self.history
            )
        )

    def rounds(self) -> pd.DataFrame:
        """Per round: kind, label, contributors, seconds and bytes."""
        rows = []
        for r in self.history:
            rows.append(
                {
                    "round": r.round,
                    "label": r.label,
                    "agencies": len(r.contributors),
                    "seconds": float(sum(r.seconds.values())),
                    "bytes": int(r.bytes_per_agency * len(r.contributors) + r.bytes_to_decryptors),
                }
            )
        return pd.DataFrame(rows, columns=["round", "label", "agencies", "seconds", "bytes"])

    def pivot(
        self, value: str | None = None, *, index: str | None = None, columns: str | None = None
    ) -> pd.DataFrame:
        """A cross-tab of one aggregate column (suppressed cells are NaN).

        Parameters
        ----------
        value : str, optional
            An aggregate column (default: the first aggregate).
        index, columns : str, optional
            Group columns (default: the first two group-by columns).
        """
        groups = self.spec.group_names()
        if len(groups) < 2 and (index is None or columns is None):
            raise QueryError("pivot needs two group-by columns (index and columns)")
        index = index or groups[0]
        columns = columns or groups[1]
        value = value or _agg_columns(self.spec)[0]
        for name in (index, columns):
            if name not in groups:
                raise QueryError(f"{name!r} is not a group-by column ({groups})")
        if value not in self.frame.columns or value in groups:
            raise QueryError(f"{value!r} is not an aggregate column of the result")
        table = self.frame.pivot_table(
            index=index, columns=columns, values=value, aggfunc="first", dropna=False, sort=False
        )
        return table

    # -- export -------------------------------------------------------------------------------
    def to_csv(self, path: str | Path) -> None:
        """Write :attr:`frame` as CSV."""
        self.frame.to_csv(path, index=False)

    def to_parquet(self, path: str | Path) -> None:
        """Write :attr:`frame` as Parquet."""
        self.frame.to_parquet(path, index=False)

    def to_json(self) -> str:
        """The JSON form the coordinator stores and clients read (:meth:`from_json`)."""
        frame = self.frame
        data = {
            "format": RESULT_FORMAT,
            "version": 1,
            "job_id": self.job_id,
            "spec": self.spec.to_dict(),
            "columns": list(map(str, frame.columns)),
            "dtypes": [str(t) for t in frame.dtypes],
            "rows": [[_json_value(v) for v in row] for row in frame.itertuples(index=False)],
            "out_of_domain": self.out_of_domain,
            "history": [_record_dict(r) for r in self.history],
            "seconds": float(self.seconds),
            "n_agencies": int(self.n_agencies),
            "privacy": self.privacy,
        }
        text = json.dumps(data, sort_keys=True, allow_nan=False, separators=(",", ":"))
        if len(text) > MAX_RESULT_BYTES:
            raise QueryError(f"the result is {len(text)} bytes of JSON (> {MAX_RESULT_BYTES})")
        return text

    @classmethod
    def from_json(cls, text: str | bytes) -> QueryResult:
        """Read what :meth:`to_json` wrote.

        Raises
        ------
        QueryError
            Not a query result, too large, or inconsistent.
        """
        if len(text) > MAX_RESULT_BYTES:
            raise QueryError(f"result JSON exceeds {MAX_RESULT_BYTES} bytes")
        try:
            data = json.loads(text)
        except json.JSONDecodeError as exc:
            raise QueryError(f"result is not valid JSON: {exc}") from exc
        if not isinstance(data, dict) or data.get("format") != RESULT_FORMAT:
            raise QueryError(f"not a fedcity query result (format must be {RESULT_FORMAT!r})")
        if data.get("version") != 1:
            raise QueryError(f"unsupported query result version {data.get('version')!r}")
        try:
            spec = QuerySpec.from_dict(data["spec"])
            columns = [str(c) for c in data["columns"]]
            dtypes = [str(t) for t in data["dtypes"]]
            rows = data["rows"]
            if len(dtypes) != len(columns) or any(len(r) != len(columns) for r in rows):
                raise QueryError("result rows do not match its columns")
            if len(rows) != spec.n_cells:
                raise QueryError(f"result has {len(rows)} rows for {spec.n_cells} cells")
            frame = pd.DataFrame(rows, columns=columns)
            for col, dtype in zip(columns, dtypes, strict=True):
                frame[col] = _restore(frame[col], dtype)
            history = [_record_from_dict(r) for r in data.get("history") or []]
            ood = data.get("out_of_domain")
            return cls(
                spec=spec,
                frame=frame,
                out_of_domain=None if ood is None else int(ood),
                history=history,
                job_id=str(data.get("job_id", "")),
                seconds=float(data.get("seconds", 0.0)),
                n_agencies=int(data.get("n_agencies", 0)),
                privacy=data.get("privacy"),
            )
        except (KeyError, TypeError, ValueError) as exc:
            if isinstance(exc, QueryError):
                raise
            raise QueryError(f"invalid query result: {exc!r}") from exc

    # -- display ------------------------------------------------------------------------------
    def __str__(self) -> str:
        frame = self.frame
        released = int((frame["status"] == "released").sum())
        head = [
            f"query on {self.spec.table!r}: {len(frame)} cells, {released} released, "
            f"{len(frame) - released} suppressed; {self.n_agencies} agencies",
        ]
        if self.out_of_domain:
            head.append(
                f"{self.out_of_domain} matching rows fall outside the declared group levels"
            )
        if self.history:
            head.append(
                f"{len(self.history)} rounds, {self.seconds:.2f} s, {self.bytes_total:,} bytes"
            )
        if self.privacy:
            head.append(f"differential privacy: {self.privacy}")
        with pd.option_context("display.max_columns", 30, "display.width", 120):
            body = frame.to_string(index=False, max_rows=60, na_rep="-")
        return "\n".join([*head, body])

    def plot(self, path: str | Path, aggregate: str | None = None) -> Path:
        """Draw a chart of one aggregate to ``path`` (``.png`` or ``.svg``).

        Histograms as bars per bin (one series per group), quantiles as points with their
        brackets, other aggregates as bars per group (grouped by the second group-by column).
        Suppressed cells are left out.

        Returns
        -------
        Path
        """
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        out = Path(path)
        if out.suffix.lower() not in (".png", ".svg"):
            raise QueryError(f"plot path must end in .png or .svg, got {out.name!r}")
        spec = self.spec
        name = aggregate or spec.aggregates[0].name
        agg = next((a for a in spec.aggregates if a.name == name), None)
        if agg is None:
            raise QueryError(
                f"no aggregate {name!r}; aggregates: {[a.name for a in spec.aggregates]}"
            )
        frame = self.released
        groups = spec.group_names()
        labels = (
            frame[groups].astype(str).agg(" / ".join, axis=1).tolist()
            if groups
            else ["all"] * len(frame)
        )
        fig, ax = plt.subplots(figsize=(9, 5))
        if agg.func == "histogram":
            assert agg.bins is not None
            cols = [c for c in frame.columns if c.startswith(f"{agg.name}[")]
            edges = np.asarray(agg.bins)
            rows = list(zip(labels, frame[cols].to_numpy(dtype=float), strict=True))
            rows = rows[:_MAX_PLOTTED_GROUPS]
            for label, counts in rows:  # bars for one group, outlines to compare several
                ax.stairs(counts, edges, label=label, fill=len(rows) == 1)
            ax.set_xlabel(agg.column or "")
            ax.set_ylabel("rows")
            if len(rows) <= 12 and groups:
                ax.legend(fontsize="small")
        elif agg.func == "quantile":
            y = frame[agg.name].to_numpy(dtype=float)[:_MAX_PLOTTED_GROUPS]
            lo = frame[f"{agg.name}_low"].to_numpy(dtype=float)[:_MAX_PLOTTED_GROUPS]
            hi = frame[f"{agg.name}_high"].to_numpy(dtype=float)[:_MAX_PLOTTED_GROUPS]
            x = np.arange(len(y))
            ax.errorbar(x, y, yerr=[y - lo, hi - y], fmt="o", capsize=3)
            ax.set_xticks(
                x, labels[:_MAX_PLOTTED_GROUPS], rotation=60, ha="right", fontsize="small"
            )
            ax.set_ylabel(f"q={agg.q:g} of {agg.column}")
        else:
            values = frame[name].to_numpy(dtype=float)
            if len(groups) >= 2:
                table = self.pivot(name).astype(float)
                table = table.iloc[:_MAX_PLOTTED_GROUPS, :12]
                n_series = table.shape[1]
                width = 0.8 / max(n_series, 1)
                x = np.arange(table.shape[0])
                for k, col in enumerate(table.columns):
                    ax.bar(x + k * width, table[col].to_numpy(), width, label=str(col))
                ax.set_xticks(
                    x + 0.4 - width / 2,
                    [str(i) for i in table.index],
                    rotation=60,
                    ha="right",
                    fontsize="small",
                )
                ax.legend(title=groups[1], fontsize="small")
            else:
                x = np.arange(min(len(values), _MAX_PLOTTED_GROUPS))
                ax.bar(x, values[: len(x)])
                ax.set_xticks(x, labels[: len(x)], rotation=60, ha="right", fontsize="small")
            ax.set_ylabel(f"{name} ({agg.func})")
        ax.set_title(f"{spec.table}: {name}")
        fig.tight_layout()
        fig.savefig(out)
        plt.close(fig)
        return out


def _agg_columns(spec: QuerySpec) -> list[str]:
    from fedcity.analytics.query import _output_columns

    return [c for a in spec.aggregates for c in _output_columns(spec, a.name)]


def _typed_frame(frame: pd.DataFrame, spec: QuerySpec) -> pd.DataFrame:
    """Counts and integer sums as nullable integers, the rest as floats."""
    from fedcity.analytics.query import _output_columns

    for a in spec.aggregates:
        for col in _output_columns(spec, a.name):
            integer = a.func in ("count", "histogram") or (
                a.func == "sum"
                and a.column is not None
                and (
                    spec.columns[a.column].type == "integer"
                    or spec.columns[a.column].resolved_decimals(a.column) == 0
                )
            )
            if integer:
                vals = frame[col]
                big = any(v is not None and not pd.isna(v) and abs(int(v)) >= 2**63 for v in vals)
                if not big:
                    frame[col] = pd.array(
                        [None if v is None or pd.isna(v) else int(v) for v in vals], dtype="Int64"
                    )
            else:
                frame[col] = pd.to_numeric(
                    frame[col].astype(object).where(frame[col].notna(), np.nan), errors="coerce"
                ).astype(float)
    return frame


def _restore(series: pd.Series, dtype: str) -> pd.Series:
    if dtype == "Int64":
        return pd.Series(pd.array(series.tolist(), dtype="Int64"), index=series.index)
    if dtype.startswith("int"):
        return series.astype(np.int64)
    if dtype.startswith("float"):
        return series.astype(float)
    if dtype in ("str", "string"):
        return series.astype(dtype)
    return series.astype(object)


def _record_dict(record: RoundRecord) -> dict[str, Any]:
    from fedcity.learn.jobs import record_to_dict

    return record_to_dict(record)


def _record_from_dict(data: Mapping[str, Any]) -> RoundRecord:
    allowed = set(RoundRecord.__dataclass_fields__)
    kwargs = {k: v for k, v in data.items() if k in allowed}
    return RoundRecord(**kwargs)
