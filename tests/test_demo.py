"""``make demo`` end to end, small: real processes, enrolled over mutual TLS, pooled = federated."""

from __future__ import annotations

import subprocess
import sys


def test_the_demo_runs_enrolled_with_mutual_tls(tmp_path):
    out = tmp_path / "run"
    args = ["--key-bits", "512", "--agencies", "3", "--threshold", "2", "--rows", "1200"]
    proc = subprocess.run(
        [sys.executable, "-m", "fedcity.demo", *args, "--out", str(out)],
        capture_output=True,
        text=True,
        timeout=600,
        env={"COLUMNS": "200", "PATH": "/usr/bin:/bin"},
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "enrollment" in proc.stdout and "mutual TLS" in proc.stdout
    for agency in ("district-1", "district-2", "district-3"):
        tls = out / "agencies" / agency / "tls"
        assert (tls / "cert.pem").exists()
        assert (tls / "key.pem").stat().st_mode & 0o077 == 0
        assert "tls_cert_file" in (out / "agencies" / agency / "agency.toml").read_text()
    log = (out / "coordinator" / "coordinator.log").read_text()
    assert "mutual TLS" in log and "Traceback" not in log
