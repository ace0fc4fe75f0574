"""examples/elderly_living_alone.py: the agency pipeline's flags and the released counts.

The released per-district counts are checked against the generator's planted spells (ground
truth independent of the example's pipeline) and against pandas; 512-bit keys, small cities.
"""

from __future__ import annotations

import re
from datetime import date, timedelta
from types import ModuleType

import pandas as pd
import pytest

from fedcity.analytics import LocalTable, QuerySpec
from fedcity.crypto import deal_threshold_key
from fedcity.data.synthetic import age_band, make_elderly_city


def readings(kwh: dict[str, list[float | None]]) -> pd.DataFrame:
    start = date(2026, 3, 1)
    rows = []
    for resident, values in kwh.items():
        for i, v in enumerate(values):
            if v is not None:  # None: no reading that day
                rows.append((resident, start + timedelta(days=i), v))
    return pd.DataFrame(rows, columns=["resident_id", "day", "kwh"])


def test_low_use_flags_need_consecutive_days(elderly: ModuleType) -> None:
    use = readings(
        {
            "two_in_a_row": [5.0, 0.2, 0.4, 5.0, 5.0],
            "apart": [0.1, 5.0, 0.1, 5.0, 0.1],
            "gap_between": [5.0, 0.1, None, 0.1, 5.0],
            "at_threshold": [5.0, 0.5, 0.5, 5.0, 5.0],
            "three_days": [0.0, 0.0, 0.0, 4.0, 4.0],
            "normal": [4.0, 3.0, 6.0, 5.0, 4.5],
        }
    )
    flags = elderly.low_use_flags(use, threshold_kwh=0.5)
    assert flags.to_dict() == {
        "apart": 0,
        "at_threshold": 0,
        "gap_between": 0,
        "normal": 0,
        "three_days": 1,
        "two_in_a_row": 1,
    }
    assert elderly.low_use_flags(use, threshold_kwh=0.5, days=3)["three_days"] == 1
    assert elderly.low_use_flags(use, threshold_kwh=0.5, days=3)["two_in_a_row"] == 0


def test_agency_table(elderly: ModuleType) -> None:
    city = make_elderly_city(2, residents=200, days=5, seed=2)
    residents, use = city.district("district-2")
    table = elderly.agency_table(residents, use, 0.5)
    assert list(table.columns) == [
        "district",
        "resident_id",
        "age",
        "lives_alone",
        "age_band",
        "low_use_2d",
    ]
    assert len(table) == len(residents)
    assert (table["age_band"] == age_band(table["age"])).all()
    assert set(table["low_use_2d"]) <= {0, 1}
    LocalTable.from_frame(table, elderly.SCHEMA, agency="district-2")  # fits the schema


def test_released_counts_equal_the_planted_spells(elderly: ModuleType) -> None:
    city = make_elderly_city(6, residents=30_000, days=10, seed=9)
    frames = elderly.district_tables(city, 0.5)
    tables = [LocalTable.from_frame(f, elderly.SCHEMA, agency=n) for n, f in frames.items()]
    key = deal_threshold_key(512, threshold=2, parties=6)
    spec = QuerySpec.from_toml(elderly.QUERIES / "elderly_living_alone.toml")
    result = elderly.run(tables, spec, key, 2)

    # ground truth from the generator: elderly living alone with a planted spell of 2+ days
    res = city.residents
    long_spell = set(city.spells.loc[city.spells["days"] >= 2, "resident_id"])
    chosen = res[
        (res["age"] >= 65) & (res["lives_alone"] == 1) & res["resident_id"].isin(long_spell)
    ]
    truth = chosen.groupby(["district", age_band(chosen["age"])]).size()

    frame = result.frame.set_index(["district", "age_band"])
    released = frame[frame["status"] == "released"]
    assert len(released) >= 9
    for cell, row in released.iterrows():
        assert int(row["low_use_2d"]) == int(truth.get(cell, 0))
    withheld = frame[frame["status"] == "suppressed"]
    for cell in truth[(truth > 0) & (truth < 10)].index:
        assert cell in withheld.index  # small counts of vulnerable residents are never released
    assert withheld["low_use_2d"].isna().all()

    pooled = pd.concat(frames.values(), ignore_index=True)
    assert elderly.compare(result, pooled)["equal"].all()


def test_main_runs_and_agrees(elderly: ModuleType, capsys: pytest.CaptureFixture[str]) -> None:
    code = elderly.main(["--residents", "6000", "--days", "7", "--key-bits", "512"])
    out = capsys.readouterr().out
    assert code == 0, out
    assert out.count("AGREES with pandas") == 2
    assert "0 missed, 0 not planted" in out


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--threshold-kwh", "0"], "--threshold-kwh must be positive"),
        (["--threshold", "7"], r"--threshold must lie in \[1, 6\]"),
        (["--residents", "10"], "residents=10 must lie in"),
        (["--plot", "chart.pdf"], "--plot must end in .png or .svg"),
    ],
)
def test_bad_options(
    elderly: ModuleType, argv: list[str], message: str, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as exit_info:
        elderly.main(argv)
    assert exit_info.value.code == 2
    assert re.search(message, capsys.readouterr().err)
