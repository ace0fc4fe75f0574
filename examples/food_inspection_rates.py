"""Food-inspection failure and critical-violation rates, computed across police districts.

Each Chicago police district's food inspections are held by that district's own agency (a
table of its own; the 575 inspections without a district by a "district-unknown" desk). Two
secure federated queries run over them, in process with real threshold Paillier encryption
(every agency encrypts its own figures; the coordinator adds ciphertexts; a threshold of
agencies decrypts only the totals):

1. ``queries/food_inspection_rates.toml``: per police district and facility type, the number
   of inspections, critical violations found, and facilities that had failed their previous
   inspection, with both rates in percent. Every cell belongs to one district, so it
   publishes that district's own figure (the agency-count rule is 1 here, primary and
   complementary suppression apply); inspections without a district fall outside the
   declared levels and are reported as such.
2. ``queries/food_inspection_by_year.toml``: city-wide, per facility type and year; every cell
   combines several districts (at least 2 agencies per cell), so no district's own figure is
   visible.

Each released cell is compared with pandas on the pooled file: counts exactly, rates to float
precision. Columns used: ``police_district``, ``facility_type``, ``inspection_date``,
``critical_found`` (the inspection found a critical violation) and ``pastFail`` (the
facility's previous inspection failed; the file carries no pass/fail outcome of the
inspection itself, so "failure rate" here is the share of inspections of facilities that had
failed their previous inspection).

Data: City of Chicago, github.com/Chicago/food-inspections-evaluation (MIT licence), 18,712
inspections 2011-09..2014-10, prepared as described in ../shared/data/README.md. Pass the CSV
(or its data folder) with --data.

    .venv/bin/python examples/food_inspection_rates.py [--data PATH] [--key-bits 2048]
        [--threshold 5] [--plot rates.png]
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pandas as pd

from fedcity.analytics import LocalTable, QueryFederation, QueryResult, QuerySpec, TableSchema
from fedcity.crypto import KeyShare, ThresholdPublicKey, deal_threshold_key

HERE = Path(__file__).resolve().parent
QUERIES = HERE / "queries"
DEFAULT_DATA = (
    HERE.parent.parent / "shared" / "data" / "chicago_food_inspections" / "inspections.csv"
)
SOURCE = (
    "City of Chicago food inspections, github.com/Chicago/food-inspections-evaluation "
    "(MIT licence), prepared as in ../shared/data/README.md"
)
SCHEMA = TableSchema(
    "inspections",
    {
        "police_district": "category",
        "facility_type": "category",
        "inspection_date": "date",
        "critical_found": "integer",
        "pastFail": "integer",
    },
)
UNKNOWN = "district-unknown"
COUNTS = ["inspections", "critical", "failed_before"]
RATES = ["critical_pct", "failed_before_pct"]
RATE_TOLERANCE = 1e-9
"""Largest accepted difference of a rate from pandas, in percentage points."""


class DataMissing(Exception):
    """The inspections file is not there."""


def resolve_data(path: str | Path | None) -> Path:
    """The inspections CSV: ``path`` itself, or ``chicago_food_inspections/inspections.csv``
    under a data folder; the default is ``../shared/data/...`` relative to the repository."""
    p = Path(path) if path is not None else DEFAULT_DATA
    if p.is_dir():
        p = p / "chicago_food_inspections" / "inspections.csv"
    if not p.is_file():
        raise DataMissing(
            f"no inspections file at {p}; it holds the {SOURCE}. Pass its path with --data."
        )
    return p


def load_inspections(path: Path) -> pd.DataFrame:
    """The columns of the query, typed: districts as text ("1".."25", missing stays NA)."""
    frame = pd.read_csv(path, usecols=list(SCHEMA.columns))
    missing = sorted(set(SCHEMA.columns) - set(frame.columns))
    if missing:
        raise ValueError(f"{path} lacks the column(s) {missing}")
    district = frame["police_district"]
    frame["police_district"] = district.map(lambda v: None if pd.isna(v) else str(int(v)))
    frame["inspection_date"] = pd.to_datetime(frame["inspection_date"]).dt.date
    for col in ("critical_found", "pastFail"):
        frame[col] = frame[col].astype("int64")
    return frame


def district_tables(frame: pd.DataFrame) -> list[LocalTable]:
    """One agency per police district, holding only its own inspections."""
    tables = []
    known = frame["police_district"].notna()
    for district in sorted(frame.loc[known, "police_district"].unique(), key=int):
        rows = frame[frame["police_district"] == district].reset_index(drop=True)
        tables.append(LocalTable.from_frame(rows, SCHEMA, agency=f"district-{district}"))
    unknown = frame[~known].reset_index(drop=True)
    if len(unknown):
        tables.append(LocalTable.from_frame(unknown, SCHEMA, agency=UNKNOWN))
    return tables


def pooled_rates(frame: pd.DataFrame, spec: QuerySpec) -> pd.DataFrame:
    """The same query on the pooled rows in pandas (rows outside the levels dropped)."""
    data = frame.copy()
    keys = []
    for g, name in zip(spec.group_by, spec.group_names(), strict=True):
        col = data[g.column]
        if g.by == "year":
            col = pd.to_datetime(col).dt.strftime("%Y")
        data[name] = col
        data = data[data[name].isin(spec.levels_of(g))]
        keys.append(name)
    out = data.groupby(keys, observed=True).agg(
        inspections=("critical_found", "size"),
        critical=("critical_found", "sum"),
        failed_before=("pastFail", "sum"),
    )
    out["critical_pct"] = 100.0 * out["critical"] / out["inspections"]
    out["failed_before_pct"] = 100.0 * out["failed_before"] / out["inspections"]
    return out.reset_index()


def out_of_domain(frame: pd.DataFrame, spec: QuerySpec) -> int:
    """Rows whose group value is missing or not a declared level (pandas)."""
    inside = pd.Series(True, index=frame.index)
    for g in spec.group_by:
        col = frame[g.column]
        if g.by == "year":
            col = pd.to_datetime(col).dt.strftime("%Y")
        inside &= col.isin(spec.levels_of(g))
    return int((~inside).sum())


def compare(result: QueryResult, pooled: pd.DataFrame) -> pd.DataFrame:
    """Released cells next to pandas: counts must be equal, rates within float precision."""
    keys = result.spec.group_names()
    merged = result.released.merge(pooled, on=keys, how="left", suffixes=("", "_pandas"))
    for col in COUNTS:
        merged[col + "_pandas"] = merged[col + "_pandas"].fillna(0).astype("int64")
        merged[col + "_equal"] = merged[col].astype("int64") == merged[col + "_pandas"]
    for col in RATES:
        fed, ref = merged[col].to_numpy(float), merged[col + "_pandas"].to_numpy(float)
        both_nan = np.isnan(fed) & np.isnan(ref)  # 0 / 0: a cell with no inspection
        merged[col + "_error"] = np.where(both_nan, 0.0, np.abs(fed - ref))
    merged["equal"] = merged[[c + "_equal" for c in COUNTS]].all(axis=1) & (
        merged[[c + "_error" for c in RATES]].max(axis=1) <= RATE_TOLERANCE
    )
    return merged


def agrees(comparison: pd.DataFrame) -> bool:
    """Every count equal and every rate within :data:`RATE_TOLERANCE` (NaN = NaN)."""
    counts = all(bool(comparison[c + "_equal"].all()) for c in COUNTS)
    rates = all(bool((comparison[c + "_error"] <= RATE_TOLERANCE).all()) for c in RATES)
    return counts and rates


def run(
    frame: pd.DataFrame,
    spec: QuerySpec,
    tables: Sequence[LocalTable],
    key: tuple[ThresholdPublicKey, Sequence[KeyShare]],
    threshold: int,
) -> QueryResult:
    """One query over the district agencies (agency-count rule taken from the spec)."""
    federation = QueryFederation(
        tables, key=key, threshold=threshold, min_agencies=spec.disclosure.min_agencies
    )
    return federation.run(spec)


def report(title: str, result: QueryResult, frame: pd.DataFrame) -> bool:
    """Print a query's released table next to pandas; True when they agree."""
    spec = result.spec
    comparison = compare(result, pooled_rates(frame, spec))
    keys = spec.group_names()
    shown = comparison[
        [*keys, *COUNTS, "inspections_pandas", *RATES, "critical_pct_pandas", "equal"]
    ].rename(columns={"inspections_pandas": "(pandas)", "critical_pct_pandas": "(pandas) "})
    withheld = result.frame[result.frame["status"] == "suppressed"]
    expected_ood = out_of_domain(frame, spec)
    ok = agrees(comparison) and result.out_of_domain == expected_ood
    print(f"\n== {title}")
    print(
        f"{len(result.frame)} cells: {len(comparison)} released, {len(withheld)} withheld; "
        f"{result.seconds:.1f} s, {result.bytes_total / 1024:.0f} KiB exchanged"
    )
    with pd.option_context("display.width", 160, "display.max_columns", 20):
        print(shown.to_string(index=False, float_format=lambda v: f"{v:.4g}"))
    if len(withheld):
        print("withheld cells and why:")
        for row in withheld.itertuples(index=False):
            cell = " / ".join(str(getattr(row, k)) for k in keys)
            print(f"  {cell}: {row.reason}")
    print(
        f"rows outside the declared levels: federated {result.out_of_domain}, pandas {expected_ood}"
    )
    print(
        ("AGREES" if ok else "DIFFERS")
        + " with pandas on the pooled file: counts "
        + ("equal" if all(comparison[c + "_equal"].all() for c in COUNTS) else "NOT equal")
        + ", largest rate difference "
        + f"{max(float(comparison[c + '_error'].max()) for c in RATES):.1e} percentage points"
    )
    return ok


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description="Food-inspection failure and critical-violation rates by police district "
        "and facility type, each district's inspections held by its own agency, computed with "
        f"threshold Paillier encryption and compared with pandas. Data: {SOURCE}.",
    )
    parser.add_argument(
        "--data",
        help=f"the inspections CSV or its data folder (default: {DEFAULT_DATA})",
    )
    parser.add_argument("--key-bits", type=int, default=2048, help="Paillier key size")
    parser.add_argument("--threshold", type=int, default=5, help="agencies needed to decrypt")
    parser.add_argument(
        "--plot", type=Path, metavar="FILE", help="save a chart of the rates (.png or .svg)"
    )
    args = parser.parse_args(argv)
    try:
        path = resolve_data(args.data)
    except DataMissing as exc:
        print(exc, file=sys.stderr)
        return 2
    if args.plot is not None and args.plot.suffix.lower() not in (".png", ".svg"):
        parser.error(f"--plot must end in .png or .svg, got {args.plot.name!r}")
    frame = load_inspections(path)
    tables = district_tables(frame)
    sizes = sorted((t.n_rows for t in tables), reverse=True)
    print(
        f"{len(frame):,} inspections from {path}; {len(tables)} agencies (largest "
        f"{sizes[0]:,}, smallest {sizes[-1]:,} inspections)"
    )
    start = time.perf_counter()
    key = deal_threshold_key(args.key_bits, threshold=args.threshold, parties=len(tables))
    print(
        f"dealt a {args.key_bits}-bit {args.threshold}-of-{len(tables)} key in "
        f"{time.perf_counter() - start:.1f} s"
    )
    by_district = run(
        frame,
        QuerySpec.from_toml(QUERIES / "food_inspection_rates.toml"),
        tables,
        key,
        args.threshold,
    )
    ok = report("by police district and facility type", by_district, frame)
    by_year = run(
        frame,
        QuerySpec.from_toml(QUERIES / "food_inspection_by_year.toml"),
        tables,
        key,
        args.threshold,
    )
    ok = report("city-wide, by facility type and year", by_year, frame) and ok
    if args.plot is not None:
        saved = by_district.plot(args.plot, "critical_pct")
        print(f"chart of the critical-violation rate saved to {saved.resolve()}")
    for t in tables:
        t.close()
    return 0 if ok else 1


if __name__ == "__main__":
    from fedcity.cli import run_interruptible

    sys.exit(run_interruptible(main, "food_inspection_rates.py"))
