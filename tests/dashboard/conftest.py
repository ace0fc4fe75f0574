"""Fixtures of the dashboard tests: a real coordinator with its dashboard and finished jobs
(see ``dashkit.py``)."""

from __future__ import annotations

import itertools
import sys
import threading
from pathlib import Path

import pandas as pd
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "net"))

from dashkit import (
    CUTS,
    SECOND,
    TERMINAL,
    DashAgent,
    Federation,
    job_state,
    submit,
    wait_for,
    write_files,
)
from loopback import AGENCIES, DATASET, start

from fedcity.crypto import deal_threshold_key
from fedcity.data.dataset import AgencyDataset, FeatureSpec


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
        numeric=("mean_radius", "mean_texture", "mean_smoothness"),
        categorical={"size_class": ("s", "m", "l")},
        label="target",
    )
    ordered = frame.sort_values("mean_texture", kind="stable").reset_index(drop=True)
    parts = [ordered.iloc[a:b] for a, b in itertools.pairwise(CUTS)]
    tables = [
        AgencyDataset.from_frame(p, spec, agency=name)
        for name, p in zip(AGENCIES, parts, strict=True)
    ]
    return frame, spec, tables, parts


@pytest.fixture(scope="module")
def federation(tmp_path_factory, key, data):
    """A coordinator with its dashboard, three agents in threads and three finished jobs."""
    _, _, tables, parts = data
    files = write_files(tmp_path_factory.mktemp("dashboard"), key)
    server = start(files, dashboard_port=0, collect_timeout=30.0)
    agents = [
        DashAgent(n, t, key, declines=SECOND if n == AGENCIES[2] else None).connect(server.port)
        for n, t in zip(AGENCIES, tables, strict=True)
    ]
    for a in agents:
        a.register()
    stop = threading.Event()
    threads = [threading.Thread(target=a.run, args=(stop,), daemon=True) for a in agents]
    for t in threads:
        t.start()
    try:
        jobs = {
            "full": submit(server.port, "analyst", evaluate_dataset=DATASET),
            "partial": submit(server.port, "analyst", dataset=SECOND, min_agencies=2),
            "rival": submit(server.port, "rival"),
        }
        owners = {"full": "analyst", "partial": "analyst", "rival": "rival"}
        for name, job_id in jobs.items():
            wait_for(
                lambda n=name, j=job_id: job_state(server, owners[n], j) in TERMINAL,
                timeout=240,
                what=f"job {name}",
            )
        errors = [e for a in agents for e in a.errors]
        assert not errors, errors
        figures: dict[str, list[float]] = {}
        for name, part in zip(AGENCIES, parts, strict=True):
            figures[name] = [
                float(len(part)),
                float(part["target"].sum()),
                float(part["mean_radius"].sum()),
                float(part["mean_radius"].mean()),
                float(part["mean_texture"].sum()),
            ]
        yield Federation(server, f"http://127.0.0.1:{server.dashboard_port}", agents, jobs, figures)
    finally:
        stop.set()
        for t in threads:
            t.join(timeout=10)
        server.stop(grace=0)
