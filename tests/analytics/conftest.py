"""Shared fixtures of the analytics tests: small keys, a synthetic multi-agency table."""

from __future__ import annotations

import pandas as pd
import pytest
from analytics_data import SCHEMA, synthetic_permits

from fedcity.analytics import LocalTable
from fedcity.crypto import deal_threshold_key


@pytest.fixture(scope="session")
def key_3_of_5():
    """A 3-of-5 threshold key; 512 bits keeps the tests fast (2048 in benchmarks)."""
    return deal_threshold_key(512, threshold=3, parties=5)


@pytest.fixture(scope="session")
def key_2_of_3():
    """A 2-of-3 threshold key (512 bits)."""
    return deal_threshold_key(512, threshold=2, parties=3)


@pytest.fixture(scope="session")
def permits() -> pd.DataFrame:
    """The pooled synthetic table (column ``agency`` says who holds each row)."""
    return synthetic_permits()


@pytest.fixture(scope="session")
def permit_tables(permits):
    """One LocalTable per agency (DataFrames)."""
    return [
        LocalTable(g.drop(columns="agency").reset_index(drop=True), SCHEMA, agency=str(a))
        for a, g in permits.groupby("agency", sort=True)
    ]
