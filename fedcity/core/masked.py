"""Opt-in masked aggregation: a key-homomorphic PRF hides each update, Paillier hides the keys.

A prototype aggregation scheme *beside* today's packed threshold Paillier (which stays the
default everywhere; nothing here is wired into the networked coordinator or the agents: it is
an in-process, sans-IO prototype). Per round and agency ``i``:

1. :class:`MaskingAgent` quantizes the update to ``u_i ∈ [0, L]^d`` (the
   :class:`~fedcity.crypto.PackingSpec` quantizer), draws a **fresh** PRF key ``k_i ∈ Z_q^λ``
   and publishes the masked vector ``y_i = Δ·u_i + F_{k_i}(x) mod p`` in the clear together
   with ``Enc(k_i)``, the key packed under the federation's Paillier key
   (:mod:`fedcity.crypto.khprf`). ``x`` names the job and round; ``Δ = 2^s > 2⌊n/2⌋`` leaves
   room to round away the PRF's key-homomorphism error.
2. :class:`MaskedAggregator` (the coordinator) adds the ``y_i`` mod ``p`` and multiplies the
   encrypted keys: the only ciphertexts to decrypt are those of ``Σ k_i`` — ``λ`` integers
   whatever the model size.
3. :class:`KeySumDecryptor` (each decryptor) checks that the encrypted key sum is the product
   of at least ``min_contributions`` contributions of this round, never decrypts a second key
   sum for the same round, and partially decrypts.
4. The coordinator combines ``t`` partial decryptions into ``K = Σ k_i mod q``, computes
   ``F_K(x)`` and reads ``Σ u_i`` from ``Σ y_i - F_K(x) = Δ·Σu_i - e (mod p)``,
   ``|e| ≤ ⌊n/2⌋``; a residual outside that bound or a sum above ``n·L`` means a malformed
   contribution and raises :class:`MaskedDecodeError`.

What each party learns and what the lattice assumption changes: ``docs/trust-model.md``,
section "Masked aggregation with a key-homomorphic PRF (prototype)". :func:`run_masked_round`
runs one round in process (tests, benchmark, a data scientist's experiment).
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import numpy as np
import numpy.typing as npt

from fedcity.core.errors import ProtocolError, RejectedContribution
from fedcity.crypto import (
    EncryptedVector,
    KeyShare,
    PackingSpec,
    PartialDecryption,
    PublicKey,
    ThresholdPublicKey,
    khprf,
    partial_decrypt,
)
from fedcity.crypto.khprf import LWRParams

if TYPE_CHECKING:
    from fedcity.crypto.parallel import WorkerPool

__all__ = [
    "MAX_PREPARED",
    "SCHEME_NAME",
    "KeyReuseError",
    "KeySumDecryptor",
    "MaskedAggregator",
    "MaskedContribution",
    "MaskedDecodeError",
    "MaskedSpec",
    "MaskingAgent",
    "run_masked_round",
]

SCHEME_NAME = "lwr-masked"
MAX_AGENCIES = 1 << 16
MAX_PREPARED = 4
"""Rounds a :class:`MaskingAgent` may hold prepared (key, mask, ``Enc(k)``) at once."""
_MAX_LENGTH = khprf.MAX_LENGTH


class KeyReuseError(ProtocolError):
    """A PRF key, or a (job, round), was about to be used a second time."""


class MaskedDecodeError(ProtocolError):
    """The unmasked sum is inconsistent: some contribution (or the key sum) was malformed."""


@dataclass(frozen=True)
class MaskedSpec:
    """Quantization and PRF parameters of a masked round.

    Parameters
    ----------
    clip : float, default 1.0
        Values are clipped to ``[-clip, clip]``.
    precision_bits : int, default 16
        Quantization levels ``L = 2^precision_bits - 1``.
    max_summands : int, default 10
        Most agencies a round may sum; sets ``Δ`` and the headroom of the key slots.
    params : LWRParams, default :data:`fedcity.crypto.khprf.LWR_1024`
        PRF parameter set.

    Raises
    ------
    ValueError
        ``max_summands · L`` scaled by ``Δ`` does not fit in ``p`` (the message gives the
        largest precision that fits), or a field is out of range.
    """

    clip: float = 1.0
    precision_bits: int = 16
    max_summands: int = 10
    params: LWRParams = khprf.DEFAULT_PARAMS
    quantizer: PackingSpec = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        if not isinstance(self.params, LWRParams):
            raise ValueError(f"params must be an LWRParams, got {type(self.params).__name__}")
        if (
            isinstance(self.max_summands, bool)
            or not isinstance(self.max_summands, int)
            or not 1 <= self.max_summands <= MAX_AGENCIES
        ):
            raise ValueError(
                f"max_summands must be an integer in [1, {MAX_AGENCIES}], got {self.max_summands!r}"
            )
        quantizer = PackingSpec(  # validates clip and precision_bits
            clip=self.clip, precision_bits=self.precision_bits, max_summands=self.max_summands
        )
        object.__setattr__(self, "clip", quantizer.clip)
        object.__setattr__(self, "quantizer", quantizer)
        need = (self.max_summands * quantizer.levels + 1) << self.scale_bits
        if need > self.params.p:
            fit = max(
                (
                    b
                    for b in range(1, 53)
                    if (self.max_summands * ((1 << b) - 1) + 1) << self.scale_bits <= self.params.p
                ),
                default=0,
            )
            raise ValueError(
                f"{self.max_summands} summands of {self.precision_bits}-bit values scaled by "
                f"2^{self.scale_bits} need {need.bit_length()} bits; {self.params.name} has "
                f"p = 2^{self.params.log_p}. Use at most {fit} precision bits, fewer summands "
                f"or a parameter set with a larger p"
            )

    @property
    def scale_bits(self) -> int:
        """``s`` with ``Δ = 2^s > 2⌊n/2⌋`` (room for the key-homomorphism error)."""
        return (2 * (self.max_summands // 2)).bit_length()

    @property
    def error_bound(self) -> int:
        """``⌊n/2⌋``: the largest key-homomorphism error for ``n = max_summands`` keys."""
        return self.max_summands // 2

    @property
    def value_bytes(self) -> int:
        """Bytes per masked value on the wire: ``⌈log₂ p / 8⌉``."""
        return -(-self.params.log_p // 8)


@dataclass(frozen=True, eq=False)
class MaskedContribution:
    """What one agency sends in a masked round; everything in it is public to the coordinator.

    Attributes
    ----------
    agency, job : str
    round_index : int
    masked : numpy.ndarray of uint32
        ``y = Δ·u + F_k(x) mod p``.
    encrypted_key : EncryptedVector
        ``Enc(k)`` under the federation's Paillier key (:func:`fedcity.crypto.khprf.encrypt_key`).
    """

    agency: str
    job: str
    round_index: int
    masked: npt.NDArray[np.uint32]
    encrypted_key: EncryptedVector

    def masked_bytes(self, spec: MaskedSpec) -> bytes:
        """The masked vector as sent: ``spec.value_bytes`` little-endian bytes per value."""
        w = spec.value_bytes
        raw = np.ascontiguousarray(self.masked, dtype="<u4").view(np.uint8).reshape(-1, 4)
        return raw[:, :w].tobytes()

    def nbytes(self, spec: MaskedSpec) -> int:
        """Payload bytes: the masked vector plus the key ciphertexts."""
        return len(self.masked) * spec.value_bytes + self.encrypted_key.nbytes

    def digest(self) -> bytes:
        """SHA-256 binding job, round, agency, the masked values and ``Enc(k)`` (for signing)."""
        h = hashlib.sha256(b"fedcity.v1.masked-contribution")
        for part in (self.job.encode(), self.agency.encode()):
            h.update(len(part).to_bytes(4, "big") + part)
        h.update(self.round_index.to_bytes(8, "big"))
        h.update(np.ascontiguousarray(self.masked, dtype="<u4").tobytes())
        h.update(self.encrypted_key.digest())
        return h.digest()


class MaskingAgent:
    """One agency's side: masks an update under a fresh PRF key and encrypts the key.

    The agent refuses to mask twice for the same (job, round) and refuses a key it has used
    before (keys are drawn internally; ``key=`` exists for reproducible tests and replays).
    The key never leaves the agent except encrypted.

    Nothing but the final addition depends on the update: :meth:`prepare` draws the key,
    evaluates ``F_k(x)`` and encrypts the key ahead of time (e.g. while local training runs),
    and :meth:`mask` then only quantizes and adds. At most :data:`MAX_PREPARED` rounds are
    held prepared at a time.

    Parameters
    ----------
    agency : str
    public_key : PublicKey
        The federation's Paillier key (threshold or single holder).
    spec : MaskedSpec
    pool : WorkerPool, optional
        Encrypt the key in worker processes.
    """

    def __init__(
        self,
        agency: str,
        public_key: PublicKey,
        spec: MaskedSpec,
        *,
        pool: WorkerPool | None = None,
    ) -> None:
        if not isinstance(agency, str) or not agency:
            raise ValueError(f"agency must be a non-empty string, got {agency!r}")
        if not isinstance(public_key, PublicKey):
            raise ValueError(f"public_key must be a PublicKey, got {type(public_key).__name__}")
        if not isinstance(spec, MaskedSpec):
            raise ValueError(f"spec must be a MaskedSpec, got {type(spec).__name__}")
        self.agency = agency
        self.public_key = public_key
        self.spec = spec
        self.pool = pool
        self._rounds: set[tuple[str, int]] = set()
        self._key_digests: set[bytes] = set()
        self._prepared: dict[tuple[str, int], tuple[npt.NDArray[np.uint32], EncryptedVector]] = {}

    def __repr__(self) -> str:
        return (
            f"<MaskingAgent {self.agency!r} {self.spec.params.name} "
            f"rounds={len(self._rounds)} prepared={len(self._prepared)}>"
        )

    def _check_round(self, job: str, round_index: int) -> bytes:
        x = khprf.prf_input(job, round_index)
        if (job, round_index) in self._rounds:
            raise KeyReuseError(
                f"agency {self.agency!r} already masked an update for job {job!r} round "
                f"{round_index}; a round takes one contribution under one fresh key"
            )
        return x

    def prepare(
        self, *, job: str, round_index: int, length: int, key: npt.ArrayLike | None = None
    ) -> None:
        """Draw the round's key, evaluate its mask for ``length`` values and encrypt it.

        Raises
        ------
        KeyReuseError
            The round was already masked or prepared, or ``key`` was used before.
        ValueError
            ``length`` is outside ``[1, 2^26]``, :data:`MAX_PREPARED` rounds are already
            prepared, or the key does not fit the parameter set.
        """
        params = self.spec.params
        x = self._check_round(job, round_index)
        if (job, round_index) in self._prepared:
            raise KeyReuseError(f"job {job!r} round {round_index} is already prepared")
        if len(self._prepared) >= MAX_PREPARED:
            raise ValueError(f"{MAX_PREPARED} rounds are already prepared; mask one first")
        if (
            isinstance(length, bool)
            or not isinstance(length, int)
            or not 1 <= length <= _MAX_LENGTH
        ):
            raise ValueError(
                f"update length must be an integer in [1, {_MAX_LENGTH}], got {length!r}"
            )
        k = khprf.generate_key(params) if key is None else khprf.check_key(params, key)
        kd = hashlib.sha256(k.astype("<u4").tobytes()).digest()
        if kd in self._key_digests:
            raise KeyReuseError(
                f"agency {self.agency!r}: this PRF key was already used in an earlier round; "
                "keys are fresh per round (a reused key lets sums over different subsets "
                "isolate one agency's key)"
            )
        mask = khprf.evaluate(params, k, x, length)
        enc = khprf.encrypt_key(self.public_key, params, k, self.spec.max_summands, pool=self.pool)
        self._key_digests.add(kd)
        self._prepared[(job, round_index)] = (mask, enc)
        del k

    def mask(
        self,
        update: npt.ArrayLike,
        *,
        job: str,
        round_index: int,
        key: npt.ArrayLike | None = None,
    ) -> MaskedContribution:
        """Quantize, mask and seal ``update`` for ``(job, round_index)``.

        Uses the mask made by :meth:`prepare` if there is one (``key`` must then be None),
        otherwise prepares it now.

        Raises
        ------
        KeyReuseError
            This agent already masked for ``(job, round_index)``, or ``key`` was used before.
        ValueError
            The update is not a finite 1-D vector of at most 2^26 values, its length differs
            from the prepared one, or the key does not fit the parameter set
            (:class:`~fedcity.crypto.khprf.PRFKeyError`).
        """
        self._check_round(job, round_index)
        u = self.spec.quantizer.quantize(update)
        if not 1 <= len(u) <= _MAX_LENGTH:
            raise ValueError(f"update length {len(u)} outside [1, {_MAX_LENGTH}]")
        prepared = self._prepared.get((job, round_index))
        if prepared is None:
            self.prepare(job=job, round_index=round_index, length=len(u), key=key)
        elif key is not None:
            raise ValueError(f"job {job!r} round {round_index} was prepared with its own key")
        elif len(prepared[0]) != len(u):
            raise ValueError(
                f"update has {len(u)} values; job {job!r} round {round_index} was prepared "
                f"for {len(prepared[0])}"
            )
        mask, enc = self._prepared.pop((job, round_index))
        params = self.spec.params
        y = ((u.astype(np.uint32) << np.uint32(self.spec.scale_bits)) + mask) & np.uint32(
            params.p - 1
        )
        self._rounds.add((job, round_index))
        return MaskedContribution(self.agency, job, round_index, y, enc)


class MaskedAggregator:
    """The coordinator's side of one masked round: add, hand out the key sum, unmask.

    Parameters
    ----------
    public_key : PublicKey
        The key every ``Enc(k_i)`` must be under.
    spec : MaskedSpec
    job : str
    round_index : int
    length : int
        Model size ``d``.
    """

    def __init__(
        self, public_key: PublicKey, spec: MaskedSpec, *, job: str, round_index: int, length: int
    ) -> None:
        self.x = khprf.prf_input(job, round_index)
        if (
            isinstance(length, bool)
            or not isinstance(length, int)
            or not 1 <= length <= _MAX_LENGTH
        ):
            raise ValueError(f"length must be an integer in [1, {_MAX_LENGTH}], got {length!r}")
        self.public_key = public_key
        self.spec = spec
        self.job = job
        self.round_index = round_index
        self.length = length
        self.contributions_: dict[str, MaskedContribution] = {}
        self._sum = np.zeros(length, dtype=np.uint32)

    def add(self, c: MaskedContribution) -> None:
        """Accept one contribution after checking it belongs here and is well formed.

        Raises
        ------
        RejectedContribution
            Wrong job/round, a second contribution from the agency, more than
            ``max_summands`` contributions, a masked vector of the wrong shape/dtype or with a
            value ``>= p``, or an encrypted key of the wrong key/layout/length/summand count.
        """
        spec, params = self.spec, self.spec.params
        who = f"contribution from {c.agency!r}"
        if c.job != self.job or c.round_index != self.round_index:
            raise RejectedContribution(
                f"{who} is for job {c.job!r} round {c.round_index}, this is job {self.job!r} "
                f"round {self.round_index}"
            )
        if c.agency in self.contributions_:
            raise RejectedContribution(f"{who}: the agency already contributed to this round")
        if len(self.contributions_) >= spec.max_summands:
            raise RejectedContribution(
                f"{who}: the round is full (max_summands={spec.max_summands})"
            )
        y = c.masked
        if not isinstance(y, np.ndarray) or y.dtype != np.uint32 or y.shape != (self.length,):
            shape = getattr(y, "shape", None)
            raise RejectedContribution(
                f"{who}: masked vector must be uint32 of shape ({self.length},), got "
                f"{getattr(y, 'dtype', type(y).__name__)} {shape}"
            )
        if self.length and int(y.max()) >= params.p:
            pos = int(np.flatnonzero(y >= params.p)[0])
            raise RejectedContribution(f"{who}: masked value {pos} is >= p = 2^{params.log_p}")
        ek = c.encrypted_key
        if not isinstance(ek, EncryptedVector):
            raise RejectedContribution(f"{who}: encrypted key is not an EncryptedVector")
        expected = khprf.key_packing_spec(params, spec.max_summands, self.public_key.n_length)
        if ek.public_key.key_id != self.public_key.key_id:
            raise RejectedContribution(f"{who}: the key is encrypted under another Paillier key")
        if ek.spec != expected or ek.length != params.dimension or ek.summands != 1:
            raise RejectedContribution(
                f"{who}: encrypted key must be one {params.name} key ({params.dimension} "
                f"values, {expected}), got length {ek.length}, summands {ek.summands}"
            )
        self._sum = (self._sum + y) & np.uint32(params.p - 1)
        self.contributions_[c.agency] = c

    @property
    def n_contributions(self) -> int:
        """Contributions accepted so far."""
        return len(self.contributions_)

    def key_aggregate(self) -> EncryptedVector:
        """``Π Enc(k_i) = Enc(Σ k_i)``: what the decryptors decrypt (``λ`` values)."""
        if not self.contributions_:
            raise ProtocolError("no contributions to aggregate")
        return sum(c.encrypted_key for c in self.contributions_.values())  # type: ignore[return-value]

    def masked_sum(self) -> npt.NDArray[np.uint32]:
        """``Σ y_i mod p`` (a copy)."""
        return self._sum.copy()

    def unmask_integers(self, key_sum: npt.ArrayLike) -> npt.NDArray[np.uint64]:
        """``Σ u_i`` (quantized integers) from the decrypted key sum ``K = Σ k_i mod q``.

        Raises
        ------
        MaskedDecodeError
            A residual exceeds the key-homomorphism bound ``⌊n/2⌋`` or a sum exceeds
            ``n·L``: a masked vector or an encrypted key was malformed (position named).
        """
        spec, params = self.spec, self.spec.params
        n = self.n_contributions
        if n == 0:
            raise ProtocolError("no contributions to unmask")
        k = khprf.check_key(params, key_sum, what="key sum")
        f = khprf.evaluate(params, k, self.x, self.length)
        pmask = np.uint32(params.p - 1)
        s = spec.scale_bits
        half = np.uint32((1 << s) >> 1)
        v = (self._sum - f + half) & pmask  # Δ·U - e + Δ/2 (mod p), wraps in uint32
        u = (v >> np.uint32(s)).astype(np.uint64)
        residual = (v & np.uint32((1 << s) - 1)).astype(np.int64) - int(half)  # = -e
        bad = np.flatnonzero(np.abs(residual) > n // 2)
        if bad.size:
            pos = int(bad[0])
            raise MaskedDecodeError(
                f"value {pos}: unmasking leaves a residual of {int(residual[pos])}, beyond the "
                f"key-homomorphism bound {n // 2} for {n} keys: a masked vector or an "
                "encrypted key is malformed"
            )
        limit = n * spec.quantizer.levels
        over = np.flatnonzero(u > np.uint64(limit))
        if over.size:
            pos = int(over[0])
            raise MaskedDecodeError(
                f"value {pos} unmasks to {int(u[pos])}, above {limit} = {n} × "
                f"{spec.quantizer.levels}: a masked vector is malformed"
            )
        return u

    def unmask(self, key_sum: npt.ArrayLike) -> npt.NDArray[np.float64]:
        """The float sum of the updates (quantization error ``≤ n·clip/L`` per value)."""
        u = self.unmask_integers(key_sum)
        return self.spec.quantizer.dequantize(u, self.n_contributions)


class KeySumDecryptor:
    """A decryptor's side: checks the key sum it is asked to decrypt, then partially decrypts.

    It accepts an aggregate only if it is the product of the round's contributions' encrypted
    keys (``min_contributions`` or more, distinct agencies, the right job and round), and it
    decrypts **one** key sum per (job, round): two sums over different subsets would
    reveal the difference of the keys, i.e. one agency's key.

    Parameters
    ----------
    share : KeyShare
    min_contributions : int
        Fewest contributions a decrypted key sum may have (>= 2 unless testing).
    """

    def __init__(self, share: KeyShare, *, min_contributions: int) -> None:
        if not isinstance(share, KeyShare):
            raise ValueError(f"share must be a KeyShare, got {type(share).__name__}")
        if (
            isinstance(min_contributions, bool)
            or not isinstance(min_contributions, int)
            or (min_contributions < 1)
        ):
            raise ValueError(
                f"min_contributions must be a positive integer, got {min_contributions!r}"
            )
        self.share = share
        self.min_contributions = min_contributions
        self._done: dict[tuple[str, int], bytes] = {}

    def partial(
        self,
        contributions: Sequence[MaskedContribution],
        aggregate: EncryptedVector,
        *,
        job: str,
        round_index: int,
        pool: WorkerPool | None = None,
    ) -> PartialDecryption:
        """Check ``aggregate`` against ``contributions`` and partially decrypt it.

        Raises
        ------
        RejectedContribution
            Too few contributions, a repeated agency, a contribution of another round, an
            aggregate that is not their product, or a second, different aggregate for the
            same (job, round).
        """
        key = (job, round_index)
        if len(contributions) < self.min_contributions:
            raise RejectedContribution(
                f"the key sum has {len(contributions)} contribution(s); at least "
                f"{self.min_contributions} are required"
            )
        agencies = [c.agency for c in contributions]
        if len(set(agencies)) != len(agencies):
            raise RejectedContribution(f"an agency appears twice among {sorted(agencies)}")
        for c in contributions:
            if c.job != job or c.round_index != round_index:
                raise RejectedContribution(
                    f"contribution from {c.agency!r} is for job {c.job!r} round {c.round_index}"
                )
            ek = c.encrypted_key
            if ek.summands != 1 or ek.length != aggregate.length or ek.spec != aggregate.spec:
                raise RejectedContribution(
                    f"contribution from {c.agency!r}: its encrypted key is not one key in the "
                    f"aggregate's layout (summands {ek.summands}, length {ek.length})"
                )
        if aggregate.public_key.key_id != self.share.threshold_key.key_id:
            raise RejectedContribution("the key sum is not under this decryptor's key")
        if aggregate.summands != len(contributions):
            raise RejectedContribution(
                f"the key sum claims {aggregate.summands} summands, {len(contributions)} given"
            )
        try:
            product = sum(c.encrypted_key for c in contributions)
        except ValueError as exc:
            raise RejectedContribution(f"encrypted keys do not add: {exc}") from exc
        if not isinstance(product, EncryptedVector) or product.ciphertexts != aggregate.ciphertexts:
            raise RejectedContribution(
                "the key sum is not the product of the given contributions' encrypted keys"
            )
        digest = aggregate.digest()
        seen = self._done.get(key)
        if seen is not None and seen != digest:
            raise RejectedContribution(
                f"a different key sum was already decrypted for job {job!r} round "
                f"{round_index}; a second one could isolate one agency's key"
            )
        self._done[key] = digest
        return partial_decrypt(self.share, aggregate, pool=pool)


def run_masked_round(
    updates: Mapping[str, npt.ArrayLike],
    threshold_key: ThresholdPublicKey,
    shares: Sequence[KeyShare],
    spec: MaskedSpec,
    *,
    job: str,
    round_index: int,
    min_contributions: int | None = None,
    pool: WorkerPool | None = None,
) -> npt.NDArray[np.float64]:
    """Run one masked round in process and return the float sum of ``updates``.

    Every agency masks with a fresh key (one :class:`MaskingAgent` each, made here), the
    coordinator aggregates, the first ``t`` of ``shares`` check and partially decrypt the key
    sum, and the coordinator unmasks. Not wired into the networked coordinator.

    Parameters
    ----------
    updates : mapping of agency name to 1-D float array
        All of one length ``d``; at most ``spec.max_summands`` agencies.
    threshold_key : ThresholdPublicKey
    shares : sequence of KeyShare
        At least ``t`` of the threshold key's shares.
    spec : MaskedSpec
    job : str
    round_index : int
    min_contributions : int, optional
        Default: ``min(2, len(updates))``.

    Returns
    -------
    numpy.ndarray of float64
        ``Σ clip(update)`` up to the quantization error (at most ``n·clip/L`` per value).

    Raises
    ------
    ValueError
        No updates, updates of different lengths, fewer than ``t`` shares, or any error of the
        steps above.

    Examples
    --------
    >>> import numpy as np
    >>> from fedcity.crypto import deal_threshold_key
    >>> tpk, shares = deal_threshold_key(512, threshold=2, parties=3)  # tests only; use 2048
    >>> spec = MaskedSpec(precision_bits=16, max_summands=3)
    >>> updates = {"a": np.full(5, 0.25), "b": np.full(5, -0.5), "c": np.full(5, 0.125)}
    >>> total = run_masked_round(updates, tpk, shares, spec, job="demo", round_index=0)
    >>> bool(np.allclose(total, -0.125, atol=1e-4))
    True
    """
    if not updates:
        raise ValueError("a masked round needs at least one update")
    if len(shares) < threshold_key.threshold:
        raise ValueError(f"{len(shares)} share(s) given, the key needs t={threshold_key.threshold}")
    lengths = {
        name: int(np.asarray(u).shape[0]) if np.ndim(u) == 1 else -1 for name, u in updates.items()
    }
    if len(set(lengths.values())) != 1 or -1 in lengths.values():
        raise ValueError(f"updates must be 1-D vectors of one length, got lengths {lengths}")
    length = next(iter(lengths.values()))
    pk = threshold_key.public_key
    agg = MaskedAggregator(pk, spec, job=job, round_index=round_index, length=length)
    for name, u in updates.items():
        agg.add(MaskingAgent(name, pk, spec, pool=pool).mask(u, job=job, round_index=round_index))
    aggregate = agg.key_aggregate()
    m = min_contributions if min_contributions is not None else min(2, len(updates))
    contribs = list(agg.contributions_.values())
    partials = [
        KeySumDecryptor(s, min_contributions=m).partial(
            contribs, aggregate, job=job, round_index=round_index, pool=pool
        )
        for s in list(shares)[: threshold_key.threshold]
    ]
    key_sum = khprf.combine_key_sum(threshold_key, spec.params, aggregate, partials)
    return agg.unmask(key_sum)
