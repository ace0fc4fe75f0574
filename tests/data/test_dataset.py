"""FeatureSpec, DataError and AgencyDataset: construction, every validation path, accessors."""

from __future__ import annotations

import pickle
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from fedcity.data import (
    AgencyDataset,
    DataError,
    FeatureSpec,
    FederatedData,
    Moments,
    SummaryStatistics,
)

SPEC = FeatureSpec(
    numeric=("elevation_m", "rainfall_mm"),
    categorical={"land_use": ("residential", "commercial", "industrial", "airport")},
    label="flooded",
)
WSPEC = FeatureSpec(
    numeric=("elevation_m", "rainfall_mm"),
    categorical={"land_use": ("residential", "commercial", "industrial", "airport")},
    label="flooded",
    weight="households",
)


def frame(n: int = 6) -> pd.DataFrame:
    levels = ["residential", "commercial", "industrial"]
    return pd.DataFrame(
        {
            "elevation_m": np.linspace(150.0, 200.0, n),
            "rainfall_mm": np.arange(n, dtype=float) * 3.0,
            "land_use": [levels[i % 3] for i in range(n)],
            "flooded": [i % 2 for i in range(n)],
            "households": np.arange(1, n + 1, dtype=float),
            "notes": ["ignored"] * n,
        }
    )


def error_of(data: pd.DataFrame, spec: FeatureSpec = SPEC, agency: str = "water") -> DataError:
    with pytest.raises(DataError) as info:
        AgencyDataset.from_frame(data, spec, agency=agency)
    err = info.value
    assert err.agency == agency
    assert repr(agency) in str(err)
    if err.column is not None:
        assert repr(err.column) in str(err)
    return err


# ---- FeatureSpec -----------------------------------------------------------------------------


def test_spec_normalises_and_describes_columns() -> None:
    spec = FeatureSpec(
        numeric=["a", "b"],  # type: ignore[arg-type]
        categorical={"c": ["x", "y"]},  # type: ignore[dict-item]
        label="y",
        weight="w",
    )
    assert spec.numeric == ("a", "b")
    assert spec.categorical["c"] == ("x", "y")
    assert spec.features == ("a", "b", "c")
    assert spec.columns == ("a", "b", "c", "y", "w")
    assert hash(spec) == hash(pickle.loads(pickle.dumps(spec)))
    assert pickle.loads(pickle.dumps(spec)) == spec
    with pytest.raises(AttributeError):
        spec.label = "z"  # type: ignore[misc]


def test_spec_does_not_share_the_callers_mapping() -> None:
    vocab: dict[str, tuple[str, ...]] = {"c": ("x", "y")}
    spec = FeatureSpec(numeric=(), categorical=vocab, label="y")
    vocab["c"] = ("z",)
    assert spec.categorical["c"] == ("x", "y")


def test_spec_vocabulary_order_matters_for_equality() -> None:
    one = FeatureSpec(numeric=(), categorical={"c": ("x",), "d": ("y",)}, label="l")
    two = FeatureSpec(numeric=(), categorical={"d": ("y",), "c": ("x",)}, label="l")
    assert one != two


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"numeric": ("",), "categorical": {}, "label": "y"}, "non-empty"),
        ({"numeric": "ab", "categorical": {}, "label": "y"}, "sequence"),
        ({"numeric": ("a",), "categorical": {}, "label": ""}, "label"),
        ({"numeric": ("a",), "categorical": {}, "label": "y", "weight": " "}, "weight"),
        ({"numeric": (), "categorical": {}, "label": "y"}, "at least one"),
        ({"numeric": ("a", "a"), "categorical": {}, "label": "y"}, "more than once"),
        ({"numeric": ("a",), "categorical": {"a": ("x",)}, "label": "y"}, "more than once"),
        ({"numeric": ("a",), "categorical": {}, "label": "a"}, "also listed as a feature"),
        ({"numeric": ("a",), "categorical": {}, "label": "y", "weight": "y"}, "weight"),
        ({"numeric": ("a",), "categorical": {}, "label": "y", "weight": "a"}, "weight"),
        ({"numeric": (), "categorical": {"c": ()}, "label": "y"}, "empty"),
        ({"numeric": (), "categorical": {"c": "xy"}, "label": "y"}, "sequence"),
        ({"numeric": (), "categorical": {"c": ("x", "x")}, "label": "y"}, "repeats"),
        ({"numeric": (), "categorical": {"c": ("x", 1)}, "label": "y"}, "strings"),
        ({"numeric": (), "categorical": {"c": ("x", "")}, "label": "y"}, "strings"),
        ({"numeric": (), "categorical": {"": ("x",)}, "label": "y"}, "non-empty"),
        ({"numeric": (), "categorical": [("c", ("x",))], "label": "y"}, "mapping"),
    ],
)
def test_spec_rejects(kwargs: dict[str, object], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        FeatureSpec(**kwargs)  # type: ignore[arg-type]


# ---- DataError -------------------------------------------------------------------------------


def test_data_error_names_agency_and_column_and_pickles() -> None:
    err = DataError("broken", agency="police", column="heat")
    assert isinstance(err, ValueError)
    assert str(err) == "agency 'police', column 'heat': broken"
    back = pickle.loads(pickle.dumps(err))
    assert (back.agency, back.column, back.detail, str(back)) == (
        "police",
        "heat",
        "broken",
        str(err),
    )
    assert str(DataError("empty", agency="police")) == "agency 'police': empty"


# ---- from_frame validation -------------------------------------------------------------------


def test_valid_frame_loads_and_ignores_extra_columns() -> None:
    ds = AgencyDataset.from_frame(frame(), SPEC, agency="water")
    assert ds.n_samples == len(ds) == 6
    assert ds.agency == "water"
    assert ds.spec is SPEC
    assert "notes" not in ds.to_frame().columns
    assert repr(ds) == "AgencyDataset(agency='water', n_samples=6)"


def test_missing_columns_are_all_named() -> None:
    err = error_of(frame().drop(columns=["rainfall_mm", "flooded"]))
    assert err.column == "rainfall_mm"
    assert "'rainfall_mm'" in str(err) and "'flooded'" in str(err)


def test_missing_weight_column() -> None:
    err = error_of(frame().drop(columns=["households"]), WSPEC)
    assert err.column == "households"


def test_repeated_column_is_rejected() -> None:
    data = frame()
    data = pd.concat([data, data[["elevation_m"]]], axis=1)
    assert error_of(data).column == "elevation_m"


def test_empty_table() -> None:
    err = error_of(frame().iloc[0:0])
    assert err.column is None
    assert "no rows" in str(err)


@pytest.mark.parametrize(
    ("column", "value"),
    [
        ("elevation_m", np.nan),
        ("rainfall_mm", None),
        ("land_use", None),
        ("land_use", ""),
        ("land_use", "   "),
        ("flooded", np.nan),
        ("households", np.nan),
    ],
)
def test_missing_values_name_column_count_and_first_row(column: str, value: object) -> None:
    data = frame()
    data[column] = data[column].astype(object)
    data.loc[[2, 4], column] = value
    err = error_of(data, WSPEC)
    assert err.column == column
    assert "2 missing value(s)" in str(err)
    assert "first at row index 2" in str(err)


def test_missing_values_report_index_labels() -> None:
    data = frame().set_axis([f"r{i}" for i in range(6)])
    data.loc["r3", "elevation_m"] = np.nan
    assert "row index 'r3'" in str(error_of(data))


@pytest.mark.parametrize("column", ["elevation_m", "flooded", "households"])
def test_non_numeric_values(column: str) -> None:
    data = frame()
    data[column] = data[column].astype(object)
    data.loc[1, column] = "high"
    data.loc[3, column] = "high"
    data.loc[4, column] = "n/a?"
    err = error_of(data, WSPEC)
    assert err.column == column
    assert "3 non-numeric value(s)" in str(err)
    assert "'high'" in str(err) and "'n/a?'" in str(err)
    assert "first at row index 1" in str(err)


def test_numeric_strings_are_accepted() -> None:
    data = frame()
    data["rainfall_mm"] = [" 1.5", "2", "3e1", "4", "5", "6"]
    ds = AgencyDataset.from_frame(data, SPEC, agency="water")
    assert ds.X_numeric()[:3, 1].tolist() == [1.5, 2.0, 30.0]


def test_label_strings_are_non_numeric() -> None:
    data = frame()
    data["flooded"] = ["yes", "no"] * 3
    assert error_of(data).column == "flooded"


def test_complex_numeric_column() -> None:
    data = frame()
    data["elevation_m"] = data["elevation_m"].astype(complex)
    assert "complex" in str(error_of(data))


@pytest.mark.parametrize("column", ["elevation_m", "flooded", "households"])
def test_infinite_values(column: str) -> None:
    data = frame()
    data[column] = data[column].astype(float)
    data.loc[5, column] = -np.inf
    err = error_of(data, WSPEC)
    assert err.column == column
    assert "non-finite" in str(err)


def test_nan_string_is_non_finite() -> None:
    data = frame()
    data["rainfall_mm"] = data["rainfall_mm"].astype(object)
    data.loc[0, "rainfall_mm"] = "nan"
    assert "non-finite" in str(error_of(data))


def test_negative_weights() -> None:
    data = frame()
    data.loc[[1, 2], "households"] = -1.0
    err = error_of(data, WSPEC)
    assert err.column == "households"
    assert "2 negative weight(s)" in str(err)
    assert "first at row index 1" in str(err)


def test_zero_weights_are_allowed() -> None:
    data = frame()
    data["households"] = 0.0
    assert AgencyDataset.from_frame(data, WSPEC, agency="w").sample_weight().sum() == 0.0


def test_unexpected_levels_are_named() -> None:
    data = frame(12)
    data.loc[3, "land_use"] = "farm"
    data.loc[5, "land_use"] = "Residential"
    err = error_of(data)
    assert err.column == "land_use"
    assert "2 value(s) outside the declared vocabulary" in str(err)
    assert "'farm', 'Residential'" in str(err)
    assert "first at row index 3" in str(err)


def test_unexpected_levels_list_only_the_first_few() -> None:
    data = frame(12)
    data["land_use"] = [f"zone{i}" for i in range(12)]
    message = str(error_of(data))
    assert "'zone0'" in message and "'zone4'" in message
    assert "'zone5'" not in message
    assert "and 7 more" in message


def test_categorical_values_match_by_string_form() -> None:
    spec = FeatureSpec(numeric=("x",), categorical={"district": ("7", "12", "007")}, label="y")
    ints = pd.DataFrame({"x": [1.0, 2.0, 3.0], "district": [7, 12, 7], "y": [0, 1, 0]})
    floats = ints.assign(district=[7.0, 12.0, 7.0])
    strings = ints.assign(district=["007", "12", "7"])
    assert AgencyDataset.from_frame(ints, spec, agency="a").categorical_codes()[:, 0].tolist() == [
        0,
        1,
        0,
    ]
    assert AgencyDataset.from_frame(floats, spec, agency="a").level_counts("district").tolist() == [
        2,
        1,
        0,
    ]
    codes = AgencyDataset.from_frame(strings, spec, agency="a").categorical_codes()
    assert codes[:, 0].tolist() == [2, 1, 0]
    err = error_of(ints.assign(district=[7.5, 12.0, 7.0]), spec)
    assert "'7.5'" in str(err)


def test_pandas_categorical_and_bool_dtypes() -> None:
    spec = FeatureSpec(numeric=("flag",), categorical={"c": ("a", "b")}, label="y")
    data = pd.DataFrame({"flag": [True, False], "c": pd.Categorical(["b", "a"]), "y": [1, 0]})
    ds = AgencyDataset.from_frame(data, spec, agency="a")
    assert ds.X_numeric()[:, 0].tolist() == [1.0, 0.0]
    assert ds.categorical_codes()[:, 0].tolist() == [1, 0]


def test_nullable_dtypes() -> None:
    data = frame().astype({"rainfall_mm": "Float64", "flooded": "Int64"})
    AgencyDataset.from_frame(data, SPEC, agency="a")
    data.loc[2, "flooded"] = pd.NA
    assert error_of(data).column == "flooded"


def test_constructor_argument_types() -> None:
    with pytest.raises(ValueError, match="agency"):
        AgencyDataset.from_frame(frame(), SPEC, agency="")
    with pytest.raises(TypeError, match="DataFrame"):
        AgencyDataset.from_frame(frame().to_dict(), SPEC, agency="a")
    with pytest.raises(TypeError, match="FeatureSpec"):
        AgencyDataset.from_frame(frame(), {"numeric": ()}, agency="a")  # type: ignore[arg-type]


# ---- files -----------------------------------------------------------------------------------


def test_csv_round_trip(tmp_path: Path) -> None:
    path = tmp_path / "water.csv"
    frame().to_csv(path, index=False)
    ds = AgencyDataset.from_csv(path, SPEC, agency="water")
    ref = AgencyDataset.from_frame(frame(), SPEC, agency="water")
    np.testing.assert_array_equal(ds.X_numeric(), ref.X_numeric())
    np.testing.assert_array_equal(ds.categorical_codes(), ref.categorical_codes())
    np.testing.assert_array_equal(ds.y(), ref.y())


def test_csv_keeps_categorical_strings_and_reports_missing(tmp_path: Path) -> None:
    spec = FeatureSpec(numeric=("x",), categorical={"ward": ("007", "12")}, label="y")
    path = tmp_path / "a.csv"
    path.write_text("x,ward,y\n1,007,0\n2,12,1\n")
    assert AgencyDataset.from_csv(path, spec, agency="a").level_counts("ward").tolist() == [1, 1]
    path.write_text("x,ward,y\n1,007,0\n2,,1\n3,NA,0\n")
    with pytest.raises(DataError, match=r"2 missing value\(s\).*row index 1") as info:
        AgencyDataset.from_csv(path, spec, agency="a")
    assert info.value.column == "ward"


def test_csv_missing_column_and_empty_file(tmp_path: Path) -> None:
    path = tmp_path / "a.csv"
    path.write_text("elevation_m,flooded\n1,0\n")
    with pytest.raises(DataError, match="rainfall_mm") as info:
        AgencyDataset.from_csv(path, SPEC, agency="a")
    assert info.value.column == "rainfall_mm"
    path.write_text("elevation_m,rainfall_mm,land_use,flooded\n")
    with pytest.raises(DataError, match="no rows"):
        AgencyDataset.from_csv(path, SPEC, agency="a")
    path.write_text("")
    with pytest.raises(DataError, match="cannot read CSV"):
        AgencyDataset.from_csv(path, SPEC, agency="a")


def test_missing_file_names_the_path(tmp_path: Path) -> None:
    path = tmp_path / "nowhere.csv"
    for reader in (AgencyDataset.from_csv, AgencyDataset.from_parquet, AgencyDataset.from_path):
        with pytest.raises(DataError, match="does not exist") as info:
            reader(path, SPEC, agency="water")
        assert str(path) in str(info.value)
        assert info.value.agency == "water" and info.value.column is None
    with pytest.raises(DataError, match="not a regular file"):
        AgencyDataset.from_csv(tmp_path, SPEC, agency="water")


def test_parquet_round_trip_reads_only_declared_columns(tmp_path: Path) -> None:
    path = tmp_path / "water.parquet"
    frame().to_parquet(path, index=False)
    ds = AgencyDataset.from_parquet(path, SPEC, agency="water")
    ref = AgencyDataset.from_frame(frame(), SPEC, agency="water")
    np.testing.assert_array_equal(ds.X_numeric(), ref.X_numeric())
    np.testing.assert_array_equal(ds.categorical_codes(), ref.categorical_codes())
    frame().drop(columns=["land_use"]).to_parquet(path, index=False)
    with pytest.raises(DataError, match="land_use"):
        AgencyDataset.from_parquet(path, SPEC, agency="water")


def test_corrupt_parquet(tmp_path: Path) -> None:
    path = tmp_path / "water.parquet"
    path.write_bytes(b"not a parquet file")
    with pytest.raises(DataError, match="cannot read Parquet") as info:
        AgencyDataset.from_parquet(path, SPEC, agency="water")
    assert info.value.agency == "water"


@pytest.mark.parametrize("name", ["a.csv", "a.CSV", "a.parquet", "a.pq", "a.PQ"])
def test_from_path_dispatches_on_suffix(tmp_path: Path, name: str) -> None:
    path = tmp_path / name
    if name.lower().endswith(".csv"):
        frame().to_csv(path, index=False)
    else:
        frame().to_parquet(path, index=False)
    assert AgencyDataset.from_path(path, SPEC, agency="a").n_samples == 6


@pytest.mark.parametrize("name", ["a.xlsx", "a.json", "a"])
def test_from_path_rejects_other_suffixes(tmp_path: Path, name: str) -> None:
    path = tmp_path / name
    path.write_text("x")
    with pytest.raises(DataError, match="unsupported file type") as info:
        AgencyDataset.from_path(path, SPEC, agency="a")
    assert info.value.agency == "a"


# ---- accessors -------------------------------------------------------------------------------


def test_accessor_shapes_dtypes_and_copies() -> None:
    ds = AgencyDataset.from_frame(frame(), SPEC, agency="a")
    x = ds.X_numeric()
    assert x.shape == (6, 2) and x.dtype == np.float64
    codes = ds.categorical_codes()
    assert codes.shape == (6, 1) and codes.dtype == np.int64
    assert codes[:, 0].tolist() == [0, 1, 2, 0, 1, 2]
    assert ds.y().dtype == np.float64 and ds.y().tolist() == [0, 1, 0, 1, 0, 1]
    np.testing.assert_array_equal(ds.sample_weight(), np.ones(6))
    x[:] = 0.0
    codes[:] = 3
    assert ds.X_numeric()[0, 0] == 150.0
    assert ds.categorical_codes()[0, 0] == 0


def test_no_categorical_columns() -> None:
    spec = FeatureSpec(numeric=("elevation_m",), categorical={}, label="flooded")
    ds = AgencyDataset.from_frame(frame(), spec, agency="a")
    assert ds.categorical_codes().shape == (6, 0)
    assert ds.summary().level_counts == {}


def test_level_counts_over_the_declared_vocabulary() -> None:
    ds = AgencyDataset.from_frame(frame(7), SPEC, agency="a")
    counts = ds.level_counts("land_use")
    assert counts.dtype == np.int64
    assert counts.tolist() == [3, 2, 2, 0]
    with pytest.raises(KeyError, match="not a categorical column"):
        ds.level_counts("elevation_m")


def test_local_moments_are_weighted() -> None:
    data = frame()
    ds = AgencyDataset.from_frame(data, WSPEC, agency="a")
    moments = ds.local_moments()
    assert isinstance(moments, Moments)
    count, sums, squares = moments
    w = data["households"].to_numpy()
    x = data[["elevation_m", "rainfall_mm"]].to_numpy()
    assert count == pytest.approx(w.sum())
    np.testing.assert_allclose(sums, w @ x)
    np.testing.assert_allclose(squares, w @ x**2)
    np.testing.assert_array_equal(ds.sample_weight(), w)
    unweighted = AgencyDataset.from_frame(data, SPEC, agency="a").local_moments()
    assert unweighted.count == 6.0
    np.testing.assert_allclose(unweighted.sums, x.sum(axis=0))


def test_to_frame_round_trips() -> None:
    data = frame().set_axis(range(10, 16))
    ds = AgencyDataset.from_frame(data, WSPEC, agency="a")
    out = ds.to_frame()
    assert list(out.columns) == list(WSPEC.columns)
    assert list(out.index) == list(range(10, 16))
    again = AgencyDataset.from_frame(out, WSPEC, agency="a")
    np.testing.assert_array_equal(again.X_numeric(), ds.X_numeric())
    np.testing.assert_array_equal(again.categorical_codes(), ds.categorical_codes())
    np.testing.assert_array_equal(again.sample_weight(), ds.sample_weight())


# ---- summary statistics ----------------------------------------------------------------------


def test_summary_adds_and_round_trips_through_a_vector() -> None:
    a = AgencyDataset.from_frame(frame(5), SPEC, agency="a").summary()
    b = AgencyDataset.from_frame(frame(9), SPEC, agency="b").summary()
    total = SummaryStatistics.total([a, b])
    assert total.count == 14.0
    assert total.level_counts["land_use"].tolist() == [5, 5, 4, 0]
    vector = total.to_vector()
    assert vector.shape == (SummaryStatistics.vector_length(SPEC),) == (1 + 4 + 4,)
    noisy = vector + np.r_[0.0, np.zeros(4), np.full(4, 0.3)]
    back = SummaryStatistics.from_vector(SPEC, noisy)
    assert back.level_counts["land_use"].tolist() == [5, 5, 4, 0]
    np.testing.assert_array_equal(back.sums, total.sums)
    np.testing.assert_array_equal(back.sums_of_squares, total.sums_of_squares)


def test_summary_vector_errors() -> None:
    good = AgencyDataset.from_frame(frame(), SPEC, agency="a").summary().to_vector()
    with pytest.raises(ValueError, match="length"):
        SummaryStatistics.from_vector(SPEC, good[:-1])
    with pytest.raises(ValueError, match="non-finite"):
        SummaryStatistics.from_vector(SPEC, np.r_[good[:-1], np.nan])
    with pytest.raises(ValueError, match="negative level count"):
        SummaryStatistics.from_vector(SPEC, np.r_[good[:-1], -2.0])
    with pytest.raises(ValueError, match="negative total"):
        SummaryStatistics.from_vector(SPEC, np.r_[-1.0, good[1:]])
    with pytest.raises(ValueError, match="at least one"):
        SummaryStatistics.total([])


def test_summaries_of_different_specs_do_not_add() -> None:
    a = AgencyDataset.from_frame(frame(), SPEC, agency="a").summary()
    other = FeatureSpec(numeric=("elevation_m",), categorical={}, label="flooded")
    b = AgencyDataset.from_frame(frame(), other, agency="b").summary()
    with pytest.raises(ValueError, match="different feature specs"):
        a + b


# ---- FederatedData ---------------------------------------------------------------------------


def make_federation(**overrides: object) -> FederatedData:
    a = AgencyDataset.from_frame(frame(4), SPEC, agency="a")
    b = AgencyDataset.from_frame(frame(5), SPEC, agency="b")
    kwargs: dict[str, object] = {
        "name": "toy",
        "task": "binary",
        "spec": SPEC,
        "agencies": (a, b),
        "test": frame(3),
    }
    kwargs.update(overrides)
    return FederatedData(**kwargs)  # type: ignore[arg-type]


def test_federated_data_pools_and_sums() -> None:
    fed = make_federation()
    assert fed.agency_names == ("a", "b")
    assert fed.sizes == {"a": 4, "b": 5}
    assert fed.n_train == 9
    pooled = fed.train_frame()
    assert len(pooled) == 9 and pooled["agency"].tolist() == ["a"] * 4 + ["b"] * 5
    assert fed.summary().count == 9.0
    assert fed.test_dataset().agency == "test"
    with pytest.raises(ValueError, match="clashes"):
        fed.train_frame(agency_column="flooded")


def test_federated_data_validation() -> None:
    a = AgencyDataset.from_frame(frame(4), SPEC, agency="a")
    with pytest.raises(ValueError, match="repeat"):
        make_federation(agencies=(a, a))
    with pytest.raises(ValueError, match="at least one agency"):
        make_federation(agencies=())
    with pytest.raises(ValueError, match="task"):
        make_federation(task="ranking")
    other = AgencyDataset.from_frame(frame(), WSPEC, agency="c")
    with pytest.raises(ValueError, match="another spec"):
        make_federation(agencies=(a, other))
    with pytest.raises(DataError) as info:
        make_federation(test=frame(3).drop(columns=["land_use"]))
    assert info.value.agency == "test" and info.value.column == "land_use"
