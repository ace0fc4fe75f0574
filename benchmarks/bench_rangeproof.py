#!/usr/bin/env python
"""What identifying an overflowing agency costs: one slot range proof, made and verified.

Workload: one packed FedAvg ciphertext of a contribution under a threshold key (2048 bits by
default, 3-of-10 like ``bench_integrity.py``), 10 summands, 22-bit and 40-bit precision
(``PackingSpec(precision_bits=b, max_summands=10)``): every slot of ciphertext 0 carries a value,
so the proof covers ``slots × precision`` bits. Measured in this one run, one process:

- **prove**: :func:`fedcity.crypto.rangeproof.prove_slot_ranges` (what each contributor does
  when an aggregate decrypts out of range);
- **verify**: :func:`~fedcity.crypto.rangeproof.verify_slot_ranges` of that proof (batched);
- **reject**: verifying the same proof with one response bit flipped (the batch fails, then
  the bisection that names the slot and bit);
- baselines: one **partial decryption** of the same ciphertext, raw (one exponentiation,
  ``KeyShare.raw_partial_decrypt``: what a decryptor spends per ciphertext every round) and
  with its proof (:func:`fedcity.crypto.partial_decrypt` of the one-ciphertext vector), and one
  **encryption** (``PublicKey.raw_encrypt``, fixed-base DJN).

Every figure is the median of ``--repeats`` runs; ratios are against the baselines of this
run. The proof size is exact (every proof for a key and layout has the same size).

Examples
--------
    python benchmarks/bench_rangeproof.py                 # 2048-bit, ~2 min
    python benchmarks/bench_rangeproof.py --quick         # 1024-bit smoke run
"""

from __future__ import annotations

import argparse
import shlex
import statistics
import sys
import time
from collections.abc import Callable

import gmpy2
import numpy as np
from _common import CpuMonitor, describe_machine, markdown

from fedcity.crypto import (
    PackingSpec,
    RangeProofError,
    deal_threshold_key,
    encrypt_vector_with_openings,
    partial_decrypt,
)
from fedcity.crypto.rangeproof import (
    SlotLayout,
    max_proof_bytes,
    prove_slot_ranges,
    verify_slot_ranges,
)

SUMMANDS, THRESHOLD, PARTIES = 10, 3, 10
MONITOR = CpuMonitor()


def median_seconds(fn: Callable[[], object], repeats: int) -> float:
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return statistics.median(times)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[1])
    parser.add_argument("--bits", type=int, default=2048, help="modulus size (default 2048)")
    parser.add_argument("--precisions", type=int, nargs="+", default=[22, 40])
    parser.add_argument("--repeats", type=int, default=3, help="runs per figure (median)")
    parser.add_argument("--quick", action="store_true", help="1024-bit key, one repeat")
    parser.add_argument(
        "--wait-idle",
        type=float,
        default=0.0,
        metavar="SECONDS",
        help="before each precision, wait up to SECONDS for other processes to go quiet",
    )
    args = parser.parse_args(argv)
    if args.quick:
        args.bits, args.repeats = 1024, 1
    print("command: python benchmarks/bench_rangeproof.py " + shlex.join(sys.argv[1:]))
    print(
        "machine: "
        + ", ".join(
            f"{k}={v}"
            for k, v in describe_machine(
                {"gmpy2": gmpy2.version(), "numpy": np.__version__}
            ).items()
        )
    )
    start = MONITOR.snapshot()
    t = time.perf_counter()
    tpk, shares = deal_threshold_key(args.bits, threshold=THRESHOLD, parties=PARTIES)
    print(
        f"dealt a {args.bits}-bit {THRESHOLD}-of-{PARTIES} key in {time.perf_counter() - t:.1f} s"
    )
    pk = tpk.public_key
    rng = np.random.default_rng(0)
    rows: list[list[str]] = []
    ratios: list[list[str]] = []
    context = b"bench|job=0123456789ab|round=7|agency=A|ciphertext=0"
    for precision in args.precisions:
        waited = MONITOR.wait_idle(args.wait_idle)
        if waited is not None:
            print(f"precision {precision}: other processes used {waited:.2f} cores at the start")
        spec = PackingSpec(
            clip=64.0, precision_bits=precision, max_summands=SUMMANDS, n_length=args.bits
        )
        s = spec.slots_per_ciphertext
        x = rng.uniform(-64, 64, s)
        vector, openings = encrypt_vector_with_openings(pk, x, spec)
        c, m, a = vector.ciphertexts[0], openings.plaintext(0), openings.exponent(0)
        layout = SlotLayout.for_contribution(spec, s, 0)
        # warm-up (fixed-base tables, first-call effects), not timed
        warm = prove_slot_ranges(pk, c, m, a, layout, context)
        verify_slot_ranges(pk, c, warm, layout, context)
        partial_decrypt(shares[0], vector)

        proofs: list[bytes] = []
        t_prove = median_seconds(
            lambda: proofs.append(prove_slot_ranges(pk, c, m, a, layout, context)),  # noqa: B023
            args.repeats,
        )
        proof = proofs[-1]
        t_verify = median_seconds(
            lambda: verify_slot_ranges(pk, c, proof, layout, context),  # noqa: B023
            args.repeats,
        )
        at = len(proof) - 40  # inside the link response: only the last equation fails
        bad = proof[:at] + bytes([proof[at] ^ 1]) + proof[at + 1 :]

        def reject() -> None:
            try:
                verify_slot_ranges(pk, c, bad, layout, context)  # noqa: B023
            except RangeProofError:
                return
            raise AssertionError("a flipped proof verified")

        t_reject = median_seconds(reject, args.repeats)
        t_partial = median_seconds(
            lambda: partial_decrypt(shares[0], vector),  # noqa: B023
            args.repeats,
        )
        t_raw = median_seconds(lambda: shares[0].raw_partial_decrypt(c), args.repeats)  # noqa: B023
        t_enc = median_seconds(lambda: pk.raw_encrypt(m), max(args.repeats, 20))  # noqa: B023
        size = max_proof_bytes(pk, layout)
        assert size == len(proof)
        bits = layout.n_values * layout.bits_per_slot
        rows.append(
            [
                f"{precision}-bit, {s} slots × {layout.bits_per_slot} bits = {bits}",
                f"{size / 1e6:.2f} MB ({size / bits:,.0f} B/bit)",
                f"{t_prove:.2f} s",
                f"{t_verify:.3f} s",
                f"{t_reject:.3f} s",
                f"{t_raw * 1e3:.1f} ms",
                f"{t_partial * 1e3:.1f} ms",
                f"{t_enc * 1e3:.2f} ms",
            ]
        )
        ratios.append(
            [
                f"{precision}-bit",
                f"{t_prove / t_raw:,.0f}× / {t_verify / t_raw:,.0f}× / {t_reject / t_raw:,.0f}×",
                f"{t_prove / t_partial:,.0f}× / {t_verify / t_partial:.1f}× / "
                f"{t_reject / t_partial:.1f}×",
                f"{t_prove / t_enc:,.0f}× / {t_verify / t_enc:,.0f}× / {t_reject / t_enc:,.0f}×",
            ]
        )
        print(f"precision {precision}: done", flush=True)
    load = MONITOR.since(start)
    print()
    print(
        markdown(
            [
                f"{args.bits}-bit key, one ciphertext",
                "proof size",
                "prove",
                "verify",
                "reject (one flipped bit)",
                "partial decryption, raw",
                "partial decryption with proof",
                "encryption",
            ],
            rows,
        )
    )
    print()
    print(
        markdown(
            [
                "prove / verify / reject",
                "÷ raw partial decryption",
                "÷ partial decryption with proof",
                "÷ encryption",
            ],
            ratios,
        )
    )
    print()
    print(
        f"median of {args.repeats} runs (encryption: of {max(args.repeats, 20)}); "
        f"other processes used {load if load is None else round(load, 2)} cores on average"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
