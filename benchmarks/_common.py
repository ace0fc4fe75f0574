"""Helpers shared by the benchmark scripts: machine description, load metering, tables.

The scripts run as ``python benchmarks/bench_<name>.py``; Python then puts ``benchmarks/`` on
``sys.path`` and they import this module as ``_common``. It needs only the standard library.

The load figures every script prints come from :class:`CpuMonitor`: the CPU time the whole
machine spent busy, minus the CPU time of this process and its descendants, per second of
wall time, read from Linux ``/proc``. On a shared machine it says how many cores other work
took away from a measurement.
"""

from __future__ import annotations

import contextlib
import os
import platform
import time
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
import pandas as pd

IDLE_BELOW = 0.25  # cores used by other processes below which the machine counts as quiet

Snapshot = tuple[float, float, float]
"""``(wall, machine busy CPU, own process tree CPU)`` seconds (:meth:`CpuMonitor.snapshot`)."""


# -- machine description ---------------------------------------------------------------------
def cpu_model(default: str = "unknown") -> str:
    """The CPU's model name from ``/proc/cpuinfo``, or ``default`` where it cannot be read."""
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return default


def describe_machine(libraries: Mapping[str, str]) -> dict[str, str]:
    """Core count, CPU model and Python version, then ``libraries`` (name → version), in order.

    Keys are ``"nproc"``, ``"cpu"``, ``"python"`` followed by the names of ``libraries``.
    """
    return {
        "nproc": str(os.cpu_count()),
        "cpu": cpu_model(),
        "python": platform.python_version(),
        **libraries,
    }


# -- load of other processes -----------------------------------------------------------------
class CpuMonitor:
    """CPU seconds used by processes other than this one and its children (Linux /proc).

    Without ``/proc`` (:attr:`available` false) snapshots are None and so are the loads.
    """

    def __init__(self) -> None:
        self.ticks = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100
        self.available = Path("/proc/stat").exists()

    def _machine_busy(self) -> float:
        """CPU seconds the machine has spent busy since boot (all cores)."""
        with open("/proc/stat") as fh:
            f = [int(v) for v in fh.readline().split()[1:]]
        user, nice, system, _idle, _iowait, irq, softirq, steal = f[:8]
        return (user + nice + system + irq + softirq + steal) / self.ticks

    def _scan(self) -> dict[int, tuple[int, float]]:
        """``pid -> (parent pid, CPU seconds)`` of every process (reaped children of this
        process counted in its own figure)."""
        me = os.getpid()
        stats: dict[int, tuple[int, float]] = {}
        for entry in os.scandir("/proc"):
            if not entry.name.isdigit():
                continue
            try:
                with open(f"/proc/{entry.name}/stat") as fh:
                    raw = fh.read()
            except OSError:
                continue
            rest = raw[raw.rfind(")") + 2 :].split()
            own = int(rest[11]) + int(rest[12])
            if int(entry.name) == me:  # include reaped children (closed pools)
                own += int(rest[13]) + int(rest[14])
            stats[int(entry.name)] = (int(rest[1]), own / self.ticks)
        return stats

    def descendants(self) -> dict[int, float]:
        """CPU seconds of each live descendant of this process (worker processes)."""
        if not self.available:
            return {}
        stats = self._scan()
        out: dict[int, float] = {}
        frontier = {os.getpid()}
        while frontier:
            frontier = {p for p, (pp, _) in stats.items() if pp in frontier}
            out.update({p: stats[p][1] for p in frontier})
        return out

    def _own_tree(self) -> float:
        """CPU seconds of this process and all its live descendants."""
        stats = self._scan()
        total, frontier = 0.0, {os.getpid()}
        while frontier:
            total += sum(stats[p][1] for p in frontier if p in stats)
            frontier = {p for p, (pp, _) in stats.items() if pp in frontier}
        return total

    def snapshot(self) -> Snapshot | None:
        """``(wall, machine busy CPU, own process tree CPU)`` in seconds."""
        if not self.available:
            return None
        return time.monotonic(), self._machine_busy(), self._own_tree()

    @staticmethod
    def foreign_cores(a: Snapshot | None, b: Snapshot | None) -> float | None:
        """Average number of cores busy with other work between two snapshots."""
        if a is None or b is None or b[0] <= a[0]:
            return None
        return max(0.0, ((b[1] - a[1]) - (b[2] - a[2])) / (b[0] - a[0]))

    def since(self, start: Snapshot | None) -> float | None:
        """Average number of cores busy with other work from snapshot ``start`` until now."""
        return self.foreign_cores(start, self.snapshot())

    def wait_idle(
        self, max_seconds: float, below: float | None = None, *, probe: float = 0.5
    ) -> float | None:
        """Wait (up to ``max_seconds``) until other processes use less than ``below`` cores.

        ``below`` defaults to :data:`IDLE_BELOW`. The load is probed over ``probe`` seconds at
        a time, at least once; the last probe may end up to ``probe`` seconds after the
        deadline. Returns the load of the last probe; with ``max_seconds <= 0`` returns None
        at once, without probing.
        """
        if max_seconds <= 0:
            return None
        below = IDLE_BELOW if below is None else below
        deadline = time.monotonic() + max_seconds
        while True:
            a = self.snapshot()
            time.sleep(probe)
            load = self.since(a)
            if load is None or load < below or time.monotonic() >= deadline:
                return load


# -- tables ----------------------------------------------------------------------------------
def markdown(headers: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    """A GitHub markdown table; columns after the first are right-aligned."""
    out = ["| " + " | ".join(headers) + " |"]
    out.append("|" + "|".join(["---"] + ["--:"] * (len(headers) - 1)) + "|")
    out += ["| " + " | ".join(r) + " |" for r in rows]
    return "\n".join(out)


def wide_frames(n_agencies: int, rows: int, d: int, seed: int = 0) -> list[pd.DataFrame]:
    """The cost data of the learning and network benchmarks.

    ``n_agencies`` tables of ``rows`` rows with ``d`` correlated numeric features
    ``x00, x01, ...`` and a 0/1 label ``y`` from one logistic model; each agency shifts the
    feature means (non-IID).
    """
    rng = np.random.default_rng(seed)
    cols = [f"x{j:02d}" for j in range(d)]
    beta = rng.normal(0.0, 0.3, d)
    out = []
    for _ in range(n_agencies):
        shift = rng.normal(0.0, 0.5, d)
        shared = rng.standard_normal((rows, 1))
        x = shift + 0.5 * shared + rng.standard_normal((rows, d))
        p = 1.0 / (1.0 + np.exp(-(x @ beta - 0.5)))
        frame = pd.DataFrame(x, columns=cols)
        frame["y"] = (rng.random(rows) < p).astype(np.float64)
        out.append(frame)
    return out
