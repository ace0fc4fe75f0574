#!/usr/bin/env python
"""Masked aggregation with a key-homomorphic PRF (prototype) vs today's packed threshold round.

Workload: 10 agencies, a 3-of-10 threshold Paillier key (``deal_threshold_key``, 2048 bits by
default), update vectors of 1,021 and 9,997 values (the two MLP sizes of
``bench_network.py``; here the vector is exactly that long). Measured in one run, in one
process, no worker pool, medians of ``--repeats`` (decryptions: ``--decrypt-repeats``):

- **today's packed round** (``encrypt_vector`` → product → ``partial_decrypt`` with proof →
  ``combine_partial_decryptions``), at the masked scheme's precision (16 bits, 10 summands)
  and at FedAvg's 40-bit default (clip 64) — the packed layout decides the ciphertext count;
- **lwr-masked** (:mod:`fedcity.core.masked`) with ``lwr-1024-q32-p24`` at 16 bits and
  ``lwr-2048-q32-p28`` at 20 bits: per agency the mask (quantization, SHAKE-256 expansion of
  ``A(x)`` and the ``uint32`` mat-vec, shown apart) and the encryption of the ``λ``-entry
  key — all of it computable before the update exists (``MaskingAgent.prepare``); "online"
  is what is left once it does (quantize and add; for the packed round, the whole encryption
  as measured here); per decryptor the product check of the key sum and its partial
  decryption; at the coordinator the sums, the combination of ``t`` verified partials and
  the unmasking (``F_K(x)`` plus decoding).

Ratios are masked / packed at the same precision (16 bits), measured in this run. The
"critical path" of an agency is its own mask and encryption (none of it precomputed), the
decryptor check and one partial decryption (a decryptor agency on its own machine);
"round CPU" adds every party's CPU seconds. A last table times SHAKE-256 (used), SHAKE-128
and AES-128-CTR producing the public matrix of the largest size: what a faster expander
would buy.

Examples
--------
    python benchmarks/bench_masked.py                 # 2048-bit key
    python benchmarks/bench_masked.py --quick         # 1024-bit smoke run
"""

from __future__ import annotations

import argparse
import shlex
import statistics
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from _common import CpuMonitor, describe_machine, markdown

from fedcity.core.masked import KeySumDecryptor, MaskedAggregator, MaskedSpec, MaskingAgent
from fedcity.crypto import (
    KeyShare,
    PackingSpec,
    ThresholdPublicKey,
    combine_partial_decryptions,
    deal_threshold_key,
    encrypt_vector,
    khprf,
    partial_decrypt,
)

AGENCIES, THRESHOLD = 10, 3
SIZES = (1021, 9997)
JOB = "bench-masked"
MONITOR = CpuMonitor()


def threshold_key(bits: int, key_dir: str | None) -> tuple[ThresholdPublicKey, list[KeyShare]]:
    """Deal a 3-of-10 key, or load the one saved in ``key_dir`` (dealing and saving it there
    first if the directory does not exist)."""
    if key_dir is not None and Path(key_dir).exists():
        tpk = ThresholdPublicKey.load(Path(key_dir) / "public.json")
        shares = [KeyShare.load(Path(key_dir) / f"share-{i}.json") for i in range(1, AGENCIES + 1)]
        print(f"key: {tpk!r} loaded from {key_dir}", flush=True)
        return tpk, shares
    t0 = time.perf_counter()
    tpk, shares = deal_threshold_key(bits, threshold=THRESHOLD, parties=AGENCIES)
    print(f"key: {bits}-bit 3-of-10 dealt in {time.perf_counter() - t0:.1f} s", flush=True)
    if key_dir is not None:
        Path(key_dir).mkdir(mode=0o700, parents=True)
        tpk.save(Path(key_dir) / "public.json")
        for s in shares:
            s.save(Path(key_dir) / f"share-{s.index}.json")
    return tpk, shares


def median_time(fn: Callable[[], Any], repeats: int) -> tuple[float, Any]:
    """Median wall seconds of ``repeats`` calls and the last result."""
    times, out = [], None
    for _ in range(repeats):
        t = time.perf_counter()
        out = fn()
        times.append(time.perf_counter() - t)
    return statistics.median(times), out


def packed_round(tpk: Any, shares: Any, spec: PackingSpec, d: int, args: Any) -> dict[str, Any]:
    rng = np.random.default_rng(1)
    updates = [rng.uniform(-1, 1, d) for _ in range(AGENCIES)]
    pk = tpk.public_key
    enc_t, _ = median_time(lambda: encrypt_vector(pk, updates[0], spec), args.repeats)
    vectors = [encrypt_vector(pk, u, spec) for u in updates]
    add_t, agg = median_time(lambda: sum(vectors), args.repeats)
    dec_t, _ = median_time(lambda: partial_decrypt(shares[0], agg), args.decrypt_repeats)
    partials = [partial_decrypt(s, agg) for s in shares[:THRESHOLD]]
    comb_t, total = median_time(
        lambda: combine_partial_decryptions(tpk, agg, partials), args.decrypt_repeats
    )
    err = float(np.abs(total - sum(np.clip(u, -spec.clip, spec.clip) for u in updates)).max())
    return {
        "agency": enc_t,
        "online": enc_t,
        "mask": 0.0,
        "expand": 0.0,
        "matvec": 0.0,
        "encrypt": enc_t,
        "check": 0.0,
        "ciphertexts": len(agg.ciphertexts),
        "partial": dec_t,
        "coord_add": add_t,
        "combine": comb_t,
        "unmask": 0.0,
        "bytes": vectors[0].nbytes,
        "max_error": err,
    }


def masked_round(tpk: Any, shares: Any, spec: MaskedSpec, d: int, args: Any) -> dict[str, Any]:
    params = spec.params
    rng = np.random.default_rng(1)
    updates = [rng.uniform(-1, 1, d) for _ in range(AGENCIES)]
    pk = tpk.public_key
    x = khprf.prf_input(JOB, 0)
    key = khprf.generate_key(params)

    def expand() -> None:
        for b, start in enumerate(range(0, d, khprf.BLOCK_ROWS)):
            khprf.expand_matrix(params, x, b, min(khprf.BLOCK_ROWS, d - start))

    blocks = [
        khprf.expand_matrix(params, x, b, min(khprf.BLOCK_ROWS, d - s))
        for b, s in enumerate(range(0, d, khprf.BLOCK_ROWS))
    ]
    shift = np.uint32(params.log_q - params.log_p)
    half = np.uint32(1 << (params.log_q - params.log_p - 1))

    def matvec() -> None:
        for a in blocks:
            (a @ key + half) >> shift

    def mask() -> Any:
        u = spec.quantizer.quantize(updates[0])
        f = khprf.evaluate(params, key, x, d)
        return ((u.astype(np.uint32) << np.uint32(spec.scale_bits)) + f) & np.uint32(params.p - 1)

    expand_t, _ = median_time(expand, args.repeats)
    matvec_t, _ = median_time(matvec, args.repeats)
    mask_t, _ = median_time(mask, args.repeats)
    enc_t, _ = median_time(
        lambda: khprf.encrypt_key(pk, params, key, spec.max_summands), args.repeats
    )
    online = []
    for r in range(args.repeats):  # mask() after prepare(): what depends on the update
        agent = MaskingAgent("agency-00", pk, spec)
        agent.prepare(job=JOB, round_index=r, length=d)
        t = time.perf_counter()
        agent.mask(updates[0], job=JOB, round_index=r)
        online.append(time.perf_counter() - t)
    contributions = [
        MaskingAgent(f"agency-{i + 1:02d}", pk, spec).mask(u, job=JOB, round_index=0)
        for i, u in enumerate(updates)
    ]

    def aggregate() -> Any:
        agg = MaskedAggregator(pk, spec, job=JOB, round_index=0, length=d)
        for c in contributions:
            agg.add(c)
        return agg, agg.key_aggregate()

    add_t, (agg, key_agg) = median_time(aggregate, args.repeats)

    def check_and_decrypt() -> Any:
        dec = KeySumDecryptor(shares[0], min_contributions=2)
        return dec.partial(contributions, key_agg, job=JOB, round_index=0)

    def check_only() -> Any:
        return sum(c.encrypted_key for c in contributions).ciphertexts == key_agg.ciphertexts

    check_t, _ = median_time(check_only, args.repeats)
    dec_t, _ = median_time(lambda: partial_decrypt(shares[0], key_agg), args.decrypt_repeats)
    check_and_decrypt()  # the decryptor path used below, run once for correctness
    partials = [
        KeySumDecryptor(s, min_contributions=2).partial(
            contributions, key_agg, job=JOB, round_index=0
        )
        for s in shares[:THRESHOLD]
    ]
    comb_t, key_sum = median_time(
        lambda: khprf.combine_key_sum(tpk, params, key_agg, partials), args.decrypt_repeats
    )
    unmask_t, total = median_time(lambda: agg.unmask(key_sum), args.repeats)
    err = float(np.abs(total - sum(np.clip(u, -spec.clip, spec.clip) for u in updates)).max())
    return {
        "agency": mask_t + enc_t,
        "online": statistics.median(online),
        "mask": mask_t,
        "expand": expand_t,
        "matvec": matvec_t,
        "encrypt": enc_t,
        "check": check_t,
        "ciphertexts": len(key_agg.ciphertexts),
        "partial": dec_t,
        "coord_add": add_t,
        "combine": comb_t,
        "unmask": unmask_t,
        "bytes": contributions[0].nbytes(spec),
        "max_error": err,
    }


def expanders(d: int, repeats: int) -> str:
    """Time to produce ``A(x)`` for ``d`` rows at ``λ = 1024`` with other expanders.

    Not used by the scheme (it uses SHAKE-256): what a faster public-matrix expander, such as
    FrodoKEM's SHAKE-128 or AES-128-CTR choices, would save per agency and at the coordinator.
    """
    import hashlib

    from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes

    n = 4 * d * khprf.LWR_1024.dimension

    def aes() -> bytes:
        enc = Cipher(algorithms.AES(bytes(16)), modes.CTR(bytes(16))).encryptor()
        return enc.update(bytes(n))

    rows = []
    for name, fn in [
        ("SHAKE-256 (used)", lambda: hashlib.shake_256(b"x").digest(n)),
        ("SHAKE-128", lambda: hashlib.shake_128(b"x").digest(n)),
        ("AES-128-CTR", aes),
    ]:
        t, _ = median_time(fn, repeats)
        rows.append([name, f"{n / 2**20:.0f}", ms(t), f"{n / t / 2**20:.0f}"])
    return f"public matrix A(x) for d={d:,}, λ=1024:\n\n" + markdown(
        ["expander", "MiB", "ms", "MiB/s"], rows
    )


def derived(r: dict[str, Any]) -> dict[str, float]:
    critical = r["agency"] + r["check"] + r["partial"]
    coordinator = r["coord_add"] + r["combine"] + r["unmask"]
    total = AGENCIES * r["agency"] + THRESHOLD * (r["check"] + r["partial"]) + coordinator
    return {"critical": critical, "coordinator": coordinator, "round_cpu": total}


def ms(v: float) -> str:
    return f"{1000 * v:.1f}" if v else "–"


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    p.add_argument("--key-bits", type=int, default=2048)
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--decrypt-repeats", type=int, default=3)
    p.add_argument("--quick", action="store_true", help="1024-bit key, fewer repeats")
    p.add_argument("--sizes", type=int, nargs="+", default=list(SIZES), help="vector lengths")
    p.add_argument(
        "--key-dir",
        help="load a 3-of-10 threshold key dealt earlier (public.json, share-1.json, ...) or, "
        "if the directory does not exist, deal one and save it there",
    )
    p.add_argument("--out", help="also write the markdown report to this file")
    args = p.parse_args(argv)
    sizes = tuple(args.sizes)
    if args.quick:
        args.key_bits, args.repeats, args.decrypt_repeats = 1024, 2, 1
    command = "python benchmarks/bench_masked.py " + shlex.join(
        list(argv) if argv is not None else sys.argv[1:]
    )
    machine = describe_machine({"numpy": np.__version__})
    print("machine:", machine, flush=True)
    tpk, shares = threshold_key(args.key_bits, args.key_dir)
    if tpk.public_key.n_length != args.key_bits:
        raise SystemExit(
            f"--key-dir holds a {tpk.public_key.n_length}-bit key, not {args.key_bits}"
        )
    start = MONITOR.snapshot()
    bits = args.key_bits
    schemes: list[tuple[str, Callable[[int], dict[str, Any]]]] = [
        (
            "packed, 16-bit",
            lambda d: packed_round(
                tpk, shares, PackingSpec(1.0, 16, AGENCIES, n_length=bits), d, args
            ),
        ),
        (
            "packed, 40-bit (FedAvg default)",
            lambda d: packed_round(
                tpk, shares, PackingSpec(64.0, 40, AGENCIES, n_length=bits), d, args
            ),
        ),
        (
            "lwr-masked λ=1024, 16-bit",
            lambda d: masked_round(
                tpk, shares, MaskedSpec(1.0, 16, AGENCIES, khprf.LWR_1024), d, args
            ),
        ),
        (
            "lwr-masked λ=2048, 20-bit",
            lambda d: masked_round(
                tpk, shares, MaskedSpec(1.0, 20, AGENCIES, khprf.LWR_2048), d, args
            ),
        ),
    ]
    for fn in (schemes[0][1], schemes[2][1]):  # warm code paths and fixed-base tables, untimed
        fn(64)
    results: dict[tuple[str, int], dict[str, Any]] = {}
    loads: dict[int, float | None] = {}
    for d in sizes:
        s0 = MONITOR.snapshot()
        for name, fn in schemes:
            print(f"== d={d:,}: {name} ...", flush=True)
            r = fn(d)
            r.update(derived(r))
            results[(name, d)] = r
        loads[d] = MONITOR.since(s0)
    lines = [
        f"command: `{command}`",
        f"machine: {machine}",
        "other processes' load during the run (cores): "
        + ", ".join(
            f"d={d:,}: {v:.2f}" if v is not None else f"d={d:,}: n/a" for d, v in loads.items()
        )
        + (f"; whole run {MONITOR.since(start):.2f}" if MONITOR.since(start) is not None else ""),
        "",
    ]
    headers = [
        "d",
        "scheme",
        "mask ms (expand / mat-vec)",
        "encrypt ms",
        "online ms",
        "ciphertexts decrypted",
        "decryptor check ms",
        "partial decryption ms",
        "coordinator ms (sum / combine / unmask)",
        "agency critical path ms",
        "round CPU s",
        "bytes / agency",
        "max |error|",
    ]
    rows = []
    for d in sizes:
        for name, _ in schemes:
            r = results[(name, d)]
            mask = f"{ms(r['mask'])} ({ms(r['expand'])} / {ms(r['matvec'])})" if r["mask"] else "–"
            rows.append(
                [
                    f"{d:,}",
                    name,
                    mask,
                    ms(r["encrypt"]),
                    ms(r["online"]),
                    str(r["ciphertexts"]),
                    ms(r["check"]),
                    ms(r["partial"]),
                    f"{ms(r['coord_add'])} / {ms(r['combine'])} / {ms(r['unmask'])}",
                    ms(r["critical"]),
                    f"{r['round_cpu']:.2f}",
                    f"{r['bytes']:,}",
                    f"{r['max_error']:.1e}",
                ]
            )
    lines.append(markdown(headers, rows))
    lines.append("")
    ratio_rows = []
    for d in sizes:
        m, b = results[("lwr-masked λ=1024, 16-bit", d)], results[("packed, 16-bit", d)]
        m2, b40 = (
            results[("lwr-masked λ=2048, 20-bit", d)],
            results[("packed, 40-bit (FedAvg default)", d)],
        )
        ratio_rows.append(
            [
                f"{d:,}",
                f"{m['agency'] / b['agency']:.2f}×",
                f"{m['ciphertexts'] / b['ciphertexts']:.2f}× "
                f"({m['ciphertexts']} / {b['ciphertexts']})",
                f"{m['partial'] / b['partial']:.2f}×",
                f"{m['coordinator'] / b['coordinator']:.2f}×",
                f"{m['critical'] / b['critical']:.2f}×",
                f"{m['round_cpu'] / b['round_cpu']:.2f}×",
                f"{m['bytes'] / b['bytes']:.2f}×",
                f"{m2['critical'] / b40['critical']:.2f}×",
            ]
        )
    lines.append(
        markdown(
            [
                "d",
                "agency (mask+encrypt)",
                "ciphertexts",
                "partial decryption",
                "coordinator",
                "critical path",
                "round CPU",
                "bytes / agency",
                "critical path, λ=2048 20-bit vs packed 40-bit",
            ],
            ratio_rows,
        )
    )
    lines.append("")
    lines.append(expanders(max(sizes), args.repeats))
    report = "\n".join(lines)
    print()
    print(report)
    if args.out:
        with open(args.out, "w") as fh:
            fh.write(report + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
