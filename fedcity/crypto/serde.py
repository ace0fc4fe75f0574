"""Conversion between :mod:`fedcity.crypto` objects and the ``fedcity.v1`` wire format.

Pairs of ``*_to_proto`` / ``*_from_proto`` functions, plus ``*_to_bytes`` / ``*_from_bytes``
for the serialized messages. Every reader validates what it is given and raises a
:class:`~fedcity.crypto.errors.CryptoError` subclass naming the problem: a truncated or
non-protobuf payload, a field of the wrong width, a ciphertext outside ``Z*_{n²}``, or a key id
that does not match the key the reader expects.
"""

from __future__ import annotations

import math

from gmpy2 import mpz
from google.protobuf.message import DecodeError

from fedcity.crypto.errors import KeyMismatchError, MalformedCiphertextError
from fedcity.crypto.keyholder import KeyHolderDecryption
from fedcity.crypto.keys import KeyKind, PublicKey
from fedcity.crypto.packing import PackingSpec
from fedcity.crypto.threshold import PartialDecryption, ThresholdPublicKey
from fedcity.crypto.vector import EncryptedVector
from fedcity.v1 import crypto_pb2 as pb

__all__ = [
    "encrypted_vector_from_bytes",
    "encrypted_vector_from_proto",
    "encrypted_vector_to_bytes",
    "encrypted_vector_to_proto",
    "keyholder_decryption_from_bytes",
    "keyholder_decryption_to_bytes",
    "packing_spec_from_proto",
    "packing_spec_to_proto",
    "partial_decryption_from_bytes",
    "partial_decryption_from_proto",
    "partial_decryption_to_bytes",
    "partial_decryption_to_proto",
    "public_key_from_proto",
    "public_key_to_proto",
    "threshold_public_key_from_proto",
    "threshold_public_key_to_proto",
]

_KIND_TO_PB = {
    KeyKind.STANDARD: pb.KEY_KIND_STANDARD,
    KeyKind.THRESHOLD: pb.KEY_KIND_THRESHOLD,
    KeyKind.SHORT_EXPONENT: pb.KEY_KIND_SHORT_EXPONENT,
}
_PB_TO_KIND = {v: k for k, v in _KIND_TO_PB.items()}


def _fixed(value: int | mpz, width: int) -> bytes:
    return int(value).to_bytes(width, "big")


def _read_fixed(data: bytes, width: int, what: str) -> mpz:
    if len(data) != width:
        raise MalformedCiphertextError(f"{what} must be {width} bytes, got {len(data)}")
    return mpz(int.from_bytes(data, "big"))


def _split_fixed(blob: bytes, width: int, what: str) -> list[mpz]:
    if len(blob) % width:
        raise MalformedCiphertextError(
            f"{what}: {len(blob)} bytes is not a whole number of {width}-byte values"
        )
    return [mpz(int.from_bytes(blob[i : i + width], "big")) for i in range(0, len(blob), width)]


_Message = pb.EncryptedVector | pb.PartialDecryption | pb.KeyHolderDecryption


def _parse(message_type: type[_Message], data: bytes, what: str):  # type: ignore[no-untyped-def]
    msg = message_type()
    try:
        msg.ParseFromString(data)
    except DecodeError as exc:
        raise MalformedCiphertextError(f"{what}: not a valid protobuf message ({exc})") from exc
    return msg


# -- keys ------------------------------------------------------------------------------------
def public_key_to_proto(key: PublicKey) -> pb.PublicKey:
    """Encode a public key."""
    return pb.PublicKey(
        n_length=key.n_length,
        n=_fixed(key.n, key.n_bytes),
        djn_base=_fixed(key.djn_base, key.ciphertext_bytes),
        exponent_bits=key.exponent_bits,
        key_id=key.key_id,
        kind=_KIND_TO_PB[key.kind],
    )


def public_key_from_proto(msg: pb.PublicKey) -> PublicKey:
    """Decode and validate a public key (widths, kind, key id)."""
    if msg.n_length < 256 or msg.n_length % 8:
        raise MalformedCiphertextError(f"public key: invalid n_length {msg.n_length}")
    width = msg.n_length // 8
    n = _read_fixed(msg.n, width, "public key n")
    base = _read_fixed(msg.djn_base, 2 * width, "public key djn_base")
    if msg.kind not in _PB_TO_KIND:
        raise MalformedCiphertextError(f"public key: unknown key kind {msg.kind}")
    try:
        key = PublicKey(
            n, djn_base=base, exponent_bits=msg.exponent_bits, kind=_PB_TO_KIND[msg.kind]
        )
    except ValueError as exc:
        raise MalformedCiphertextError(f"public key: {exc}") from exc
    if key.n_length != msg.n_length:
        raise MalformedCiphertextError("public key: n does not have n_length bits")
    if msg.key_id != key.key_id:
        raise KeyMismatchError("public key: key_id does not match the key's fields")
    return key


def threshold_public_key_to_proto(key: ThresholdPublicKey) -> pb.ThresholdPublicKey:
    """Encode a threshold public key with its verification keys."""
    w = key.public_key.ciphertext_bytes
    return pb.ThresholdPublicKey(
        public_key=public_key_to_proto(key.public_key),
        threshold=key.threshold,
        parties=key.parties,
        verification_base=_fixed(key.verification_base, w),
        verification_keys=[_fixed(v, w) for v in key.verification_keys],
    )


def threshold_public_key_from_proto(msg: pb.ThresholdPublicKey) -> ThresholdPublicKey:
    """Decode and validate a threshold public key."""
    pk = public_key_from_proto(msg.public_key)
    w = pk.ciphertext_bytes
    try:
        return ThresholdPublicKey(
            pk,
            msg.threshold,
            msg.parties,
            _read_fixed(msg.verification_base, w, "verification base"),
            tuple(_read_fixed(v, w, "verification key") for v in msg.verification_keys),
        )
    except ValueError as exc:
        raise MalformedCiphertextError(f"threshold public key: {exc}") from exc


# -- packing specs and vectors ---------------------------------------------------------------
def packing_spec_to_proto(spec: PackingSpec) -> pb.PackingSpec:
    """Encode a packing layout."""
    return pb.PackingSpec(
        clip=spec.clip,
        precision_bits=spec.precision_bits,
        max_summands=spec.max_summands,
        n_length=spec.n_length,
        noise_bound=spec.noise_bound,
    )


def packing_spec_from_proto(msg: pb.PackingSpec) -> PackingSpec:
    """Decode and validate a packing layout."""
    if not math.isfinite(msg.clip):
        raise MalformedCiphertextError("packing spec: clip is not finite")
    try:
        return PackingSpec(
            clip=msg.clip,
            precision_bits=msg.precision_bits,
            max_summands=msg.max_summands,
            n_length=msg.n_length,
            noise_bound=msg.noise_bound,
        )
    except ValueError as exc:
        raise MalformedCiphertextError(f"packing spec: {exc}") from exc


def encrypted_vector_to_proto(vector: EncryptedVector) -> pb.EncryptedVector:
    """Encode an encrypted vector (ciphertexts concatenated, fixed width)."""
    return pb.EncryptedVector(
        key_id=vector.public_key.key_id,
        spec=packing_spec_to_proto(vector.spec),
        length=vector.length,
        summands=vector.summands,
        ciphertexts=vector.ciphertext_bytes(),
    )


def encrypted_vector_from_proto(msg: pb.EncryptedVector, public_key: PublicKey) -> EncryptedVector:
    """Decode an encrypted vector expected under ``public_key``.

    Raises
    ------
    KeyMismatchError
        The message names another key.
    MalformedCiphertextError
        Wrong total length, a ciphertext outside ``Z*_{n²}`` (position named), or an
        invalid packing spec.
    """
    if msg.key_id != public_key.key_id:
        raise KeyMismatchError(
            f"encrypted vector is under key {msg.key_id.hex()[:8] or '<none>'}, expected "
            f"{public_key.key_id.hex()[:8]}"
        )
    spec = packing_spec_from_proto(msg.spec)
    cts = _split_fixed(msg.ciphertexts, public_key.ciphertext_bytes, "encrypted vector")
    try:
        return EncryptedVector(public_key, spec, msg.length, msg.summands, cts)
    except MalformedCiphertextError:
        raise
    except ValueError as exc:
        raise MalformedCiphertextError(f"encrypted vector: {exc}") from exc


def encrypted_vector_to_bytes(vector: EncryptedVector) -> bytes:
    """Serialize an encrypted vector to ``fedcity.v1.EncryptedVector`` bytes."""
    return encrypted_vector_to_proto(vector).SerializeToString()


def encrypted_vector_from_bytes(data: bytes, public_key: PublicKey) -> EncryptedVector:
    """Parse and validate ``fedcity.v1.EncryptedVector`` bytes."""
    return encrypted_vector_from_proto(
        _parse(pb.EncryptedVector, data, "encrypted vector"), public_key
    )


# -- partial decryptions ---------------------------------------------------------------------
def partial_decryption_to_proto(
    partial: PartialDecryption, public_key: PublicKey
) -> pb.PartialDecryption:
    """Encode a partial decryption with its proof (no ``proof`` field when sent without)."""
    w = public_key.ciphertext_bytes
    msg = pb.PartialDecryption(
        key_id=partial.key_id,
        share_index=partial.share_index,
        vector_digest=partial.vector_digest,
        partials=b"".join(_fixed(c, w) for c in partial.partials),
    )
    if partial.proven:
        msg.proof.CopyFrom(
            pb.EqualityProof(
                challenge=partial.challenge,
                response=_fixed(partial.response, (int(partial.response).bit_length() + 7) // 8),
            )
        )
    return msg


_PROOF_SLACK_BYTES = 2048
"""Room beyond |n²| for a proof response: challenge, statistical slack and Δ = ℓ! (ℓ ≤ 1000)."""


def partial_decryption_from_proto(
    msg: pb.PartialDecryption, public_key: PublicKey
) -> PartialDecryption:
    """Decode a partial decryption; its proof is checked when it is combined."""
    if msg.key_id != public_key.key_id:
        raise KeyMismatchError(
            f"partial decryption is under key {msg.key_id.hex()[:8] or '<none>'}, expected "
            f"{public_key.key_id.hex()[:8]}"
        )
    partials = _split_fixed(msg.partials, public_key.ciphertext_bytes, "partial decryption")
    for i, c in enumerate(partials):
        public_key.check_ciphertext(c, position=i)
    if len(msg.vector_digest) != 32:
        raise MalformedCiphertextError("partial decryption: the digest must be 32 bytes")
    if not msg.HasField("proof"):  # sent without proof (optimistic combination)
        return PartialDecryption(
            key_id=msg.key_id,
            share_index=msg.share_index,
            vector_digest=msg.vector_digest,
            partials=tuple(partials),
        )
    if len(msg.proof.challenge) != 32:
        raise MalformedCiphertextError("partial decryption: the challenge must be 32 bytes")
    limit = public_key.ciphertext_bytes + _PROOF_SLACK_BYTES
    if len(msg.proof.response) > limit:
        raise MalformedCiphertextError(
            f"partial decryption: the proof's response holds {len(msg.proof.response)} bytes; "
            f"an honest one holds at most {limit} for this key"
        )
    return PartialDecryption(
        key_id=msg.key_id,
        share_index=msg.share_index,
        vector_digest=msg.vector_digest,
        partials=tuple(partials),
        challenge=msg.proof.challenge,
        response=mpz(int.from_bytes(msg.proof.response, "big")),
    )


def partial_decryption_to_bytes(partial: PartialDecryption, public_key: PublicKey) -> bytes:
    """Serialize a partial decryption to ``fedcity.v1.PartialDecryption`` bytes."""
    return partial_decryption_to_proto(partial, public_key).SerializeToString()


def partial_decryption_from_bytes(data: bytes, public_key: PublicKey) -> PartialDecryption:
    """Parse and validate ``fedcity.v1.PartialDecryption`` bytes."""
    return partial_decryption_from_proto(
        _parse(pb.PartialDecryption, data, "partial decryption"), public_key
    )


# -- key-holder decryptions ------------------------------------------------------------------
def keyholder_decryption_to_bytes(decryption: KeyHolderDecryption, public_key: PublicKey) -> bytes:
    """Serialize a key holder's decryption to ``fedcity.v1.KeyHolderDecryption`` bytes."""
    w = public_key.n_bytes
    return pb.KeyHolderDecryption(
        key_id=decryption.key_id,
        vector_digest=decryption.vector_digest,
        plaintexts=b"".join(_fixed(m, w) for m in decryption.plaintexts),
        randomness=b"".join(_fixed(r, w) for r in decryption.randomness),
    ).SerializeToString()


def keyholder_decryption_from_bytes(data: bytes, public_key: PublicKey) -> KeyHolderDecryption:
    """Parse ``fedcity.v1.KeyHolderDecryption`` bytes; the values are checked on verification."""
    msg = _parse(pb.KeyHolderDecryption, data, "key-holder decryption")
    if msg.key_id != public_key.key_id:
        raise KeyMismatchError(
            f"key-holder decryption is under key {msg.key_id.hex()[:8] or '<none>'}, expected "
            f"{public_key.key_id.hex()[:8]}"
        )
    if len(msg.vector_digest) != 32:
        raise MalformedCiphertextError("key-holder decryption: the digest must be 32 bytes")
    w = public_key.n_bytes
    plaintexts = _split_fixed(msg.plaintexts, w, "key-holder plaintexts")
    randomness = _split_fixed(msg.randomness, w, "key-holder randomness")
    if len(plaintexts) != len(randomness):
        raise MalformedCiphertextError(
            f"key-holder decryption: {len(plaintexts)} plaintexts but {len(randomness)} "
            "randomness values"
        )
    return KeyHolderDecryption(msg.key_id, msg.vector_digest, tuple(plaintexts), tuple(randomness))
