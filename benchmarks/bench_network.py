#!/usr/bin/env python
"""Networked federation on loopback: fedcity (encrypted) vs encryption off vs plain Flower.

10 agencies (2,000 rows each, 49 numeric features, non-IID means, a 0/1 label: the data of
``bench_learning.py``'s cost section) train an ``MLPClassifier`` by FedAvg, 1 local epoch,
batch 200, with ~1,000 and ~10,000 parameters (hidden layers of 20 and 196 units). Three
runs per model size, all measured in this one invocation:

(a) **fedcity, encrypted, networked.** ``fedcity coordinator serve`` (TLS, SQLite) and 10
    ``fedcity agent run`` processes, a 2048-bit 3-of-10 threshold key from
    ``deal_federation``; job type ``"fedavg"`` submitted by the analyst client.
(a′) **fedcity, encrypted, in one process, sum of stages.** The same job through
    ``LocalFederation`` with the same key; a round's time is the sum of its stages with
    agency stages at the slowest agency: what a round would take if every agency had its own
    core (as real agencies do), without network. On one 2-core machine, (a) runs 10 agents
    on 2 cores, so (a′) is the fairer reading of the cryptography's cost.
(b) **fedcity, encryption off.** The coordinator has no plaintext mode (it always uses
    ``PaillierScheme``), so this is ``LocalFederation(encrypted=False)`` **in one process**:
    the same job and protocol objects, float64 vectors in the clear, agencies one after the
    other, no network.
(d) **fedcity, encrypted, single key holder, networked.** As (a), but the ceremony gives
    one agency an ordinary 2048-bit private key (``deal_federation(key_holder=...)``): the
    coordinator blinds each aggregate and that agency alone decrypts it with CRT, instead of
    three agencies' threshold partial decryptions. A weaker trust assumption (the key holder
    and the coordinator must not collude), measured because it is the fast mode.
(c) **Flower FedAvg.** flwr's legacy gRPC API: ``flwr.server.start_server`` (TLS with the same
    certificate) in one process and ``flwr.client.start_client`` with a ``NumPyClient`` in 10
    processes. Every client trains the same estimator on the same rows, standardised with
    the preprocessing run (b) released, from the same initial weights.

Wall time per round: between consecutive round completions (fedcity: the analyst's watch
stream; Flower: the strategy's ``aggregate_fit``), FedAvg rounds only (fedcity's
preprocessing rounds before them are not counted). Bytes per agency: every agent and Flower
client dials the coordinator through its own counting TCP proxy on 127.0.0.1, so the bytes
are what crossed the wire in both directions (TLS records included), per agency per
round. For (b) it is the float64 contribution each agency would upload (in process); the
size of one round's task parameters as JSON (how fedcity ships the global model to every
agency) is printed next to (a)'s download.

The CPU used by other processes meanwhile is read from ``/proc`` and printed: on a shared
machine it shows in every timing.

Examples
--------
    python benchmarks/bench_network.py                      # 2048-bit key, 3 rounds, ~10 min
    python benchmarks/bench_network.py --quick              # 1024-bit, 300 rows, 2 rounds
    python benchmarks/bench_network.py --rounds 5 --out /tmp/network.md
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import importlib
import itertools
import json
import os
import platform
import shlex
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from _common import CpuMonitor, cpu_model, markdown, wide_frames

ROOT = Path(__file__).resolve().parents[1]
AGENCIES, THRESHOLD, FEATURES = 10, 3, 49
HIDDEN = {"~1,000 parameters": 20, "~10,000 parameters": 196}
HOST = "127.0.0.1"
STAGES = (
    "local_training",
    "encryption",
    "partial_decryption",
    "aggregation",
    "verification",
    "combination",
)
FLWR_ENV = {"FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION": "1"}


def mlp_params(hidden: int, d: int = FEATURES) -> int:
    return (d + 1) * hidden + hidden + 1


def fedavg_params(hidden: int, rounds: int) -> dict[str, Any]:
    return {
        "estimator": {"class": "MLPClassifier", "params": {"hidden_layer_sizes": [hidden]}},
        "rounds": rounds,
        "local_epochs": 1,
        "classes": [0, 1],
        "seed": 0,
    }


# -- measuring -------------------------------------------------------------------------------------
class CountingProxy:
    """127.0.0.1:``port`` → 127.0.0.1:``upstream``, counting bytes each way (TLS passes)."""

    def __init__(self, upstream: int) -> None:
        self.upstream = upstream
        self.up = 0
        self.down = 0
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True)
        self._writers: list[asyncio.StreamWriter] = []
        self._thread.start()
        self.port = asyncio.run_coroutine_threadsafe(self._listen(), self._loop).result(10)

    async def _listen(self) -> int:
        self._server = await asyncio.start_server(self._handle, HOST, 0)
        return int(self._server.sockets[0].getsockname()[1])

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            up_reader, up_writer = await asyncio.open_connection(HOST, self.upstream)
        except OSError:
            writer.transport.abort()
            return
        self._writers += [writer, up_writer]

        async def pump(src: asyncio.StreamReader, dst: asyncio.StreamWriter, up: bool) -> None:
            try:
                while data := await src.read(1 << 16):
                    if up:
                        self.up += len(data)
                    else:
                        self.down += len(data)
                    dst.write(data)
                    await dst.drain()
            finally:
                dst.transport.abort()

        await asyncio.gather(
            pump(reader, up_writer, True), pump(up_reader, writer, False), return_exceptions=True
        )

    def snapshot(self) -> tuple[int, int]:
        return self.up, self.down

    def close(self) -> None:
        async def stop() -> None:
            self._server.close()
            for w in self._writers:
                w.transport.abort()

        with contextlib.suppress(Exception):
            asyncio.run_coroutine_threadsafe(stop(), self._loop).result(10)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(10)


MONITOR = CpuMonitor()


@dataclass
class Measure:
    """One system's FedAvg rounds."""

    walls: list[float]
    up: float  # bytes per agency per round, agency → server
    down: float  # bytes per agency per round, server → agency
    other_cores: float
    loss: float | None = None
    note: str = ""
    stages: dict[str, float] = field(default_factory=dict)
    task_json: float = 0.0  # bytes of one round's task parameters as sent (JSON text)

    @property
    def wall(self) -> float:
        return float(np.mean(self.walls))

    @property
    def bytes(self) -> float:
        return self.up + self.down


@dataclass
class Run:
    label: str
    measures: dict[str, Measure] = field(default_factory=dict)


def pooled_log_loss(
    predict_proba: Any, xs: Sequence[np.ndarray], ys: Sequence[np.ndarray]
) -> float:
    from sklearn.metrics import log_loss

    x, y = np.vstack(xs), np.concatenate(ys)
    return float(log_loss(y, predict_proba(x)[:, 1], labels=[0, 1]))


# -- (b) encryption off, in process ----------------------------------------------------------------
def run_inprocess(
    datasets: list[Any], hidden: int, rounds: int, key: Any = None
) -> tuple[Measure, Any]:
    """(b) with ``key=None`` (encryption off); with a key, (a') the same job encrypted.

    (b)'s per-round time is this process's wall time (agencies one after another). For (a')
    it is the sum of the round's stages, agency stages taken at the slowest agency
    (``RoundRecord.seconds``): the round time if every agency had its own core, no network.
    """
    from sklearn.neural_network import MLPClassifier

    from fedcity.learn import LocalFederation
    from fedcity.learn.design import design_matrix
    from fedcity.learn.fedavg import FedAvgJob, FederatedAveraging

    stamps: list[tuple[str, float]] = []
    mark = MONITOR.snapshot()
    encrypted = key is not None
    with LocalFederation(datasets, threshold=THRESHOLD, encrypted=encrypted, key=key) as fed:
        job = FedAvgJob(
            MLPClassifier(hidden_layer_sizes=(hidden,)), rounds=rounds, classes=[0, 1], seed=0
        )
        original = fed.run

        def run(algorithm: Any, **kw: Any) -> Any:
            stamps.append(("start", time.perf_counter()))
            kw["progress"] = lambda record: stamps.append((record.kind, time.perf_counter()))
            return original(algorithm, **kw)

        fed.run = run  # type: ignore[method-assign]
        result = job.fit(fed)
    other = MONITOR.since(mark) or 0.0
    recs = [r for r in result.history_ if r.kind == "fedavg.local"]
    if encrypted:
        walls = [sum(r.seconds.values()) for r in recs]
    else:
        walls = [b[1] - a[1] for a, b in itertools.pairwise(stamps) if b[0] == "fedavg.local"]
    pre = result.preprocessing_
    xs = [design_matrix(pre, d) for d in datasets]
    loss = pooled_log_loss(
        result.estimator_.named_steps["model"].predict_proba, xs, [d.y() for d in datasets]
    )
    up = float(np.mean([r.bytes_per_agency for r in recs]))
    stages = {k: float(np.mean([r.seconds.get(k, 0.0) for r in recs])) for k in STAGES}
    # one round's task parameters as the coordinator sends them (the model as base64 float64)
    request = FederatedAveraging(
        MLPClassifier(hidden_layer_sizes=(hidden,)), pre, rounds=1, classes=[0, 1]
    ).next_request()
    assert request is not None
    task_json = float(len(json.dumps(dict(request.params), sort_keys=True)))
    return Measure(walls, up, 0.0, other, loss, stages=stages, task_json=task_json), result


# -- (a) fedcity over the network ------------------------------------------------------------------
def run_fedcity(
    harness: Any,
    setup: Any,
    workdir: Path,
    cases: dict[str, int],
    rounds: int,
    xs: list[np.ndarray],
    ys: list[np.ndarray],
) -> dict[str, Measure]:
    from fedcity.learn.jobs import estimator_from_result_json

    out: dict[str, Measure] = {}
    port = harness.free_port()
    address = f"{HOST}:{port}"
    proxies = {a: CountingProxy(port) for a in setup.agencies}
    try:
        with harness.Cluster(setup, workdir) as cluster:
            coordinator = cluster.start_coordinator(
                port, heartbeat=2.0, liveness=120.0, collect=900.0, decrypt=900.0
            )
            for a in setup.agencies:
                cluster.start_agent(a, f"{HOST}:{proxies[a].port}")
            cluster.wait_healthy(address, coordinator, timeout=120)
            client = cluster.client(address)
            client.timeout = 120.0
            cluster.wait_connected(client, setup.agencies, timeout=300)
            for title, hidden in cases.items():
                print(f"   fedcity encrypted, {title} ...", flush=True)
                mark = MONITOR.snapshot()
                job_id = client.submit("fedavg", fedavg_params(hidden, rounds), setup.dataset)
                stamps: list[tuple[str, float, list[tuple[int, int]]]] = []
                for event in client.watch(job_id, timeout=3600):
                    if event.round_record is not None:
                        counts = [proxies[a].snapshot() for a in setup.agencies]
                        stamps.append((event.round_record["kind"], time.perf_counter(), counts))
                    if event.finished and event.state != "succeeded":
                        raise RuntimeError(f"fedcity job {job_id} {event.state}: {event.failure}")
                other = MONITOR.since(mark) or 0.0
                first = next(i for i, s in enumerate(stamps) if s[0] == "fedavg.local")
                fed = stamps[first - 1 :]
                walls = [b[1] - a[1] for a, b in itertools.pairwise(fed)]
                n = len(fed) - 1
                up = sum(e[0] - s[0] for s, e in zip(fed[0][2], fed[-1][2], strict=True))
                down = sum(e[1] - s[1] for s, e in zip(fed[0][2], fed[-1][2], strict=True))
                k = len(setup.agencies) * n
                text = client.result_text(job_id)
                history = [h for h in json.loads(text)["history"] if h["kind"] == "fedavg.local"]
                stages = {
                    s: float(np.mean([h["seconds"].get(s, 0.0) for h in history]))
                    for s in ("aggregation", "verification", "combination")
                }
                served = [
                    r
                    for a in setup.agencies
                    for r in cluster.task_log(a)
                    if r["job"] == job_id and r["kind"] == "fedavg.local"
                ]
                for action in ("contribute", "partial_decrypt"):
                    took = [r["seconds"] for r in served if r["action"] == action]
                    stages[f"agent {action}"] = float(np.mean(took)) if took else 0.0
                model = estimator_from_result_json(text, setup.spec)
                proba = model.named_steps["model"].predict_proba
                loss = pooled_log_loss(proba, xs, ys)
                out[title] = Measure(walls, up / k, down / k, other, loss, stages=stages)
    finally:
        for p in proxies.values():
            p.close()
    return out


# -- (c) Flower ------------------------------------------------------------------------------------
def flower_server(args: argparse.Namespace) -> int:
    import flwr
    from flwr.common import ndarrays_to_parameters, parameters_to_ndarrays

    init = np.load(args.init)
    arrays = [init[k] for k in sorted(init.files, key=lambda s: int(s.split("_")[1]))]
    marks: list[tuple[str, int, float]] = []
    final: list[Any] = []

    class TimedFedAvg(flwr.server.strategy.FedAvg):  # type: ignore[misc]
        def configure_fit(self, server_round: int, parameters: Any, client_manager: Any) -> Any:
            if server_round == 1:  # the clock starts once every client is connected
                client_manager.wait_for(args.clients, timeout=3600)
            marks.append(("start", server_round, time.time()))
            return super().configure_fit(server_round, parameters, client_manager)

        def aggregate_fit(self, server_round: int, results: Any, failures: Any) -> Any:
            if failures:
                raise RuntimeError(f"round {server_round}: {len(failures)} clients failed")
            out = super().aggregate_fit(server_round, results, failures)
            marks.append(("end", server_round, time.time()))
            final[:] = parameters_to_ndarrays(out[0])
            return out

    strategy = TimedFedAvg(
        fraction_fit=1.0,
        fraction_evaluate=0.0,
        min_fit_clients=args.clients,
        min_evaluate_clients=0,
        min_available_clients=args.clients,
        initial_parameters=ndarrays_to_parameters(arrays),
        accept_failures=False,
    )
    certs = tuple(Path(p).read_bytes() for p in (args.ca, args.cert, args.key))
    flwr.server.start_server(
        server_address=f"{HOST}:{args.port}",
        config=flwr.server.ServerConfig(num_rounds=args.rounds),
        strategy=strategy,
        certificates=certs,  # type: ignore[arg-type]
    )
    np.savez(args.out_params, *final)
    Path(args.timings).write_text(json.dumps(marks))
    return 0


def flower_client(args: argparse.Namespace) -> int:
    import flwr
    from sklearn.neural_network import MLPClassifier

    data = np.load(args.data)
    x, y = data["x"], data["y"]
    hidden, seed = args.hidden, args.seed

    class MlpClient(flwr.client.NumPyClient):  # type: ignore[misc]
        def get_parameters(self, config: Any) -> list[np.ndarray]:
            raise RuntimeError("initial parameters come from the server")

        def fit(self, parameters: list[np.ndarray], config: Any) -> Any:
            est = MLPClassifier(hidden_layer_sizes=(hidden,), random_state=seed)
            est.partial_fit(np.zeros((2, x.shape[1])), np.array([0, 1]), classes=[0, 1])
            layers = len(parameters) // 2
            est.coefs_ = [np.array(p) for p in parameters[:layers]]
            est.intercepts_ = [np.array(p) for p in parameters[layers:]]
            del est._optimizer  # a fresh Adam state each round, as fedcity's agencies do
            est.n_iter_, est.t_ = 0, 0
            est.partial_fit(x, y)  # one epoch of shuffled mini-batches of 200
            return [*est.coefs_, *est.intercepts_], len(y), {}

        def evaluate(self, parameters: list[np.ndarray], config: Any) -> Any:
            return 0.0, len(y), {}

    flwr.client.start_client(
        server_address=f"{HOST}:{args.port}",
        client=MlpClient().to_client(),
        root_certificates=Path(args.ca).read_bytes(),
    )
    return 0


def run_flower(
    files: Any,
    workdir: Path,
    hidden: int,
    rounds: int,
    init: list[np.ndarray],
    xs: list[np.ndarray],
    ys: list[np.ndarray],
) -> Measure:
    from sklearn.neural_network import MLPClassifier

    harness = load_harness()
    workdir.mkdir(parents=True, exist_ok=True)
    np.savez(workdir / "init.npz", *init)
    for i, (x, y) in enumerate(zip(xs, ys, strict=True)):
        np.savez(workdir / f"client_{i}.npz", x=x, y=y.astype(np.int64))
    port = harness.free_port()
    proxies = [CountingProxy(port) for _ in xs]
    env = {**os.environ, **FLWR_ENV, "PYTHONUNBUFFERED": "1"}
    me = [sys.executable, str(Path(__file__).resolve())]
    certs = ["--ca", str(files.ca_cert), "--cert", str(files.server_cert)]
    procs: list[subprocess.Popen[bytes]] = []
    mark = MONITOR.snapshot()
    try:
        with open(workdir / "server.log", "wb") as log:
            procs.append(
                subprocess.Popen(
                    [
                        *me,
                        "--role",
                        "flower-server",
                        "--port",
                        str(port),
                        "--rounds",
                        str(rounds),
                        "--clients",
                        str(len(xs)),
                        "--init",
                        str(workdir / "init.npz"),
                        "--timings",
                        str(workdir / "timings.json"),
                        "--out-params",
                        str(workdir / "final.npz"),
                        *certs,
                        "--key",
                        str(files.server_key),
                    ],
                    stdout=log,
                    stderr=subprocess.STDOUT,
                    env=env,
                    start_new_session=True,
                )
            )
        for i, proxy in enumerate(proxies):
            with open(workdir / f"client_{i}.log", "wb") as log:
                procs.append(
                    subprocess.Popen(
                        [
                            *me,
                            "--role",
                            "flower-client",
                            "--port",
                            str(proxy.port),
                            "--data",
                            str(workdir / f"client_{i}.npz"),
                            "--hidden",
                            str(hidden),
                            "--seed",
                            str(i),
                            "--ca",
                            str(files.ca_cert),
                        ],
                        stdout=log,
                        stderr=subprocess.STDOUT,
                        env=env,
                        start_new_session=True,
                    )
                )
        if procs[0].wait(timeout=3600) != 0:
            raise RuntimeError(f"the Flower server failed; see {workdir / 'server.log'}")
        for p in procs[1:]:
            with contextlib.suppress(subprocess.TimeoutExpired):
                p.wait(timeout=30)
    finally:
        for p in procs:
            if p.poll() is None:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(p.pid, 9)
                p.wait()
        for proxy in proxies:
            proxy.close()
    other = MONITOR.since(mark) or 0.0
    marks = json.loads((workdir / "timings.json").read_text())
    ends = [t for kind, _, t in marks if kind == "end"]
    start = next(t for kind, r, t in marks if kind == "start" and r == 1)
    walls = list(np.diff([start, *ends]))
    up = sum(p.up for p in proxies) / (len(proxies) * rounds)
    down = sum(p.down for p in proxies) / (len(proxies) * rounds)
    final = np.load(workdir / "final.npz")
    arrays = [final[k] for k in sorted(final.files, key=lambda s: int(s.split("_")[1]))]
    est = MLPClassifier(hidden_layer_sizes=(hidden,))
    est.partial_fit(np.zeros((2, xs[0].shape[1])), np.array([0, 1]), classes=[0, 1])
    est.coefs_, est.intercepts_ = arrays[: len(arrays) // 2], arrays[len(arrays) // 2 :]
    note = "whole run ÷ rounds (includes connection set-up)"
    return Measure(walls, up, down, other, pooled_log_loss(est.predict_proba, xs, ys), note)


# -- report ----------------------------------------------------------------------------------------
def load_harness() -> Any:
    """``tests/net/harness.py``: the process orchestration the fault tests use."""
    path = str(ROOT / "tests" / "net")
    if path not in sys.path:
        sys.path.insert(0, path)
    return importlib.import_module("harness")


def fmt_s(v: float) -> str:
    return f"{v * 1000:.0f} ms" if v < 1 else f"{v:.2f} s"


def fmt_b(v: float) -> str:
    if v <= 0:
        return "—"
    return f"{v / 1024:.1f} KiB" if v < 1 << 20 else f"{v / (1 << 20):.2f} MiB"


def ratio(a: float, b: float) -> str:
    return f"{a / b:.1f}×" if b > 0 else "—"


def machine() -> str:
    cpu = cpu_model("unknown CPU")
    import flwr
    import grpc
    import sklearn

    return (
        f"{os.cpu_count()} cores ({cpu}), Linux {platform.release()}, Python "
        f"{platform.python_version()}, grpcio {grpc.__version__}, flwr {flwr.__version__}, "
        f"scikit-learn {sklearn.__version__}"
    )


def report(runs: dict[str, Run], cases: dict[str, int]) -> str:
    enc, ideal, off, flower = runs["enc"], runs["ideal"], runs["off"], runs["flower"]
    kh = runs["kh"]
    out = ["Wall time per FedAvg round (mean over the measured rounds):\n"]
    rows = []
    for title, hidden in cases.items():
        a, a2 = enc.measures[title], ideal.measures[title]
        b, c, d = off.measures[title], flower.measures[title], kh.measures[title]
        rows.append(
            [
                f"{mlp_params(hidden):,}",
                fmt_s(a.wall),
                fmt_s(a2.wall),
                fmt_s(d.wall),
                fmt_s(b.wall),
                fmt_s(c.wall),
                ratio(a.wall, c.wall),
                ratio(a2.wall, c.wall),
                ratio(d.wall, c.wall),
                ratio(a.wall, b.wall),
                "yes" if a.wall <= c.wall else "**no**",
                "yes" if d.wall <= c.wall else "**no**",
            ]
        )
    out.append(
        markdown(
            [
                "parameters",
                "(a) fedcity encrypted, threshold, network",
                "(a′) fedcity encrypted, threshold, sum of stages",
                "(d) fedcity encrypted, key holder, network",
                "(b) fedcity encryption off, in process",
                "(c) Flower, network",
                "(a)/(c)",
                "(a′)/(c)",
                "(d)/(c)",
                "(a)/(b)",
                "target met: (a) ≤ (c)",
                "(d) ≤ (c)",
            ],
            rows,
        )
    )
    out.append("\nBytes per agency per round (↑ agency → server, ↓ server → agency):\n")
    rows = []
    for title, hidden in cases.items():
        a, b, c = enc.measures[title], off.measures[title], flower.measures[title]
        d = kh.measures[title]
        rows.append(
            [
                f"{mlp_params(hidden):,}",
                f"{fmt_b(a.up)} ↑ + {fmt_b(a.down)} ↓ = {fmt_b(a.bytes)}",
                f"{fmt_b(d.up)} ↑ + {fmt_b(d.down)} ↓ = {fmt_b(d.bytes)}",
                fmt_b(b.task_json),
                f"{fmt_b(b.up)} ↑",
                f"{fmt_b(c.up)} ↑ + {fmt_b(c.down)} ↓ = {fmt_b(c.bytes)}",
                ratio(a.bytes, c.bytes),
                ratio(a.up, c.up),
                ratio(a.down, c.down),
            ]
        )
    out.append(
        markdown(
            [
                "parameters",
                "(a) fedcity threshold, on the wire",
                "(d) fedcity key holder, on the wire",
                "(a) of ↓: the task's model parameters",
                "(b) encryption off, upload payload",
                "(c) Flower, on the wire",
                "(a)/(c) total",
                "(a)/(c) ↑",
                "(a)/(c) ↓",
            ],
            rows,
        )
    )
    out.append(
        "\nWhere (a)'s round goes. Agent-side times come from the agents' task logs (10 agents "
        "share 2 cores, so they overlap and include waiting for a core); coordinator stages "
        "from the round records; (a′) are the stages of the same job in one process, agency "
        "stages at the slowest agency:\n"
    )
    rows = []
    for title, hidden in cases.items():
        a2 = ideal.measures[title]
        for label, m in (("(a)", enc.measures[title]), ("(d)", kh.measures[title])):
            rows.append(
                [
                    f"{mlp_params(hidden):,}",
                    label,
                    fmt_s(m.stages.get("agent contribute", 0.0)),
                    fmt_s(m.stages.get("agent partial_decrypt", 0.0)),
                    fmt_s(m.stages.get("verification", 0.0) + m.stages.get("combination", 0.0)),
                    " + ".join(fmt_s(a2.stages.get(k, 0.0)) for k in STAGES)
                    if label == "(a)"
                    else "",
                ]
            )
    out.append(
        markdown(
            [
                "parameters",
                "run",
                "contribute: train + encrypt + upload, per agency",
                "decryption: fetch + (partially) decrypt + prove + upload, per decryptor",
                "coordinator: verify + combine",
                "(a′) " + " + ".join(STAGES),
            ],
            rows,
        )
    )
    out.append("\nEach measured round, final model and machine load:\n")
    rows = []
    for title, hidden in cases.items():
        for run in runs.values():
            m = run.measures[title]
            rows.append(
                [
                    f"{mlp_params(hidden):,}",
                    run.label,
                    ", ".join(fmt_s(w) for w in m.walls),
                    "—" if m.loss is None else f"{m.loss:.4f}",
                    f"{m.other_cores:.2f}",
                ]
            )
    out.append(
        markdown(
            [
                "parameters",
                "run",
                "each round",
                "pooled training log loss after the last round",
                "other processes (cores)",
            ],
            rows,
        )
    )
    return "\n".join(out)


# -- driver ----------------------------------------------------------------------------------------
def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    p.add_argument("--key-bits", type=int, default=2048)
    p.add_argument("--rounds", type=int, default=3, help="FedAvg rounds per run")
    p.add_argument("--rows", type=int, default=2000, help="rows per agency")
    p.add_argument("--quick", action="store_true", help="1024-bit key, 300 rows, 2 rounds")
    p.add_argument("--out", type=Path, help="also write the markdown report here")
    p.add_argument("--keep", type=Path, help="work folder to keep (default: a temporary one)")
    p.add_argument(
        "--wait-quiet",
        type=float,
        default=0.0,
        metavar="S",
        help="before each run wait up to S seconds for other processes to go quiet",
    )
    # internal: the Flower processes
    p.add_argument("--role", choices=("flower-server", "flower-client"), help=argparse.SUPPRESS)
    for name in ("--port", "--clients", "--hidden", "--seed"):
        p.add_argument(name, type=int, help=argparse.SUPPRESS)
    for name in ("--init", "--timings", "--out-params", "--ca", "--cert", "--key", "--data"):
        p.add_argument(name, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.quick:
        args.key_bits, args.rows, args.rounds = 1024, 300, 2
    return args


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    if args.role == "flower-server":
        return flower_server(args)
    if args.role == "flower-client":
        return flower_client(args)
    os.environ.update(FLWR_ENV)
    command = "python benchmarks/bench_network.py " + shlex.join(
        list(argv) if argv is not None else sys.argv[1:]
    )
    harness = load_harness()
    from sklearn.neural_network import MLPClassifier

    from fedcity.data.dataset import AgencyDataset, FeatureSpec
    from fedcity.learn.design import design_matrix
    from fedcity.learn.fedavg import FederatedAveraging
    from fedcity.net.ceremony import deal_federation

    with contextlib.ExitStack() as stack:
        if args.keep is not None:
            work = args.keep.resolve()
            work.mkdir(parents=True, exist_ok=True)
        else:
            work = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="bench-net-")))
        print(f"machine: {machine()}\nwork folder: {work}", flush=True)
        names = [f"agency-{i + 1:02d}" for i in range(AGENCIES)]
        frames = wide_frames(AGENCIES, args.rows, FEATURES)
        spec = FeatureSpec(
            numeric=tuple(f"x{j:02d}" for j in range(FEATURES)), categorical={}, label="y"
        )
        t0 = time.perf_counter()
        files = deal_federation(work / "federation", names, THRESHOLD, key_bits=args.key_bits)
        took = time.perf_counter() - t0
        print(f"ceremony: {args.key_bits}-bit {THRESHOLD}-of-{AGENCIES} key in {took:.1f} s")
        csv = {}
        for name, frame in zip(names, frames, strict=True):
            csv[name] = work / "data" / f"{name}.csv"
            csv[name].parent.mkdir(parents=True, exist_ok=True)
            frame.to_csv(csv[name], index=False)
        setup = harness.Setup(work / "federation", files, names, THRESHOLD, "wide", spec, csv)
        datasets = [AgencyDataset.from_path(csv[n], spec, agency=n) for n in names]
        ys = [d.y() for d in datasets]

        runs = {
            "enc": Run("(a) fedcity encrypted, network"),
            "ideal": Run("(a′) fedcity encrypted, in process, sum of stages"),
            "off": Run("(b) fedcity encryption off, in process"),
            "flower": Run("(c) Flower, network"),
            "kh": Run("(d) fedcity encrypted, key holder, network"),
        }
        pres = {}
        for title, hidden in HIDDEN.items():
            MONITOR.wait_idle(args.wait_quiet, probe=1.0)
            print(f"== {title}: (b) encryption off, in process ...", flush=True)
            measure, result = run_inprocess(datasets, hidden, args.rounds)
            runs["off"].measures[title] = measure
            pres[title] = result.preprocessing_
        xs = [design_matrix(pres[next(iter(HIDDEN))], d) for d in datasets]
        MONITOR.wait_idle(args.wait_quiet, probe=1.0)
        print("== (a) fedcity encrypted over the network (both sizes, one coordinator) ...")
        runs["enc"].measures = run_fedcity(
            harness, setup, work / "fedcity", HIDDEN, args.rounds, xs, ys
        )
        files_kh = deal_federation(
            work / "federation-kh", names, 1, key_bits=args.key_bits, key_holder=names[0]
        )
        setup_kh = harness.Setup(work / "federation-kh", files_kh, names, 1, "wide", spec, csv)
        MONITOR.wait_idle(args.wait_quiet, probe=1.0)
        print("== (d) fedcity encrypted, key holder, over the network (both sizes) ...")
        runs["kh"].measures = run_fedcity(
            harness, setup_kh, work / "fedcity-kh", HIDDEN, args.rounds, xs, ys
        )
        for title, hidden in HIDDEN.items():
            MONITOR.wait_idle(args.wait_quiet, probe=1.0)
            print(f"== {title}: (c) Flower ...", flush=True)
            init = FederatedAveraging(
                MLPClassifier(hidden_layer_sizes=(hidden,)), pres[title], classes=[0, 1], seed=0
            ).parameters()
            runs["flower"].measures[title] = run_flower(
                files, work / f"flower-{hidden}", hidden, args.rounds, init, xs, ys
            )
        key = setup.key()
        for title, hidden in HIDDEN.items():
            MONITOR.wait_idle(args.wait_quiet, probe=1.0)
            print(f"== {title}: (a′) fedcity encrypted, in process ...", flush=True)
            runs["ideal"].measures[title], _ = run_inprocess(datasets, hidden, args.rounds, key)

    text = (
        f"Command: `{command.strip()}`  \nMachine: {machine()}  \n"
        f"{AGENCIES} agencies × {args.rows:,} rows, {FEATURES} numeric features, "
        f"{args.key_bits}-bit {THRESHOLD}-of-{AGENCIES} threshold key for (a), (a′), a "
        f"{args.key_bits}-bit key held by {names[0]} for (d), MLPClassifier, 1 local epoch, "
        f"batch 200, {args.rounds} FedAvg rounds per run.\n\n" + report(runs, HIDDEN)
    )
    print("\n" + text)
    if args.out is not None:
        args.out.write_text(text + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
