"""Secrets stay secret: written owner-only, refused when others may read them, never logged.

Key shares, private keys, signing keys, the CA key, TLS keys and tokens are created with mode
0600 by the ceremony, the CA and enrollment; the agent and the coordinator refuse to start
with one that its group or others may read. A whole small federation run with every logger
at DEBUG writes none of them into its logs.
"""

from __future__ import annotations

import base64
import json
import logging
import os
import stat
import threading
import time
from pathlib import Path

import pytest
from harness import deal

from fedcity.crypto import KeyShare, PrivateKey
from fedcity.governance.ca import CAError
from fedcity.governance.enrollment import CADirectory
from fedcity.net.agent import Agent, AgentConfig, AgentError
from fedcity.net.auth import AuthError
from fedcity.net.ceremony import CeremonyError, deal_federation, read_token
from fedcity.net.client import Client
from fedcity.net.coordinator import CoordinatorConfig, serve
from fedcity.secretfiles import SecretFileError, check_private, write_secret

pytestmark = pytest.mark.skipif(os.name != "posix", reason="POSIX file permissions")


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    return deal(tmp_path_factory.mktemp("secrets"), 3, 2, key_bits=512, rows=900)


@pytest.fixture
def umask_zero():
    old = os.umask(0)  # the most permissive umask: modes come from the code alone
    yield
    os.umask(old)


# -- written owner-only -----------------------------------------------------------------------
def test_the_ceremony_writes_every_secret_owner_only(tmp_path, umask_zero):
    files = deal_federation(tmp_path / "fed", ["a1", "a2"], 2, key_bits=512)
    secrets = [files.credentials, files.server_key]
    for a in ("a1", "a2"):
        secrets += [files.shares[a], files.signing_keys[a], files.agency_tokens[a]]
    secrets += list(files.scientist_tokens.values())
    for path in secrets:
        assert mode(path) == 0o600, path
    assert mode(files.public) == 0o644  # public files stay readable
    holder = deal_federation(tmp_path / "kh", ["a1", "a2"], 1, key_bits=512, key_holder="a1")
    private = holder.key_file("a1")
    assert json.loads(private.read_text())["format"] == "fedcity.paillier.private-key"
    assert mode(private) == 0o600
    assert mode(holder.key_file("a2")) == 0o644  # the others hold the public key only


def test_the_ca_writes_its_keys_owner_only(tmp_path, umask_zero):
    folder = CADirectory.init(tmp_path / "ca", "riverside", ("localhost",))
    assert mode(folder.ca_key) == 0o600 and mode(folder.server_key) == 0o600
    assert mode(folder.ca_cert) & 0o077 != 0o077  # not a secret (and not made private)


def test_write_secret_narrows_an_existing_file_before_writing(tmp_path, umask_zero):
    path = tmp_path / "key.pem"
    path.write_text("old")
    path.chmod(0o666)
    write_secret(path, b"new secret")
    assert mode(path) == 0o600 and path.read_bytes() == b"new secret"
    with pytest.raises(FileExistsError):
        write_secret(path, b"x", exclusive=True)
    write_secret(tmp_path / "fresh", b"s", exclusive=True)
    assert mode(tmp_path / "fresh") == 0o600


@pytest.mark.parametrize("bits", [0o640, 0o604, 0o620, 0o602, 0o700 | 0o010])
def test_check_private_refuses_any_access_by_others(tmp_path, bits):
    path = tmp_path / "share.json"
    path.write_text("{}")
    path.chmod(bits)
    with pytest.raises(SecretFileError) as info:
        check_private(path, "key share")
    text = str(info.value)
    assert f"key share {path} is readable or writable by others (mode {bits:04o})" in text
    assert f"chmod 600 {path}" in text
    path.chmod(0o600)
    check_private(path, "key share")
    path.chmod(0o400)
    check_private(path, "key share")
    with pytest.raises(SecretFileError, match="cannot examine"):
        check_private(tmp_path / "absent", "key share")


def test_a_token_readable_by_others_is_refused(tmp_path):
    path = tmp_path / "token"
    write_secret(path, b"abc-DEF_123\n")
    assert read_token(path) == "abc-DEF_123"
    path.chmod(0o644)
    with pytest.raises(CeremonyError, match=r"readable or writable by others \(mode 0644\)"):
        read_token(path)


# -- refused at start -------------------------------------------------------------------------
def _agent_config(setup, tmp_path, agency: str) -> AgentConfig:
    path = setup.write_agent_config(tmp_path / agency, agency, "127.0.0.1:1", insecure=True)
    return AgentConfig.from_toml(path)


@pytest.mark.parametrize("which", ["token", "key share", "signing key"])
def test_the_agent_refuses_to_start_with_a_secret_others_can_read(setup, tmp_path, which):
    agency = setup.agencies[0]
    files = setup.files
    path = {
        "token": files.agency_tokens[agency],
        "key share": files.key_file(agency),
        "signing key": files.signing_keys[agency],
    }[which]
    config = _agent_config(setup, tmp_path, agency)
    Agent(config)  # as dealt, it loads
    path.chmod(0o644)
    try:
        with pytest.raises(AgentError) as info:
            Agent(config)
    finally:
        path.chmod(0o600)
    assert str(path) in str(info.value) and f"chmod 600 {path}" in str(info.value)


def test_the_agent_refuses_a_readable_private_key_but_not_a_public_one(tmp_path):
    files = deal_federation(tmp_path / "kh", ["a1", "a2"], 1, key_bits=512, key_holder="a1")
    from fedcity.net.agent import _load_agency_key

    assert isinstance(_load_agency_key(files.key_file("a1")), PrivateKey)
    files.key_file("a1").chmod(0o640)
    with pytest.raises(AgentError, match="chmod 600"):
        _load_agency_key(files.key_file("a1"))
    files.key_file("a2").chmod(0o644)  # a public key is no secret
    assert not isinstance(_load_agency_key(files.key_file("a2")), PrivateKey | KeyShare)


def test_the_coordinator_refuses_to_start_with_a_readable_tls_key(setup, tmp_path):
    files = setup.files
    config = CoordinatorConfig(
        listen="127.0.0.1:0",
        db=tmp_path / "c.sqlite",
        federation=files.public,
        credentials=files.credentials,
        tls_cert=files.server_cert,
        tls_key=files.server_key,
    )
    files.server_key.chmod(0o644)
    try:
        with pytest.raises(AuthError, match=f"chmod 600 {files.server_key}"):
            serve(config)
    finally:
        files.server_key.chmod(0o600)
    serve(config).stop(grace=0)  # as dealt, it starts


def test_the_coordinator_refuses_readable_ca_and_server_keys(setup, tmp_path):
    folder = CADirectory.init(tmp_path / "ca", "riverside", ("127.0.0.1",))
    config = CoordinatorConfig(
        listen="127.0.0.1:0",
        db=tmp_path / "c.sqlite",
        federation=setup.files.public,
        credentials="",
        ca_dir=folder.root,
    )
    for key in (folder.ca_key, folder.server_key):
        key.chmod(0o640)
        with pytest.raises((AuthError, CAError), match=f"chmod 600 {key}"):
            serve(config)
        key.chmod(0o600)
    serve(config).stop(grace=0)


# -- never logged -----------------------------------------------------------------------------
def _secret_forms(setup) -> dict[str, list[str]]:
    """Every secret of the federation, in every form a log line could show it."""
    files = setup.files
    forms: dict[str, list[str]] = {}
    for name, path in {**files.agency_tokens, **files.scientist_tokens}.items():
        forms[f"token of {name}"] = [read_token(path)]
    for agency in setup.agencies:
        share = json.loads(files.key_file(agency).read_text())["share"]
        forms[f"share of {agency}"] = [share, str(int(share, 16)), share.upper()]
        seed = json.loads(files.signing_keys[agency].read_text())["seed"]
        raw = bytes.fromhex(seed)
        forms[f"signing key of {agency}"] = [
            seed,
            seed.upper(),
            base64.b64encode(raw).decode(),
            repr(raw)[2:-1],
        ]
    pem = files.server_key.read_text().splitlines()
    forms["TLS server key"] = [line for line in pem if line and not line.startswith("-----")]
    return forms


def test_a_whole_federation_at_debug_logs_no_secret(setup, tmp_path, caplog, capfd):
    caplog.set_level(logging.DEBUG)  # every logger, fedcity's and the libraries'
    logging.getLogger("fedcity").setLevel(logging.DEBUG)
    files = setup.files
    server = serve(
        CoordinatorConfig(
            listen="127.0.0.1:0",
            db=tmp_path / "coordinator.sqlite",
            federation=files.public,
            credentials=files.credentials,
            tls_cert=files.server_cert,
            tls_key=files.server_key,
            heartbeat_interval=0.5,
        )
    )
    address = f"127.0.0.1:{server.port}"
    agents, threads = [], []
    try:
        for agency in setup.agencies:
            path = setup.write_agent_config(tmp_path / agency, agency, address)
            agent = Agent(AgentConfig.from_toml(path), fetch_wait_ms=500)
            thread = threading.Thread(
                target=agent.run, kwargs={"handle_signals": False}, daemon=True
            )
            thread.start()
            agents.append(agent)
            threads.append(thread)
        token = read_token(files.scientist_tokens["analyst"])
        with Client(address, token, ca_file=files.ca_cert) as client:
            deadline = time.monotonic() + 60
            while sum(a.connected for a in client.agencies()) < len(setup.agencies):
                assert time.monotonic() < deadline, "the agents did not connect"
                time.sleep(0.05)
            job_id = client.submit("logistic_regression", {"C": 1.0}, setup.dataset)
            final = None
            for event in client.watch(job_id, timeout=120):
                final = event
            assert final is not None and final.state == "succeeded", final
            assert client.result(job_id)["model"]
            client.logs(job_id)
            client.jobs()
    finally:
        for agent in agents:
            agent.stop()
        for thread in threads:
            thread.join(timeout=30)
        server.stop(grace=0)
    out, err = capfd.readouterr()
    text = "\n".join(
        [out, err]
        + [r.getMessage() for r in caplog.records]
        + [caplog.text]
        + [Path(a.config.log_file).read_text() for a in agents if a.config.log_file]
    )
    assert sum(r.levelno == logging.DEBUG for r in caplog.records) > 0  # DEBUG was on
    assert "job" in text and job_id in text  # the logs did record the run
    for what, forms in _secret_forms(setup).items():
        for form in forms:
            assert len(form) >= 16, (what, form)  # long enough not to match by chance
            assert form not in text, f"the {what} appears in the logs"


def test_the_coordinator_refuses_a_database_others_can_read(setup, tmp_path):
    from fedcity.net.store import StoreError

    files = setup.files
    config = CoordinatorConfig(
        listen="127.0.0.1:0",
        db=tmp_path / "c.sqlite",
        federation=files.public,
        credentials=files.credentials,
        insecure=True,
    )
    serve(config).stop(grace=0)  # creates the database, owner-only
    db = tmp_path / "c.sqlite"
    assert mode(db) == 0o600
    db.chmod(0o644)  # e.g. restored with a plain cp
    with pytest.raises(StoreError, match=f"chmod 600 {db}.*audit signing key"):
        serve(config)
    db.chmod(0o600)
    serve(config).stop(grace=0)
