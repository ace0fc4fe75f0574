"""Real-process orchestration for networked tests: what ``fedcity.demo`` does, reusable.

A :class:`Setup` is a dealt federation (``deal_federation``: threshold key, tokens, TLS) plus
one CSV per agency (:func:`deal` draws them with ``make_city``). A :class:`Cluster` starts the
coordinator and the agents as separate ``python -m fedcity.cli`` processes (each in its own
session, output in its own log file), waits for health and registrations, hands out signals,
and kills every process it started when it exits, also when the test failed.

Used by ``tests/net/test_faults.py`` and ``benchmarks/bench_network.py``. Only 127.0.0.1 is
ever used.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import sqlite3
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

from fedcity.crypto import KeyShare, ThresholdPublicKey
from fedcity.data.dataset import AgencyDataset, FeatureSpec
from fedcity.net.ceremony import FederationFiles, deal_federation, load_federation
from fedcity.net.client import Client

PY = sys.executable
HOST = "127.0.0.1"
T = TypeVar("T")


def free_port() -> int:
    """A TCP port on 127.0.0.1 that was free a moment ago."""
    with socket.socket() as s:
        s.bind((HOST, 0))
        return int(s.getsockname()[1])


def wait_until(check: Callable[[], T], *, timeout: float, what: str, interval: float = 0.05) -> T:
    """Poll ``check`` until it returns something truthy; AssertionError after ``timeout`` s."""
    deadline = time.monotonic() + timeout
    while True:
        value = check()
        if value:
            return value
        if time.monotonic() >= deadline:
            raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}")
        time.sleep(interval)


# -- the federation on disk ---------------------------------------------------------------------
@dataclass
class Setup:
    """A dealt federation with every agency's data written to its own CSV file."""

    root: Path
    files: FederationFiles
    agencies: list[str]
    threshold: int
    dataset: str
    spec: FeatureSpec
    csv: dict[str, Path]

    def key(self) -> tuple[ThresholdPublicKey, list[KeyShare]]:
        """The threshold key and the shares in agency order (agency i holds share i + 1)."""
        tpk = load_federation(self.files.public).threshold_key
        return tpk, [KeyShare.load(self.files.shares[a]) for a in self.agencies]

    def tables(self) -> dict[str, AgencyDataset]:
        """Every agency's table, read from the very file its agent reads."""
        return {a: AgencyDataset.from_path(self.csv[a], self.spec, agency=a) for a in self.agencies}

    def write_agent_config(
        self, folder: Path, agency: str, coordinator: str, *, insecure: bool = False
    ) -> Path:
        """An agent TOML (absolute paths) pointing at ``coordinator``; returns its path."""
        folder.mkdir(parents=True, exist_ok=True)
        lines = [
            f'agency = "{agency}"',
            f'coordinator = "{coordinator}"',
            f"token_file = {json.dumps(str(self.files.agency_tokens[agency]))}",
            f"key_file = {json.dumps(str(self.files.key_file(agency)))}",
            f"signing_key_file = {json.dumps(str(self.files.signing_keys[agency]))}",
            f"federation_file = {json.dumps(str(self.files.public))}",
        ]
        if insecure:
            lines.append("insecure = true")
        else:
            lines.append(f"ca_file = {json.dumps(str(self.files.ca_cert))}")
        cats = ", ".join(
            f"{c} = {json.dumps(list(levels))}" for c, levels in self.spec.categorical.items()
        )
        lines += [
            f"log_file = {json.dumps(str(folder / 'tasks.jsonl'))}",
            "",
            f"[datasets.{self.dataset}]",
            f"path = {json.dumps(str(self.csv[agency]))}",
            f"numeric = {json.dumps(list(self.spec.numeric))}",
            f"categorical = {{ {cats} }}",
            f'label = "{self.spec.label}"',
        ]
        path = folder / "agency.toml"
        path.write_text("\n".join(lines) + "\n", encoding="utf-8")
        return path


def deal(
    root: Path,
    n_agencies: int,
    threshold: int,
    *,
    key_bits: int = 512,
    task: str = "flood",
    rows: int = 3000,
    seed: int = 2026,
    dataset: str = "flood",
    key_holder: str | None = None,
) -> Setup:
    """Run the key ceremony and write one synthetic city table per agency under ``root``.

    ``key_holder`` (an agency name, or ``"first"``) deals a key-holder federation instead.
    """
    from fedcity.data import make_city

    city = make_city(n_agencies, task=task, n_samples=rows, seed=seed)  # type: ignore[arg-type]
    agencies = [a.agency for a in city.agencies]
    if key_holder == "first":
        key_holder = agencies[0]
    files = deal_federation(root, agencies, threshold, key_bits=key_bits, key_holder=key_holder)
    csv = {}
    for data in city.agencies:
        path = root / "data" / f"{data.agency}.csv"
        path.parent.mkdir(parents=True, exist_ok=True)
        data.to_frame().to_csv(path, index=False)
        csv[data.agency] = path
    return Setup(root, files, agencies, threshold, dataset, city.spec, csv)


# -- processes ------------------------------------------------------------------------------------
@dataclass
class Proc:
    """A process the cluster started (its own session: its pid is its process group)."""

    name: str
    popen: subprocess.Popen[bytes]
    log: Path

    @property
    def pid(self) -> int:
        return int(self.popen.pid)

    def alive(self) -> bool:
        return self.popen.poll() is None

    def signal(self, sig: int) -> None:
        """Send ``sig`` to this process's group (no-op once it exited and was reaped)."""
        if self.popen.poll() is None:
            os.killpg(self.pid, sig)

    def kill9(self) -> None:
        """``kill -9`` and reap."""
        self.signal(signal.SIGKILL)
        self.popen.wait(timeout=30)

    def log_text(self) -> str:
        try:
            return self.log.read_text(encoding="utf-8", errors="replace")
        except OSError:
            return ""


@dataclass
class Cluster:
    """Coordinator and agents of one test as real processes; all killed on exit.

    Parameters
    ----------
    setup : Setup
    workdir : Path
        Logs, agent configs and (by default) the coordinator database go here.
    """

    setup: Setup
    workdir: Path
    procs: list[Proc] = field(default_factory=list)
    clients: list[Client] = field(default_factory=list)

    def __enter__(self) -> Cluster:
        self.workdir.mkdir(parents=True, exist_ok=True)
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        """Kill every process still running (SIGKILL to its group) and close clients."""
        for client in self.clients:
            client.close()
        self.clients.clear()
        for proc in self.procs:
            if proc.popen.poll() is None:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(proc.pid, signal.SIGKILL)
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.popen.wait(timeout=30)

    def _start(self, name: str, cmd: Sequence[str]) -> Proc:
        log = self.workdir / f"{name}.log"
        env = {**os.environ, "PYTHONUNBUFFERED": "1"}
        with open(log, "ab") as fh:
            popen = subprocess.Popen(
                list(cmd), stdout=fh, stderr=subprocess.STDOUT, start_new_session=True, env=env
            )
        proc = Proc(name, popen, log)
        self.procs.append(proc)
        return proc

    @property
    def db(self) -> Path:
        return self.workdir / "coordinator.sqlite"

    def start_coordinator(
        self,
        port: int,
        *,
        db: Path | None = None,
        insecure: bool = False,
        heartbeat: float = 0.5,
        liveness: float = 2.0,
        collect: float = 10.0,
        decrypt: float = 10.0,
        name: str = "coordinator",
        extra: Sequence[str] = (),
    ) -> Proc:
        """``fedcity coordinator serve`` on 127.0.0.1:``port`` (TLS unless ``insecure``)."""
        files = self.setup.files
        cmd = [
            PY,
            "-m",
            "fedcity.cli",
            "coordinator",
            "serve",
            "--listen",
            f"{HOST}:{port}",
            "--db",
            str(db or self.db),
            "--federation",
            str(files.public),
            "--credentials",
            str(files.credentials),
            "--heartbeat-interval",
            str(heartbeat),
            "--liveness-timeout",
            str(liveness),
            "--collect-timeout",
            str(collect),
            "--decrypt-timeout",
            str(decrypt),
            "--max-workers",
            "32",
            *extra,
        ]
        if insecure:
            cmd.append("--insecure")
        else:
            cmd += ["--tls-cert", str(files.server_cert), "--tls-key", str(files.server_key)]
        return self._start(name, cmd)

    def start_agent(self, agency: str, coordinator: str, *, insecure: bool = False) -> Proc:
        """``fedcity agent run`` for ``agency``, dialling ``coordinator`` (host:port)."""
        config = self.setup.write_agent_config(
            self.workdir / "agents" / agency, agency, coordinator, insecure=insecure
        )
        return self._start(
            agency, [PY, "-m", "fedcity.cli", "agent", "run", "--config", str(config)]
        )

    def task_log(self, agency: str) -> list[dict[str, Any]]:
        """The agent's task log: one record per assignment it served."""
        path = self.workdir / "agents" / agency / "tasks.jsonl"
        if not path.exists():
            return []
        return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]

    # -- waiting ----------------------------------------------------------------------------
    def wait_healthy(
        self, address: str, proc: Proc, *, insecure: bool = False, timeout: float = 60.0
    ) -> None:
        """Until the gRPC health service at ``address`` says SERVING."""
        import grpc
        from grpc_health.v1 import health_pb2, health_pb2_grpc

        deadline = time.monotonic() + timeout
        while True:
            if not proc.alive():
                raise AssertionError(
                    f"{proc.name} exited with code {proc.popen.returncode}:\n{proc.log_text()}"
                )
            if insecure:
                channel = grpc.insecure_channel(address)
            else:
                creds = grpc.ssl_channel_credentials(self.setup.files.ca_cert.read_bytes())
                channel = grpc.secure_channel(address, creds)
            try:
                reply = health_pb2_grpc.HealthStub(channel).Check(
                    health_pb2.HealthCheckRequest(), timeout=2
                )
                if reply.status == health_pb2.HealthCheckResponse.SERVING:
                    return
            except grpc.RpcError:
                pass
            finally:
                channel.close()
            if time.monotonic() >= deadline:
                raise AssertionError(f"{proc.name} not healthy within {timeout:.0f} s")
            time.sleep(0.2)

    def client(self, address: str, *, insecure: bool = False) -> Client:
        """The analyst's client (closed with the cluster)."""
        token = self.setup.files.scientist_tokens["analyst"].read_text().strip()
        ca = None if insecure else self.setup.files.ca_cert
        client = Client(address, token, ca_file=ca, insecure=insecure, timeout=15.0)
        self.clients.append(client)
        return client

    def wait_connected(
        self, client: Client, agencies: Sequence[str], *, timeout: float = 90.0
    ) -> None:
        """Until the coordinator lists every one of ``agencies`` as connected."""

        def connected() -> bool:
            for proc in self.procs:
                if proc.name in agencies and not proc.alive():
                    raise AssertionError(f"agent {proc.name} exited:\n{proc.log_text()}")
            return {a.name for a in client.agencies() if a.connected} >= set(agencies)

        wait_until(connected, timeout=timeout, what=f"agencies {list(agencies)} to connect")


# -- the coordinator's store, read-only -----------------------------------------------------------
@dataclass(frozen=True)
class StoredEvent:
    """One row of the coordinator's ``events`` table."""

    job_id: str
    seq: int
    type: str
    agency: str | None
    round: int | None
    payload: bytes | None


def read_events(db: Path, job_id: str | None = None) -> list[StoredEvent]:
    """Every stored event (of one job), in order; opens the SQLite file read-only."""
    con = sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=10)
    try:
        query = "SELECT job_id, seq, type, agency, round, payload FROM events"
        args: tuple[str, ...] = ()
        if job_id is not None:
            query += " WHERE job_id = ?"
            args = (job_id,)
        rows = con.execute(query + " ORDER BY job_id, seq", args).fetchall()
    finally:
        con.close()
    return [
        StoredEvent(r[0], r[1], r[2], r[3], r[4], None if r[5] is None else bytes(r[5]))
        for r in rows
    ]


def read_job(db: Path, job_id: str) -> dict[str, Any]:
    """The stored ``jobs`` row of ``job_id`` as a dict."""
    con = sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=10)
    try:
        con.row_factory = sqlite3.Row
        row = con.execute("SELECT * FROM jobs WHERE id = ?", (job_id,)).fetchone()
    finally:
        con.close()
    if row is None:
        raise AssertionError(f"no job {job_id} in {db}")
    return dict(row)
