import numpy as np
import pandas as pd
import pytest

from fedcity.crypto import deal_threshold_key
from fedcity.data.dataset import AgencyDataset, FeatureSpec


@pytest.fixture(scope="session")
def small_threshold_key():
    """A 2-of-3 threshold key; 512 bits keeps the protocol tests fast."""
    return deal_threshold_key(512, threshold=2, parties=3)


@pytest.fixture(scope="session")
def three_datasets():
    spec = FeatureSpec(numeric=("x1", "x2"), categorical={}, label="y")
    rng = np.random.default_rng(7)
    out = []
    for i, n in enumerate((30, 80, 200)):
        f = pd.DataFrame({"x1": rng.normal(i, 1, n), "x2": rng.normal(0, 2, n)})
        f["y"] = (rng.random(n) < 0.4).astype(float)
        out.append(AgencyDataset.from_frame(f, spec, agency=f"agency-{i}"))
    return out
