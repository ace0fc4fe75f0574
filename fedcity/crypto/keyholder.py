"""Single-key-holder decryption of blinded aggregates (the faster, weaker trust mode).

In this mode one party, the *key holder*, holds an ordinary Paillier private key; agencies
encrypt under its public key and the coordinator adds ciphertexts exactly as in the threshold
mode. To release an aggregate the coordinator **blinds** it first: it adds a fresh uniformly
random plaintext ``R_j ∈ Z_n`` to every ciphertext (``c_j·(1 + R_j·n) mod n²``) and sends
only the blinded vector. The key holder decrypts with CRT (about 3 ms per ciphertext at 2048
bits against 20 ms *per share* for a threshold partial decryption) and returns, for each
ciphertext, the plaintext ``m_j = M_j + R_j mod n`` and its randomness ``ρ_j`` with
``c_j = (1 + m_j·n)·ρ_jⁿ mod n²``. The coordinator checks all of them at once and subtracts
its masks.

What each party learns (the trust model, ``docs/trust-model.md``):

* the key holder sees only uniformly random values ``M_j + R_j``: neither the aggregate nor
  any agency's contribution — as long as it never obtains an individual ciphertext;
* the coordinator learns the aggregate, as in the threshold mode;
* **a key holder that colludes with the coordinator can decrypt every contribution**: this mode
  rests on those two not colluding, where the threshold mode needs ``t`` agencies to collude.

Checking a decryption costs the coordinator one batched test: with 128-bit weights ``e_j``
hashed from everything the key holder sent, ``Π c_j^{e_j} = (1 + n·Σ e_j m_j)·(Π ρ_j^{e_j})ⁿ``
(mod n²). In ``Z*_{n²} ≅ Z_n × Z*_n`` the ``(1+n)``-component of a wrong answer survives the
product except with probability about ``2^-128``, so a wrong plaintext is caught; the key
holder cannot shift a plaintext without knowing the factorisation anyway.

The masks are derived from a coordinator secret and the aggregate's digest, so replaying a
round (after a coordinator restart) blinds it identically.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import gmpy2
import numpy as np
import numpy.typing as npt
from gmpy2 import mpz

from fedcity.crypto import _numbers as nt
from fedcity.crypto.errors import InvalidPartialDecryptionError, KeyMismatchError
from fedcity.crypto.keys import PrivateKey, PublicKey
from fedcity.crypto.vector import EncryptedVector, decode_plaintexts

if TYPE_CHECKING:
    from fedcity.crypto.parallel import WorkerPool

__all__ = [
    "BLINDING_KEY_BYTES",
    "Blinding",
    "KeyHolderDecryption",
    "blind_vector",
    "keyholder_decrypt",
    "raw_unblind_decode",
    "unblind_vector",
    "verify_keyholder_decryption",
]

BLINDING_KEY_BYTES = 32
"""Size of the coordinator's blinding secret."""

_WEIGHT_BITS = 128
_MASK_DOMAIN = b"fedcity.v1.keyholder-mask"
_WEIGHT_DOMAIN = b"fedcity.v1.keyholder-weights"


@dataclass(frozen=True, eq=False)
class Blinding:
    """The coordinator's masks for one blinded aggregate; never leaves the coordinator.

    Attributes
    ----------
    vector : EncryptedVector
        The aggregate before blinding (its layout decodes the result).
    blinded : EncryptedVector
        What the key holder is asked to decrypt.
    masks : tuple of gmpy2.mpz
        ``R_j``, uniform in ``[0, n)``.
    """

    vector: EncryptedVector
    blinded: EncryptedVector
    masks: tuple[mpz, ...]

    def __repr__(self) -> str:
        return f"<Blinding of {len(self.masks)} ciphertexts under {self.vector.public_key!r}>"


@dataclass(frozen=True, eq=False)
class KeyHolderDecryption:
    """The key holder's decryption of a blinded vector, with each ciphertext's randomness.

    Attributes
    ----------
    key_id : bytes
    vector_digest : bytes
        :meth:`EncryptedVector.digest` of the blinded vector it decrypts.
    plaintexts : tuple of gmpy2.mpz
        ``m_j ∈ [0, n)``.
    randomness : tuple of gmpy2.mpz
        ``ρ_j ∈ Z*_n`` with ``c_j = (1 + m_j·n)·ρ_jⁿ mod n²``.
    """

    key_id: bytes
    vector_digest: bytes
    plaintexts: tuple[mpz, ...]
    randomness: tuple[mpz, ...]


def _masks(key: bytes, vector: EncryptedVector) -> tuple[mpz, ...]:
    n = vector.public_key.n
    width = vector.public_key.n_bytes + 16  # 128 extra bits: statistically uniform mod n
    seed = hashlib.sha256(_MASK_DOMAIN + key + vector.digest()).digest()
    out = []
    for j in range(len(vector.ciphertexts)):
        block = hashlib.shake_256(seed + j.to_bytes(8, "big")).digest(width)
        out.append(mpz(int.from_bytes(block, "big")) % n)
    return tuple(out)


def blind_vector(vector: EncryptedVector, key: bytes) -> Blinding:
    """Blind an aggregate with masks derived from ``key`` and the aggregate's digest.

    Parameters
    ----------
    vector : EncryptedVector
        The aggregate to release.
    key : bytes
        The coordinator's blinding secret (:data:`BLINDING_KEY_BYTES` random bytes). The same
        key and aggregate always give the same masks.

    Returns
    -------
    Blinding
        ``blinded`` holds ``c_j·(1 + R_j·n) mod n²``, i.e. an encryption of ``M_j + R_j``.
    """
    if not isinstance(key, bytes) or len(key) != BLINDING_KEY_BYTES:
        raise ValueError(f"the blinding key must be {BLINDING_KEY_BYTES} bytes")
    pk = vector.public_key
    masks = _masks(key, vector)
    cts = [c * (1 + r * pk.n) % pk.nsquare for c, r in zip(vector.ciphertexts, masks, strict=True)]
    blinded = EncryptedVector(pk, vector.spec, vector.length, vector.summands, cts, validate=False)
    return Blinding(vector, blinded, masks)


def keyholder_decrypt(
    private_key: PrivateKey, vector: EncryptedVector, *, pool: WorkerPool | None = None
) -> KeyHolderDecryption:
    """Decrypt every ciphertext of a (blinded) vector and return plaintexts with randomness.

    The plaintexts are not decoded: for a blinded vector they are uniformly random.
    """
    if private_key.public_key.key_id != vector.public_key.key_id:
        raise KeyMismatchError(
            f"vector is under key {vector.public_key.key_id.hex()[:8]}, private key is "
            f"{private_key.public_key.key_id.hex()[:8]}"
        )
    if pool is not None:
        pairs = pool.raw_decrypt_many_with_randomness(private_key, vector.ciphertexts)
    else:
        pairs = [private_key.raw_decrypt_with_randomness(c) for c in vector.ciphertexts]
    return KeyHolderDecryption(
        vector.public_key.key_id,
        vector.digest(),
        tuple(m for m, _ in pairs),
        tuple(r for _, r in pairs),
    )


def _weights(key_id: bytes, dec: KeyHolderDecryption, width: int) -> list[int]:
    h = hashlib.sha256(_WEIGHT_DOMAIN + key_id + dec.vector_digest)
    for m, r in zip(dec.plaintexts, dec.randomness, strict=True):
        h.update(int(m).to_bytes(width, "big") + int(r).to_bytes(width, "big"))
    seed = h.digest()
    nb = _WEIGHT_BITS // 8
    return [
        int.from_bytes(hashlib.sha256(seed + j.to_bytes(8, "big")).digest()[:nb], "big") | 1
        for j in range(len(dec.plaintexts))
    ]


def verify_keyholder_decryption(
    public_key: PublicKey, vector: EncryptedVector, decryption: KeyHolderDecryption
) -> bool:
    """Return whether ``decryption`` is the correct decryption of every ciphertext of ``vector``.

    One batched re-encryption test (see the module docstring); a wrong plaintext passes with
    probability about ``2^-128``.
    """
    n, nsq = public_key.n, public_key.nsquare
    k = len(vector.ciphertexts)
    if (
        decryption.key_id != public_key.key_id
        or vector.public_key.key_id != public_key.key_id
        or decryption.vector_digest != vector.digest()
        or len(decryption.plaintexts) != k
        or len(decryption.randomness) != k
    ):
        return False
    for m, r in zip(decryption.plaintexts, decryption.randomness, strict=True):
        if not 0 <= m < n or not 0 < r < n or gmpy2.gcd(r, n) != 1:
            return False
    if k == 0:
        return True
    e = _weights(public_key.key_id, decryption, public_key.n_bytes)
    lhs = nt.multi_pow(vector.ciphertexts, e, nsq)
    folded_m = sum((ej * int(m) for ej, m in zip(e, decryption.plaintexts, strict=True)), 0) % n
    folded_r = nt.multi_pow(decryption.randomness, e, n)
    rhs = (1 + folded_m * n) * gmpy2.powmod(folded_r, n, nsq) % nsq
    return bool(lhs == rhs)


def unblind_vector(blinding: Blinding, decryption: KeyHolderDecryption) -> npt.NDArray[np.float64]:
    """Verify the key holder's decryption, remove the masks and decode the aggregate.

    Raises
    ------
    InvalidPartialDecryptionError
        The decryption does not match the blinded vector.
    SlotRangeError
        The unblinded plaintext has a slot outside its legal range.
    """
    pk = blinding.vector.public_key
    if not verify_keyholder_decryption(pk, blinding.blinded, decryption):
        raise InvalidPartialDecryptionError(
            "the key holder's decryption does not match the blinded aggregate",
            share_indices=(1,),
        )
    return raw_unblind_decode(blinding, decryption.plaintexts)


def raw_unblind_decode(blinding: Blinding, plaintexts: Sequence[mpz]) -> npt.NDArray[np.float64]:
    """Subtract the masks from *unverified* plaintexts and decode. Prefer :func:`unblind_vector`."""
    n = blinding.vector.public_key.n
    v = blinding.vector
    clear = [(m - r) % n for m, r in zip(plaintexts, blinding.masks, strict=True)]
    return decode_plaintexts(v.spec, clear, v.length, v.summands)
