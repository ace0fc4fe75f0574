"""Elderly residents living alone with two days of near-zero electricity use, per district.

The synthetic city of :func:`fedcity.data.synthetic.make_elderly_city`: in every district the
electricity utility holds each household's daily use, and the civil-affairs office holds who
lives there, their age and whether they live alone. The question a welfare service asks every
week: per district and age band, how many elderly residents (65+) living alone had their use
drop below a threshold (default 0.5 kWh) on two consecutive days?

How the parts map to a deployment, and what this example simplifies:

* **Cross-department join (not done here).** In a real city the meter reads and the household
  register belong to two departments; matching them per resident is a cross-department
  (vertical) join that needs private set intersection, which is left to the cross-department
  issue. Here each district's agency holds both for its own district (the example joins them
  locally, standing in for that step).
* **The derived column.** The declarative query cannot express "two consecutive days", so the
  agency's own data pipeline (:func:`agency_table`) turns the daily reads into one row per
  resident with a 0/1 column ``low_use_2d``; only this table is registered for queries.
* **The query** (``queries/elderly_living_alone.toml``) filters ``lives_alone == 1``,
  ``age >= 65`` and ``low_use_2d == 1``, groups by district and age band and counts the rows:
  the flagged residents are counted as rows, not summed, so primary suppression applies to
  their number (a cell with fewer than 10 is withheld, and complementary suppression protects
  it). It runs with real threshold Paillier encryption in process; each cell belongs to one
  district, so the agency-count rule is 1 (each district publishes its own counts).
  ``queries/elderly_by_age_band.toml`` gives the city-wide figures per age band (residents
  living alone, how many were flagged, their share; at least 2 agencies per cell).

Both results are compared with pandas on the pooled data: counts exactly, shares to float
precision; the flags are also checked against the generator's planted spells.

    .venv/bin/python examples/elderly_living_alone.py [--residents 60000] [--days 14]
        [--threshold-kwh 0.5] [--key-bits 2048] [--plot elderly.png]
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
from fedcity.data.synthetic import ElderlyCity, age_band, make_elderly_city

QUERIES = Path(__file__).resolve().parent / "queries"
N_DISTRICTS = 6
"""Districts of the city (the query files declare district-1 .. district-6)."""
SCHEMA = TableSchema(
    "residents",
    {
        "district": "category",
        "age_band": "category",
        "age": "integer",
        "lives_alone": "integer",
        "low_use_2d": "integer",
    },
)


def low_use_flags(electricity: pd.DataFrame, threshold_kwh: float, days: int = 2) -> pd.Series:
    """1 for every resident whose use was below ``threshold_kwh`` on ``days`` consecutive days.

    Days without a reading count as not low. Indexed by ``resident_id``.
    """
    use = electricity.pivot(index="resident_id", columns="day", values="kwh")
    full = pd.date_range(min(use.columns), max(use.columns), freq="D").date
    low = (use.reindex(columns=full) < threshold_kwh).to_numpy()
    run = np.zeros(len(use), dtype=np.int64)
    hit = np.zeros(len(use), dtype=bool)
    for j in range(low.shape[1]):
        run = np.where(low[:, j], run + 1, 0)
        hit |= run >= days
    return pd.Series(hit.astype(np.int64), index=use.index, name="low_use_2d")


def agency_table(
    residents: pd.DataFrame, electricity: pd.DataFrame, threshold_kwh: float
) -> pd.DataFrame:
    """An agency's data pipeline: one row per resident with the derived ``low_use_2d``.

    The join on ``resident_id`` stands in for the cross-department step (see the module docs).
    """
    flags = low_use_flags(electricity, threshold_kwh)
    table = residents[["district", "resident_id", "age", "lives_alone"]].copy()
    table["age_band"] = age_band(table["age"])
    table["low_use_2d"] = table["resident_id"].map(flags).fillna(0).astype("int64")
    return table


def district_tables(city: ElderlyCity, threshold_kwh: float) -> dict[str, pd.DataFrame]:
    """Each district agency's query table, built from its own data only."""
    out = {}
    for name in city.districts:
        residents, electricity = city.district(name)
        out[name] = agency_table(residents, electricity, threshold_kwh)
    return out


_OPS = {
    "==": lambda c, v: c == v,
    "!=": lambda c, v: c != v,
    "<": lambda c, v: c < v,
    "<=": lambda c, v: c <= v,
    ">": lambda c, v: c > v,
    ">=": lambda c, v: c >= v,
    "in": lambda c, v: c.isin(list(v)),
    "not in": lambda c, v: ~c.isin(list(v)),
}


def pooled_answer(pooled: pd.DataFrame, spec: QuerySpec) -> pd.DataFrame:
    """The same query in pandas on the pooled residents (counts, sums and per-row ratios)."""
    keep = pd.Series(True, index=pooled.index)
    for f in spec.where:
        keep &= _OPS[f.op](pooled[f.column], f.value)
    groups = pooled[keep].groupby(spec.group_names())
    out = pd.DataFrame({"__n": groups.size()})
    for a in spec.aggregates:
        if a.func == "count":
            out[a.name] = out["__n"]
        elif a.func == "sum":
            out[a.name] = groups[a.column].sum()
        elif a.func == "ratio" and a.denominator is None:
            out[a.name] = a.scale * groups[a.numerator].sum() / out["__n"]
        else:
            raise ValueError(f"this example compares count, sum and ratio, not {a.func!r}")
    return out.drop(columns="__n").reset_index()


def compare(result: QueryResult, pooled: pd.DataFrame) -> pd.DataFrame:
    """Released cells with pandas' figures beside them (``<name>_pandas``) and ``equal``:
    counts and sums exactly, ratios within 1e-9."""
    spec = result.spec
    truth = pooled_answer(pooled, spec)
    merged = result.released.merge(
        truth, on=spec.group_names(), how="left", suffixes=("", "_pandas")
    )
    equal = pd.Series(True, index=merged.index)
    for a in spec.aggregates:
        ref = merged[a.name + "_pandas"]
        if a.func in ("count", "sum"):
            ref = ref.fillna(0).astype("int64")  # a cell pandas does not list is empty
            merged[a.name + "_pandas"] = ref
            equal &= merged[a.name].astype("int64") == ref
        else:
            fed, exp = merged[a.name].to_numpy(float), ref.to_numpy(float)
            error = np.where(np.isnan(fed) & np.isnan(exp), 0.0, np.abs(fed - exp))
            equal &= error <= 1e-9
    merged["equal"] = equal
    return merged


def run(
    tables: Sequence[LocalTable],
    spec: QuerySpec,
    key: tuple[ThresholdPublicKey, Sequence[KeyShare]],
    threshold: int,
) -> QueryResult:
    """One query over the district agencies (agency-count rule from the spec)."""
    federation = QueryFederation(
        tables,
        key=key,
        threshold=threshold,
        min_agencies=spec.disclosure.min_agencies,
    )
    return federation.run(spec)


def report(title: str, result: QueryResult, pooled: pd.DataFrame) -> bool:
    """Print the released table beside pandas; True when every released cell agrees."""
    comparison = compare(result, pooled)
    keys = result.spec.group_names()
    withheld = result.frame[result.frame["status"] == "suppressed"]
    print(f"\n== {title}")
    print(
        f"{len(result.frame)} cells: {len(comparison)} released, {len(withheld)} withheld; "
        f"{result.seconds:.1f} s, {result.bytes_total / 1024:.0f} KiB exchanged"
    )
    columns = list(keys)
    for a in result.spec.aggregates:
        columns += [a.name, a.name + "_pandas"]
    shown = comparison[[*columns, "equal"]].rename(
        columns={
            a.name + "_pandas": "(pandas)" + " " * i for i, a in enumerate(result.spec.aggregates)
        }
    )
    print(shown.to_string(index=False, float_format=lambda v: f"{v:.3g}"))
    for row in withheld.itertuples(index=False):
        cell = " / ".join(str(getattr(row, k)) for k in keys)
        print(f"  withheld {cell}: {row.reason}")
    ok = bool(comparison["equal"].all())
    print(("AGREES" if ok else "DIFFERS") + " with pandas on the pooled data")
    return ok


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description="Elderly residents living alone with two consecutive days of low "
        "electricity use, per district and age band, over district agencies with threshold "
        "Paillier encryption (synthetic city; compared with pandas on the pooled data)."
    )
    parser.add_argument("--residents", type=int, default=60_000, help="residents in the city")
    parser.add_argument("--days", type=int, default=14, help="days of meter reads")
    parser.add_argument("--threshold-kwh", type=float, default=0.5, help="low-use threshold")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--key-bits", type=int, default=2048, help="Paillier key size")
    parser.add_argument("--threshold", type=int, default=3, help="agencies needed to decrypt")
    parser.add_argument("--plot", type=Path, metavar="FILE", help="save a chart (.png or .svg)")
    args = parser.parse_args(argv)
    if not args.threshold_kwh > 0:
        parser.error(f"--threshold-kwh must be positive, got {args.threshold_kwh}")
    if not 1 <= args.threshold <= N_DISTRICTS:
        parser.error(f"--threshold must lie in [1, {N_DISTRICTS}], got {args.threshold}")
    if args.plot is not None and args.plot.suffix.lower() not in (".png", ".svg"):
        parser.error(f"--plot must end in .png or .svg, got {args.plot.name!r}")
    try:
        city = make_elderly_city(
            N_DISTRICTS, residents=args.residents, days=args.days, seed=args.seed
        )
    except ValueError as exc:
        parser.error(str(exc))
    frames = district_tables(city, args.threshold_kwh)
    pooled = pd.concat(frames.values(), ignore_index=True)
    tables = [LocalTable.from_frame(f, SCHEMA, agency=name) for name, f in frames.items()]
    print(
        f"{len(city.residents):,} residents in {N_DISTRICTS} districts, {args.days} days of "
        f"meter reads ({len(city.electricity):,}); each district agency flags its own residents "
        f"below {args.threshold_kwh:g} kWh on two consecutive days"
    )
    start = time.perf_counter()
    key = deal_threshold_key(args.key_bits, threshold=args.threshold, parties=len(tables))
    print(
        f"dealt a {args.key_bits}-bit {args.threshold}-of-{len(tables)} key in "
        f"{time.perf_counter() - start:.1f} s"
    )
    by_district = run(
        tables, QuerySpec.from_toml(QUERIES / "elderly_living_alone.toml"), key, args.threshold
    )
    ok = report("per district and age band", by_district, pooled)
    city_wide = run(
        tables, QuerySpec.from_toml(QUERIES / "elderly_by_age_band.toml"), key, args.threshold
    )
    ok = report("city-wide, per age band", city_wide, pooled) and ok

    # the flags against the generator's ground truth (planted spells of 2+ days)
    planted = set(city.spells.loc[city.spells["days"] >= 2, "resident_id"])
    flagged = set(pooled.loc[pooled["low_use_2d"] == 1, "resident_id"])
    print(
        f"\nflags vs the planted spells of 2+ days: {len(flagged & planted)} found, "
        f"{len(planted - flagged)} missed, {len(flagged - planted)} not planted"
    )
    if args.plot is not None:
        saved = by_district.plot(args.plot, "low_use_2d")
        print(f"chart saved to {saved.resolve()}")
    for t in tables:
        t.close()
    return 0 if ok else 1


if __name__ == "__main__":
    from fedcity.cli import run_interruptible

    sys.exit(run_interruptible(main, "elderly_living_alone.py"))
