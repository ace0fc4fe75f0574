"""A coordinator on loopback with real agent daemons in threads: shared by networked tests.

``tls_coordinator`` serves a dealt federation (``deal_federation``) over TLS with fast
timings; ``agency_toml`` writes an agency's configuration (the ceremony's files, then the
test's own tables and policy); ``running_agents`` starts one :class:`Agent` per config in a
thread and stops them all at the end; ``wait_until`` polls a condition with a deadline.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any, TypeVar

from fedcity.net.agent import Agent, AgentConfig
from fedcity.net.coordinator import CoordinatorConfig, CoordinatorServer, serve

T = TypeVar("T")


def tls_coordinator(
    root: Path, files: Any, *, clock: Any = None, **overrides: Any
) -> CoordinatorServer:
    """``serve`` the dealt federation on 127.0.0.1 over TLS (heartbeats every 0.5 s).

    ``clock``: a progress clock for the coordinator's deadlines (e.g. a ``ManualClock``).
    """
    settings: dict[str, Any] = {
        "listen": "127.0.0.1:0",
        "db": root / "coordinator.sqlite",
        "federation": files.public,
        "credentials": files.credentials,
        "tls_cert": files.server_cert,
        "tls_key": files.server_key,
        "heartbeat_interval": 0.5,
        "max_wait": 1.0,
        "tick_interval": 0.1,
        **overrides,
    }
    return serve(CoordinatorConfig(**settings), clock=clock)


def agency_toml(folder: Path, agency: str, port: int, body: str, *, log: bool = True) -> Path:
    """Write ``folder/agency.toml``: the ceremony's files, then ``body`` (tables, policy)."""
    path = folder / "agency.toml"
    head = [
        f'agency = "{agency}"',
        f'coordinator = "127.0.0.1:{port}"',
        'token_file = "token"',
        'key_file = "share.json"',
        'signing_key_file = "signing-key.json"',
        'federation_file = "../../federation-public.json"',
        'ca_file = "../../tls/ca.pem"',
    ]
    if log:
        head.append('log_file = "served.jsonl"')
    path.write_text("\n".join(head) + "\n\n" + body.strip() + "\n")
    return path


@contextmanager
def running_agents(configs: Sequence[Path | str], **options: Any) -> Iterator[list[Agent]]:
    """Agent daemons for ``configs``, each in a thread; stopped and joined on exit."""
    options.setdefault("fetch_wait_ms", 500)
    agents = [Agent(AgentConfig.from_toml(c), **options) for c in configs]
    threads = [
        threading.Thread(target=a.run, kwargs={"handle_signals": False}, daemon=True)
        for a in agents
    ]
    for t in threads:
        t.start()
    try:
        yield agents
    finally:
        for a in agents:
            a.stop()
        for t in threads:
            t.join(timeout=10)


def wait_until(check: Callable[[], T], what: str, timeout: float = 30.0) -> T:
    """Poll ``check`` until it returns something truthy; AssertionError after ``timeout`` s."""
    deadline = time.monotonic() + timeout
    while not (value := check()):
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.05)
    return value


def wait_connected(client: Any, n: int, timeout: float = 30.0) -> None:
    """Until ``n`` agencies are connected to the client's coordinator."""
    wait_until(lambda: sum(a.connected for a in client.agencies()) >= n, f"{n} agents", timeout)


VISITS = """
[datasets.visits]
path = "visits.csv"
numeric = ["x1", "x2"]
categorical = { kind = ["a", "b"] }
label = "y"
"""
"""The ``visits`` training dataset of :func:`write_visits`, as declared in agency.toml."""


def write_visits(path: Path, rng: Any, n: int) -> None:
    """A small logistic dataset (x1, x2, kind, y) for networked training tests."""
    import pandas as pd

    x1, x2 = rng.normal(size=n), rng.normal(size=n)
    pd.DataFrame(
        {
            "x1": x1,
            "x2": x2,
            "kind": rng.choice(["a", "b"], n),
            "y": (x1 + rng.normal(size=n) > 0).astype(int),
        }
    ).to_csv(path, index=False)
