"""Food-safety risk model across Chicago police districts, trained without pooling records.

Each police district holds its own food inspections (as a city department would); a
federated logistic regression is trained over Paillier-encrypted Newton steps, decrypted only
in aggregate by a threshold of districts, and evaluated on the City's published test window
(1,637 inspections, Sep-Oct 2014) by a secure sum of score histograms. The result is compared
with the same model trained on the pooled data and with the City's own model (AUC 0.679).

Data: City of Chicago, github.com/Chicago/food-inspections-evaluation (MIT licence), prepared
as described in ../shared/data/README.md. Pass its folder with --data, or set FEDCITY_DATA.

    .venv/bin/python examples/chicago_food_safety.py [--data ../shared/data] [--key-bits 2048]
        [--plot charts/chicago]
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

from rich.console import Console
from rich.table import Table
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import roc_auc_score
from sklearn.pipeline import make_pipeline

from fedcity.data import (
    AgencyDataset,
    DataUnavailable,
    FederatedPreprocessor,
    load_chicago_inspections,
)
from fedcity.learn import LocalFederation, LogisticRegressionJob


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", help="folder holding chicago_food_inspections/inspections.csv")
    parser.add_argument("--key-bits", type=int, default=2048)
    parser.add_argument("--threshold", type=int, default=5, help="districts needed to decrypt")
    parser.add_argument("--C", type=float, default=1.0, help="inverse L2 strength, as sklearn")
    parser.add_argument("--workers", type=int, default=2, help="crypto worker processes")
    parser.add_argument(
        "--plot",
        type=Path,
        metavar="DIR",
        help="save charts (PNG and SVG: training, participation, coefficients, ROC and "
        "calibration from the federated evaluation) in DIR",
    )
    args = parser.parse_args(argv)
    console = Console()
    try:
        data = load_chicago_inspections(args.data)
    except DataUnavailable as exc:
        console.print(f"[red]{exc}[/]")
        return 2

    spec = data.spec
    test = data.test.assign(police_district=data.test["police_district"].fillna(-1))
    # every district scores its own share of the test window; rows without a district
    # belong to "district-unknown", as in training
    test_agencies = []
    for agency in data.agencies:
        key = agency.agency.removeprefix("district-")
        rows = test[test["police_district"] == (-1 if key == "unknown" else int(key))]
        if len(rows):
            test_agencies.append(AgencyDataset.from_frame(rows, spec, agency=agency.agency))
    console.print(
        f"{len(data.agencies)} districts, {sum(a.n_samples for a in data.agencies):,} training "
        f"inspections (smallest district {min(a.n_samples for a in data.agencies)}, largest "
        f"{max(a.n_samples for a in data.agencies):,}); test window {len(test):,} inspections"
    )

    start = time.perf_counter()
    with LocalFederation(
        list(data.agencies), threshold=args.threshold, key_bits=args.key_bits, workers=args.workers
    ) as federation:
        console.print(f"dealt a {args.key_bits}-bit {args.threshold}-of-{len(data.agencies)} key")
        result = LogisticRegressionJob(C=args.C).fit(federation, progress=True)
        metrics = federation.evaluate(result, test_agencies, progress=True)
    seconds = time.perf_counter() - start

    pooled = make_pipeline(
        FederatedPreprocessor(numeric=spec.numeric, categorical=dict(spec.categorical)),
        LogisticRegression(C=args.C, max_iter=10_000, tol=1e-10),
    )
    train = data.train_frame()
    pooled.fit(train, train[spec.label])
    y = test[spec.label]
    pooled_auc = roc_auc_score(y, pooled.predict_proba(test)[:, 1])
    exact_auc = roc_auc_score(y, result.estimator_.predict_proba(test)[:, 1])
    city_auc = roc_auc_score(y, data.city_scores())

    table = Table(title="Chicago food-safety risk model, test window Sep-Oct 2014")
    table.add_column("model")
    table.add_column("test ROC AUC", justify="right")
    table.add_row("fedcity, federated over districts (secure-sum AUC)", f"{metrics['roc_auc']:.4f}")
    table.add_row("fedcity model, AUC computed centrally", f"{exact_auc:.4f}")
    table.add_row("scikit-learn on the pooled data", f"{pooled_auc:.4f}")
    table.add_row("City of Chicago model (published 0.679)", f"{city_auc:.4f}")
    console.print(table)
    newton = sum(r.kind == "glm.newton" for r in result.history_)
    console.print(
        f"federated log loss {metrics['log_loss']:.4f}, Brier {metrics['brier']:.4f}; "
        f"{len(result.history_)} rounds ({newton} Newton), "
        f"{result.bytes_per_agency_ / 1024:.1f} KiB uploaded per district, {seconds:.1f} s"
    )
    if args.plot is not None:
        paths = result.plot(args.plot, metrics)
        charts = ", ".join(sorted({p.stem for p in paths}))
        console.print(f"charts ({charts}) saved in {args.plot.resolve()}")
    gap = abs(metrics["roc_auc"] - pooled_auc)
    ok = gap <= 0.003 and metrics["roc_auc"] >= 0.679
    console.print(("[green]" if ok else "[red]") + f"|federated - pooled| AUC = {gap:.4f}[/]")
    return 0 if ok else 1


if __name__ == "__main__":
    from fedcity.cli import run_interruptible

    sys.exit(run_interruptible(main, "chicago_food_safety.py"))
