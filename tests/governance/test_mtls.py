"""Enrollment and mutual TLS over real gRPC: identities come from certificates alone.

A coordinator serves with ``ca_dir`` (client certificates required on its main port) and an
enrollment port (server TLS). Principals enroll with one-time invitations; a connection
without a certificate, with one from another CA, an expired or a revoked one is refused; an
agency cannot act as another or as a data scientist; revocation needs no restart.
"""

from __future__ import annotations

import datetime as dt
import threading
import time

import grpc
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from fedcity.governance.ca import CertificateAuthority, make_csr
from fedcity.governance.enrollment import CADirectory, EnrollmentRegistry
from fedcity.net.agent import Agent, AgentConfig
from fedcity.net.ceremony import deal_federation
from fedcity.net.channel import open_channel
from fedcity.net.client import Client, ClientError, enroll
from fedcity.net.coordinator import CoordinatorConfig, serve
from fedcity.v1 import federation_pb2 as fpb
from fedcity.v1 import federation_pb2_grpc as fpb_grpc

AGENCIES = ["d1", "d2"]


@pytest.fixture
def world(tmp_path):
    files = deal_federation(tmp_path / "fed", AGENCIES, 2, key_bits=512)
    folder = CADirectory.init(tmp_path / "ca", "riverside", ("localhost", "127.0.0.1"))
    server = serve(
        CoordinatorConfig(
            listen="127.0.0.1:0",
            db=tmp_path / "coordinator.sqlite",
            federation=files.public,
            credentials="",
            ca_dir=folder.root,
            enroll_listen="127.0.0.1:0",
            heartbeat_interval=0.5,
            max_wait=0.5,
            tick_interval=0.1,
        )
    )
    registry = EnrollmentRegistry(folder.registry)
    try:
        yield {"root": tmp_path, "files": files, "ca": folder, "server": server, "reg": registry}
    finally:
        registry.close()
        server.stop(grace=0)


def _enroll(world, name: str, role: str):
    token = world["reg"].invite(name, role)
    key, cert, got = enroll(
        f"127.0.0.1:{world['server'].enroll_port}",
        ca_file=world["ca"].ca_cert,
        token=token,
        name=name,
        out=world["root"] / "creds" / name,
    )
    assert got == role
    return key, cert


def _client(world, key, cert) -> Client:
    return Client(
        f"127.0.0.1:{world['server'].port}",
        None,
        ca_file=world["ca"].ca_cert,
        cert_file=cert,
        key_file=key,
        timeout=5,
    )


def _agent_stub(world, key, cert):
    channel = open_channel(
        f"127.0.0.1:{world['server'].port}",
        ca_file=world["ca"].ca_cert,
        cert_file=cert,
        key_file=key,
    )
    return channel, fpb_grpc.AgentServiceStub(channel)


def test_an_enrolled_agency_and_scientist_work_over_mutual_tls(world):
    akey, acert = _enroll(world, "d1", "agency")
    skey, scert = _enroll(world, "analyst", "scientist")
    folder = world["files"].shares["d1"].parent
    (folder / "t.csv").write_text("ward,x\na,1\nb,2\n")
    (folder / "agency.toml").write_text(
        f"""agency = "d1"
coordinator = "127.0.0.1:{world["server"].port}"
tls_cert_file = "{acert}"
tls_key_file = "{akey}"
ca_file = "{world["ca"].ca_cert}"
key_file = "share.json"
signing_key_file = "signing-key.json"
federation_file = "../../federation-public.json"

[tables.t]
path = "t.csv"
columns = {{ ward = "category", x = "integer" }}
"""
    )
    config = AgentConfig.from_toml(folder / "agency.toml")
    assert config.token_file is None
    agent = Agent(config, fetch_wait_ms=300)
    thread = threading.Thread(target=agent.run, kwargs={"handle_signals": False}, daemon=True)
    thread.start()
    try:
        with _client(world, skey, scert) as client:
            deadline = time.monotonic() + 20
            while not any(a.connected for a in client.agencies() if a.name == "d1"):
                assert time.monotonic() < deadline, "the enrolled agent did not connect"
                time.sleep(0.05)
    finally:
        agent.stop()
        thread.join(timeout=10)


def test_connections_without_a_valid_certificate_are_refused(world):
    skey, scert = _enroll(world, "analyst", "scientist")
    address = f"127.0.0.1:{world['server'].port}"
    # no client certificate: the handshake itself fails
    with (
        Client(address, "any-token", ca_file=world["ca"].ca_cert, timeout=3) as client,
        pytest.raises(ClientError) as info,
    ):
        client.agencies()
    assert info.value.code_name in ("UNAVAILABLE", "UNAUTHENTICATED")
    # a certificate from another CA
    other = CertificateAuthority.create("elsewhere")
    key_pem, csr = make_csr("analyst")
    foreign = world["root"] / "foreign"
    foreign.mkdir()
    (foreign / "key.pem").write_bytes(key_pem)
    (foreign / "cert.pem").write_bytes(other.sign(csr, name="analyst", role="scientist"))
    with (
        _client(world, foreign / "key.pem", foreign / "cert.pem") as client,
        pytest.raises(ClientError) as info,
    ):
        client.agencies()
    assert info.value.code_name == "UNAVAILABLE"
    # an expired certificate from our CA (signed with its key, dated in the past)
    ca = world["ca"].authority()
    expired = world["root"] / "expired"
    expired.mkdir()
    key = ec.generate_private_key(ec.SECP256R1())
    now = dt.datetime.now(dt.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(
            x509.Name(
                [
                    x509.NameAttribute(NameOID.COMMON_NAME, "analyst"),
                    x509.NameAttribute(NameOID.ORGANIZATIONAL_UNIT_NAME, "scientist"),
                ]
            )
        )
        .issuer_name(ca.cert.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(days=10))
        .not_valid_after(now - dt.timedelta(days=1))
        .sign(_ca_key(world), hashes.SHA256())
    )
    (expired / "cert.pem").write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    (expired / "key.pem").write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    with (
        _client(world, expired / "key.pem", expired / "cert.pem") as client,
        pytest.raises(ClientError) as info,
    ):
        client.agencies()
    assert info.value.code_name == "UNAVAILABLE"
    # the valid one works
    with _client(world, skey, scert) as client:
        assert {a.name for a in client.agencies()} >= set(AGENCIES)


def _ca_key(world):
    return serialization.load_pem_private_key(world["ca"].ca_key.read_bytes(), password=None)


def test_revocation_takes_effect_on_the_next_call(world):
    skey, scert = _enroll(world, "analyst", "scientist")
    with _client(world, skey, scert) as client:
        assert client.agencies()
        world["reg"].revoke("analyst")  # what `fedcity ca revoke analyst` does
        with pytest.raises(ClientError, match="revoked") as info:
            client.agencies()
    assert info.value.code_name == "UNAUTHENTICATED"


def test_roles_and_names_come_from_the_certificate(world):
    akey, acert = _enroll(world, "d1", "agency")
    channel, stub = _agent_stub(world, akey, acert)
    try:
        with pytest.raises(grpc.RpcError) as info:  # acting as another agency
            stub.Heartbeat(fpb.HeartbeatRequest(agency="d2"), timeout=5)
        assert info.value.code() == grpc.StatusCode.PERMISSION_DENIED
        stub.Heartbeat(fpb.HeartbeatRequest(agency="d1"), timeout=5)
        jobs = fpb_grpc.JobServiceStub(channel)
        with pytest.raises(grpc.RpcError) as info:  # acting as a data scientist
            jobs.ListAgencies(fpb.ListAgenciesRequest(), timeout=5)
        assert info.value.code() == grpc.StatusCode.PERMISSION_DENIED
    finally:
        channel.close()
    # the enrollment port serves enrollment only: nothing else without a certificate
    enroll_channel = open_channel(
        f"127.0.0.1:{world['server'].enroll_port}", ca_file=world["ca"].ca_cert
    )
    try:
        with pytest.raises(grpc.RpcError) as info:
            fpb_grpc.JobServiceStub(enroll_channel).ListAgencies(
                fpb.ListAgenciesRequest(), timeout=5
            )
        assert info.value.code() == grpc.StatusCode.UNAUTHENTICATED
        # a used or unknown invitation is refused
        with pytest.raises(grpc.RpcError) as info:
            fpb_grpc.EnrollmentServiceStub(enroll_channel).Enroll(
                fpb.EnrollRequest(token="guess", name="d2", csr_pem=make_csr("d2")[1]), timeout=5
            )
        assert info.value.code() == grpc.StatusCode.PERMISSION_DENIED
    finally:
        enroll_channel.close()


def test_a_certificate_is_renewed_before_it_expires(world):
    akey, acert = _enroll(world, "d1", "agency")
    channel, _ = _agent_stub(world, akey, acert)
    try:
        new_key, csr = make_csr("d1")
        reply = fpb_grpc.EnrollmentServiceStub(channel).Renew(
            fpb.RenewRequest(csr_pem=csr), timeout=5
        )
    finally:
        channel.close()
    assert reply.role == "agency"
    renewed = world["root"] / "renewed"
    renewed.mkdir()
    (renewed / "key.pem").write_bytes(new_key)
    (renewed / "cert.pem").write_bytes(reply.certificate_pem)
    channel, stub = _agent_stub(world, renewed / "key.pem", renewed / "cert.pem")
    try:
        stub.Heartbeat(fpb.HeartbeatRequest(agency="d1"), timeout=5)
    finally:
        channel.close()


def test_the_operator_and_scientist_commands(tmp_path, capsys):
    from fedcity.cli import main

    ca_dir = tmp_path / "ca"
    assert main(["ca", "init", "--dir", str(ca_dir), "--federation", "riverside"]) == 0
    assert main(["ca", "init", "--dir", str(ca_dir), "--federation", "riverside"]) == 1
    capsys.readouterr()
    invite = tmp_path / "invite.txt"
    args = ["ca", "invite", "analyst", "--role", "scientist", "--dir", str(ca_dir)]
    assert main([*args, "--out", str(invite)]) == 0
    assert (invite.stat().st_mode & 0o077) == 0
    files = deal_federation(tmp_path / "fed", AGENCIES, 2, key_bits=512)
    server = serve(
        CoordinatorConfig(
            listen="127.0.0.1:0",
            db=tmp_path / "coordinator.sqlite",
            federation=files.public,
            credentials="",
            ca_dir=ca_dir,
            enroll_listen="127.0.0.1:0",
        )
    )
    try:
        creds = tmp_path / "me"
        login = ["login", "--coordinator", f"127.0.0.1:{server.enroll_port}"]
        login += ["--ca-file", str(ca_dir / "ca.pem"), "--name", "analyst"]
        login += ["--token-file", str(invite), "--out", str(creds)]
        assert main(login) == 0
        assert "enrolled analyst as scientist" in capsys.readouterr().out
        assert main([*login[:-1], str(tmp_path / "again")]) == 1  # the invitation is used up
        assert "already used" in capsys.readouterr().err
        connect = ["--coordinator", f"127.0.0.1:{server.port}", "--ca-file", str(ca_dir / "ca.pem")]
        connect += ["--cert-file", str(creds / "cert.pem"), "--key-file", str(creds / "key.pem")]
        assert main(["agencies", "list", *connect, "--json"]) == 0
        capsys.readouterr()
        assert main(["ca", "list", "--dir", str(ca_dir)]) == 0
        listed = capsys.readouterr().out
        assert "analyst" in listed and "valid" in listed
        before = (creds / "cert.pem").read_bytes()
        renew = ["renew", "--coordinator", f"127.0.0.1:{server.port}"]
        renew += ["--ca-file", str(ca_dir / "ca.pem"), "--cert-file", str(creds / "cert.pem")]
        renew += ["--key-file", str(creds / "key.pem")]
        assert main(renew) == 0
        assert (creds / "cert.pem").read_bytes() != before
        assert (creds / "key.pem").stat().st_mode & 0o077 == 0
        assert main(["agencies", "list", *connect, "--json"]) == 0  # the renewed pair works
        capsys.readouterr()
        assert main(["ca", "revoke", "analyst", "--dir", str(ca_dir)]) == 0
        capsys.readouterr()
        assert main(["agencies", "list", *connect]) == 1
        assert "revoked" in capsys.readouterr().err
    finally:
        server.stop(grace=0)


def test_an_operator_lists_but_cannot_submit_or_act_as_an_agency(world):
    okey, ocert = _enroll(world, "ops", "operator")
    with _client(world, okey, ocert) as client:
        assert {a.name for a in client.agencies()} >= set(AGENCIES)
        assert client.jobs() == []
        with pytest.raises(ClientError, match="reserved to the scientist role") as info:
            client.submit("ridge", {}, "inspections")
    assert info.value.code_name == "PERMISSION_DENIED"
    channel, stub = _agent_stub(world, okey, ocert)
    try:
        with pytest.raises(grpc.RpcError) as rpc:
            stub.Heartbeat(fpb.HeartbeatRequest(agency="ops"), timeout=5)
        assert rpc.value.code() == grpc.StatusCode.PERMISSION_DENIED
    finally:
        channel.close()
