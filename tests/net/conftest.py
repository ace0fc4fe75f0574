"""Fixtures of the in-process loopback federation (see ``loopback.py``)."""

from __future__ import annotations

import hashlib
import json

import pandas as pd
import pytest
from loopback import AGENCIES, ROLES, TOKENS, signing_keys

from fedcity.crypto import deal_threshold_key
from fedcity.data.dataset import AgencyDataset, FeatureSpec
from fedcity.learn import LocalFederation, LogisticRegressionJob
from fedcity.net.coordinator import (
    CoordinatorServer,
)


@pytest.fixture(scope="module")
def key():
    return deal_threshold_key(512, threshold=2, parties=3)


@pytest.fixture(scope="module")
def data():
    from sklearn.datasets import load_breast_cancer

    frame = load_breast_cancer(as_frame=True).frame.rename(columns=lambda c: c.replace(" ", "_"))
    frame["size_class"] = pd.cut(frame["mean_area"], [0, 400, 800, 1e9], labels=["s", "m", "l"])
    frame["size_class"] = frame["size_class"].astype(str)
    spec = FeatureSpec(
        numeric=("mean_radius", "mean_texture", "mean_smoothness", "mean_symmetry"),
        categorical={"size_class": ("s", "m", "l", "xl")},
        label="target",
    )
    ordered = frame.sort_values("mean_texture", kind="stable").reset_index(drop=True)
    cuts = [0, 120, 330, len(ordered)]  # unequal, non-IID agencies
    tables = [
        AgencyDataset.from_frame(ordered.iloc[a:b], spec, agency=name)
        for name, a, b in zip(AGENCIES, cuts[:-1], cuts[1:], strict=True)
    ]
    return frame, spec, tables


@pytest.fixture(scope="module")
def local_result(key, data):
    """The same job in process: what the network must reproduce."""
    _, _, tables = data
    with LocalFederation(tables, threshold=2, key=key) as fed:
        return LogisticRegressionJob(C=0.5).fit(fed)


@pytest.fixture
def files(tmp_path, key):
    tpk, _ = key
    federation = tmp_path / "federation-public.json"
    federation.write_text(
        json.dumps(
            {
                "format": "fedcity.federation",
                "version": 1,
                "threshold_public_key": tpk.to_json_dict(),
                "agencies": {name: i + 1 for i, name in enumerate(AGENCIES)},
                "signing_keys": signing_keys(),
            }
        )
    )
    credentials = tmp_path / "credentials.json"
    credentials.write_text(
        json.dumps(
            {
                "principals": [
                    {
                        "name": name,
                        "role": ROLES[name],
                        "token_sha256": hashlib.sha256(token.encode()).hexdigest(),
                    }
                    for name, token in TOKENS.items()
                ]
            }
        )
    )
    return {"federation": federation, "credentials": credentials, "db": tmp_path / "coord.sqlite"}


@pytest.fixture
def servers():
    """Servers a test started; all stopped at the end."""
    started: list[CoordinatorServer] = []
    yield started
    for s in started:
        s.stop(grace=0)
