"""Faults with real processes and real signals: kill -9, a stalled network, a privacy capture.

Every test starts ``fedcity coordinator serve`` and one ``fedcity agent run`` per agency as
separate processes (see ``harness.py``), on 127.0.0.1 only, with a 512-bit 2-of-3 threshold
key and short timeouts (heartbeat 0.5 s, collect and decrypt 10 s; the liveness timeout is
set per test, see each docstring). Every process a test started is killed when the test
ends, also when it fails, and an alarm bounds every test's wall time.

The moment of a fault is picked from the coordinator's SQLite store, read-only: the job is
"in a Newton round" once the store holds the ``close`` event of the first ``glm.newton``
round. To land a fault *inside* a round deterministically (a 512-bit Newton round takes
~50 ms), the agencies that must go missing are first frozen with SIGSTOP; the job then waits
in an open round (the store shows every other agency's contribution, or stops changing), and
the fault is injected there.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import re
import signal
import sqlite3
import ssl
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from harness import (
    HOST,
    Cluster,
    Setup,
    StoredEvent,
    deal,
    free_port,
    read_events,
    read_job,
    wait_until,
)

from fedcity.core.aggregation import PaillierScheme
from fedcity.core.nodes import AgencyNode
from fedcity.core.rounds import overflow_flag
from fedcity.core.tasks import LOCAL_STEPS, Task
from fedcity.crypto import raw_combine, serde
from fedcity.learn import LocalFederation, LogisticRegressionJob
from fedcity.learn.driver import JobDriver
from fedcity.learn.jobs import job_from_spec
from fedcity.net import messages
from fedcity.net.client import ClientError
from fedcity.v1 import federation_pb2 as fpb

pytestmark = pytest.mark.slow

N_AGENCIES = 3
THRESHOLD = 2
JOB_TYPE, JOB_PARAMS = "logistic_regression", {"C": 1.0}
TEST_SECONDS = 150
"""Hard bound on one test's wall time (SIGALRM); the whole file takes well under that."""
FEDAVG_PARAMS = {
    "estimator": {"class": "SGDClassifier", "params": {"loss": "log_loss", "alpha": 1e-4}},
    "rounds": 3,
    "classes": [0, 1],
}


# -- fixtures -----------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def setup(tmp_path_factory: pytest.TempPathFactory) -> Setup:
    """One ceremony (512-bit 2-of-3 key, tokens, TLS) and one CSV per agency."""
    return deal(tmp_path_factory.mktemp("faults") / "federation", N_AGENCIES, THRESHOLD)


@pytest.fixture(scope="module")
def reference(setup: Setup) -> Any:
    """The uninterrupted job in process, on the same files and the same key."""
    tables = setup.tables()
    with LocalFederation(
        [tables[a] for a in setup.agencies], threshold=THRESHOLD, key=setup.key()
    ) as fed:
        return LogisticRegressionJob(**JOB_PARAMS).fit(fed)


@pytest.fixture
def cluster(setup: Setup, tmp_path: Path) -> Iterator[Cluster]:
    with Cluster(setup, tmp_path / "run") as c:
        yield c


@pytest.fixture(autouse=True)
def _time_bound() -> Iterator[None]:
    """Fail (and so clean up) any test still running after TEST_SECONDS."""

    def expired(signum: int, frame: Any) -> None:
        raise TimeoutError(f"test exceeded {TEST_SECONDS} s")

    previous = signal.signal(signal.SIGALRM, expired)
    signal.alarm(TEST_SECONDS)
    try:
        yield
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, previous)


# -- helpers ------------------------------------------------------------------------------------
def first_newton_round(reference: Any) -> int:
    return next(r.round for r in reference.history_ if r.kind == "glm.newton")


def start_federation(
    cluster: Cluster, *, liveness: float, port: int | None = None, agents_via: int | None = None
) -> tuple[str, Any]:
    """Coordinator (TLS) plus every agent; returns the coordinator's address and a client.

    ``agents_via``: the port agents dial instead of the coordinator's (a proxy).
    """
    port = port or free_port()
    address = f"{HOST}:{port}"
    coordinator = cluster.start_coordinator(port, liveness=liveness)
    dial = address if agents_via is None else f"{HOST}:{agents_via}"
    for agency in cluster.setup.agencies:
        cluster.start_agent(agency, dial)
    cluster.wait_healthy(address, coordinator)
    client = cluster.client(address)
    cluster.wait_connected(client, cluster.setup.agencies)
    return address, client


def in_newton(db: Path, job_id: str, newton: int) -> bool:
    return any(e.type == "close" and (e.round or 0) >= newton for e in read_events(db, job_id))


def stalled_round(db: Path, job_id: str, contributed: set[str]) -> int | None:
    """An open round holding contributions from exactly ``contributed`` (no close yet)."""
    events = read_events(db, job_id)
    closed = {e.round for e in events if e.type == "close"}
    who: dict[int, set[str]] = {}
    for e in events:
        if e.type == "contribution":
            assert e.round is not None and e.agency is not None
            who.setdefault(e.round, set()).add(e.agency)
    for r, agencies in who.items():
        if r not in closed and agencies == contributed:
            return r
    return None


def contributions(events: list[StoredEvent]) -> set[tuple[str | None, int | None, bytes | None]]:
    return {(e.agency, e.round, e.payload) for e in events if e.type == "contribution"}


def final_event(client: Any, job_id: str, timeout: float = 90.0) -> Any:
    events = list(client.watch(job_id, timeout=timeout))
    assert events and events[-1].finished, events
    return events[-1]


def beta(result: dict[str, Any]) -> np.ndarray:
    return np.asarray(result["model"]["beta"], dtype=np.float64)


def assert_no_duplicate_uploads(events: list[StoredEvent]) -> None:
    keys = [(e.type, e.agency, e.round) for e in events if e.type in ("contribution", "partial")]
    assert len(keys) == len(set(keys)), "an upload was stored twice"


def assert_stored_once(cluster: Cluster) -> None:
    """No agent had to upload anything twice: the coordinator never lost an acknowledged upload.

    A re-sent payload the coordinator already holds is answered "already_stored"; a second
    "uploaded" for the same (job, round, action) would mean it had lost the first one.
    """
    for agency in cluster.setup.agencies:
        done = [
            (r["job"], r["round"], r["action"])
            for r in cluster.task_log(agency)
            if r["outcome"] == "uploaded"
        ]
        assert len(done) == len(set(done)), f"{agency} had to upload something twice"


# -- 1. kill -9 the coordinator mid-round ----------------------------------------------------------
def test_coordinator_kill9_mid_round_resumes_with_the_same_result(
    setup: Setup, reference: Any, cluster: Cluster
) -> None:
    """SIGKILL the coordinator while a Newton round holds 2 of 3 contributions, restart it.

    The third agency is frozen (SIGSTOP) so that the round is provably open when the
    coordinator dies; it is thawed (SIGCONT) right after. The liveness timeout is 20 s here:
    after a restart an agent may need its full reconnect backoff (agent retry cap 5 s plus
    gRPC's reconnect backoff, also capped at 5 s) before it is heard again, and this test is
    about losing nothing, not about dropping agencies.
    """
    address, client = start_federation(cluster, liveness=20.0)
    port = int(address.rsplit(":", 1)[1])
    *others, frozen = setup.agencies
    job_id = client.submit(JOB_TYPE, JOB_PARAMS, setup.dataset)
    newton = first_newton_round(reference)
    wait_until(lambda: in_newton(cluster.db, job_id, newton), timeout=60, what="a Newton round")

    victim = next(p for p in cluster.procs if p.name == frozen)
    victim.signal(signal.SIGSTOP)
    try:
        open_round = wait_until(
            lambda: stalled_round(cluster.db, job_id, set(others)),
            timeout=10,
            what=f"a round holding the contributions of {others} only",
        )
        coordinator = next(p for p in cluster.procs if p.name == "coordinator")
        coordinator.kill9()
        assert coordinator.popen.returncode == -signal.SIGKILL
    finally:
        victim.signal(signal.SIGCONT)

    before = read_events(cluster.db, job_id)  # exactly what was durable at the kill
    assert read_job(cluster.db, job_id)["state"] == "running"
    accepted = contributions(before)
    in_open = {(a, r) for a, r, _ in accepted if r == open_round}
    assert in_open == {(a, open_round) for a in others}
    assert not any(e.type == "close" and e.round == open_round for e in before)

    restarted = cluster.start_coordinator(port, liveness=20.0, name="coordinator-restarted")
    cluster.wait_healthy(address, restarted)
    last = final_event(client, job_id)
    assert last.state == "succeeded", last.failure
    assert re.search(rf"resumed job {job_id} at round {open_round}", restarted.log_text())

    after = read_events(cluster.db, job_id)
    assert accepted <= contributions(after), "an acknowledged contribution was lost"
    assert_no_duplicate_uploads(after)
    assert_stored_once(cluster)
    result = client.result(job_id)
    assert [h["kind"] for h in result["history"]] == [r.kind for r in reference.history_]
    assert all(h["contributors"] == setup.agencies for h in result["history"])
    np.testing.assert_allclose(beta(result), reference.model_params_["beta"], rtol=0, atol=1e-9)


def test_coordinator_restart_with_short_liveness_keeps_its_agencies(
    setup: Setup, reference: Any, cluster: Cluster
) -> None:
    """kill -9 and an immediate restart with liveness 2 s (heartbeat 0.5 s): nobody died.

    The agencies were silent only because the coordinator was down; the resumed job must go
    on with all of them. Regression test: without a reconnect grace after start, the
    restarted coordinator dropped every agency ~2 s after it started, before the agents'
    retry and gRPC reconnect backoff (up to ~5 s each) brought them back, and the job failed.
    """
    address, client = start_federation(cluster, liveness=2.0)
    port = int(address.rsplit(":", 1)[1])
    job_id = client.submit(JOB_TYPE, JOB_PARAMS, setup.dataset)
    newton = first_newton_round(reference)
    wait_until(lambda: in_newton(cluster.db, job_id, newton), timeout=60, what="a Newton round")
    next(p for p in cluster.procs if p.name == "coordinator").kill9()
    restarted = cluster.start_coordinator(port, liveness=2.0, name="coordinator-restarted")
    cluster.wait_healthy(address, restarted)
    last = final_event(client, job_id)
    drops = [e.agency for e in read_events(cluster.db, job_id) if e.type == "drop"]
    assert last.state == "succeeded" and not drops, (last.failure, drops)


def test_coordinator_paused_past_the_liveness_timeout_drops_nobody(
    setup: Setup, reference: Any, cluster: Cluster
) -> None:
    """SIGSTOP the coordinator for 6 s (liveness 2 s), then SIGCONT: a stall of the judge.

    Regression test: the coordinator judged liveness on the wall clock, so on resuming it
    found every agency silent for longer than the timeout and dropped them all. Its progress
    clock now leaves its own stall out; the agencies' queued heartbeats arrive right after.
    """
    _, client = start_federation(cluster, liveness=2.0)
    job_id = client.submit(JOB_TYPE, JOB_PARAMS, setup.dataset)
    newton = first_newton_round(reference)
    wait_until(lambda: in_newton(cluster.db, job_id, newton), timeout=60, what="a Newton round")
    coordinator = next(p for p in cluster.procs if p.name == "coordinator")
    coordinator.signal(signal.SIGSTOP)
    time.sleep(6.0)  # three liveness timeouts without the coordinator running at all
    coordinator.signal(signal.SIGCONT)
    last = final_event(client, job_id)
    drops = [e.agency for e in read_events(cluster.db, job_id) if e.type == "drop"]
    assert last.state == "succeeded" and not drops, (last.failure, drops)
    result = client.result(job_id)
    np.testing.assert_allclose(beta(result), reference.model_params_["beta"], rtol=0, atol=1e-9)


# -- 2. kill -9 agents mid-round -------------------------------------------------------------------
def freeze(cluster: Cluster, job_id: str, victims: list[str], newton: int) -> list[Any]:
    """SIGSTOP ``victims`` once the job is in a Newton round; returns their processes."""
    wait_until(lambda: in_newton(cluster.db, job_id, newton), timeout=60, what="a Newton round")
    procs = [p for p in cluster.procs if p.name in victims]
    for p in procs:
        p.signal(signal.SIGSTOP)
    return procs


def stuck(db: Path, job_id: str, quiet: float = 0.6, timeout: float = 10.0) -> list[StoredEvent]:
    """Wait until the job's events stop changing for ``quiet`` s; returns them."""
    deadline = time.monotonic() + timeout
    events, since = read_events(db, job_id), time.monotonic()
    while time.monotonic() - since < quiet:
        assert time.monotonic() < deadline, "the job kept moving without the frozen agencies"
        time.sleep(0.05)
        now = read_events(db, job_id)
        if now != events:
            events, since = now, time.monotonic()
    return events


def test_agent_kill9_mid_round_job_continues_without_it(
    setup: Setup, reference: Any, cluster: Cluster
) -> None:
    """One of three agencies dies (SIGKILL) in a Newton round; 2 remain = min_agencies = t.

    Liveness 3 s: the coordinator drops the silent agency and the job carries on. The result
    must equal the in-process federation in which that agency drops out at the same round.
    """
    _, client = start_federation(cluster, liveness=3.0)
    *others, victim = setup.agencies
    job_id = client.submit(JOB_TYPE, JOB_PARAMS, setup.dataset)
    (proc,) = freeze(cluster, job_id, [victim], first_newton_round(reference))
    # the others decrypt without it (t = 2), so the job soon waits in a collecting round
    killed_in = wait_until(
        lambda: stalled_round(cluster.db, job_id, set(others)),
        timeout=10,
        what=f"a round waiting for {victim} only",
    )
    proc.kill9()

    last = final_event(client, job_id)
    assert last.state == "succeeded", last.failure
    history = client.result(job_id)["history"]
    # (a round repeated for overflow has no record, hence rounds, not positions)
    rounds = [h["round"] for h in history]
    missing = [h["round"] for h in history if victim not in h["contributors"]]
    assert missing, "the killed agency still contributed to every round"
    assert missing == [r for r in rounds if r >= killed_in], "absent from the wrong rounds"
    assert killed_in < rounds[-1], "no round ran after the kill"
    drops = [e for e in read_events(cluster.db, job_id) if e.type == "drop"]
    assert [e.agency for e in drops] == [victim]
    assert drops[0].payload is not None and b"no heartbeat" in drops[0].payload

    tables = setup.tables()
    with LocalFederation(
        [tables[a] for a in setup.agencies], threshold=THRESHOLD, key=setup.key()
    ) as fed:
        fed.schedule_dropout(victim, at_round=killed_in)  # gone from that round on
        expected = LogisticRegressionJob(**JOB_PARAMS).fit(fed)
    assert [r.round for r in expected.history_] == rounds
    assert [r.contributors for r in expected.history_] == [h["contributors"] for h in history]
    np.testing.assert_allclose(
        beta(client.result(job_id)), expected.model_params_["beta"], rtol=0, atol=1e-9
    )


def test_agents_kill9_below_threshold_fails_cleanly(
    setup: Setup, reference: Any, cluster: Cluster
) -> None:
    """Two of three agencies die in a Newton round: 1 left < t = 2, so the job must fail.

    The failure must be final (FAILED, not hanging), explain itself, reach the client and
    the store, and leave the coordinator serving.
    """
    address, client = start_federation(cluster, liveness=3.0)
    victims = setup.agencies[1:]
    newton = first_newton_round(reference)
    job_id = client.submit(JOB_TYPE, JOB_PARAMS, setup.dataset)
    procs = freeze(cluster, job_id, victims, newton)
    # the job now waits for them, in a collecting or a decrypting round
    at_kill = stuck(cluster.db, job_id)
    for p in procs:
        p.kill9()
    assert read_job(cluster.db, job_id)["state"] == "running"
    assert max(e.round or 0 for e in at_kill) >= newton

    last = final_event(client, job_id, timeout=60)
    assert last.state == "failed"
    reason = last.failure
    # "1 agencies remain to take part ... t=2" (collecting) or "only 1 agencies answered to
    # decrypt round r (1 remain in the job); the key needs t=2" (decrypting)
    assert re.search(r"\b1 (agencies )?remain", reason) and f"t={THRESHOLD}" in reason, reason
    with pytest.raises(ClientError, match="failed") as info:
        client.result(job_id)
    assert reason in str(info.value)
    row = read_job(cluster.db, job_id)
    assert row["state"] == "failed" and row["failure"] == reason
    assert {a.name for a in client.agencies() if a.connected} == {setup.agencies[0]}
    coordinator = next(p for p in cluster.procs if p.name == "coordinator")
    cluster.wait_healthy(address, coordinator, timeout=10)


# -- a loopback TCP proxy --------------------------------------------------------------------------
@dataclass
class _Conn:
    """One proxied connection and what crossed it."""

    up: bytearray = field(default_factory=bytearray)  # client → coordinator
    down: bytearray = field(default_factory=bytearray)  # coordinator → client
    mode: str = "open"  # "open", "held" (stalled) or "draining" (about to be reset)
    held: list[bytes] = field(default_factory=list)
    writers: list[asyncio.StreamWriter] = field(default_factory=list)
    upstream: asyncio.StreamWriter | None = None


class Proxy:
    """127.0.0.1:``port`` → 127.0.0.1:``upstream``, recording every byte in both directions.

    With ``tls`` it terminates TLS (the agents keep their pinned-CA TLS config) and talks
    plaintext to the coordinator, so the recording is the plaintext HTTP/2 the coordinator
    receives. :meth:`arm_stall` stalls the network when the next client→coordinator read of
    at least ``trigger`` bytes (an upload) has been forwarded: for ``seconds`` nothing is
    forwarded either way and new connections hang; then what clients sent is delivered, what
    the coordinator answered is lost, and every connection of the stall is reset (a
    middlebox that lost its state), so clients must reconnect and retry.
    """

    def __init__(self, upstream: int, *, tls: ssl.SSLContext | None = None) -> None:
        self.upstream = upstream
        self.tls = tls
        self.conns: list[_Conn] = []
        self.stalls: list[tuple[float, float]] = []
        self.resets = 0
        self._armed: tuple[float, int] | None = None
        self._stalled = False
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True)
        self._server: asyncio.base_events.Server | None = None
        self.port = 0

    def __enter__(self) -> Proxy:
        self._thread.start()
        self.port = asyncio.run_coroutine_threadsafe(self._listen(), self._loop).result(10)
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        if not self._thread.is_alive():
            return
        with contextlib.suppress(Exception):
            asyncio.run_coroutine_threadsafe(self._shutdown(), self._loop).result(10)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(10)

    def arm_stall(self, seconds: float, trigger: int) -> None:
        self._loop.call_soon_threadsafe(setattr, self, "_armed", (seconds, trigger))

    async def _listen(self) -> int:
        self._server = await asyncio.start_server(self._handle, HOST, 0, ssl=self.tls)
        return int(self._server.sockets[0].getsockname()[1])

    async def _shutdown(self) -> None:
        assert self._server is not None
        self._server.close()
        for conn in self.conns:
            for w in conn.writers:
                w.transport.abort()

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        conn = _Conn(mode="held" if self._stalled else "open", writers=[writer])
        self.conns.append(conn)
        try:
            up_reader, up_writer = await asyncio.open_connection(HOST, self.upstream)
        except OSError:
            writer.transport.abort()
            return
        conn.upstream = up_writer
        conn.writers.append(up_writer)
        await asyncio.gather(
            self._pump(reader, up_writer, conn, up=True),
            self._pump(up_reader, writer, conn, up=False),
            return_exceptions=True,
        )
        for w in conn.writers:
            w.transport.abort()

    async def _pump(
        self, src: asyncio.StreamReader, dst: asyncio.StreamWriter, conn: _Conn, *, up: bool
    ) -> None:
        try:
            while True:
                data = await src.read(1 << 16)
                if not data:
                    break
                (conn.up if up else conn.down).extend(data)
                if not up:
                    if conn.mode == "open":
                        dst.write(data)
                        await dst.drain()
                    continue  # lost: the coordinator's answer never arrives
                if conn.mode == "held":
                    conn.held.append(data)
                    continue
                dst.write(data)
                await dst.drain()
                armed = self._armed
                if armed is not None and len(data) >= armed[1] and not self._stalled:
                    self._armed = None
                    asyncio.get_running_loop().create_task(self._stall(armed[0]))
        finally:
            for w in conn.writers:
                w.transport.abort()

    async def _stall(self, seconds: float) -> None:
        start = time.monotonic()
        self._stalled = True
        for conn in self.conns:
            if conn.mode == "open":
                conn.mode = "held"
        await asyncio.sleep(seconds)
        stalled = [c for c in self.conns if c.mode == "held"]
        for conn in stalled:  # what clients sent during the stall arrives late...
            conn.mode = "draining"
            if conn.upstream is not None:
                for data in conn.held:
                    conn.upstream.write(data)
                with contextlib.suppress(Exception):
                    await conn.upstream.drain()
        self._stalled = False
        await asyncio.sleep(1.0)  # ...is processed, and its answers are lost in the reset
        for conn in stalled:
            for w in conn.writers:
                w.transport.abort()
            self.resets += 1
        self.stalls.append((start, time.monotonic()))


# -- 3. a network stall ----------------------------------------------------------------------------
def test_network_stall_mid_job_completes_through_retries(
    setup: Setup, reference: Any, cluster: Cluster
) -> None:
    """A 4 s network stall mid-job (liveness 10 s) between agents and the coordinator.

    The agents dial a proxy (TLS passes through it, end to end). The stall starts right after
    an upload of a Newton round was forwarded: the coordinator stores it but its answer is
    lost, every connection hangs 4 s and is then reset. Agents must back off, reconnect,
    re-send the unacknowledged upload byte for byte (the coordinator answers "already
    stored"), and the job must end exactly as the uninterrupted one, nobody dropped.
    """
    coord_port = free_port()
    with Proxy(coord_port) as proxy:
        _, client = start_federation(cluster, liveness=10.0, port=coord_port, agents_via=proxy.port)
        # statistics rounds upload a few hundred bytes; the first upload of 1200 bytes or
        # more is a Newton round's (about 2 KB at 512 bits): the stall starts mid-job
        proxy.arm_stall(4.0, trigger=1200)
        job_id = client.submit(JOB_TYPE, JOB_PARAMS, setup.dataset)
        wait_until(lambda: proxy.stalls, timeout=60, what="the stall to happen and end")
        at_stall_end = read_job(cluster.db, job_id)
        last = final_event(client, job_id)
    assert at_stall_end["state"] == "running", "the stall did not happen mid-job"
    assert last.state == "succeeded", last.failure
    assert proxy.resets >= N_AGENCIES

    result = client.result(job_id)
    assert all(h["contributors"] == setup.agencies for h in result["history"]), "a drop"
    events = read_events(cluster.db, job_id)
    assert not [e for e in events if e.type == "drop"]
    assert_no_duplicate_uploads(events)
    assert_stored_once(cluster)
    np.testing.assert_allclose(beta(result), reference.model_params_["beta"], rtol=0, atol=1e-9)
    outcomes = [r["outcome"] for a in setup.agencies for r in cluster.task_log(a)]
    assert "already_stored" in outcomes, "no upload was re-sent after its answer was lost"
    assert "rejected" not in outcomes
    logs = "".join(p.log_text() for p in cluster.procs if p.name in setup.agencies)
    assert "retrying in" in logs, "no agent backed off"


# -- 4. what the coordinator receives and stores ---------------------------------------------------
H2_PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"


def h2_data(stream: bytes, *, client: bool) -> dict[int, bytes]:
    """DATA payload per HTTP/2 stream of one direction of a connection (padding removed)."""
    pos = 0
    if client:
        assert stream.startswith(H2_PREFACE), "not HTTP/2 (is TLS really terminated?)"
        pos = len(H2_PREFACE)
    out: dict[int, bytearray] = {}
    while pos + 9 <= len(stream):
        length = int.from_bytes(stream[pos : pos + 3], "big")
        kind, flags = stream[pos + 3], stream[pos + 4]
        sid = int.from_bytes(stream[pos + 5 : pos + 9], "big") & 0x7FFFFFFF
        payload = stream[pos + 9 : pos + 9 + length]
        pos += 9 + length
        if kind == 0:  # DATA
            if flags & 0x8:
                payload = payload[1 : len(payload) - payload[0]]
            out.setdefault(sid, bytearray()).extend(payload)
    return {sid: bytes(data) for sid, data in out.items()}


def grpc_messages(data: bytes) -> list[bytes]:
    """Length-prefixed gRPC messages of one stream; none may be compressed."""
    out, pos = [], 0
    while pos + 5 <= len(data):
        assert data[pos] == 0, "a compressed gRPC message: substring checks would be void"
        length = int.from_bytes(data[pos + 1 : pos + 5], "big")
        out.append(data[pos + 5 : pos + 5 + length])
        pos += 5 + length
    return out


def uploads(bodies: list[bytes]) -> tuple[fpb.ChunkHeader, bytes] | None:
    """An Upload stream's header and payload (checked against its SHA-256), else None."""
    try:
        chunks = [fpb.Chunk.FromString(b) for b in bodies]
        if not chunks or not chunks[0].HasField("header"):
            return None
        return messages.assemble(chunks)
    except Exception:
        return None


class Needles:
    """Byte strings (8 bytes or longer) to look for, each with a description."""

    def __init__(self, described: dict[bytes, str]) -> None:
        self.items = [n for n in described if len(n) >= 8]
        self.described = described
        self.heads = np.frombuffer(b"".join(n[:8] for n in self.items), dtype="<u8")


class WindowIndex:
    """Every 8-byte window of a byte string, for looking up many needles at once."""

    def __init__(self, data: bytes) -> None:
        self.data = data
        parts = [
            np.frombuffer(data[j : j + (len(data) - j) // 8 * 8], dtype="<u8") for j in range(8)
        ]
        self.windows = np.unique(np.concatenate(parts))

    def found(self, needles: Needles) -> list[bytes]:
        """The needles that occur in the data."""
        if len(self.data) < 8 or not needles.items:
            return []
        pos = np.searchsorted(self.windows, needles.heads).clip(0, len(self.windows) - 1)
        maybe = np.flatnonzero(self.windows[pos] == needles.heads)
        return [needles.items[i] for i in maybe if needles.items[i] in self.data]


def float_needles(values: np.ndarray, what: str) -> dict[bytes, str]:
    """Float64 (both byte orders) and decimal text of every non-integral value."""
    out: dict[bytes, str] = {}
    for i, v in enumerate(np.asarray(values, dtype=np.float64).ravel()):
        if not np.isfinite(v) or float(v).is_integer():
            continue  # 0, 1, counts: also legitimately present in any protocol message
        x = np.float64(v)
        out.setdefault(x.astype("<f8").tobytes(), f"{what}[{i}] as float64 LE")
        out.setdefault(x.astype(">f8").tobytes(), f"{what}[{i}] as float64 BE")
        text = repr(float(v)).encode()
        if len(text) >= 8:
            out.setdefault(text, f"{what}[{i}] as text {text.decode()}")
    return out


def replay_tasks(setup: Setup, db: Path, job_id: str) -> dict[int, Task]:
    """Every round's Task of a finished job, rebuilt from its stored spec and events."""
    spec = json.loads(read_job(db, job_id)["spec"])
    tpk, _ = setup.key()
    job = job_from_spec(spec["job_type"], spec["params"], spec["privacy"])
    driver = JobDriver(
        job_id,
        job.algorithm(messages.feature_spec_from_json(spec["feature_spec"])),
        PaillierScheme(tpk),
        agencies=spec["agencies"],
        min_agencies=int(spec["min_agencies"]),
        share_index_of={a: int(i) for a, i in spec["share_index_of"].items()},
        n_length=tpk.public_key.n_length,
    )
    first = driver.start()
    assert first is not None
    tasks = {first.round: first}
    for e in read_events(db, job_id):
        if e.type == "contribution":
            driver.submit_contribution(str(e.agency), e.payload or b"")
        elif e.type == "close":
            driver.close_collection()
        elif e.type == "partial":
            driver.submit_partial(str(e.agency), e.payload or b"")
        elif e.type == "drop":
            driver.drop(str(e.agency))
        if driver.task is not None:
            tasks.setdefault(driver.task.round, driver.task)
    assert driver.finished, "the stored events do not replay to the end of the job"
    return tasks


def parse_capture(
    proxy: Proxy, jobs: list[str]
) -> tuple[dict[str, bytes], list[tuple[fpb.ChunkHeader, bytes]], list[fpb.Assignment]]:
    """What the coordinator received, as haystacks; the uploads and assignments within."""
    received: dict[str, bytes] = {}
    uploaded: list[tuple[fpb.ChunkHeader, bytes]] = []
    assignments: list[fpb.Assignment] = []
    for i, conn in enumerate(proxy.conns):
        if not conn.up:
            continue
        received[f"connection {i}"] = bytes(conn.up)  # raw, frames and all
        for sid, data in h2_data(bytes(conn.up), client=True).items():
            bodies = grpc_messages(data)
            received[f"connection {i} stream {sid}"] = b"".join(bodies)  # de-framed
            upload = uploads(bodies)
            if upload is not None:
                uploaded.append(upload)
        for data in h2_data(bytes(conn.down), client=False).values():
            for body in grpc_messages(data):
                with contextlib.suppress(Exception):
                    reply = fpb.FetchWorkResponse.FromString(body)
                    a = reply.assignment
                    if (
                        reply.HasField("assignment")
                        and a.job_id in jobs
                        and a.kind in LOCAL_STEPS
                        and a.action in (fpb.ACTION_CONTRIBUTE, fpb.ACTION_PARTIAL_DECRYPT)
                    ):
                        assignments.append(a)
    return received, uploaded, assignments


def dump_store(db: Path) -> dict[str, bytes]:
    """The database file(s) as bytes, and every text or blob value of every table."""
    stored = {p.name: p.read_bytes() for p in sorted(db.parent.glob(db.name + "*"))}
    con = sqlite3.connect(f"file:{db}?mode=ro", uri=True)
    try:
        for table in ("jobs", "events", "agencies"):
            for n, row in enumerate(con.execute(f"SELECT * FROM {table}")):
                for c, value in enumerate(row):
                    if isinstance(value, bytes | str):
                        data = value if isinstance(value, bytes) else value.encode()
                        stored[f"{table} row {n} column {c}"] = data
    finally:
        con.close()
    return stored


def test_coordinator_receives_and_stores_only_ciphertexts(setup: Setup, cluster: Cluster) -> None:
    """Record every byte the coordinator receives and everything it stores during two jobs.

    TLS is terminated at the proxy so that the recording is the plaintext HTTP/2 and protobuf
    the coordinator parses: the coordinator runs ``--insecure`` on 127.0.0.1 behind it, while
    agents, the analyst and health checks all connect with TLS to the proxy (nothing reaches
    the coordinator another way). Searched for, per agency: every raw non-integral feature
    value (float64 in both byte orders and its decimal text as in the CSV), every entry of its
    plaintext local vectors for every round's task (same encodings), and the packed plaintext
    integers it encrypted (big- and little-endian). Positive controls prove the search can
    hit: the needles are found in the agency's own files, and decrypting each stored
    contribution with two shares yields exactly the packed integers computed here.
    """
    coord_port = free_port()
    files = setup.files
    tls = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    tls.load_cert_chain(files.server_cert, files.server_key)
    tls.set_alpn_protocols(["h2"])
    with Proxy(coord_port, tls=tls) as proxy:
        via = f"{HOST}:{proxy.port}"
        coordinator = cluster.start_coordinator(coord_port, insecure=True, liveness=20.0)
        for agency in setup.agencies:
            cluster.start_agent(agency, via)
        cluster.wait_healthy(via, coordinator)
        client = cluster.client(via)
        cluster.wait_connected(client, setup.agencies)
        jobs = [
            client.submit(JOB_TYPE, JOB_PARAMS, setup.dataset),
            client.submit("fedavg", FEDAVG_PARAMS, setup.dataset),
        ]
        for job_id in jobs:
            last = final_event(client, job_id)
            assert last.state == "succeeded", last.failure
        client.close()
    coordinator.signal(signal.SIGTERM)  # graceful: the WAL is checkpointed into the file
    coordinator.popen.wait(timeout=30)

    received, uploaded, assignments = parse_capture(proxy, jobs)
    stored = dump_store(cluster.db)

    tpk, shares = setup.key()
    pk = tpk.public_key
    tables = setup.tables()
    needles: dict[str, dict[bytes, str]] = {a: {} for a in setup.agencies}
    n_contributions = 0
    for job_id in jobs:
        tasks = replay_tasks(setup, cluster.db, job_id)
        # the replayed tasks are the very tasks the agents were sent
        sent = [messages.assignment_to_task(a) for a in assignments if a.job_id == job_id]
        assert {t.round for t in sent} == set(tasks)
        for t in sent:
            ref = tasks[t.round]
            assert (t.request.kind, t.spec, t.request.length) == (
                ref.request.kind,
                ref.spec,
                ref.request.length,
            )
            assert json.dumps(dict(t.request.params), sort_keys=True) == json.dumps(
                dict(ref.request.params), sort_keys=True
            )
        for e in read_events(cluster.db, job_id):
            if e.type != "contribution":
                continue
            n_contributions += 1
            agency, task = str(e.agency), tasks[int(e.round or 0)]
            # every stored contribution is an EncryptedVector under the federation key,
            # ciphertexts in Z*_{n^2} (the parser checks range and gcd with n)
            vec = serde.encrypted_vector_from_bytes(e.payload or b"", pk)
            assert vec.summands == 1 and vec.length == task.vector_length
            assert vec.spec == task.spec
            for c in vec.ciphertexts:
                pk.check_ciphertext(c)  # in [1, n^2) and coprime to n, else it raises
            # the agency's plaintext update for this task, as its agent computed it
            node = AgencyNode(agency, tables[agency], PaillierScheme(tpk))
            v = node.local_vector(task)
            over = bool((np.abs(v) > task.spec.clip).any())
            packed = task.spec.pack(
                task.spec.quantize(np.append(v, overflow_flag(task.spec.clip) if over else 0.0))
            )
            # positive control: it is exactly what the stored ciphertexts hold
            by_share = {
                s.index: [s.raw_partial_decrypt(c) for c in vec.ciphertexts]
                for s in shares[:THRESHOLD]
            }
            assert [int(m) for m in raw_combine(tpk, by_share)] == packed
            what = f"{agency} job {job_id} round {task.round} {task.request.kind}"
            needles[agency].update(float_needles(v, f"{what} local vector"))
            if np.any(v != 0):
                needles[agency].setdefault(v.astype("<f8").tobytes(), f"{what} whole vector")
            for j, m in enumerate(packed):
                if m.bit_length() > 64:
                    width = (m.bit_length() + 7) // 8
                    needles[agency][m.to_bytes(width, "big")] = f"{what} packed int {j} BE"
                    needles[agency][m.to_bytes(width, "little")] = f"{what} packed int {j} LE"
    released = sum(len(contributors_of(cluster, j)) for j in jobs)
    assert n_contributions >= released > 0  # (rounds repeated for overflow add more)

    for agency in setup.agencies:
        raw = tables[agency].X_numeric()
        values = float_needles(raw, f"{agency} raw {list(setup.spec.numeric)}")
        # positive control: the raw-value needles do occur in the agency's own data
        own = WindowIndex(setup.csv[agency].read_bytes() + raw.astype("<f8").tobytes())
        texts = Needles({n: w for n, w in values.items() if "as text" in w})
        floats = Needles({n: w for n, w in values.items() if "LE" in w})
        assert len(own.found(texts)) == len(texts.items) > 1000
        assert len(own.found(floats)) == len(floats.items)
        needles[agency].update(values)

    # the capture really holds what the coordinator stored (in plaintext protobuf)
    stored_payloads = {
        e.payload for j in jobs for e in read_events(cluster.db, j) if e.type == "contribution"
    }
    assert stored_payloads <= {p for h, p in uploaded if h.kind == fpb.PAYLOAD_KIND_CONTRIBUTION}
    assert len(assignments) >= n_contributions

    wanted = {a: Needles(n) for a, n in needles.items()}
    assert sum(len(n.items) for n in wanted.values()) > 10_000
    leaks = []
    for name, haystack in {**received, **stored}.items():
        index = WindowIndex(haystack)
        for n in wanted.values():
            leaks += [f"{n.described[hit]} found in {name}" for hit in index.found(n)]
    assert not leaks, f"{len(leaks)} plaintext value(s) reached the coordinator: {leaks[:10]}"


def contributors_of(cluster: Cluster, job_id: str) -> list[str]:
    """Every contribution of the released rounds of a stored result."""
    result = json.loads(read_job(cluster.db, job_id)["result"])
    return [c for h in result["history"] for c in h["contributors"]]
