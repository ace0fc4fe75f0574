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

``--secagg`` (issue 13) runs a different comparison instead, all in one invocation with
interleaved repetitions (default 4, the order of the modes rotating per repetition), 3 FedAvg
rounds per job: fedcity threshold 3-of-10 and fedcity key holder as in (a) and (d) (both
clusters stay up; each job is a fresh ``"fedavg"`` submission), Flower SecAgg+
(``SecAggPlusWorkflow`` with 10 shares and reconstruction threshold 3, ``secaggplus_mod``)
and plain Flower (legacy ``DefaultWorkflow``), both in Flower's simulation engine (one
``run_simulation`` process, Ray started once, its ServerApp running what this driver asks
over an authenticated local pipe), with the same clients (the ``MLPClassifier`` step of (c)),
model sizes, initial weights and rows. Per round it reports wall time (median and minimum),
the CPU seconds of the slowest agency (fedcity: its agent process from /proc, the nice-19
randomness-pool thread apart; Flower: each client's CPU over its messages, timed in a mod
around ``secaggplus_mod``), server CPU, bytes per agency (fedcity: on the wire; Flower:
serialized messages through the Grid, counted by ``bench_flower.py``'s counting Grid), the
cores used by the measured system, this benchmark and other processes, the load average, the
settings fedcity actually used (read from the run) and per-operation costs, and the issue's
targets as ratios against SecAgg+ measured in the same run. Before each job it waits (up to
``--settle`` s) for its own processes to go quiet, so agents finish idle work first. BLAS
runs one thread per process (``OMP_NUM_THREADS=1`` etc.) on both sides.

Examples
--------
    python benchmarks/bench_network.py                      # 2048-bit key, 3 rounds, ~10 min
    python benchmarks/bench_network.py --secagg --out /tmp/secagg.md   # issue 13, ~6 min
    python benchmarks/bench_network.py --secagg --key-bits 1024 --rows 300 --reps 1  # smoke
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
import math
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


# -- issue 13: fedcity's two modes against Flower's SecAgg+, interleaved ------------------------
# ``--secagg`` runs this comparison instead of the networked suite above: per repetition and
# model size, one job on a threshold cluster, one on a key-holder cluster (both stay up), and
# one SecAgg+ and one plain legacy-FedAvg call in a single Flower simulation process (Ray is
# started once; its ServerApp runs what the driver asks for over a local authenticated pipe).
SECAGG_SHARES, SECAGG_RECONSTRUCTION = 10, 3  # the table: 10 shares, threshold 3
MODES = ("threshold", "keyholder", "secagg+", "plain")
MODE_LABELS = {
    "threshold": f"fedcity threshold {THRESHOLD}-of-{AGENCIES}",
    "keyholder": "fedcity key holder",
    "secagg+": "Flower SecAgg+ (simulation)",
    "plain": "Flower plain (simulation)",
}
AUTHKEY_ENV = "BENCH_NETWORK_AUTHKEY"
ONE_THREAD = {"OMP_NUM_THREADS": "1", "OPENBLAS_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}


def _proc_table() -> dict[int, tuple[int, float]]:
    """``pid -> (parent pid, CPU s)`` from /proc (utime+stime+cutime+cstime: a reaped
    worker's time moves into its parent's and is counted once)."""
    ticks = os.sysconf("SC_CLK_TCK")
    out: dict[int, tuple[int, float]] = {}
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        try:
            with open(f"/proc/{entry.name}/stat") as fh:
                raw = fh.read()
        except OSError:
            continue
        rest = raw[raw.rfind(")") + 2 :].split()
        cpu = sum(int(v) for v in rest[11:15]) / ticks
        out[int(entry.name)] = (int(rest[1]), cpu)
    return out


def tree_cpu(roots: Sequence[int]) -> dict[int, float]:
    """CPU seconds of each root process and its live descendants."""
    table = _proc_table()
    children: dict[int, list[int]] = {}
    for pid, (ppid, _) in table.items():
        children.setdefault(ppid, []).append(pid)
    out = {}
    for root in roots:
        total, stack = 0.0, [root]
        while stack:
            pid = stack.pop()
            total += table.get(pid, (0, 0.0))[1]
            stack.extend(children.get(pid, []))
        out[root] = total
    return out


def background_cpu(pids: Sequence[int]) -> dict[int, float]:
    """CPU seconds of each process's threads that run at a lower priority than its main
    thread: the agent's randomness-pool precompute thread (nice 19), which tops the pool up
    while the agent waits for work, off a round's critical path."""
    ticks = os.sysconf("SC_CLK_TCK")
    out = {}
    for pid in pids:
        threads: dict[int, tuple[int, float]] = {}
        with contextlib.suppress(OSError):
            for entry in os.scandir(f"/proc/{pid}/task"):
                try:
                    with open(f"/proc/{pid}/task/{entry.name}/stat") as fh:
                        raw = fh.read()
                except OSError:
                    continue
                rest = raw[raw.rfind(")") + 2 :].split()
                threads[int(entry.name)] = (int(rest[16]), (int(rest[11]) + int(rest[12])) / ticks)
        main_nice = threads.get(pid, (0, 0.0))[0]
        out[pid] = sum(cpu for nice, cpu in threads.values() if nice > main_nice)
    return out


def ratio2(a: float, b: float) -> str:
    return f"{a / b:.2f}×" if b > 0 else "—"


def machine_busy() -> float:
    """CPU seconds the whole machine has been busy since boot (all cores)."""
    with open("/proc/stat") as fh:
        f = [int(v) for v in fh.readline().split()[1:9]]
    return (sum(f) - f[3] - f[4]) / os.sysconf("SC_CLK_TCK")


def settle(max_seconds: float, below: float = 0.2, probe: float = 1.0) -> tuple[float, float]:
    """Wait until this benchmark's processes (clusters, simulation, Ray) use fewer than
    ``below`` cores, up to ``max_seconds``: lets agents finish idle work (e.g. refilling a
    randomness pool) before the next measurement. Returns the last probe's cores used by
    this benchmark and by the whole machine."""
    me = os.getpid()
    deadline = time.monotonic() + max_seconds
    while True:
        t0, b0, o0 = time.monotonic(), machine_busy(), tree_cpu([me])[me]
        time.sleep(probe)
        dt = time.monotonic() - t0
        ours, busy = (tree_cpu([me])[me] - o0) / dt, (machine_busy() - b0) / dt
        if ours < below or time.monotonic() >= deadline:
            return ours, busy


@dataclass
class RoundCost:
    """One measured FedAvg round of one mode."""

    wall: float
    agency_cpu: list[float]  # CPU s per agency (fedcity: agent process; Flower: its 4 messages)
    background: list[float]  # of which in low-priority background threads (randomness pool)
    server_cpu: float  # coordinator process / Flower simulation process (not its Ray workers)
    up: float  # bytes per agency, agency → server
    down: float  # bytes per agency, server → agency
    busy: float  # cores the whole machine used during the round
    own: float  # cores the measured system used during the round
    ours: float  # cores this benchmark's processes used (measured system, idle others, driver)

    @property
    def critical(self) -> float:
        """CPU s of the slowest agency without its background (idle-time) threads."""
        return max(a - b for a, b in zip(self.agency_cpu, self.background, strict=True))

    @property
    def critical_all(self) -> float:
        """CPU s of the slowest agency, background threads included."""
        return max(self.agency_cpu)


@dataclass
class JobCosts:
    """What one job (one repetition of one mode and size) measured."""

    rounds: list[RoundCost]
    loss: float | None
    load: tuple[float, float]  # 1-minute load average before, after
    record: dict[str, Any] = field(default_factory=dict)  # fedcity: first FedAvg round record
    log: list[dict[str, Any]] = field(default_factory=list)  # fedcity: agents' task-log rows
    idle_cpu: float = 0.0  # fedcity: CPU s of all agents while settling after the job


class FedcityCluster:
    """A running coordinator and its ten agents, each agent behind a counting proxy."""

    def __init__(self, harness: Any, setup: Any, workdir: Path, stack: contextlib.ExitStack):
        self.setup = setup
        port = harness.free_port()
        self.address = f"{HOST}:{port}"
        self.proxies = {a: CountingProxy(port) for a in setup.agencies}
        for proxy in self.proxies.values():
            stack.callback(proxy.close)
        self.cluster = stack.enter_context(harness.Cluster(setup, workdir))
        self.coordinator = self.cluster.start_coordinator(
            port, heartbeat=2.0, liveness=120.0, collect=900.0, decrypt=900.0
        )
        self.agents = {
            a: self.cluster.start_agent(a, f"{HOST}:{self.proxies[a].port}") for a in setup.agencies
        }
        self.cluster.wait_healthy(self.address, self.coordinator, timeout=120)
        self.client = self.cluster.client(self.address)
        self.client.timeout = 120.0
        self.cluster.wait_connected(self.client, setup.agencies, timeout=300)

    def pids(self) -> list[int]:
        return [self.coordinator.pid, *(p.pid for p in self.agents.values())]

    def snap(
        self,
    ) -> tuple[float, float, dict[int, float], list[tuple[int, int]], dict[int, float]]:
        t, busy = time.perf_counter(), machine_busy()
        cpu = tree_cpu([*self.pids(), os.getpid()])
        back = background_cpu([p.pid for p in self.agents.values()])
        return t, busy, cpu, [self.proxies[a].snapshot() for a in self.setup.agencies], back

    def job(self, hidden: int, rounds: int, xs: list[np.ndarray], ys: list[np.ndarray]) -> JobCosts:
        from fedcity.learn.jobs import estimator_from_result_json

        load0 = os.getloadavg()[0]
        job_id = self.client.submit("fedavg", fedavg_params(hidden, rounds), self.setup.dataset)
        marks: list[tuple[str, Any, Any]] = []
        for event in self.client.watch(job_id, timeout=3600):
            if event.round_record is not None:
                marks.append((event.round_record["kind"], event.round_record, self.snap()))
            if event.finished and event.state != "succeeded":
                raise RuntimeError(f"fedcity job {job_id} {event.state}: {event.failure}")
        load1 = os.getloadavg()[0]
        first = next(i for i, m in enumerate(marks) if m[0] == "fedavg.local")
        out = []
        agent_pids = [p.pid for p in self.agents.values()]
        for (_, _, a), (_, _, b) in itertools.pairwise(marks[first - 1 :]):
            wall = b[0] - a[0]
            n = len(self.setup.agencies)
            out.append(
                RoundCost(
                    wall=wall,
                    agency_cpu=[b[2][p] - a[2][p] for p in agent_pids],
                    background=[b[4][p] - a[4][p] for p in agent_pids],
                    server_cpu=b[2][self.coordinator.pid] - a[2][self.coordinator.pid],
                    up=sum(e[0] - s[0] for s, e in zip(a[3], b[3], strict=True)) / n,
                    down=sum(e[1] - s[1] for s, e in zip(a[3], b[3], strict=True)) / n,
                    busy=(b[1] - a[1]) / wall,
                    own=sum(b[2][p] - a[2][p] for p in self.pids()) / wall,
                    ours=(b[2][os.getpid()] - a[2][os.getpid()]) / wall,
                )
            )
        text = self.client.result_text(job_id)
        model = estimator_from_result_json(text, self.setup.spec)
        loss = pooled_log_loss(model.named_steps["model"].predict_proba, xs, ys)
        log = [
            r
            for a in self.setup.agencies
            for r in self.cluster.task_log(a)
            if r["job"] == job_id and r["kind"] == "fedavg.local"
        ]
        return JobCosts(out, loss, (load0, load1), marks[first][1], log)


# -- the Flower simulation process -----------------------------------------------------------
def flower_sim(args: argparse.Namespace) -> int:
    """The simulation process: Ray + 10 virtual SuperNodes; the ServerApp serves commands."""
    import traceback
    from multiprocessing.connection import Client as PipeClient

    from flwr.app import Context, Message
    from flwr.client import NumPyClient
    from flwr.client.mod import secaggplus_mod
    from flwr.clientapp import ClientApp
    from flwr.common.secure_aggregation.secaggplus_constants import RECORD_KEY_CONFIGS, Key
    from flwr.serverapp import ServerApp
    from flwr.simulation import run_simulation

    data_dir, log_dir = Path(args.data), Path(args.timings)

    class MlpClient(NumPyClient):  # type: ignore[misc]
        """bench_network's Flower client: the agencies' MLP step on the agencies' rows."""

        def __init__(self, pid: int) -> None:
            self.pid = pid

        def fit(self, parameters: list[np.ndarray], config: Any) -> Any:
            from sklearn.neural_network import MLPClassifier

            # the ClientApp is pickled with every message; keep the rows in the worker
            cache = sys.__dict__.setdefault("_bench_network_rows", {})
            if self.pid not in cache:
                with np.load(data_dir / f"client_{self.pid}.npz") as data:
                    cache[self.pid] = (data["x"], data["y"])
            x, y = cache[self.pid]
            est = MLPClassifier(hidden_layer_sizes=(parameters[0].shape[1],), random_state=self.pid)
            est.partial_fit(np.zeros((2, x.shape[1])), np.array([0, 1]), classes=[0, 1])
            layers = len(parameters) // 2
            est.coefs_ = [np.array(p) for p in parameters[:layers]]
            est.intercepts_ = [np.array(p) for p in parameters[layers:]]
            del est._optimizer  # a fresh Adam state each round, as fedcity's agencies do
            est.n_iter_, est.t_ = 0, 0
            est.partial_fit(x, y)  # one epoch of shuffled mini-batches of 200
            return [*est.coefs_, *est.intercepts_], len(y), {}

    def client_fn(context: Context) -> Any:
        return MlpClient(int(context.node_config["partition-id"])).to_client()

    def secagg_when_asked(msg: Message, ctxt: Context, call_next: Any) -> Message:
        """SecAgg+'s mod for SecAgg+ messages; plain FedAvg messages go straight through."""
        if RECORD_KEY_CONFIGS in msg.content.config_records:
            return secaggplus_mod(msg, ctxt, call_next)  # type: ignore[no-any-return]
        return call_next(msg, ctxt)  # type: ignore[no-any-return]

    def cpu_mod(msg: Message, ctxt: Context, call_next: Any) -> Message:
        """CPU (process_time of the Ray worker) of everything the client does per message."""
        configs = msg.content.config_records.get(RECORD_KEY_CONFIGS)
        stage = str(configs[Key.STAGE]) if configs and Key.STAGE in configs else "fit"
        c0, w0 = time.process_time(), time.perf_counter()
        reply = call_next(msg, ctxt)
        row = {
            "node": int(ctxt.node_config["partition-id"]),
            "round": msg.metadata.group_id,
            "stage": stage,
            "cpu": time.process_time() - c0,
            "wall": time.perf_counter() - w0,
        }
        with open(log_dir / f"node-{row['node']}.jsonl", "a") as fh:
            fh.write(json.dumps(row) + "\n")
        return reply

    client = ClientApp(client_fn=client_fn, mods=[cpu_mod, secagg_when_asked])
    server = ServerApp()

    @server.main()  # type: ignore[misc]
    def main(grid: Any, context: Context) -> None:
        conn = PipeClient((HOST, args.port), authkey=bytes.fromhex(os.environ[AUTHKEY_ENV]))
        while (cmd := conn.recv()) is not None:
            try:
                conn.send(_sim_command(grid, context, cmd, log_dir))
            except Exception:
                conn.send({"error": traceback.format_exc()})
        conn.close()

    log_dir.mkdir(parents=True, exist_ok=True)
    run_simulation(
        server_app=server,
        client_app=client,
        num_supernodes=args.clients,
        backend_config={"client_resources": {"num_cpus": 1}},
    )
    return 0


def _sim_command(grid: Any, context: Any, cmd: dict[str, Any], log_dir: Path) -> dict[str, Any]:
    """One SecAgg+ or plain legacy-FedAvg call of ``cmd['rounds']`` rounds; its costs."""
    from bench_flower import _grid_proxy  # the SecAgg+ benchmark's message-counting Grid
    from flwr.common import ndarrays_to_parameters, parameters_to_ndarrays
    from flwr.server import LegacyContext, ServerConfig
    from flwr.server.strategy import FedAvg as LegacyFedAvg
    from flwr.server.workflow import DefaultWorkflow, SecAggPlusWorkflow

    n = cmd["clients"]
    counter = {"up": 0, "down": 0}
    marks: list[tuple[str, int, float, int, int, float]] = []
    final: list[np.ndarray] = []

    def mark(kind: str, rnd: int) -> None:
        t = time.perf_counter()
        marks.append((kind, rnd, t, counter["up"], counter["down"], time.process_time()))

    class Timed(LegacyFedAvg):  # type: ignore[misc]
        def configure_fit(self, server_round: int, parameters: Any, client_manager: Any) -> Any:
            mark("start", server_round)
            return super().configure_fit(server_round, parameters, client_manager)

        def aggregate_fit(self, server_round: int, results: Any, failures: Any) -> Any:
            if failures:
                raise RuntimeError(f"round {server_round}: {len(failures)} clients failed")
            out = super().aggregate_fit(server_round, results, failures)
            final[:] = parameters_to_ndarrays(out[0])
            mark("end", server_round)
            return out

    strategy = Timed(
        fraction_fit=1.0,
        fraction_evaluate=0.0,
        min_fit_clients=n,
        min_available_clients=n,
        initial_parameters=ndarrays_to_parameters(cmd["init"]),
        accept_failures=False,
    )
    ctx = LegacyContext(
        context=context, config=ServerConfig(num_rounds=cmd["rounds"]), strategy=strategy
    )
    if cmd["variant"] == "secagg+":
        fit = SecAggPlusWorkflow(
            num_shares=cmd["shares"], reconstruction_threshold=cmd["reconstruction"]
        )
        workflow = DefaultWorkflow(fit_workflow=fit)
    else:
        workflow = DefaultWorkflow()
    offsets = {p: p.stat().st_size for p in log_dir.glob("node-*.jsonl")}
    load0 = os.getloadavg()[0]
    workflow(_grid_proxy(grid, counter), ctx)
    load1 = os.getloadavg()[0]
    rows = []
    for path in log_dir.glob("node-*.jsonl"):
        with open(path) as fh:
            fh.seek(offsets.get(path, 0))
            rows += [json.loads(line) for line in fh if line.strip()]
    return {"marks": marks, "rows": rows, "final": final, "load": (load0, load1)}


class FlowerSim:
    """The driver's side of the simulation process."""

    def __init__(
        self, workdir: Path, xs: list[np.ndarray], ys: list[np.ndarray], stack: contextlib.ExitStack
    ) -> None:
        from multiprocessing.connection import Listener

        workdir.mkdir(parents=True, exist_ok=True)
        for i, (x, y) in enumerate(zip(xs, ys, strict=True)):
            np.savez(workdir / f"client_{i}.npz", x=x, y=y.astype(np.int64))
        key = os.urandom(32)
        listener = Listener((HOST, 0), authkey=key)
        stack.callback(listener.close)
        env = {**os.environ, **FLWR_ENV, AUTHKEY_ENV: key.hex(), "PYTHONUNBUFFERED": "1"}
        self.clients = len(xs)
        self.log = open(workdir / "simulation.log", "wb")  # noqa: SIM115
        stack.callback(self.log.close)
        self.proc = subprocess.Popen(
            [
                sys.executable,
                str(Path(__file__).resolve()),
                "--role",
                "flower-sim",
                "--port",
                str(listener.address[1]),
                "--clients",
                str(self.clients),
                "--data",
                str(workdir),
                "--timings",
                str(workdir / "cpu"),
            ],
            stdout=self.log,
            stderr=subprocess.STDOUT,
            env=env,
            start_new_session=True,
        )
        stack.callback(self.close)
        accepted: list[Any] = []
        waiter = threading.Thread(target=lambda: accepted.append(listener.accept()), daemon=True)
        waiter.start()
        deadline = time.monotonic() + 600
        while not accepted:
            if self.proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"the Flower simulation did not start; see {self.log.name}")
            waiter.join(0.5)
        self.conn = accepted[0]

    def close(self) -> None:
        with contextlib.suppress(Exception):
            self.conn.send(None)
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.proc.wait(timeout=60)
        if self.proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.proc.pid, 9)
            self.proc.wait()

    def job(
        self,
        variant: str,
        hidden: int,
        rounds: int,
        init: list[np.ndarray],
        xs: list[np.ndarray],
        ys: list[np.ndarray],
    ) -> JobCosts:
        from sklearn.neural_network import MLPClassifier

        cmd = {
            "variant": variant,
            "rounds": rounds,
            "init": init,
            "clients": self.clients,
            "shares": SECAGG_SHARES,
            "reconstruction": SECAGG_RECONSTRUCTION,
        }
        roots = [self.proc.pid, os.getpid()]
        t0, b0, tree0 = time.perf_counter(), machine_busy(), tree_cpu(roots)
        self.conn.send(cmd)
        res = self.conn.recv()
        t1, b1, tree1 = time.perf_counter(), machine_busy(), tree_cpu(roots)
        if "error" in res:
            raise RuntimeError(f"Flower {variant}: {res['error']}")
        marks = res["marks"]
        ends = [m for m in marks if m[0] == "end"]
        starts = [m for m in marks if m[0] == "start"]
        cpu: dict[tuple[str, int], float] = {}
        for row in res["rows"]:
            k = (row["round"], row["node"])
            cpu[k] = cpu.get(k, 0.0) + row["cpu"]
        out = []
        prev = starts[0]
        span = t1 - t0
        for end in ends:
            wall = end[2] - prev[2]
            out.append(
                RoundCost(
                    wall=wall,
                    agency_cpu=[cpu.get((str(end[1]), i), 0.0) for i in range(self.clients)],
                    background=[0.0] * self.clients,
                    server_cpu=end[5] - prev[5],
                    up=(end[3] - prev[3]) / self.clients,
                    down=(end[4] - prev[4]) / self.clients,
                    # per call, not per round: the simulation's tree (Ray included) is read
                    # before and after the call
                    busy=(b1 - b0) / span,
                    own=(tree1[roots[0]] - tree0[roots[0]]) / span,
                    ours=(tree1[roots[1]] - tree0[roots[1]]) / span,
                )
            )
            prev = end
        est = MLPClassifier(hidden_layer_sizes=(hidden,))
        est.partial_fit(np.zeros((2, xs[0].shape[1])), np.array([0, 1]), classes=[0, 1])
        arrays = res["final"]
        est.coefs_, est.intercepts_ = arrays[: len(arrays) // 2], arrays[len(arrays) // 2 :]
        return JobCosts(out, pooled_log_loss(est.predict_proba, xs, ys), tuple(res["load"]))


# -- effective settings and per-operation costs (same run) ----------------------------------
def effective_settings(
    costs: JobCosts, params: int, key_bits: int, cipher_bytes: int
) -> dict[str, str]:
    """What fedcity actually used in a job: from its first FedAvg round record and task log
    (nothing here is configured by this script; other defaults are picked up as they land)."""
    from fedcity.crypto import PackingSpec

    rec, out = costs.record, {}
    clip, step = float(rec.get("clip") or 0.0), float(rec.get("step") or 0.0)
    contributors = len(rec.get("contributors") or []) or AGENCIES
    if clip > 0 and step > 0:
        bits = round(math.log2(2 * clip / step + 1))
        out["precision bits (from the round's clip and step)"] = f"{bits} (clip ±{clip:g})"
        try:
            spec = PackingSpec(
                clip=clip, precision_bits=bits, max_summands=contributors, n_length=key_bits
            )
            out["values per ciphertext (PackingSpec)"] = str(spec.slots_per_ciphertext)
            out["ciphertexts per upload (PackingSpec, parameters + 3)"] = str(
                spec.n_ciphertexts(params + 3)
            )
        except Exception as exc:
            out["values per ciphertext"] = f"n/a ({exc})"
    uploads = [r["bytes"] for r in costs.log if r["action"] == "contribute"]
    if uploads:
        b = float(np.median(uploads))
        out["upload payload bytes (task log)"] = (
            f"{b:,.0f} (≈ {b / cipher_bytes:.0f} × {cipher_bytes} B)"
        )
    per_round: dict[int, list[dict[str, Any]]] = {}
    for r in costs.log:
        if r["action"] == "partial_decrypt":
            per_round.setdefault(r["round"], []).append(r)
    if per_round:
        counts = [len(v) for v in per_round.values()]
        b = float(np.median([r["bytes"] for v in per_round.values() for r in v]))
        out["decryptions per round (task log)"] = (
            f"{min(counts)}–{max(counts)}" if min(counts) != max(counts) else str(counts[0])
        )
        out["decryption payload bytes per decryptor"] = (
            f"{b:,.0f} (≈ {b / cipher_bytes:.0f} × {cipher_bytes} B)"
        )
    out["decryptors named in the round record"] = str(len(rec.get("decryptors") or []))
    if rec.get("bytes_per_agency"):
        out["round record: bytes_per_agency (upload payload)"] = (
            f"{float(rec['bytes_per_agency']):,.0f}"
        )
    if rec.get("bytes_to_decryptors"):
        out["round record: bytes_to_decryptors"] = f"{float(rec['bytes_to_decryptors']):,.0f}"
    return out


def library_settings() -> dict[str, str]:
    """Defaults of the agent and coordinator that this run picked up (introspected)."""
    import dataclasses

    from fedcity.net.agentconfig import AgentConfig

    out = {}
    for f in dataclasses.fields(AgentConfig):
        if any(w in f.name for w in ("pool", "precompute", "worker", "stream")):
            default = f.default if f.default is not dataclasses.MISSING else "(required)"
            out[f"agent config {f.name}"] = repr(default)
    try:
        help_text = subprocess.run(
            [sys.executable, "-m", "fedcity.cli", "coordinator", "serve", "--help"],
            capture_output=True,
            text=True,
            timeout=60,
        ).stdout
    except (OSError, subprocess.SubprocessError):
        help_text = ""
    flags = sorted(
        {
            w.strip(",")
            for w in help_text.split()
            if w.startswith("--") and any(k in w for k in ("group", "optimis", "decrypt"))
        }
    )
    out["coordinator decryption options"] = ", ".join(flags) or "none"
    with contextlib.suppress(ImportError):
        importlib.import_module("fedcity.crypto.pool")
        out["fedcity.crypto.pool"] = "present"
    out.setdefault("fedcity.crypto.pool", "absent")
    return out


def operation_costs(
    setup: Any, files_kh: Any, holder: str, settings: JobCosts, params: int, key_bits: int
) -> dict[str, float]:
    """Seconds per ciphertext (``/ct``) or per vector of up to 40 ciphertexts (``/vector``)
    of the round's cryptographic operations, in this process on one core, with the run's
    keys and packing (fixed-base tables built before timing)."""
    from fedcity.crypto import PackingSpec, encrypt_vector, keyholder_decrypt, partial_decrypt
    from fedcity.crypto import threshold as th
    from fedcity.crypto.keys import PrivateKey, load_key

    rec = settings.record
    clip, step = float(rec["clip"]), float(rec["step"])
    bits = round(math.log2(2 * clip / step + 1))
    spec = PackingSpec(clip=clip, precision_bits=bits, max_summands=AGENCIES, n_length=key_bits)
    n_values = min(params + 3, 40 * spec.slots_per_ciphertext)  # ≤ 40 ciphertexts
    x = np.random.default_rng(0).uniform(-clip / 2, clip / 2, n_values)
    tpk, shares = setup.key()
    out: dict[str, float] = {}

    def timed(label: str, per: int, fn: Any) -> Any:
        t = time.perf_counter()
        value = fn()
        out[label] = (time.perf_counter() - t) / per
        return value

    encrypt_vector(tpk.public_key, x[:1], spec)  # builds the fixed-base table
    vec = timed(
        "encryption (fresh randomness) /ct", 1, lambda: encrypt_vector(tpk.public_key, x, spec)
    )
    k = len(vec.ciphertexts)
    out["encryption (fresh randomness) /ct"] /= k
    prove = getattr(th, "prove_partial_decryption", None)
    if prove is not None:
        bare = timed(
            "partial decryption /ct", k, lambda: partial_decrypt(shares[0], vec, prove=False)
        )
        proven = timed("its proof /vector", 1, lambda: prove(shares[0], vec, bare))
    else:
        proven = timed(
            "partial decryption with proof /ct", k, lambda: partial_decrypt(shares[0], vec)
        )
    timed("proof verification /vector", 1, lambda: th.verify_partial_decryption(tpk, vec, proven))
    private = load_key(files_kh.key_file(holder))
    if isinstance(private, PrivateKey):
        encrypt_vector(private.public_key, x[:1], spec)
        vec = encrypt_vector(private.public_key, x, spec)
        timed("key-holder decryption /ct", k, lambda: keyholder_decrypt(private, vec))
    out["ciphertexts timed"] = float(k)
    return out


# -- the run ---------------------------------------------------------------------------------
def run_secagg(args: argparse.Namespace, command: str) -> int:
    """``--secagg``: the issue-13 comparison, interleaved, one invocation."""
    os.environ.update(FLWR_ENV)
    for k, v in ONE_THREAD.items():
        os.environ.setdefault(k, v)
    harness = load_harness()

    from fedcity.net.ceremony import deal_federation

    sizes = {mlp_params(h): h for h in args.hidden_units}
    load_start = os.getloadavg()
    costs: dict[tuple[str, int], list[JobCosts]] = {(m, p): [] for m in MODES for p in sizes}
    idle: dict[str, list[float]] = {"threshold": [], "keyholder": []}
    with contextlib.ExitStack() as stack:
        work, names, csv, spec = workspace(stack, args, "bench-net-")
        t0 = time.perf_counter()
        files = deal_federation(work / "federation", names, THRESHOLD, key_bits=args.key_bits)
        files_kh = deal_federation(
            work / "federation-kh", names, 1, key_bits=args.key_bits, key_holder=names[0]
        )
        print(f"ceremonies: two {args.key_bits}-bit keys in {time.perf_counter() - t0:.1f} s")
        setup = harness.Setup(work / "federation", files, names, THRESHOLD, "wide", spec, csv)
        setup_kh = harness.Setup(work / "federation-kh", files_kh, names, 1, "wide", spec, csv)
        ys, xs, inits = flower_inputs(csv, names, spec, sizes, args.hidden_units[0])
        print("starting the Flower simulation (Ray) ...", flush=True)
        sim = FlowerSim(work / "flower-sim", xs, ys, stack)
        print("starting the fedcity threshold and key-holder clusters ...", flush=True)
        clusters = {
            "threshold": FedcityCluster(harness, setup, work / "fedcity", stack),
            "keyholder": FedcityCluster(harness, setup_kh, work / "fedcity-kh", stack),
        }

        def one(mode: str, p: int, rounds: int) -> JobCosts:
            if mode in clusters:
                return clusters[mode].job(sizes[p], rounds, xs, ys)
            return sim.job(mode, sizes[p], rounds, inits[p], xs, ys)

        print("warm-up (not measured): one round of every mode at every size ...", flush=True)
        for p in sizes:
            for mode in MODES:
                one(mode, p, 1)
        for rep in range(args.reps):
            for p in sizes:
                order = MODES[rep % len(MODES) :] + MODES[: rep % len(MODES)]
                for mode in order:
                    ours, busy = settle(args.settle)
                    c = one(mode, p, args.rounds)
                    costs[mode, p].append(c)
                    walls = ", ".join(fmt_s(r.wall) for r in c.rounds)
                    print(
                        f"rep {rep + 1}/{args.reps}  {p:6,d} params  {mode:10s} rounds {walls}  "
                        f"slowest agency CPU {fmt_s(max(r.critical for r in c.rounds))}  "
                        f"(before: benchmark {ours:.2f}, machine {busy:.2f} cores)",
                        flush=True,
                    )
                    if mode in clusters:  # what the agents do once the job is over
                        a = tree_cpu(clusters[mode].pids())
                        settle(args.settle)
                        b = tree_cpu(clusters[mode].pids())
                        idle[mode].append(sum(b.values()) - sum(a.values()))
        ops = {}
        largest = max(sizes)
        if costs["threshold", largest] and costs["threshold", largest][0].record.get("step"):
            settle(args.settle)
            try:
                ops = operation_costs(
                    setup,
                    files_kh,
                    names[0],
                    costs["threshold", largest][0],
                    largest,
                    args.key_bits,
                )
            except Exception as exc:
                print(f"per-operation costs not measured: {exc}")
        cipher_bytes = 2 * ((args.key_bits + 7) // 8)
        settings = {
            (m, p): effective_settings(costs[m, p][0], p, args.key_bits, cipher_bytes)
            for m in clusters
            for p in sizes
            if costs[m, p]
        }
        libs = library_settings()
    load_end = os.getloadavg()
    text = (
        f"Command: `{command.strip()}`  \nMachine: {machine()}; `nproc` = {os.cpu_count()}  \n"
        f"Load average (1, 5, 15 min) at start {load_start[0]:.2f}, {load_start[1]:.2f}, "
        f"{load_start[2]:.2f}; at end {load_end[0]:.2f}, {load_end[1]:.2f}, {load_end[2]:.2f}  \n"
        f"{AGENCIES} agencies × {args.rows:,} rows, {FEATURES} numeric features, MLPClassifier, "
        f"1 local epoch, batch 200; {args.reps} interleaved repetitions × {args.rounds} FedAvg "
        f"rounds per mode and size; {args.key_bits}-bit keys; SecAgg+ with {SECAGG_SHARES} "
        f"shares, reconstruction threshold {SECAGG_RECONSTRUCTION}, all {AGENCIES} clients; "
        f"{', '.join(f'{k}={v}' for k, v in ONE_THREAD.items())} for every process.\n\n"
        + report_secagg(costs, sizes, settings, libs, ops, idle, args)
    )
    print("\n" + text)
    if args.out is not None:
        args.out.write_text(text + "\n")
    if args.json is not None:
        args.json.write_text(
            json.dumps(
                {
                    f"{m} {p}": [
                        {"rounds": [vars(r) for r in c.rounds], "loss": c.loss, "load": c.load}
                        for c in cs
                    ]
                    for (m, p), cs in costs.items()
                },
                indent=1,
            )
        )
    return 0


def report_secagg(
    costs: dict[tuple[str, int], list[JobCosts]],
    sizes: dict[int, int],
    settings: dict[tuple[str, int], dict[str, str]],
    libs: dict[str, str],
    ops: dict[str, float],
    idle: dict[str, list[float]],
    args: argparse.Namespace,
) -> str:
    def rounds(m: str, p: int) -> list[RoundCost]:
        return [r for c in costs[m, p] for r in c.rounds]

    def med(m: str, p: int, f: Any) -> float:
        v = [f(r) for r in rounds(m, p)]
        return float(np.median(v)) if v else float("nan")

    def low(m: str, p: int, f: Any) -> float:
        v = [f(r) for r in rounds(m, p)]
        return float(np.min(v)) if v else float("nan")

    def wall(r: RoundCost) -> float:
        return r.wall

    def crit(r: RoundCost) -> float:
        return r.critical

    def total(r: RoundCost) -> float:
        return r.up + r.down

    def payload_up(m: str, p: int) -> float:
        """Upload payloads the agents logged for the job's FedAvg rounds (a check of ↑)."""
        cs = costs[m, p]
        if m not in ("threshold", "keyholder") or not cs:
            return 0.0
        n = sum(len(c.rounds) for c in cs) * AGENCIES
        return sum(r["bytes"] for c in cs for r in c.log) / n

    out = [
        "Wall time per FedAvg round, median (minimum) over "
        f"{args.reps} × {args.rounds} rounds, and ratio of medians to SecAgg+:\n"
    ]
    rows = []
    for p in sizes:
        sa = med("secagg+", p, wall)
        row = [f"{p:,}"]
        for m in MODES:
            row.append(f"{fmt_s(med(m, p, wall))} ({fmt_s(low(m, p, wall))})")
        row += [ratio2(med(m, p, wall), sa) for m in ("threshold", "keyholder", "plain")]
        rows.append(row)
    out.append(
        markdown(
            ["parameters", *(MODE_LABELS[m] for m in MODES)]
            + [f"{MODE_LABELS[m]} / SecAgg+" for m in ("threshold", "keyholder", "plain")],
            rows,
        )
    )
    out.append(
        "\nPer-agency critical path: CPU seconds of the slowest agency per round (fedcity: "
        "its agent process and children, from /proc, between round completions, without the "
        "nice-19 thread that refills the randomness pool while the agent waits — that "
        "thread's CPU in the round is the next column; Flower: a client's CPU over the "
        "round's four messages, timed in a mod around `secaggplus_mod` and training), median "
        "(minimum); server CPU per round (fedcity coordinator; Flower's simulation process "
        "without its Ray workers); the whole measured system's CPU per round (fedcity: "
        "coordinator and agents; Flower: the simulation process with Ray and its workers — "
        "divided by 2 cores, a floor for the round's wall time here); cores used during the "
        "round:\n"
    )
    rows = []
    for p in sizes:
        sa = med("secagg+", p, wall)
        for m in MODES:
            rows.append(
                [
                    f"{p:,}",
                    MODE_LABELS[m],
                    f"{fmt_s(med(m, p, crit))} ({fmt_s(low(m, p, crit))})",
                    ratio2(med(m, p, crit), sa),
                    fmt_s(med(m, p, lambda r: max(r.background))),
                    fmt_s(med(m, p, lambda r: r.critical_all)),
                    fmt_s(med(m, p, lambda r: r.server_cpu)),
                    fmt_s(med(m, p, lambda r: r.own * r.wall)),
                    f"{med(m, p, lambda r: r.own):.2f} / {med(m, p, lambda r: r.ours):.2f} / "
                    f"{med(m, p, lambda r: max(0.0, r.busy - r.ours)):.2f}",
                ]
            )
    out.append(
        markdown(
            [
                "parameters",
                "mode",
                "slowest agency CPU per round",
                "÷ SecAgg+ round (wall)",
                "pool refill thread, most of any agency",
                "slowest agency with the refill thread",
                "server CPU per round",
                "whole system's CPU per round",
                "cores: measured system / whole benchmark / other processes",
            ],
            rows,
        )
    )
    out.append(
        "\nBytes per agency per round, both directions (fedcity: on the wire through a TCP "
        "proxy per agent — TLS records, HTTP/2 frames, heartbeats included, decryptors' "
        "traffic averaged over all agencies; Flower: serialized `Message` protobufs through "
        "the Grid, `message_to_proto(m).ByteSize()`, no transport — the simulation has no "
        "wire), median:\n"
    )
    rows = []
    for p in sizes:
        sa = med("secagg+", p, total)
        for m in MODES:
            rows.append(
                [
                    f"{p:,}",
                    MODE_LABELS[m],
                    fmt_b(med(m, p, lambda r: r.up)),
                    fmt_b(med(m, p, lambda r: r.down)),
                    fmt_b(med(m, p, total)),
                    ratio2(med(m, p, total), sa),
                    fmt_b(payload_up(m, p)),
                ]
            )
    out.append(
        markdown(
            [
                "parameters",
                "mode",
                "↑ up",
                "↓ down",
                "total",
                "÷ SecAgg+",
                "fedcity ↑ payloads (task logs: uploads + decryptions), per agency per round",
            ],
            rows,
        )
    )

    checks: list[tuple[str, float, float]] = []
    small, large = min(sizes), max(sizes)
    for label, m, p, limit in (
        ("key holder round", "keyholder", large, 1.0),
        ("key holder round", "keyholder", small, 0.3),
        ("threshold round", "threshold", small, 1.0),
        ("threshold round", "threshold", large, 3.0),
    ):
        checks.append(
            (f"{label}, {p:,} parameters", med(m, p, wall) / med("secagg+", p, wall), limit)
        )
    for p in (small, large):
        for m in ("threshold", "keyholder"):
            checks.append(
                (
                    f"{MODE_LABELS[m]}: slowest agency CPU ÷ SecAgg+ round, {p:,} parameters",
                    med(m, p, crit) / med("secagg+", p, wall),
                    1.0,
                )
            )
    for p in (small, large):
        for m in ("threshold", "keyholder"):
            checks.append(
                (
                    f"{MODE_LABELS[m]}: bytes per agency ÷ SecAgg+'s, {p:,} parameters",
                    med(m, p, total) / med("secagg+", p, total),
                    1.0,
                )
            )
    out.append("\nTargets of issue 13 (ratios of medians in this run):\n")
    out.append(
        markdown(
            ["target", "measured", "limit", "met"],
            [
                [name, f"{v:.2f}×", f"≤ {lim:g}×", "yes" if v <= lim else "**no**"]
                for name, v, lim in checks
            ],
        )
    )
    out.append("\nEffective fedcity settings (read from the run, not set by this script):\n")
    keys = sorted({k for s in settings.values() for k in s}, key=lambda k: k)
    cols = list(settings)
    out.append(
        markdown(
            ["setting", *(f"{m} {p:,}" for m, p in cols)],
            [[k, *(settings[c].get(k, "—") for c in cols)] for k in keys],
        )
    )
    out.append(
        "\n"
        + "; ".join(f"{k}: {v}" for k, v in libs.items())
        + ". Agents' CPU while the machine settled after each job (idle work such as "
        "refilling a randomness pool, not in any round above), median over jobs, all agents: "
        + ", ".join(f"{m} {fmt_s(float(np.median(v)))}" for m, v in idle.items() if v)
        + "."
    )
    if ops:
        out.append(
            f"\nPer-operation costs in this run (driver process, one core, "
            f"{int(ops['ciphertexts timed'])} ciphertexts): "
            + ", ".join(
                f"{k.replace('/ct', 'per ciphertext').replace('/vector', 'per vector')} "
                f"{v * 1000:.2f} ms"
                for k, v in ops.items()
                if k != "ciphertexts timed"
            )
            + "."
        )
    stages = {}
    for p in sizes:
        for m in ("threshold", "keyholder"):
            secs = [c.record.get("seconds") or {} for c in costs[m, p]]
            keys_s = sorted({k for s in secs for k in s})
            stages[m, p] = {k: float(np.median([s.get(k, 0.0) for s in secs])) for k in keys_s}
            log = [r for c in costs[m, p] for r in c.log]
            for action in ("contribute", "partial_decrypt"):
                took = [r["seconds"] for r in log if r["action"] == action]
                if took:
                    stages[m, p][f"agent {action} (wall, task log)"] = float(np.median(took))
    out.append(
        "\nStages of the first FedAvg round of each job (round record: agency stages at the "
        "slowest agency, coordinator stages) and the agents' task-log times (wall, on shared "
        "cores), medians:\n"
    )
    out.append(
        markdown(
            ["parameters", "mode", "stages"],
            [
                [
                    f"{p:,}",
                    MODE_LABELS[m],
                    ", ".join(f"{k} {fmt_s(v)}" for k, v in stages[m, p].items()),
                ]
                for (m, p) in stages
            ],
        )
    )
    out.append("\nFinal pooled training log loss (median over repetitions) and load per mode:\n")
    rows = []
    for p in sizes:
        for m in MODES:
            cs = costs[m, p]
            losses = [c.loss for c in cs if c.loss is not None]
            rows.append(
                [
                    f"{p:,}",
                    MODE_LABELS[m],
                    f"{np.median(losses):.4f}" if losses else "—",
                    ", ".join(fmt_s(r.wall) for r in rounds(m, p)),
                    ", ".join(f"{c.load[0]:.2f}→{c.load[1]:.2f}" for c in cs),
                ]
            )
    out.append(
        markdown(
            ["parameters", "mode", "log loss", "every round", "1-min load average per job"],
            rows,
        )
    )
    return "\n".join(out)


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


def workspace(
    stack: contextlib.ExitStack[Any], args: argparse.Namespace, prefix: str
) -> tuple[Path, list[str], dict[str, Path], Any]:
    """The run's work folder (``--keep`` or a temporary one), agency names, CSV files, spec."""
    from fedcity.data.dataset import FeatureSpec

    if args.keep is not None:
        work = args.keep.resolve()
        work.mkdir(parents=True, exist_ok=True)
    else:
        work = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix=prefix)))
    print(f"machine: {machine()}\nwork folder: {work}", flush=True)
    names = [f"agency-{i + 1:02d}" for i in range(AGENCIES)]
    spec = FeatureSpec(
        numeric=tuple(f"x{j:02d}" for j in range(FEATURES)), categorical={}, label="y"
    )
    csv = {}
    for name, frame in zip(names, wide_frames(AGENCIES, args.rows, FEATURES), strict=True):
        csv[name] = work / "data" / f"{name}.csv"
        csv[name].parent.mkdir(parents=True, exist_ok=True)
        frame.to_csv(csv[name], index=False)
    return work, names, csv, spec


def flower_inputs(
    csv: dict[str, Path], names: list[str], spec: Any, sizes: dict[int, int], hidden: int
) -> tuple[list[Any], list[Any], dict[int, Any]]:
    """Labels, design matrices and initial weights per size for the Flower side.

    The preprocessing fedcity releases (plaintext, in process) standardises Flower's rows, so
    both sides train on the same numbers from the same start.
    """
    from sklearn.neural_network import MLPClassifier

    from fedcity.data.dataset import AgencyDataset
    from fedcity.learn.design import design_matrix
    from fedcity.learn.fedavg import FederatedAveraging

    datasets = [AgencyDataset.from_path(csv[n], spec, agency=n) for n in names]
    _, result = run_inprocess(datasets, hidden, 1)
    pre = result.preprocessing_
    ys = [d.y() for d in datasets]
    xs = [design_matrix(pre, d) for d in datasets]
    inits = {
        p: FederatedAveraging(
            MLPClassifier(hidden_layer_sizes=(h,)), pre, classes=[0, 1], seed=0
        ).parameters()
        for p, h in sizes.items()
    }
    return ys, xs, inits


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
    p.add_argument(
        "--secagg",
        action="store_true",
        help="issue 13: fedcity threshold and key holder against Flower SecAgg+ and plain "
        "Flower in the simulation engine, interleaved repetitions",
    )
    p.add_argument("--reps", type=int, default=4, help="--secagg: interleaved repetitions")
    p.add_argument(
        "--hidden-units",
        type=int,
        nargs="+",
        default=list(HIDDEN.values()),
        help="--secagg: hidden units of the MLPs (default 20 196: 1,021 and 9,997 parameters)",
    )
    p.add_argument(
        "--settle",
        type=float,
        default=30.0,
        metavar="S",
        help="--secagg: before each job wait up to S seconds for the machine to go quiet",
    )
    p.add_argument("--json", type=Path, help="--secagg: also write every measured round here")
    # internal: the Flower processes
    p.add_argument(
        "--role", choices=("flower-server", "flower-client", "flower-sim"), help=argparse.SUPPRESS
    )
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
    if args.role == "flower-sim":
        return flower_sim(args)
    os.environ.update(FLWR_ENV)
    command = "python benchmarks/bench_network.py " + shlex.join(
        list(argv) if argv is not None else sys.argv[1:]
    )
    if args.secagg:
        return run_secagg(args, command)
    harness = load_harness()
    from sklearn.neural_network import MLPClassifier

    from fedcity.data.dataset import AgencyDataset
    from fedcity.learn.design import design_matrix
    from fedcity.learn.fedavg import FederatedAveraging
    from fedcity.net.ceremony import deal_federation

    with contextlib.ExitStack() as stack:
        work, names, csv, spec = workspace(stack, args, "bench-net-")
        t0 = time.perf_counter()
        files = deal_federation(work / "federation", names, THRESHOLD, key_bits=args.key_bits)
        took = time.perf_counter() - t0
        print(f"ceremony: {args.key_bits}-bit {THRESHOLD}-of-{AGENCIES} key in {took:.1f} s")
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
