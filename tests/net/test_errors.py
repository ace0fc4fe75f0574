"""Mistakes an operator or a data scientist makes get one actionable sentence, not a traceback.

Real processes on loopback: a federation dealt by ``fedcity keys deal`` (512-bit key) with the
sample data of ``fedcity data synth``, a TLS coordinator started by ``fedcity coordinator
serve``, agents started by ``fedcity agent run`` with the ``agency.toml`` the ceremony wrote.
Ctrl-C is SIGINT sent to the process group, as a terminal does.
"""

from __future__ import annotations

import argparse
import os
import re
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

PY = sys.executable
REPO = Path(__file__).resolve().parents[2]
AGENCIES = "district-1,district-2,district-3"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def fedcity(*args: str, cwd: Path, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("FEDCITY_", "GRPC_"))}
    return subprocess.run(
        [PY, "-m", "fedcity.cli", *args],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


class Proc:
    """A background process in its own session, output in a log file."""

    def __init__(self, args: list[str], cwd: Path, log: Path) -> None:
        self.log = log
        self._fh = open(log, "wb")  # noqa: SIM115 - closed in stop()
        env = {k: v for k, v in os.environ.items() if not k.startswith(("FEDCITY_", "GRPC_"))}
        self.popen = subprocess.Popen(
            args,
            cwd=cwd,
            stdout=self._fh,
            stderr=subprocess.STDOUT,
            start_new_session=True,
            env=env,
        )

    def text(self) -> str:
        return self.log.read_text(errors="replace")

    def wait_for(self, pattern: str, timeout: float = 60) -> None:
        deadline = time.monotonic() + timeout
        while not re.search(pattern, self.text()):
            if self.popen.poll() is not None:
                raise AssertionError(f"exited with {self.popen.returncode}:\n{self.text()}")
            if time.monotonic() > deadline:
                raise AssertionError(f"no {pattern!r} within {timeout} s:\n{self.text()}")
            time.sleep(0.1)

    def wait(self, timeout: float = 60) -> int:
        return self.popen.wait(timeout=timeout)

    def interrupt(self) -> None:
        os.killpg(self.popen.pid, signal.SIGINT)

    def stop(self) -> None:
        if self.popen.poll() is None:
            os.killpg(self.popen.pid, signal.SIGTERM)
            try:
                self.popen.wait(timeout=15)
            except subprocess.TimeoutExpired:
                os.killpg(self.popen.pid, signal.SIGKILL)
                self.popen.wait()
        self._fh.close()


def last_line(text: str) -> str:
    lines = [line for line in text.strip().splitlines() if line.strip()]
    return lines[-1] if lines else ""


def assert_one_sentence(proc: subprocess.CompletedProcess[str], code: int, *needles: str) -> str:
    """Exit ``code``, no traceback, and the last stderr line holds every needle."""
    assert proc.returncode == code, (proc.returncode, proc.stderr)
    assert "Traceback" not in proc.stderr + proc.stdout, proc.stderr
    line = last_line(proc.stderr)
    for needle in needles:
        assert needle in line, line
    return line


# -- a federation and its coordinator -----------------------------------------------------------
@pytest.fixture(scope="module")
def fed(tmp_path_factory):
    root = tmp_path_factory.mktemp("errors")
    port = free_port()
    for args in (
        ("data", "synth", "--agencies", "3", "--out", "data", "--rows", "600"),
        ("keys", "deal", "--agencies", AGENCIES, "--threshold", "2", "--key-bits", "512",
         "--coordinator", f"127.0.0.1:{port}", "--data-dir", "data", "--out", "federation"),
        ("keys", "deal", "--agencies", AGENCIES, "--threshold", "2", "--key-bits", "512",
         "--out", "other"),
    ):  # fmt: skip
        proc = fedcity(*args, cwd=root)
        assert proc.returncode == 0, proc.stderr
    return root, port


def serve_args(root: Path, port: int, fed_dir: str = "federation", db: str = "") -> list[str]:
    return [
        PY, "-m", "fedcity.cli", "coordinator", "serve", "--listen", f"127.0.0.1:{port}",
        "--db", db or f"{root}/{fed_dir}/coordinator/coordinator.sqlite",
        "--federation", f"{root}/{fed_dir}/federation-public.json",
        "--credentials", f"{root}/{fed_dir}/coordinator/credentials.json",
        "--tls-cert", f"{root}/{fed_dir}/coordinator/server.pem",
        "--tls-key", f"{root}/{fed_dir}/coordinator/server.key",
    ]  # fmt: skip


@pytest.fixture(scope="module")
def coordinator(fed):
    root, port = fed
    proc = Proc(serve_args(root, port), root, root / "coordinator.log")
    try:
        proc.wait_for("coordinator listening on")
        yield proc
    finally:
        proc.stop()


def agency_toml(root: Path, agency: str, name: str, edit) -> Path:
    """A variant of the ceremony's agency.toml (same folder, so relative paths still hold)."""
    folder = root / "federation" / "agencies" / agency
    text = (folder / "agency.toml").read_text()
    path = folder / name
    path.write_text(edit(text))
    return path


def agent(root: Path, config: Path, log: str) -> Proc:
    return Proc(
        [PY, "-m", "fedcity.cli", "agent", "run", "--config", str(config)], root, root / log
    )


def client(root: Path, port: int, *extra: str) -> subprocess.CompletedProcess[str]:
    return fedcity(
        "agencies", "list", "--coordinator", f"127.0.0.1:{port}",
        "--token-file", "federation/scientists/analyst/token", *extra, cwd=root,
    )  # fmt: skip


# -- transport ---------------------------------------------------------------------------------
def test_client_with_a_wrong_ca(fed, coordinator):
    root, port = fed
    proc = client(root, port, "--ca-file", "other/tls/ca.pem")
    assert_one_sentence(proc, 1, "did not sign", "other/tls/ca.pem", "same key ceremony")
    assert len(proc.stderr.strip().splitlines()) == 1, proc.stderr  # no gRPC log lines


def test_client_insecure_against_tls(fed, coordinator):
    root, port = fed
    proc = client(root, port, "--insecure")
    assert_one_sentence(proc, 1, "serves TLS", "plaintext", "--ca-file")


def test_client_with_nothing_listening(fed):
    root, _ = fed
    proc = client(root, free_port(), "--ca-file", "federation/tls/ca.pem")
    assert_one_sentence(proc, 1, "nothing is listening at 127.0.0.1:")


def test_client_tls_against_a_plaintext_coordinator(fed, tmp_path):
    root, _ = fed
    port = free_port()
    args = serve_args(root, port, db=str(tmp_path / "plain.sqlite"))
    args = [a for a in args[: args.index("--tls-cert")]] + ["--insecure"]
    plain = Proc(args, root, tmp_path / "plain.log")
    try:
        plain.wait_for("coordinator listening on")
        proc = client(root, port, "--ca-file", "federation/tls/ca.pem")
        assert_one_sentence(proc, 1, "does not speak TLS", "--insecure")
    finally:
        plain.stop()


def test_agent_with_a_wrong_ca(fed, coordinator):
    root, _ = fed
    config = agency_toml(
        root,
        "district-3",
        "wrong-ca.toml",
        lambda t: t.replace('ca_file = "ca.pem"', f'ca_file = "{root}/other/tls/ca.pem"'),
    )
    proc = agent(root, config, "agent-wrong-ca.log")
    try:
        assert proc.wait(timeout=60) == 1
    finally:
        proc.stop()
    text = proc.text()
    assert "Traceback" not in text
    assert "did not sign" in last_line(text) and "same key ceremony" in last_line(text), text


def test_agent_insecure_against_tls(fed, coordinator):
    root, _ = fed
    config = agency_toml(
        root,
        "district-3",
        "insecure.toml",
        lambda t: re.sub(r"ca_file = .*\n", "insecure = true\n", t),
    )
    proc = agent(root, config, "agent-insecure.log")
    try:
        assert proc.wait(timeout=60) == 1
    finally:
        proc.stop()
    assert "Traceback" not in proc.text()
    assert "serves TLS" in last_line(proc.text()), proc.text()


# -- the coordinator's files -------------------------------------------------------------------
def test_swapped_certificate_and_key(fed, tmp_path):
    root, _ = fed
    args = serve_args(root, free_port(), db=str(tmp_path / "c.sqlite"))
    cert, key = args.index("--tls-cert") + 1, args.index("--tls-key") + 1
    args[cert], args[key] = args[key], args[cert]
    proc = fedcity(*args[3:], cwd=root)
    assert_one_sentence(proc, 2, "swapped")
    assert len(proc.stderr.strip().splitlines()) == 1, proc.stderr


def test_key_of_another_certificate(fed, tmp_path):
    root, _ = fed
    args = serve_args(root, free_port(), db=str(tmp_path / "c.sqlite"))
    args[args.index("--tls-key") + 1] = f"{root}/other/coordinator/server.key"
    proc = fedcity(*args[3:], cwd=root)
    assert_one_sentence(proc, 2, "is not the private key of --tls-cert")


def test_missing_db_folder(fed, tmp_path):
    root, _ = fed
    db = tmp_path / "no" / "such" / "coordinator.sqlite"
    proc = fedcity(*serve_args(root, free_port(), db=str(db))[3:], cwd=root)
    line = assert_one_sentence(proc, 2, "does not exist", "mkdir -p")
    assert str(db.parent) in line
    assert not db.parent.exists()


def test_coordinator_on_another_federations_store(fed, tmp_path):
    root, _ = fed
    db = str(tmp_path / "c.sqlite")
    port = free_port()
    first = Proc(serve_args(root, port, "other", db=db), root, tmp_path / "first.log")
    try:
        first.wait_for("coordinator listening on")
    finally:
        first.stop()
    proc = fedcity(*serve_args(root, free_port(), "federation", db=db)[3:], cwd=root)
    assert_one_sentence(proc, 2, "belongs to another federation", "new --db")
    # the same federation is accepted again
    again = Proc(serve_args(root, free_port(), "other", db=db), root, tmp_path / "again.log")
    try:
        again.wait_for("coordinator listening on")
    finally:
        again.stop()


# -- agents ------------------------------------------------------------------------------------
def test_share_of_another_agency(fed):
    root, _ = fed
    config = agency_toml(
        root,
        "district-1",
        "borrowed-share.toml",
        lambda t: t.replace('key_file = "share.json"', 'key_file = "../district-2/share.json"'),
    )
    proc = fedcity("agent", "run", "--config", str(config), cwd=root)
    assert_one_sentence(proc, 1, "holds key share 2", "'district-2'", "not to 'district-1'")


def test_duplicate_agent_and_ctrl_c_with_worker_processes(fed, coordinator):
    root, _ = fed
    config = agency_toml(
        root,
        "district-1",
        "workers.toml",
        lambda t: t.replace("crypto_workers = 1 ", "crypto_workers = 2 "),
    )
    first = agent(root, config, "agent-first.log")
    try:
        first.wait_for("registered with")
        assert "2 crypto worker processes ready" in first.text()
        workers = _children(first.popen.pid)
        assert len(workers) >= 2, workers
        time.sleep(0.5)  # the first agent is in its long poll now
        second = agent(root, root / "federation/agencies/district-1/agency.toml", "agent-2.log")
        try:
            assert second.wait(timeout=60) == 1
        finally:
            second.stop()
        line = last_line(second.text())
        assert "Traceback" not in second.text()
        assert "already has an agent connected" in line and "district-1" in line, line
        first.interrupt()  # Ctrl-C in the first agent's terminal
        assert first.wait(timeout=60) == 0
    finally:
        first.stop()
    text = first.text()
    assert "Traceback" not in text and "KeyboardInterrupt" not in text, text
    assert "agent district-1 stopped" in last_line(text), text
    deadline = time.monotonic() + 15
    while any(_alive(pid) for pid in workers) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not any(_alive(pid) for pid in workers)


def _children(pid: int) -> list[int]:
    out = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[1]) == pid:
            out.append(int(stat.parent.name))
    return out


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


# -- warnings ----------------------------------------------------------------------------------
def test_threshold_one_warns(tmp_path):
    proc = fedcity(
        "keys", "deal", "--agencies", "a,b", "--threshold", "1", "--key-bits", "256",
        "--out", "fed", cwd=tmp_path,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    warning = [line for line in proc.stderr.splitlines() if line.startswith("warning:")]
    assert len(warning) == 1 and "--threshold 1" in warning[0]
    assert "read every other agency's individual contributions" in warning[0]
    proc = fedcity(
        "keys", "deal", "--agencies", "a,b", "--threshold", "2", "--key-bits", "256",
        "--out", "fed2", cwd=tmp_path,
    )  # fmt: skip
    assert proc.returncode == 0 and "warning:" not in proc.stderr


def test_min_agencies_one_warns(tmp_path):
    token = tmp_path / "token"
    token.write_text("t\n")
    token.chmod(0o600)
    proc = fedcity(
        "job", "submit", "--coordinator", f"127.0.0.1:{free_port()}", "--insecure",
        "--token-file", str(token), "--type", "ridge", "--dataset", "d", "--min-agencies", "1",
        cwd=tmp_path,
    )  # fmt: skip
    lines = proc.stderr.strip().splitlines()
    assert lines[0].startswith("warning: --min-agencies 1"), proc.stderr
    assert "that agency's own figures" in lines[0]
    assert proc.returncode == 1 and len(lines) == 2  # then the connection error


# -- the demo and the examples -------------------------------------------------------------------
@pytest.mark.parametrize(
    ("option", "value", "needle"),
    [
        ("--key-bits", "100", "the key size must lie between 512 and 8,192"),
        ("--rows", "10", "the number of rows must lie between 100"),
        ("--timeout", "1", "give 30 to 86,400 seconds"),
        ("--agencies", "1", "the number of agencies must lie between 2 and 50"),
        ("--key-bits", "abc", "expected an integer"),
    ],
)
def test_demo_options_are_validated(option, value, needle, tmp_path):
    proc = subprocess.run(
        [PY, "-m", "fedcity.demo", option, value, "--out", str(tmp_path / "run")],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert proc.returncode == 2
    line = last_line(proc.stderr)
    assert f"argument {option}" in line and needle in line, line
    assert not (tmp_path / "run").exists()


def _interrupt_when(args: list[str], ready: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    """Start ``args`` in a session of its own, send Ctrl-C once ``ready`` is printed."""
    proc = subprocess.Popen(
        args,
        cwd=cwd,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},  # each line as soon as it is printed
    )
    out = ""
    assert proc.stdout is not None
    deadline = time.monotonic() + 120
    while ready not in out:
        line = proc.stdout.readline()
        if not line or time.monotonic() > deadline:
            proc.kill()
            raise AssertionError(f"{ready!r} never printed:\n{out}\n{proc.communicate()}")
        out += line
    os.killpg(proc.pid, signal.SIGINT)
    rest, err = proc.communicate(timeout=120)
    return subprocess.CompletedProcess(args, proc.returncode, out + rest, err)


def test_demo_ctrl_c_stops_everything_with_one_line(tmp_path):
    run = tmp_path / "run"
    args = [PY, "-m", "fedcity.demo", "--key-bits", "512", "--agencies", "2", "--threshold",
            "2", "--rows", "400", "--out", str(run)]  # fmt: skip
    proc = _interrupt_when(args, "processes: coordinator on", REPO)  # agents connecting
    assert proc.returncode == 130, proc.stderr
    assert "Traceback" not in proc.stdout + proc.stderr
    assert last_line(proc.stderr) == (
        "demo interrupted (Ctrl-C): every process it started was stopped"
    )
    assert "coordinator stopped" in (run / "coordinator" / "coordinator.log").read_text()
    for log in run.glob("agencies/*/agent.log"):  # stopped (or killed before it had started)
        assert "Traceback" not in log.read_text(), log
    left = [pid for pid, cmd in _commands() if str(run) in cmd]
    assert not left, left  # no coordinator or agent of the run is left


def _commands() -> list[tuple[int, str]]:
    out = []
    for path in Path("/proc").glob("[0-9]*/cmdline"):
        try:
            out.append((int(path.parent.name), path.read_bytes().replace(b"\0", b" ").decode()))
        except (OSError, UnicodeDecodeError):
            continue
    return out


def test_example_ctrl_c_is_one_line(tmp_path):
    args = [PY, str(REPO / "examples" / "elderly_living_alone.py"), "--residents", "2000",
            "--key-bits", "2048"]  # fmt: skip
    proc = _interrupt_when(args, "residents in", tmp_path)  # interrupted while dealing the key
    assert proc.returncode == 130, proc.stderr
    assert proc.stderr.strip() == "elderly_living_alone.py: interrupted (Ctrl-C)", proc.stderr


# -- help texts ----------------------------------------------------------------------------------
COMMANDS = ("keys", "coordinator", "agent", "data", "job", "query", "agencies")
"""The operations and job commands (the CA and audit commands are checked with governance)."""


def _options(parser: argparse.ArgumentParser, where: str):
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                if where == "fedcity" and name not in COMMANDS:
                    continue
                yield from _options(sub, f"{where} {name}")
        elif action.option_strings and action.dest not in ("help", "version"):
            yield where, action


def test_every_option_has_help_with_its_default():
    from fedcity.cli import build_parser
    from fedcity.demo import build_parser as demo_parser
    from fedcity.net.coordinator.server import _parser as serve_parser

    missing = []
    for parser, where in (
        (build_parser(), "fedcity"),
        (serve_parser(), "fedcity coordinator serve"),
        (demo_parser(), "python -m fedcity.demo"),
    ):
        for command, action in _options(parser, where):
            text = (action.help or "").lower()
            if not text or not ("default" in text or "required" in text or "with --" in text):
                missing.append(f"{command} {'/'.join(action.option_strings)}: {action.help!r}")
    assert not missing, "\n".join(missing)


# -- in process: the messages no loopback run above produces ------------------------------------
def test_private_key_of_the_key_holder_given_to_another_agency(tmp_path):
    from fedcity.net.agent import Agent, AgentError
    from fedcity.net.agentconfig import AgentConfig
    from fedcity.net.ceremony import deal_federation

    files = deal_federation(tmp_path / "fed", ["a", "b"], 1, key_bits=512, key_holder="b")
    folder = files.agency_configs["a"].parent
    (folder / "data").mkdir()
    for name in ("flood.csv", "flood_holdout.csv"):
        (folder / "data" / name).write_text("x\n")
    text = files.agency_configs["a"].read_text()
    borrowed = folder / "borrowed.toml"
    borrowed.write_text(
        text.replace('key_file = "public-key.json"', 'key_file = "../b/private-key.json"')
    )
    with pytest.raises(AgentError, match=r"private key, which belongs to the key holder 'b'"):
        Agent(AgentConfig.from_toml(borrowed))


@pytest.mark.parametrize(
    ("details", "needle"),
    [
        ("Tls handshake failed: CERTIFICATE_VERIFY_FAILED: certificate has expired", "expired"),
        ("Peer name coordinator.example is not in peer certificate", "does not name"),
    ],
)
def test_certificate_problems_are_named(details, needle):
    from fedcity.net.channel import diagnose_connection

    diagnosis = diagnose_connection("127.0.0.1:9", details, insecure=False, ca_file="ca.pem")
    assert diagnosis is not None and diagnosis.fatal and needle in diagnosis.message


def test_an_unrelated_failure_is_left_alone():
    from fedcity.net.channel import diagnose_connection

    with socket.socket() as server:  # a TCP port that answers neither TLS nor gRPC
        server.bind(("127.0.0.1", 0))
        server.listen()
        port = server.getsockname()[1]
        assert diagnose_connection("not an address", "x", insecure=False, ca_file=None) is None
        diagnosis = diagnose_connection(
            f"127.0.0.1:{port}", "Socket closed", insecure=True, ca_file=None, timeout=0.5
        )
    assert diagnosis is None  # no handshake either way: nothing to say beyond gRPC's details
