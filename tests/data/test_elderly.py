"""make_elderly_city: residents and daily electricity use per district, with planted spells."""

from __future__ import annotations

from datetime import date, timedelta

import numpy as np
import pandas as pd
import pytest

from fedcity.data.synthetic import AGE_BANDS, ElderlyCity, age_band, make_elderly_city


@pytest.fixture(scope="module")
def city() -> ElderlyCity:
    return make_elderly_city(5, residents=4000, days=10, seed=3)


def test_deterministic_given_seed() -> None:
    one = make_elderly_city(3, residents=600, days=7, seed=5)
    two = make_elderly_city(3, residents=600, days=7, seed=5)
    assert one.residents.equals(two.residents)
    assert one.electricity.equals(two.electricity)
    assert one.spells.equals(two.spells)
    other = make_elderly_city(3, residents=600, days=7, seed=6)
    assert not one.electricity.equals(other.electricity)


def test_shapes_and_districts(city: ElderlyCity) -> None:
    assert city.districts == tuple(f"district-{i}" for i in range(1, 6))
    res, use = city.residents, city.electricity
    assert len(res) == 4000 and res["resident_id"].is_unique
    assert len(use) == 4000 * 10
    sizes = res.groupby("district").size()
    assert sizes.min() >= 30 and sizes["district-1"] == sizes.max()
    # the utility's and civil affairs' tables agree on who lives where
    lookup = res.set_index("resident_id")["district"]
    assert (use["resident_id"].map(lookup) == use["district"]).all()
    # every resident has one reading per day, on consecutive days from start
    days = sorted(use["day"].unique())
    assert days == [city.start + timedelta(days=i) for i in range(10)]
    assert (use.groupby("resident_id").size() == 10).all()
    assert set(res["lives_alone"].unique()) <= {0, 1}
    assert res["age"].between(18, 100).all()


def test_district_split(city: ElderlyCity) -> None:
    res, use = city.district("district-2")
    assert (res["district"] == "district-2").all() and (use["district"] == "district-2").all()
    assert set(use["resident_id"]) == set(res["resident_id"])
    with pytest.raises(KeyError, match="no district 'district-9'"):
        city.district("district-9")


def test_living_alone_grows_with_age() -> None:
    big = make_elderly_city(2, residents=60_000, days=2, seed=1)
    share = big.residents.groupby(age_band(big.residents["age"]))["lives_alone"].mean()
    ordered = share[["under 65", *AGE_BANDS]].to_numpy()
    assert np.all(np.diff(ordered) > 0)
    assert abs(share["85+"] - 0.52) < 0.05


def test_planted_spells_are_near_zero_and_nothing_else_is(city: ElderlyCity) -> None:
    use = city.electricity.set_index(["resident_id", "day"])["kwh"]
    in_spell = pd.Series(False, index=use.index)
    for row in city.spells.itertuples(index=False):
        assert 1 <= row.days <= 4
        for i in range(row.days):
            key = (row.resident_id, row.start + timedelta(days=i))
            assert use[key] <= 0.3
            in_spell[key] = True
    assert city.spells["resident_id"].is_unique
    # outside spells, no day is below 0.5 kWh (the threshold the example uses)
    assert use[~in_spell.to_numpy()].min() >= 0.5
    assert len(city.spells) > 0


def test_spell_rate_zero_and_elderly_alone_more_often() -> None:
    none = make_elderly_city(2, residents=500, days=5, spell_rate=0.0, seed=2)
    assert none.spells.empty
    big = make_elderly_city(2, residents=40_000, days=5, spell_rate=0.1, seed=2)
    res = big.residents.assign(spell=big.residents["resident_id"].isin(big.spells["resident_id"]))
    old_alone = (res["age"] >= 65) & (res["lives_alone"] == 1)
    assert abs(res.loc[old_alone, "spell"].mean() - 0.2) < 0.03
    assert abs(res.loc[~old_alone, "spell"].mean() - 0.1) < 0.01


def test_age_band() -> None:
    assert list(age_band([18, 64, 65, 74, 75, 84, 85, 100])) == [
        "under 65",
        "under 65",
        "65-74",
        "65-74",
        "75-84",
        "75-84",
        "85+",
        "85+",
    ]


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"n_districts": 0}, "n_districts must be a positive integer"),
        ({"residents": 50}, "residents=50 must lie in"),
        ({"days": 1}, r"days must be an integer in \[2, 3660\]"),
        ({"spell_rate": 0.9}, r"spell_rate must lie in \[0, 0.5\]"),
        ({"skew": -1.0}, "skew must be finite and non-negative"),
        ({"start": "2026-13-01"}, "start must be a date YYYY-MM-DD"),
        ({"residents": 5_000_000, "days": 20}, "exceeds 50,000,000 readings"),
    ],
)
def test_bad_arguments(kwargs: dict[str, object], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        make_elderly_city(**kwargs)  # type: ignore[arg-type]


def test_start_is_a_date(city: ElderlyCity) -> None:
    assert city.start == date(2026, 1, 5) and city.n_days == 10
