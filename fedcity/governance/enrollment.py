"""Enrollment: one-time invitations, issued certificates and revocations, in one SQLite file.

The operator invites a principal (``fedcity ca invite NAME --role ...``): a random token is
printed once and only its SHA-256 is stored, with the name, role and an expiry. The enrollee
generates its key locally and sends a signing request with the token
(:meth:`EnrollmentRegistry.redeem`): the token is checked (known, unused, unexpired) and marked
used in the same transaction that records the certificate, so a token enrolls at most once.
``fedcity ca revoke NAME`` marks every certificate of the name revoked; the coordinator reads
the revocations on every call (:meth:`EnrollmentRegistry.is_revoked`), so it takes effect on
the next call without a restart.
"""

from __future__ import annotations

import hashlib
import os
import sqlite3
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from fedcity.governance.ca import (
    CAError,
    CertificateAuthority,
    _check_name,
    _check_role,
    identity_of,
    new_token,
)
from fedcity.secretfiles import SecretFileError, write_secret
from fedcity.secretfiles import check_private as _check_private

__all__ = [
    "CA_CERT",
    "CA_KEY",
    "REGISTRY",
    "SERVER_CERT",
    "SERVER_KEY",
    "CADirectory",
    "EnrollmentError",
    "EnrollmentRegistry",
    "IssuedCertificate",
]

CA_KEY = "ca-key.pem"
CA_CERT = "ca.pem"
SERVER_KEY = "server-key.pem"
SERVER_CERT = "server.pem"
REGISTRY = "enrollment.sqlite"
MAX_TOKEN_CHARS = 128
"""Longest enrollment token accepted (issued tokens are 43 characters)."""
MAX_INVITE_SECONDS = 30 * 86400
"""Longest an invitation may stay valid."""

_SCHEMA = """
CREATE TABLE IF NOT EXISTS invites (
    token_sha256 BLOB PRIMARY KEY,
    name TEXT NOT NULL,
    role TEXT NOT NULL,
    created REAL NOT NULL,
    expires REAL NOT NULL,
    used REAL
);
CREATE TABLE IF NOT EXISTS certificates (
    serial TEXT PRIMARY KEY,
    name TEXT NOT NULL,
    role TEXT NOT NULL,
    issued REAL NOT NULL,
    not_after REAL NOT NULL,
    revoked REAL
);
"""


class EnrollmentError(CAError):
    """A refused enrollment (unknown, used or expired token) or an invalid request."""


@dataclass(frozen=True)
class IssuedCertificate:
    """One certificate the CA issued."""

    serial: int
    name: str
    role: str
    issued: float
    not_after: float
    revoked: float | None


def _digest(token: str) -> bytes:
    return hashlib.sha256(token.encode("utf-8")).digest()


class EnrollmentRegistry:
    """Invitations, issued certificates and revocations (SQLite, safe across processes).

    Parameters
    ----------
    path : path-like
        The registry file (created if missing).
    clock : callable, optional
        Seconds since the epoch (tests inject one).
    """

    def __init__(
        self, path: str | os.PathLike[str], *, clock: Callable[[], float] | None = None
    ) -> None:
        self.path = Path(path)
        self._clock = clock or time.time
        self._lock = threading.Lock()
        self._db = sqlite3.connect(self.path, check_same_thread=False, isolation_level=None)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA busy_timeout=5000")
        self._db.executescript(_SCHEMA)

    def close(self) -> None:
        """Close the database."""
        with self._lock:
            self._db.close()

    @contextmanager
    def _transaction(self) -> Iterator[sqlite3.Connection]:
        with self._lock:
            self._db.execute("BEGIN IMMEDIATE")
            try:
                yield self._db
            except BaseException:
                self._db.execute("ROLLBACK")
                raise
            self._db.execute("COMMIT")

    def invite(self, name: str, role: str, *, ttl: float = 86400.0) -> str:
        """A one-time token enrolling ``name`` as ``role`` within ``ttl`` seconds.

        Earlier unused invitations of the same name are withdrawn.
        """
        _check_name(name)
        _check_role(role)
        if not 1 <= ttl <= MAX_INVITE_SECONDS:
            raise EnrollmentError(f"ttl must lie in [1, {MAX_INVITE_SECONDS}] seconds, got {ttl}")
        token = new_token()
        now = float(self._clock())
        with self._transaction() as db:
            db.execute("DELETE FROM invites WHERE name = ? AND used IS NULL", (name,))
            db.execute(
                "INSERT INTO invites (token_sha256, name, role, created, expires) "
                "VALUES (?, ?, ?, ?, ?)",
                (_digest(token), name, role, now, now + ttl),
            )
        return token

    def redeem(
        self,
        token: str,
        name: str,
        csr_pem: bytes,
        ca: CertificateAuthority,
        *,
        days: int = 90,
    ) -> bytes:
        """Check the token and sign the request; the token cannot be used again.

        Raises
        ------
        EnrollmentError
            An unknown, used or expired token, or one issued for another name.
        CAError
            An invalid signing request (nothing is recorded then, the token stays usable).
        """
        if not isinstance(token, str) or not 0 < len(token) <= MAX_TOKEN_CHARS:
            raise EnrollmentError("the enrollment token is missing or too long")
        now = float(self._clock())
        with self._transaction() as db:
            row = db.execute(
                "SELECT name, role, expires, used FROM invites WHERE token_sha256 = ?",
                (_digest(token),),
            ).fetchone()
            if row is None:
                raise EnrollmentError(
                    "unknown enrollment token (ask the operator for an invitation)"
                )
            invited, role, expires, used = row
            if used is not None:
                raise EnrollmentError("this enrollment token was already used")
            if now > expires:
                raise EnrollmentError(
                    f"this enrollment token expired {now - expires:.0f} s ago; ask for a new one"
                )
            if name != invited:
                raise EnrollmentError(f"this enrollment token is for {invited!r}, not {name!r}")
            cert = ca.sign(csr_pem, name=name, role=role, days=days)
            self._record(db, cert, now)
            db.execute("UPDATE invites SET used = ? WHERE token_sha256 = ?", (now, _digest(token)))
        return cert

    def renew(
        self, current_pem: bytes, csr_pem: bytes, ca: CertificateAuthority, *, days: int = 90
    ) -> bytes:
        """A new certificate for the holder of a valid, unrevoked one (same name and role)."""
        identity = ca.verify(current_pem)
        if self.is_revoked(identity.serial):
            raise EnrollmentError(f"the certificate of {identity.name!r} is revoked")
        cert = ca.sign(csr_pem, name=identity.name, role=identity.role, days=days)
        with self._transaction() as db:
            self._record(db, cert, float(self._clock()))
        return cert

    @staticmethod
    def _record(db: sqlite3.Connection, cert: bytes, now: float) -> None:
        identity = identity_of(cert)
        db.execute(
            "INSERT INTO certificates (serial, name, role, issued, not_after) "
            "VALUES (?, ?, ?, ?, ?)",
            (
                str(identity.serial),
                identity.name,
                identity.role,
                now,
                identity.not_after.timestamp(),
            ),
        )

    def revoke(self, name: str) -> int:
        """Revoke every certificate of ``name`` and its pending invitations; returns how many."""
        _check_name(name)
        now = float(self._clock())
        with self._transaction() as db:
            db.execute("DELETE FROM invites WHERE name = ? AND used IS NULL", (name,))
            cursor = db.execute(
                "UPDATE certificates SET revoked = ? WHERE name = ? AND revoked IS NULL",
                (now, name),
            )
            return int(cursor.rowcount)

    def is_revoked(self, serial: int) -> bool:
        """Whether the certificate with ``serial`` was revoked, or was never issued here."""
        with self._lock:
            row = self._db.execute(
                "SELECT revoked FROM certificates WHERE serial = ?", (str(serial),)
            ).fetchone()
        return row is None or row[0] is not None

    def certificates(self) -> list[IssuedCertificate]:
        """Every issued certificate, oldest first."""
        with self._lock:
            rows = self._db.execute(
                "SELECT serial, name, role, issued, not_after, revoked FROM certificates "
                "ORDER BY issued"
            ).fetchall()
        return [IssuedCertificate(int(r[0]), r[1], r[2], r[3], r[4], r[5]) for r in rows]


@dataclass(frozen=True)
class CADirectory:
    """The files of a federation's CA folder (``fedcity ca init --dir DIR``)."""

    root: Path

    @property
    def ca_key(self) -> Path:
        """The CA's private key (owner-readable only)."""
        return self.root / CA_KEY

    @property
    def ca_cert(self) -> Path:
        """The CA's certificate (give it to every party)."""
        return self.root / CA_CERT

    @property
    def server_key(self) -> Path:
        """The coordinator's TLS key."""
        return self.root / SERVER_KEY

    @property
    def server_cert(self) -> Path:
        """The coordinator's TLS certificate."""
        return self.root / SERVER_CERT

    @property
    def registry(self) -> Path:
        """The enrollment registry (SQLite)."""
        return self.root / REGISTRY

    @classmethod
    def init(
        cls, root: str | os.PathLike[str], federation: str, hosts: tuple[str, ...]
    ) -> CADirectory:
        """Create the CA, the coordinator's server certificate and an empty registry.

        Raises
        ------
        CAError
            The folder already holds a CA (it is never overwritten).
        """
        folder = cls(Path(root))
        if folder.ca_key.exists() or folder.ca_cert.exists():
            raise CAError(f"{folder.root} already holds a CA; it is never overwritten")
        folder.root.mkdir(parents=True, exist_ok=True)
        ca = CertificateAuthority.create(federation)
        server_key, server_cert = ca.server_certificate(hosts)
        _write_secret(folder.ca_key, ca.key_pem)
        folder.ca_cert.write_bytes(ca.cert_pem)
        _write_secret(folder.server_key, server_key)
        folder.server_cert.write_bytes(server_cert)
        EnrollmentRegistry(folder.registry).close()
        return folder

    def authority(self) -> CertificateAuthority:
        """Load the CA (its key must be readable by the owner only)."""
        for path in (self.ca_key, self.ca_cert):
            if not path.exists():
                raise CAError(f"{path} is missing: run `fedcity ca init --dir {self.root}` first")
        check_private(self.ca_key)
        return CertificateAuthority(self.ca_key.read_bytes(), self.ca_cert.read_bytes())


def _write_secret(path: Path, data: bytes) -> None:
    """Write a secret readable and writable by its owner only (created so, never widened)."""
    write_secret(path, data)


def check_private(path: Path) -> None:
    """Refuse a secret file that others may read or write (:class:`CAError`)."""
    try:
        _check_private(path, "secret file")
    except SecretFileError as exc:
        raise CAError(str(exc)) from exc
