"""An agency's privacy-budget ledger: (ε, δ) spent per dataset per period, in SQLite.

An agency that sets a budget in its policy (``[policy] budget = { epsilon = 8.0, delta =
1e-5, period = "month" }`` in ``agency.toml``) lets no job or query spend more than that on
any one of its datasets (or query tables) within a period. A job with differential privacy
states the whole job's ``(ε, δ)`` in its DP parameters (computed by the coordinator's
accountant: :class:`fedcity.learn.dp.DPPlan`, :class:`fedcity.analytics.privacy.QueryPlan`);
the agent charges it once, at the job's first contribution and **before** anything is
computed (:meth:`Ledger.charge`). Releases compose by basic composition: the period's spend
is the sum of the jobs' ε and the sum of their δ, a valid (if loose) upper bound.

Charging is one ``BEGIN IMMEDIATE`` transaction (``synchronous=FULL``, WAL): read the
period's spend, refuse if the job would exceed the budget (nothing is written), insert the
charge, commit. A process killed at any point leaves either the whole charge or none. A
job is charged at most once per dataset (its id is unique in the ledger), so a restarted
agent or a repeated assignment does not charge again.

Jobs without differential privacy are not charged (their releases are exact; whether an
agency accepts them at all is its policy's decision).

Periods: ``"day"`` (UTC date), ``"week"`` (ISO week), ``"month"``, ``"year"`` or ``"total"``
(one period for ever).
"""

from __future__ import annotations

import datetime as dt
import json
import math
import os
import sqlite3
import threading
import time
from collections.abc import Iterator, Mapping
from contextlib import closing, contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

__all__ = [
    "HOLD_ENV",
    "PERIODS",
    "Budget",
    "BudgetRefused",
    "Ledger",
    "LedgerError",
    "Spend",
    "job_privacy_cost",
    "period_of",
    "privacy_cost",
]

PERIODS = ("day", "week", "month", "year", "total")
"""Budget periods."""
HOLD_ENV = "FEDCITY_TEST_LEDGER_HOLD"
"""Test hook: when set to a path, :meth:`Ledger.charge` creates that file inside its
transaction (after writing the charge, before committing) and waits there up to 60 s, so a
test can kill the process at exactly that point."""
MAX_EPSILON = 1e4
"""Largest ε a budget or a charge may state."""


class LedgerError(ValueError):
    """An invalid budget, charge or ledger file; the message names the problem."""


class BudgetRefused(LedgerError):
    """A job would exceed the agency's privacy budget; the ledger is unchanged."""


def _epsilon(value: object, what: str) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise LedgerError(f"{what}: epsilon must be a number, got {value!r}")
    v = float(value)
    if not (math.isfinite(v) and 0 < v <= MAX_EPSILON):
        raise LedgerError(f"{what}: epsilon must be in (0, {MAX_EPSILON:g}], got {value!r}")
    return v


def _delta(value: object, what: str) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise LedgerError(f"{what}: delta must be a number, got {value!r}")
    v = float(value)
    if not (math.isfinite(v) and 0 <= v < 1):
        raise LedgerError(f"{what}: delta must be in [0, 1), got {value!r}")
    return v


@dataclass(frozen=True)
class Budget:
    """What an agency lets be spent on each of its datasets per period.

    Attributes
    ----------
    epsilon : float
        In ``(0, 1e4]``.
    delta : float
        In ``[0, 1)``.
    period : str
        One of :data:`PERIODS`.
    """

    epsilon: float
    delta: float
    period: str = "month"

    def __post_init__(self) -> None:
        _epsilon(self.epsilon, "budget")
        _delta(self.delta, "budget")
        if self.period not in PERIODS:
            raise LedgerError(f"budget: period must be one of {list(PERIODS)}, got {self.period!r}")

    @classmethod
    def from_mapping(cls, data: object, where: str = "budget") -> Budget:
        """Parse ``{epsilon, delta, period}`` (a TOML inline table).

        Raises
        ------
        LedgerError
            Naming ``where`` and the key at fault.
        """
        if not isinstance(data, Mapping):
            raise LedgerError(
                f'{where} must be a table like {{ epsilon = 8.0, delta = 1e-5, period = "month" }}'
            )
        unknown = sorted(set(data) - {"epsilon", "delta", "period"})
        if unknown:
            raise LedgerError(f"{where}: unknown key(s) {unknown}; allowed: epsilon, delta, period")
        for key in ("epsilon", "delta"):
            if key not in data:
                raise LedgerError(f"{where}: key {key!r} is required")
        period = data.get("period", "month")
        if period not in PERIODS:
            raise LedgerError(f"{where}: period must be one of {list(PERIODS)}, got {period!r}")
        return cls(_epsilon(data["epsilon"], where), _delta(data["delta"], where), str(period))


def period_of(period: str, when: dt.datetime | None = None) -> str:
    """The label of the period ``when`` (default: now, UTC) falls in.

    ``"2026-12-05"`` (day), ``"2026-W49"`` (ISO week), ``"2026-12"`` (month), ``"2026"``
    (year) or ``"total"``.
    """
    t = (when or dt.datetime.now(dt.UTC)).astimezone(dt.UTC)
    if period == "day":
        return t.strftime("%Y-%m-%d")
    if period == "week":
        year, week, _ = t.isocalendar()
        return f"{year}-W{week:02d}"
    if period == "month":
        return t.strftime("%Y-%m")
    if period == "year":
        return t.strftime("%Y")
    if period == "total":
        return "total"
    raise LedgerError(f"period must be one of {list(PERIODS)}, got {period!r}")


def privacy_cost(task: Any) -> tuple[float, float] | None:
    """The ``(ε, δ)`` a task's job states in its differential-privacy parameters.

    Learning tasks carry them in ``task.dp``, queries in ``task.request.params["dp"]``.

    Returns
    -------
    tuple of float or None
        None for a job without differential privacy.

    Raises
    ------
    LedgerError
        DP parameters that state no valid ``epsilon`` and ``delta``.
    """
    dp = getattr(task, "dp", None)
    if not dp:
        params = getattr(getattr(task, "request", None), "params", None) or {}
        dp = params.get("dp") if isinstance(params, Mapping) else None
    if not dp:
        return None
    if not isinstance(dp, Mapping) or "epsilon" not in dp or "delta" not in dp:
        raise LedgerError(
            "the job's differential-privacy parameters state no (epsilon, delta), so its cost "
            "cannot be charged to the agency's budget"
        )
    what = "the job's privacy parameters"
    return _epsilon(dp["epsilon"], what), _delta(dp["delta"], what)


def job_privacy_cost(privacy_json: str) -> tuple[float, float] | None:
    """The ``(ε, δ)`` a job's submitted DP settings state (``JobInfo.privacy_json``).

    Lets an agency charge a job at its very first assignment, before any round (a training
    job's exact preprocessing rounds included) is computed.

    Returns
    -------
    tuple of float or None
        None when the settings are empty or state no ``epsilon`` (e.g. a noise multiplier,
        whose ε is known only once the job is calibrated: the first noisy round is charged).

    Raises
    ------
    LedgerError
        Settings that are not a JSON object, or an invalid ``epsilon`` or ``delta``.
    """
    if not privacy_json:
        return None
    try:
        settings = json.loads(privacy_json)
    except ValueError as exc:
        raise LedgerError(f"the job's privacy settings are not JSON: {exc}") from exc
    if not isinstance(settings, Mapping):
        raise LedgerError("the job's privacy settings are not a JSON object")
    if settings.get("epsilon") is None:
        return None
    what = "the job's privacy settings"
    if "delta" not in settings:
        raise LedgerError(f"{what} state epsilon but no delta")
    return _epsilon(settings["epsilon"], what), _delta(settings["delta"], what)


@dataclass(frozen=True)
class Spend:
    """What was spent on one dataset in one period."""

    dataset: str
    period: str
    epsilon: float
    delta: float
    jobs: int


_SCHEMA = (
    "CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL)",
    """CREATE TABLE IF NOT EXISTS charges (
        id INTEGER PRIMARY KEY,
        dataset TEXT NOT NULL,
        period TEXT NOT NULL,
        job TEXT NOT NULL,
        epsilon REAL NOT NULL CHECK (epsilon > 0),
        delta REAL NOT NULL CHECK (delta >= 0 AND delta < 1),
        at TEXT NOT NULL,
        UNIQUE (dataset, job)
    )""",
)
_FORMAT = "fedcity.budget-ledger.v1"
_SLACK = 1e-9
"""Relative tolerance of the budget comparison (sums of floats)."""


class Ledger:
    """An agency's budget ledger file (created on first use).

    Parameters
    ----------
    path : path-like
    """

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = Path(path)
        self._lock = threading.Lock()
        self.path.parent.mkdir(parents=True, exist_ok=True)
        try:
            self._con = sqlite3.connect(
                self.path, isolation_level=None, check_same_thread=False, timeout=30.0
            )
            self._con.execute("PRAGMA journal_mode=WAL")
            self._con.execute("PRAGMA synchronous=FULL")
            with self._transaction() as con:
                for statement in _SCHEMA:
                    con.execute(statement)
                row = con.execute("SELECT value FROM meta WHERE key = 'format'").fetchone()
                if row is None:
                    con.execute("INSERT INTO meta (key, value) VALUES ('format', ?)", (_FORMAT,))
                elif row[0] != _FORMAT:
                    raise LedgerError(f"{self.path} is not a fedcity budget ledger")
        except sqlite3.Error as exc:
            raise LedgerError(f"budget ledger {self.path}: {exc}") from exc

    def __repr__(self) -> str:
        return f"<Ledger {self.path}>"

    @contextmanager
    def _transaction(self) -> Iterator[sqlite3.Connection]:
        with self._lock:
            con = self._con
            con.execute("BEGIN IMMEDIATE")
            try:
                yield con
            except BaseException:
                con.execute("ROLLBACK")
                raise
            con.execute("COMMIT")

    def charge(
        self,
        dataset: str,
        job: str,
        epsilon: float,
        delta: float,
        budget: Budget,
        *,
        when: dt.datetime | None = None,
    ) -> Spend | None:
        """Charge a job's ``(ε, δ)`` to ``dataset`` if the budget allows it (atomic).

        Parameters
        ----------
        dataset, job : str
        epsilon, delta : float
            The job's whole cost.
        budget : Budget
        when : datetime, optional
            The time that picks the period (default: now).

        Returns
        -------
        Spend or None
            The period's spend after the charge; None if this job was already charged to
            this dataset (nothing changes).

        Raises
        ------
        BudgetRefused
            The job would exceed the budget; nothing was written.
        LedgerError
            Invalid arguments or a storage failure (nothing was written).
        """
        if not isinstance(dataset, str) or not dataset or not isinstance(job, str) or not job:
            raise LedgerError("a charge names a non-empty dataset and job")
        eps, dlt = _epsilon(epsilon, "charge"), _delta(delta, "charge")
        label = period_of(budget.period, when)
        try:
            with self._transaction() as con:
                if con.execute(
                    "SELECT 1 FROM charges WHERE dataset = ? AND job = ?", (dataset, job)
                ).fetchone():
                    return None
                spent_e, spent_d, jobs = con.execute(
                    "SELECT COALESCE(SUM(epsilon), 0), COALESCE(SUM(delta), 0), COUNT(*) "
                    "FROM charges WHERE dataset = ? AND period = ?",
                    (dataset, label),
                ).fetchone()
                over = []
                if spent_e + eps > budget.epsilon * (1 + _SLACK):
                    over.append(f"epsilon {spent_e:g} + {eps:g} > {budget.epsilon:g}")
                if spent_d + dlt > budget.delta * (1 + _SLACK):
                    over.append(f"delta {spent_d:g} + {dlt:g} > {budget.delta:g}")
                if over:
                    raise BudgetRefused(
                        f"privacy budget of dataset {dataset!r} for {budget.period} {label} "
                        f"would be exceeded by job {job}: {'; '.join(over)} (budget "
                        f"epsilon={budget.epsilon:g}, delta={budget.delta:g} per "
                        f"{budget.period})"
                    )
                con.execute(
                    "INSERT INTO charges (dataset, period, job, epsilon, delta, at) "
                    "VALUES (?, ?, ?, ?, ?, ?)",
                    (dataset, label, job, eps, dlt, dt.datetime.now(dt.UTC).isoformat()),
                )
                _test_hold()
        except sqlite3.Error as exc:
            raise LedgerError(f"budget ledger {self.path}: {exc}") from exc
        return Spend(dataset, label, spent_e + eps, spent_d + dlt, jobs + 1)

    def spent(self) -> list[Spend]:
        """Every dataset's spend per period (newest period first, then by dataset)."""
        with self._lock:
            rows = self._con.execute(
                "SELECT dataset, period, SUM(epsilon), SUM(delta), COUNT(*) FROM charges "
                "GROUP BY dataset, period ORDER BY period DESC, dataset"
            ).fetchall()
        return [Spend(d, p, float(e), float(x), int(n)) for d, p, e, x, n in rows]

    def charges(self) -> list[dict[str, Any]]:
        """Every charge, oldest first."""
        with self._lock:
            rows = self._con.execute(
                "SELECT dataset, period, job, epsilon, delta, at FROM charges ORDER BY id"
            ).fetchall()
        keys = ("dataset", "period", "job", "epsilon", "delta", "at")
        return [dict(zip(keys, r, strict=True)) for r in rows]

    def close(self) -> None:
        """Close the file (idempotent)."""
        with self._lock:
            self._con.close()

    def __enter__(self) -> Ledger:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def read_spent(path: str | os.PathLike[str]) -> list[Spend]:
    """A ledger's spend, read without writing (for ``fedcity agent budget``).

    Raises
    ------
    LedgerError
        Missing or not a ledger.
    """
    p = Path(path)
    if not p.is_file():
        raise LedgerError(f"budget ledger {p} does not exist (no job has been charged yet?)")
    try:
        with closing(sqlite3.connect(f"{p.resolve().as_uri()}?mode=ro", uri=True)) as con:
            row = con.execute("SELECT value FROM meta WHERE key = 'format'").fetchone()
            if row is None or row[0] != _FORMAT:
                raise LedgerError(f"{p} is not a fedcity budget ledger")
            rows = con.execute(
                "SELECT dataset, period, SUM(epsilon), SUM(delta), COUNT(*) FROM charges "
                "GROUP BY dataset, period ORDER BY period DESC, dataset"
            ).fetchall()
    except sqlite3.Error as exc:
        raise LedgerError(f"cannot read budget ledger {p}: {exc}") from exc
    return [Spend(d, pr, float(e), float(x), int(n)) for d, pr, e, x, n in rows]


def _test_hold() -> None:
    target = os.environ.get(HOLD_ENV)
    if not target:
        return
    Path(target).write_text(str(os.getpid()))
    deadline = time.monotonic() + 60.0
    while time.monotonic() < deadline:  # killed here by the test
        time.sleep(0.05)
