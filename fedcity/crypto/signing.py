r"""Ed25519 signatures that bind every upload to its job, round, kind, agency and key.

An agency signs a :class:`Statement` for each payload it uploads: the SHA-256 digest of the
payload together with the job id, the round, the payload kind (``"contribution"`` or
``"partial"``), the agency's name and the federation key's id. The coordinator refuses an
upload whose signature does not verify under that agency's public key (listed in
``federation-public.json``) for exactly these fields, and decryptors verify the signatures of
every contribution an aggregate is built from before they help decrypt it. A payload signed
for one job, round, kind, agency or key therefore cannot be replayed as another.

Canonical encoding (:meth:`Statement.encode`), domain-separated from every other use of the
key::

    b"fedcity.v1.contribution\0"
    || len(job_id) || job_id          UTF-8
    || len(round)  || round           8 bytes, unsigned big-endian
    || len(kind)   || kind            ASCII, "contribution", "partial" or "range-proof"
    || len(agency) || agency          UTF-8
    || len(key_id) || key_id          the federation key's id (16 bytes)
    || len(digest) || digest          SHA-256 of the payload (32 bytes)

where ``len(x)`` is the length of ``x`` in bytes as a 4-byte unsigned big-endian integer.
Ed25519 (RFC 8032) is deterministic: signing the same statement twice gives the same bytes.

Signing keys are stored as JSON (``format`` ``"fedcity.ed25519.signing-key"``, mode 0600,
never overwritten) holding the 32-byte seed and, for a consistency check on load, the
public key; public keys travel as 64 lowercase hex digits.
"""

from __future__ import annotations

import hashlib
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import (
    Ed25519PrivateKey,
    Ed25519PublicKey,
)

from fedcity.crypto.errors import CryptoError, KeyFileError
from fedcity.crypto.keys import read_json_file, write_json_file

__all__ = [
    "DOMAIN",
    "KINDS",
    "PUBLIC_KEY_BYTES",
    "SIGNATURE_BYTES",
    "SIGNING_KEY_FORMAT",
    "SigningKey",
    "Statement",
    "VerifyKey",
]

DOMAIN = b"fedcity.v1.contribution\x00"
"""Prefix of every encoded statement (domain separation)."""
KINDS = ("contribution", "partial", "range-proof")
"""Payload kinds a statement may name (``"range-proof"``: an answer to a range audit,
:mod:`fedcity.core.audit`)."""
SIGNATURE_BYTES = 64
"""Length of an Ed25519 signature."""
PUBLIC_KEY_BYTES = 32
"""Length of an Ed25519 public key (and of the private seed)."""
SIGNING_KEY_FORMAT = "fedcity.ed25519.signing-key"
"""``format`` field of a signing-key file."""
DIGEST_BYTES = 32
_MAX_ROUND = 2**64 - 1
_HEX_KEY = re.compile(r"[0-9a-f]{64}")


def _field(data: bytes) -> bytes:
    return len(data).to_bytes(4, "big") + data


def _check_domain(domain: bytes) -> None:
    """Other uses of a signing key: ``b"fedcity.<use>"`` and one NUL, not :data:`DOMAIN`."""
    if (
        not isinstance(domain, bytes)
        or not domain.startswith(b"fedcity.")
        or not domain.endswith(b"\x00")
        or domain.count(b"\x00") != 1
        or domain == DOMAIN
    ):
        raise CryptoError(
            "a signing domain is b'fedcity.<use>\\0' (one NUL, at the end) and not the "
            "contribution statements' domain"
        )


@dataclass(frozen=True)
class Statement:
    """What an agency signs for one upload.

    Attributes
    ----------
    job_id : str
    round : int
        The round the payload belongs to, ``0 <= round < 2**64``.
    kind : str
        ``"contribution"``, ``"partial"`` or ``"range-proof"``.
    agency : str
        The uploading agency's name.
    key_id : bytes
        The federation key's id (non-empty).
    digest : bytes
        SHA-256 of the payload (32 bytes).

    Raises
    ------
    CryptoError
        A field of the wrong type, length or range.
    """

    job_id: str
    round: int
    kind: str
    agency: str
    key_id: bytes
    digest: bytes

    def __post_init__(self) -> None:
        if not isinstance(self.job_id, str) or not isinstance(self.agency, str):
            raise CryptoError("statement: job_id and agency must be str")
        if isinstance(self.round, bool) or not isinstance(self.round, int):
            raise CryptoError(f"statement: round must be an int, got {self.round!r}")
        if not 0 <= self.round <= _MAX_ROUND:
            raise CryptoError(f"statement: round {self.round} is outside [0, 2**64)")
        if self.kind not in KINDS:
            raise CryptoError(f"statement: kind must be one of {KINDS}, got {self.kind!r}")
        if not isinstance(self.key_id, bytes) or not self.key_id:
            raise CryptoError("statement: key_id must be non-empty bytes")
        if not isinstance(self.digest, bytes) or len(self.digest) != DIGEST_BYTES:
            raise CryptoError(f"statement: digest must be {DIGEST_BYTES} bytes (a SHA-256)")

    @classmethod
    def for_payload(
        cls, job_id: str, round: int, kind: str, agency: str, key_id: bytes, payload: bytes
    ) -> Statement:
        """The statement for ``payload`` (its SHA-256 is computed here)."""
        return cls(job_id, round, kind, agency, bytes(key_id), hashlib.sha256(payload).digest())

    def encode(self) -> bytes:
        """The canonical bytes that are signed (see the module docstring)."""
        return DOMAIN + b"".join(
            _field(part)
            for part in (
                self.job_id.encode("utf-8"),
                self.round.to_bytes(8, "big"),
                self.kind.encode("ascii"),
                self.agency.encode("utf-8"),
                self.key_id,
                self.digest,
            )
        )


class VerifyKey:
    """An agency's Ed25519 public key.

    Parameters
    ----------
    raw : bytes
        The 32-byte public key.

    Raises
    ------
    CryptoError
        Not 32 bytes.
    """

    __slots__ = ("_key", "raw")

    def __init__(self, raw: bytes) -> None:
        if not isinstance(raw, bytes) or len(raw) != PUBLIC_KEY_BYTES:
            raise CryptoError(f"an Ed25519 public key is {PUBLIC_KEY_BYTES} bytes")
        try:
            self._key = Ed25519PublicKey.from_public_bytes(raw)
        except ValueError as exc:
            raise CryptoError(f"invalid Ed25519 public key: {exc}") from exc
        self.raw = raw

    @classmethod
    def from_hex(cls, text: str) -> VerifyKey:
        """Parse 64 lowercase hex digits (as listed in ``federation-public.json``)."""
        if not isinstance(text, str) or not _HEX_KEY.fullmatch(text):
            raise CryptoError("an Ed25519 public key is written as 64 lowercase hex digits")
        return cls(bytes.fromhex(text))

    def hex(self) -> str:
        """64 lowercase hex digits."""
        return self.raw.hex()

    def verify(self, statement: Statement, signature: bytes) -> bool:
        """Whether ``signature`` is this key's signature of ``statement``."""
        if not isinstance(signature, bytes) or len(signature) != SIGNATURE_BYTES:
            return False
        try:
            self._key.verify(signature, statement.encode())
        except InvalidSignature:
            return False
        return True

    def verify_message(self, domain: bytes, message: bytes, signature: bytes) -> bool:
        """Whether ``signature`` is this key's signature of ``domain || message``.

        For other signed objects than upload statements (e.g. audit records); ``domain``
        follows the rules of :meth:`SigningKey.sign_message`.
        """
        _check_domain(domain)
        if not isinstance(signature, bytes) or len(signature) != SIGNATURE_BYTES:
            return False
        try:
            self._key.verify(signature, domain + bytes(message))
        except InvalidSignature:
            return False
        return True

    def __eq__(self, other: object) -> bool:
        return isinstance(other, VerifyKey) and other.raw == self.raw

    def __hash__(self) -> int:
        return hash(self.raw)

    def __repr__(self) -> str:
        return f"<VerifyKey {self.raw.hex()[:16]}>"


class SigningKey:
    """An agency's Ed25519 signing key.

    Parameters
    ----------
    seed : bytes
        The 32-byte private key (RFC 8032 seed).

    Raises
    ------
    CryptoError
        Not 32 bytes.
    """

    __slots__ = ("_key", "public_key")

    def __init__(self, seed: bytes) -> None:
        if not isinstance(seed, bytes) or len(seed) != PUBLIC_KEY_BYTES:
            raise CryptoError(f"an Ed25519 private key is a {PUBLIC_KEY_BYTES}-byte seed")
        self._key = Ed25519PrivateKey.from_private_bytes(seed)
        raw = self._key.public_key().public_bytes(
            serialization.Encoding.Raw, serialization.PublicFormat.Raw
        )
        self.public_key = VerifyKey(raw)

    @classmethod
    def generate(cls) -> SigningKey:
        """A fresh key from the OS CSPRNG."""
        return cls(os.urandom(PUBLIC_KEY_BYTES))

    def _seed(self) -> bytes:
        return self._key.private_bytes(
            serialization.Encoding.Raw,
            serialization.PrivateFormat.Raw,
            serialization.NoEncryption(),
        )

    def sign(self, statement: Statement) -> bytes:
        """The 64-byte signature of ``statement``."""
        return self._key.sign(statement.encode())

    def sign_message(self, domain: bytes, message: bytes) -> bytes:
        """The signature of ``domain || message``, for other uses than upload statements.

        Parameters
        ----------
        domain : bytes
            ``b"fedcity.<use>"`` followed by one NUL byte, never the statements'
            :data:`DOMAIN`, so that no such signature can pass as an upload's.
        message : bytes

        Raises
        ------
        CryptoError
            An invalid domain.
        """
        _check_domain(domain)
        return self._key.sign(domain + bytes(message))

    def __repr__(self) -> str:
        return f"<SigningKey public={self.public_key.raw.hex()[:16]}>"

    # -- files ---------------------------------------------------------------------------
    def to_json_dict(self, agency: str) -> dict[str, Any]:
        """The key-file content (secret)."""
        return {
            "format": SIGNING_KEY_FORMAT,
            "version": 1,
            "agency": agency,
            "seed": self._seed().hex(),
            "public_key": self.public_key.hex(),
        }

    @classmethod
    def from_json_dict(cls, data: dict[str, Any]) -> tuple[str, SigningKey]:
        """Parse a key-file content; returns ``(agency, key)``.

        Raises
        ------
        KeyFileError
            Wrong format or version, malformed fields, or a public key that does not belong
            to the seed.
        """
        if not isinstance(data, dict):
            raise KeyFileError("a signing-key file must hold a JSON object")
        if data.get("format") != SIGNING_KEY_FORMAT:
            raise KeyFileError(f"format is {data.get('format')!r}, expected {SIGNING_KEY_FORMAT!r}")
        if data.get("version") != 1 or isinstance(data.get("version"), bool):
            raise KeyFileError(f"unsupported signing-key version {data.get('version')!r}")
        agency, seed, public = data.get("agency"), data.get("seed"), data.get("public_key")
        if not isinstance(agency, str) or not agency:
            raise KeyFileError("signing key: 'agency' must be a non-empty string")
        if not isinstance(seed, str) or not _HEX_KEY.fullmatch(seed):
            raise KeyFileError("signing key: 'seed' must be 64 lowercase hex digits")
        key = cls(bytes.fromhex(seed))
        if public != key.public_key.hex():
            raise KeyFileError("signing key: 'public_key' does not belong to the seed")
        return agency, key

    def save(self, path: str | os.PathLike[str], agency: str) -> Path:
        """Write the key file (mode 0600; an existing file is never overwritten)."""
        return write_json_file(path, self.to_json_dict(agency), secret=True)

    @classmethod
    def load(cls, path: str | os.PathLike[str]) -> tuple[str, SigningKey]:
        """Read a key file written by :meth:`save`; returns ``(agency, key)``.

        Raises
        ------
        KeyFileError
            Naming the file and the problem.
        """
        data = read_json_file(path, what="signing-key file")
        try:
            return cls.from_json_dict(data)
        except CryptoError as exc:
            raise KeyFileError(f"{path}: {exc}") from exc
