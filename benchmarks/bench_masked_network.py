#!/usr/bin/env python
"""fedcity lwr-masked threshold 3-of-10 over the network, next to packed threshold and SecAgg+.

The issue-13 comparison of ``bench_network.py --secagg`` for the opt-in masked aggregation
(``aggregation="lwr-masked"``, :mod:`fedcity.core.masked_scheme`), measured the same way by
importing that script's machinery (its ``FedcityCluster``, ``FlowerSim``, data, settling and
per-round CPU/bytes accounting): 10 agent daemons and a coordinator over TLS on loopback,
each agent behind a byte-counting proxy, a 3-of-10 threshold key; Flower 1.41's SecAgg+
(10 shares, reconstruction threshold 3) in its simulation engine with the same clients,
MLPs and data. Modes per repetition and model size, interleaved (the order rotates):

- ``threshold``: today's packed threshold Paillier FedAvg round (default ``aggregation``);
- ``lwr-masked``: the same cluster and job with ``"aggregation": "lwr-masked"`` (the update
  masked by the LWR PRF ``lwr-1024-q32-p24``, only the ``λ = 1024`` key values under
  Paillier; precision capped at 16 bits for 10 summands, see docs/learning.md);
- ``secagg+``: Flower SecAgg+ (simulation).

Per round: wall time, the slowest agency's CPU seconds (its own process, background
randomness-pool thread excluded: the per-agency critical path), coordinator CPU, bytes per
agency on the wire; medians and minima over repetitions and rounds; ratios against SecAgg+
measured in the same run; the pooled log loss of each mode's final model.

Examples
--------
    python benchmarks/bench_masked_network.py --out /tmp/masked-network.md
    python benchmarks/bench_masked_network.py --quick   # 1024-bit key, 300 rows, 1 rep: smoke
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shlex
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
import bench_network as bn

MODES = ("threshold", "lwr-masked", "secagg+")
LABELS = {
    "threshold": f"fedcity threshold {bn.THRESHOLD}-of-{bn.AGENCIES} (packed Paillier)",
    "lwr-masked": f"fedcity lwr-masked threshold {bn.THRESHOLD}-of-{bn.AGENCIES}",
    "secagg+": "Flower SecAgg+ (simulation)",
}


class Cluster(bn.FedcityCluster):
    """``bench_network``'s cluster; jobs name their aggregation scheme."""

    def job_with(
        self, aggregation: str, hidden: int, rounds: int, xs: list[Any], ys: list[Any]
    ) -> Any:
        submit = self.client.submit

        def with_scheme(job_type: str, params: dict[str, Any], *a: Any, **kw: Any) -> str:
            return submit(job_type, {**params, "aggregation": aggregation}, *a, **kw)

        self.client.submit = with_scheme  # type: ignore[method-assign]
        try:
            return self.job(hidden, rounds, xs, ys)
        finally:
            self.client.submit = submit  # type: ignore[method-assign]


def report(
    costs: dict[tuple[str, int], list[Any]], sizes: dict[int, int], args: argparse.Namespace
) -> str:
    def rounds(m: str, p: int) -> list[Any]:
        return [r for c in costs[m, p] for r in c.rounds]

    def stat(m: str, p: int, f: Any, how: Any = np.median) -> float:
        v = [f(r) for r in rounds(m, p)]
        return float(how(v)) if v else float("nan")

    lines = [
        "| parameters | mode | wall median | wall min | slowest agency CPU (median) | "
        "coordinator CPU | bytes up per agency | wall ÷ SecAgg+ | critical path ÷ SecAgg+ "
        "round | bytes ÷ SecAgg+ | pooled log loss |",
        "|---|---|--:|--:|--:|--:|--:|--:|--:|--:|--:|",
    ]
    for p in sizes:
        s_wall = stat("secagg+", p, lambda r: r.wall)
        s_up = stat("secagg+", p, lambda r: r.up)
        for m in MODES:
            if not costs[m, p]:
                continue
            wall = stat(m, p, lambda r: r.wall)
            crit = stat(m, p, lambda r: r.critical)
            up = stat(m, p, lambda r: r.up)
            losses = [c.loss for c in costs[m, p] if c.loss is not None]
            loss = f"{np.median(losses):.4f}" if losses else "–"
            ratios = (
                ["–", "–", "–"]
                if m == "secagg+"
                else [f"{wall / s_wall:.2f}×", f"{crit / s_wall:.2f}×", f"{up / s_up:.2f}×"]
            )
            lines.append(
                f"| {p:,} | {LABELS[m]} | {bn.fmt_s(wall)} | "
                f"{bn.fmt_s(stat(m, p, lambda r: r.wall, np.min))} | {bn.fmt_s(crit)} | "
                f"{bn.fmt_s(stat(m, p, lambda r: r.server_cpu))} | {up:,.0f} | "
                + " | ".join(ratios)
                + f" | {loss} |"
            )
    busy = [r.busy for cs in costs.values() for c in cs for r in c.rounds]
    lines.append(
        f"\nMachine busy during rounds (cores, median over all rounds): {np.median(busy):.2f}; "
        f"{args.reps} interleaved repetitions × {args.rounds} rounds per mode and size."
    )
    return "\n".join(lines)


def run(args: argparse.Namespace, command: str) -> int:
    os.environ.update(bn.FLWR_ENV)
    for k, v in bn.ONE_THREAD.items():
        os.environ.setdefault(k, v)
    harness = bn.load_harness()

    from fedcity.net.ceremony import deal_federation

    sizes = {bn.mlp_params(h): h for h in args.hidden_units}
    load_start = os.getloadavg()
    costs: dict[tuple[str, int], list[Any]] = {(m, p): [] for m in MODES for p in sizes}
    with contextlib.ExitStack() as stack:
        work, names, csv, spec = bn.workspace(stack, args, "bench-masked-")
        t0 = time.perf_counter()
        files = deal_federation(work / "federation", names, bn.THRESHOLD, key_bits=args.key_bits)
        print(f"ceremony: {args.key_bits}-bit key in {time.perf_counter() - t0:.1f} s")
        setup = harness.Setup(work / "federation", files, names, bn.THRESHOLD, "wide", spec, csv)
        ys, xs, inits = bn.flower_inputs(csv, names, spec, sizes, args.hidden_units[0])
        print("starting the Flower simulation (Ray) ...", flush=True)
        sim = bn.FlowerSim(work / "flower-sim", xs, ys, stack)
        print("starting the fedcity threshold cluster ...", flush=True)
        cluster = Cluster(harness, setup, work / "fedcity", stack)

        def one(mode: str, p: int, rounds: int) -> Any:
            if mode == "secagg+":
                return sim.job(mode, sizes[p], rounds, inits[p], xs, ys)
            scheme = "paillier" if mode == "threshold" else mode
            return cluster.job_with(scheme, sizes[p], rounds, xs, ys)

        print("warm-up (not measured): one round of every mode at every size ...", flush=True)
        for p in sizes:
            for mode in MODES:
                one(mode, p, 1)
        for rep in range(args.reps):
            for p in sizes:
                order = MODES[rep % len(MODES) :] + MODES[: rep % len(MODES)]
                for mode in order:
                    ours, busy = bn.settle(args.settle)
                    c = one(mode, p, args.rounds)
                    costs[mode, p].append(c)
                    walls = ", ".join(bn.fmt_s(r.wall) for r in c.rounds)
                    print(
                        f"rep {rep + 1}/{args.reps}  {p:6,d} params  {mode:10s} rounds {walls}  "
                        f"slowest agency CPU {bn.fmt_s(max(r.critical for r in c.rounds))}  "
                        f"(before: benchmark {ours:.2f}, machine {busy:.2f} cores)",
                        flush=True,
                    )
    load_end = os.getloadavg()
    text = (
        f"Command: `{command.strip()}`  \nMachine: {bn.machine()}; `nproc` = {os.cpu_count()}  \n"
        f"Load average (1, 5, 15 min) at start {load_start[0]:.2f}, {load_start[1]:.2f}, "
        f"{load_start[2]:.2f}; at end {load_end[0]:.2f}, {load_end[1]:.2f}, {load_end[2]:.2f}  \n"
        f"{bn.AGENCIES} agencies × {args.rows:,} rows, {bn.FEATURES} numeric features, "
        f"MLPClassifier, 1 local epoch; {args.key_bits}-bit keys; SecAgg+ with "
        f"{bn.SECAGG_SHARES} shares, reconstruction threshold {bn.SECAGG_RECONSTRUCTION}.\n\n"
        + report(costs, sizes, args)
    )
    print("\n" + text)
    if args.out is not None:
        args.out.write_text(text + "\n")
    if args.json is not None:
        args.json.write_text(
            json.dumps(
                {
                    f"{m} {p}": [
                        {"rounds": [vars(r) for r in c.rounds], "loss": c.loss} for c in cs
                    ]
                    for (m, p), cs in costs.items()
                },
                indent=1,
            )
        )
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    p.add_argument("--key-bits", type=int, default=2048)
    p.add_argument("--rounds", type=int, default=3, help="FedAvg rounds per job")
    p.add_argument("--rows", type=int, default=2000, help="rows per agency")
    p.add_argument("--reps", type=int, default=3, help="interleaved repetitions")
    p.add_argument(
        "--hidden-units",
        type=int,
        nargs="+",
        default=list(bn.HIDDEN.values()),
        help="hidden units of the MLPs (default 20 196: 1,021 and 9,997 parameters)",
    )
    p.add_argument("--settle", type=float, default=30.0, metavar="S")
    p.add_argument("--quick", action="store_true", help="1024-bit key, 300 rows, 2 rounds, 1 rep")
    p.add_argument("--out", type=Path, help="also write the markdown report here")
    p.add_argument("--json", type=Path, help="also write every measured round here")
    p.add_argument("--keep", type=Path, help="work folder to keep (default: a temporary one)")
    args = p.parse_args(argv)
    if args.quick:
        args.key_bits, args.rows, args.rounds, args.reps, args.settle = 1024, 300, 2, 1, 2.0
    command = "python benchmarks/bench_masked_network.py " + shlex.join(
        list(argv) if argv is not None else sys.argv[1:]
    )
    return run(args, command)


if __name__ == "__main__":
    raise SystemExit(main())
