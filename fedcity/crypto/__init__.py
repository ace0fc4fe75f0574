"""fedcity's Paillier engine: fast DJN encryption, packed vectors and threshold decryption.

This package is the only place in fedcity that handles big integers. The safe, high-level
calls are:

- :func:`generate_keypair` / :func:`deal_threshold_key` — keys (single holder or t-of-n);
- :class:`PackingSpec`, :func:`encrypt_vector`, :class:`EncryptedVector` — packed float
  vectors that add (``+``, ``sum``) and scale by non-negative integers;
- :func:`decrypt_vector` — decryption with a full private key;
- :func:`partial_decrypt` / :func:`combine_partial_decryptions` — threshold decryption with
  per-share proofs;
- :func:`blind_vector` / :func:`keyholder_decrypt` / :func:`unblind_vector` — single-key-holder
  decryption of blinded aggregates (faster; rests on the key holder and the coordinator not
  colluding);
- :mod:`fedcity.crypto.serde` — the ``fedcity.v1`` wire format;
- :func:`prove_slot_ranges` / :func:`verify_slot_ranges` — zero-knowledge proofs that a
  contributor's packed ciphertext holds only in-range slots (naming an overflowing agency);
- :mod:`fedcity.crypto.signing` — Ed25519 signatures binding every upload to its job, round,
  kind, agency and key.

Low-level integer operations carry a ``raw_`` prefix (``PublicKey.raw_encrypt``,
``PrivateKey.raw_decrypt``, ``KeyShare.raw_partial_decrypt``, ``raw_combine``): they skip
encoding, overflow accounting and proofs.
"""

from fedcity.crypto.errors import (
    CryptoError,
    InvalidPartialDecryptionError,
    KeyFileError,
    KeyMismatchError,
    MalformedCiphertextError,
    NotEnoughSharesError,
    SlotRangeError,
    SpecMismatchError,
    SummandLimitError,
)
from fedcity.crypto.keyholder import (
    BLINDING_KEY_BYTES,
    Blinding,
    KeyHolderDecryption,
    blind_vector,
    keyholder_decrypt,
    raw_unblind_decode,
    unblind_vector,
    verify_keyholder_decryption,
)
from fedcity.crypto.keys import KeyKind, PrivateKey, PublicKey, generate_keypair, load_key, save_key
from fedcity.crypto.packing import PackingSpec
from fedcity.crypto.parallel import WorkerPool
from fedcity.crypto.rangeproof import (
    RangeProofError,
    SlotLayout,
    max_proof_bytes,
    prove_slot_ranges,
    verify_slot_ranges,
)
from fedcity.crypto.threshold import (
    KeyShare,
    PartialDecryption,
    ThresholdPublicKey,
    combine_partial_decryptions,
    deal_threshold_key,
    partial_decrypt,
    raw_combine,
    verify_partial_decryption,
)
from fedcity.crypto.vector import (
    EncryptedVector,
    Openings,
    decrypt_vector,
    encrypt_vector,
    encrypt_vector_with_openings,
)

__all__ = [
    "BLINDING_KEY_BYTES",
    "Blinding",
    "CryptoError",
    "EncryptedVector",
    "InvalidPartialDecryptionError",
    "KeyFileError",
    "KeyHolderDecryption",
    "KeyKind",
    "KeyMismatchError",
    "KeyShare",
    "MalformedCiphertextError",
    "NotEnoughSharesError",
    "Openings",
    "PackingSpec",
    "PartialDecryption",
    "PrivateKey",
    "PublicKey",
    "RangeProofError",
    "SlotLayout",
    "SlotRangeError",
    "SpecMismatchError",
    "SummandLimitError",
    "ThresholdPublicKey",
    "WorkerPool",
    "blind_vector",
    "combine_partial_decryptions",
    "deal_threshold_key",
    "decrypt_vector",
    "encrypt_vector",
    "encrypt_vector_with_openings",
    "generate_keypair",
    "keyholder_decrypt",
    "load_key",
    "max_proof_bytes",
    "partial_decrypt",
    "prove_slot_ranges",
    "raw_combine",
    "raw_unblind_decode",
    "save_key",
    "unblind_vector",
    "verify_keyholder_decryption",
    "verify_partial_decryption",
    "verify_slot_ranges",
]
