"""Query specifications: parsing, canonical JSON, and every bad-spec class refused precisely."""

from __future__ import annotations

import copy
import json

import pytest

from fedcity.analytics import QueryError, QuerySpec, TableSchema
from fedcity.analytics.spec import MAX_AGGREGATES, MAX_CELLS, MAX_LEVELS

SCHEMA = TableSchema(
    "inspections",
    {
        "ward": "category",
        "facility": "category",
        "critical": "integer",
        "score": "float",
        "inspection_date": "date",
        "name": "text",
    },
)

BASE = {
    "table": "inspections",
    "columns": {
        "ward": {"levels": ["1", "2", "3"]},
        "facility": {"levels": ["Restaurant", "Grocery"]},
        "critical": {"clip": [0, 1]},
        "score": {"clip": [0, 100], "decimals": 2},
    },
    "group_by": ["ward", "facility"],
    "where": [
        {"column": "facility", "op": "in", "value": ["Restaurant"]},
        {"column": "score", "op": ">=", "value": 10},
    ],
    "aggregate": [
        {"name": "n", "func": "count"},
        {"name": "crit", "func": "sum", "column": "critical"},
        {"name": "mean_score", "func": "mean", "column": "score"},
        {"name": "sd", "func": "std", "column": "score"},
        {"name": "rate", "func": "ratio", "numerator": "critical", "scale": 1000},
        {"name": "h", "func": "histogram", "column": "score", "bins": [0, 10, 50, 100]},
        {"name": "med", "func": "quantile", "column": "score", "q": 0.5, "tolerance": 0.1},
    ],
    "disclosure": {"min_count": 5},
}

TOML = """
table = "inspections"
group_by = ["ward", "facility"]
where = [ {column="facility", op="in", value=["Restaurant"]}, {column="score", op=">=", value=10} ]

[columns.ward]
levels = ["1", "2", "3"]
[columns.facility]
levels = ["Restaurant", "Grocery"]
[columns.critical]
clip = [0, 1]
[columns.score]
clip = [0, 100]
decimals = 2

[[aggregate]]
name = "n"
func = "count"
[[aggregate]]
name = "crit"
func = "sum"
column = "critical"
[[aggregate]]
name = "mean_score"
func = "mean"
column = "score"
[[aggregate]]
name = "sd"
func = "std"
column = "score"
[[aggregate]]
name = "rate"
func = "ratio"
numerator = "critical"
scale = 1000
[[aggregate]]
name = "h"
func = "histogram"
column = "score"
bins = [0, 10, 50, 100]
[[aggregate]]
name = "med"
func = "quantile"
column = "score"
q = 0.5
tolerance = 0.1

[disclosure]
min_count = 5
"""


def spec_with(**changes):
    data = copy.deepcopy(BASE)
    for key, value in changes.items():
        data[key] = value
    return data


def test_toml_and_dict_give_the_same_canonical_spec(tmp_path):
    a = QuerySpec.from_dict(BASE)
    b = QuerySpec.from_toml(TOML)
    path = tmp_path / "q.toml"
    path.write_text(TOML)
    c = QuerySpec.from_toml(path)
    assert a == b == c
    assert a.to_json() == b.to_json() == c.to_json()
    assert a.dims == (3, 2) and a.n_cells == 6


def test_canonical_json_round_trip_and_key_order():
    spec = QuerySpec.from_dict(BASE)
    again = QuerySpec.from_json(spec.to_json())
    assert again == spec and again.to_json() == spec.to_json()
    shuffled = json.loads(json.dumps(BASE))
    shuffled = dict(reversed(list(shuffled.items())))
    assert QuerySpec.from_dict(shuffled).to_json() == spec.to_json()
    assert " " not in spec.to_json().replace("Restaurant", "")  # compact


def test_validate_against_fills_types_and_decimals():
    spec = QuerySpec.from_dict(BASE).validate_against(SCHEMA)
    assert spec.columns["critical"].type == "integer"
    assert spec.columns["critical"].decimals == 0
    assert spec.columns["score"].decimals == 2
    assert spec.columns["ward"].type == "category"
    # an untyped float column defaults to 6 decimals when the range allows
    loose = QuerySpec.from_dict(spec_with(columns={**BASE["columns"], "score": {"clip": [0, 100]}}))
    assert loose.resolved().columns["score"].decimals == 6
    wide = QuerySpec.from_dict(spec_with(columns={**BASE["columns"], "score": {"clip": [0, 1e9]}}))
    assert wide.resolved().columns["score"].decimals == 3  # 1e12 units fit 2^40


def test_month_levels_from_to():
    data = spec_with(
        columns={**BASE["columns"], "inspection_date": {"from": "2019-11", "to": "2020-02"}},
        group_by=[{"column": "inspection_date", "by": "month"}],
    )
    spec = QuerySpec.from_dict(data).validate_against(SCHEMA)
    assert spec.columns["inspection_date"].levels == ("2019-11", "2019-12", "2020-01", "2020-02")
    assert spec.group_names() == ["inspection_date_month"]


# -- every bad-spec class, each with its message ---------------------------------------------
def _refused(data, match, schema=None):
    with pytest.raises(QueryError, match=match):
        spec = QuerySpec.from_dict(data)
        if schema is not None:
            spec.validate_against(schema)


def test_unknown_table():
    _refused(spec_with(table="permits"), r"unknown table 'permits'", SCHEMA)


def test_unknown_column():
    aggs = [*BASE["aggregate"], {"name": "z", "func": "count", "column": "zzz"}]
    _refused(spec_with(aggregate=aggs), r"unknown column 'zzz' in table 'inspections'", SCHEMA)
    where = [{"column": "nope", "op": "==", "value": 1}]
    _refused(spec_with(where=where), r"unknown column 'nope'", SCHEMA)


def test_wrong_type():
    cols = {**BASE["columns"], "critical": {"type": "float", "clip": [0, 1]}}
    _refused(
        spec_with(columns=cols), r"declares type 'float', table 'inspections' has 'integer'", SCHEMA
    )
    where = [{"column": "critical", "op": "==", "value": "1"}]
    _refused(spec_with(where=where), r"compare a numeric column to numbers")
    where = [{"column": "name", "op": "==", "value": 3}]
    _refused(spec_with(where=where), r"wrong type: text column compared to a number", SCHEMA)
    where = [{"column": "name", "op": "<", "value": "2020-01-01"}]
    _refused(spec_with(where=where), r"a text column takes ==, !=, in, not in", SCHEMA)
    where = [{"column": "inspection_date", "op": ">=", "value": "2020-13-01"}]
    _refused(spec_with(where=where), r"compares numbers or dates 'YYYY-MM-DD'")


def test_undeclared_level():
    where = [{"column": "facility", "op": "in", "value": ["Restaurant", "Bakery"]}]
    _refused(spec_with(where=where), r"value 'Bakery' is not a declared level of 'facility'")
    _refused(spec_with(group_by=["ward", "name"]), r"group_by 'name': declare its levels")
    cols = dict(BASE["columns"])
    del cols["facility"]
    where = [{"column": "facility", "op": "==", "value": "Restaurant"}]
    _refused(
        spec_with(columns=cols, group_by=["ward"], where=where),
        r"declare the levels of category column 'facility'",
        SCHEMA,
    )
    cols = {**BASE["columns"], "ward": {"levels": ["1", "1"]}}
    _refused(spec_with(columns=cols), r"repeated levels \['1'\]")


def test_empty_or_unsorted_bins():
    for bins, match in [
        ([], r"bins must be a list of at least 2 edges"),
        ([5], r"bins must be a list of at least 2 edges"),
        ([0, 10, 10], r"strictly increasing, got 10 then 10"),
        ([0, 20, 10], r"strictly increasing, got 20 then 10"),
        ([0, float("inf")], r"bin edge must be finite"),
    ]:
        aggs = [{"name": "h", "func": "histogram", "column": "score", "bins": bins}]
        _refused(spec_with(aggregate=aggs), match)


def test_missing_clip_range():
    cols = {**BASE["columns"], "score": {}}
    _refused(
        spec_with(columns=cols),
        r"aggregate 'mean_score' \(mean\) sums column 'score', which declares no clip range",
    )
    aggs = [{"name": "m", "func": "mean", "column": "other"}]
    _refused(spec_with(aggregate=aggs), r"sums column 'other', which declares no clip range")


def test_aggregate_on_text_or_category_column():
    cols = {**BASE["columns"], "name": {"clip": [0, 1]}}
    aggs = [{"name": "m", "func": "sum", "column": "name"}]
    _refused(spec_with(columns=cols, aggregate=aggs), r"on text column 'name'", SCHEMA)
    aggs = [{"name": "m", "func": "sum", "column": "ward"}]
    _refused(spec_with(aggregate=aggs), r"on categorical column 'ward'")
    cols = {**BASE["columns"], "name": {"type": "text"}}
    aggs = [{"name": "m", "func": "mean", "column": "name"}]
    _refused(spec_with(columns=cols, aggregate=aggs), r"\(mean\) on text column 'name'")


def test_duplicate_and_bad_names():
    aggs = [{"name": "n", "func": "count"}, {"name": "n", "func": "count"}]
    _refused(spec_with(aggregate=aggs), r"duplicate aggregate name\(s\) \['n'\]")
    _refused(spec_with(aggregate=[{"name": "ward", "func": "count"}]), r"clashes with a result")
    _refused(spec_with(aggregate=[{"name": "status", "func": "count"}]), r"clashes with a result")
    _refused(spec_with(aggregate=[{"name": "a b", "func": "count"}]), r"name must match")
    _refused(spec_with(group_by=["ward", "ward"]), r"names a column twice")


def test_bad_quantile_parameters():
    for q, tol, match in [
        (1.5, 0.1, r"q must lie in \[0, 1\], got 1.5"),
        (-0.1, 0.1, r"q must lie in \[0, 1\]"),
        (0.5, 0.0, r"tolerance must be positive, got 0.0"),
        (0.5, -1, r"tolerance must be positive"),
        ("half", 0.1, r"q must be a number"),
    ]:
        aggs = [{"name": "m", "func": "quantile", "column": "score", "q": q, "tolerance": tol}]
        _refused(spec_with(aggregate=aggs), match)


def test_size_bounds():
    many = [str(i) for i in range(MAX_LEVELS + 1)]
    _refused(spec_with(columns={**BASE["columns"], "ward": {"levels": many}}), r"exceed the limit")
    cols = {
        **BASE["columns"],
        "ward": {"levels": [str(i) for i in range(1000)]},
        "facility": {"levels": [str(i) for i in range(MAX_CELLS // 1000 + 1)]},
    }
    _refused(spec_with(columns=cols, where=[]), rf"makes {1000 * (MAX_CELLS // 1000 + 1)} cells")
    aggs = [{"name": f"a{i}", "func": "count"} for i in range(MAX_AGGREGATES + 1)]
    _refused(spec_with(aggregate=aggs), rf"{MAX_AGGREGATES + 1} aggregates exceed the limit")
    with pytest.raises(QueryError, match="exceeds"):
        QuerySpec.from_json("[" * 1_000_001)
    cols = {**BASE["columns"], "score": {"clip": [0, 1e9], "decimals": 6}}
    _refused(spec_with(columns=cols), r"spans 2\^50 units; the limit is 2\^40")


def test_structural_errors():
    _refused({**BASE, "select": "*"}, r"query spec: unknown key\(s\) \['select'\]")
    _refused(spec_with(aggregate=[]), r"at least one \[\[aggregate\]\]")
    _refused(spec_with(aggregate=[{"name": "x", "func": "median"}]), r"func must be one of")
    _refused(spec_with(aggregate=[{"name": "x", "func": "sum"}]), r"func 'sum' needs a column")
    aggs = [{"name": "x", "func": "count", "bins": [1, 2]}]
    _refused(spec_with(aggregate=aggs), r"aggregate 'x': unknown key\(s\) \['bins'\]")
    _refused(spec_with(where=[{"column": "ward", "op": "like", "value": "1"}]), r"op must be")
    _refused(spec_with(where=[{"column": "ward", "op": "in", "value": []}]), r"non-empty list")
    cols = {**BASE["columns"], "score": {"clip": [5, 1]}}
    _refused(spec_with(columns=cols), r"clip low must be below clip high")
    cols = {**BASE["columns"], "score": {"clip": [0.001, 1], "decimals": 2}}
    _refused(spec_with(columns=cols), r"not multiples of 10\^-2")
    _refused(spec_with(disclosure={"min_count": 0}), r"min_count must be a positive integer")
    data = spec_with(
        columns={**BASE["columns"], "inspection_date": {"levels": ["2019-1"]}},
        group_by=[{"column": "inspection_date", "by": "month"}],
    )
    _refused(data, r"levels must look like YYYY-MM, got '2019-1'")
    data = spec_with(
        columns={**BASE["columns"], "inspection_date": {"from": "2020-03", "to": "2020-01"}},
    )
    _refused(data, r"from 2020-03 is after to 2020-01")
    with pytest.raises(QueryError, match="not valid TOML"):
        QuerySpec.from_toml("table = \n")
    with pytest.raises(QueryError, match="cannot read query file"):
        QuerySpec.from_toml("/nonexistent/q.toml")


def test_table_schema_is_validated():
    with pytest.raises(QueryError, match=r"column 'x' has type 'number'"):
        TableSchema("t", {"x": "number"})
    with pytest.raises(QueryError, match="declares no columns"):
        TableSchema("t", {})
    schema = TableSchema.from_json(SCHEMA.to_json())
    assert schema == SCHEMA
