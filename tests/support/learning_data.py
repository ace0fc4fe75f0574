"""Learning fixtures shared by tests/learn and tests/plots: a small threshold key, skewed
agency splits and the breast-cancer frame."""

import itertools

import numpy as np
import pandas as pd
import pytest

from fedcity.crypto import deal_threshold_key
from fedcity.data.dataset import AgencyDataset, FeatureSpec


@pytest.fixture(scope="session")
def key_3_of_5():
    """A 3-of-5 threshold key; 512 bits keeps learning tests fast (2048 in benchmarks)."""
    return deal_threshold_key(512, threshold=3, parties=5)


def _skewed_split(frame, spec, *, sort_by, sizes, prefix="agency"):
    """Non-IID, very unequal agencies: sort by a feature, then cut at the given fractions."""
    ordered = frame.sort_values(sort_by, kind="stable").reset_index(drop=True)
    cuts = np.cumsum(np.asarray(sizes) / np.sum(sizes) * len(ordered)).astype(int)
    bounds = [0, *cuts[:-1].tolist(), len(ordered)]
    parts = [ordered.iloc[a:b] for a, b in itertools.pairwise(bounds)]
    return [AgencyDataset.from_frame(p, spec, agency=f"{prefix}-{i}") for i, p in enumerate(parts)]


@pytest.fixture(scope="session")
def skewed_split():
    return _skewed_split


@pytest.fixture(scope="session")
def breast_cancer():
    from sklearn.datasets import load_breast_cancer

    data = load_breast_cancer(as_frame=True)
    frame = data.frame.rename(columns=lambda c: c.replace(" ", "_"))
    features = tuple(c for c in frame.columns if c != "target")[:10]
    frame["size_class"] = pd.cut(frame["mean_area"], [0, 400, 800, 1e9], labels=["s", "m", "l"])
    frame["size_class"] = frame["size_class"].astype(str)
    spec = FeatureSpec(
        numeric=features, categorical={"size_class": ("s", "m", "l", "xl")}, label="target"
    )
    return frame, spec
