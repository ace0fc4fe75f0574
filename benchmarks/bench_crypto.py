#!/usr/bin/env python
"""Benchmark of fedcity's Paillier engine against python-paillier (and CKKS, if installed).

Every figure is measured in this run, side by side with its baseline, and printed as a ratio
``fedcity ÷ baseline``. Repeated measurements are interleaved (A, B, C, A, B, C, ...) and the
median is reported, so that a burst of load elsewhere on the machine hits the figure and its
baseline alike. For each section the CPU time used by *other* processes during the section is
read from ``/proc`` and reported, since a 2-core machine shared with other work shows it.

Sections, at each key size:

1. key generation (``generate_keypair``, ``deal_threshold_key``) vs ``phe`` key generation;
2. encryption throughput, packed ``encrypt_vector`` (one process and a ``WorkerPool``) vs
   ``phe`` ``PaillierPublicKey.encrypt(float)`` per value;
3. per-ciphertext encryption time vs a bare fixed-base exponentiation and ``gmpy2.powmod``;
4. ciphertext bytes per value on the wire vs float32 and ``phe``;
5. decryption with the private key vs ``phe`` ``decrypt`` per value;
6. threshold decryption (t = 3 of n = 5): partial decryptions with proofs and combination;
7. aggregation of K vectors end to end vs the plaintext numpy sum;
8. optional: CKKS (TenSEAL) encryption throughput and bytes per value.

Examples
--------
    python benchmarks/bench_crypto.py --quick                 # 1024-bit smoke run, ~1 min
    python benchmarks/bench_crypto.py --bits 2048 3072 --out /tmp/crypto.md
    python benchmarks/bench_crypto.py --bits 2048 --skip-aggregation --skip-ckks
"""

from __future__ import annotations

import argparse
import contextlib
import gc
import itertools
import json
import os
import secrets
import shlex
import statistics
import sys
import textwrap
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import gmpy2
import numpy as np
import phe
from _common import IDLE_BELOW, CpuMonitor, describe_machine

from fedcity.crypto import (
    PackingSpec,
    WorkerPool,
    combine_partial_decryptions,
    deal_threshold_key,
    decrypt_vector,
    encrypt_vector,
    generate_keypair,
    partial_decrypt,
    raw_combine,
    verify_partial_decryption,
)
from fedcity.crypto.fixedbase import FixedBaseTable
from fedcity.crypto.serde import encrypted_vector_to_bytes

FLOAT32_BYTES = 4
THRESHOLD_T, THRESHOLD_N = 3, 5
MIN_TARGET_BITS = 2048
QUIET_ROUND_BELOW = 0.3  # with --wait-idle, rounds with more foreign load are repeated
ROUND_FACTOR = 4  # ... up to this many times the requested number of rounds


# -- results ---------------------------------------------------------------------------------
@dataclass
class Row:
    """One figure, its baseline and the ratio ``value / baseline``."""

    bits: int
    section: str
    what: str
    value: float | None
    unit: str
    baseline_name: str = ""
    baseline: float | None = None
    target: str = ""
    met: bool | None = None
    note: str = ""

    @property
    def ratio(self) -> float | None:
        if self.value is None or not self.baseline:
            return None
        return self.value / self.baseline


@dataclass
class Report:
    """All rows of a run, plus the load seen on the machine per section."""

    rows: list[Row] = field(default_factory=list)
    loads: dict[tuple[int, str], float | None] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)

    def add(self, row: Row) -> Row:
        self.rows.append(row)
        print("  " + format_row_text(row), flush=True)
        return row


def target_check(ratio: float | None, target: str) -> bool | None:
    """Evaluate a target of the form ``>= X`` or ``<= X`` against a ratio."""
    if ratio is None or not target:
        return None
    op, num = target.split()
    limit = float(num.rstrip("×"))
    return ratio >= limit if op == ">=" else ratio <= limit


# -- formatting ------------------------------------------------------------------------------
def fmt(value: float | None, unit: str = "") -> str:
    """Format a figure with 3-4 significant digits and a readable unit."""
    if value is None:
        return "—"
    if unit == "s":
        if value < 1e-3:
            return f"{value * 1e6:.3g} µs"
        if value < 1:
            return f"{value * 1e3:.3g} ms"
        return f"{value:.3g} s"
    if unit == "values/s":
        return f"{value:,.0f} values/s" if value >= 100 else f"{value:.3g} values/s"
    if unit == "B/value":
        return f"{value:.4g} B/value"
    if unit:
        return f"{value:.3g} {unit}"
    return f"{value:.3g}"


def fmt_ratio(ratio: float | None) -> str:
    """Format ``value / baseline``."""
    if ratio is None:
        return "—"
    if ratio >= 100:
        return f"{ratio:,.0f}×"
    if ratio >= 10:
        return f"{ratio:.1f}×"
    if ratio >= 0.01:
        return f"{ratio:.3g}×"
    return f"{ratio:.2e}×"


def fmt_met(row: Row) -> str:
    """Say whether the row's target was met."""
    if row.met is None:
        return ""
    return "yes" if row.met else "**NO**"


def format_row_text(row: Row) -> str:
    """One row as a line of text for the console."""
    parts = [f"{row.what}: {fmt(row.value, row.unit)}"]
    if row.baseline_name:
        parts.append(f"vs {row.baseline_name} {fmt(row.baseline, row.unit)}")
        parts.append(f"= {fmt_ratio(row.ratio)}")
    if row.target:
        parts.append(f"[target {row.target}: {'met' if row.met else 'MISSED'}]")
    if row.note:
        parts.append(f"({row.note})")
    return " ".join(parts)


def markdown_table(report: Report) -> str:
    """The whole report as markdown, one table per key size."""
    out: list[str] = []
    for bits in sorted({r.bits for r in report.rows}):
        out.append(f"#### {bits}-bit modulus\n")
        out.append(
            "| Section | Measurement | fedcity | Baseline (same run) | Ratio | Target | Met |"
        )
        out.append("|---|---|---|---|---|---|---|")
        for r in (r for r in report.rows if r.bits == bits):
            what = r.what + (f" — {r.note}" if r.note else "")
            base = f"{r.baseline_name}: {fmt(r.baseline, r.unit)}" if r.baseline_name else ""
            out.append(
                f"| {r.section} | {what} | {fmt(r.value, r.unit)} | {base} | "
                f"{fmt_ratio(r.ratio)} | {r.target} | {fmt_met(r)} |"
            )
        loads = [
            f"{sec}: {load:.2f}"
            for (b, sec), load in report.loads.items()
            if b == bits and load is not None
        ]
        if loads:
            out.append(
                "\nCores used by other processes on the machine while this run was timing, "
                "per section: " + "; ".join(loads) + "."
            )
        out.append("")
    if report.notes:
        out.append("Notes:\n")
        out.extend(f"- {n}" for n in report.notes)
        out.append("")
    return "\n".join(out)


def text_table(report: Report) -> str:
    """The whole report as a fixed-width console table (long labels wrap)."""
    lines: list[str] = []
    header = ("measurement", "fedcity", "baseline (same run)", "ratio", "target")
    limits = (56, 18, 44, 9, 16)
    for bits in sorted({r.bits for r in report.rows}):
        cells = [header] + [
            (
                f"{r.section}: {r.what}",
                fmt(r.value, r.unit),
                f"{r.baseline_name}: {fmt(r.baseline, r.unit)}" if r.baseline_name else "",
                fmt_ratio(r.ratio),
                f"{r.target} {'ok' if r.met else 'MISSED'}" if r.target else "",
            )
            for r in report.rows
            if r.bits == bits
        ]
        widths = [min(max(len(c[i]) for c in cells), limit) for i, limit in enumerate(limits)]
        lines.append(f"\n=== {bits}-bit modulus ===")
        for c in cells:
            wrapped = [textwrap.wrap(s, w) or [""] for s, w in zip(c, widths, strict=True)]
            for k in range(max(len(w) for w in wrapped)):
                parts = [col[k] if k < len(col) else "" for col in wrapped]
                lines.append(
                    "  ".join(p.ljust(w) for p, w in zip(parts, widths, strict=True)).rstrip()
                )
    return "\n".join(lines)


# -- measurement helpers ---------------------------------------------------------------------
def timed(fn: Callable[[], object], *, meter: bool = True) -> float:
    """Wall-clock seconds of one call."""
    with Stopwatch(meter=meter) as sw:
        fn()
    return sw.seconds


class Stopwatch:
    """``with Stopwatch() as sw: ...`` then ``sw.seconds`` (wall clock, after a gc pass).

    With ``meter=True`` the CPU that other processes used meanwhile is added to the
    section's load figure.
    """

    seconds: float = 0.0
    load: float | None = None  # cores other processes used meanwhile (if metered)

    def __init__(self, *, meter: bool = True) -> None:
        self.meter = meter

    def __enter__(self) -> Stopwatch:
        gc.collect()
        self._snap = QUIET.snapshot() if self.meter else None
        self._t0 = time.perf_counter()
        return self

    def __exit__(self, *exc: object) -> None:
        self.seconds = time.perf_counter() - self._t0
        if self.meter:
            self.load = QUIET.account(self._snap)


@dataclass
class Timings:
    """Samples of interleaved rounds: wall seconds, and CPU seconds per sample as
    ``(this process, all worker processes, busiest worker)``."""

    wall: dict[str, list[float]]
    cpu: dict[str, list[tuple[float, float, float]]]

    def median_wall(self, name: str) -> float:
        return statistics.median(self.wall[name])

    def median_cpu(self, name: str) -> float:
        """Median CPU seconds of this process plus its workers."""
        return statistics.median(m + w for m, w, _ in self.cpu[name])

    def median_cpu_parts(self, name: str) -> tuple[float, float, float]:
        """Medians of (this process, all workers, busiest worker) CPU seconds."""
        return (
            statistics.median(c[0] for c in self.cpu[name]),
            statistics.median(c[1] for c in self.cpu[name]),
            statistics.median(c[2] for c in self.cpu[name]),
        )


def timed_cpu(fn: Callable[[], object]) -> tuple[float, tuple[float, float, float]]:
    """Wall seconds of one call and the CPU seconds it used here and in worker processes."""
    monitor = QUIET.monitor
    kids0 = monitor.descendants() if monitor else {}
    cpu0 = time.process_time()
    wall = timed(fn, meter=False)
    cpu1 = time.process_time()
    kids1 = monitor.descendants() if monitor else {}
    deltas = [kids1[p] - kids0.get(p, 0.0) for p in kids1]
    return wall, (cpu1 - cpu0, sum(deltas), max(deltas, default=0.0))


def interleaved(
    fns: dict[str, Callable[[], object]],
    repeats: int,
    warmup: Callable[[], object] | None = None,
) -> Timings:
    """Time each function in round-robin rounds; return the samples of ``repeats`` rounds.

    Round ``r`` starts with function ``r mod len(fns)`` (the order rotates, so no function
    is always the first after a pause, with cold caches), after an untimed ``warmup()``.

    Without ``--wait-idle`` this is exactly ``repeats`` rounds. With it, each round first
    waits for other processes to go quiet, and a round during which they used
    ``QUIET_ROUND_BELOW`` cores or more on average is set aside and repeated, up to
    ``ROUND_FACTOR × repeats`` rounds; if too few quiet rounds come, the least busy of the
    set-aside rounds fill up.
    """
    strict = QUIET.max_wait > 0
    limit = ROUND_FACTOR * repeats if strict else repeats
    out = Timings({k: [] for k in fns}, {k: [] for k in fns})
    Round = dict[str, tuple[float, tuple[float, float, float]]]
    busy: list[tuple[float, float, Round]] = []  # (load, wall, samples)
    n_quiet = 0

    def keep(round_samples: Round) -> None:
        for name, (wall, cpu) in round_samples.items():
            out.wall[name].append(wall)
            out.cpu[name].append(cpu)

    names = list(fns)
    while n_quiet < repeats and n_quiet + len(busy) < limit:
        QUIET.wait()
        if warmup is not None:
            warmup()
        r = (n_quiet + len(busy)) % len(names)
        start = QUIET.snapshot()
        round_samples = {name: timed_cpu(fns[name]) for name in names[r:] + names[:r]}
        load = QUIET.account(start, commit=False)
        if not strict or load is None or load < QUIET_ROUND_BELOW:
            n_quiet += 1
            QUIET.commit(start, load)
            keep(round_samples)
        else:
            busy.append((load, time.monotonic() - start[0] if start else 0.0, round_samples))
    QUIET.rounds_kept += n_quiet
    QUIET.rounds_total += n_quiet + len(busy)
    if n_quiet < repeats:  # too few quiet rounds: fill up with the least busy ones
        QUIET.short_sets += 1
        for load, wall, round_samples in sorted(busy, key=lambda b: b[0])[: repeats - n_quiet]:
            QUIET.busy_used.append(load)
            QUIET.measured_wall += wall
            QUIET.foreign_cpu += load * wall
            keep(round_samples)
    return out


def medians(samples: dict[str, list[float]]) -> dict[str, float]:
    """Median of each list of samples."""
    return {k: statistics.median(v) for k, v in samples.items()}


class Quiet:
    """Waits for other processes to go quiet (``--wait-idle``) and meters their load."""

    def __init__(self, monitor: CpuMonitor | None = None, max_wait: float = 0.0) -> None:
        self.monitor = monitor
        self.max_wait = max_wait
        self.waited = 0.0  # seconds spent waiting for quiet
        self.measured_wall = 0.0  # seconds inside kept timed regions
        self.foreign_cpu = 0.0  # CPU seconds other processes used meanwhile
        self.rounds_kept = 0  # interleaved rounds used for figures
        self.rounds_total = 0  # interleaved rounds run
        self.short_sets = 0  # measurements that had to use busy rounds
        self.busy_used: list[float] = []  # loads of the busy rounds used

    def snapshot(self) -> tuple[float, float, float] | None:
        """A CPU snapshot, or None without a monitor."""
        return None if self.monitor is None else self.monitor.snapshot()

    def account(
        self, start: tuple[float, float, float] | None, *, commit: bool = True
    ) -> float | None:
        """Return the other processes' load since ``start``; add it to the totals if ``commit``."""
        if self.monitor is None or start is None:
            return None
        end = self.monitor.snapshot()
        load = self.monitor.foreign_cores(start, end)
        if commit and end is not None and load is not None:
            self.measured_wall += end[0] - start[0]
            self.foreign_cpu += load * (end[0] - start[0])
        return load

    def commit(self, start: tuple[float, float, float] | None, load: float | None) -> None:
        """Add a load measured by ``account(..., commit=False)`` to the totals."""
        if start is not None and load is not None:
            wall = time.monotonic() - start[0]
            self.measured_wall += wall
            self.foreign_cpu += load * wall

    def wait(self) -> None:
        """Wait up to ``max_wait`` seconds for other processes to use < IDLE_BELOW cores."""
        if self.monitor is None or self.max_wait <= 0:
            return
        t0 = time.monotonic()
        self.monitor.wait_idle(self.max_wait)
        self.waited += time.monotonic() - t0


QUIET = Quiet()  # configured by run(); also meters the load during every timed sample


@contextlib.contextmanager
def section(report: Report, bits: int, name: str) -> Iterator[None]:
    """Print a header; record the load other processes put on the machine while we timed."""
    print(f"\n[{bits} bits] {name}", flush=True)
    t0 = time.perf_counter()
    waited0, wall0, cpu0 = QUIET.waited, QUIET.measured_wall, QUIET.foreign_cpu
    kept0, total0 = QUIET.rounds_kept, QUIET.rounds_total
    yield
    wall = QUIET.measured_wall - wall0
    load = (QUIET.foreign_cpu - cpu0) / wall if wall > 0 else None
    report.loads[(bits, name)] = load
    extra = "" if load is None else f"; other processes used {load:.2f} cores while timing"
    kept, total = QUIET.rounds_kept - kept0, QUIET.rounds_total - total0
    extra += f"; {kept} of {total} rounds kept" if total > kept else ""
    wait = QUIET.waited - waited0
    extra += f"; {wait:.0f} s spent waiting for quiet" if wait >= 1 else ""
    print(f"  ({name}: {time.perf_counter() - t0:.1f} s{extra})", flush=True)


@contextlib.contextmanager
def quiet_native_output() -> Iterator[None]:
    """Silence C++ code that writes to file descriptors 1 and 2 (TenSEAL's size warning)."""
    sys.stdout.flush()
    sys.stderr.flush()
    saved = os.dup(1), os.dup(2)
    devnull = os.open(os.devnull, os.O_WRONLY)
    try:
        os.dup2(devnull, 1)
        os.dup2(devnull, 2)
        yield
    finally:
        os.dup2(saved[0], 1)
        os.dup2(saved[1], 2)
        for fd in (*saved, devnull):
            os.close(fd)


# -- configuration ---------------------------------------------------------------------------
@dataclass
class Sizes:
    """Problem sizes of a run."""

    vector: int
    phe_values: int
    repeats: int
    keygen_repeats: int
    deal_repeats: int
    per_ct: int
    decrypt_values: int
    threshold_values: int
    agg_k: list[int]
    agg_d: list[int]


def sizes_from_args(args: argparse.Namespace) -> Sizes:
    """Defaults for a full or ``--quick`` run, overridden by explicit options."""
    if args.quick:
        base = Sizes(5_000, 20, 2, 2, 1, 20, 2_000, 1_000, [3, 10], [1_000, 5_000])
    else:
        base = Sizes(100_000, 200, 3, 5, 3, 100, 20_000, 10_000, [10, 100], [10_000, 100_000])
    for name in ("vector", "phe_values", "repeats", "decrypt_values", "threshold_values"):
        given = getattr(args, name)
        if given is not None:
            setattr(base, name, given)
    if args.agg_k:
        base.agg_k = args.agg_k
    if args.agg_d:
        base.agg_d = args.agg_d
    return base


def specs_for(bits: int) -> dict[str, PackingSpec]:
    """The two packing layouts measured: the default and ``b = 16, K = 100``."""
    return {
        "default": PackingSpec(n_length=bits),
        "b16/K100": PackingSpec(n_length=bits, precision_bits=16, max_summands=100),
    }


def spec_label(name: str, spec: PackingSpec) -> str:
    """``PackingSpec(...)`` with its slot layout, for the table."""
    args = (
        ""
        if name == "default"
        else f"precision_bits={spec.precision_bits}, max_summands={spec.max_summands}"
    )
    return (
        f"PackingSpec({args}) [b={spec.precision_bits}, K={spec.max_summands}: "
        f"{spec.slots_per_ciphertext} slots of {spec.slot_bits} bits]"
    )


# -- sections --------------------------------------------------------------------------------
@dataclass
class Context:
    """State shared by the sections of one key size."""

    bits: int
    report: Report
    sizes: Sizes
    args: argparse.Namespace
    rng: np.random.Generator
    pool: WorkerPool | None = None
    values: dict[str, Any] = field(default_factory=dict)

    def row(self, section: str, what: str, value: float | None, unit: str, **kw: Any) -> Row:
        row = Row(self.bits, section, what, value, unit, **kw)
        if self.bits < MIN_TARGET_BITS:  # the targets are stated for production key sizes
            row.target = ""
        if row.target:
            row.met = target_check(row.ratio, row.target)
        return self.report.add(row)


def bench_keygen(ctx: Context) -> None:
    bits, sz = ctx.bits, ctx.sizes
    gen, ph = [], []
    for _ in range(sz.keygen_repeats):
        gen.append(timed(lambda: ctx.values.__setitem__("keypair", generate_keypair(bits))))
        ph.append(timed(lambda: phe.generate_paillier_keypair(n_length=bits)))
    deal = [
        timed(
            lambda: ctx.values.__setitem__(
                "threshold",
                deal_threshold_key(bits, threshold=THRESHOLD_T, parties=THRESHOLD_N),
            )
        )
        for _ in range(sz.deal_repeats)
    ]
    phe_med = statistics.median(ph)
    ctx.values["phe_keygen"] = phe_med
    n = f"median of {sz.keygen_repeats}"
    ctx.row(
        "keys",
        f"generate_keypair({bits}) ({n})",
        statistics.median(gen),
        "s",
        baseline_name="phe.generate_paillier_keypair",
        baseline=phe_med,
    )
    ctx.row(
        "keys",
        f"deal_threshold_key({bits}, threshold=3, parties=5) "
        f"(median of {sz.deal_repeats}; safe primes)",
        statistics.median(deal),
        "s",
        baseline_name="phe.generate_paillier_keypair",
        baseline=phe_med,
    )


def bench_encryption(ctx: Context) -> None:
    bits, sz = ctx.bits, ctx.sizes
    pk, sk = ctx.values["keypair"]
    ppk = sk.to_phe().public_key
    x = ctx.rng.normal(0.0, 0.1, sz.vector)
    ctx.values["x"] = x
    specs = specs_for(bits)

    builds = [
        timed(lambda: FixedBaseTable(pk.djn_base, pk.nsquare, pk.exponent_bits, pk.window))
        for _ in range(3)
    ]
    table = pk.table
    ctx.row(
        "encrypt",
        f"fixed-base table build, one process (w={pk.window}, "
        f"{table.nbytes / 2**20:.0f} MiB, median of 3)",
        statistics.median(builds),
        "s",
    )
    if ctx.pool is not None:
        warm = timed(lambda: ctx.pool.warm_up(pk))  # type: ignore[union-attr]
        ctx.row(
            "encrypt",
            f"WorkerPool({ctx.pool.workers}).warm_up(pk): start workers + build "
            "the table in each (once per key and process; excluded below)",
            warm,
            "s",
        )

    for spec in specs.values():  # warm caches and code paths, untimed
        encrypt_vector(pk, x[: spec.slots_per_ciphertext * 4], spec)

    per_round = -(-sz.phe_values // sz.repeats)  # phe values encrypted per round
    phe_x = x[: per_round * sz.repeats]
    phe_cts: list[Any] = []

    def run_phe() -> None:  # the next per_round values, cycling over phe_x
        start = len(phe_cts) % len(phe_x)
        phe_cts.extend(ppk.encrypt(float(v)) for v in phe_x[start : start + per_round])

    results: dict[str, Any] = {}
    fns: dict[str, Callable[[], object]] = {}
    for name, spec in specs.items():
        fns[f"single {name}"] = lambda spec=spec, name=name: results.__setitem__(
            name, encrypt_vector(pk, x, spec)
        )
        if ctx.pool is not None:
            fns[f"pool {name}"] = lambda spec=spec: encrypt_vector(pk, x, spec, pool=ctx.pool)
    fns["phe"] = run_phe
    warm_x = x[: 2 * specs["default"].slots_per_ciphertext]
    tm = interleaved(fns, sz.repeats, warmup=lambda: encrypt_vector(pk, warm_x, specs["default"]))
    phe_per_value = tm.median_wall("phe") / per_round
    phe_rate = 1.0 / phe_per_value
    phe_cpu_rate = per_round / tm.median_cpu("phe")
    ctx.values.update(
        phe_cts=phe_cts[: len(phe_x)], phe_x=phe_x, phe_encrypt=phe_per_value, encrypted=results
    )
    base = dict(
        baseline_name=f"phe encrypt(float), {per_round} values × {len(tm.wall['phe'])} rounds",
        baseline=phe_rate,
    )
    rates = {k: sz.vector / tm.median_wall(k) for k in fns if k != "phe"}
    ctx.values["enc_rates"] = rates
    for name, spec in specs.items():
        cpu_rate = sz.vector / tm.median_cpu(f"single {name}")
        ctx.row(
            "encrypt",
            f"encrypt_vector, 1 process, {sz.vector:,} values, {spec_label(name, spec)}",
            rates[f"single {name}"],
            "values/s",
            target=">= 1000×",
            note=f"CPU-time basis: {cpu_rate:,.0f} values/s = {cpu_rate / phe_cpu_rate:,.0f}× "
            "phe's CPU time",
            **base,
        )
    if ctx.pool is None:
        return
    for name, spec in specs.items():
        main, workers, busiest = tm.median_cpu_parts(f"pool {name}")
        single_cpu = tm.median_cpu(f"single {name}")
        bound = sz.vector / (main + busiest)
        ctx.row(
            "encrypt",
            f"encrypt_vector, WorkerPool({ctx.pool.workers}), {sz.vector:,} values, "
            f"{spec_label(name, spec)}",
            rates[f"pool {name}"],
            "values/s",
            target=">= 1800×",
            note=f"CPU: {main:.2f} s here + {workers:.2f} s in workers (busiest {busiest:.2f} s) "
            f"vs {single_cpu:.2f} s in one process; CPU-time projection for {ctx.pool.workers} "
            f"free cores, values / (CPU here + busiest worker): {bound:,.0f} values/s = "
            f"{bound / phe_cpu_rate:,.0f}× phe's CPU time (a projection, not a wall-clock "
            "measurement)",
            **base,
        )
    for name in specs:
        ctx.row(
            "encrypt",
            f"pool speed-up ({name} layout)",
            rates[f"pool {name}"],
            "values/s",
            baseline_name="same, 1 process",
            baseline=rates[f"single {name}"],
        )


def bench_per_ciphertext(ctx: Context) -> None:
    bits, sz = ctx.bits, ctx.sizes
    pk, _ = ctx.values["keypair"]
    spec = specs_for(bits)["default"]
    n_ct = sz.per_ct
    x = ctx.values["x"]
    xs = x[: n_ct * spec.slots_per_ciphertext]
    plaintexts = spec.pack(spec.quantize(xs))
    table = pk.table
    n_pow = max(1, n_ct // 4)
    rounds = max(5, sz.repeats)
    exps = [gmpy2.mpz(secrets.randbits(pk.exponent_bits)) for _ in range(n_pow * rounds)]
    exp_iter = itertools.cycle(exps)  # retried rounds (--wait-idle) reuse exponents

    def powmods() -> None:
        for _ in range(n_pow):
            gmpy2.powmod(pk.djn_base, next(exp_iter), pk.nsquare)

    def pows() -> None:
        for _ in range(n_ct):
            table.pow_random()

    def raw() -> None:
        for m in plaintexts:
            pk.raw_encrypt(m)

    tm = interleaved(
        {
            "pow": pows,
            "raw": raw,
            "vec": lambda: encrypt_vector(pk, xs, spec),
            "powmod": powmods,
        },
        rounds,
        warmup=lambda: [table.pow_random() for _ in range(max(1, n_ct // 10))],
    )
    per = {k: tm.median_wall(k) / (n_pow if k == "powmod" else n_ct) for k in tm.wall}
    cpu = {k: tm.median_cpu(k) / (n_pow if k == "powmod" else n_ct) for k in tm.wall}

    def cpu_note(k: str) -> str:
        return f"CPU-time basis: {cpu[k] / cpu['pow']:.3g}×"

    base = dict(baseline_name="pk.table.pow_random()", baseline=per["pow"])
    note = f"{n_ct} ciphertexts × {rounds} interleaved rounds, exponent {pk.exponent_bits} bits"
    ctx.row(
        "per-ct",
        "pk.table.pow_random() (bare fixed-base exponentiation)",
        per["pow"],
        "s",
        note=note,
    )
    ctx.row(
        "per-ct",
        "pk.raw_encrypt(m) per ciphertext",
        per["raw"],
        "s",
        target="<= 1.25×",
        note=cpu_note("raw"),
        **base,
    )
    ctx.row(
        "per-ct",
        "encrypt_vector per ciphertext (incl. quantize + pack)",
        per["vec"],
        "s",
        target="<= 1.25×",
        note=cpu_note("vec"),
        **base,
    )
    ctx.row(
        "per-ct",
        f"gmpy2.powmod(h_s, a, n²), a of {pk.exponent_bits} bits (context)",
        per["powmod"],
        "s",
        note=cpu_note("powmod"),
        **base,
    )


def bench_bytes(ctx: Context) -> None:
    bits = ctx.bits
    pk, _ = ctx.values["keypair"]
    encrypted = ctx.values["encrypted"]
    phe_cts = ctx.values["phe_cts"]
    phe_fixed = pk.ciphertext_bytes  # one element of Z*_{n²}, fixed-width
    phe_json = statistics.mean(
        len(json.dumps([str(c.ciphertext(be_secure=False)), c.exponent])) for c in phe_cts
    )
    for name, spec in specs_for(bits).items():
        ev = encrypted[name]
        per_value = len(encrypted_vector_to_bytes(ev)) / ev.length
        ctx.row(
            "bytes",
            f"encrypted_vector_to_bytes / values, {name} layout "
            f"({spec.slots_per_ciphertext} slots)",
            per_value,
            "B/value",
            baseline_name="float32",
            baseline=FLOAT32_BYTES,
            target="<= 2×",
        )
        ctx.row(
            "bytes",
            f"same, {name} layout, vs phe",
            per_value,
            "B/value",
            baseline_name=f"phe ciphertext as {phe_fixed}-byte integer",
            baseline=phe_fixed,
        )
    ctx.row(
        "bytes",
        "phe ciphertext as decimal JSON [str(ciphertext), exponent] (context)",
        phe_json,
        "B/value",
        baseline_name="float32",
        baseline=FLOAT32_BYTES,
    )


def bench_decryption(ctx: Context) -> None:
    bits, sz = ctx.bits, ctx.sizes
    pk, sk = ctx.values["keypair"]
    psk = sk.to_phe()
    x = ctx.values["x"][: sz.decrypt_values]
    phe_cts = ctx.values["phe_cts"]
    per_round = -(-len(phe_cts) // sz.repeats)
    phe_out: list[float] = []

    def run_phe() -> None:  # the next per_round ciphertexts, cycling over phe_cts
        start = len(phe_out) % len(phe_cts)
        phe_out.extend(psk.decrypt(c) for c in phe_cts[start : start + per_round])

    specs = specs_for(bits)
    vectors = {name: encrypt_vector(pk, x, spec, pool=ctx.pool) for name, spec in specs.items()}
    decoded: dict[str, np.ndarray] = {}
    fns: dict[str, Callable[[], object]] = {
        name: (lambda name=name: decoded.__setitem__(name, decrypt_vector(sk, vectors[name])))
        for name in specs
    }
    fns["phe"] = run_phe
    warm = vectors["default"].ciphertexts[:2]
    tm = interleaved(fns, sz.repeats, warmup=lambda: [sk.raw_decrypt(c) for c in warm])
    samples = tm.wall
    phe_rate = per_round / statistics.median(samples["phe"])
    phe_cpu_rate = per_round / tm.median_cpu("phe")
    ctx.values["phe_decrypt_rate"] = phe_rate
    phe_err = float(np.max(np.abs(np.array(phe_out[: len(phe_cts)]) - ctx.values["phe_x"])))
    for name, spec in specs.items():
        rate = len(x) / statistics.median(samples[name])
        err = float(np.max(np.abs(decoded[name] - np.clip(x, -spec.clip, spec.clip))))
        ctx.values.setdefault("dec_rates", {})[name] = rate
        ctx.row(
            "decrypt",
            f"decrypt_vector, {len(x):,} values, {name} layout",
            rate,
            "values/s",
            baseline_name=f"phe decrypt, {per_round} values × {len(samples['phe'])} rounds",
            baseline=phe_rate,
            target=">= 50×",
            note=f"max abs error {err:.2g} (step/2 = {spec.step / 2:.2g}); phe error "
            f"{phe_err:.2g}; CPU-time basis: "
            f"{len(x) / tm.median_cpu(name) / phe_cpu_rate:,.1f}× phe's CPU time",
        )
        ctx.row(
            "decrypt",
            f"decrypt_vector per ciphertext, {name} layout",
            statistics.median(samples[name]) / spec.n_ciphertexts(len(x)),
            "s",
            baseline_name="phe decrypt per value",
            baseline=1 / phe_rate,
        )


def bench_threshold(ctx: Context) -> None:
    bits, sz = ctx.bits, ctx.sizes
    tpk, shares = ctx.values["threshold"]
    tkey = tpk.public_key
    spec = specs_for(bits)["default"]
    x = ctx.values["x"][: sz.threshold_values]
    if ctx.pool is not None:
        ctx.pool.warm_up(tkey)
    ev = encrypt_vector(tkey, x, spec, pool=ctx.pool)
    n_ct = len(ev.ciphertexts)
    by_index: dict[int, Any] = {}
    fns: dict[str, Callable[[], object]] = {
        f"share {s.index}": lambda s=s: by_index.__setitem__(s.index, partial_decrypt(s, ev))
        for s in shares[:THRESHOLD_T]
    }
    if ctx.pool is not None:  # one process and the pool side by side
        fns["pool"] = lambda: partial_decrypt(shares[0], ev, pool=ctx.pool)
    t_parts = interleaved(fns, 1).wall
    partials = [by_index[s.index] for s in shares[:THRESHOLD_T]]
    chosen = {p.share_index: p.partials for p in partials}
    out: list[np.ndarray] = []
    med = medians(
        interleaved(
            {
                "verify": lambda: verify_partial_decryption(tpk, ev, partials[0]),
                "raw_combine": lambda: raw_combine(tpk, chosen),
                "combine": lambda: out.append(combine_partial_decryptions(tpk, ev, partials)),
            },
            sz.repeats,
        ).wall
    )
    err = float(np.max(np.abs(out[-1] - np.clip(x, -spec.clip, spec.clip))))
    p_med = statistics.median(t_parts[f"share {s.index}"][0] for s in shares[:THRESHOLD_T])
    phe_rate = ctx.values["phe_decrypt_rate"]
    sk_rate = ctx.values["dec_rates"]["default"]
    vals = len(x)
    note = f"{vals:,} values = {n_ct} ciphertexts, default layout"
    base_ct = dict(baseline_name="phe decrypt per value", baseline=1 / phe_rate)
    ctx.row(
        "threshold",
        "partial_decrypt incl. proof, per ciphertext (median of 3 shares)",
        p_med / n_ct,
        "s",
        note=note,
        **base_ct,
    )
    ctx.row("threshold", "partial_decrypt incl. proof, per value", p_med / vals, "s", **base_ct)
    if ctx.pool is not None:
        t_pool = t_parts["pool"][0]
        ctx.row(
            "threshold",
            f"partial_decrypt with WorkerPool({ctx.pool.workers}), per value",
            t_pool / vals,
            "s",
            baseline_name="same, 1 process",
            baseline=p_med / vals,
        )
        ctx.values["partial_ct_pool"] = t_pool / n_ct
    ctx.row(
        "threshold",
        "verify_partial_decryption (one proof), per value",
        med["verify"] / vals,
        "s",
        **base_ct,
    )
    ctx.row(
        "threshold",
        "combine_partial_decryptions (3 proofs verified), per ciphertext",
        med["combine"] / n_ct,
        "s",
        **base_ct,
    )
    ctx.row(
        "threshold",
        "combine_partial_decryptions (3 proofs verified), per value",
        med["combine"] / vals,
        "s",
        **base_ct,
    )
    ctx.row(
        "threshold", "raw_combine (no proofs), per value", med["raw_combine"] / vals, "s", **base_ct
    )
    total = THRESHOLD_T * p_med + med["combine"]
    ctx.row(
        "threshold",
        "threshold decryption 3 partials + combine, one process",
        vals / total,
        "values/s",
        baseline_name="phe decrypt (single key)",
        baseline=phe_rate,
        note=f"max abs error {err:.2g}",
    )
    ctx.row(
        "threshold",
        "same vs fedcity private-key decrypt_vector",
        vals / total,
        "values/s",
        baseline_name="decrypt_vector",
        baseline=sk_rate,
    )
    ctx.values["rates"] = {
        "partial_ct": p_med / n_ct,
        "combine_ct": med["combine"] / n_ct,
    }


def bench_aggregation(ctx: Context) -> None:
    bits, sz = ctx.bits, ctx.sizes
    tkey = ctx.values["threshold"][0].public_key
    spec = PackingSpec(n_length=bits, precision_bits=16, max_summands=max(100, *sz.agg_k))
    pool = ctx.pool
    if pool is not None:
        pool.warm_up(tkey)
    enc_key = "pool default" if pool is not None else "single default"
    default_slots = specs_for(bits)["default"].slots_per_ciphertext
    rates = {
        "enc_ct": default_slots / ctx.values["enc_rates"][enc_key],
        "partial_ct": ctx.values.get("partial_ct_pool", ctx.values["rates"]["partial_ct"]),
        "combine_ct": ctx.values["rates"]["combine_ct"],
        "add_ct": 0.0,
    }
    ctx.report.notes.append(
        f"{bits} bits, aggregation: {spec_label('agg', spec)}; values N(0, 0.1); encryption and "
        f"partial decryption {f'use WorkerPool({pool.workers})' if pool else 'run in one process'};"
        " the three partial decryptions run one after another on this machine (in deployment "
        "each agency computes its own, in parallel)."
    )
    for k, d in sorted(itertools.product(sz.agg_k, sz.agg_d), key=lambda kd: kd[0] * kd[1]):
        n_ct = spec.n_ciphertexts(d)
        estimate = n_ct * (
            k * rates["enc_ct"]
            + (k - 1) * rates["add_ct"]
            + THRESHOLD_T * rates["partial_ct"]
            + rates["combine_ct"]
        )
        label = f"K={k} × {d:,} values"
        print(f"  {label}: estimated {estimate:.0f} s", flush=True)
        if estimate > ctx.args.agg_budget:
            ctx.row(
                "aggregate",
                f"{label}: skipped",
                None,
                "s",
                note=f"estimated {estimate:.0f} s > --agg-budget {ctx.args.agg_budget:.0f} s",
            )
            continue
        rates = aggregate_case(ctx, spec, k, d, label, estimate)


def aggregate_case(
    ctx: Context, spec: PackingSpec, k: int, d: int, label: str, estimate: float
) -> dict[str, float]:
    """Run one aggregation of ``k`` vectors of ``d`` values; return per-ciphertext costs."""
    tpk, shares = ctx.values["threshold"]
    tkey, pool = tpk.public_key, ctx.pool
    n_ct = spec.n_ciphertexts(d)
    xs = ctx.rng.normal(0.0, 0.1, (k, d))
    plain_times = []
    for _ in range(5):
        with Stopwatch() as sw:
            exact = xs.sum(axis=0)
        plain_times.append(sw.seconds)
    plain = statistics.median(plain_times)
    QUIET.wait()
    with Stopwatch() as enc:
        vectors = [encrypt_vector(tkey, xs[i], spec, pool=pool) for i in range(k)]
    with Stopwatch() as add:
        agg = sum(vectors)
    upload = len(encrypted_vector_to_bytes(vectors[0]))
    del vectors
    partials, t_parts, part_loads = [], [], []
    for share in shares[:THRESHOLD_T]:
        QUIET.wait()
        with Stopwatch() as sw:
            partials.append(partial_decrypt(share, agg, pool=pool))
        t_parts.append(sw.seconds)
        part_loads.append(sw.load)
    QUIET.wait()
    with Stopwatch() as comb:
        result = combine_partial_decryptions(tpk, agg, partials)
    err = float(np.max(np.abs(result - exact)))
    bound = k * spec.clip / spec.levels
    total = enc.seconds + add.seconds + sum(t_parts) + comb.seconds
    base = dict(baseline_name="numpy sum", baseline=plain)

    def busy(*loads: float | None) -> str:
        known = [x for x in loads if x is not None]
        return f"other processes {statistics.mean(known):.2f} cores" if known else ""

    ctx.row(
        "aggregate",
        f"{label}: encrypt (K agencies)",
        enc.seconds,
        "s",
        **base,
        note=f"{upload / d:.2f} B/value uploaded per agency; {busy(enc.load)}",
    )
    ctx.row(
        "aggregate",
        f"{label}: add (sum of K EncryptedVector)",
        add.seconds,
        "s",
        note=busy(add.load),
        **base,
    )
    ctx.row(
        "aggregate",
        f"{label}: 3 × partial_decrypt (incl. proofs)",
        sum(t_parts),
        "s",
        note=busy(*part_loads),
        **base,
    )
    ctx.row(
        "aggregate",
        f"{label}: combine (3 proofs verified) + decode",
        comb.seconds,
        "s",
        note=busy(comb.load),
        **base,
    )
    ctx.row(
        "aggregate",
        f"{label}: total",
        total,
        "s",
        **base,
        note=f"max abs error vs numpy {err:.2g} (bound K·clip/L = {bound:.2g}); "
        f"estimate was {estimate:.0f} s",
    )
    return {
        "enc_ct": enc.seconds / (k * n_ct),
        "add_ct": add.seconds / max(1, (k - 1) * n_ct),
        "partial_ct": sum(t_parts) / (THRESHOLD_T * n_ct),
        "combine_ct": comb.seconds / n_ct,
    }


def bench_ckks(ctx: Context) -> None:
    try:
        import tenseal as ts
    except ImportError:
        msg = "CKKS comparison skipped: tenseal is not installed (pip install tenseal)."
        print("  " + msg)
        if msg not in ctx.report.notes:
            ctx.report.notes.append(msg)
        return
    bits, sz = ctx.bits, ctx.sizes
    pk, _ = ctx.values["keypair"]
    x = ctx.values["x"]
    spec = specs_for(bits)["default"]

    def context(threads: int | None) -> Any:
        kwargs = {} if threads is None else {"n_threads": threads}
        c = ts.context(
            ts.SCHEME_TYPE.CKKS,
            poly_modulus_degree=8192,
            coeff_mod_bit_sizes=[60, 40, 40, 60],
            **kwargs,
        )
        c.global_scale = 2**40
        return c

    ctx1, ctx_all = context(1), context(None)
    box: dict[str, Any] = {}
    fns: dict[str, Callable[[], object]] = {
        "fedcity": lambda: encrypt_vector(pk, x, spec),
        "ckks1": lambda: box.__setitem__("v", ts.ckks_vector(ctx1, x)),
        "ckks_all": lambda: ts.ckks_vector(ctx_all, x),
    }
    with quiet_native_output():
        med = medians(interleaved(fns, sz.repeats).wall)
        blob = box["v"].serialize()
        dec = np.array(box["v"].decrypt())
    err = float(np.max(np.abs(dec - x)))
    fed = len(x) / med["fedcity"]
    note = (
        "TenSEAL " + getattr(ts, "__version__", "?") + ", poly degree 8192, "
        "coeff_mod_bit_sizes [60, 40, 40, 60], scale 2^40"
    )
    ctx.row(
        "ckks",
        "CKKS ckks_vector encrypt, n_threads=1",
        len(x) / med["ckks1"],
        "values/s",
        baseline_name="fedcity encrypt_vector (default layout, 1 process)",
        baseline=fed,
        note=note,
    )
    ctx.row(
        "ckks",
        f"CKKS ckks_vector encrypt, n_threads={os.cpu_count()}",
        len(x) / med["ckks_all"],
        "values/s",
        baseline_name="fedcity encrypt_vector (default layout, 1 process)",
        baseline=fed,
    )
    ctx.row(
        "ckks",
        "CKKS serialize() bytes per value",
        len(blob) / len(x),
        "B/value",
        baseline_name="float32",
        baseline=FLOAT32_BYTES,
        note=f"decrypted max abs error {err:.2g} (approximate scheme)",
    )


# -- driver ----------------------------------------------------------------------------------
def machine_info() -> dict[str, str]:
    """Machine and library versions."""
    libraries = {
        "gmpy2": gmpy2.version(),
        "gmp": gmpy2.mp_version(),
        "phe": phe.__version__,
        "numpy": np.__version__,
    }
    try:
        import tenseal as ts

        libraries["tenseal"] = getattr(ts, "__version__", "installed")
    except ImportError:
        libraries["tenseal"] = "not installed"
    return describe_machine(libraries)


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0] if __doc__ else None,
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    p.add_argument(
        "--bits",
        type=int,
        nargs="+",
        default=None,
        help="modulus sizes (default 2048 3072; 1024 with --quick)",
    )
    p.add_argument(
        "--quick",
        action="store_true",
        help="small smoke run (1024-bit keys unless --bits is given)",
    )
    p.add_argument("--out", type=Path, help="write the results as a markdown table here")
    p.add_argument("--json", type=Path, help="write the raw results as JSON here")
    p.add_argument("--workers", type=int, default=2, help="WorkerPool size; 1 disables the pool")
    p.add_argument("--vector", type=int, help="values per vector (default 100000)")
    p.add_argument("--phe-values", type=int, help="values encrypted with phe (default 200)")
    p.add_argument("--repeats", type=int, help="interleaved repetitions (default 3)")
    p.add_argument("--decrypt-values", type=int, help="values decrypted (default 20000)")
    p.add_argument(
        "--threshold-values",
        type=int,
        help="values in the threshold decryption test (default 10000)",
    )
    p.add_argument("--agg-k", type=int, nargs="+", help="agencies per aggregation (10 100)")
    p.add_argument("--agg-d", type=int, nargs="+", help="values per vector (10000 100000)")
    p.add_argument(
        "--agg-budget",
        type=float,
        default=900.0,
        help="skip an aggregation case whose estimate exceeds this many seconds",
    )
    p.add_argument(
        "--skip-keygen",
        action="store_true",
        help="skip key generation timing (one key of each kind is still generated)",
    )
    p.add_argument(
        "--skip-threshold", action="store_true", help="skip threshold decryption and aggregation"
    )
    p.add_argument("--skip-aggregation", action="store_true", help="skip the aggregation runs")
    p.add_argument("--skip-ckks", action="store_true", help="skip the TenSEAL CKKS comparison")
    p.add_argument(
        "--wait-idle",
        type=float,
        default=0.0,
        metavar="SECONDS",
        help="before each measurement round wait up to SECONDS for other processes to go quiet",
    )
    p.add_argument("--seed", type=int, default=20261123, help="seed of the test vectors")
    args = p.parse_args(argv)
    if args.bits is None:
        args.bits = [1024] if args.quick else [2048, 3072]
    if not args.quick and min(args.bits) < 2048:
        p.error("keys below 2048 bits are only allowed with --quick (smoke test)")
    return args


def run(args: argparse.Namespace) -> Report:
    report = Report()
    QUIET.monitor, QUIET.max_wait = CpuMonitor(), args.wait_idle
    sizes = sizes_from_args(args)
    rng = np.random.default_rng(args.seed)
    pool = WorkerPool(args.workers) if args.workers > 1 else None
    try:
        for bits in args.bits:
            ctx = Context(bits, report, sizes, args, rng, pool)
            steps: list[tuple[str, Callable[[Context], None]]] = []
            if args.skip_keygen:
                ctx.values["keypair"] = generate_keypair(bits)
                if not args.skip_threshold:
                    ctx.values["threshold"] = deal_threshold_key(
                        bits, threshold=THRESHOLD_T, parties=THRESHOLD_N
                    )
            else:
                steps.append(("key generation", bench_keygen))
            steps += [
                ("encryption", bench_encryption),
                ("per-ciphertext", bench_per_ciphertext),
                ("bytes", bench_bytes),
                ("decryption", bench_decryption),
            ]
            if not args.skip_threshold:
                steps.append(("threshold", bench_threshold))
                if not args.skip_aggregation:
                    steps.append(("aggregation", bench_aggregation))
            if not args.skip_ckks:
                steps.append(("ckks", bench_ckks))
            for name, fn in steps:
                with section(report, bits, name):
                    fn(ctx)
    finally:
        if pool is not None:
            pool.close()
    if args.wait_idle > 0:
        busy = (
            f"; {QUIET.short_sets} measurement(s) had too few quiet rounds and also used busy "
            f"ones (other processes at {', '.join(f'{x:.2f}' for x in QUIET.busy_used)} cores)"
            if QUIET.short_sets
            else ""
        )
        report.notes.append(
            f"--wait-idle {args.wait_idle:g}: before each interleaved round the run waited (up "
            f"to {args.wait_idle:g} s) for other processes to use < {IDLE_BELOW} cores, and "
            f"repeated any round during which they used >= {QUIET_ROUND_BELOW} cores (up to "
            f"{ROUND_FACTOR}× the rounds): {QUIET.rounds_kept} of {QUIET.rounds_total} rounds "
            f"kept, {QUIET.waited:.0f} s spent waiting{busy}. Key generation and the "
            "aggregation stages are single timings (waited for, not repeated)."
        )
    return report


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    command = "python " + " ".join(
        shlex.quote(a) for a in [sys.argv[0], *(argv if argv is not None else sys.argv[1:])]
    )
    info = machine_info()
    print("fedcity crypto benchmark")
    print("  " + ", ".join(f"{k} {v}" for k, v in info.items()))
    started = time.time()
    report = run(args)
    elapsed = time.time() - started
    print(text_table(report))
    if report.notes:
        print("\nNotes:\n" + "\n".join(f"- {n}" for n in report.notes))
    missed = [r for r in report.rows if r.met is False]
    print(
        f"\n{len([r for r in report.rows if r.met])} targets met, {len(missed)} missed; "
        f"run took {elapsed / 60:.1f} min"
    )
    if args.out:
        header = [
            f"Command: `{command}`  ",
            f"Date: {time.strftime('%Y-%m-%d %H:%M', time.localtime(started))}, "
            f"run time {elapsed / 60:.1f} min  ",
            "Machine: " + ", ".join(f"{k} {v}" for k, v in info.items()) + "\n",
            "Ratio = fedcity figure ÷ baseline figure, both measured in this run.\n",
        ]
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text("\n".join(header) + "\n" + markdown_table(report), encoding="utf-8")
        print(f"markdown written to {args.out}")
    if args.json:
        payload = {
            "command": command,
            "machine": info,
            "rows": [{**asdict(r), "ratio": r.ratio} for r in report.rows],
            "loads": {f"{b} {s}": v for (b, s), v in report.loads.items()},
            "notes": report.notes,
        }
        args.json.write_text(json.dumps(payload, indent=2), encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main())
