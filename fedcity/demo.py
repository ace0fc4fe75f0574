"""The README's main job: a real federated run on loopback, started and stopped by itself.

1. A key ceremony deals a 2048-bit threshold key (one share per agency), agency and analyst
   credentials, and a TLS certificate authority and server certificate.
2. Every agency gets its own synthetic city data (flood risk and 311 service requests for its
   district: very unequal sizes, different feature mixes) written to its own folder.
3. A coordinator (SQLite state) and one agent per agency start as separate processes; agents
   only dial out to the coordinator, over TLS, each with its own credential.
4. An analyst submits a risk model (logistic regression on flood risk) and a demand model
   (Poisson regression on service requests), watches them, and gets scikit-learn pipelines.
5. Their metrics on held-out districts' rows are printed next to the same models trained on
   the pooled data, with where everything was saved; then every process is stopped.

Run with ``make demo`` or ``python -m fedcity.demo [--agencies 5 --threshold 3]``.
"""

from __future__ import annotations

import argparse
import json
import os
import pickle
import signal
import socket
import subprocess
import sys
import threading
import time
from contextlib import ExitStack
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table
from sklearn.linear_model import LogisticRegression, PoissonRegressor
from sklearn.metrics import log_loss, mean_absolute_error, mean_poisson_deviance, roc_auc_score
from sklearn.pipeline import make_pipeline

from fedcity.data import FederatedPreprocessor, make_city
from fedcity.data.synthetic import SyntheticCity

MODELS = {
    "flood_risk": ("flood", "logistic_regression", {"C": 1.0}),
    "service_requests": ("service_demand", "poisson_regression", {"alpha": 0.01}),
}


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _toml_list(values: Any) -> str:
    return "[" + ", ".join(json.dumps(str(v)) for v in values) + "]"


def _write_agency(
    out: Path,
    agency: str,
    cities: dict[str, SyntheticCity],
    port: int,
    key_file: Path,
    holdout: bool = False,
) -> Path:
    folder = out / "agencies" / agency
    lines = [
        f'agency = "{agency}"',
        f'coordinator = "127.0.0.1:{port}"',
        'tls_cert_file = "tls/cert.pem"           # from `fedcity agent enroll` (mutual TLS)',
        'tls_key_file = "tls/key.pem"',
        f'key_file = "{key_file.name}"',
        'signing_key_file = "signing-key.json"',
        'federation_file = "../../federation-public.json"',
        'ca_file = "../../ca/ca.pem"',
        f'log_file = "agent-{agency}.log"',
    ]
    for name, city in cities.items():
        data = next(a for a in city.agencies if a.agency == agency)
        path = folder / "data" / f"{name}.csv"
        path.parent.mkdir(parents=True, exist_ok=True)
        data.to_frame().to_csv(path, index=False)
        spec = city.spec
        cats = ", ".join(f"{c} = {_toml_list(v)}" for c, v in spec.categorical.items())
        tables = [name]
        if holdout:  # this district's held-out rows, for a federated evaluation
            rows = city.test[city.test["district"] == agency].drop(columns="district")
            rows.to_csv(folder / "data" / f"{name}_holdout.csv", index=False)
            tables.append(f"{name}_holdout")
        for table in tables:
            lines += [
                "",
                f"[datasets.{table}]",
                f'path = "data/{table}.csv"',
                f"numeric = {_toml_list(spec.numeric)}",
                f"categorical = {{ {cats} }}",
                f'label = "{spec.label}"',
            ]
    config = folder / "agency.toml"
    config.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return config


def _start(cmd: list[str], log: Path, stack: ExitStack) -> subprocess.Popen[bytes]:
    fh = stack.enter_context(open(log, "wb"))  # noqa: SIM115 - closed by the ExitStack
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    proc = subprocess.Popen(
        cmd, stdout=fh, stderr=subprocess.STDOUT, start_new_session=True, env=env
    )

    def stop() -> None:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()

    stack.callback(stop)
    return proc


def _wait_healthy(address: str, ca: Path, timeout: float, proc: subprocess.Popen[bytes]) -> None:
    import grpc
    from grpc_health.v1 import health_pb2, health_pb2_grpc

    creds = grpc.ssl_channel_credentials(ca.read_bytes())
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"the coordinator exited with code {proc.returncode}")
        try:
            with grpc.secure_channel(address, creds) as channel:
                stub = health_pb2_grpc.HealthStub(channel)
                reply = stub.Check(health_pb2.HealthCheckRequest(), timeout=2)
                if reply.status == health_pb2.HealthCheckResponse.SERVING:
                    return
        except grpc.RpcError:
            time.sleep(0.3)
    raise RuntimeError(f"the coordinator did not become healthy within {timeout:.0f} s")


def _pooled(city: SyntheticCity, problem: str, params: dict[str, float]) -> Any:
    spec = city.spec
    pre = FederatedPreprocessor(numeric=spec.numeric, categorical=dict(spec.categorical))
    if problem == "logistic_regression":
        model: Any = LogisticRegression(C=params["C"], max_iter=10_000, tol=1e-10)
    else:
        model = PoissonRegressor(alpha=params["alpha"], max_iter=10_000, tol=1e-10)
    train = city.train_frame()
    return make_pipeline(pre, model).fit(train, train[spec.label])


def _metrics(pipeline: Any, city: SyntheticCity, problem: str) -> dict[str, float]:
    y = city.test[city.spec.label]
    if problem == "logistic_regression":
        p = pipeline.predict_proba(city.test)[:, 1]
        return {"ROC AUC": roc_auc_score(y, p), "log loss": log_loss(y, p)}
    pred = pipeline.predict(city.test)
    return {
        "mean Poisson deviance": mean_poisson_deviance(y, pred),
        "MAE": mean_absolute_error(y, pred),
    }


def _bounded_int(low: int, high: int, what: str, multiple: int = 1) -> Any:
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected an integer, got {text!r}") from None
        if not low <= value <= high or value % multiple:
            step = f" and a multiple of {multiple}" if multiple > 1 else ""
            raise argparse.ArgumentTypeError(
                f"{what} must lie between {low:,} and {high:,}{step}, got {value:,}"
            )
        return value

    return parse


def _timeout(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number of seconds, got {text!r}") from None
    if not 30 <= value <= 86_400:
        raise argparse.ArgumentTypeError(
            f"a job needs more than {text} s (key generation and several rounds): give 30 to "
            "86,400 seconds"
        )
    return value


def build_parser() -> argparse.ArgumentParser:
    """The demo's options (every one validated, with its default in the help)."""
    parser = argparse.ArgumentParser(
        prog="python -m fedcity.demo", description="fedcity: a federated run on loopback"
    )
    parser.add_argument(
        "--agencies",
        type=_bounded_int(2, 50, "the number of agencies"),
        default=5,
        help="districts, one agent process each (default: %(default)s)",
    )
    parser.add_argument(
        "--threshold",
        type=_bounded_int(1, 50, "the threshold"),
        default=3,
        help="agencies needed to decrypt, at most --agencies (default: %(default)s)",
    )
    parser.add_argument(
        "--key-bits",
        type=_bounded_int(512, 8192, "the key size", multiple=16),
        default=2048,
        help="Paillier modulus size; below 2048 only for a trial (default: %(default)s)",
    )
    parser.add_argument(
        "--key-holder",
        action="store_true",
        help="single-key-holder mode (district-1 holds the private key; faster decryption, "
        "weaker trust assumption) instead of the threshold key (default: threshold key)",
    )
    parser.add_argument(
        "--rows",
        type=_bounded_int(100, 2_000_000, "the number of rows"),
        default=12_000,
        help="synthetic rows over all districts, at least 30 per district (default: %(default)s)",
    )
    parser.add_argument(
        "--out", type=Path, default=None, help="run folder (default: runs/demo-<time>)"
    )
    parser.add_argument(
        "--timeout",
        type=_timeout,
        default=900.0,
        help="seconds per job at most, 30 to 86,400 (default: %(default)s)",
    )
    parser.add_argument(
        "--plot",
        type=Path,
        default=None,
        metavar="DIR",
        help="also evaluate each model federatedly on the districts' held-out rows and save "
        "its charts (PNG and SVG: training, participation, coefficients, ROC, calibration) "
        "in DIR (default: no charts)",
    )
    return parser


def main(argv: list[str] | None = None) -> int:
    """Run the demo; returns the process exit code (130 after Ctrl-C, with one line)."""
    previous = signal.getsignal(signal.SIGINT)
    interrupted = False

    def once(signum: int, frame: Any) -> None:  # a second Ctrl-C must not cut the clean-up
        nonlocal interrupted
        if not interrupted:
            interrupted = True
            raise KeyboardInterrupt

    in_main = threading.current_thread() is threading.main_thread()
    if in_main:
        signal.signal(signal.SIGINT, once)
    try:
        return _run(argv)
    except KeyboardInterrupt:
        print("demo interrupted (Ctrl-C): every process it started was stopped", file=sys.stderr)
        return 130
    finally:
        if in_main:
            signal.signal(signal.SIGINT, previous)


def _run(argv: list[str] | None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.key_holder:
        args.threshold = 1
    if not 1 <= args.threshold <= args.agencies:
        parser.error(f"--threshold must lie between 1 and --agencies ({args.agencies})")
    if args.rows < 30 * args.agencies:
        parser.error(
            f"--rows must give every district at least 30 rows: at least {30 * args.agencies} "
            f"for {args.agencies} agencies"
        )
    if args.threshold == 1 and not args.key_holder:
        print(
            "warning: --threshold 1 lets any single agency's share decrypt alone (it could "
            "read every other agency's contributions); fine for a trial only",
            file=sys.stderr,
        )
    console = Console()
    stamp = datetime.now(UTC).strftime("%Y%m%d-%H%M%S")
    out: Path = (args.out or Path("runs") / f"demo-{stamp}").resolve()
    if out.exists() and any(out.iterdir()):
        parser.error(f"{out} exists and is not empty")
    out.mkdir(parents=True, exist_ok=True)

    from fedcity.net.ceremony import deal_federation

    agencies = [f"district-{i}" for i in range(1, args.agencies + 1)]
    started = time.perf_counter()
    holder = agencies[0] if args.key_holder else None
    what = (
        f"key held by {holder}" if holder else f"{args.threshold}-of-{args.agencies} threshold key"
    )
    console.print(
        f"[bold]1. key ceremony[/]: {args.key_bits}-bit {what}, credentials and TLS "
        f"certificates in {out}"
    )
    files = deal_federation(
        out, agencies, args.threshold, key_bits=args.key_bits, key_holder=holder
    )
    cities = {
        name: make_city(args.agencies, task=task, n_samples=args.rows, seed=2026)  # type: ignore[arg-type]
        for name, (task, _, _) in MODELS.items()
    }
    port, enroll_port = _free_port(), _free_port()
    configs = [
        _write_agency(out, a, cities, port, files.key_file(a), holdout=args.plot is not None)
        for a in agencies
    ]
    sizes = ", ".join(f"{a.agency}: {a.n_samples:,}" for a in cities["flood_risk"].agencies)
    console.print(f"[bold]2. data[/]: each agency's rows stay in its own folder ({sizes})")

    address = f"127.0.0.1:{port}"
    enroll_address = f"127.0.0.1:{enroll_port}"
    from fedcity.governance.enrollment import CADirectory, EnrollmentRegistry

    ca = CADirectory.init(out / "ca", "demo", ("127.0.0.1", "localhost"))
    py = sys.executable
    results: dict[str, Any] = {}
    with ExitStack() as stack:
        coordinator = _start(
            [
                py,
                "-m",
                "fedcity.cli",
                "coordinator",
                "serve",
                "--listen",
                address,
                "--db",
                str(out / "coordinator" / "coordinator.sqlite"),
                "--federation",
                str(out / "federation-public.json"),
                "--ca-dir",
                str(ca.root),
                "--enroll-listen",
                enroll_address,
            ],
            out / "coordinator" / "coordinator.log",
            stack,
        )
        _wait_healthy(enroll_address, ca.ca_cert, 60, coordinator)
        from fedcity.net.client import enroll

        registry = EnrollmentRegistry(ca.registry)
        try:  # what `fedcity ca invite`, `fedcity agent enroll` and `fedcity login` do
            for agency in agencies:
                token = registry.invite(agency, "agency", ttl=600)
                enroll(
                    enroll_address,
                    ca_file=ca.ca_cert,
                    token=token,
                    name=agency,
                    out=out / "agencies" / agency / "tls",
                )
            token = registry.invite("analyst", "scientist", ttl=600)
            key, cert, _ = enroll(
                enroll_address,
                ca_file=ca.ca_cert,
                token=token,
                name="analyst",
                out=out / "scientists" / "analyst" / "tls",
            )
        finally:
            registry.close()
        console.print(
            f"[bold]3. enrollment[/]: a CA in {ca.root}; {len(agencies)} agencies and the analyst "
            "made their keys locally and enrolled with one-time invitations"
        )
        for _a, config in zip(agencies, configs, strict=True):
            _start(
                [py, "-m", "fedcity.cli", "agent", "run", "--config", str(config)],
                config.parent / "agent.log",
                stack,
            )
        console.print(
            f"[bold]4. processes[/]: coordinator on {address} (mutual TLS: identities from "
            f"certificates) and {len(agencies)} agents (outbound only)"
        )

        from fedcity.net.client import Client

        client = Client(address, None, ca_file=ca.ca_cert, cert_file=cert, key_file=key)
        deadline = time.monotonic() + 60
        while (
            sum(a.connected for a in client.agencies()) < len(agencies)
            and time.monotonic() < deadline
        ):
            time.sleep(0.5)
        for name, (_, job_type, params) in MODELS.items():
            console.print(f"[bold]5. job[/]: {job_type} on {name!r}")
            evaluate = f"{name}_holdout" if args.plot is not None else ""
            job_id = client.submit(job_type, params, name, evaluate_dataset=evaluate)
            t0 = time.perf_counter()
            for event in client.watch(job_id, console=console, timeout=args.timeout):
                del event
            result = client.result(job_id)
            estimator = client.estimator(job_id, cities[name].spec)
            results[name] = {
                "job_id": job_id,
                "seconds": time.perf_counter() - t0,
                "result": result,
                "estimator": estimator,
            }

    console.print("[bold]6. results[/] (held-out rows of every district)")
    table = Table()
    for col in ("model", "metric", "federated (fedcity)", "pooled scikit-learn"):
        table.add_column(col, justify="left" if col in ("model", "metric") else "right")
    ok = True
    for name, (_, job_type, params) in MODELS.items():
        city = cities[name]
        fed = _metrics(results[name]["estimator"], city, job_type)
        pooled = _metrics(_pooled(city, job_type, params), city, job_type)
        for metric, value in fed.items():
            table.add_row(name, metric, f"{value:.4f}", f"{pooled[metric]:.4f}")
            ok = ok and abs(value - pooled[metric]) <= 1e-3 * max(1.0, abs(pooled[metric]))
        path = out / "results" / f"{name}.pkl"
        path.parent.mkdir(exist_ok=True)
        path.write_bytes(pickle.dumps(results[name]["estimator"]))
        (out / "results" / f"{name}.json").write_text(json.dumps(results[name]["result"], indent=2))
    console.print(table)
    for name, item in results.items():
        rounds = len(item["result"].get("history", []))
        console.print(f"{name}: job {item['job_id']}, {rounds} rounds, {item['seconds']:.1f} s")
    if args.plot is not None:
        from fedcity.plots import save_job_plots

        for name, item in results.items():
            paths = save_job_plots(item["result"], args.plot / name)
            charts = ", ".join(sorted({p.stem for p in paths}))
            console.print(f"charts of {name} ({charts}) saved in {(args.plot / name).resolve()}")
    console.print(
        f"models and histories saved in {out / 'results'}; logs in {out}; all processes stopped "
        f"({time.perf_counter() - started:.0f} s in all)"
    )
    return 0 if ok else 1


if __name__ == "__main__":
    raise SystemExit(main())
