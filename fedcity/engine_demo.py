"""An in-process demonstration of the Paillier engine alone (no network, no learning).

Several simulated agencies encrypt vectors under a 3-of-5 threshold key (2048 bits), a
coordinator object adds the ciphertexts without being able to read them, three agencies
partially decrypt the sum, and the aggregate is printed next to the plaintext numpy sum with
the time each step took.

Run with ``python -m fedcity.engine_demo [--agencies 5 --threshold 3 --values 20000]``.
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Iterator
from contextlib import contextmanager

import numpy as np
from rich.console import Console
from rich.table import Table

from fedcity.crypto import (
    PackingSpec,
    PartialDecryption,
    WorkerPool,
    combine_partial_decryptions,
    deal_threshold_key,
    encrypt_vector,
    partial_decrypt,
)
from fedcity.crypto.serde import encrypted_vector_from_bytes, encrypted_vector_to_bytes


@contextmanager
def _stage(timings: dict[str, float], stage: str) -> Iterator[None]:
    start = time.perf_counter()
    try:
        yield
    finally:
        timings[stage] = timings.get(stage, 0.0) + time.perf_counter() - start


def main(argv: list[str] | None = None) -> int:
    """Run the demonstration; returns the process exit code."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--agencies", type=int, default=5)
    parser.add_argument("--threshold", type=int, default=3)
    parser.add_argument("--values", type=int, default=20_000, help="length of each vector")
    parser.add_argument("--bits", type=int, default=2048, help="key size (>= 2048 for real use)")
    parser.add_argument("--workers", type=int, default=2, help="encryption worker processes")
    args = parser.parse_args(argv)
    if not 1 <= args.threshold <= args.agencies:
        parser.error("--threshold must lie between 1 and --agencies")
    if args.values < 1:
        parser.error("--values must be positive")

    console = Console()
    timings: dict[str, float] = {}
    console.print(
        f"[bold]fedcity demo[/]: {args.agencies} agencies, {args.threshold}-of-{args.agencies} "
        f"threshold Paillier, {args.bits}-bit key, vectors of {args.values:,} values"
    )
    with _stage(timings, "deal threshold key"):
        tpk, shares = deal_threshold_key(args.bits, threshold=args.threshold, parties=args.agencies)
    pk = tpk.public_key
    spec = PackingSpec(
        clip=4.0, precision_bits=20, max_summands=max(args.agencies, 2), n_length=args.bits
    )
    rng = np.random.default_rng(2026)
    # Each agency's private update: e.g. a gradient of a demand model, rms ~ 0.5.
    updates = [rng.normal(0.0, 0.5, args.values) for _ in range(args.agencies)]

    received: list[bytes] = []
    with WorkerPool(args.workers) as pool:
        with _stage(timings, "build encryption tables"):
            pool.warm_up(pk)
        for x in updates:
            with _stage(timings, "encrypt (all agencies)"):
                enc = encrypt_vector(pk, x, spec, pool=pool)
            received.append(encrypted_vector_to_bytes(enc))  # what goes on the wire

        # The coordinator holds only the public key and the bytes it received.
        with _stage(timings, "coordinator: add ciphertexts"):
            vectors = [encrypted_vector_from_bytes(b, pk) for b in received]
            total = sum(vectors[1:], vectors[0])
        partials: list[PartialDecryption] = []
        for share in shares[: args.threshold]:
            with _stage(timings, f"partial decryption ({args.threshold} agencies)"):
                partials.append(partial_decrypt(share, total, pool=pool))
    with _stage(timings, "combine + verify proofs"):
        released = combine_partial_decryptions(tpk, total, partials)
    with _stage(timings, "plaintext numpy sum"):
        plain = np.sum(updates, axis=0)

    table = Table(title="aggregate (first values) vs plaintext sum")
    table.add_column("index", justify="right")
    table.add_column("decrypted aggregate", justify="right")
    table.add_column("plaintext sum", justify="right")
    for i in range(min(6, args.values)):
        table.add_row(str(i), f"{released[i]: .6f}", f"{plain[i]: .6f}")
    console.print(table)
    err = float(np.abs(released - plain).max())
    bound = args.agencies * spec.step / 2
    console.print(f"max |aggregate - plaintext| = {err:.2e} (quantization bound {bound:.2e})")
    wire = sum(len(b) for b in received) / args.agencies
    console.print(
        f"bytes per agency on the wire: {wire:,.0f} ({wire / args.values:.2f} per value; "
        f"float32 would be 4)"
    )
    times = Table(title="time per step")
    times.add_column("step")
    times.add_column("seconds", justify="right")
    for stage, seconds in timings.items():
        times.add_row(stage, f"{seconds:.3f}")
    console.print(times)
    if err > bound * 1.0001:
        console.print("[red]aggregate outside the quantization bound[/]")
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
