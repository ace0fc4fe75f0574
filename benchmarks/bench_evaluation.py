#!/usr/bin/env python
"""Benchmark of federated evaluation: the one-round 8,192-bin histogram against the refined
histograms, next to training, in the same run.

1. **Chicago.** The Chicago example's job (logistic regression over 24 police-district
   agencies, 5-of-24 key): training wall time, then the federated evaluation on the City's
   1,637-inspection test window, each district scoring its own rows, once the way earlier
   versions did (``FederatedEvaluation(coarse_bins=None)``: one round, 16,389 values at 52
   bits) and with the default refinement (64-bin summary, then only the bins holding both
   classes split, 64 → 1,024 → 8,192, exact counts packed several to a value). Metrics of
   both and the AUC computed centrally from the same model. Target: evaluation <= 1/4 of
   training.
2. **Against a training round.** 10 agencies × 2,000 rows, 3-of-10 key: one FedAvg round of
   an ``MLPClassifier`` with 9,997 parameters, then the evaluation of that model on every
   agency's rows, both ways. Target: evaluation <= one training round.

Times are in-process wall times (agencies one after another in this process) and the sum of
stages of the rounds (agency stages at the slowest agency: the time with agencies in
parallel). The cores other processes used meanwhile are reported.

Examples
--------
    python benchmarks/bench_evaluation.py --quick                 # 1024-bit smoke run
    python benchmarks/bench_evaluation.py --out /tmp/evaluation.md  # 2048 bits, ~5 minutes
"""

from __future__ import annotations

import argparse
import shlex
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd
from _common import markdown, wide_frames
from bench_learning import (
    COST_AGENCIES,
    COST_FEATURES,
    COST_THRESHOLD,
    Report,
    TimedFederation,
    fmt_bytes,
    fmt_load,
    fmt_seconds,
    machine_info,
    metered,
    wide_agencies,
)
from sklearn.metrics import roc_auc_score
from sklearn.neural_network import MLPClassifier

from fedcity.data import AgencyDataset, DataUnavailable, load_chicago_inspections
from fedcity.learn import FedAvgJob, FederatedResult, LogisticRegressionJob
from fedcity.learn.algorithm import RoundRecord
from fedcity.learn.evaluation import FederatedEvaluation
from fedcity.learn.metrics import DEFAULT_LEVELS

CHICAGO_THRESHOLD = 5
METRICS = ("n", "prevalence", "log_loss", "brier", "accuracy", "roc_auc", "roc_auc_tie_bound")


@dataclass
class EvalRun:
    """One federated evaluation."""

    wall: float
    stages: float  # sum of stages over its rounds (agencies in parallel)
    partial: float  # slowest decryptor's partial decryption, summed over rounds
    rounds: list[RoundRecord]
    metrics: dict[str, float]

    @property
    def upload(self) -> float:
        return float(sum(r.bytes_per_agency for r in self.rounds))


def evaluate(
    fed: TimedFederation,
    result: FederatedResult,
    datasets: Sequence[AgencyDataset] | None,
    *,
    coarse_bins: int | tuple[int, ...] | None,
) -> EvalRun:
    """What ``LocalFederation.evaluate`` does, with a choice of ``coarse_bins``."""
    which = "train"
    job_id = fed.new_job()
    if datasets is not None:
        which = "test"
        for d in datasets:
            fed.agencies[d.agency].datasets[which] = d
        fed.jobs[job_id].dropped |= set(fed.agencies) - {d.agency for d in datasets}
    evaluation = FederatedEvaluation(
        result.model_params_, result.problem_, dataset=which, coarse_bins=coarse_bins
    )
    t0 = time.perf_counter()
    records = fed.run(evaluation, job_id=job_id)
    wall = time.perf_counter() - t0
    assert evaluation.metrics_ is not None
    return EvalRun(
        wall=wall,
        stages=sum(sum(r.seconds.values()) for r in records),
        partial=sum(r.seconds.get("partial_decryption", 0.0) for r in records),
        rounds=records,
        metrics=dict(evaluation.metrics_),
    )


def median_run(runs: list[EvalRun]) -> EvalRun:
    """The run with the median wall time."""
    return sorted(runs, key=lambda r: r.wall)[len(runs) // 2]


def eval_rows(legacy: EvalRun, new: EvalRun, base: float) -> list[list[str]]:
    rows = []
    for name, run in (
        ("one round, 8,192 bins, 52 bits (before)", legacy),
        ("refined, 64 → 1,024 → 8,192 bins (now)", new),
    ):
        labels = "; ".join(r.label.split(": ")[-1] for r in run.rounds)
        rows.append(
            [
                name,
                str(len(run.rounds)),
                fmt_bytes(run.upload),
                fmt_seconds(run.stages),
                fmt_seconds(run.wall),
                f"{run.wall / base:.3f}×",
                labels,
            ]
        )
    rows.append(
        [
            "**now ÷ before**",
            "",
            f"{new.upload / legacy.upload:.3f}×",
            f"{new.stages / legacy.stages:.3f}×",
            f"{new.wall / legacy.wall:.3f}×",
            "",
            "",
        ]
    )
    return rows


EVAL_HEADERS = [
    "evaluation",
    "rounds",
    "upload / agency",
    "sum of stages",
    "in-process wall",
    "÷ {base}",
    "rounds asked",
]


def metric_rows(legacy: EvalRun, new: EvalRun, central: dict[str, float]) -> list[list[str]]:
    rows = []
    for m in METRICS:
        a, b = legacy.metrics[m], new.metrics[m]
        ref = central.get(m)
        rows.append(
            [
                m,
                f"{a:.10g}",
                f"{b:.10g}",
                f"{abs(a - b):.1e}",
                "" if ref is None else f"{ref:.10g}",
                "" if ref is None else f"{abs(b - ref):.1e}",
            ]
        )
    return rows


def run_chicago(report: Report, args: argparse.Namespace) -> None:
    data = load_chicago_inspections(args.data)
    spec = data.spec
    test = data.test.assign(police_district=data.test["police_district"].fillna(-1))
    test_agencies = []
    for agency in data.agencies:
        key = agency.agency.removeprefix("district-")
        rows = test[test["police_district"] == (-1 if key == "unknown" else int(key))]
        if len(rows):
            test_agencies.append(AgencyDataset.from_frame(rows, spec, agency=agency.agency))
    name = "Chicago: training and evaluation"
    with metered(report.loads, name, args.wait_quiet):
        fed = TimedFederation(
            list(data.agencies),
            threshold=CHICAGO_THRESHOLD,
            key_bits=args.key_bits,
            workers=args.workers,
        )
        with fed:
            result = LogisticRegressionJob(C=1.0).fit(fed)
            train_wall = result.seconds_
            train_stages = sum(sum(r.seconds.values()) for r in result.history_)
            legacy = evaluate(fed, result, test_agencies, coarse_bins=None)
            news = [
                evaluate(fed, result, test_agencies, coarse_bins=DEFAULT_LEVELS) for _ in range(3)
            ]
    new = median_run(news)
    y = test[spec.label].to_numpy()
    p = result.estimator_.predict_proba(test)[:, 1]
    central = {"roc_auc": float(roc_auc_score(y, p)), "n": float(len(y))}
    report.add(
        f"\n## Chicago ({len(data.agencies)} agencies, key {CHICAGO_THRESHOLD}-of-"
        f"{len(data.agencies)}, {args.key_bits} bits, workers={args.workers})\n\n"
        f"Training (LogisticRegressionJob(C=1), {len(result.history_)} rounds): "
        f"{fmt_seconds(train_wall)} in process, {fmt_seconds(train_stages)} as the sum of "
        f"stages. Evaluation on {len(y):,} test inspections held by {len(test_agencies)} "
        f"districts; the refined figure is the median of {len(news)} runs "
        f"({', '.join(fmt_seconds(r.wall) for r in news)}).\n"
    )
    headers = [h.replace("{base}", "training") for h in EVAL_HEADERS]
    report.add(markdown(headers, eval_rows(legacy, new, train_wall)))
    ok = new.wall <= train_wall / 4
    report.add(
        f"\nTarget evaluation <= 1/4 of training: {new.wall:.2f} s against "
        f"{train_wall / 4:.2f} s — {report.check('Chicago: evaluation <= 1/4 training', ok)} "
        f"(before: {legacy.wall / train_wall:.2f}× training).\n"
    )
    report.add(
        markdown(
            ["metric", "before", "now", "|now − before|", "central (sklearn)", "|now − central|"],
            metric_rows(legacy, new, central),
        )
    )
    load = report.loads.get(name)
    report.add(f"\nOther processes used {fmt_load(load)} cores on average meanwhile.")


def run_round(report: Report, args: argparse.Namespace) -> None:
    rows = 300 if args.quick else 2000
    agencies = wide_agencies(COST_AGENCIES, rows, COST_FEATURES)
    hidden = 196
    n_params = (COST_FEATURES + 1) * hidden + hidden + 1
    name = "9,997-parameter round and evaluation"
    with metered(report.loads, name, args.wait_quiet):
        fed = TimedFederation(
            list(agencies), threshold=COST_THRESHOLD, key_bits=args.key_bits, workers=args.workers
        )
        with fed:
            result = FedAvgJob(
                MLPClassifier(hidden_layer_sizes=(hidden,)), rounds=2, classes=[0, 1]
            ).fit(fed)
            recs = [r for r in result.history_ if r.kind == "fedavg.local"]
            last = recs[-1]  # the first round also starts the workers
            round_wall = fed.wall(last)
            round_stages = sum(last.seconds.values())
            legacy = evaluate(fed, result, None, coarse_bins=None)
            news = [evaluate(fed, result, None, coarse_bins=DEFAULT_LEVELS) for _ in range(3)]
    new = median_run(news)
    pooled = pd.concat(wide_frames(COST_AGENCIES, rows, COST_FEATURES), ignore_index=True)
    y = pooled["y"].to_numpy()
    central = {
        "roc_auc": float(roc_auc_score(y, result.estimator_.predict_proba(pooled)[:, 1])),
        "n": float(len(y)),
    }
    report.add(
        f"\n## One training round at {n_params:,} parameters ({COST_AGENCIES} agencies × "
        f"{rows:,} rows, key {COST_THRESHOLD}-of-{COST_AGENCIES}, {args.key_bits} bits)\n\n"
        f"FedAvg round (MLPClassifier(hidden_layer_sizes=({hidden},)), second round): "
        f"{fmt_seconds(round_wall)} in process, {fmt_seconds(round_stages)} as the sum of "
        f"stages, {fmt_bytes(last.bytes_per_agency)} uploaded per agency. Evaluation of that "
        f"model on the agencies' {rows * COST_AGENCIES:,} rows; the refined figure is the "
        f"median of {len(news)} runs ({', '.join(fmt_seconds(r.wall) for r in news)}).\n"
    )
    headers = [h.replace("{base}", "round") for h in EVAL_HEADERS]
    report.add(markdown(headers, eval_rows(legacy, new, round_wall)))
    ok_wall = new.wall <= round_wall
    ok_stages = new.stages <= round_stages
    report.add(
        f"\nTarget evaluation <= one training round: in process {new.wall:.2f} s against "
        f"{round_wall:.2f} s — {report.check('evaluation <= round (in process)', ok_wall)}; "
        f"sum of stages {new.stages:.2f} s against {round_stages:.2f} s — "
        f"{report.check('evaluation <= round (sum of stages)', ok_stages)}. Before: "
        f"{legacy.wall / round_wall:.2f}× and {legacy.stages / round_stages:.2f}× a round.\n"
    )
    report.add(
        markdown(
            ["metric", "before", "now", "|now − before|", "central", "|now − central|"],
            metric_rows(legacy, new, central),
        )
    )
    load = report.loads.get(name)
    report.add(f"\nOther processes used {fmt_load(load)} cores on average meanwhile.")


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0] if __doc__ else None,
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    p.add_argument("--key-bits", type=int, default=2048, help="threshold key size")
    p.add_argument("--quick", action="store_true", help="smoke run: 1024-bit keys, 300 rows")
    p.add_argument("--only", choices=("chicago", "round"), help="run one section")
    p.add_argument("--out", type=Path, help="write the results as markdown here")
    p.add_argument("--data", help="shared data folder (default: FEDCITY_DATA or ../shared/data)")
    p.add_argument("--workers", type=int, default=2, help="crypto worker processes")
    p.add_argument(
        "--wait-quiet",
        type=float,
        default=0.0,
        metavar="SECONDS",
        help="before each section, wait up to this long for other processes to go quiet",
    )
    args = p.parse_args(argv)
    if args.quick:
        args.key_bits = 1024
    return args


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    command = "python benchmarks/bench_evaluation.py " + shlex.join(
        list(argv) if argv is not None else sys.argv[1:]
    )
    info: dict[str, Any] = machine_info()
    report = Report()
    start = time.perf_counter()
    report.add(
        f"Command: `{command.strip()}`  \nMachine: {info['nproc']} cores ({info['cpu']}), "
        f"Python {info['python']}, numpy {info['numpy']}, scikit-learn {info['scikit-learn']}."
    )
    if args.only in (None, "chicago"):
        try:
            run_chicago(report, args)
        except DataUnavailable as exc:
            report.add(f"\nChicago section skipped: {exc}")
    if args.only in (None, "round"):
        run_round(report, args)
    missed = [what for what, ok in report.checks if not ok]
    report.add(
        f"\nTarget checks: {len(report.checks) - len(missed)} of {len(report.checks)} met"
        + ("." if not missed else "; missed: " + "; ".join(missed) + ".")
    )
    report.add(f"Total benchmark time: {time.perf_counter() - start:.0f} s.")
    if args.out:
        args.out.write_text("\n".join(report.blocks) + "\n")
        print(f"\nwrote {args.out}")
    return 0 if not missed else 1


if __name__ == "__main__":
    sys.exit(main())
