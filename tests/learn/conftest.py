import pytest
from learning_data import breast_cancer, key_3_of_5, skewed_split  # noqa: F401  (fixtures)

from fedcity.data.dataset import FeatureSpec


@pytest.fixture(scope="session")
def diabetes():
    from sklearn.datasets import load_diabetes

    data = load_diabetes(as_frame=True, scaled=False)
    frame = data.frame.copy()
    frame["sex"] = frame["sex"].map({1.0: "one", 2.0: "two"})
    numeric = tuple(c for c in frame.columns if c not in ("target", "sex"))
    spec = FeatureSpec(numeric=numeric, categorical={"sex": ("one", "two")}, label="target")
    return frame, spec
