"""An agency's table in DuckDB: loading, validation, exact local quantities, no SQL injection."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from analytics_data import DISTRICTS, KINDS, SCHEMA
from hypothesis import given, settings
from hypothesis import strategies as st

from fedcity.analytics import DataError, LocalTable, QueryError, QuerySpec, TableSchema
from fedcity.analytics.local import (
    LIMB_BITS,
    ROW_BITS,
    cell_quantities,
    cells_step,
    eligible_from_ranges,
    from_limbs,
    limb_bits_for,
    presence_step,
    quote_ident,
    ranges_from_cells,
    to_limbs,
)
from fedcity.analytics.query import MAX_AGENCIES
from fedcity.crypto import PackingSpec

SPEC = {
    "table": "permits",
    "columns": {
        "district": {"levels": DISTRICTS[:5]},
        "kind": {"levels": KINDS},
        "units": {"clip": [0, 500]},
        "cost": {"clip": [0, 10000], "decimals": 2},
    },
    "group_by": ["district", "kind"],
    "aggregate": [
        {"name": "n", "func": "count"},
        {"name": "units", "func": "sum", "column": "units"},
        {"name": "sd_cost", "func": "std", "column": "cost"},
    ],
}


def _spec(data=SPEC):
    return QuerySpec.from_dict(data).validate_against(SCHEMA)


def _expected(frame: pd.DataFrame):
    """Per (district, kind): rows, non-missing units, Σunits, Σcost units, Σcost units²."""
    inside = frame[frame["district"].isin(DISTRICTS[:5])]
    cents = (inside["cost"] * 100).round()
    g = inside.assign(cents=cents).groupby(["district", "kind"])
    return {
        key: (
            len(part),
            int(part["units"].notna().sum()),
            int(part["units"].sum()),
            int(part["cents"].notna().sum()),
            int(part["cents"].sum()),
            int((part["cents"].dropna().astype("int64").map(int) ** 2).sum()),
        )
        for key, part in g
    }, len(frame) - len(inside)


def test_aggregate_is_exact_per_agency(permits, permit_tables):
    spec = _spec()
    keys = [q.key for q in cell_quantities(spec)]
    assert keys == ["n", "nn:units", "s:units", "nn:cost", "s:cost", "ss:cost"]
    for table in permit_tables:
        own = permits[permits["agency"] == table.agency]
        expected, ood = _expected(own)
        agg = table.aggregate(spec)
        assert agg.out_of_domain == ood
        for (district, kind), (n, nn_u, s_u, nn_c, s_c, ss_c) in expected.items():
            cell = DISTRICTS.index(district) * 3 + KINDS.index(kind)
            assert agg.values[cell] == (n, nn_u, s_u, nn_c, s_c, ss_c)
        assert sum(v[0] for v in agg.values.values()) == len(own) - ood


def test_csv_parquet_and_frame_agree(tmp_path, permits):
    own = permits[permits["agency"] == "agency-1"].drop(columns="agency")
    csv, parquet = tmp_path / "p.csv", tmp_path / "p.parquet"
    own.to_csv(csv, index=False)
    own.to_parquet(parquet, index=False)
    spec = _spec()
    results = [
        LocalTable(src, SCHEMA, agency="agency-1").aggregate(spec).values
        for src in (csv, parquet, own.reset_index(drop=True))
    ]
    assert results[0] == results[1] == results[2]
    assert LocalTable(csv, SCHEMA, agency="a").n_rows == len(own)


def test_load_errors_name_agency_table_and_column(tmp_path):
    path = tmp_path / "t.csv"
    path.write_text("district,kind,day,units,cost,note\nD1,new,2020-01-02,3.5,1.0,x\n")
    with pytest.raises(
        DataError,
        match=r"agency 'water', table 'permits': column 'units' is "
        r"declared integer but 1 value\(s\) are not \(e.g. '3.5'\)",
    ):
        LocalTable(path, SCHEMA, agency="water")
    path.write_text("district,kind,day,units,cost,note\nD1,new,2020-02-31,3,1.0,x\n")
    with pytest.raises(DataError, match=r"column 'day' is declared date .*'2020-02-31'"):
        LocalTable(path, SCHEMA, agency="water")
    path.write_text("district,kind,units,cost,note\nD1,new,3,1.0,x\n")
    with pytest.raises(
        DataError,
        match=r"agency 'water', table 'permits': declared column\(s\) "
        r"\['day'\] are not in the data",
    ):
        LocalTable(path, SCHEMA, agency="water")
    with pytest.raises(DataError, match="no such file"):
        LocalTable(tmp_path / "missing.csv", SCHEMA, agency="water")
    other = tmp_path / "t.json"
    other.write_text("{}")
    with pytest.raises(DataError, match=r"neither \.csv nor \.parquet"):
        LocalTable(other, SCHEMA, agency="water")
    ok = pd.DataFrame(
        {
            "district": ["D1"],
            "kind": ["new"],
            "day": ["2020-01-01"],
            "units": ["7"],
            "cost": ["1.5"],
            "note": ["a"],
            "extra": [1],
        }
    )
    assert LocalTable(ok, SCHEMA, agency="w").n_rows == 1  # undeclared columns ignored


def test_spec_for_another_table_or_column_is_refused(permit_tables):
    with pytest.raises(QueryError, match="has no table 'other'"):
        permit_tables[0].aggregate(QuerySpec.from_dict({**SPEC, "table": "other"}))
    bad = {
        **SPEC,
        "aggregate": [{"name": "n", "func": "count", "column": "ghost"}],
        "columns": {**SPEC["columns"], "ghost": {"clip": [0, 1]}},
    }
    with pytest.raises(QueryError, match="unknown column 'ghost'"):
        permit_tables[0].aggregate(QuerySpec.from_dict(bad))


def test_hostile_identifiers_and_levels_are_data_not_sql():
    col = 'x"; DROP TABLE __data; --'
    lvl = "'); DROP TABLE __data; --"
    schema = TableSchema("t", {col: "integer", "g": "category", "s": "text"})
    frame = pd.DataFrame(
        {
            col: [1, 2, 3, 4],
            "g": [lvl, lvl, "b", "b"],
            "s": ["a' OR '1'='1", "b", "a' OR '1'='1", "c"],
        }
    )
    table = LocalTable(frame, schema, agency="a")
    spec = QuerySpec.from_dict(
        {
            "table": "t",
            "columns": {"g": {"levels": [lvl, "b"]}, col: {"clip": [0, 10]}},
            "group_by": ["g"],
            "where": [{"column": "s", "op": "!=", "value": "a' OR '1'='1"}],
            "aggregate": [
                {"name": "n", "func": "count"},
                {"name": "t", "func": "sum", "column": col},
            ],
        }
    ).validate_against(schema)
    agg = table.aggregate(spec)
    assert agg.values == {0: (1, 1, 2), 1: (1, 1, 4)}
    assert table.n_rows == 4 and table.aggregate(spec).values == agg.values  # table intact
    assert quote_ident('a"b') == '"a""b"'


def test_presence_and_cells_steps_layout(permit_tables):
    spec = _spec()
    params = {"table": "permits", "spec": spec.to_dict()}
    table = permit_tables[4]
    presence = presence_step(params, table)
    agg = table.aggregate(spec)
    assert presence.tolist() == [1.0 if c in agg.values else 0.0 for c in range(15)]
    cells = [1, 2, 7]
    for bits in (LIMB_BITS, 40):
        vec = cells_step({**params, "cells": ranges_from_cells(cells), "limb_bits": bits}, table)
        per_cell = sum(q.n_limbs(bits) for q in agg.quantities)
        assert len(vec) == len(cells) * per_cell + -(-ROW_BITS // bits)
        assert vec.max() < 2**bits and vec.min() >= 0
        pos = 0
        for c in cells:
            for q, v in zip(agg.quantities, agg.values.get(c, (0,) * 6), strict=True):
                k = q.n_limbs(bits)
                assert from_limbs([int(x) for x in vec[pos : pos + k]], bits) == v
                pos += k
        assert from_limbs([int(x) for x in vec[pos:]], bits) == agg.out_of_domain
    with pytest.raises(QueryError, match=r"limb_bits must lie in \[24, 40\], got 41"):
        cells_step({**params, "cells": [[0, 1]], "limb_bits": 41}, table)
    with pytest.raises(QueryError, match="cell ranges must be increasing"):
        cells_step({**params, "cells": [[3, 5], [1, 2]]}, table)
    with pytest.raises(QueryError, match="task table 'x' differs"):
        presence_step({**params, "table": "x"}, table)


def test_cell_ranges_round_trip():
    cells = [0, 1, 2, 5, 7, 8, 20]
    assert ranges_from_cells(cells) == [[0, 3], [5, 6], [7, 9], [20, 21]]
    assert eligible_from_ranges(ranges_from_cells(cells), 21) == cells
    with pytest.raises(QueryError):
        eligible_from_ranges([[0, 30]], 21)


@given(
    st.integers(min_value=0, max_value=2**200),
    st.integers(min_value=1, max_value=8),
    st.integers(min_value=24, max_value=40),
)
def test_limbs_round_trip(value, extra, bits):
    n = max(1, -(-value.bit_length() // bits)) + extra - 1
    limbs = to_limbs(value, n, bits)
    assert all(0 <= x < 2**bits for x in limbs) and from_limbs(limbs, bits) == value
    with pytest.raises(ValueError):
        to_limbs(2 ** (bits * n), n, bits)


def test_limb_bits_shrink_with_agencies():
    assert limb_bits_for(1) == limb_bits_for(32) == 40
    assert limb_bits_for(1000) == 38
    assert limb_bits_for(MAX_AGENCIES) == 34
    with pytest.raises(ValueError):
        limb_bits_for(0)


@settings(max_examples=60, deadline=None)
@given(
    st.lists(st.integers(min_value=0, max_value=2**90), min_size=1, max_size=6),
    st.integers(min_value=1, max_value=MAX_AGENCIES),
    st.randoms(use_true_random=False),
)
def test_limb_sums_decode_exactly_through_the_packing(values, agencies, rnd):
    """Limbs of many agencies, quantized as the driver packs them, sum back exactly."""
    headroom = (agencies - 1).bit_length()
    bits = limb_bits_for(agencies)
    spec = PackingSpec(
        clip=float(2**bits),
        precision_bits=min(52, 62 - headroom - 1),
        max_summands=agencies,
        n_length=2048,
    )
    n_limbs = -(-91 // bits)
    # each agency's per-quantity value; the extremes (all limbs at 2^b - 1) are the hard case
    per_agency = [[min(v + rnd.randrange(2**20), 2**90 - 1) for v in values] for _ in range(3)]
    per_agency.append([2**90 - 1] * len(values))
    total_q = np.zeros(len(values) * n_limbs, dtype=np.uint64)
    for row in per_agency:
        vec = [x for v in row for x in to_limbs(v, n_limbs, bits)]
        total_q += spec.quantize(np.asarray(vec, dtype=np.float64))
    # the remaining agencies send all-maximal limbs: the worst case for rounding error
    top = np.full(len(values) * n_limbs, 2**bits - 1, dtype=np.float64)
    rest = max(0, agencies - len(per_agency))
    total_q += spec.quantize(top) * np.uint64(rest)
    summands = len(per_agency) + rest
    decoded = np.rint(spec.dequantize(total_q, summands))
    expected_rows = [sum(col) for col in zip(*per_agency, strict=True)]
    for i, exp in enumerate(expected_rows):
        got = from_limbs([int(x) for x in decoded[i * n_limbs : (i + 1) * n_limbs]], bits)
        assert got == exp + rest * (2 ** (bits * n_limbs) - 1)
