"""fedcity's secure aggregation in Flower's simulation engine, side by side with SecAgg+.

For each model (logistic regression, small MLP) and agency count, three variants run in the
same engine (Flower 1.41 simulation, Ray, ``run_simulation``), each in a fresh process:

- ``plain``   — Flower's Message-API ``FedAvg``, no protection (the baseline);
- ``secagg+`` — Flower's ``SecAggPlusWorkflow`` + ``secaggplus_mod`` (legacy strategy API,
  ``num_shares = max(3, ceil(2·log2 n))``, reconstruction threshold 2/3 of it);
- ``fedcity`` — :class:`fedcity.flower.SecureFedAvg` + :data:`fedcity_mod`: packed DJN
  Paillier, 2048-bit threshold key held by a decryption committee of ``m = 5`` agencies
  with threshold ``t = 3``; each member decrypts 3/5 of the sum (every ciphertext by 3);
  precision from the default accuracy (20 bits at clip 1); randomness precomputed while a
  worker is idle;
- ``fedcity-signed`` (only when asked for with ``--variants``) — the same with signed
  updates: every member also receives every signed update and checks the sum is their
  product before decrypting.

Every agency trains one local epoch of gradient descent on 64 synthetic samples. Reported:
wall time per round (median of the warm rounds 2..R; round 1 also pays Ray's start, key
loading and the fixed-base tables), peak resident memory of the whole process tree (server,
Ray and its workers, sampled every 0.2 s), and bytes per agency (serialized Flower messages
through the Grid, both directions, divided by the agency count). The machine's 1-minute load
average during each run is printed too: on a shared machine, compare variants of one run.

    .venv/bin/python benchmarks/bench_flower.py                      # 10 and 100 agencies
    .venv/bin/python benchmarks/bench_flower.py --agencies 10 100 1000
"""

from __future__ import annotations

import argparse
import itertools
import json
import math
import os
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import numpy as np

REPO = Path(__file__).resolve().parents[1]
MODELS = {"logistic": (100, 0), "mlp": (100, 96)}  # (features, hidden units; 0 = none)
SAMPLES = 64
COMMITTEE, THRESHOLD = 5, 3
KEY_BITS = 2048


# -- the learning task -----------------------------------------------------------------------
def init_model(model: str) -> dict[str, np.ndarray]:
    d, h = MODELS[model]
    rng = np.random.default_rng(0)
    if h == 0:
        return {"w": np.zeros(d), "b": np.zeros(1)}
    return {
        "w1": rng.normal(0, 1 / math.sqrt(d), (d, h)),
        "b1": np.zeros(h),
        "w2": rng.normal(0, 1 / math.sqrt(h), (h, 1)),
        "b2": np.zeros(1),
    }


def n_params(model: str) -> int:
    return sum(a.size for a in init_model(model).values())


def local_data(pid: int, model: str) -> tuple[np.ndarray, np.ndarray]:
    d, _ = MODELS[model]
    rng = np.random.default_rng(10_000 + pid)
    x = rng.normal(size=(SAMPLES, d))
    beta = np.random.default_rng(1).normal(size=d) / math.sqrt(d)
    y = (x @ beta + 0.3 * rng.normal(size=SAMPLES) > 0).astype(np.float64)
    return x, y


def local_train(params: dict[str, np.ndarray], pid: int, model: str) -> dict[str, np.ndarray]:
    x, y = local_data(pid, model)
    lr = 0.1
    p = {k: v.astype(np.float64).copy() for k, v in params.items()}
    if "w" in p:
        z = 1 / (1 + np.exp(-(x @ p["w"] + p["b"][0])))
        p["w"] -= lr * x.T @ (z - y) / len(y)
        p["b"] -= lr * np.array([np.mean(z - y)])
        return p
    hid = np.tanh(x @ p["w1"] + p["b1"])
    z = 1 / (1 + np.exp(-(hid @ p["w2"][:, 0] + p["b2"][0])))
    g = (z - y) / len(y)
    gh = np.outer(g, p["w2"][:, 0]) * (1 - hid**2)
    p["w2"] -= lr * (hid.T @ g)[:, None]
    p["b2"] -= lr * np.array([g.sum()])
    p["w1"] -= lr * x.T @ gh
    p["b1"] -= lr * gh.sum(axis=0)
    return p


# -- one run, in its own process -------------------------------------------------------------
def _grid_proxy(grid: Any, counter: dict[str, int]) -> Any:
    from flwr.common.serde import message_to_proto
    from flwr.serverapp import Grid

    def size(msgs: Iterable[Any]) -> int:
        return sum(message_to_proto(m).ByteSize() for m in msgs)

    class CountingGrid(Grid):  # type: ignore[misc]
        def set_run(self, run: Any) -> None:
            grid.set_run(run)

        @property
        def run(self) -> Any:
            return grid.run

        def create_message(self, *a: Any, **k: Any) -> Any:
            return grid.create_message(*a, **k)

        def get_node_ids(self) -> Iterable[int]:
            return grid.get_node_ids()

        def get_nodes(self) -> Iterable[Any]:
            return grid.get_nodes()

        def push_messages(self, messages: Iterable[Any]) -> Iterable[str]:
            messages = list(messages)
            counter["down"] += size(messages)
            return grid.push_messages(messages)

        def pull_messages(self, message_ids: Iterable[str]) -> Iterable[Any]:
            replies = list(grid.pull_messages(message_ids))
            counter["up"] += size(replies)
            return replies

        def send_and_receive(self, messages: Iterable[Any], *, timeout: Any = None) -> Any:
            messages = list(messages)
            counter["down"] += size(messages)
            replies = list(grid.send_and_receive(messages, timeout=timeout))
            counter["up"] += size(replies)
            return replies

    return CountingGrid()


def run_one(variant: str, model: str, agencies: int, rounds: int, key_dir: str) -> dict[str, Any]:
    from flwr.app import Array, ArrayRecord, Context, Message, MetricRecord, RecordDict
    from flwr.clientapp import ClientApp
    from flwr.serverapp import ServerApp
    from flwr.simulation import run_simulation

    init = init_model(model)
    names = list(init)
    starts: list[float] = []
    counter = {"up": 0, "down": 0}
    out: dict[str, Any] = {}
    server = ServerApp()

    if variant == "secagg+":
        from flwr.client import NumPyClient
        from flwr.client.mod import secaggplus_mod
        from flwr.common import ndarrays_to_parameters
        from flwr.server import LegacyContext, ServerConfig
        from flwr.server.strategy import FedAvg as LegacyFedAvg
        from flwr.server.workflow import DefaultWorkflow, SecAggPlusWorkflow

        class Client(NumPyClient):  # type: ignore[misc]
            def __init__(self, pid: int) -> None:
                self.pid = pid

            def fit(self, parameters: list[np.ndarray], config: Any) -> Any:
                new = local_train(dict(zip(names, parameters, strict=True)), self.pid, model)
                return [new[k] for k in names], SAMPLES, {}

        def client_fn(context: Context) -> Any:
            return Client(int(context.node_config["partition-id"])).to_client()

        client = ClientApp(client_fn=client_fn, mods=[secaggplus_mod])

        class TimedLegacy(LegacyFedAvg):  # type: ignore[misc]
            def configure_fit(self, *a: Any, **k: Any) -> Any:
                starts.append(time.perf_counter())
                return super().configure_fit(*a, **k)

        # SecAgg+ lays nodes on a ring with (shares - 1) / 2 neighbours on each side: odd
        shares = max(3, math.ceil(2 * math.log2(agencies))) | 1
        shares = min(shares, agencies)

        @server.main()  # type: ignore[misc]
        def main_secagg(grid: Any, context: Context) -> None:
            strategy = TimedLegacy(
                fraction_fit=1.0,
                min_fit_clients=agencies,
                min_available_clients=agencies,
                fraction_evaluate=0.0,
                initial_parameters=ndarrays_to_parameters([init[k] for k in names]),
            )
            ctx = LegacyContext(
                context=context, config=ServerConfig(num_rounds=rounds), strategy=strategy
            )
            workflow = DefaultWorkflow(
                fit_workflow=SecAggPlusWorkflow(
                    num_shares=shares, reconstruction_threshold=math.ceil(2 * shares / 3)
                )
            )
            workflow(_grid_proxy(grid, counter), ctx)
            starts.append(time.perf_counter())
            out["shares"] = shares
            from flwr.server.workflow.constant import MAIN_PARAMS_RECORD

            final = ctx.state.array_records[MAIN_PARAMS_RECORD].to_numpy_ndarrays()
            out["final"] = {k: a.tolist() for k, a in zip(names, final, strict=True)}

    else:
        from flwr.serverapp.strategy import FedAvg

        mods: list[Any] = []
        if variant in ("fedcity", "fedcity-signed"):
            from fedcity.flower import SecureAggregationMod

            mods = [SecureAggregationMod(key_dir=key_dir)]
        client = ClientApp(mods=mods)

        @client.train()  # type: ignore[misc]
        def train(msg: Message, ctx: Context) -> Message:
            pid = int(ctx.node_config["partition-id"])
            params = {k: v.numpy() for k, v in msg.content["arrays"].items()}
            new = local_train(params, pid, model)
            record = ArrayRecord({k: Array(v) for k, v in new.items()})
            metrics = MetricRecord({"num-examples": SAMPLES})
            return Message(RecordDict({"arrays": record, "metrics": metrics}), reply_to=msg)

        base: Any = FedAvg
        kwargs: dict[str, Any] = {}
        if variant in ("fedcity", "fedcity-signed"):
            from fedcity.flower import SecureFedAvg

            base = SecureFedAvg
            kwargs = {
                "max_weight": float(SAMPLES),
                "public_key": Path(key_dir) / "public.json",
                "signed": variant == "fedcity-signed",
            }

        class Timed(base):  # type: ignore[misc,valid-type]
            def configure_train(self, *a: Any) -> Any:
                starts.append(time.perf_counter())
                return super().configure_train(*a)

        @server.main()  # type: ignore[misc]
        def main_msg(grid: Any, context: Context) -> None:
            strategy = Timed(
                fraction_train=1.0,
                min_train_nodes=agencies,
                min_available_nodes=agencies,
                fraction_evaluate=0.0,
                **kwargs,
            )
            result = strategy.start(
                grid=_grid_proxy(grid, counter),
                initial_arrays=ArrayRecord({k: Array(v) for k, v in init.items()}),
                num_rounds=rounds,
                timeout=3600,
            )
            starts.append(time.perf_counter())
            out["final"] = {k: result.arrays[k].numpy().tolist() for k in result.arrays}
            if variant in ("fedcity", "fedcity-signed"):
                out["released"] = [r.released for r in strategy.rounds_]

    t0 = time.perf_counter()
    run_simulation(
        server_app=server,
        client_app=client,
        num_supernodes=agencies,
        backend_config={"client_resources": {"num_cpus": 1}},
    )
    total = time.perf_counter() - t0
    per_round = [b - a for a, b in itertools.pairwise(starts)]
    return {
        "variant": variant,
        "model": model,
        "params": n_params(model),
        "agencies": agencies,
        "rounds": rounds,
        "round_s": per_round,
        "total_s": total,
        "bytes_up": counter["up"],
        "bytes_down": counter["down"],
        **{k: v for k, v in out.items() if k != "final"},
        "final": out.get("final"),
    }


# -- the driver: one subprocess per run, peak memory of its process tree --------------------
def _tree_rss(root: int) -> int:
    children: dict[int, list[int]] = {}
    rss: dict[int, int] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as fh:
                fields = fh.read().rsplit(")", 1)[1].split()
            ppid = int(fields[1])
            rss[int(entry)] = int(fields[21]) * os.sysconf("SC_PAGE_SIZE")
        except (OSError, IndexError, ValueError):
            continue
        children.setdefault(ppid, []).append(int(entry))
    total, stack = 0, [root]
    while stack:
        pid = stack.pop()
        total += rss.get(pid, 0)
        stack.extend(children.get(pid, []))
    return total


def measure(cmd: list[str]) -> tuple[dict[str, Any], int]:
    with (
        tempfile.NamedTemporaryFile("r", suffix=".json") as res,
        tempfile.TemporaryFile("w+") as errors,  # a pipe could fill and stall the run
    ):
        proc = subprocess.Popen(
            [*cmd, "--result", res.name],
            stdout=subprocess.DEVNULL,
            stderr=errors,
            text=True,
        )
        peak = 0
        stop = threading.Event()

        def sample() -> None:
            nonlocal peak
            while not stop.is_set():
                peak = max(peak, _tree_rss(proc.pid))
                stop.wait(0.2)

        th = threading.Thread(target=sample, daemon=True)
        th.start()
        proc.wait()
        stop.set()
        th.join()
        if proc.returncode != 0:
            errors.seek(0)
            raise RuntimeError(f"{' '.join(cmd)} failed:\n{errors.read()[-3000:]}")
        return json.load(res), peak


def print_table(rows: list[dict[str, Any]]) -> None:
    """Print the Markdown table and each secure variant's distance to plain FedAvg."""
    print()
    print(
        "| model | agencies | variant | s/round (warm) | first round s | peak RSS MiB | "
        "KiB/agency/round (up+down) | KiB/agency/round up | × plain time | load |"
    )
    print("|---|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        plain = next(
            (
                p
                for p in rows
                if p["variant"] == "plain"
                and p["model"] == r["model"]
                and p["agencies"] == r["agencies"]
            ),
            None,
        )
        ratio = f"{r['warm_round_s'] / plain['warm_round_s']:.1f}" if plain else "–"
        per = r["agencies"] * r["rounds"] * 1024
        print(
            f"| {r['model']} ({r['params']}) | {r['agencies']} | {r['variant']} | "
            f"{r['warm_round_s']:.2f} | {r['round_s'][0]:.2f} | {r['peak_rss'] / 2**20:.0f} | "
            f"{(r['bytes_up'] + r['bytes_down']) / per:.1f} | "
            f"{r['bytes_up'] / per:.1f} | {ratio} | {r['load']:.1f} |"
        )
    for r in rows:  # each secure variant's model against plain FedAvg's (same data, rounds)
        if r["variant"] == "plain" or not r.get("final"):
            continue
        plain = next(
            (
                p
                for p in rows
                if p["variant"] == "plain"
                and p["model"] == r["model"]
                and p["agencies"] == r["agencies"]
                and p.get("final")
            ),
            None,
        )
        if plain:
            err = max(
                float(np.max(np.abs(np.asarray(r["final"][k]) - np.asarray(plain["final"][k]))))
                for k in r["final"]
            )
            print(
                f"# {r['model']} n={r['agencies']}: max |{r['variant']} - plain FedAvg| = {err:.2e}"
            )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--agencies", type=int, nargs="+", default=[10, 100])
    parser.add_argument("--models", nargs="+", default=list(MODELS), choices=list(MODELS))
    parser.add_argument("--variants", nargs="+", default=["plain", "secagg+", "fedcity"])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--one", nargs=3, metavar=("VARIANT", "MODEL", "AGENCIES"))
    parser.add_argument("--key-dir")
    parser.add_argument("--result")
    parser.add_argument("--json", help="write all results to this file")
    parser.add_argument("--table", nargs="+", help="print the table of saved --json files")
    parser.add_argument("--key-bits", type=int, default=KEY_BITS, help="(smoke tests only)")
    args = parser.parse_args()

    if args.table:
        print_table([r for f in args.table for r in json.loads(Path(f).read_text())])
        return
    if args.one:
        variant, model, n = args.one[0], args.one[1], int(args.one[2])
        res = run_one(variant, model, n, args.rounds, args.key_dir or "")
        Path(args.result).write_text(json.dumps(res))
        return

    from fedcity.flower import deal_flower_keys

    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for n in args.agencies:
            key_dirs = {}
            for signed in sorted({v == "fedcity-signed" for v in args.variants}):
                key_dir = key_dirs[signed] = Path(tmp) / f"keys-{n}-{int(signed)}"
                t0 = time.perf_counter()
                deal_flower_keys(
                    key_dir,
                    n,
                    threshold=THRESHOLD,
                    committee=min(COMMITTEE, n),
                    key_bits=args.key_bits,
                    signed=signed,
                )
                print(
                    f"# dealt a {args.key_bits}-bit {THRESHOLD}-of-{min(COMMITTEE, n)} key to {n} "
                    f"nodes in {time.perf_counter() - t0:.1f} s{' (signed)' if signed else ''}",
                    flush=True,
                )
            for model in args.models:
                for variant in args.variants:
                    cmd = [
                        sys.executable,
                        __file__,
                        "--one",
                        variant,
                        model,
                        str(n),
                        "--rounds",
                        str(args.rounds),
                        "--key-dir",
                        str(key_dirs[variant == "fedcity-signed"]),
                    ]
                    load0 = os.getloadavg()[0]
                    res, peak = measure(cmd)
                    res["peak_rss"] = peak
                    res["load"] = (load0 + os.getloadavg()[0]) / 2
                    warm = res["round_s"][1:] or res["round_s"]
                    res["warm_round_s"] = float(np.median(warm))
                    rows.append(res)
                    if args.json:  # after every run: a long run stopped early keeps its rows
                        Path(args.json).write_text(json.dumps(rows, indent=1))
                    per = n * res["rounds"] * 1024
                    print(
                        f"{model:8s} {res['params']:6d} params  n={n:5d}  {variant:8s} "
                        f"round {res['warm_round_s']:8.2f} s (first {res['round_s'][0]:7.2f} s)  "
                        f"peak {peak / 2**20:7.0f} MiB  "
                        f"{(res['bytes_up'] + res['bytes_down']) / per:9.1f} KiB/agency/round "
                        f"(up {res['bytes_up'] / per:8.1f})  load {res['load']:.1f}",
                        flush=True,
                    )
    print_table(rows)
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=1))


if __name__ == "__main__":
    main()
