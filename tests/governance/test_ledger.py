"""The privacy-budget ledger: refusals leave it unchanged, charges are atomic (also kill -9)."""

from __future__ import annotations

import datetime as dt
import os
import signal
import sqlite3
import subprocess
import sys
import time

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import fedcity.learn  # noqa: F401  (registers the vetted steps)
from fedcity.core.tasks import Task, TaskRequest
from fedcity.crypto import PackingSpec
from fedcity.governance.ledger import (
    HOLD_ENV,
    Budget,
    BudgetRefused,
    Ledger,
    LedgerError,
    period_of,
    privacy_cost,
    read_spent,
)

DEC = dt.datetime(2026, 12, 5, 10, 0, tzinfo=dt.UTC)
JAN = dt.datetime(2027, 1, 2, 10, 0, tzinfo=dt.UTC)


def test_budget_parsing():
    b = Budget.from_mapping({"epsilon": 8, "delta": 1e-5})
    assert b == Budget(8.0, 1e-5, "month")
    for bad, message in [
        ({"epsilon": 0, "delta": 1e-5}, "epsilon must be in"),
        ({"epsilon": float("inf"), "delta": 1e-5}, "epsilon must be in"),
        ({"epsilon": 1.0, "delta": 1.0}, "delta must be in"),
        ({"epsilon": 1.0}, "'delta' is required"),
        ({"epsilon": 1.0, "delta": 0, "period": "fortnight"}, "period must be one of"),
        ({"epsilon": 1.0, "delta": 0, "per": "month"}, "unknown key"),
        ({"epsilon": True, "delta": 0}, "must be a number"),
        ("8.0", "must be a table"),
    ]:
        with pytest.raises(LedgerError, match=message):
            Budget.from_mapping(bad, "[policy] budget")


def test_periods():
    assert period_of("month", DEC) == "2026-12"
    assert period_of("day", DEC) == "2026-12-05"
    assert period_of("week", DEC) == "2026-W49"
    assert period_of("year", DEC) == "2026"
    assert period_of("total", DEC) == "total"


def test_charges_within_budget_and_refusal_leaves_ledger_unchanged(tmp_path):
    budget = Budget(2.0, 1e-5, "month")
    with Ledger(tmp_path / "l.sqlite") as ledger:
        s = ledger.charge("inspections", "job-a", 1.0, 4e-6, budget, when=DEC)
        assert s is not None and (s.epsilon, s.jobs) == (1.0, 1)
        assert ledger.charge("inspections", "job-a", 1.0, 4e-6, budget, when=DEC) is None
        s = ledger.charge("inspections", "job-b", 0.75, 4e-6, budget, when=DEC)
        assert s is not None and s.epsilon == pytest.approx(1.75)
        before = ledger.charges()
        with pytest.raises(BudgetRefused, match=r"epsilon 1.75 \+ 0.5 > 2"):
            ledger.charge("inspections", "job-c", 0.5, 1e-6, budget, when=DEC)
        with pytest.raises(BudgetRefused, match="delta"):
            ledger.charge("inspections", "job-d", 0.1, 3e-6, budget, when=DEC)
        assert ledger.charges() == before
        # another dataset, or the next month, has its own budget
        assert ledger.charge("permits", "job-c", 0.5, 1e-6, budget, when=DEC) is not None
        assert ledger.charge("inspections", "job-c", 0.5, 1e-6, budget, when=JAN) is not None
    spent = {(s.dataset, s.period): s for s in read_spent(tmp_path / "l.sqlite")}
    assert spent["inspections", "2026-12"].jobs == 2
    assert spent["inspections", "2027-01"].epsilon == 0.5
    assert spent["permits", "2026-12"].delta == 1e-6


@settings(max_examples=40, deadline=None)
@given(st.lists(st.floats(0.01, 3.0), min_size=1, max_size=12))
def test_never_more_than_the_budget(tmp_path_factory, costs):
    budget = Budget(5.0, 1.0 - 1e-9, "total")
    path = tmp_path_factory.mktemp("l") / "l.sqlite"
    accepted = 0.0
    with Ledger(path) as ledger:
        for i, eps in enumerate(costs):
            try:
                ledger.charge("d", f"job-{i}", eps, 0.0, budget)
                accepted += eps
            except BudgetRefused:
                assert accepted + eps > 5.0
        total = sum(c["epsilon"] for c in ledger.charges())
    assert total == pytest.approx(accepted)
    assert total <= 5.0 * (1 + 1e-9)


def _task(dp=None, params=None):
    request = TaskRequest("stats.mean", params or {}, 3, clip=10.0)
    spec = PackingSpec(clip=10.0, precision_bits=16, max_summands=3, n_length=512)
    return Task("job", 0, request, spec, dp=dp)


def test_privacy_cost_of_tasks():
    assert privacy_cost(_task()) is None
    dp = {"clip_norm": 1.0, "noise": "gaussian", "share": 2.0, "epsilon": 1.5, "delta": 1e-6}
    assert privacy_cost(_task(dp=dp)) == (1.5, 1e-6)
    query = {"dp": {"noise": "gaussian", "share": {}, "epsilon": 0.5, "delta": 1e-7}}
    assert privacy_cost(_task(params=query)) == (0.5, 1e-7)
    with pytest.raises(LedgerError, match="state no"):
        privacy_cost(_task(dp={"clip_norm": 1.0, "noise": "gaussian", "share": 2.0}))
    with pytest.raises(LedgerError, match="epsilon must be in"):
        privacy_cost(_task(dp={**dp, "epsilon": -1}))


def test_ledger_file_checks(tmp_path):
    (tmp_path / "x.sqlite").write_bytes(b"")
    con = sqlite3.connect(tmp_path / "y.sqlite")
    con.execute("CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL)")
    con.execute("INSERT INTO meta VALUES ('format', 'something else')")
    con.commit()
    con.close()
    with pytest.raises(LedgerError, match="not a fedcity budget ledger"):
        Ledger(tmp_path / "y.sqlite")
    with pytest.raises(LedgerError, match="does not exist"):
        read_spent(tmp_path / "none.sqlite")


_CHARGER = """
import sys
from fedcity.governance.ledger import Budget, Ledger
ledger = Ledger(sys.argv[1])
ledger.charge("inspections", sys.argv[2], float(sys.argv[3]), 1e-6, Budget(2.0, 1e-5, "total"))
print("committed")
"""


def test_kill_9_in_the_middle_of_charging_leaves_no_charge(tmp_path):
    path = tmp_path / "ledger.sqlite"
    with Ledger(path) as ledger:
        ledger.charge("inspections", "earlier", 0.5, 1e-6, Budget(2.0, 1e-5, "total"))
        before = ledger.charges()
    hold = tmp_path / "inside-transaction"
    env = {**os.environ, HOLD_ENV: str(hold)}
    proc = subprocess.Popen(
        [sys.executable, "-c", _CHARGER, str(path), "killed", "1.0"],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    try:
        deadline = time.monotonic() + 60
        while not hold.exists():  # the charge is written, not committed
            assert proc.poll() is None, proc.stderr.read() if proc.stderr else ""
            assert time.monotonic() < deadline, "the charger never reached its transaction"
            time.sleep(0.02)
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == -signal.SIGKILL
    assert os.path.exists(str(path) + "-wal")  # the killed writer left its WAL behind
    with Ledger(path) as ledger:
        assert ledger.charges() == before  # no trace of the killed charge
        assert ledger._con.execute("PRAGMA integrity_check").fetchone() == ("ok",)
        # not locked, and the budget still counts only the committed charge
        s = ledger.charge("inspections", "killed", 1.0, 1e-6, Budget(2.0, 1e-5, "total"))
        assert s is not None and s.epsilon == pytest.approx(1.5)
    # the same script without the hook commits
    done = subprocess.run(
        [sys.executable, "-c", _CHARGER, str(path), "after", "0.5"],
        capture_output=True,
        text=True,
        timeout=60,
        env={k: v for k, v in os.environ.items() if k != HOLD_ENV},
    )
    assert done.returncode == 0 and "committed" in done.stdout, done.stderr
    with Ledger(path) as ledger:
        assert [c["job"] for c in ledger.charges()] == ["earlier", "killed", "after"]


_RACER = """
import sys
from fedcity.governance.ledger import Budget, BudgetRefused, Ledger
ledger = Ledger(sys.argv[1])
for i in range(5):
    try:
        ledger.charge("inspections", f"{sys.argv[2]}-{i}", 0.3, 0.0, Budget(2.0, 0.5, "total"))
    except BudgetRefused:
        pass
"""


def test_concurrent_agents_processes_never_overspend(tmp_path):
    path = tmp_path / "ledger.sqlite"
    Ledger(path).close()
    env = {k: v for k, v in os.environ.items() if k != HOLD_ENV}
    procs = [
        subprocess.Popen([sys.executable, "-c", _RACER, str(path), f"p{n}"], env=env)
        for n in range(4)
    ]
    assert [p.wait(timeout=120) for p in procs] == [0, 0, 0, 0]
    with Ledger(path) as ledger:
        charges = ledger.charges()
    assert len(charges) == 6  # 6 x 0.3 <= 2.0 < 7 x 0.3, whoever won the races
    assert sum(c["epsilon"] for c in charges) == pytest.approx(1.8)
