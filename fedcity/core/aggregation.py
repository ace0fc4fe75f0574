"""Aggregation schemes: how a contribution is sealed, added and released.

:class:`PaillierScheme` is fedcity's real scheme: agencies encrypt packed vectors under a
threshold key, the coordinator multiplies ciphertexts, and ``t`` agencies' verified partial
decryptions release the sum. :class:`KeyHolderScheme` is the faster single-key-holder mode:
the coordinator blinds the aggregate and one key holder decrypts it with the full private key
(it rests on the key holder and the coordinator not colluding; see ``docs/trust-model.md``).
:class:`PlaintextScheme` sends float64 vectors in the clear and exists only as the
"encryption off" baseline of benchmarks; it offers no privacy.

Both expose the same operations so the round state machine and the learning algorithms are
unaware of which is in use.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Sequence
from typing import Any

import numpy as np
import numpy.typing as npt

from fedcity.core.errors import RejectedContribution
from fedcity.crypto import (
    Blinding,
    CryptoError,
    EncryptedVector,
    KeyHolderDecryption,
    KeyShare,
    PackingSpec,
    PartialDecryption,
    PrivateKey,
    PublicKey,
    ThresholdPublicKey,
    WorkerPool,
    blind_vector,
    encrypt_vector,
    keyholder_decrypt,
    partial_decrypt,
    raw_combine,
    raw_unblind_decode,
    serde,
    verify_keyholder_decryption,
    verify_partial_decryption,
)
from fedcity.crypto.threshold import prove_partial_decryption, vector_part
from fedcity.crypto.vector import decode_plaintexts

__all__ = [
    "AggregationScheme",
    "DecryptionKey",
    "KeyHolderScheme",
    "PaillierScheme",
    "PlaintextScheme",
]

DecryptionKey = KeyShare | PrivateKey
"""What an agency may hold to take part in decryption: a threshold share or the full key."""


_ENVELOPE = 4096
"""Bytes allowed beyond a payload's ciphertexts (ids, digests, packing spec, framing)."""


class AggregationScheme(ABC):
    """Operations every party needs to take part in an aggregation round."""

    encrypted: bool
    """Whether contributions are hidden from the coordinator."""

    @property
    @abstractmethod
    def threshold(self) -> int:
        """Partial decryptions needed to release an aggregate (0: none)."""

    @abstractmethod
    def payload_limit(self, kind: str, spec: PackingSpec, length: int) -> int:
        """Largest payload an honest agency uploads for a round of this layout.

        ``kind`` is ``"contribution"`` or ``"partial"``. The coordinator refuses a larger
        upload before reading it, so no client can make it buffer more than a round needs.
        """

    # agency side ---------------------------------------------------------------------------
    @abstractmethod
    def seal(self, vector: npt.NDArray[np.float64], spec: PackingSpec, noise: Any = None) -> bytes:
        """Turn an agency's vector into the bytes it uploads."""

    @abstractmethod
    def partial(self, share: DecryptionKey | None, aggregate: Any) -> bytes:
        """An agency's partial decryption of an aggregate, as bytes."""

    # coordinator side ----------------------------------------------------------------------
    @abstractmethod
    def open(self, payload: bytes, spec: PackingSpec, length: int) -> Any:
        """Parse and validate an uploaded contribution; raise :class:`RejectedContribution`."""

    @abstractmethod
    def add(self, contributions: Sequence[Any]) -> Any:
        """Add validated contributions."""

    @abstractmethod
    def aggregate_to_bytes(self, aggregate: Any) -> bytes:
        """Serialize an aggregate for agencies to decrypt (or for storage)."""

    @abstractmethod
    def aggregate_from_bytes(self, payload: bytes, spec: PackingSpec, length: int) -> Any:
        """Parse an aggregate (agency side before partial decryption, or after a restart)."""

    @abstractmethod
    def open_partial(self, payload: bytes, aggregate: Any, *, verify: bool = True) -> Any:
        """Parse and verify a partial decryption; raise :class:`RejectedContribution`.

        ``verify=False`` parses only: for partials this party verified before it stored them
        (a coordinator replaying its own event log).
        """

    @abstractmethod
    def release(self, aggregate: Any, partials: Sequence[Any]) -> npt.NDArray[np.float64]:
        """Combine verified partial decryptions into the released float sum."""


class _PackedPaillier(AggregationScheme):
    """Agency encryption and coordinator addition shared by both Paillier schemes."""

    encrypted = True

    def __init__(self, public_key: PublicKey, *, pool: WorkerPool | None = None) -> None:
        self.public_key = public_key
        self.pool = pool

    def payload_limit(self, kind: str, spec: PackingSpec, length: int) -> int:
        """Ciphertexts (or partial decryptions) of the round plus the message's fixed fields.

        A contribution is ``k`` ciphertexts of ``2·|n|`` bits; a threshold partial is as many
        values plus a proof whose response is below ``|n²| + 1 KiB``; a key holder's answer is
        ``2k`` values of ``|n|`` bits. ``_ENVELOPE`` covers keys ids, digests, the packing
        spec and protobuf framing with room to spare.
        """
        k = spec.n_ciphertexts(length)
        cb = self.public_key.ciphertext_bytes
        if kind == "contribution":
            return k * cb + _ENVELOPE
        return k * cb + cb + _ENVELOPE

    def seal(self, vector: npt.NDArray[np.float64], spec: PackingSpec, noise: Any = None) -> bytes:
        """Encrypt the vector under the federation's public key."""
        enc = encrypt_vector(self.public_key, vector, spec, pool=self.pool, noise=noise)
        return serde.encrypted_vector_to_bytes(enc)

    def open(self, payload: bytes, spec: PackingSpec, length: int) -> EncryptedVector:
        """Validate ciphertexts, key id, layout, length and a single summand."""
        try:
            vec = serde.encrypted_vector_from_bytes(payload, self.public_key)
        except CryptoError as exc:
            raise RejectedContribution(f"invalid encrypted contribution: {exc}") from exc
        if vec.spec != spec:
            raise RejectedContribution(
                f"contribution packed as {vec.spec}, the round expects {spec}"
            )
        if vec.length != length:
            raise RejectedContribution(
                f"contribution has {vec.length} values, the round expects {length}"
            )
        if vec.summands != 1:
            raise RejectedContribution(
                f"a contribution must be one summand, got summands={vec.summands}"
            )
        return vec

    @staticmethod
    def _sum(contributions: Sequence[EncryptedVector]) -> EncryptedVector:
        if not contributions:
            raise ValueError("nothing to add")
        total = contributions[0]
        for c in contributions[1:]:
            total = total + c
        return total

    def aggregate_from_bytes(
        self, payload: bytes, spec: PackingSpec, length: int
    ) -> EncryptedVector:
        """Parse and validate an encrypted aggregate (what decryptors are sent)."""
        try:
            vec = serde.encrypted_vector_from_bytes(payload, self.public_key)
        except CryptoError as exc:
            raise RejectedContribution(f"invalid aggregate: {exc}") from exc
        if vec.spec != spec or vec.length != length:
            raise RejectedContribution("aggregate does not match the round's layout")
        return vec


class PaillierScheme(_PackedPaillier):
    """Packed threshold Paillier: the coordinator only ever holds ciphertexts.

    Parameters
    ----------
    threshold_key : ThresholdPublicKey
    pool : WorkerPool, optional
        Worker processes for encryption and partial decryption at this party.
    optimistic : bool, default False
        Optimistic combination: agencies send partial decryptions without proof, the
        coordinator combines first and asks for the proofs only when the result fails its
        checks (:class:`~fedcity.core.rounds.AggregationRound`). This saves each decryptor
        its proof (about 2 % of its partial decryption at 218 ciphertexts) and the
        coordinator one proof verification per partial, but it detects *faults*, not a
        malicious share holder: a holder that multiplies its partial by ``(1+n)^y`` shifts
        the released sum by an amount of its choosing that passes every check on the
        plaintext (:func:`fedcity.crypto.threshold.raw_combine`). Off by default; a
        federation that relies on decryptors not cheating may turn it on.
    """

    def __init__(
        self,
        threshold_key: ThresholdPublicKey,
        *,
        pool: WorkerPool | None = None,
        optimistic: bool = False,
    ):
        super().__init__(threshold_key.public_key, pool=pool)
        self.threshold_key = threshold_key
        self.optimistic = optimistic

    @property
    def threshold(self) -> int:
        """The key's ``t``."""
        return self.threshold_key.threshold

    def add(self, contributions: Sequence[EncryptedVector]) -> EncryptedVector:
        """Multiply ciphertexts slot by slot (homomorphic addition)."""
        return self._sum(contributions)

    def aggregate_to_bytes(self, aggregate: EncryptedVector) -> bytes:
        """Serialize the encrypted aggregate."""
        return serde.encrypted_vector_to_bytes(aggregate)

    def partial(self, share: DecryptionKey | None, aggregate: EncryptedVector) -> bytes:
        """Partially decrypt with this agency's share and attach the proof."""
        if not isinstance(share, KeyShare):
            raise RejectedContribution("this agency holds no key share")
        if share.threshold_key.key_id != self.public_key.key_id:
            raise RejectedContribution("the agency's share belongs to another key")
        pd = partial_decrypt(share, aggregate, pool=self.pool, prove=not self.optimistic)
        return serde.partial_decryption_to_bytes(pd, self.public_key)

    def prove(
        self, share: DecryptionKey | None, aggregate: EncryptedVector, payload: bytes
    ) -> bytes:
        """Attach the proof to this agency's earlier partial ``payload`` of ``aggregate``.

        The second exchange of optimistic combination: only the proof is computed.
        """
        if not isinstance(share, KeyShare):
            raise RejectedContribution("this agency holds no key share")
        try:
            pd = serde.partial_decryption_from_bytes(payload, self.public_key)
            proven = prove_partial_decryption(share, aggregate, pd)
        except (CryptoError, ValueError) as exc:
            raise RejectedContribution(f"cannot prove this partial decryption: {exc}") from exc
        return serde.partial_decryption_to_bytes(proven, self.public_key)

    def part(self, aggregate: EncryptedVector, start: int, stop: int) -> EncryptedVector:
        """Ciphertexts ``start..stop-1`` of the aggregate (one decryption group's share)."""
        return vector_part(aggregate, start, stop)

    def open_partial(
        self, payload: bytes, aggregate: EncryptedVector, *, verify: bool = True
    ) -> PartialDecryption:
        """Parse a partial decryption and verify its proof now, naming a bad share.

        A partial without proof is accepted unverified only under :attr:`optimistic`.
        """
        try:
            pd = serde.partial_decryption_from_bytes(payload, self.public_key)
        except CryptoError as exc:
            raise RejectedContribution(f"invalid partial decryption: {exc}") from exc
        if len(pd.partials) != len(aggregate.ciphertexts) or (
            pd.vector_digest != aggregate.digest()
        ):
            raise RejectedContribution(
                f"partial decryption from share {pd.share_index} is not of the aggregate "
                f"(part) it was asked for ({len(pd.partials)} values, "
                f"{len(aggregate.ciphertexts)} expected)"
            )
        if not pd.proven:
            if verify and not self.optimistic:
                raise RejectedContribution(
                    f"partial decryption from share {pd.share_index} carries no proof; this "
                    "federation verifies every partial on arrival"
                )
            return pd
        if verify and not verify_partial_decryption(self.threshold_key, aggregate, pd):
            raise RejectedContribution(
                f"partial decryption from share {pd.share_index} failed its proof"
            )
        return pd

    def combine(
        self, aggregate: EncryptedVector, partials: Sequence[PartialDecryption]
    ) -> list[int]:
        """Combine ``t`` partials of ``aggregate`` (or of a part) into plaintext integers.

        Raises :class:`~fedcity.crypto.InvalidPartialDecryptionError` (no share named) when
        a combined value is not a decryption (:func:`raw_combine` with ``check``).
        """
        chosen = {p.share_index: p.partials for p in partials[: self.threshold]}
        if len(chosen) != self.threshold:
            raise ValueError(f"combining needs {self.threshold} partials from distinct shares")
        return [int(m) for m in raw_combine(self.threshold_key, chosen, check=True)]

    def release(
        self, aggregate: EncryptedVector, partials: Sequence[PartialDecryption]
    ) -> npt.NDArray[np.float64]:
        """Combine ``t`` partial decryptions and decode the sum.

        The round verified every partial's proof on arrival (:meth:`open_partial`), so they
        are combined without checking the proofs a second time.
        """
        return self.decode(aggregate, self.combine(aggregate, partials))

    def decode(
        self, aggregate: EncryptedVector, plaintexts: Sequence[int]
    ) -> npt.NDArray[np.float64]:
        """The released float sum from the aggregate's combined plaintexts (in order).

        Raises :class:`~fedcity.crypto.SlotRangeError` naming the ciphertext of a slot out
        of range. (:class:`~fedcity.core.masked_scheme.MaskedScheme` overrides it.)
        """
        return decode_plaintexts(aggregate.spec, plaintexts, aggregate.length, aggregate.summands)


class KeyHolderScheme(_PackedPaillier):
    """Packed Paillier under one key holder's key; aggregates are blinded before decryption.

    The coordinator adds ciphertexts, then adds a uniformly random mask to every plaintext
    (:func:`~fedcity.crypto.blind_vector`) and asks the key holder, who holds the full
    private key, to decrypt the blinded aggregate; it checks the answer and removes the masks.
    The key holder sees only masked values; the coordinator only ciphertexts and the released
    sum. **A key holder colluding with the coordinator could decrypt every contribution**:
    this mode is for federations that accept that trust assumption in return for decryption
    about 20× cheaper than threshold decryption (one CRT decryption per ciphertext).

    Parameters
    ----------
    public_key : PublicKey
        The key holder's public key.
    blinding_key : bytes, optional
        The coordinator's 32-byte secret from which masks are derived (kept with its state so
        a replayed round is blinded identically). Agencies need none.
    pool : WorkerPool, optional
        Worker processes for encryption and decryption at this party.
    """

    def __init__(
        self,
        public_key: PublicKey,
        *,
        blinding_key: bytes | None = None,
        pool: WorkerPool | None = None,
    ) -> None:
        super().__init__(public_key, pool=pool)
        self._blinding_key = blinding_key

    @property
    def threshold(self) -> int:
        """One decryption, by the key holder."""
        return 1

    def add(self, contributions: Sequence[EncryptedVector]) -> Blinding:
        """Add the contributions and blind the sum."""
        if self._blinding_key is None:
            raise ValueError("only the coordinator (holding a blinding key) adds contributions")
        return blind_vector(self._sum(contributions), self._blinding_key)

    def aggregate_to_bytes(self, aggregate: Blinding) -> bytes:
        """The *blinded* aggregate: what the key holder decrypts."""
        return serde.encrypted_vector_to_bytes(aggregate.blinded)

    def partial(self, share: DecryptionKey | None, aggregate: EncryptedVector) -> bytes:
        """The key holder's decryption of a blinded aggregate (plaintexts and randomness)."""
        if not isinstance(share, PrivateKey):
            raise RejectedContribution("this agency does not hold the federation's private key")
        if share.public_key.key_id != self.public_key.key_id:
            raise RejectedContribution("the agency's private key belongs to another key")
        dec = keyholder_decrypt(share, aggregate, pool=self.pool)
        return serde.keyholder_decryption_to_bytes(dec, self.public_key)

    def open_partial(
        self, payload: bytes, aggregate: Blinding, *, verify: bool = True
    ) -> KeyHolderDecryption:
        """Parse the key holder's decryption and check it against the blinded aggregate."""
        try:
            dec = serde.keyholder_decryption_from_bytes(payload, self.public_key)
        except CryptoError as exc:
            raise RejectedContribution(f"invalid key-holder decryption: {exc}") from exc
        if verify and not verify_keyholder_decryption(self.public_key, aggregate.blinded, dec):
            raise RejectedContribution(
                "the key holder's decryption does not match the blinded aggregate"
            )
        return dec

    def release(
        self, aggregate: Blinding, partials: Sequence[KeyHolderDecryption]
    ) -> npt.NDArray[np.float64]:
        """Remove the masks from the (already verified) decryption and decode the sum."""
        return raw_unblind_decode(aggregate, partials[0].plaintexts)


class PlaintextScheme(AggregationScheme):
    """Float64 vectors in the clear: the "encryption off" baseline. No privacy at all."""

    encrypted = False

    @property
    def threshold(self) -> int:
        """No decryption is needed."""
        return 0

    def payload_limit(self, kind: str, spec: PackingSpec, length: int) -> int:
        """Float64 values (no partial decryptions exist)."""
        return 8 * length if kind == "contribution" else 0

    def seal(self, vector: npt.NDArray[np.float64], spec: PackingSpec, noise: Any = None) -> bytes:
        """Clip to the spec's bound and send float64 bytes (noise in quantization steps)."""
        v = np.clip(np.asarray(vector, dtype=np.float64), -spec.clip, spec.clip)
        if noise is not None:
            v = v + np.asarray(noise, dtype=np.float64) * spec.step
        return v.astype("<f8").tobytes()

    def open(self, payload: bytes, spec: PackingSpec, length: int) -> npt.NDArray[np.float64]:
        """Parse float64 bytes of the expected length."""
        if len(payload) != 8 * length:
            raise RejectedContribution(
                f"plaintext contribution has {len(payload)} bytes, expected {8 * length}"
            )
        v = np.frombuffer(payload, dtype="<f8").astype(np.float64)
        if not np.isfinite(v).all():
            raise RejectedContribution("plaintext contribution holds NaN or infinity")
        return v

    def add(self, contributions: Sequence[npt.NDArray[np.float64]]) -> npt.NDArray[np.float64]:
        """Add float vectors."""
        total: npt.NDArray[np.float64] = np.sum(np.stack(list(contributions)), axis=0)
        return total

    def aggregate_to_bytes(self, aggregate: npt.NDArray[np.float64]) -> bytes:
        """Float64 bytes."""
        return np.asarray(aggregate, dtype="<f8").tobytes()

    def aggregate_from_bytes(
        self, payload: bytes, spec: PackingSpec, length: int
    ) -> npt.NDArray[np.float64]:
        """Parse float64 bytes."""
        return self.open(payload, spec, length)

    def partial(self, share: DecryptionKey | None, aggregate: Any) -> bytes:
        """Nothing to decrypt."""
        return b""

    def open_partial(self, payload: bytes, aggregate: Any, *, verify: bool = True) -> None:
        """Nothing to verify."""
        return None

    def release(
        self, aggregate: npt.NDArray[np.float64], partials: Sequence[Any]
    ) -> npt.NDArray[np.float64]:
        """The aggregate is already plaintext."""
        out: npt.NDArray[np.float64] = np.asarray(aggregate, dtype=np.float64)
        return out
