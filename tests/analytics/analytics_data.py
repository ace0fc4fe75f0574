"""The synthetic multi-agency table of the analytics tests (imported by tests and conftest)."""

from __future__ import annotations

import numpy as np
import pandas as pd

from fedcity.analytics import TableSchema

SCHEMA = TableSchema(
    "permits",
    {
        "district": "category",
        "kind": "category",
        "day": "date",
        "units": "integer",
        "cost": "float",
        "note": "text",
    },
)
DISTRICTS = [f"D{i}" for i in range(1, 7)]
KINDS = ["new", "repair", "demo"]
AGENCIES = [f"agency-{i}" for i in range(5)]


def synthetic_permits(seed: int = 7) -> pd.DataFrame:
    """Five agencies of very unequal size; district D6 occurs at agency-0 only.

    ``units`` is a nullable integer, ``cost`` a float with two decimals and missing values,
    ``day`` a date in 2020, ``note`` free text.
    """
    rng = np.random.default_rng(seed)
    parts = []
    for i, (agency, n) in enumerate(zip(AGENCIES, [900, 400, 250, 120, 60], strict=True)):
        districts = DISTRICTS[:5] if i else DISTRICTS
        district = rng.choice(districts, n)
        kind = rng.choice(KINDS, n, p=[0.6, 0.35, 0.05])
        day = pd.Timestamp("2020-01-01") + pd.to_timedelta(rng.integers(0, 366, n), unit="D")
        units = pd.array(rng.integers(0, 500, n), dtype="Int64")
        units[rng.random(n) < 0.05] = pd.NA
        cost = np.round(rng.gamma(2.0, 800.0, n), 2)
        cost = np.where(cost > 9999.0, 9999.0, cost)
        cost[rng.random(n) < 0.04] = np.nan
        parts.append(
            pd.DataFrame(
                {
                    "agency": agency,
                    "district": district,
                    "kind": kind,
                    "day": day.date,
                    "units": units,
                    "cost": cost,
                    "note": rng.choice(["ok", "late", 'x"; DROP TABLE __data; --'], n),
                }
            )
        )
    return pd.concat(parts, ignore_index=True)
