"""QueryResult: JSON round trip, pivot, exports, charts and the printed table."""

from __future__ import annotations

import json

import pandas as pd
import pytest
from analytics_data import DISTRICTS, KINDS

from fedcity.analytics import QueryError, QueryResult, run_query

SPEC = {
    "table": "permits",
    "columns": {
        "district": {"levels": DISTRICTS},
        "kind": {"levels": KINDS},
        "units": {"clip": [0, 500]},
        "cost": {"clip": [0, 10000], "decimals": 2},
    },
    "group_by": ["district", "kind"],
    "aggregate": [
        {"name": "n", "func": "count"},
        {"name": "mean_cost", "func": "mean", "column": "cost"},
        {"name": "h", "func": "histogram", "column": "units", "bins": [0, 100, 250, 500]},
        {"name": "med", "func": "quantile", "column": "units", "q": 0.5, "tolerance": 5},
    ],
}


@pytest.fixture(scope="module")
def result(permit_tables, key_3_of_5):
    return run_query(SPEC, permit_tables, key=key_3_of_5, threshold=3)


def test_json_round_trip(result):
    text = result.to_json()
    again = QueryResult.from_json(text)
    pd.testing.assert_frame_equal(again.frame, result.frame)
    assert again.spec == result.spec
    assert again.out_of_domain == result.out_of_domain
    assert [r.kind for r in again.history] == [r.kind for r in result.history]
    assert again.history[0].seconds == result.history[0].seconds
    assert again.to_json() == text


def test_from_json_refuses_other_documents(result):
    with pytest.raises(QueryError, match="not valid JSON"):
        QueryResult.from_json("{")
    with pytest.raises(QueryError, match="not a fedcity query result"):
        QueryResult.from_json(json.dumps({"format": "fedcity.result"}))
    data = json.loads(result.to_json())
    data["rows"] = data["rows"][:-1]
    with pytest.raises(QueryError, match="rows for 18 cells"):
        QueryResult.from_json(json.dumps(data))
    data = json.loads(result.to_json())
    data["rows"][0] = data["rows"][0][:-1]
    with pytest.raises(QueryError, match="do not match its columns"):
        QueryResult.from_json(json.dumps(data))


def test_suppressed_cells_say_why(result):
    frame = result.frame
    d6 = frame[frame["district"] == "D6"]
    assert (d6["status"] == "suppressed").all()
    assert d6["reason"].str.startswith("agencies: 1 < 3").all()
    released = frame[frame["status"] == "released"]
    assert (released["reason"] == "").all() and (released["n"] >= 10).all()
    withheld = frame[frame["status"] == "suppressed"]
    assert withheld["n"].isna().all() and withheld["med"].isna().all()


def test_pivot_is_a_cross_tab(result):
    table = result.pivot("n")
    assert list(table.index) == DISTRICTS and list(table.columns) == KINDS
    frame = result.frame.set_index(["district", "kind"])
    for d in DISTRICTS:
        for k in KINDS:
            a, b = table.loc[d, k], frame.loc[(d, k), "n"]
            assert (pd.isna(a) and pd.isna(b)) or a == b
    with pytest.raises(QueryError, match="not an aggregate column"):
        result.pivot("district")


def test_exports(tmp_path, result):
    result.to_csv(tmp_path / "r.csv")
    result.to_parquet(tmp_path / "r.parquet")
    back = pd.read_parquet(tmp_path / "r.parquet")
    pd.testing.assert_frame_equal(back, result.frame, check_dtype=False)
    csv = pd.read_csv(tmp_path / "r.csv")
    assert list(csv.columns) == list(result.frame.columns)


@pytest.mark.parametrize("aggregate", ["n", "h", "med", "mean_cost"])
@pytest.mark.parametrize("ext", ["png", "svg"])
def test_plot_writes_png_and_svg(tmp_path, result, aggregate, ext):
    path = result.plot(tmp_path / f"chart.{ext}", aggregate)
    data = path.read_bytes()
    assert data.startswith(b"\x89PNG") if ext == "png" else b"<svg" in data[:2000]


def test_plot_refuses_unknown_formats_and_aggregates(tmp_path, result):
    with pytest.raises(QueryError, match=r"\.png or \.svg"):
        result.plot(tmp_path / "chart.pdf")
    with pytest.raises(QueryError, match="no aggregate 'zz'"):
        result.plot(tmp_path / "chart.png", "zz")


def test_str_is_a_readable_table(result):
    text = str(result)
    first = text.splitlines()[0]
    assert first.startswith("query on 'permits': 18 cells, ")
    assert "suppressed" in text and "agencies: 1 < 3" in text
    assert "district" in text and "mean_cost" in text
