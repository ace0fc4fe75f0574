#!/usr/bin/env python
"""Benchmark of a secure federated group-by query against the same query on pooled data.

Data: ``--agencies`` agencies (default 20) × ``--rows`` rows each (default 1,000,000), one
Parquet file per agency in a temporary directory (never in the repository), 100 groups
(``g000`` .. ``g099``, unequal sizes, some groups missing at some agencies), columns ``x``
(float, 2 decimals, clip [0, 1000]), ``y`` (integer events 0..20) and ``z`` (integer exposure
1..50).

Query: group by ``g``; 5 aggregates: ``n`` = count, ``events`` = sum(y), ``mean_x`` =
mean(x), ``sd_x`` = std(x) (ddof=1), ``rate`` = 1000·Σy/Σz.

Measured in the same run:

* **secure**: :class:`~fedcity.analytics.QueryFederation` in process (``run_query``'s engine),
  2048-bit threshold Paillier, ``t``-of-``n`` decryption (default a majority): presence round,
  eligible-cells round, each with every agency's DuckDB query on its own Parquet file,
  packing + encryption, homomorphic sum, ``t`` verified partial decryptions, combination. The
  agencies and decryptors run **one after another** in this process (a 2-core machine), so
  the wall time sums all of them; the *critical path* is what a deployment with the agencies
  on their own machines would wait for: per round, the slowest agency's local query +
  encryption, the coordinator's sum, the slowest decryptor's partial decryption, and the
  combination.
* **pandas**: the pooled data in one DataFrame (read time reported apart), ``groupby().agg``.
* **DuckDB**: the same SQL over all Parquet files at once (one process, all cores).

Key dealing and table registration (validation scan) are one-off set-up costs, reported apart.
Every released cell is checked against pandas (counts and integer sums exactly, the rest to
1e-9 relative).

Examples
--------
    python benchmarks/bench_analytics.py --agencies 4 --rows 100000 --key-bits 1024   # quick
    python benchmarks/bench_analytics.py --out /tmp/analytics.md                       # full
"""

from __future__ import annotations

import argparse
import contextlib
import shlex
import statistics
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import duckdb
import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
from _common import CpuMonitor, describe_machine, markdown

from fedcity.analytics import LocalTable, QueryFederation, QuerySpec, TableSchema
from fedcity.core.nodes import AgencyNode
from fedcity.crypto import deal_threshold_key

GROUPS = [f"g{i:03d}" for i in range(100)]
SCHEMA = TableSchema("events", {"g": "category", "x": "float", "y": "integer", "z": "integer"})
SPEC: dict[str, Any] = {
    "table": "events",
    "columns": {
        "g": {"levels": GROUPS},
        "x": {"clip": [0, 1000], "decimals": 2},
        "y": {"clip": [0, 20]},
        "z": {"clip": [1, 50]},
    },
    "group_by": ["g"],
    "aggregate": [
        {"name": "n", "func": "count"},
        {"name": "events", "func": "sum", "column": "y"},
        {"name": "mean_x", "func": "mean", "column": "x"},
        {"name": "sd_x", "func": "std", "column": "x"},
        {"name": "rate", "func": "ratio", "numerator": "y", "denominator": "z", "scale": 1000},
    ],
}
SQL = """
SELECT g, count(*) AS n, sum(y) AS events, avg(x) AS mean_x, stddev_samp(x) AS sd_x,
       1000.0 * sum(y) / sum(z) AS rate
FROM read_parquet(?) GROUP BY g ORDER BY g
"""


# -- data ------------------------------------------------------------------------------------
def write_agency_files(directory: Path, agencies: int, rows: int, seed: int) -> list[Path]:
    """One Parquet file per agency; group mix, means and rates differ by agency."""
    rng = np.random.default_rng(seed)
    base = 1.0 / np.arange(1, len(GROUPS) + 1) ** 0.7
    paths = []
    for a in range(agencies):
        weights = base * rng.uniform(0.5, 1.5, len(GROUPS))
        weights[rng.random(len(GROUPS)) < 0.1] = 0.0  # ~10 groups absent at this agency
        weights /= weights.sum()
        g = rng.choice(len(GROUPS), rows, p=weights)
        x = np.round(np.clip(rng.gamma(2.0, 40.0 + 2 * a, rows) + g, 0, 1000), 2)
        z = rng.integers(1, 51, rows)
        y = np.minimum(rng.poisson(0.02 * z * (1 + g / 100)), 20)
        table = pa.table(
            {
                "g": pa.DictionaryArray.from_arrays(pa.array(g.astype(np.int32)), pa.array(GROUPS)),
                "x": pa.array(x),
                "y": pa.array(y.astype(np.int64)),
                "z": pa.array(z.astype(np.int64)),
            }
        )
        path = directory / f"agency-{a:02d}.parquet"
        pq.write_table(table, path)
        paths.append(path)
    return paths


# -- baselines --------------------------------------------------------------------------------
def pandas_query(frame: pd.DataFrame) -> pd.DataFrame:
    """The query in pandas on the pooled rows."""
    out = frame.groupby("g", observed=True, sort=True).agg(
        n=("x", "size"),
        events=("y", "sum"),
        mean_x=("x", "mean"),
        sd_x=("x", "std"),
        z=("z", "sum"),
    )
    out["rate"] = 1000.0 * out["events"] / out["z"]
    return out.drop(columns="z")


def timed(fn: Callable[[], Any], repeats: int) -> tuple[float, Any]:
    """Median wall seconds of ``repeats`` calls, and the last result."""
    times, result = [], None
    for _ in range(repeats):
        start = time.perf_counter()
        result = fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times), result


# -- per-agency timing of the secure run -------------------------------------------------------
class StageClock:
    """Wraps each node's contribute/decrypt_share to record per-agency, per-round seconds."""

    def __init__(self, nodes: dict[str, AgencyNode]) -> None:
        self.local: dict[str, list[tuple[float, float]]] = {}  # kind -> [(query, encrypt)]
        self.partial: dict[str, list[float]] = {}
        for node in nodes.values():
            self._wrap(node)

    def _wrap(self, node: AgencyNode) -> None:
        contribute, decrypt_share = node.contribute, node.decrypt_share

        def timed_contribute(task: Any) -> bytes:
            before = (node.timings.local_training, node.timings.encryption)
            out = contribute(task)
            self.local.setdefault(task.request.kind, []).append(
                (
                    node.timings.local_training - before[0],
                    node.timings.encryption - before[1],
                )
            )
            return out

        def timed_decrypt(task: Any, *args: Any, **kwargs: Any) -> Any:
            start = time.perf_counter()
            out = decrypt_share(task, *args, **kwargs)
            self.partial.setdefault(task.request.kind, []).append(time.perf_counter() - start)
            return out

        node.contribute = timed_contribute  # type: ignore[method-assign]
        node.decrypt_share = timed_decrypt  # type: ignore[method-assign]


def check_equal(released: pd.DataFrame, truth: pd.DataFrame) -> tuple[int, float]:
    """Compare released cells with pandas; returns (cells compared, worst relative error)."""
    worst = 0.0
    cells = 0
    for row in released.itertuples(index=False):
        ref = truth.loc[row.g]
        cells += 1
        if int(row.n) != int(ref["n"]) or int(row.events) != int(ref["events"]):
            raise AssertionError(f"cell {row.g}: counts differ from pandas ({row} vs {ref})")
        for col in ("mean_x", "sd_x", "rate"):
            a, b = float(getattr(row, col)), float(ref[col])
            worst = max(worst, abs(a - b) / max(abs(b), 1e-300))
    if worst > 1e-9:
        raise AssertionError(f"a mean/std/rate differs from pandas by {worst:.2e} relative")
    return cells, worst


@contextlib.contextmanager
def data_dir(keep: str | None) -> Iterator[Path]:
    if keep:
        path = Path(keep)
        path.mkdir(parents=True, exist_ok=True)
        yield path
    else:
        with tempfile.TemporaryDirectory(prefix="fedcity-bench-analytics-") as tmp:
            yield Path(tmp)


def fmt_s(s: float) -> str:
    return f"{s * 1000:.0f} ms" if s < 1 else f"{s:.2f} s"


def fmt_b(n: float) -> str:
    return f"{n / 1024:.1f} KiB" if n < 1024**2 else f"{n / 1024**2:.2f} MiB"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--agencies", type=int, default=20)
    parser.add_argument("--rows", type=int, default=1_000_000, help="rows per agency")
    parser.add_argument("--key-bits", type=int, default=2048)
    parser.add_argument("--threshold", type=int, help="decryptors needed (default: majority)")
    parser.add_argument("--repeats", type=int, default=3, help="runs of each baseline (median)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--data-dir", help="keep the Parquet files here (default: a temp dir)")
    parser.add_argument("--out", type=Path, help="also write the report (markdown) here")
    parser.add_argument(
        "--wait-idle",
        type=float,
        default=0.0,
        metavar="SECONDS",
        help="before each measurement, wait up to this long for other processes to go quiet",
    )
    args = parser.parse_args(argv)
    if not 2 <= args.agencies <= 200 or not 100 <= args.rows <= 50_000_000:
        parser.error("--agencies must lie in [2, 200] and --rows in [100, 50,000,000]")
    threshold = args.threshold or args.agencies // 2 + 1
    monitor = CpuMonitor()
    lines: list[str] = []

    def say(text: str = "") -> None:
        print(text, flush=True)
        lines.append(text)

    machine = describe_machine(
        {
            "duckdb": duckdb.__version__,
            "pandas": pd.__version__,
            "numpy": np.__version__,
        }
    )
    say(f"Command: `python benchmarks/bench_analytics.py {shlex.join(sys.argv[1:])}`".rstrip())
    say("Machine: " + ", ".join(f"{k} {v}" for k, v in machine.items()))
    total_rows = args.agencies * args.rows
    say(
        f"Data: {args.agencies} agencies × {args.rows:,} rows = {total_rows:,} rows, "
        f"{len(GROUPS)} groups, 5 aggregates; {args.key_bits}-bit key, "
        f"{threshold}-of-{args.agencies} threshold decryption"
    )

    with data_dir(args.data_dir) as directory:
        t0 = time.perf_counter()
        paths = write_agency_files(directory, args.agencies, args.rows, args.seed)
        size = sum(p.stat().st_size for p in paths)
        wrote = time.perf_counter() - t0
        say(f"wrote {len(paths)} Parquet files ({fmt_b(size)}) in {fmt_s(wrote)}")

        # -- set-up: key dealing and table registration (one-off) -------------------------------
        t0 = time.perf_counter()
        key = deal_threshold_key(args.key_bits, threshold=threshold, parties=args.agencies)
        deal_s = time.perf_counter() - t0
        t0 = time.perf_counter()
        tables = [LocalTable(p, SCHEMA, agency=f"agency-{i:02d}") for i, p in enumerate(paths)]
        register_s = time.perf_counter() - t0
        federation = QueryFederation(tables, key=key, threshold=threshold)
        clock = StageClock(federation.agencies)
        spec = QuerySpec.from_dict(SPEC)

        monitor.wait_idle(args.wait_idle)
        # -- secure query ---------------------------------------------------------------------
        snap = monitor.snapshot()
        t0 = time.perf_counter()
        result = federation.run(spec)
        secure_s = time.perf_counter() - t0
        secure_load = monitor.since(snap)
        rounds = federation.rounds(result.job_id)

        monitor.wait_idle(args.wait_idle)
        # -- pandas on the pooled data --------------------------------------------------------
        snap = monitor.snapshot()
        t0 = time.perf_counter()
        pooled = pd.concat([pd.read_parquet(p) for p in paths], ignore_index=True)
        read_s = time.perf_counter() - t0
        pandas_s, truth = timed(lambda: pandas_query(pooled), args.repeats)
        pandas_load = monitor.since(snap)
        pooled = pd.DataFrame()  # free the memory before DuckDB runs

        monitor.wait_idle(args.wait_idle)
        # -- DuckDB on the pooled files -------------------------------------------------------
        snap = monitor.snapshot()
        con = duckdb.connect(":memory:")
        files = [str(p) for p in paths]
        duck_s, duck = timed(lambda: con.execute(SQL, [files]).df(), args.repeats)
        duck_load = monitor.since(snap)
        con.close()
        for t in tables:
            t.close()

    truth.index = truth.index.astype(str)
    cells, worst = check_equal(result.released, truth)
    duck = duck.set_index("g")
    duck_worst = float(
        np.max(np.abs(duck["mean_x"].to_numpy() - truth["mean_x"].to_numpy()))
        / truth["mean_x"].abs().max()
    )
    say(
        f"released {cells} of {len(result.frame)} cells (the rest withheld by disclosure "
        f"control); every released cell equals pandas: counts and sums exactly, mean/std/rate "
        f"within {worst:.1e} relative (DuckDB's means within {duck_worst:.1e})"
    )

    # -- per-round stages -----------------------------------------------------------------------
    say()
    rows = []
    critical = 0.0
    seq_local = seq_enc = seq_part = coord = 0.0
    for record, rnd in zip(result.history, rounds, strict=True):
        kind = rnd.task.request.kind
        local = clock.local.get(kind, [])
        partial = clock.partial.get(kind, [])
        slowest = max(q + e for q, e in local)
        # the coordinator's own stages: aggregation, verification of the partials, combination
        agency_stages = ("local_query", "encryption", "partial_decryption")
        coord_s = sum(v for k, v in record.seconds.items() if k not in agency_stages)
        path = slowest + max(partial) + coord_s
        critical += path
        seq_local += sum(q for q, _ in local)
        seq_enc += sum(e for _, e in local)
        seq_part += sum(partial)
        coord += coord_s
        upload = sum(len(b) for b in rnd.contributions.values())
        agg_bytes = len(rnd.aggregate_bytes or b"") * len(partial)
        part_bytes = sum(len(b) for b in rnd.partials.values())
        rows.append(
            [
                record.label,
                f"{rnd.task.request.length:,}",
                fmt_s(max(q for q, _ in local)),
                fmt_s(max(e for _, e in local)),
                fmt_s(statistics.median(partial)) + f" × {len(partial)}",
                fmt_s(coord_s)
                + " ("
                + " + ".join(
                    fmt_s(record.seconds.get(k, 0.0))
                    for k in ("aggregation", "verification", "combination")
                )
                + ")",
                fmt_s(path),
                fmt_b(upload / len(local)),
                fmt_b(upload + agg_bytes + part_bytes),
            ]
        )
    say(
        markdown(
            [
                "round",
                "entries",
                "local query (slowest agency)",
                "encryption (slowest)",
                "partial decryption (median × decryptors)",
                "coordinator (sum + verify partials + combine)",
                "critical path",
                "upload per agency",
                "bytes (up + to/from decryptors)",
            ],
            rows,
        )
    )
    total_bytes = sum(
        sum(len(b) for b in r.contributions.values())
        + len(r.aggregate_bytes or b"") * len(r.partials)
        + sum(len(b) for b in r.partials.values())
        for r in rounds
    )
    say()
    say(
        "Secure wall time, agencies one after another in one process: "
        f"{fmt_s(secure_s)} = local queries {fmt_s(seq_local)} + encryption {fmt_s(seq_enc)} + "
        f"partial decryptions {fmt_s(seq_part)} + coordinator {fmt_s(coord)} + other "
        f"{fmt_s(secure_s - seq_local - seq_enc - seq_part - coord)}"
    )
    say()

    def fmt_load(v: float | None) -> str:
        return "n/a" if v is None else f"{v:.2f}"

    summary = [
        [
            "secure query, sequential in one process (wall)",
            fmt_s(secure_s),
            fmt_b(total_bytes),
            f"{secure_s / pandas_s:.1f}×",
            f"{secure_s / duck_s:.1f}×",
            fmt_load(secure_load),
        ],
        [
            "secure query, critical path (agencies in parallel)",
            fmt_s(critical),
            fmt_b(total_bytes),
            f"{critical / pandas_s:.1f}×",
            f"{critical / duck_s:.1f}×",
            "",
        ],
        [
            "pandas, pooled DataFrame in memory (groupby.agg)",
            fmt_s(pandas_s),
            "",
            "1.0×",
            f"{pandas_s / duck_s:.1f}×",
            fmt_load(pandas_load),
        ],
        [
            "pandas, read the Parquet files + groupby.agg",
            fmt_s(read_s + pandas_s),
            "",
            f"{(read_s + pandas_s) / pandas_s:.1f}×",
            f"{(read_s + pandas_s) / duck_s:.1f}×",
            "",
        ],
        [
            "DuckDB, SQL over the pooled Parquet files",
            fmt_s(duck_s),
            "",
            f"{duck_s / pandas_s:.2f}×",
            "1.0×",
            fmt_load(duck_load),
        ],
    ]
    say(markdown(["", "time", "bytes", "÷ pandas", "÷ DuckDB", "other cores busy"], summary))
    say()
    say(
        f"Set-up, not in the times above: dealing the {args.key_bits}-bit {threshold}-of-"
        f"{args.agencies} key {fmt_s(deal_s)}; registering the {args.agencies} tables "
        f"(schema check, one scan each) {fmt_s(register_s)}."
    )
    target = 2 * pandas_s
    verdict = "met" if secure_s <= target else "not met"
    say(
        f"Target (secure within 2× pandas on the pooled data, {fmt_s(target)}): {verdict} "
        f"sequentially ({secure_s / pandas_s:.1f}×); critical path {critical / pandas_s:.1f}×."
    )
    if args.out:
        args.out.write_text("\n".join(lines) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
