#!/usr/bin/env python
"""Sealing an update with and without precomputed randomness (issue 13 item 2).

What an agency does per contribution — ``encrypt_vector`` of a ``d``-value vector plus the
wire form (``serde.encrypted_vector_to_bytes``) — measured three ways in one run, repetitions
interleaved (cold, warm, warm with openings, cold, ...), medians and minima printed:

- **cold**: no pool, every ciphertext draws its own fixed-base power (today's path);
- **warm**: a :class:`~fedcity.crypto.pool.RandomnessPool` filled beforehand (as an agent does
  while idle between rounds) — one multiplication per ciphertext;
- **warm + openings**: the same via ``encrypt_vector_with_openings`` (kept for range audits).

The ratio ``warm ÷ cold`` is the target figure; the refill (the idle-time work that moves off
the critical path) is timed too, per pair. The load other processes put on the machine during
the run is printed beside the figures.

Examples
--------
    python benchmarks/bench_pool.py                      # 2048 bits, 9,997 values, 40 and 26 bits
    python benchmarks/bench_pool.py --bits 1024 --repeats 3 --precision-bits 40
"""

from __future__ import annotations

import argparse
import os
import shlex
import statistics
import sys
import time
from collections.abc import Callable, Sequence

import gmpy2
import numpy as np
from _common import CpuMonitor, describe_machine, markdown

from fedcity.crypto import PackingSpec, encrypt_vector, encrypt_vector_with_openings
from fedcity.crypto.keys import PublicKey, generate_keypair
from fedcity.crypto.pool import RandomnessPool
from fedcity.crypto.serde import encrypted_vector_to_bytes

MONITOR = CpuMonitor()


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--bits", type=int, default=2048, help="key size (default 2048)")
    p.add_argument("--values", type=int, default=9_997, help="vector length (default 9,997)")
    p.add_argument(
        "--precision-bits",
        type=int,
        nargs="+",
        default=[40, 26],
        help="packing precisions to measure (default: 40, the old FedAvg default, and 26, "
        "SecAgg+'s step at FedAvg's clip of 64)",
    )
    p.add_argument("--summands", type=int, default=10, help="max_summands (default 10)")
    p.add_argument("--repeats", type=int, default=5, help="interleaved repetitions (default 5)")
    p.add_argument("--wait-idle", type=float, default=0.0, help="wait up to S s for a quiet box")
    args = p.parse_args(argv)
    if args.bits < 512 or args.values < 1 or args.repeats < 1 or args.summands < 1:
        p.error("--bits >= 512, --values, --repeats and --summands >= 1")
    return args


def timed(fn: Callable[[], object]) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def measure(
    pk: PublicKey, x: np.ndarray, spec: PackingSpec, repeats: int
) -> tuple[dict[str, float], dict[str, float], int]:
    """Medians and minima (seconds) of cold, warm and opened sealing and of a refill per pair."""
    k = spec.n_ciphertexts(len(x))
    pool = RandomnessPool(pk, k)
    samples: dict[str, list[float]] = {"cold": [], "warm": [], "opened": [], "refill": []}

    def cold() -> None:
        encrypted_vector_to_bytes(encrypt_vector(pk, x, spec))

    def warm() -> None:
        encrypted_vector_to_bytes(encrypt_vector(pk, x, spec, randomness=pool))

    def opened() -> None:
        vec, openings = encrypt_vector_with_openings(pk, x, spec, randomness=pool)
        encrypted_vector_to_bytes(vec)
        openings.clear()

    for _ in range(repeats):
        samples["cold"].append(timed(cold))
        samples["refill"].append(timed(pool.refill) / k)
        samples["warm"].append(timed(warm))
        pool.refill()
        samples["opened"].append(timed(opened))
        if pool.fresh or len(pool):
            raise RuntimeError("a warm run did not take exactly the pooled randomness")
    med = {name: statistics.median(v) for name, v in samples.items()}
    low = {name: min(v) for name, v in samples.items()}
    return med, low, pool.entry_bytes


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    print("command: python " + shlex.join(["benchmarks/bench_pool.py", *sys.argv[1:]]))
    machine = describe_machine({"gmpy2": gmpy2.version(), "numpy": np.__version__})
    print("machine: " + ", ".join(f"{k}={v}" for k, v in machine.items()))
    if args.wait_idle > 0:
        load = MONITOR.wait_idle(args.wait_idle)
        print(f"waited for a quiet machine: other processes used {load or 0:.2f} cores")
    pk, _ = generate_keypair(args.bits)
    pk.table  # noqa: B018  (build the fixed-base table outside the measurements)
    x = np.random.default_rng(0).normal(scale=0.5, size=args.values)
    rows = []
    mark = MONITOR.snapshot()
    for precision in args.precision_bits:
        spec = PackingSpec(
            clip=1.0, precision_bits=precision, max_summands=args.summands, n_length=args.bits
        )
        k = spec.n_ciphertexts(args.values)
        med, low, entry_bytes = measure(pk, x, spec, args.repeats)
        rows.append(
            [
                f"{precision}-bit, {args.values:,} values, {k} ciphertexts",
                f"{med['cold'] * 1e3:.1f} ms (min {low['cold'] * 1e3:.1f})",
                f"{med['warm'] * 1e3:.2f} ms (min {low['warm'] * 1e3:.2f})",
                f"{med['opened'] * 1e3:.2f} ms",
                f"{med['warm'] / med['cold']:.4f}",
                f"{med['refill'] * 1e3:.3f} ms",
                f"{entry_bytes * k / 1024:.0f} KiB",
            ]
        )
    load = MONITOR.since(mark)
    print()
    print(
        markdown(
            [
                f"seal ({args.bits}-bit key)",
                "cold (no pool)",
                "warm pool",
                "warm + openings",
                "warm ÷ cold",
                "refill per pair (idle)",
                "pool memory",
            ],
            rows,
        )
    )
    print()
    print(
        f"medians of {args.repeats} interleaved repetitions; other processes used "
        f"{'n/a' if load is None else f'{load:.2f}'} of {os.cpu_count()} cores meanwhile"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
