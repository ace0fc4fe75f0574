"""Ed25519 upload signatures: known answers, tampering of every bound field, key files."""

from __future__ import annotations

import dataclasses
import hashlib
import json
import stat
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from fedcity.crypto import CryptoError, KeyFileError
from fedcity.crypto.signing import (
    DOMAIN,
    SIGNATURE_BYTES,
    SigningKey,
    Statement,
    VerifyKey,
)

# RFC 8032, section 7.1, TEST 1: the seed and the public key it derives
RFC_SEED = bytes.fromhex("9d61b19deffd5a60ba844af492ec2cc44449c5697b326919703bac031cae7f60")
RFC_PUBLIC = bytes.fromhex("d75a980182b10ab7d54bfed3c964073a0ee172f3daa62325af021a68f707511a")
KEY_ID = bytes(range(16))
DIGEST = bytes(range(32))
STATEMENT = Statement("job-1", 3, "contribution", "district-01", KEY_ID, DIGEST)
# what STATEMENT encodes to, written out field by field (4-byte big-endian lengths)
ENCODED = (
    b"fedcity.v1.contribution\x00"
    + b"\x00\x00\x00\x05job-1"
    + b"\x00\x00\x00\x08"
    + (3).to_bytes(8, "big")
    + b"\x00\x00\x00\x0ccontribution"
    + b"\x00\x00\x00\x0bdistrict-01"
    + b"\x00\x00\x00\x10"
    + KEY_ID
    + b"\x00\x00\x00\x20"
    + DIGEST
)
SIGNATURE = bytes.fromhex(
    "283e97d7723cf059db3740a85b658ed4c8e6c7350c3fdfbb8b54a6b4e1aced48"
    "f3894995f9fc4c7df3675990c94150854408178c21a23aec95430d8a87a3410b"
)


def test_known_answer() -> None:
    key = SigningKey(RFC_SEED)
    assert key.public_key.raw == RFC_PUBLIC
    assert STATEMENT.encode() == ENCODED and ENCODED.startswith(DOMAIN)
    signature = key.sign(STATEMENT)
    assert signature == SIGNATURE and len(signature) == SIGNATURE_BYTES
    assert key.sign(STATEMENT) == signature  # deterministic
    assert key.public_key.verify(STATEMENT, signature)
    Ed25519PublicKey.from_public_bytes(RFC_PUBLIC).verify(SIGNATURE, ENCODED)  # plain Ed25519


@pytest.mark.parametrize(
    "change",
    [
        {"job_id": "job-2"},
        {"round": 2},
        {"round": 4},
        {"kind": "partial"},
        {"agency": "district-02"},
        {"key_id": bytes(16)},
        {"digest": hashlib.sha256(b"other payload").digest()},
    ],
    ids=lambda c: next(iter(c)),
)
def test_changing_any_bound_field_breaks_the_signature(change: dict[str, object]) -> None:
    key = SigningKey(RFC_SEED)
    forged = dataclasses.replace(STATEMENT, **change)  # type: ignore[arg-type]
    assert forged.encode() != ENCODED
    assert not key.public_key.verify(forged, SIGNATURE)
    assert key.public_key.verify(forged, key.sign(forged))


def test_wrong_key_or_damaged_signature_fails() -> None:
    other = SigningKey.generate()
    assert other.public_key != SigningKey(RFC_SEED).public_key
    assert not other.public_key.verify(STATEMENT, SIGNATURE)
    public = SigningKey(RFC_SEED).public_key
    for i in (0, 31, 63):
        damaged = bytearray(SIGNATURE)
        damaged[i] ^= 1
        assert not public.verify(STATEMENT, bytes(damaged))
    assert not public.verify(STATEMENT, SIGNATURE[:-1])
    assert not public.verify(STATEMENT, b"")


def test_length_prefixes_keep_fields_apart() -> None:
    a = Statement("ab", 0, "partial", "c", KEY_ID, DIGEST)
    b = Statement("a", 0, "partial", "bc", KEY_ID, DIGEST)
    assert a.encode() != b.encode()


def test_for_payload_hashes_the_payload() -> None:
    s = Statement.for_payload("j", 0, "contribution", "x", KEY_ID, b"payload")
    assert s.digest == hashlib.sha256(b"payload").digest()


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        ({"round": -1}, "outside"),
        ({"round": 2**64}, "outside"),
        ({"round": True}, "must be an int"),
        ({"kind": "aggregate"}, "kind must be"),
        ({"key_id": b""}, "key_id"),
        ({"digest": bytes(31)}, "digest"),
        ({"job_id": 7}, "must be str"),
    ],
)
def test_statement_fields_are_checked(fields: dict[str, object], message: str) -> None:
    with pytest.raises(CryptoError, match=message):
        dataclasses.replace(STATEMENT, **fields)  # type: ignore[arg-type]


def test_verify_key_parsing() -> None:
    assert VerifyKey.from_hex(RFC_PUBLIC.hex()).raw == RFC_PUBLIC
    for bad in ("", RFC_PUBLIC.hex().upper(), RFC_PUBLIC.hex()[:-2], "zz" * 32):
        with pytest.raises(CryptoError, match="64 lowercase hex"):
            VerifyKey.from_hex(bad)
    with pytest.raises(CryptoError, match="32 bytes"):
        VerifyKey(bytes(31))
    with pytest.raises(CryptoError, match="32-byte seed"):
        SigningKey(bytes(33))


def test_key_file_round_trip_mode_and_no_overwrite(tmp_path: Path) -> None:
    key = SigningKey(RFC_SEED)
    path = key.save(tmp_path / "signing-key.json", "district-01")
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    agency, loaded = SigningKey.load(path)
    assert agency == "district-01" and loaded.public_key == key.public_key
    assert loaded.sign(STATEMENT) == SIGNATURE
    assert RFC_SEED.hex() not in repr(loaded)
    with pytest.raises(KeyFileError, match="refusing to overwrite"):
        SigningKey.generate().save(path, "district-01")


@pytest.mark.parametrize(
    ("edit", "message"),
    [
        ({"format": "fedcity.paillier.private-key"}, "format"),
        ({"version": 2}, "version"),
        ({"agency": ""}, "agency"),
        ({"seed": "00"}, "seed"),
        ({"public_key": "00" * 32}, "does not belong"),
    ],
)
def test_damaged_key_files_are_refused(
    tmp_path: Path, edit: dict[str, object], message: str
) -> None:
    data = {**SigningKey(RFC_SEED).to_json_dict("district-01"), **edit}
    path = tmp_path / "key.json"
    path.write_text(json.dumps(data))
    with pytest.raises(KeyFileError, match=message):
        SigningKey.load(path)
