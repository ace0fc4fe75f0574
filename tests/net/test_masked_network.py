"""The opt-in ``aggregation="lwr-masked"`` FedAvg rounds over real gRPC on loopback.

In-test agents (``loopback``) pin the coordinator's side: the model equals the in-process
packed-Paillier model at the same precision, what the coordinator stores for a contribution
holds no plain encoding of the update, and a restart in the middle of a masked round's
decryption loses nothing. Agent daemons over TLS (``daemons``) run the same job end to end,
and the coordinator refuses the combinations the scheme does not support. 512-bit keys, the
real LWR parameter set (lambda = 1024).
"""

from __future__ import annotations

import json
import struct
from typing import Any

import numpy as np
import pytest
from loopback import (
    AGENCIES,
    Agent,
    Code,
    auth,
    drive,
    job_state,
    refused,
    registered_agents,
    runtime,
    scientist,
    snapshot,
    start,
    submit,
)
from sklearn.neural_network import MLPClassifier

from fedcity.core.masked_scheme import MaskedScheme, masked_precision_limit
from fedcity.core.rounds import RoundPhase
from fedcity.learn import FedAvgJob, LocalFederation
from fedcity.v1 import federation_pb2 as fpb

BITS = 20  # what 3 summands leave in p = 2^24 (Delta = 4)
CLIP = 4.0
MLP = {"hidden_layer_sizes": [4], "learning_rate_init": 0.01, "random_state": 0}
ESTIMATOR = {"class": "MLPClassifier", "params": MLP}
PARAMS = {
    "estimator": ESTIMATOR,
    "rounds": 2,
    "classes": [0, 1],
    "clip": CLIP,
    "precision_bits": BITS,
    "aggregation": "lwr-masked",
}
STEP = 2 * CLIP / ((1 << BITS) - 1)


def _local_model(tables: Any, key: Any, bits: int = BITS) -> np.ndarray:
    """The same job in process with today's packed threshold Paillier."""
    with LocalFederation(tables, threshold=2, key=key) as fed:
        job = FedAvgJob(
            MLPClassifier(**{**MLP, "hidden_layer_sizes": (4,)}),
            rounds=2,
            classes=[0, 1],
            clip=CLIP,
            precision_bits=bits,
        )
        job.fit(fed)
    assert job.algorithm_ is not None
    return job.algorithm_.coef_vector_


def _coefs(result_json: str) -> np.ndarray:
    model = json.loads(result_json)["model"]
    assert model["type"] == "fedavg"
    return np.asarray(model["coefs"], dtype=np.float64).ravel()


class RecordingAgent(Agent):
    """Keeps the plaintext vector of each of its contributions (for the storage check)."""

    plain: dict[tuple[str, int], np.ndarray]

    def compute(self, a: fpb.Assignment) -> tuple[int, bytes]:
        if a.action == fpb.ACTION_CONTRIBUTE:
            node = self.node
            original = node.local_vector

            def keep(task: Any) -> np.ndarray:
                v = original(task)
                self.plain[(a.job_id, a.round)] = v
                return v

            node.local_vector = keep  # type: ignore[method-assign]
            try:
                return super().compute(a)
            finally:
                del node.local_vector
        return super().compute(a)


def _windows(values: np.ndarray) -> list[bytes]:
    """Plain encodings of 4 consecutive values: float64/float32 and 3- and 4-byte integers."""
    out = []
    for i in range(0, max(len(values) - 4, 1), 3):
        w = values[i : i + 4]
        out.append(np.asarray(w, "<f8").tobytes())
        out.append(np.asarray(w, "<f4").tobytes())
        q = np.rint((np.clip(w, -CLIP, CLIP) + CLIP) / STEP).astype(np.int64)
        out.append(b"".join(struct.pack("<I", int(v)) for v in q))
        out.append(b"".join(struct.pack("<I", int(v))[:3] for v in q))
        out.append(b"".join(struct.pack(">I", int(v)) for v in q))
    return out


def test_masked_rounds_release_the_in_process_model_and_store_no_plain_update(
    files, key, data, servers
):
    _, _, tables = data
    local = _local_model(tables, key)
    server = start(files)
    servers.append(server)
    agents = registered_agents(server, key, data, RecordingAgent)
    for a in agents:
        a.plain = {}
    job_id = submit(server.port, job_type="fedavg", params_json=json.dumps(PARAMS)).job_id
    driver = runtime(server, job_id).driver  # kept: the coordinator lets go of it when done
    drive(agents, lambda: job_state(server.port, job_id) != fpb.JOB_STATE_RUNNING)
    assert job_state(server.port, job_id) == fpb.JOB_STATE_SUCCEEDED
    result = scientist(server.port).GetResult(
        fpb.JobRef(job_id=job_id), metadata=auth("analyst"), timeout=10
    )
    np.testing.assert_allclose(_coefs(result.result_json), local, rtol=0, atol=20 * STEP)

    masked = [r for r in driver.rounds if isinstance(r.scheme, MaskedScheme)]
    assert [r.task.request.kind for r in masked] == ["fedavg.local"] * 2
    assert all(r.task.spec.precision_bits == BITS for r in masked)
    # everything else (statistics) ran under the federation's packed scheme
    assert all(
        not isinstance(r.scheme, MaskedScheme)
        for r in driver.rounds
        if r.task.request.kind != "fedavg.local"
    )
    events, _, _ = snapshot(files["db"])
    stored = {
        (agency, rnd): bytes(payload)
        for job, _, kind, agency, rnd, payload in events
        if job == job_id and kind == "contribution"
    }
    checked = 0
    for r in masked:
        for agent in agents:
            payload = stored[(agent.name, r.task.round)]
            assert payload.startswith(b"fedcity.masked.v1\x00")
            plain = agent.plain[(job_id, r.task.round)]
            assert plain.size == r.task.request.length
            for window in _windows(plain):
                assert window not in payload
            checked += 1
    assert checked == 2 * len(AGENCIES)


def test_restart_mid_masked_decryption_loses_nothing(files, key, data, servers):
    _, _, tables = data
    local = _local_model(tables, key)
    first = start(files)
    servers.append(first)
    agents = registered_agents(first, key, data)
    job_id = submit(first.port, job_type="fedavg", params_json=json.dumps(PARAMS)).job_id

    def masked_decrypting() -> bool:
        rnd = runtime(first, job_id).driver.round
        return (
            rnd is not None
            and isinstance(rnd.scheme, MaskedScheme)
            and rnd.phase is RoundPhase.DECRYPTING
            and not rnd.partials
        )

    drive(agents, masked_decrypting)
    rnd = runtime(first, job_id).driver.round
    number, aggregate = rnd.task.round, rnd.aggregate_bytes
    for a in agents:  # exactly one partial decryption of the key sum arrives, then the crash
        if a.step() == fpb.ACTION_PARTIAL_DECRYPT:
            break
    assert len(runtime(first, job_id).driver.round.partials) == 1
    first.stop(grace=0)

    second = start(files)
    servers.append(second)
    for a in agents:
        a.connect(second.port)
    again = runtime(second, job_id).driver.round
    assert again.task.round == number and isinstance(again.scheme, MaskedScheme)
    assert again.phase is RoundPhase.DECRYPTING and len(again.partials) == 1
    assert again.aggregate_bytes == aggregate  # the replayed aggregate is the same
    drive(agents, lambda: job_state(second.port, job_id) != fpb.JOB_STATE_RUNNING)
    assert job_state(second.port, job_id) == fpb.JOB_STATE_SUCCEEDED
    result = scientist(second.port).GetResult(
        fpb.JobRef(job_id=job_id), metadata=auth("analyst"), timeout=10
    )
    np.testing.assert_allclose(_coefs(result.result_json), local, rtol=0, atol=20 * STEP)


def test_the_aggregation_parameter_is_validated_and_unsupported_uses_refused(files, servers):
    server = start(files)
    servers.append(server)
    fedavg = {"estimator": ESTIMATOR, "classes": [0, 1]}
    refused(
        Code.INVALID_ARGUMENT,
        lambda: submit(
            server.port,
            job_type="fedavg",
            params_json=json.dumps({**fedavg, "aggregation": "masked"}),
        ),
        match="aggregation must be one of ['paillier', 'lwr-masked']",
    )
    refused(
        Code.INVALID_ARGUMENT,
        lambda: submit(
            server.port, params_json=json.dumps({"C": 0.5, "aggregation": "lwr-masked"})
        ),
        match="aggregation 'lwr-masked' is offered only for fedavg jobs",
    )
    query = {
        "table": "inspections",
        "aggregate": [{"name": "n", "func": "count"}],
        "aggregation": "lwr-masked",
    }
    refused(
        Code.INVALID_ARGUMENT,
        lambda: submit(server.port, job_type="query", params_json=json.dumps(query)),
        match="offered only for fedavg jobs",
    )
    assert not snapshot(files["db"])[1]  # nothing was stored


def test_agent_daemons_over_tls_and_key_holder_refusal(tmp_path):
    import pandas as pd
    from daemons import (
        VISITS,
        agency_toml,
        running_agents,
        tls_coordinator,
        wait_until,
        write_visits,
    )

    from fedcity.data.dataset import AgencyDataset, FeatureSpec
    from fedcity.net.ceremony import deal_federation, read_token
    from fedcity.net.client import Client, ClientError

    names = ["m1", "m2", "m3", "m4"]  # 1-of-4: the key sum is decrypted in three groups
    files = deal_federation(tmp_path / "threshold", names, 1, key_bits=512)
    rng = np.random.default_rng(5)
    spec = FeatureSpec(numeric=("x1", "x2"), categorical={"kind": ("a", "b")}, label="y")
    tables = []
    for agency in names:
        path = files.shares[agency].parent / "visits.csv"
        write_visits(path, rng, 80)
        tables.append(AgencyDataset.from_frame(pd.read_csv(path), spec, agency=agency))
    local = _local_model(tables, None, bits=masked_precision_limit(4))
    server = tls_coordinator(tmp_path / "threshold", files)
    configs = [agency_toml(files.shares[a].parent, a, server.port, VISITS) for a in names]
    client = Client(
        f"127.0.0.1:{server.port}",
        read_token(files.scientist_tokens["analyst"]),
        ca_file=files.ca_cert,
    )
    try:
        with running_agents(configs) as agents:
            wait_until(lambda: all(a.registrations for a in agents), "agents registered")
            bits = masked_precision_limit(4)
            job = client.submit("fedavg", {**PARAMS, "precision_bits": bits}, "visits")
            events = list(client.watch(job, timeout=180))
            assert events[-1].state == "succeeded", events[-1]
            step = 2 * CLIP / ((1 << bits) - 1)
            np.testing.assert_allclose(
                _coefs(client.result_text(job)), local, rtol=0, atol=20 * step
            )
            kinds = [r["kind"] for r in client.result(job)["history"]]
            assert kinds.count("fedavg.local") == 2
    finally:
        client.close()
        server.stop(grace=1.0)

    kh = deal_federation(tmp_path / "keyholder", names, 1, key_bits=512, key_holder="m1")
    server = tls_coordinator(tmp_path / "keyholder", kh)
    client = Client(
        f"127.0.0.1:{server.port}", read_token(kh.scientist_tokens["analyst"]), ca_file=kh.ca_cert
    )
    try:
        with pytest.raises(ClientError, match="needs a threshold key; this federation runs in"):
            client.submit("fedavg", PARAMS, "visits")
        # the default scheme passes the check (refused later only for want of agencies)
        with pytest.raises(ClientError, match="no registered agency offers dataset 'visits'"):
            client.submit("fedavg", {**PARAMS, "aggregation": "paillier"}, "visits")
    finally:
        client.close()
        server.stop(grace=1.0)
