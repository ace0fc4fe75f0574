"""The certificate authority and the enrollment registry, without a network."""

from __future__ import annotations

import stat

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.x509.oid import NameOID

from fedcity.governance.ca import CAError, CertificateAuthority, identity_of, make_csr
from fedcity.governance.enrollment import (
    CADirectory,
    EnrollmentError,
    EnrollmentRegistry,
    check_private,
)


@pytest.fixture(scope="module")
def ca():
    return CertificateAuthority.create("riverside")


def test_a_signed_request_carries_the_invited_name_and_role(ca):
    key_pem, csr = make_csr("district-01")
    cert = ca.sign(csr, name="district-01", role="agency", days=30)
    identity = ca.verify(cert)
    assert (identity.name, identity.role) == ("district-01", "agency")
    assert identity == identity_of(cert)
    assert b"PRIVATE KEY" in key_pem and b"PRIVATE KEY" not in cert


def test_the_ca_refuses_what_it_was_not_asked_to_sign(ca):
    _, csr = make_csr("district-01")
    with pytest.raises(
        CAError, match=r"names \['district-01'\], the invitation is for 'district-02'"
    ):
        ca.sign(csr, name="district-02", role="agency")
    with pytest.raises(CAError, match="role 'admin' is not one of"):
        ca.sign(csr, name="district-01", role="admin")
    with pytest.raises(CAError, match="not a PEM CSR"):
        ca.sign(
            b"-----BEGIN CERTIFICATE REQUEST-----\ngarbage\n", name="district-01", role="agency"
        )
    with pytest.raises(CAError, match="the limit is"):
        ca.sign(b"x" * 9000, name="district-01", role="agency")
    with pytest.raises(CAError, match="name 'bad name' must be"):
        make_csr("bad name")
    rsa_key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    rsa_csr = (
        x509.CertificateSigningRequestBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "district-01")]))
        .sign(rsa_key, hashes.SHA256())
        .public_bytes(serialization.Encoding.PEM)
    )
    with pytest.raises(CAError, match="must be ECDSA P-256"):
        ca.sign(rsa_csr, name="district-01", role="agency")


def test_a_certificate_of_another_ca_is_not_ours(ca):
    other = CertificateAuthority.create("elsewhere")
    _, csr = make_csr("district-01")
    foreign = other.sign(csr, name="district-01", role="agency")
    with pytest.raises(CAError, match="not issued by this federation's CA"):
        ca.verify(foreign)
    with pytest.raises(CAError, match="does not belong"):
        CertificateAuthority(other.key_pem, ca.cert_pem)


def test_an_invitation_enrolls_once(tmp_path, ca):
    now = [1_000_000.0]
    registry = EnrollmentRegistry(tmp_path / "r.sqlite", clock=lambda: now[0])
    token = registry.invite("analyst", "scientist", ttl=3600)
    _, csr = make_csr("analyst")
    with pytest.raises(EnrollmentError, match="is for 'analyst', not 'mallory'"):
        registry.redeem(token, "mallory", make_csr("mallory")[1], ca)
    with pytest.raises(CAError):  # a bad request does not use up the token
        registry.redeem(token, "analyst", b"nonsense", ca)
    cert = registry.redeem(token, "analyst", csr, ca)
    assert identity_of(cert).role == "scientist"
    with pytest.raises(EnrollmentError, match="already used"):
        registry.redeem(token, "analyst", csr, ca)
    with pytest.raises(EnrollmentError, match="unknown enrollment token"):
        registry.redeem("not-a-token", "analyst", csr, ca)
    late = registry.invite("district-01", "agency", ttl=60)
    now[0] += 61
    with pytest.raises(EnrollmentError, match="expired 1 s ago"):
        registry.redeem(late, "district-01", make_csr("district-01")[1], ca)
    serial = identity_of(cert).serial
    assert not registry.is_revoked(serial)
    assert registry.revoke("analyst") == 1
    assert registry.is_revoked(serial)
    assert registry.is_revoked(12345)  # never issued here
    with pytest.raises(EnrollmentError, match="revoked"):
        registry.renew(cert, make_csr("analyst")[1], ca)
    registry.close()


def test_the_ca_folder_keeps_its_secrets_private(tmp_path):
    folder = CADirectory.init(tmp_path / "ca", "riverside", ("localhost", "127.0.0.1"))
    for secret in (folder.ca_key, folder.server_key):
        assert stat.S_IMODE(secret.stat().st_mode) == 0o600
    assert folder.authority().cert_pem == folder.ca_cert.read_bytes()
    with pytest.raises(CAError, match="already holds a CA"):
        CADirectory.init(tmp_path / "ca", "riverside", ("localhost",))
    folder.ca_key.chmod(0o644)
    with pytest.raises(CAError, match="readable or writable by others"):
        folder.authority()
    with pytest.raises(CAError, match="readable or writable by others"):
        check_private(folder.ca_key)
