"""The federation's certificate authority: X.509 for mutual TLS, without hand-written ASN.1.

Sans-IO: every function takes and returns PEM bytes (the CLI and the coordinator store them).
Identities live in the certificate: the subject's common name is the principal's name and its
organisational unit its role (``agency``, ``scientist`` or ``operator``). Keys are ECDSA P-256,
which every TLS stack gRPC uses accepts. A private key never leaves the party that generated it:
enrollees send a certificate signing request (:func:`make_csr`), and the CA signs it
(:meth:`CertificateAuthority.sign`) only for the name and role it was invited under.
"""

from __future__ import annotations

import datetime as dt
import ipaddress
import re
import secrets
from dataclasses import dataclass

from cryptography import x509
from cryptography.exceptions import InvalidSignature, UnsupportedAlgorithm
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

__all__ = [
    "CERT_ROLES",
    "MAX_CSR_BYTES",
    "MAX_VALIDITY_DAYS",
    "CAError",
    "CertificateAuthority",
    "Identity",
    "identity_of",
    "make_csr",
]

CERT_ROLES = ("agency", "scientist", "operator")
"""Roles a certificate may carry."""
MAX_CSR_BYTES = 8 << 10
"""Largest signing request the CA reads (a P-256 CSR is about 400 bytes of PEM)."""
MAX_VALIDITY_DAYS = 825
"""Longest certificate lifetime (the CA/Browser Forum's former maximum)."""
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")


class CAError(ValueError):
    """An invalid request, certificate or CA file; the message says which and why."""


@dataclass(frozen=True)
class Identity:
    """Who a certificate names.

    Attributes
    ----------
    name : str
    role : str
        One of :data:`CERT_ROLES`.
    serial : int
    not_after : datetime
        End of validity (UTC).
    """

    name: str
    role: str
    serial: int
    not_after: dt.datetime


def _check_name(name: str) -> str:
    if not isinstance(name, str) or not _NAME.fullmatch(name):
        raise CAError(
            f"name {name!r} must be 1-64 characters: letters, digits, '.', '_' or '-', "
            "starting with a letter or digit"
        )
    return name


def _check_role(role: str) -> str:
    if role not in CERT_ROLES:
        raise CAError(f"role {role!r} is not one of {list(CERT_ROLES)}")
    return role


def _new_key() -> ec.EllipticCurvePrivateKey:
    return ec.generate_private_key(ec.SECP256R1())


def _key_pem(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )


def _now() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


def make_csr(name: str) -> tuple[bytes, bytes]:
    """A new private key and a signing request for ``name`` (PEM key, PEM CSR).

    The key is generated here and stays with the caller; only the CSR is sent to the CA.
    """
    key = _new_key()
    csr = (
        x509.CertificateSigningRequestBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, _check_name(name))]))
        .sign(key, hashes.SHA256())
    )
    return _key_pem(key), csr.public_bytes(serialization.Encoding.PEM)


def _load_cert(pem: bytes, what: str) -> x509.Certificate:
    try:
        return x509.load_pem_x509_certificate(pem)
    except (ValueError, x509.InvalidVersion) as exc:
        raise CAError(f"{what} is not a PEM X.509 certificate: {exc}") from exc


def identity_of(cert_pem: bytes) -> Identity:
    """The name, role, serial and expiry a certificate carries.

    Raises
    ------
    CAError
        Not a certificate, or no single common name and known role.
    """
    cert = _load_cert(cert_pem, "the certificate")
    try:  # the certificate's fields are parsed on first access
        names = cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)
        units = cert.subject.get_attributes_for_oid(NameOID.ORGANIZATIONAL_UNIT_NAME)
        serial, not_after = cert.serial_number, cert.not_valid_after_utc
    except ValueError as exc:
        raise CAError(f"the certificate cannot be parsed: {exc}") from exc
    if len(names) != 1 or len(units) != 1:
        raise CAError("the certificate does not carry exactly one name (CN) and one role (OU)")
    role = str(units[0].value)
    if role not in CERT_ROLES:
        raise CAError(f"the certificate's role {role!r} is not one of {list(CERT_ROLES)}")
    return Identity(str(names[0].value), role, serial, not_after)


class CertificateAuthority:
    """A CA key and its self-signed certificate.

    Parameters
    ----------
    key_pem, cert_pem : bytes
        The CA's private key and certificate (from :meth:`create`).
    """

    def __init__(self, key_pem: bytes, cert_pem: bytes) -> None:
        try:
            key = serialization.load_pem_private_key(key_pem, password=None)
        except (ValueError, TypeError, UnsupportedAlgorithm) as exc:
            raise CAError(f"the CA key is not an unencrypted PEM private key: {exc}") from exc
        if not isinstance(key, ec.EllipticCurvePrivateKey):
            raise CAError("the CA key must be an ECDSA key")
        self._key = key
        self.cert = _load_cert(cert_pem, "the CA certificate")
        try:
            cert_key = self.cert.public_key()
        except (ValueError, UnsupportedAlgorithm) as exc:
            raise CAError(f"the CA certificate's key cannot be read: {exc}") from exc
        if cert_key != key.public_key():
            raise CAError("the CA key does not belong to the CA certificate")
        self.cert_pem = cert_pem

    def __repr__(self) -> str:
        return f"<CertificateAuthority {self.cert.subject.rfc4514_string()}>"

    @classmethod
    def create(cls, federation: str, *, days: int = 3650) -> CertificateAuthority:
        """A new CA for ``federation`` (its name appears in every certificate's issuer)."""
        if not 1 <= days <= 36500:
            raise CAError(f"days must lie in [1, 36500], got {days}")
        key = _new_key()
        subject = x509.Name(
            [x509.NameAttribute(NameOID.COMMON_NAME, f"{_check_name(federation)} federation CA")]
        )
        now = _now()
        cert = (
            x509.CertificateBuilder()
            .subject_name(subject)
            .issuer_name(subject)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - dt.timedelta(minutes=5))
            .not_valid_after(now + dt.timedelta(days=days))
            .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
            .add_extension(
                x509.KeyUsage(
                    digital_signature=False,
                    content_commitment=False,
                    key_encipherment=False,
                    data_encipherment=False,
                    key_agreement=False,
                    key_cert_sign=True,
                    crl_sign=True,
                    encipher_only=False,
                    decipher_only=False,
                ),
                critical=True,
            )
            .add_extension(
                x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False
            )
            .sign(key, hashes.SHA256())
        )
        return cls(_key_pem(key), cert.public_bytes(serialization.Encoding.PEM))

    @property
    def key_pem(self) -> bytes:
        """The CA's private key (keep it owner-readable only)."""
        return _key_pem(self._key)

    def _issue(
        self,
        subject: x509.Name,
        public_key: ec.EllipticCurvePublicKey,
        *,
        days: int,
        usage: x509.ObjectIdentifier,
        hosts: tuple[str, ...] = (),
    ) -> bytes:
        if not 1 <= days <= MAX_VALIDITY_DAYS:
            raise CAError(f"days must lie in [1, {MAX_VALIDITY_DAYS}], got {days}")
        now = _now()
        builder = (
            x509.CertificateBuilder()
            .subject_name(subject)
            .issuer_name(self.cert.subject)
            .public_key(public_key)
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - dt.timedelta(minutes=5))
            .not_valid_after(min(now + dt.timedelta(days=days), self.cert.not_valid_after_utc))
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(
                x509.KeyUsage(
                    digital_signature=True,
                    content_commitment=False,
                    key_encipherment=False,
                    data_encipherment=False,
                    key_agreement=True,
                    key_cert_sign=False,
                    crl_sign=False,
                    encipher_only=False,
                    decipher_only=False,
                ),
                critical=True,
            )
            .add_extension(x509.ExtendedKeyUsage([usage]), critical=False)
            .add_extension(x509.SubjectKeyIdentifier.from_public_key(public_key), critical=False)
            .add_extension(
                x509.AuthorityKeyIdentifier.from_issuer_public_key(self._key.public_key()),
                critical=False,
            )
        )
        if hosts:
            alt: list[x509.GeneralName] = []
            for host in hosts:
                try:
                    alt.append(x509.IPAddress(ipaddress.ip_address(host)))
                except ValueError:
                    alt.append(x509.DNSName(host))
            builder = builder.add_extension(x509.SubjectAlternativeName(alt), critical=False)
        cert = builder.sign(self._key, hashes.SHA256())
        return cert.public_bytes(serialization.Encoding.PEM)

    def server_certificate(
        self, hosts: tuple[str, ...] = ("localhost", "127.0.0.1"), *, days: int = 365
    ) -> tuple[bytes, bytes]:
        """A key and certificate for the coordinator, valid for ``hosts`` (PEM key, PEM cert)."""
        if not hosts:
            raise CAError("a server certificate needs at least one host name or address")
        key = _new_key()
        subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, hosts[0])])
        cert = self._issue(
            subject,
            key.public_key(),
            days=days,
            usage=ExtendedKeyUsageOID.SERVER_AUTH,
            hosts=tuple(hosts),
        )
        return _key_pem(key), cert

    def sign(self, csr_pem: bytes, *, name: str, role: str, days: int = 90) -> bytes:
        """Sign an enrollee's request for ``name`` in ``role`` (what it was invited as).

        Raises
        ------
        CAError
            An oversized or malformed request, a bad self-signature, another name than the
            invited one, or a key that is not P-256.
        """
        _check_name(name)
        _check_role(role)
        if len(csr_pem) > MAX_CSR_BYTES:
            raise CAError(
                f"the signing request is {len(csr_pem)} bytes; the limit is {MAX_CSR_BYTES}"
            )
        try:
            csr = x509.load_pem_x509_csr(csr_pem)
        except (ValueError, x509.InvalidVersion) as exc:
            raise CAError(f"the signing request is not a PEM CSR: {exc}") from exc
        try:
            valid = csr.is_signature_valid
            public_key = csr.public_key()
            names = csr.subject.get_attributes_for_oid(NameOID.COMMON_NAME)
        except (InvalidSignature, ValueError, UnsupportedAlgorithm) as exc:
            raise CAError(
                f"the signing request's key or signature cannot be checked: {exc}"
            ) from exc
        if not valid:
            raise CAError("the signing request's signature does not verify")
        if [str(n.value) for n in names] != [name]:
            asked = [str(n.value) for n in names]
            raise CAError(f"the signing request names {asked}, the invitation is for {name!r}")
        if not isinstance(public_key, ec.EllipticCurvePublicKey) or not isinstance(
            public_key.curve, ec.SECP256R1
        ):
            raise CAError("the signing request's key must be ECDSA P-256")
        subject = x509.Name(
            [
                x509.NameAttribute(NameOID.COMMON_NAME, name),
                x509.NameAttribute(NameOID.ORGANIZATIONAL_UNIT_NAME, role),
            ]
        )
        return self._issue(subject, public_key, days=days, usage=ExtendedKeyUsageOID.CLIENT_AUTH)

    def verify(self, cert_pem: bytes) -> Identity:
        """The identity of a certificate this CA issued and that is valid now.

        Raises
        ------
        CAError
            Another issuer, a bad signature, or outside its validity period.
        """
        cert = _load_cert(cert_pem, "the certificate")
        try:
            cert.verify_directly_issued_by(self.cert)
        except (ValueError, TypeError, InvalidSignature, UnsupportedAlgorithm) as exc:
            raise CAError("the certificate was not issued by this federation's CA") from exc
        now = _now()
        if not cert.not_valid_before_utc <= now <= cert.not_valid_after_utc:
            raise CAError(
                f"the certificate expired on {cert.not_valid_after_utc:%Y-%m-%d %H:%M} UTC"
            )
        return identity_of(cert_pem)


def new_token() -> str:
    """A one-time enrollment token: 32 random bytes, URL-safe."""
    return secrets.token_urlsafe(32)
