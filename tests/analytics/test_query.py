"""Secure queries end to end (real 512-bit threshold Paillier): every aggregate equals pandas."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from analytics_data import DISTRICTS, KINDS, SCHEMA
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from fedcity.analytics import (
    LocalTable,
    QueryError,
    QueryFederation,
    QuerySpec,
    TableSchema,
    run_query,
)
from fedcity.analytics.local import cell_quantities
from fedcity.core.errors import JobFailed
from fedcity.core.precision import ExactIntegers
from fedcity.crypto.serde import encrypted_vector_from_bytes

FULL = {
    "table": "permits",
    "columns": {
        "district": {"levels": DISTRICTS[:5]},
        "kind": {"levels": KINDS},
        "units": {"clip": [0, 500]},
        "cost": {"clip": [0, 10000], "decimals": 2},
    },
    "group_by": ["district", "kind"],
    "where": [
        {"column": "kind", "op": "in", "value": ["new", "repair", "demo"]},
        {"column": "note", "op": "!=", "value": "late"},
    ],
    "aggregate": [
        {"name": "n", "func": "count"},
        {"name": "n_units", "func": "count", "column": "units"},
        {"name": "units", "func": "sum", "column": "units"},
        {"name": "cost", "func": "sum", "column": "cost"},
        {"name": "mean_cost", "func": "mean", "column": "cost"},
        {"name": "var_cost", "func": "var", "column": "cost"},
        {"name": "sd_units", "func": "std", "column": "units"},
        {
            "name": "per_k",
            "func": "ratio",
            "numerator": "units",
            "denominator": "cost",
            "scale": 1000,
        },
        {"name": "units_per_row", "func": "ratio", "numerator": "units"},
        {"name": "h", "func": "histogram", "column": "units", "bins": [0, 100, 250, 500]},
        {"name": "med_cost", "func": "quantile", "column": "cost", "q": 0.5, "tolerance": 0.5},
        {"name": "p90_units", "func": "quantile", "column": "units", "q": 0.9, "tolerance": 0.5},
    ],
    "disclosure": {"min_count": 1},
}


def _pooled(permits: pd.DataFrame) -> pd.DataFrame:
    keep = permits["kind"].isin(KINDS) & (permits["note"] != "late")
    return permits[keep]


@pytest.fixture(scope="module")
def full_result(permit_tables, key_3_of_5):
    return run_query(FULL, permit_tables, key=key_3_of_5, threshold=3)


def test_every_aggregate_equals_pandas(permits, full_result):
    pooled = _pooled(permits)
    inside = pooled[pooled["district"].isin(DISTRICTS[:5])]
    frame = full_result.frame
    assert full_result.out_of_domain == len(pooled) - len(inside)  # the D6 rows
    assert list(frame.columns[:2]) == ["district", "kind"] and len(frame) == 15
    groups = dict(iter(inside.groupby(["district", "kind"])))
    released = 0
    for row in frame.itertuples(index=False):
        part = groups.get((row.district, row.kind))
        agencies = 0 if part is None else part["agency"].nunique()
        assert row.n_agencies == agencies
        if agencies < 3:
            assert row.status == "suppressed" and "agencies" in row.reason
            assert pd.isna(row.n) and pd.isna(row.mean_cost)
            continue
        released += 1
        assert row.status == "released" and row.reason == ""
        # exact: counts, integer sums, histogram bins
        assert row.n == len(part)
        assert row.n_units == part["units"].count()
        assert row.units == int(part["units"].sum())
        counts, _ = np.histogram(part["units"].dropna().astype(float), bins=[0, 100, 250, 500])
        hist = frame.loc[(frame["district"] == row.district) & (frame["kind"] == row.kind)]
        got = hist[["h[0,100)", "h[100,250)", "h[250,500]"]].iloc[0].tolist()
        assert got == counts.tolist()
        # float precision: the cents are exact integers, so these agree to rounding
        assert row.cost == pytest.approx(part["cost"].sum(), rel=1e-12)
        assert row.mean_cost == pytest.approx(part["cost"].mean(), rel=1e-12)
        assert row.var_cost == pytest.approx(part["cost"].var(), rel=1e-9)
        assert row.sd_units == pytest.approx(part["units"].astype(float).std(), rel=1e-9)
        assert row.per_k == pytest.approx(
            part["units"].sum() / part["cost"].sum() * 1000, rel=1e-12
        )
        assert row.units_per_row == pytest.approx(part["units"].sum() / len(part), rel=1e-12)
        # quantiles within tolerance, inside their bracket
        med = part["cost"].median()
        assert abs(row.med_cost - med) <= 0.5
        assert row.med_cost_low - 1e-9 <= med <= row.med_cost_high + 1e-9
        p90 = part["units"].astype(float).quantile(0.9)
        assert abs(row.p90_units - p90) <= 0.5
        assert row.p90_units_low - 1e-9 <= p90 <= row.p90_units_high + 1e-9
    assert released >= 10


def test_histogram_columns_are_named_by_bins(full_result):
    cols = list(full_result.frame.columns)
    assert cols[11:14] == ["h[0,100)", "h[100,250)", "h[250,500]"]
    assert str(full_result.frame["n"].dtype) == "Int64"
    assert str(full_result.frame["units"].dtype) == "Int64"


def test_rounds_record_seconds_and_bytes(full_result):
    labels = [r.kind for r in full_result.history]
    assert labels[:2] == ["query.presence", "query.cells"]
    assert all(k == "query.quantile" for k in labels[2:]) and len(labels) > 2
    for r in full_result.history:
        assert r.bytes_per_agency > 0 and r.bytes_to_decryptors > 0
        assert r.seconds and all(s >= 0 for s in r.seconds.values())
        assert len(r.contributors) == 5 and len(r.decryptors) == 3
    assert full_result.bytes_total > 0
    rounds = full_result.rounds()
    assert list(rounds.columns) == ["round", "label", "agencies", "seconds", "bytes"]


def test_coordinator_sees_ciphertext_and_never_ineligible_cells(permits, permit_tables, key_3_of_5):
    spec = {**FULL, "aggregate": FULL["aggregate"][:3]}
    fed = QueryFederation(permit_tables, threshold=3, key=key_3_of_5)
    # agency-0 alone holds district D6: declare it so that its cells exist but are ineligible
    spec["columns"] = {**FULL["columns"], "district": {"levels": DISTRICTS}}
    result = fed.run(spec)
    rounds = fed.rounds(result.job_id)
    tpk = key_3_of_5[0]
    secrets = []
    for rnd in rounds:
        for name in rnd.contributors:
            v = fed.agencies[name].local_vector(rnd.task)
            secrets.append(v.astype("<f8").tobytes())
            q = rnd.task.spec.quantize(np.append(v, 0.0))
            secrets += [m.to_bytes(64, "big") for m in rnd.task.spec.pack(q)]
        for payload in [*rnd.contributions.values(), rnd.aggregate_bytes]:
            vec = encrypted_vector_from_bytes(payload, tpk.public_key)
            assert all(0 < c < tpk.public_key.nsquare for c in vec.ciphertexts)
    blob = b"\x00".join(fed.coordinator_storage(result.job_id))
    for needle in secrets:
        assert needle not in blob
    # D6 cells have one agency: never computed, never encrypted, never decrypted
    d6 = [DISTRICTS.index("D6") * 3 + k for k in range(3)]
    presence, cells = rounds[0], rounds[1]
    assert presence.released is not None
    codec = ExactIntegers(
        presence.task.request.params["value_bits"], presence.task.request.params["unit_bits"]
    )
    per_cell_agencies = codec.decode(
        presence.released[: presence.task.request.length], len(presence.contributors)
    )
    assert all(per_cell_agencies[c] <= 1 for c in d6)  # at most agency-0
    eligible = [c for r in cells.task.request.params["cells"] for c in range(r[0], r[1])]
    assert not set(d6) & set(eligible)
    typed = QuerySpec.from_dict(spec).validate_against(SCHEMA)
    bits = cells.task.request.params["limb_bits"]
    # five agencies (3 headroom bits): 36-bit limbs hold every row count in one limb and
    # pack these quantities into the fewest bits
    assert bits == 36 and cells.task.spec.slot_bits == 36 + 3
    per_cell = sum(q.n_limbs(bits) for q in cell_quantities(typed))
    assert cells.task.request.length == len(eligible) * per_cell + 1
    own = fed.agencies["agency-0"].tables["permits"].aggregate(typed)
    assert any(c in own.values for c in d6)  # agency-0 does hold rows there
    d6_rows = result.frame[result.frame["district"] == "D6"]
    assert (d6_rows["status"] == "suppressed").all() and d6_rows["n"].isna().all()
    assert d6_rows["reason"].str.contains("agencies: ").all()


def test_encryption_off_gives_the_same_table(permit_tables, full_result):
    plain = run_query(FULL, permit_tables, encrypted=False, threshold=3)
    pd.testing.assert_frame_equal(plain.frame, full_result.frame)


def test_primary_suppression_with_default_min_count(permits, permit_tables, key_3_of_5):
    spec = {**FULL, "aggregate": FULL["aggregate"][:3], "disclosure": {}}
    result = run_query(spec, permit_tables, key=key_3_of_5, threshold=3)
    inside = _pooled(permits)
    sizes = inside.groupby(["district", "kind"]).size()
    frame = result.frame.set_index(["district", "kind"])
    small = [k for k, v in sizes.items() if 0 < v < 10 and k[0] != "D6"]
    computed_small = [k for k in small if frame.loc[k, "n_agencies"] >= 3]
    for k in computed_small:
        assert frame.loc[k, "status"] == "suppressed"
        assert "primary: count < 10" in frame.loc[k, "reason"]
    for k, row in frame[frame["status"] == "released"].iterrows():
        assert row["n"] == sizes[k] and sizes[k] >= 10


def test_month_grouping_and_date_filter(permits, permit_tables, key_3_of_5):
    spec = {
        "table": "permits",
        "columns": {"day": {"from": "2020-01", "to": "2020-06"}, "units": {"clip": [0, 500]}},
        "group_by": [{"column": "day", "by": "month"}],
        "where": [{"column": "day", "op": ">=", "value": "2020-02-15"}],
        "aggregate": [
            {"name": "n", "func": "count"},
            {"name": "units", "func": "sum", "column": "units"},
        ],
        "disclosure": {"min_count": 1},
    }
    result = run_query(spec, permit_tables, key=key_3_of_5, threshold=3)
    days = pd.to_datetime(permits["day"])
    sel = permits[days >= "2020-02-15"].assign(month=days.dt.strftime("%Y-%m"))
    inside = sel[sel["month"] <= "2020-06"]
    assert result.out_of_domain == len(sel) - len(inside)
    frame = result.frame.set_index("day_month")
    assert frame.loc["2020-01", "n"] == 0 and frame.loc["2020-01", "n_agencies"] == 0
    for month, part in inside.groupby("month"):
        assert frame.loc[month, "n"] == len(part)
        assert frame.loc[month, "units"] == int(part["units"].sum())


def test_query_without_group_by_is_one_cell(permits, permit_tables, key_3_of_5):
    spec = {
        "table": "permits",
        "columns": {"units": {"clip": [0, 500]}},
        "aggregate": [
            {"name": "n", "func": "count"},
            {"name": "mu", "func": "mean", "column": "units"},
        ],
    }
    result = run_query(spec, permit_tables, key=key_3_of_5, threshold=3)
    assert len(result.frame) == 1
    assert result.frame.loc[0, "n"] == len(permits)
    assert result.frame.loc[0, "mu"] == pytest.approx(permits["units"].mean(), rel=1e-12)
    assert result.out_of_domain == 0


def test_bad_spec_is_refused_before_any_agency_works(permit_tables, key_3_of_5):
    fed = QueryFederation(permit_tables, threshold=3, key=key_3_of_5)
    bad = {
        **FULL,
        "where": [],
        "aggregate": [{"name": "m", "func": "mean", "column": "note"}],
        "columns": {**FULL["columns"], "note": {"clip": [0, 1]}},
    }
    with pytest.raises(QueryError, match=r"\(mean\) on text column 'note'"):
        fed.run(bad)
    with pytest.raises(QueryError, match="unknown table 'roads'"):
        fed.run({**FULL, "table": "roads"})
    assert all(not node.served for node in fed.agencies.values())


def test_federation_arguments_are_checked(permit_tables, key_2_of_3):
    with pytest.raises(QueryError, match="agency names must be unique"):
        QueryFederation([permit_tables[0], permit_tables[0]], encrypted=False)
    with pytest.raises(QueryError, match="the given key is 2-of-3"):
        QueryFederation(permit_tables, key=key_2_of_3, threshold=3)
    other = LocalTable(
        pd.DataFrame({"a": [1]}), TableSchema("permits", {"a": "integer"}), agency="x"
    )
    with pytest.raises(QueryError, match="must be equal"):
        QueryFederation([permit_tables[0], other], encrypted=False)


def test_agency_with_a_stale_table_fails_the_job_naming_it(permit_tables, key_3_of_5):
    """An agency whose table lacks a column the others have fails the job with its reason."""
    fed = QueryFederation(permit_tables, threshold=3, key=key_3_of_5)
    fed.agencies["agency-2"].tables.clear()
    with pytest.raises(JobFailed, match="agency 'agency-2' holds no table 'permits'"):
        fed.run(FULL)


@settings(
    max_examples=12, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    st.lists(
        st.lists(
            st.tuples(st.sampled_from("abc"), st.sampled_from("xy"), st.integers(-5, 40)),
            max_size=30,
        ),
        min_size=3,
        max_size=3,
    )
)
def test_counts_and_sums_match_pandas_for_any_tables(key_2_of_3, rows_per_agency):
    schema = TableSchema("t", {"g": "category", "h": "category", "v": "integer"})
    frames = [
        pd.DataFrame(rows, columns=["g", "h", "v"]).astype({"v": "int64"})
        if rows
        else pd.DataFrame(
            {
                "g": pd.Series([], dtype=object),
                "h": pd.Series([], dtype=object),
                "v": pd.Series([], dtype="int64"),
            }
        )
        for rows in rows_per_agency
    ]
    tables = [LocalTable(f, schema, agency=f"a{i}") for i, f in enumerate(frames)]
    spec = {
        "table": "t",
        "columns": {
            "g": {"levels": ["a", "b", "c"]},
            "h": {"levels": ["x", "y"]},
            "v": {"clip": [-5, 40]},
        },
        "group_by": ["g", "h"],
        "aggregate": [{"name": "n", "func": "count"}, {"name": "s", "func": "sum", "column": "v"}],
        "disclosure": {"min_count": 1},
    }
    result = run_query(spec, tables, key=key_2_of_3, threshold=2, min_agencies=2)
    pooled = pd.concat([f.assign(agency=i) for i, f in enumerate(frames)], ignore_index=True)
    for row in result.frame.itertuples(index=False):
        part = pooled[(pooled["g"] == row.g) & (pooled["h"] == row.h)]
        assert row.n_agencies == part["agency"].nunique()
        if row.n_agencies >= 2:
            assert row.n == len(part) and row.s == int(part["v"].sum())
        elif row.n_agencies == 1:
            assert row.status == "suppressed" and pd.isna(row.n)
        else:
            assert row.n == 0


def test_quantile_brackets_beyond_one_round_wait_for_the_next(
    permits, permit_tables, key_3_of_5, monkeypatch
):
    import fedcity.analytics.query as query_module

    monkeypatch.setattr(query_module, "MAX_TARGETS", 2)
    spec = {
        **FULL,
        "aggregate": [
            {"name": "n", "func": "count"},
            {"name": "med", "func": "quantile", "column": "units", "q": 0.5, "tolerance": 0.5},
        ],
    }
    result = run_query(spec, permit_tables, key=key_3_of_5, threshold=3)
    rounds = [r for r in result.history if r.kind == "query.quantile"]
    assert len(rounds) > 10
    inside = _pooled(permits)
    for (d, k), part in inside.groupby(["district", "kind"]):
        row = result.frame[(result.frame["district"] == d) & (result.frame["kind"] == k)]
        if len(row) and row["status"].iloc[0] == "released":
            assert abs(row["med"].iloc[0] - part["units"].astype(float).median()) <= 0.5


def test_concurrent_local_queries_on_one_table(permit_tables):
    from concurrent.futures import ThreadPoolExecutor

    table = permit_tables[0]
    specs = [
        QuerySpec.from_dict({**FULL, "disclosure": {"min_count": c}}).validate_against(SCHEMA)
        for c in range(1, 9)
    ]
    with ThreadPoolExecutor(4) as pool:
        results = list(pool.map(table.aggregate, specs))
    assert all(r.values == results[0].values for r in results)


def test_run_query_reads_a_toml_file(tmp_path, permits, permit_tables):
    path = tmp_path / "q.toml"
    path.write_text(
        'table = "permits"\n'
        'group_by = ["kind"]\n'
        "[columns.kind]\n"
        'levels = ["new", "repair", "demo"]\n'
        "[[aggregate]]\n"
        'name = "n"\n'
        'func = "count"\n'
    )
    result = run_query(path, permit_tables, encrypted=False, threshold=3)
    sizes = permits.groupby("kind").size()
    assert result.frame.set_index("kind")["n"].to_dict() == sizes.to_dict()


def test_releases_with_too_many_cells_to_protect_fail_clearly():
    from fedcity.analytics.query import MAX_PROTECTED_CELLS, _suppress
    from fedcity.analytics.spec import QuerySpec

    levels = [str(i) for i in range(40)]
    spec = QuerySpec.from_dict(
        {
            "table": "t",
            "group_by": ["a", "b"],
            "columns": {"a": {"levels": levels}, "b": {"levels": levels[:20]}},
            "aggregate": [{"name": "n", "func": "count"}],
        }
    )
    counts = np.full((40, 20), 50.0)
    agencies = np.full((40, 20), 3)
    counts.flat[: MAX_PROTECTED_CELLS + 1] = 3.0  # small cells to protect
    with pytest.raises(JobFailed, match=r"301 cells are below the disclosure thresholds"):
        _suppress(spec, counts, agencies, 2)
    counts.flat[:] = 50.0
    counts.flat[:5] = 3.0
    mask, _ = _suppress(spec, counts, agencies, 2)
    assert mask.sum() >= 5


def test_large_three_dimensional_queries_without_dp_are_refused():
    from fedcity.analytics.spec import QueryError, QuerySpec

    levels = [str(i) for i in range(11)]
    with pytest.raises(QueryError, match=r"1331 cells in 3 dimensions"):
        QuerySpec.from_dict(
            {
                "table": "t",
                "group_by": ["a", "b", "c"],
                "columns": {c: {"levels": levels} for c in "abc"},
                "aggregate": [{"name": "n", "func": "count"}],
            }
        )
