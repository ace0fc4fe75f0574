"""A decryption committee in fedcity's own coordinator: t of m share holders, the rest encrypt.

Four agencies, a committee of three (t = 2): the fourth gets the threshold public key only,
contributes to every round, and is never asked to decrypt. Real TLS coordinator and agent
daemons on loopback.
"""

from __future__ import annotations

import json
import sqlite3

import pytest
from daemons import agency_toml, running_agents, tls_coordinator, wait_connected, wait_until

from fedcity.analytics.spec import QuerySpec
from fedcity.crypto import ThresholdPublicKey
from fedcity.net.ceremony import CeremonyError, deal_federation, load_federation, read_token
from fedcity.net.client import Client, ClientError

AGENCIES = ["c1", "c2", "c3", "c4"]
COMMITTEE = ["c1", "c2", "c3"]
SPEC = QuerySpec.from_dict(
    {
        "table": "requests",
        "group_by": ["ward"],
        "columns": {"ward": {"levels": ["w1", "w2"]}},
        "aggregate": [{"name": "n", "func": "count"}],
    }
)


def test_the_ceremony_deals_shares_to_the_committee_only(tmp_path):
    files = deal_federation(tmp_path, AGENCIES, 2, key_bits=512, committee=COMMITTEE)
    assert sorted(files.shares) == COMMITTEE
    outsider = files.key_file("c4")
    assert outsider.name == "threshold-public-key.json"
    assert ThresholdPublicKey.load(outsider).parties == 3
    federation = load_federation(files.public)
    assert federation.agencies["c4"] == 0
    assert federation.share_index_of(AGENCIES) == {"c1": 1, "c2": 2, "c3": 3}
    assert "the committee decrypts" in files.agency_configs["c4"].read_text()
    for bad, match in (
        (["c1", "c9"], r"\['c9'\] are not agencies"),
        (["c1", "c1"], "distinct agencies"),
        (["c1"], r"threshold must lie in \[1, 1\]"),
    ):
        with pytest.raises(CeremonyError, match=match):
            deal_federation(tmp_path / "x", AGENCIES, 2, key_bits=512, committee=bad)


def test_outsiders_contribute_and_only_members_decrypt(tmp_path):
    files = deal_federation(tmp_path, AGENCIES, 2, key_bits=512, committee=COMMITTEE)
    server = tls_coordinator(tmp_path, files)
    configs = []
    for i, agency in enumerate(AGENCIES):
        folder = files.shares.get(agency, files.key_file(agency)).parent
        rows = "\n".join(("w1", "w2")[(i + j) % 2] for j in range(30))
        (folder / "requests.csv").write_text("ward\n" + rows + "\n")
        body = '[tables.requests]\npath = "requests.csv"\ncolumns = { ward = "category" }\n'
        key = files.key_file(agency).name
        config = agency_toml(folder, agency, server.port, body)
        config.write_text(
            config.read_text().replace('key_file = "share.json"', f'key_file = "{key}"')
        )
        configs.append(config)
    client = Client(
        f"127.0.0.1:{server.port}",
        read_token(files.scientist_tokens["analyst"]),
        ca_file=files.ca_cert,
    )
    try:
        with running_agents(configs):
            wait_connected(client, len(AGENCIES))
            job = client.submit_query(SPEC)
            wait_until(lambda: client.status(job).state != "running", "the query", 60)
            assert client.status(job).state == "succeeded"
            result = client.query_result(job)
            assert result.frame["n"].tolist() == [60, 60]
            with pytest.raises(ClientError, match="include 1 member") as info:
                client.submit_query(SPEC, agencies=["c1", "c4"])
            assert info.value.code_name == "FAILED_PRECONDITION"
    finally:
        client.close()
        server.stop(grace=1.0)
    with sqlite3.connect(tmp_path / "coordinator.sqlite") as db:
        rows = db.execute(
            "SELECT type, agency FROM events WHERE job_id = ? AND type IN "
            "('contribution', 'partial')",
            (job,),
        ).fetchall()
    contributors = {a for t, a in rows if t == "contribution"}
    decryptors = {a for t, a in rows if t == "partial"}
    assert contributors == set(AGENCIES)
    assert decryptors and decryptors <= set(COMMITTEE)
    assert json.loads(files.public.read_text())["committee"] == COMMITTEE
