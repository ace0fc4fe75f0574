#!/usr/bin/env python
"""Threshold decryption per operation, and what decryption groups change per agency.

Workload: the aggregate of a 9,997-parameter FedAvg round (9,998 values with the overflow
slot, 40-bit precision, 10 summands: ``k`` ciphertexts at 2048 bits), a 3-of-10 key, 10
signed contributions. Measured once each in this one process (``--repeats`` medians):

- **partial** decryption of the whole aggregate without proof (``k`` exponentiations by
  ``2Δ s_i``), the **proof** added to it later (:func:`prove_partial_decryption`), its
  **verification**, and the **combination** of ``t`` partials (``raw_combine(check=True)``);
- the decryptor's **product check** (its aggregate against the 10 contributions'
  ciphertexts) for the whole aggregate and for one part;
- one **part** (``k/g`` ciphertexts, ``g = ⌊(10-1)/3⌋ = 3`` groups, one holder in reserve)
  partially decrypted and proven;
- one exponentiation by the share exponent (``|nm| + |2Δ|`` bits) vs one by an ``|nm|``-bit
  exponent: the most a shorter exponent could save (``Δ`` moved to the combiner).

It prints the per-decryptor critical path (check + partial + proof), today (every decryptor
decrypts all ``k``) and with groups (each decrypts its part), and the coordinator's work
(verify every partial's proof, combine), with ratios against today's figure of the same run.
On this 2-core machine the groups do not shorten the wall time of a round whose agencies share
the two cores (the ``t·k`` exponentiations are the same in total); they shorten each agency's
critical path when agencies have their own machines.

Examples
--------
    python benchmarks/bench_decryption.py                 # 2048-bit, about 1 minute
    python benchmarks/bench_decryption.py --quick         # 1024-bit, 2,000 values (smoke)
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

from fedcity.core.aggregation import PaillierScheme
from fedcity.crypto import PackingSpec, deal_threshold_key, encrypt_vector
from fedcity.crypto.threshold import (
    partial_decrypt,
    prove_partial_decryption,
    raw_combine,
    split_parts,
    vector_part,
    verify_partial_decryption,
)


def _median(fn: Callable[[], object], repeats: int) -> float:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--bits", type=int, default=2048)
    parser.add_argument("--values", type=int, default=9_998)
    parser.add_argument("--agencies", type=int, default=10)
    parser.add_argument("--threshold", type=int, default=3)
    parser.add_argument("--repeats", type=int, default=1)
    parser.add_argument("--quick", action="store_true", help="1024-bit, 2,000 values")
    args = parser.parse_args(argv)
    if args.quick:
        args.bits, args.values = 1024, 2_000
    monitor = CpuMonitor()
    before = monitor.snapshot()
    ell, t = args.agencies, args.threshold
    tpk, shares = deal_threshold_key(args.bits, threshold=t, parties=ell)
    pk = tpk.public_key
    spec = PackingSpec(clip=1.0, precision_bits=40, max_summands=ell, n_length=args.bits)
    rng = np.random.default_rng(0)
    contributions = [encrypt_vector(pk, rng.uniform(-1, 1, args.values), spec) for _ in range(ell)]
    scheme = PaillierScheme(tpk)
    aggregate = scheme.add(contributions)
    k = len(aggregate.ciphertexts)
    groups = max(1, (ell - 1) // t)  # as the coordinator plans: one holder in reserve
    start, stop = split_parts(k, groups)[0]
    part = vector_part(aggregate, start, stop)
    share = shares[0]
    r = args.repeats

    bare: list[object] = []
    partial_s = _median(lambda: bare.append(partial_decrypt(share, aggregate, prove=False)), r)
    pd = partial_decrypt(share, aggregate, prove=False)
    proven = prove_partial_decryption(share, aggregate, pd)
    prove_s = _median(lambda: prove_partial_decryption(share, aggregate, pd), r)
    verify_s = _median(lambda: verify_partial_decryption(tpk, aggregate, proven), r)
    chosen = {s.index: partial_decrypt(s, aggregate, prove=False).partials for s in shares[:t]}
    combine_s = _median(lambda: raw_combine(tpk, chosen, check=True), r)

    def product(lo: int, hi: int) -> None:
        total = scheme.add([vector_part(c, lo, hi) for c in contributions])
        assert total.ciphertexts == vector_part(aggregate, lo, hi).ciphertexts

    check_s = _median(lambda: product(0, k), r)
    check_part_s = _median(lambda: product(start, stop), r)
    part_pd = partial_decrypt(share, part, prove=False)
    part_partial_s = _median(lambda: partial_decrypt(share, part, prove=False), r)
    part_prove_s = _median(lambda: prove_partial_decryption(share, part, part_pd), r)
    part_verify_s = _median(
        lambda: verify_partial_decryption(
            tpk, part, prove_partial_decryption(share, part, part_pd)
        ),
        r,
    )
    c = aggregate.ciphertexts[0]
    nm_bits = int(share._exponent.bit_length()) - int((2 * tpk.delta).bit_length()) + 1
    short = share._exponent >> (int(share._exponent.bit_length()) - nm_bits)  # as dense
    reps = 40
    exp_full = _median(
        lambda: [gmpy2.powmod(c, share._exponent, pk.nsquare) for _ in range(reps)], r
    )
    exp_short = _median(lambda: [gmpy2.powmod(c, short, pk.nsquare) for _ in range(reps)], r)
    load = monitor.since(before)

    today = check_s + partial_s + prove_s
    grouped = check_part_s + part_partial_s + part_prove_s
    coord_today = t * verify_s + combine_s
    coord_groups = groups * t * part_verify_s + combine_s
    rows = [
        ["partial decryption, whole aggregate, no proof", f"{partial_s:.3f}", f"{k}"],
        ["  per ciphertext (ms)", f"{partial_s / k * 1e3:.2f}", ""],
        [
            "proof added later (fold + 2 exponentiations)",
            f"{prove_s:.3f}",
            f"{prove_s / partial_s:.3f}×",
        ],
        [
            "proof verification (coordinator, per partial)",
            f"{verify_s:.3f}",
            f"{verify_s / partial_s:.3f}×",
        ],
        [
            f"combination of t={t} (with the exactness check)",
            f"{combine_s:.3f}",
            f"{combine_s / partial_s:.3f}×",
        ],
        [
            "decryptor's product check, whole aggregate",
            f"{check_s:.3f}",
            f"{check_s / partial_s:.3f}×",
        ],
        [
            f"decryptor's product check, part {start}..{stop - 1}",
            f"{check_part_s:.3f}",
            f"{check_part_s / check_s:.3f}× whole",
        ],
        [
            f"partial decryption of the part ({stop - start} ct)",
            f"{part_partial_s:.3f}",
            f"{part_partial_s / partial_s:.3f}× whole",
        ],
        ["proof of the part", f"{part_prove_s:.3f}", f"{part_prove_s / prove_s:.3f}× whole"],
        [
            f"{reps} exponentiations: share exponent ({share._exponent.bit_length()} bits) vs "
            f"{nm_bits} bits",
            f"{exp_full:.3f} / {exp_short:.3f}",
            f"{exp_short / exp_full:.4f}×",
        ],
        [
            "**per-decryptor critical path, today** (check + partial + proof)",
            f"{today:.3f}",
            "1.00×",
        ],
        [
            f"**with {groups} groups of {t}** (part check + partial + proof)",
            f"{grouped:.3f}",
            f"{grouped / today:.3f}×",
        ],
        ["coordinator: verify t proofs + combine, today", f"{coord_today:.3f}", "1.00×"],
        [
            f"coordinator: verify {groups * t} part proofs + combine",
            f"{coord_groups:.3f}",
            f"{coord_groups / coord_today:.3f}×",
        ],
    ]
    given = sys.argv[1:] if argv is None else argv
    print(f"$ python benchmarks/bench_decryption.py {shlex.join(given)}")
    print(
        f"{args.bits}-bit key, {t}-of-{ell}, {args.values} values at 40-bit precision "
        f"({spec.slots_per_ciphertext} per ciphertext, k = {k}); medians of {r}; other "
        f"processes used {load if load is None else round(load, 2)} cores on average"
    )
    print(", ".join(f"{k}: {v}" for k, v in describe_machine({"gmpy2": gmpy2.version()}).items()))
    print(markdown(["operation", "seconds", "ratio / size"], rows))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
