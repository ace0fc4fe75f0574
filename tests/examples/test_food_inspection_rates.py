"""examples/food_inspection_rates.py: the released tables equal pandas on the pooled rows.

Small keys (512 bits) keep the runs fast. The end-to-end runs on the Chicago file skip when
``../shared/data`` does not hold it; the others use a small file written here in its format.
"""

from __future__ import annotations

from pathlib import Path
from types import ModuleType

import numpy as np
import pandas as pd
import pytest

from fedcity.analytics import QuerySpec
from fedcity.crypto import deal_threshold_key

CHICAGO = (
    Path(__file__).resolve().parents[3]
    / "shared"
    / "data"
    / "chicago_food_inspections"
    / "inspections.csv"
)
needs_chicago = pytest.mark.skipif(
    not CHICAGO.is_file(),
    reason=f"Chicago food inspections not found at {CHICAGO} (see ../shared/data/README.md)",
)


def small_file(path: Path, seed: int = 0) -> Path:
    """A small inspections file: districts 1, 2, 3 of very different sizes, 7 rows with no
    district, and the columns the example does not use."""
    rng = np.random.default_rng(seed)
    parts = []
    for district, n in ((1.0, 300), (2.0, 60), (3.0, 25), (np.nan, 7)):
        parts.append(
            pd.DataFrame(
                {
                    "inspection_id": rng.integers(1, 10**6, n),
                    "inspection_date": pd.to_datetime("2011-09-01")
                    + pd.to_timedelta(rng.integers(0, 1150, n), unit="D"),
                    "police_district": district,
                    "ward": rng.integers(1, 51, n).astype(float),
                    "facility_type": rng.choice(
                        ["Restaurant", "Grocery_Store", "Other"], n, p=[0.75, 0.2, 0.05]
                    ),
                    "pastFail": rng.integers(0, 2, n).astype(float),
                    "critical_found": (rng.random(n) < 0.15).astype(int),
                    "split": "train",
                }
            )
        )
    frame = pd.concat(parts, ignore_index=True)
    frame["inspection_date"] = frame["inspection_date"].dt.strftime("%Y-%m-%d")
    frame.to_csv(path, index=False)
    return path


def expected(frame: pd.DataFrame) -> pd.DataFrame:
    """Counts per (district, facility type) computed here, independently of the example."""
    rows = frame.dropna(subset=["police_district"]).copy()
    rows["police_district"] = rows["police_district"].astype(int).astype(str)
    return rows.groupby(["police_district", "facility_type"]).agg(
        inspections=("critical_found", "size"),
        critical=("critical_found", "sum"),
        failed_before=("pastFail", "sum"),
    )


def test_missing_file_exits_with_a_clear_message(
    food: ModuleType, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert food.main(["--data", str(tmp_path / "nowhere.csv")]) == 2
    err = capsys.readouterr().err
    assert "no inspections file at" in err and "nowhere.csv" in err
    assert "github.com/Chicago/food-inspections-evaluation" in err and "--data" in err


def test_help_and_docstring_name_the_source(
    food: ModuleType, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as exit_info:
        food.main(["--help"])
    assert exit_info.value.code == 0
    out = " ".join(capsys.readouterr().out.split())
    assert "github.com/Chicago/food-inspections-evaluation" in out
    assert "--key-bits" in out and "--plot" in out and "--data" in out
    assert "github.com/Chicago/food-inspections-evaluation" in (food.__doc__ or "")
    assert food.DEFAULT_DATA == CHICAGO


def test_data_folder_or_file(food: ModuleType, tmp_path: Path) -> None:
    target = tmp_path / "chicago_food_inspections" / "inspections.csv"
    target.parent.mkdir()
    small_file(target)
    assert food.resolve_data(tmp_path) == target
    assert food.resolve_data(target) == target
    with pytest.raises(food.DataMissing, match="no inspections file"):
        food.resolve_data(tmp_path / "empty")


def test_one_agency_per_district(food: ModuleType, tmp_path: Path) -> None:
    frame = food.load_inspections(small_file(tmp_path / "i.csv"))
    tables = food.district_tables(frame)
    assert [t.agency for t in tables] == [
        "district-1",
        "district-2",
        "district-3",
        "district-unknown",
    ]
    assert [t.n_rows for t in tables] == [300, 60, 25, 7]


def test_small_file_equals_pandas(food: ModuleType, tmp_path: Path) -> None:
    path = small_file(tmp_path / "i.csv", seed=4)
    raw = pd.read_csv(path)
    frame = food.load_inspections(path)
    tables = food.district_tables(frame)
    key = deal_threshold_key(512, threshold=2, parties=len(tables))
    spec = QuerySpec.from_toml(food.QUERIES / "food_inspection_rates.toml")
    result = food.run(frame, spec, tables, key, 2)
    truth = expected(raw)
    released = result.released.set_index(["police_district", "facility_type"])
    assert len(released) > 0
    for cell, row in released.iterrows():
        if cell in truth.index:
            ref = truth.loc[cell]
            assert int(row["inspections"]) == int(ref["inspections"])
            assert int(row["critical"]) == int(ref["critical"])
            assert int(row["failed_before"]) == int(ref["failed_before"])
            assert row["critical_pct"] == pytest.approx(
                100 * ref["critical"] / ref["inspections"], rel=1e-12
            )
        else:  # a declared (district, facility type) nobody has: released as 0
            assert int(row["inspections"]) == 0
    # cells under 10 inspections are withheld, never released
    small = truth[truth["inspections"] < 10].index
    assert len(small) > 0
    withheld = result.frame[result.frame["status"] == "suppressed"].set_index(
        ["police_district", "facility_type"]
    )
    assert set(small) <= set(withheld.index)
    assert withheld["inspections"].isna().all()
    # the 7 inspections without a district fall outside the declared levels
    assert result.out_of_domain == 7
    # the example's own comparison agrees
    assert food.agrees(food.compare(result, food.pooled_rates(frame, spec)))


def test_comparison_catches_a_difference(food: ModuleType, tmp_path: Path) -> None:
    path = small_file(tmp_path / "i.csv", seed=5)
    frame = food.load_inspections(path)
    tables = food.district_tables(frame)
    key = deal_threshold_key(512, threshold=2, parties=len(tables))
    spec = QuerySpec.from_toml(food.QUERIES / "food_inspection_rates.toml")
    result = food.run(frame, spec, tables, key, 2)
    pooled = food.pooled_rates(frame, spec)
    assert food.agrees(food.compare(result, pooled))
    first = result.released.iloc[0]
    row = (pooled["police_district"] == first["police_district"]) & (
        pooled["facility_type"] == first["facility_type"]
    )
    assert row.sum() == 1
    pooled.loc[row, "critical"] += 1
    assert not food.agrees(food.compare(result, pooled))


@needs_chicago
@pytest.mark.slow
def test_chicago_end_to_end(
    food: ModuleType, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    chart = tmp_path / "rates.png"
    code = food.main(["--key-bits", "512", "--threshold", "3", "--plot", str(chart)])
    out = capsys.readouterr().out
    assert code == 0, out
    assert out.count("AGREES with pandas") == 2
    assert "24 agencies" in out
    assert chart.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


@needs_chicago
@pytest.mark.slow
def test_chicago_counts_independently(food: ModuleType) -> None:
    raw = pd.read_csv(CHICAGO)
    frame = food.load_inspections(CHICAGO)
    tables = food.district_tables(frame)
    key = deal_threshold_key(512, threshold=3, parties=len(tables))
    spec = QuerySpec.from_toml(food.QUERIES / "food_inspection_rates.toml")
    result = food.run(frame, spec, tables, key, 3)
    truth = expected(raw)
    released = result.released.set_index(["police_district", "facility_type"])
    joined = released.join(truth.add_suffix("_ref"), how="inner")
    assert len(joined) >= 50
    for col in ("inspections", "critical", "failed_before"):
        assert (joined[col].astype(int) == joined[col + "_ref"].astype(int)).all()
    assert result.out_of_domain == int(raw["police_district"].isna().sum())
