#!/usr/bin/env python
"""Benchmark of fedcity's federated learning: fidelity against scikit-learn, cost per round.

Every figure is measured in this run next to its baseline and printed with the ratio or the
difference.

1. **Fidelity.** Federated jobs (Paillier, threshold key) on real data against the same
   scikit-learn estimator fitted on the pooled training rows, and against published figures:

   * Chicago food inspections (24 police-district agencies, 5-of-24 key): federated logistic
     regression; test AUC on the City's 1,637-inspection window by federated evaluation (each
     district scores its own test rows, only the sum of score histograms is decrypted) and
     computed centrally on the federated model; pooled ``LogisticRegression``; the City's
     published 0.679 and its score's AUC recomputed from the data. Requirement: federated AUC
     within 0.003 of pooled and >= 0.679.
   * FATE ``motor`` (3 sites, 2-of-3): ``RidgeJob(alpha=1e-6)`` vs ``Ridge(alpha=1e-6)``:
     test RMSE and R² (FATE's published figures for context). Requirement: within 0.1 %.
   * FATE ``breast`` homo split (2 parties, 2-of-2): federated vs pooled logistic regression:
     accuracy, AUC, log loss, largest relative coefficient difference. Requirement: 0.1 %.
   * Extra rows: FATE ``dvisits`` Poisson regression (deviance) and FATE ``default_credit``
     homo split (logistic), held to the same 0.1 % rule.

   Each job also runs with ``encrypted=False`` (same protocol, float64 in the clear) for a
   wall-time ratio.

2. **Cost per round.** 10 agencies (2,000 rows each, 49 numeric features), key 3-of-10,
   ``workers`` crypto processes: a logistic GLM Newton round (50 coefficients; the round
   sends gradient, upper-triangular Hessian and loss: 1,326 values), and FedAvg rounds of an
   ``MLPClassifier`` with 1,021 and 9,997 parameters. Seconds per stage
   (``RoundRecord.seconds``: agency stages are the slowest agency's time), the in-process
   wall time per round (agencies run one after another here), bytes uploaded per agency and
   sent to decryptors, each next to the same job with ``encrypted=False``.

The CPU time used by *other* processes while each job ran is read from ``/proc`` and
reported, since a shared 2-core machine shows it in every timing.

Examples
--------
    python benchmarks/bench_learning.py --quick               # 1024-bit smoke run
    python benchmarks/bench_learning.py --out /tmp/learning.md  # 2048 bits, 10-30 min
    python benchmarks/bench_learning.py --only cost --key-bits 3072
"""

from __future__ import annotations

import argparse
import contextlib
import math
import os
import shlex
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import sklearn
from _common import CpuMonitor, describe_machine, markdown, wide_frames
from sklearn.linear_model import LogisticRegression, PoissonRegressor, Ridge
from sklearn.metrics import (
    accuracy_score,
    log_loss,
    mean_poisson_deviance,
    mean_squared_error,
    r2_score,
    roc_auc_score,
)
from sklearn.neural_network import MLPClassifier
from sklearn.pipeline import Pipeline, make_pipeline

from fedcity.data import (
    AgencyDataset,
    DataUnavailable,
    FeatureSpec,
    FederatedPreprocessor,
    load_chicago_inspections,
    load_fate_dvisits,
    load_fate_horizontal,
    load_fate_motor,
)
from fedcity.learn import (
    FedAvgJob,
    FederatedResult,
    LocalFederation,
    LogisticRegressionJob,
    PoissonRegressionJob,
    RidgeJob,
)
from fedcity.learn.algorithm import RoundRecord

STAGES = (
    "local_training",
    "encryption",
    "aggregation",
    "partial_decryption",
    "verification",
    "combination",
)
AGENCY_STAGES = frozenset({"local_training", "encryption", "partial_decryption"})
FIDELITY_RTOL = 1e-3  # the 0.1 %
CHICAGO_AUC_GAP = 0.003
CHICAGO_PUBLISHED_AUC = 0.679
CHICAGO_THRESHOLD = 5
MOTOR_ALPHA = 1e-6
DVISITS_ALPHA = 1e-4
COST_AGENCIES, COST_THRESHOLD = 10, 3
COST_FEATURES = 49


# -- machine load ------------------------------------------------------------------------------
MONITOR = CpuMonitor()


@contextlib.contextmanager
def metered(loads: dict[str, float | None], name: str, wait_quiet: float = 0.0) -> Iterator[None]:
    """Record the cores other processes used while the block ran.

    With ``wait_quiet > 0``, first wait up to that many seconds for other processes to use
    less than :data:`IDLE_BELOW` cores.
    """
    print(f"\n== {name}", flush=True)
    if wait_quiet > 0:
        t_wait = time.monotonic()
        load = MONITOR.wait_idle(wait_quiet, probe=1.0)
        waited = time.monotonic() - t_wait
        if waited >= 1 and load is not None:
            print(f"   (waited {waited:.0f} s for quiet; other load now {load:.2f} cores)")
    start = MONITOR.snapshot()
    t0 = time.perf_counter()
    yield
    load = MONITOR.since(start)
    loads[name] = load
    extra = "" if load is None else f"; other processes used {load:.2f} cores meanwhile"
    print(f"   ({name}: {time.perf_counter() - t0:.1f} s{extra})", flush=True)


# -- a federation that also times whole rounds -----------------------------------------------
class TimedFederation(LocalFederation):
    """:class:`LocalFederation` that records the in-process wall time of every round.

    ``RoundRecord.seconds`` gives the slowest agency per agency stage (agencies are parallel
    in a real federation); here agencies run one after another, so the wall time of a round
    in this process is larger. It is taken between consecutive round completions.
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.round_wall: dict[int, float] = {}

    def run(
        self, algorithm: Any, *, job_id: str | None = None, dp: Any = None, progress: Any = None
    ) -> list[RoundRecord]:
        mark = time.perf_counter()

        def stamp(record: RoundRecord) -> None:
            nonlocal mark
            now = time.perf_counter()
            self.round_wall[id(record)] = now - mark
            mark = now
            if progress is not None:
                progress(record)

        return super().run(algorithm, job_id=job_id, dp=dp, progress=stamp)

    def wall(self, record: RoundRecord) -> float:
        """In-process wall time of one round."""
        return self.round_wall[id(record)]

    def partial_bytes(self, job_id: str, record: RoundRecord) -> float:
        """Mean bytes of one partial decryption (decryptor to coordinator) in a round."""
        sizes = [
            len(p)
            for rnd in self.jobs[job_id].rounds
            if rnd.task.round == record.round
            for p in rnd.partials.values()
        ]
        return float(np.mean(sizes)) if sizes else 0.0


# -- formatting --------------------------------------------------------------------------------
def fmt(value: float | None, digits: int = 4) -> str:
    """A number, or an em dash."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "—"
    if isinstance(value, int):
        return f"{value:,}"
    if value != 0 and (abs(value) < 10 ** -(digits - 1) or abs(value) >= 1e6):
        return f"{value:.2e}"
    return f"{value:.{digits}f}"


def fmt_seconds(value: float | None) -> str:
    """Seconds with sensible precision."""
    if value is None:
        return "—"
    if value == 0:
        return "0"
    if value < 0.001:
        return f"{value * 1e6:.0f} µs"
    if value < 1:
        return f"{value * 1e3:.1f} ms"
    return f"{value:.2f} s"


def fmt_bytes(value: float | None) -> str:
    """Bytes in B / KiB / MiB."""
    if value is None:
        return "—"
    if value < 1024:
        return f"{value:.0f} B"
    if value < 1024**2:
        return f"{value / 1024:.1f} KiB"
    return f"{value / 1024**2:.2f} MiB"


def fmt_ratio(value: float | None, base: float | None) -> str:
    """``value ÷ base`` as ``1.23×``."""
    if value is None or base is None or base == 0:
        return "—"
    return f"{value / base:.2f}×"


def signed(value: float) -> str:
    """A signed difference: 4 decimals, or scientific notation when tiny."""
    if value == 0 or abs(value) >= 1e-3:
        return f"{value:+.4f}"
    return f"{value:+.1e}"


def rel_diff(value: float, base: float) -> float:
    """``|value - base| / |base|``."""
    return abs(value - base) / abs(base) if base != 0 else abs(value - base)


@dataclass
class Report:
    """Markdown blocks in order, plus the requirement checks."""

    blocks: list[str] = field(default_factory=list)
    checks: list[tuple[str, bool]] = field(default_factory=list)
    loads: dict[str, float | None] = field(default_factory=dict)

    def add(self, text: str) -> None:
        self.blocks.append(text)
        print(text, flush=True)

    def check(self, what: str, ok: bool) -> str:
        self.checks.append((what, ok))
        return "met" if ok else "**missed**"


# -- fidelity ----------------------------------------------------------------------------------
@dataclass
class JobRun:
    """A federated job run encrypted and in the clear."""

    result: FederatedResult
    plain: FederatedResult
    metrics: dict[str, float]  # federated evaluation on the test rows, encrypted run
    seconds: float  # job wall time (training only), encrypted
    first_round: float  # in-process wall time of round 1 (worker start-up, fixed-base tables)
    plain_first_round: float
    plain_seconds: float
    eval_seconds: float
    newton_rounds: int
    rounds: int
    bytes_per_agency: float
    plain_bytes_per_agency: float


def run_job(
    make_job: Callable[[], Any],
    agencies: Sequence[AgencyDataset],
    test_agencies: Sequence[AgencyDataset],
    *,
    threshold: int,
    args: argparse.Namespace,
) -> JobRun:
    """Fit ``make_job()`` encrypted (and evaluate it federatedly), then in the clear."""
    fed = TimedFederation(
        list(agencies), threshold=threshold, key_bits=args.key_bits, workers=args.workers
    )
    with fed:
        result = make_job().fit(fed)
        first_round = fed.wall(result.history_[0])
        t0 = time.perf_counter()
        metrics = fed.evaluate(result, list(test_agencies))
        eval_seconds = time.perf_counter() - t0
    plain_fed = TimedFederation(list(agencies), threshold=threshold, encrypted=False)
    with plain_fed:
        plain = make_job().fit(plain_fed)
        plain_first = plain_fed.wall(plain.history_[0])
    newton = sum(r.kind == "glm.newton" for r in result.history_)
    return JobRun(
        result=result,
        plain=plain,
        metrics=metrics,
        seconds=result.seconds_,
        first_round=first_round,
        plain_first_round=plain_first,
        plain_seconds=plain.seconds_,
        eval_seconds=eval_seconds,
        newton_rounds=newton,
        rounds=len(result.history_),
        bytes_per_agency=result.bytes_per_agency_,
        plain_bytes_per_agency=plain.bytes_per_agency_,
    )


def split_rows(frame: pd.DataFrame, spec: FeatureSpec, names: Sequence[str]) -> list[AgencyDataset]:
    """Deal test rows to agencies in contiguous blocks (global metrics do not depend on it)."""
    parts = np.array_split(np.arange(len(frame)), len(names))
    return [
        AgencyDataset.from_frame(frame.iloc[idx], spec, agency=name)
        for idx, name in zip(parts, names, strict=True)
    ]


def pooled_pipeline(spec: FeatureSpec, estimator: Any) -> Pipeline:
    """The centralized baseline: fedcity's preprocessing fitted on pooled rows, then sklearn."""
    return make_pipeline(
        FederatedPreprocessor(numeric=spec.numeric, categorical=dict(spec.categorical)),
        estimator,
    )


def coef_diff(result: FederatedResult, pooled: Pipeline) -> tuple[float, float]:
    """Largest relative coefficient difference, elementwise and against the largest |β|.

    Both models sit on the same standardised design (the federated pipeline's released
    means and scales equal the pooled preprocessor's); intercepts are included.
    """
    fed_model, ref_model = result.estimator_[-1], pooled[-1]
    a = np.concatenate([np.ravel(fed_model.intercept_), np.ravel(fed_model.coef_)])
    b = np.concatenate([np.ravel(ref_model.intercept_), np.ravel(ref_model.coef_)])
    if a.shape != b.shape:
        return math.nan, math.nan
    elementwise = float(np.max(np.abs(a - b) / np.maximum(np.abs(b), 1e-300)))
    return elementwise, float(np.max(np.abs(a - b)) / np.max(np.abs(b)))


def coef_rows(
    report: Report, label: str, result: FederatedResult, pooled: Pipeline
) -> list[list[str]]:
    """Rows for the largest relative coefficient difference (checked elementwise)."""
    el, rel = coef_diff(result, pooled)
    return [
        [
            "max relative coefficient difference, elementwise",
            "",
            "",
            f"{el:.2e}",
            report.check(f"{label}: coefficients", el <= FIDELITY_RTOL),
        ],
        ["max coefficient difference / largest coefficient", "", "", f"{rel:.2e}", ""],
    ]


def fmt_load(load: float | None) -> str:
    """Cores used by other processes."""
    return "—" if load is None else f"{load:.2f}"


def job_table(name: str, run: JobRun, load: float | None) -> list[str]:
    """A row of the rounds-and-time table."""
    return [
        name,
        f"{run.newton_rounds} / {run.rounds}",
        fmt_seconds(run.seconds),
        fmt_seconds(run.first_round),
        fmt_seconds(run.plain_seconds),
        fmt_ratio(run.seconds, run.plain_seconds),
        fmt_ratio(run.seconds - run.first_round, run.plain_seconds - run.plain_first_round),
        fmt_seconds(run.eval_seconds),
        fmt_bytes(run.bytes_per_agency),
        fmt_bytes(run.plain_bytes_per_agency),
        fmt_load(load),
    ]


def metric_row(
    report: Report, what: str, fed: float, base: float, *, label: str, rtol: float = FIDELITY_RTOL
) -> list[str]:
    """Federated value, baseline, relative difference and the 0.1 % check."""
    diff = rel_diff(fed, base)
    return [
        what,
        fmt(fed, 6),
        fmt(base, 6),
        f"{diff:.2e}",
        report.check(f"{label}: {what}", diff <= rtol),
    ]


def fidelity_chicago(report: Report, args: argparse.Namespace, jobs: list[list[str]]) -> None:
    data = load_chicago_inspections(args.data)
    spec = data.spec
    test = data.test.assign(police_district=data.test["police_district"].fillna(-1))
    test_agencies = []
    for agency in data.agencies:  # each district scores its own share of the test window
        key = agency.agency.removeprefix("district-")
        rows = test[test["police_district"] == (-1 if key == "unknown" else int(key))]
        if len(rows):
            test_agencies.append(AgencyDataset.from_frame(rows, spec, agency=agency.agency))
    covered = sum(a.n_samples for a in test_agencies)
    with metered(report.loads, "Chicago food inspections", args.wait_quiet):
        run = run_job(
            lambda: LogisticRegressionJob(C=1.0),
            data.agencies,
            test_agencies,
            threshold=CHICAGO_THRESHOLD,
            args=args,
        )
        pooled = pooled_pipeline(
            spec, LogisticRegression(C=1.0, solver="newton-cholesky", tol=1e-10, max_iter=1000)
        )
        train = data.train_frame()
        pooled.fit(train, train[spec.label])
    y = test[spec.label].to_numpy()
    pooled_p = pooled.predict_proba(test)[:, 1]
    fed_p = run.result.estimator_.predict_proba(test)[:, 1]
    plain_p = run.plain.estimator_.predict_proba(test)[:, 1]
    pooled_auc = roc_auc_score(y, pooled_p)
    central_auc = roc_auc_score(y, fed_p)
    city_auc = roc_auc_score(y, data.city_scores())
    fed_auc = run.metrics["roc_auc"]
    gap_sum = abs(fed_auc - pooled_auc)
    gap_central = abs(central_auc - pooled_auc)
    ok_sum = gap_sum <= CHICAGO_AUC_GAP and fed_auc >= CHICAGO_PUBLISHED_AUC
    ok_central = gap_central <= CHICAGO_AUC_GAP and central_auc >= CHICAGO_PUBLISHED_AUC
    el, rel = coef_diff(run.result, pooled)
    rows = [
        [
            "fedcity, federated evaluation (secure sum of score histograms)",
            fmt(fed_auc),
            signed(fed_auc - pooled_auc),
            report.check("Chicago: secure-sum AUC within 0.003 of pooled and >= 0.679", ok_sum),
        ],
        [
            "fedcity model, AUC computed centrally",
            fmt(central_auc),
            signed(central_auc - pooled_auc),
            report.check("Chicago: central AUC within 0.003 of pooled and >= 0.679", ok_central),
        ],
        [
            "fedcity, same job with encryption off, central AUC",
            fmt(roc_auc_score(y, plain_p)),
            signed(roc_auc_score(y, plain_p) - pooled_auc),
            "",
        ],
        ["scikit-learn LogisticRegression(C=1) on pooled rows", fmt(pooled_auc), "0", ""],
        [
            "City of Chicago model score, recomputed",
            fmt(city_auc),
            signed(city_auc - pooled_auc),
            "",
        ],
        ["City of Chicago model, published", f"{CHICAGO_PUBLISHED_AUC:.3f}", "", ""],
    ]
    report.add(
        f"\n### Chicago food inspections: logistic regression over {len(data.agencies)} "
        f"police-district agencies, key {CHICAGO_THRESHOLD}-of-{len(data.agencies)}\n\n"
        f"Test window: {len(test):,} inspections ({int(y.sum())} critical); the federated "
        f"evaluation covers {covered:,} of them, each scored by its own district.\n"
    )
    report.add(markdown(["model", "test ROC AUC", "− pooled", "requirement"], rows))
    report.add(
        f"\nSecure-sum AUC binning bound (`roc_auc_tie_bound`): "
        f"{fmt(run.metrics['roc_auc_tie_bound'])}; its difference from the central AUC of the "
        f"same model: {abs(fed_auc - central_auc):.1e}. Federated log loss "
        f"{run.metrics['log_loss']:.5f} vs pooled {log_loss(y, pooled_p):.5f}; coefficients "
        f"differ from pooled by at most {el:.1e} relative (elementwise), {rel:.1e} of the "
        f"largest coefficient."
    )
    jobs.append(job_table("Chicago, logistic", run, report.loads.get("Chicago food inspections")))


def fidelity_motor(report: Report, args: argparse.Namespace, jobs: list[list[str]]) -> None:
    data = load_fate_motor(args.data)
    spec = data.spec
    test_agencies = split_rows(data.test, spec, data.agency_names)
    with metered(report.loads, "FATE motor", args.wait_quiet):
        run = run_job(
            lambda: RidgeJob(alpha=MOTOR_ALPHA),
            data.agencies,
            test_agencies,
            threshold=len(data.agencies) // 2 + 1,
            args=args,
        )
        pooled = pooled_pipeline(spec, Ridge(alpha=MOTOR_ALPHA))
        train = data.train_frame()
        pooled.fit(train, train[spec.label])
    y = data.test[spec.label].to_numpy()
    ref = pooled.predict(data.test)
    pred = run.result.estimator_.predict(data.test)
    rmse_ref = math.sqrt(mean_squared_error(y, ref))
    rmse = math.sqrt(mean_squared_error(y, pred))
    rows = [
        metric_row(report, "test RMSE (central)", rmse, rmse_ref, label="motor"),
        metric_row(
            report, "test RMSE (federated evaluation)", run.metrics["rmse"], rmse_ref, label="motor"
        ),
        metric_row(report, "test R² (central)", r2_score(y, pred), r2_score(y, ref), label="motor"),
        metric_row(
            report,
            "test R² (federated evaluation)",
            run.metrics["r2"],
            r2_score(y, ref),
            label="motor",
        ),
        *coef_rows(report, "motor", run.result, pooled),
    ]
    report.add(
        f"\n### FATE `motor`: RidgeJob(alpha={MOTOR_ALPHA:g}) over {len(data.agencies)} sites "
        f"(ambient-temperature bands), key {len(data.agencies) // 2 + 1}-of-"
        f"{len(data.agencies)}\n\n{data.n_train} training rows, {len(data.test)} test rows "
        "(every 5th `idx`); baseline scikit-learn `Ridge` with the same alpha on the pooled "
        "training rows.\n"
    )
    report.add(markdown(["metric", "fedcity", "scikit-learn", "relative diff", "0.1 %"], rows))
    report.add(
        "\nFATE's published figures, for context only (in-sample on all 800 rows, "
        "gradient-trained): local RMSE 0.3126 / R² 0.9040, hetero linear regression 0.3140 / "
        "0.9031 (0.45 % / 0.10 % apart)."
    )
    jobs.append(job_table("FATE motor, ridge", run, report.loads.get("FATE motor")))


def classification_rows(
    report: Report,
    label: str,
    run: JobRun,
    pooled: Pipeline,
    test: pd.DataFrame,
    spec: FeatureSpec,
) -> list[list[str]]:
    y = test[spec.label].to_numpy()
    ref = pooled.predict_proba(test)[:, 1]
    fed = run.result.estimator_.predict_proba(test)[:, 1]
    rows = [
        metric_row(
            report,
            "test accuracy (central)",
            accuracy_score(y, fed >= 0.5),
            accuracy_score(y, ref >= 0.5),
            label=label,
        ),
        metric_row(
            report,
            "test accuracy (federated evaluation)",
            run.metrics["accuracy"],
            accuracy_score(y, ref >= 0.5),
            label=label,
        ),
        metric_row(
            report,
            "test ROC AUC (central)",
            roc_auc_score(y, fed),
            roc_auc_score(y, ref),
            label=label,
        ),
        metric_row(
            report,
            "test ROC AUC (federated evaluation)",
            run.metrics["roc_auc"],
            roc_auc_score(y, ref),
            label=label,
        ),
        metric_row(
            report, "test log loss (central)", log_loss(y, fed), log_loss(y, ref), label=label
        ),
        metric_row(
            report,
            "test log loss (federated evaluation)",
            run.metrics["log_loss"],
            log_loss(y, ref),
            label=label,
        ),
    ]
    rows += coef_rows(report, label, run.result, pooled)
    return rows


def fidelity_fate_logistic(
    report: Report, args: argparse.Namespace, jobs: list[list[str]], name: str
) -> None:
    data = load_fate_horizontal(name, args.data)  # type: ignore[arg-type]
    spec = data.spec
    t = len(data.agencies) // 2 + 1
    test_agencies = split_rows(data.test, spec, data.agency_names)
    with metered(report.loads, f"FATE {name}", args.wait_quiet):
        run = run_job(
            lambda: LogisticRegressionJob(C=1.0),
            data.agencies,
            test_agencies,
            threshold=t,
            args=args,
        )
        pooled = pooled_pipeline(
            spec, LogisticRegression(C=1.0, solver="newton-cholesky", tol=1e-10, max_iter=1000)
        )
        train = data.train_frame()
        pooled.fit(train, train[spec.label])
    rows = classification_rows(report, name, run, pooled, data.test, spec)
    sizes = ", ".join(f"{a.agency} {a.n_samples:,}" for a in data.agencies)
    report.add(
        f"\n### FATE `{name}` homo split: LogisticRegressionJob(C=1) over "
        f"{len(data.agencies)} parties ({sizes}), key {t}-of-{len(data.agencies)}\n\n"
        f"{len(data.test):,} test rows; baseline scikit-learn `LogisticRegression(C=1, "
        "solver='newton-cholesky', tol=1e-10)` on the pooled training rows.\n"
    )
    report.add(markdown(["metric", "fedcity", "scikit-learn", "relative diff", "0.1 %"], rows))
    jobs.append(job_table(f"FATE {name}, logistic", run, report.loads.get(f"FATE {name}")))


def fidelity_dvisits(report: Report, args: argparse.Namespace, jobs: list[list[str]]) -> None:
    data = load_fate_dvisits(args.data)
    spec = data.spec
    t = len(data.agencies) // 2 + 1
    test_agencies = split_rows(data.test, spec, data.agency_names)
    with metered(report.loads, "FATE dvisits", args.wait_quiet):
        run = run_job(
            lambda: PoissonRegressionJob(alpha=DVISITS_ALPHA),
            data.agencies,
            test_agencies,
            threshold=t,
            args=args,
        )
        pooled = pooled_pipeline(
            spec,
            PoissonRegressor(
                alpha=DVISITS_ALPHA, solver="newton-cholesky", tol=1e-10, max_iter=1000
            ),
        )
        train = data.train_frame()
        pooled.fit(train, train[spec.label])
    y = data.test[spec.label].to_numpy()
    ref = pooled.predict(data.test)
    pred = run.result.estimator_.predict(data.test)
    dev_ref = mean_poisson_deviance(y, ref)
    rows = [
        metric_row(
            report,
            "test mean Poisson deviance (central)",
            mean_poisson_deviance(y, pred),
            dev_ref,
            label="dvisits",
        ),
        metric_row(
            report,
            "test mean Poisson deviance (federated evaluation)",
            run.metrics["mean_poisson_deviance"],
            dev_ref,
            label="dvisits",
        ),
        metric_row(
            report,
            "test RMSE (central)",
            math.sqrt(mean_squared_error(y, pred)),
            math.sqrt(mean_squared_error(y, ref)),
            label="dvisits",
        ),
        *coef_rows(report, "dvisits", run.result, pooled),
    ]
    report.add(
        f"\n### FATE `dvisits`: PoissonRegressionJob(alpha={DVISITS_ALPHA:g}) over "
        f"{len(data.agencies)} sites (age bands), key {t}-of-{len(data.agencies)}\n\n"
        f"{data.n_train:,} training rows, {len(data.test):,} test rows; baseline scikit-learn "
        "`PoissonRegressor` (same alpha, newton-cholesky, tol=1e-10) on the pooled rows.\n"
    )
    report.add(markdown(["metric", "fedcity", "scikit-learn", "relative diff", "0.1 %"], rows))
    jobs.append(job_table("FATE dvisits, Poisson", run, report.loads.get("FATE dvisits")))


def run_fidelity(report: Report, args: argparse.Namespace) -> None:
    report.add(f"\n## Fidelity ({args.key_bits}-bit keys, workers={args.workers})")
    jobs: list[list[str]] = []
    cases: list[tuple[str, Callable[[], None]]] = [
        ("Chicago", lambda: fidelity_chicago(report, args, jobs)),
        ("motor", lambda: fidelity_motor(report, args, jobs)),
        ("breast", lambda: fidelity_fate_logistic(report, args, jobs, "breast")),
        ("dvisits", lambda: fidelity_dvisits(report, args, jobs)),
        ("default_credit", lambda: fidelity_fate_logistic(report, args, jobs, "default_credit")),
    ]
    for name, case in cases:
        try:
            case()
        except DataUnavailable as exc:
            report.add(f"\n*{name}: skipped, data unavailable: {exc}*")
    if jobs:
        report.add(
            "\n### Rounds and wall time per job\n\n"
            "Newton rounds / all rounds (the first 3–4 are the preprocessing statistics); "
            "training wall time of the whole job in this process (agencies one after another), "
            "encrypted and with `encrypted=False`; round 1 of the encrypted job also starts the "
            "crypto worker processes and builds the fixed-base encryption tables (once per "
            "federation), so the ratio is also given without it; the federated evaluation "
            "round (encrypted); bytes each agency uploaded over the training job; cores other "
            "processes used on average while the job ran (the machine has "
            f"{os.cpu_count()}).\n"
        )
        report.add(
            markdown(
                [
                    "job",
                    "Newton / all rounds",
                    "encrypted",
                    "of which round 1",
                    "encryption off",
                    "ratio",
                    "ratio without round 1",
                    "evaluation",
                    "upload / agency",
                    "upload, off",
                    "other load (cores)",
                ],
                jobs,
            )
        )


# -- cost per round --------------------------------------------------------------------------
def wide_agencies(n_agencies: int, rows: int, d: int, seed: int = 0) -> list[AgencyDataset]:
    """:func:`_common.wide_frames` as validated agency tables ``agency-01``, ``agency-02``, ..."""
    spec = FeatureSpec(numeric=tuple(f"x{j:02d}" for j in range(d)), categorical={}, label="y")
    return [
        AgencyDataset.from_frame(frame, spec, agency=f"agency-{i + 1:02d}")
        for i, frame in enumerate(wide_frames(n_agencies, rows, d, seed))
    ]


@dataclass
class Cost:
    """Per-round means over the measured rounds of one job."""

    seconds: dict[str, float]
    wall: float
    upload: float
    to_decryptors: float
    decryptors: float
    partial_upload: float
    rounds: int
    job_seconds: float


def measure_cost(
    make_job: Callable[[], Any],
    kind: str,
    agencies: Sequence[AgencyDataset],
    *,
    encrypted: bool,
    args: argparse.Namespace,
) -> Cost:
    fed = TimedFederation(
        list(agencies),
        threshold=COST_THRESHOLD,
        key_bits=args.key_bits,
        encrypted=encrypted,
        workers=args.workers if encrypted else None,
    )
    with fed:
        result = make_job().fit(fed)
        recs = [r for r in result.history_ if r.kind == kind]
        return Cost(
            seconds={s: float(np.mean([r.seconds.get(s, 0.0) for r in recs])) for s in STAGES},
            wall=float(np.mean([fed.wall(r) for r in recs])),
            upload=float(np.mean([r.bytes_per_agency for r in recs])),
            to_decryptors=float(np.mean([r.bytes_to_decryptors for r in recs])),
            decryptors=float(np.mean([len(r.decryptors) for r in recs])),
            partial_upload=float(np.mean([fed.partial_bytes(result.job_id_, r) for r in recs])),
            rounds=len(recs),
            job_seconds=result.seconds_,
        )


def cost_table(enc: Cost, plain: Cost) -> str:
    rows = []
    for s in STAGES:
        who = "slowest agency" if s in AGENCY_STAGES else "coordinator"
        if s == "verification":
            who = "coordinator, all partials"
        rows.append(
            [
                f"{s} ({who})",
                fmt_seconds(enc.seconds[s]),
                fmt_seconds(plain.seconds[s]),
                fmt_ratio(enc.seconds[s], plain.seconds[s]),
            ]
        )
    crit_e, crit_p = sum(enc.seconds.values()), sum(plain.seconds.values())
    rows.append(
        [
            "**sum of stages** (round time with agencies in parallel)",
            fmt_seconds(crit_e),
            fmt_seconds(crit_p),
            fmt_ratio(crit_e, crit_p),
        ]
    )
    rows.append(
        [
            "**in-process wall time per round** (agencies sequential)",
            fmt_seconds(enc.wall),
            fmt_seconds(plain.wall),
            fmt_ratio(enc.wall, plain.wall),
        ]
    )
    rows.append(
        [
            "upload per agency",
            fmt_bytes(enc.upload),
            fmt_bytes(plain.upload),
            fmt_ratio(enc.upload, plain.upload),
        ]
    )
    per_dec = enc.to_decryptors / enc.decryptors if enc.decryptors else 0.0
    rows.append(
        [
            "to decryptors (aggregate, per decryptor × decryptors)",
            f"{fmt_bytes(per_dec)} × {enc.decryptors:.0f} = {fmt_bytes(enc.to_decryptors)}",
            "— (no decryption)",
            "",
        ]
    )
    rows.append(["partial decryption upload per decryptor", fmt_bytes(enc.partial_upload), "—", ""])
    return markdown(["per round", "encrypted", "encryption off", "ratio"], rows)


def run_cost(report: Report, args: argparse.Namespace) -> None:
    rows_per_agency = 300 if args.quick else 2000
    measured = 1 if args.quick else 3
    agencies = wide_agencies(COST_AGENCIES, rows_per_agency, COST_FEATURES)
    n_coef = COST_FEATURES + 1
    hidden_1k, hidden_10k = 20, 196

    def mlp_params(h: int) -> int:
        return (COST_FEATURES + 1) * h + h + 1

    report.add(
        f"\n## Cost per round ({args.key_bits}-bit keys, {COST_THRESHOLD}-of-{COST_AGENCIES} "
        f"key, workers={args.workers})\n\n"
        f"{COST_AGENCIES} agencies × {rows_per_agency:,} rows, {COST_FEATURES} numeric features "
        f"(synthetic, non-IID means), binary label. Means over {measured} measured rounds of "
        "each job; the preprocessing rounds before them are not counted. Agency stages "
        "(local training, encryption, partial decryption) are the slowest agency's time; "
        "verification is the coordinator checking every partial decryption's proof; the "
        "in-process wall time runs all agencies one after another."
    )
    cases: list[tuple[str, Callable[[], Any], str]] = [
        (
            f"logistic GLM, {n_coef} coefficients: one Newton round sends gradient + "
            f"upper-triangular Hessian + loss = {n_coef + n_coef * (n_coef + 1) // 2 + 1:,} values",
            lambda: LogisticRegressionJob(C=1.0, max_iter=measured),
            "glm.newton",
        ),
        (
            f"FedAvg, MLPClassifier(hidden_layer_sizes=({hidden_1k},)): "
            f"{mlp_params(hidden_1k):,} parameters (+3 values: loss, drift, weight), "
            "1 local epoch, batch 200",
            lambda: FedAvgJob(
                MLPClassifier(hidden_layer_sizes=(hidden_1k,)), rounds=measured, classes=[0, 1]
            ),
            "fedavg.local",
        ),
        (
            f"FedAvg, MLPClassifier(hidden_layer_sizes=({hidden_10k},)): "
            f"{mlp_params(hidden_10k):,} parameters (+3 values), 1 local epoch, batch 200",
            lambda: FedAvgJob(
                MLPClassifier(hidden_layer_sizes=(hidden_10k,)), rounds=measured, classes=[0, 1]
            ),
            "fedavg.local",
        ),
    ]
    summary = []
    for title, make_job, kind in cases:
        with metered(report.loads, title, args.wait_quiet):
            enc = measure_cost(make_job, kind, agencies, encrypted=True, args=args)
            plain = measure_cost(make_job, kind, agencies, encrypted=False, args=args)
        report.add(f"\n### {title}\n")
        report.add(cost_table(enc, plain))
        load = report.loads.get(title)
        if load is not None:
            report.add(f"\nOther processes used {load:.2f} cores on average during this job.")
        summary.append(
            [
                title.split(":")[0],
                fmt_seconds(sum(enc.seconds.values())),
                fmt_seconds(enc.wall),
                fmt_seconds(plain.wall),
                fmt_ratio(enc.wall, plain.wall),
                fmt_bytes(enc.upload),
                fmt_bytes(plain.upload),
                fmt_ratio(enc.upload, plain.upload),
                fmt_load(report.loads.get(title)),
            ]
        )
    report.add("\n### Cost summary\n")
    report.add(
        markdown(
            [
                "model",
                "round, agencies parallel",
                "round in-process",
                "in-process, off",
                "ratio",
                "upload / agency",
                "upload, off",
                "ratio",
                "other load (cores)",
            ],
            summary,
        )
    )


# -- driver ------------------------------------------------------------------------------------
def machine_info() -> dict[str, str]:
    return describe_machine({"numpy": np.__version__, "scikit-learn": sklearn.__version__})


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0] if __doc__ else None,
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    p.add_argument("--key-bits", type=int, default=2048, help="threshold key size")
    p.add_argument(
        "--quick", action="store_true", help="tiny smoke run: 1024-bit keys, small cost runs"
    )
    p.add_argument("--only", choices=("fidelity", "cost"), help="run one section")
    p.add_argument("--out", type=Path, help="write the results as markdown here")
    p.add_argument("--data", help="shared data folder (default: FEDCITY_DATA or ../shared/data)")
    p.add_argument("--workers", type=int, default=2, help="crypto worker processes (encrypted)")
    p.add_argument(
        "--wait-quiet",
        type=float,
        default=0.0,
        metavar="SECONDS",
        help="before each job, wait up to this long for other processes to go quiet",
    )
    args = p.parse_args(argv)
    if args.quick:
        args.key_bits = 1024
    return args


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    command = "python benchmarks/bench_learning.py " + shlex.join(
        list(argv) if argv is not None else sys.argv[1:]
    )
    info = machine_info()
    report = Report()
    start = time.perf_counter()
    report.add(
        f"Command: `{command.strip()}`  \nMachine: {info['nproc']} cores ({info['cpu']}), "
        f"Python {info['python']}, numpy {info['numpy']}, scikit-learn {info['scikit-learn']}."
    )
    if args.only in (None, "fidelity"):
        run_fidelity(report, args)
    if args.only in (None, "cost"):
        run_cost(report, args)
    missed = [what for what, ok in report.checks if not ok]
    if report.checks:
        report.add(
            f"\nRequirement checks: {len(report.checks) - len(missed)} of "
            f"{len(report.checks)} met"
            + ("." if not missed else "; missed: " + "; ".join(missed) + ".")
        )
    else:
        report.add("\nNo pass/fail requirement in the sections run (cost is reported, not judged).")
    report.add(f"Total benchmark time: {time.perf_counter() - start:.0f} s.")
    if args.out:
        args.out.write_text("\n".join(report.blocks) + "\n")
        print(f"\nwrote {args.out}")
    return 0 if not missed else 1


if __name__ == "__main__":
    sys.exit(main())
