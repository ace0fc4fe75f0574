"""The agent's precomputed encryption randomness: configuration, and the same results with it.

Real TLS coordinator and agent daemons on loopback (512-bit keys). Agents with a pool fill it
while they wait for work and seal later rounds from it; the released model must be exactly
the one agents without a pool release (quantization is deterministic, the randomness cancels).
"""

from __future__ import annotations

import os
import sys
import threading

import numpy as np
import pytest
from daemons import VISITS, agency_toml, running_agents, tls_coordinator, wait_until, write_visits

from fedcity.net.agent import Agent, AgentConfig, ConfigError
from fedcity.net.agentconfig import DEFAULT_RANDOMNESS_POOL, MAX_RANDOMNESS_POOL
from fedcity.net.ceremony import deal_federation, read_token
from fedcity.net.client import Client

AGENCIES = ["r1", "r2", "r3"]


@pytest.fixture(scope="module")
def federation(tmp_path_factory):
    root = tmp_path_factory.mktemp("randomness")
    files = deal_federation(root, AGENCIES, 2, key_bits=512)
    rng = np.random.default_rng(13)
    for agency in AGENCIES:
        write_visits(files.shares[agency].parent / "visits.csv", rng, 60)
    return {"root": root, "files": files}


def _configs(files, port: int, pool: str | None) -> list:
    line = "" if pool is None else f"randomness_pool = {pool}\n"
    return [
        agency_toml(files.shares[a].parent, a, port, line + VISITS, log=False) for a in AGENCIES
    ]


@pytest.mark.parametrize(
    "value", ["-1", str(MAX_RANDOMNESS_POOL + 1), '"64"', "true", "2.5"], ids=repr
)
def test_invalid_pool_sizes_are_refused(federation, value):
    path = _configs(federation["files"], 1, value)[0]
    with pytest.raises(ConfigError, match=r"key 'randomness_pool' must be an integer in \[0, "):
        AgentConfig.from_toml(path)


def test_default_off_and_bounded_pools(federation):
    files = federation["files"]
    default = AgentConfig.from_toml(_configs(files, 1, None)[0])
    assert default.randomness_pool == DEFAULT_RANDOMNESS_POOL
    off = Agent(AgentConfig.from_toml(_configs(files, 1, "0")[0]))
    assert off.randomness is None and off.node.randomness is None and off.pool_target() == 0
    on = Agent(AgentConfig.from_toml(_configs(files, 1, "7")[0]))
    assert on.randomness is not None and on.node.randomness is on.randomness
    assert on.randomness.max_size == 7 and len(on.randomness) == 0
    assert on.randomness.key_id == on.key_id
    assert on.pool_target() == 0  # nothing uploaded yet: nothing to precompute


def test_pooled_agents_release_the_same_model(federation):
    files = federation["files"]
    server = tls_coordinator(federation["root"], files)
    client = Client(
        f"127.0.0.1:{server.port}",
        read_token(files.scientist_tokens["analyst"]),
        ca_file=files.ca_cert,
    )
    models = {}
    try:
        for pool in ("64", "0"):
            with running_agents(_configs(files, server.port, pool)) as agents:
                wait_until(lambda: all(a.registrations for a in agents), "agents registered")
                job = client.submit("logistic_regression", {"C": 1.0}, "visits")
                events = list(client.watch(job, timeout=120))
                assert events[-1].state == "succeeded", events[-1]
                result = client.result(job)
                assert len(result["history"]) >= 3  # several rounds: later ones can use the pool
                models[pool] = result["model"]
                if pool == "0":
                    assert all(a.randomness is None for a in agents)
                    continue
                pools = [a.randomness for a in agents]
                threads = [t for t in threading.enumerate() if t.name.startswith("precompute-")]
                assert len(threads) == len(AGENCIES)
                if sys.platform.startswith("linux"):  # the lowest priority, for that thread only
                    assert {os.getpriority(os.PRIO_PROCESS, t.native_id) for t in threads} == {19}
                    assert os.getpriority(os.PRIO_PROCESS, threading.get_native_id()) < 19
                assert all(p is not None and len(p) <= 64 for p in pools)
                # every agency sealed later rounds from randomness computed while it waited
                assert all(p is not None and p.pooled > 0 for p in pools), pools
                assert all(0 < a.pool_target() <= 64 for a in agents)
            assert all(a.randomness is None or len(a.randomness) == 0 for a in agents)
            assert not [t for t in threading.enumerate() if t.name.startswith("precompute-")]
    finally:
        client.close()
        server.stop(grace=1.0)
    assert models["64"] == models["0"]
