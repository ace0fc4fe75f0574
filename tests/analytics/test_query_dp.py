"""Queries with differential privacy: one noisy round, the configured noise scale, the budget."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from fedcity.analytics import (
    LocalTable,
    QueryError,
    QueryFederation,
    QueryResult,
    TableSchema,
    query_job_from_spec,
    run_query,
)
from fedcity.core.errors import JobFailed
from fedcity.privacy import share_variance

SCHEMA = TableSchema("t", {"g": "category", "v": "integer"})
LEVELS = [f"L{i:03d}" for i in range(400)]
PRIVACY = {"epsilon": 1.0, "delta": 1e-6, "noise": "gaussian"}


@pytest.fixture(scope="module")
def tables():
    rng = np.random.default_rng(3)
    out = []
    for i in range(5):
        n = 300
        frame = pd.DataFrame({"g": rng.choice(LEVELS[:20], n), "v": rng.integers(0, 10, n)})
        out.append(LocalTable(frame, SCHEMA, agency=f"a{i}"))
    return out


def _spec(**extra):
    return {
        "table": "t",
        "columns": {"g": {"levels": LEVELS}, "v": {"clip": [0, 10]}},
        "group_by": ["g"],
        "aggregate": [
            {"name": "n", "func": "count"},
            {"name": "s", "func": "sum", "column": "v"},
            {"name": "h", "func": "histogram", "column": "v", "bins": [0, 5, 10]},
        ],
        "disclosure": {"min_count": 1},
        **extra,
    }


def _pooled(tables):
    frames = [t._con.execute("SELECT g, v FROM __data").df() for t in tables]
    return pd.concat(frames, ignore_index=True)


def test_noise_has_the_configured_scale(tables):
    fed = QueryFederation(tables, threshold=3, encrypted=False)
    result = fed.run(_spec(privacy=PRIVACY))
    assert [r.kind for r in result.history] == ["query.cells"]  # no exact presence round
    plan = fed.drivers[result.job_id].algorithm.plan_
    true = _pooled(tables).groupby("g").size().reindex(LEVELS, fill_value=0)
    noise = result.frame.set_index("g")["n"].astype(float) - true.astype(float)
    # five agencies each add a share: the summed noise has 5 share variances
    expected = np.sqrt(5 * share_variance("gaussian", plan.share["n"]))
    assert np.std(noise.to_numpy()) == pytest.approx(expected, rel=0.2)
    assert abs(np.mean(noise.to_numpy())) < 4 * expected / np.sqrt(len(LEVELS))
    # the result states the guarantee and the (lower-bound) noise scale per cell
    assert result.privacy["epsilon"] == 1.0 and result.privacy["delta"] == 1e-6
    assert result.privacy["neighbouring"] == "add or remove one row of one agency's table"
    scale = result.frame["noise_scale"].to_numpy()
    assert np.allclose(scale, plan.stddev_per_block["n"])
    assert scale[0] <= expected  # stated for the fewest (3) agencies
    assert result.privacy["stddev_per_aggregate"]["s"] == pytest.approx(
        10 * plan.stddev_per_block["n"]
    )
    assert result.frame["n_agencies"].isna().all()  # not released under DP
    again = QueryResult.from_json(result.to_json())
    assert again.privacy == result.privacy


def test_every_cell_travels_as_one_noised_entry(tables):
    fed = QueryFederation(tables, threshold=3, encrypted=False)
    result = fed.run(_spec(privacy=PRIVACY))
    rnd = fed.rounds(result.job_id)[0]
    # n, nn:v, s:v and two histogram bins per cell, then the out-of-domain total: no limbs
    assert rnd.task.request.length == len(LEVELS) * 5 + 1
    v = fed.agencies["a0"].local_vector(rnd.task)
    w = fed.agencies["a0"].local_vector(rnd.task)
    assert not np.array_equal(v, w)  # a fresh share every time (OS randomness)


def test_budget_is_charged_once_per_query(tables):
    job = query_job_from_spec(_spec(), {**PRIVACY, "queries": 1})
    fed = QueryFederation(tables, threshold=3, encrypted=False)
    first = job.algorithm(3)
    accountant = first.accountant
    from fedcity.learn.driver import JobDriver

    def drive(algorithm):
        driver = JobDriver(
            "j",
            algorithm,
            fed.scheme,
            agencies=list(fed.agencies),
            min_agencies=3,
            share_index_of={},
            n_length=2048,
        )
        task = driver.start()
        while task is not None:
            for name in driver.awaiting_contributions():
                driver.submit_contribution(name, fed.agencies[name].contribute(task))
            driver.close_collection()
            task = driver.task

    drive(first)
    assert accountant.spent[0] == pytest.approx(first.plan_.epsilon_planned, rel=1e-6)
    with pytest.raises(JobFailed, match="privacy budget exhausted"):
        drive(job.algorithm(3, accountant=accountant))


def test_dp_refuses_what_it_cannot_serve():
    for agg, word in [
        ({"name": "sd", "func": "std", "column": "v"}, "std"),
        ({"name": "q", "func": "quantile", "column": "v", "q": 0.5, "tolerance": 1}, "quantile"),
    ]:
        spec = {**_spec(), "aggregate": [agg]}
        with pytest.raises(QueryError, match=rf"privacy: aggregate '\w+': {word} is not available"):
            query_job_from_spec(spec, PRIVACY)
    with pytest.raises(QueryError, match=r"privacy: unknown key\(s\) \['eps'\]"):
        query_job_from_spec(_spec(), {"eps": 1})
    with pytest.raises(QueryError, match="epsilon and delta are required"):
        query_job_from_spec(_spec(), {"epsilon": 1.0})
    with pytest.raises(QueryError, match="privacy is given twice and differs"):
        query_job_from_spec(_spec(privacy=PRIVACY), {**PRIVACY, "epsilon": 2.0})


def test_dp_query_with_encryption(tables, key_3_of_5):
    result = run_query(_spec(privacy=PRIVACY), tables, key=key_3_of_5, threshold=3)
    true = _pooled(tables).groupby("g").size().reindex(LEVELS, fill_value=0)
    noise = result.frame.set_index("g")["n"].astype(float) - true.astype(float)
    assert 0 < np.std(noise.to_numpy()) < 100
