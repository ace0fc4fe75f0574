"""docs/operations.md's walkthrough, run as written on a fresh clone over loopback.

The ``console`` blocks after a ``<!-- walkthrough -->`` marker are run in order, verbatim, by
one bash process (so ``source``, ``export`` and ``JOB=$(...)`` carry over), from the root of a
fresh ``git clone`` of this repository whose ``.venv`` is a link to the one running the tests.
Blocks marked ``<!-- walkthrough: background -->`` hold one long-running command per line (a
terminal of its own in the doc): each is started in the background, with its output in a log
file, and the script waits until it is ready (the coordinator listening, an agent
registered). At the end every background process gets SIGINT (Ctrl-C) and must exit with code
0 without a traceback.

The only change to the text: the doc's port 50051 becomes a free port, so that the test does
not collide with anything else on the machine.
"""

from __future__ import annotations

import contextlib
import os
import pickle
import re
import shlex
import signal
import socket
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
DOC = REPO / "docs" / "operations.md"
DOC_PORT = "50051"

_BLOCK = re.compile(
    r"<!-- walkthrough(?P<mode>: background)? -->\s*\n```console\n(?P<body>.*?)\n```", re.S
)


def walkthrough(text: str) -> list[tuple[bool, list[str]]]:
    """The marked blocks: (background?, commands), continuation lines joined."""
    blocks = []
    for m in _BLOCK.finditer(text):
        commands: list[str] = []
        pending = ""
        for line in m.group("body").splitlines():
            if not pending:
                assert line.startswith("$ "), f"a walkthrough line must start with '$ ': {line!r}"
                line = line[2:]
            pending += line
            if pending.endswith("\\"):
                pending = pending[:-1].rstrip() + " "
                continue
            commands.append(" ".join(pending.split()))
            pending = ""
        assert not pending, "a walkthrough block ends in a continuation line"
        blocks.append((m.group("mode") is not None, commands))
    return blocks


def _ready_pattern(command: str) -> str:
    """What a background command prints once it is ready."""
    words = shlex.split(command)
    if words[:3] == ["fedcity", "coordinator", "serve"]:
        return "coordinator listening on"
    if words[:3] == ["fedcity", "agent", "run"]:
        return "registered with"
    raise AssertionError(f"the test does not know when {command!r} is ready")


def _free_port() -> str:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return str(s.getsockname()[1])


def script(blocks: list[tuple[bool, list[str]]], port: str) -> str:
    """One bash script: foreground commands as written, background ones with logs and waits."""
    lines = [
        "set -euo pipefail",
        "set -m  # every background command in a process group of its own, as in a terminal",
        "mkdir -p .walkthrough",
        "ready() {  # ready LOG PATTERN PID",
        "  for _ in $(seq 1 1200); do",
        '    grep -q "$2" "$1" && return 0',
        '    kill -0 "$3" 2>/dev/null || { echo "exited early: $1" >&2; cat "$1" >&2; exit 1; }',
        "    sleep 0.1",
        "  done",
        '  echo "not ready after 120 s: $1" >&2; cat "$1" >&2; exit 1',
        "}",
    ]
    n = 0
    for background, commands in blocks:
        for command in commands:
            command = command.replace(f"127.0.0.1:{DOC_PORT}", f"127.0.0.1:{port}")
            if not background:
                lines.append(f"echo '+ {command}'")
                lines.append(command)
                continue
            n += 1
            log = f".walkthrough/bg{n}.log"
            lines += [
                f"{command} > {log} 2>&1 &",
                f"echo $! > .walkthrough/bg{n}.pid",
                f"ready {log} {shlex.quote(_ready_pattern(command))} $!",
            ]
    # Ctrl-C in every terminal, agents first; each must exit 0
    for i in range(n, 0, -1):
        lines += [
            f"pid=$(cat .walkthrough/bg{i}.pid)",
            'kill -INT -- "-$pid"',
            f'wait "$pid" && echo 0 > .walkthrough/bg{i}.exit || echo $? > .walkthrough/bg{i}.exit',
        ]
    return "\n".join(lines) + "\n"


def test_the_walkthrough_is_marked_and_complete():
    blocks = walkthrough(DOC.read_text(encoding="utf-8"))
    commands = [c for _, cs in blocks for c in cs]
    assert commands[0] == "source .venv/bin/activate"
    assert any(c.startswith("fedcity data synth") for c in commands)
    assert any(c.startswith("fedcity keys deal") for c in commands)
    background = [c for bg, cs in blocks if bg for c in cs]
    assert sum(c.startswith("fedcity coordinator serve") for c in background) == 1
    assert sum(c.startswith("fedcity agent run") for c in background) >= 2
    text = DOC.read_text(encoding="utf-8")
    assert ".venv/bin/fedcity" in text  # the other way onto the PATH is named too


@pytest.mark.skipif(not (REPO / ".venv" / "bin" / "fedcity").exists(), reason="no .venv")
def test_walkthrough_runs_verbatim(tmp_path):
    clone = tmp_path / "clone"
    subprocess.run(
        ["git", "clone", "--quiet", str(REPO), str(clone)], check=True, capture_output=True
    )
    if not (clone / "examples" / "queries" / "flood_by_land_use.toml").exists():
        pytest.skip("the walkthrough's files are not committed yet")
    (clone / ".venv").symlink_to(REPO / ".venv")
    blocks = walkthrough(DOC.read_text(encoding="utf-8"))
    (clone / "walkthrough.sh").write_text(script(blocks, _free_port()), encoding="utf-8")
    env = {k: v for k, v in os.environ.items() if not k.startswith("FEDCITY_")}
    env["PATH"] = "/usr/bin:/bin"  # fedcity only through the doc's `source .venv/bin/activate`
    env.pop("VIRTUAL_ENV", None)
    try:
        proc = subprocess.run(
            ["bash", "walkthrough.sh"],
            cwd=clone,
            env=env,
            capture_output=True,
            text=True,
            timeout=900,
            check=False,
        )
    finally:
        for pid_file in (clone / ".walkthrough").glob("*.pid"):
            pid = int(pid_file.read_text())
            with contextlib.suppress(ProcessLookupError):
                os.killpg(pid, signal.SIGKILL)
    logs = {p.name: p.read_text() for p in (clone / ".walkthrough").glob("*.log")}
    assert proc.returncode == 0, (proc.stdout[-4000:], proc.stderr[-4000:], logs)
    out = proc.stdout

    # the job ran to the end, was evaluated, and its model is a working pipeline
    assert re.search(r"succeeded", out), out
    assert "evaluation:" in out
    model = pickle.loads((clone / "model.pkl").read_bytes())
    import pandas as pd

    holdout = pd.read_csv(clone / "data" / "district-1" / "flood_holdout.csv")
    p = model.predict_proba(holdout)[:, 1]
    assert ((p > 0) & (p < 1)).all()
    assert (clone / "result.json").stat().st_size > 0
    assert "land_use" in out and "flooded_pct" in out  # the query's table

    # every background process stopped on Ctrl-C with code 0 and no traceback
    exits = sorted((clone / ".walkthrough").glob("*.exit"))
    assert len(exits) == len(logs) >= 4
    for e in exits:
        assert e.read_text().strip() == "0", (e.name, logs[e.name.replace(".exit", ".log")])
    for name, text in logs.items():
        assert "Traceback" not in text, (name, text)
    # the coordinator and the agents echoed the paths they resolved
    assert re.search(
        r"database +/\S+/federation/coordinator/coordinator\.sqlite\n", logs["bg1.log"]
    ), logs["bg1.log"]
    agent_logs = [t for t in logs.values() if "registered with" in t]
    assert len(agent_logs) == 3
    for text in agent_logs:
        assert re.search(r"dataset flood +/\S+/data/district-\d/flood\.csv", text), text
        assert re.search(r"CA +/\S+/federation/agencies/district-\d/ca\.pem", text), text


if __name__ == "__main__":  # print the script the test would run
    print(script(walkthrough(DOC.read_text(encoding="utf-8")), _free_port()), file=sys.stdout)
