"""Exceptions raised by :mod:`fedcity.crypto`.

Every error is a :class:`CryptoError`, itself a :class:`ValueError`, so callers that validate
input can catch one type. Messages name the offending position, key or share.
"""

from __future__ import annotations


class CryptoError(ValueError):
    """Base class of every error raised by :mod:`fedcity.crypto`."""


class KeyMismatchError(CryptoError):
    """Objects made under different keys (or key ids) were combined."""


class SpecMismatchError(CryptoError):
    """Encrypted vectors with different packing layouts or lengths were combined."""


class SummandLimitError(CryptoError):
    """More summands were added than the packing spec leaves headroom for."""


class MalformedCiphertextError(CryptoError):
    """Bytes or integers that are not a valid ciphertext for the key."""


class SlotRangeError(CryptoError):
    """A decrypted slot lies outside its legal range: some contribution was malformed.

    Attributes
    ----------
    position : int
        Index of the first offending value in the decoded vector (or of the padding slot
        past its end).
    ciphertext : int
        Index of the ciphertext that holds it.
    """

    def __init__(self, message: str, *, position: int, ciphertext: int) -> None:
        super().__init__(message)
        self.position = position
        self.ciphertext = ciphertext


class InvalidPartialDecryptionError(CryptoError):
    """A partial decryption failed its proof against the share's verification key.

    Attributes
    ----------
    share_indices : tuple of int
        The shares (1-based) whose partial decryptions were rejected.
    """

    def __init__(self, message: str, *, share_indices: tuple[int, ...]) -> None:
        super().__init__(message)
        self.share_indices = share_indices


class NotEnoughSharesError(CryptoError):
    """Fewer valid partial decryptions than the threshold were supplied."""


class KeyFileError(CryptoError):
    """A key, share or public-key file is missing, unreadable or malformed."""
