"""Cost of disclosure control: complementary suppression next to primary-only suppression.

Complementary suppression (``fedcity.analytics.disclosure.suppress``) audits every withheld
cell with linear algebra and linear programs; it runs while the coordinator holds its state,
which is why a release may protect at most ``MAX_PROTECTED_CELLS`` cells and a query without
DP grouped by three or more columns may have at most ``MAX_CELLS_3D`` cells. This measures it
on random tables with a share of small cells, next to the primary and agency-count rule alone
(``basic_suppression``), in the same run.

    .venv/bin/python benchmarks/bench_disclosure.py [--seed 1]
"""

from __future__ import annotations

import argparse
import time

import numpy as np
from _common import CpuMonitor

from fedcity.analytics.disclosure import suppress
from fedcity.analytics.query import basic_suppression

CASES = [
    ((50, 40), 0.1),
    ((40, 25), 0.2),
    ((100, 100), 0.1),
    ((10, 10, 10), 0.1),
    ((20, 10, 10), 0.1),
]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seed", type=int, default=1, help="table generator seed (default 1)")
    args = parser.parse_args()
    rng = np.random.default_rng(args.seed)
    print("| cells | small cells | withheld | complementary s | primary-only s | ratio |")
    print("|---|--:|--:|--:|--:|--:|")
    monitor = CpuMonitor()
    start = monitor.snapshot()
    if True:
        for shape, share in CASES:
            counts = rng.integers(10, 200, shape).astype(float)
            small = rng.random(shape) < share
            counts[small] = rng.integers(1, 10, int(small.sum()))
            agencies = np.minimum(counts, 3).astype(np.int64)
            t0 = time.perf_counter()
            out = suppress(counts, agencies, min_count=10, min_agencies=2)
            full = time.perf_counter() - t0
            t0 = time.perf_counter()
            basic_suppression(counts, agencies, min_count=10, min_agencies=2)
            base = time.perf_counter() - t0
            dims = " × ".join(str(d) for d in shape)
            print(
                f"| {dims} | {int(small.sum()):,} | {int(out.mask.sum()):,} | {full:.2f} | "
                f"{base:.3f} | {full / base:,.0f}× |",
                flush=True,
            )
    load = monitor.since(start)
    shown = "unknown" if load is None else f"{load:.2f}"
    print(f"\nother processes used {shown} cores on average during the run")


if __name__ == "__main__":
    main()
