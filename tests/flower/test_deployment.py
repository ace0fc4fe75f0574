"""The example Flower app with real flower-superlink and 3 flower-supernode processes.

examples/flower/run.sh starts the processes on loopback (HTTP, offline, runtime dependency
installation off), deals a 512-bit test key with fedcity's dealer and runs one round with
evaluation off. Flower's SuperNodes poll every few seconds, so this takes about 30 s.
"""

from __future__ import annotations

import json
import os
import random
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from fedcity.flower import RoundSpec, average_error_bound

REPO = Path(__file__).resolve().parents[2]
EXAMPLE = REPO / "examples" / "flower"
BIN = Path(sys.executable).parent

pytestmark = pytest.mark.slow


def _free_base_port() -> int:
    for _ in range(50):
        base = random.randrange(40000, 60000)
        try:
            for port in (base, base + 10, base + 11, base + 12):
                with socket.socket() as s:
                    s.bind(("127.0.0.1", port))
            return base
        except OSError:
            continue
    pytest.skip("no free loopback ports")


@pytest.mark.skipif(not (BIN / "flower-superlink").exists(), reason="flwr CLI not installed")
def test_superlink_and_supernodes_on_loopback(tmp_path: Path) -> None:
    sys.path.insert(0, str(EXAMPLE))
    try:
        from fedcity_flower_example.task import initial_model, load_partition, train
    finally:
        sys.path.remove(str(EXAMPLE))
    env = {
        **os.environ,
        "PYTHON_BIN": str(BIN),
        "KEY_BITS": "512",
        "ROUNDS": "1",
        "EVALUATE": "0.0",
        "WORK": str(tmp_path / "work"),
        "RECORD_DIR": str(tmp_path / "received"),
        "PORT": str(_free_base_port()),
    }
    (tmp_path / "work").mkdir()
    proc = subprocess.run(
        ["bash", str(EXAMPLE / "run.sh"), "deployment"],
        env=env,
        capture_output=True,
        text=True,
        timeout=240,
        check=False,
    )
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, out[-4000:]
    [line] = [x for x in out.splitlines() if x.startswith("FEDCITY-SUMMARY ")]
    summary = json.loads(line.removeprefix("FEDCITY-SUMMARY "))
    [rnd] = summary["rounds"]
    # 2-of-3 key: with more than one ciphertext all three holders decrypt parts of the sum
    assert rnd["released"] and rnd["contributors"] == 3 and rnd["decryptors"] == 3
    assert rnd["failed_decryptors"] == 0

    # the released model is plaintext FedAvg of the three nodes' local models
    model = initial_model()
    parts = [load_partition(p, 3) for p in range(3)]
    trained = [train(model, x, y, epochs=5, lr=0.5) for x, y in parts]
    locals_ = [new for new, _ in trained]
    weights = [len(y) for _, y in parts]
    want = {
        k: sum(w * loc[k] for w, loc in zip(weights, locals_, strict=True)) / sum(weights)
        for k in model
    }
    spec = RoundSpec(b"k" * 16, 1.0, 20, 3, 300.0, 512, 1)  # the example's settings
    bound = average_error_bound(spec, 3, sum(weights) / 300.0)
    for k in model:
        got = np.asarray(summary["model"][k])
        assert np.max(np.abs(got - want[k])) <= bound + 1e-12
    # the train loss comes back as its sample-weighted average only (metric_bound 10, clip 1)
    loss = sum(w * lo for w, (_, lo) in zip(weights, trained, strict=True)) / sum(weights)
    assert abs(summary["train"]["1"]["train-loss"] - loss) <= 10 * bound + 1e-9

    # what reached the ServerApp through the SuperLink: ciphertexts only
    files = sorted((tmp_path / "received").glob("round1-reply*.bin"))
    assert len(files) == 3
    blob = b"".join(f.read_bytes() for f in files)
    assert b"fedcity.payload" in blob
    for loc in locals_:
        for k in model:
            delta = loc[k] - model[k]
            for values in (loc[k], delta):
                for i in range(max(1, len(values) - 2)):
                    for dt in ("<f4", "<f8"):
                        assert values[i : i + 3].astype(dt).tobytes() not in blob
    assert b"num-examples" not in blob and b"train-loss" not in blob
    shutil.rmtree(tmp_path / "work" / "flwr-home", ignore_errors=True)
