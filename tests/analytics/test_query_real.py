"""The Chicago food inspections, one agency per police district, against pandas on the pool.

Reads ``../shared/data/chicago_food_inspections/inspections.csv`` (skipped when absent); each
district's rows are written to its own CSV or Parquet file under a temporary directory.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from fedcity.analytics import LocalTable, TableSchema, run_query
from fedcity.crypto import deal_threshold_key

DATA = Path(__file__).resolve().parents[3] / "shared" / "data" / "chicago_food_inspections"
CSV = DATA / "inspections.csv"

pytestmark = pytest.mark.skipif(
    not CSV.is_file(), reason=f"Chicago food inspections not found at {CSV} (shared data absent)"
)

SCHEMA = TableSchema(
    "inspections",
    {
        "inspection_date": "date",
        "facility_type": "category",
        "inspector": "category",
        "critical_found": "integer",
        "pastCritical": "integer",
        "ageAtInspection": "float",
        "temperatureMax": "float",
        "heat_burglary": "float",
        "split": "text",
    },
)
FACILITIES = ["Restaurant", "Grocery_Store", "Other"]
INSPECTORS = ["blue", "brown", "green", "orange", "purple", "yellow"]


@pytest.fixture(scope="module")
def chicago(tmp_path_factory):
    pooled = pd.read_csv(CSV)
    folder = tmp_path_factory.mktemp("districts")
    tables = []
    district = pooled["police_district"].map(lambda v: "none" if pd.isna(v) else f"{int(v):02d}")
    for i, (name, part) in enumerate(pooled.groupby(district, sort=True)):
        path = folder / (f"district-{name}.csv" if i % 2 else f"district-{name}.parquet")
        own = part.drop(columns=["police_district"])
        if path.suffix == ".csv":
            own.to_csv(path, index=False)
        else:
            own.to_parquet(path, index=False)
        tables.append(LocalTable(path, SCHEMA, agency=f"district-{name}"))
    key = deal_threshold_key(512, threshold=5, parties=len(tables))
    return pooled, tables, key


SPEC = {
    "table": "inspections",
    "columns": {
        "facility_type": {"levels": FACILITIES},
        "inspector": {"levels": INSPECTORS},
        "critical_found": {"clip": [0, 1]},
        "pastCritical": {"clip": [0, 20]},
        "ageAtInspection": {"clip": [0, 20], "decimals": 9},
        "temperatureMax": {"clip": [-40, 120], "decimals": 2},
    },
    "group_by": ["facility_type", "inspector"],
    "where": [
        {"column": "inspection_date", "op": ">=", "value": "2012-01-01"},
        {"column": "split", "op": "==", "value": "train"},
    ],
    "aggregate": [
        {"name": "n", "func": "count"},
        {"name": "critical", "func": "sum", "column": "critical_found"},
        {
            "name": "critical_per_1000",
            "func": "ratio",
            "numerator": "critical_found",
            "scale": 1000,
        },
        {"name": "past_critical", "func": "mean", "column": "pastCritical"},
        {"name": "sd_age", "func": "std", "column": "ageAtInspection"},
        {"name": "var_temp", "func": "var", "column": "temperatureMax"},
        {
            "name": "burglary",
            "func": "histogram",
            "column": "heat_burglary",
            "bins": [0, 10, 20, 50, 150],
        },
        {
            "name": "median_temp",
            "func": "quantile",
            "column": "temperatureMax",
            "q": 0.5,
            "tolerance": 0.1,
        },
    ],
    "disclosure": {"min_count": 10},
}


def test_chicago_inspections_by_district_match_pandas(chicago):
    pooled, tables, key = chicago
    assert len(tables) == 24  # 23 police districts and the rows without one
    result = run_query(SPEC, tables, key=key, threshold=5, min_agencies=3)
    sel = pooled[(pooled["inspection_date"] >= "2012-01-01") & (pooled["split"] == "train")]
    assert result.out_of_domain == 0
    frame = result.frame.set_index(["facility_type", "inspector"])
    released = 0
    for (fac, insp), part in sel.groupby(["facility_type", "inspector"]):
        row = frame.loc[(fac, insp)]
        district = part["police_district"].fillna(-1)
        assert row["n_agencies"] == district.nunique()
        if row["status"] != "released":
            continue
        released += 1
        assert row["n"] == len(part)
        assert row["critical"] == int(part["critical_found"].sum())
        assert row["critical_per_1000"] == pytest.approx(
            part["critical_found"].sum() / len(part) * 1000, rel=1e-12
        )
        assert row["past_critical"] == pytest.approx(part["pastCritical"].mean(), rel=1e-12)
        # fixed point: exact on the declared decimals, and within 10^-d of the raw values
        age = part["ageAtInspection"].round(9)
        assert row["sd_age"] == pytest.approx(age.std(), rel=1e-9)
        assert row["sd_age"] == pytest.approx(part["ageAtInspection"].std(), abs=1e-8)
        temp = part["temperatureMax"].round(2)
        assert row["var_temp"] == pytest.approx(temp.var(), rel=1e-9)
        assert row["var_temp"] == pytest.approx(part["temperatureMax"].var(), rel=1e-3)
        counts, _ = np.histogram(part["heat_burglary"], bins=[0, 10, 20, 50, 150])
        bins = ["burglary[0,10)", "burglary[10,20)", "burglary[20,50)", "burglary[50,150]"]
        assert [int(row[b]) for b in bins] == counts.tolist()
        median = part["temperatureMax"].median()
        assert abs(row["median_temp"] - median) <= 0.1
        assert row["median_temp_low"] - 0.005 <= median <= row["median_temp_high"] + 0.005
    assert released >= 12


def test_chicago_monthly_critical_rate(chicago):
    pooled, tables, key = chicago
    spec = {
        "table": "inspections",
        "columns": {
            "inspection_date": {"from": "2013-01", "to": "2013-12"},
            "facility_type": {"levels": FACILITIES},
            "critical_found": {"clip": [0, 1]},
        },
        "group_by": [{"column": "inspection_date", "by": "month"}, "facility_type"],
        "aggregate": [
            {"name": "n", "func": "count"},
            {"name": "rate", "func": "ratio", "numerator": "critical_found"},
        ],
    }
    result = run_query(spec, tables, key=key, threshold=5, min_agencies=3)
    month = pooled["inspection_date"].str[:7]
    in_2013 = pooled[month.str.startswith("2013")]
    assert result.out_of_domain == len(pooled) - len(in_2013)
    frame = result.frame.set_index(["inspection_date_month", "facility_type"])
    for (m, fac), part in in_2013.groupby([month, "facility_type"]):
        row = frame.loc[(m, fac)]
        if row["status"] == "released":
            assert row["n"] == len(part)
            assert row["rate"] == pytest.approx(part["critical_found"].mean(), rel=1e-12)
    assert (frame["status"] == "released").sum() >= 30
