"""The opt-in ``"lwr-masked"`` aggregation scheme as an :class:`AggregationScheme`.

:mod:`fedcity.core.masked` (the prototype) masks each agency's update with a key-homomorphic
PRF and encrypts only the PRF key under the federation's threshold Paillier key. This module
plugs it into the round machinery (:class:`~fedcity.core.rounds.AggregationRound`, the
driver, the agencies' nodes, the coordinator and the agent daemon) **without changing them**:
:class:`MaskedScheme` is a :class:`~fedcity.core.aggregation.PaillierScheme` whose
"aggregate" is the encrypted key sum (a :class:`MaskedAggregate`: an ``EncryptedVector`` of
``λ`` key values that also carries the masked sum), so signing, evidence, the decryptors'
product check (applied to the encrypted keys), partial decryption, decryption groups,
storage and replay work as for the packed scheme; only :meth:`MaskedScheme.decode` differs.

A job opts in per round: its ``TaskRequest.params["aggregation"]`` is ``"lwr-masked"``
(``"paillier"`` or absent: today's scheme). The PRF input ``x`` is the task's (job, round),
so a :class:`MaskedScheme` is bound to one round: :func:`scheme_for_task` makes it, at the
coordinator (:class:`~fedcity.learn.driver.JobDriver`) and at every agency
(:class:`~fedcity.core.nodes.AgencyNode`) alike.

Wire format of a contribution (and of an aggregate): ``MAGIC ‖ d (4 bytes, big-endian) ‖
d masked values of ⌈log₂ p / 8⌉ little-endian bytes ‖ Enc(k)`` (``fedcity.v1.EncryptedVector``
bytes). The masked values are uniform in ``Z_p`` to anyone without the key.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import numpy as np
import numpy.typing as npt

from fedcity.core.aggregation import _ENVELOPE, AggregationScheme, PaillierScheme
from fedcity.core.errors import RejectedContribution
from fedcity.core.masked import MaskedAggregator, MaskedDecodeError, MaskedSpec, MaskingAgent
from fedcity.crypto import (
    CryptoError,
    EncryptedVector,
    PackingSpec,
    ThresholdPublicKey,
    khprf,
    serde,
)
from fedcity.crypto.errors import SlotRangeError
from fedcity.crypto.khprf import LWRParams

if TYPE_CHECKING:
    from fedcity.core.tasks import Task
    from fedcity.crypto.parallel import WorkerPool

__all__ = [
    "AGGREGATION_SCHEMES",
    "DEFAULT_AGGREGATION",
    "MASKED",
    "MaskedAggregate",
    "MaskedDecodeError",
    "MaskedScheme",
    "check_aggregation",
    "masked_precision_limit",
    "scheme_for_task",
    "task_aggregation",
]

DEFAULT_AGGREGATION = "paillier"
MASKED = "lwr-masked"
AGGREGATION_SCHEMES = (DEFAULT_AGGREGATION, MASKED)
"""The values of a FedAvg job's ``aggregation`` parameter."""

_MAGIC = b"fedcity.masked.v1\x00"


def check_aggregation(value: object) -> str:
    """Return ``value`` if it names an aggregation scheme, else raise ValueError naming them."""
    if not isinstance(value, str) or value not in AGGREGATION_SCHEMES:
        raise ValueError(
            f"aggregation must be one of {list(AGGREGATION_SCHEMES)} (default "
            f"{DEFAULT_AGGREGATION!r}), got {value!r}"
        )
    return value


def task_aggregation(task: Task) -> str:
    """The scheme a task's round uses (``request.params["aggregation"]``, default paillier)."""
    return check_aggregation(task.request.params.get("aggregation", DEFAULT_AGGREGATION))


def masked_precision_limit(max_summands: int, params: LWRParams = khprf.DEFAULT_PARAMS) -> int:
    """The most precision bits a masked round of ``max_summands`` agencies can carry in ``p``."""
    best = 0
    for bits in range(1, 53):
        try:
            MaskedSpec(precision_bits=bits, max_summands=max_summands, params=params)
        except ValueError:
            break
        best = bits
    return best


class MaskedAggregate(EncryptedVector):
    """The encrypted key sum ``Enc(Σ k_i)`` (what decryptors decrypt) with ``Σ y_i mod p``.

    As an :class:`EncryptedVector` it *is* the key part: ``ciphertexts``, ``summands``,
    ``digest()`` and ``vector_part`` are the keys', so partial decryptions, their proofs and
    the decryptors' product check apply to it unchanged. ``masked`` is public.
    """

    __slots__ = ("masked",)

    def __init__(self, key: EncryptedVector, masked: npt.NDArray[np.uint32]) -> None:
        super().__init__(
            key.public_key, key.spec, key.length, key.summands, key.ciphertexts, validate=False
        )
        self.masked = masked

    def __repr__(self) -> str:
        return (
            f"<MaskedAggregate length={len(self.masked)} summands={self.summands} "
            f"key_ciphertexts={len(self.ciphertexts)}>"
        )


class _ReleasedSum(MaskedAggregator):
    """A :class:`MaskedAggregator` holding only a masked sum of ``n`` contributions."""

    def __init__(
        self, scheme: MaskedScheme, spec: MaskedSpec, masked: npt.NDArray[np.uint32], n: int
    ) -> None:
        super().__init__(
            scheme.public_key,
            spec,
            job=scheme.job,
            round_index=scheme.round_index,
            length=len(masked),
        )
        self._sum = masked.copy()
        self._n = n

    @property
    def n_contributions(self) -> int:
        """The aggregate's summands."""
        return self._n


class MaskedScheme(PaillierScheme):
    """Threshold Paillier on PRF keys, the updates masked by the PRF: one round of one job.

    Parameters
    ----------
    threshold_key : ThresholdPublicKey
        The federation's threshold key (key-holder mode is not supported).
    spec : PackingSpec
        The round's layout (the task's ``spec``): its clip, precision and ``max_summands``
        define the :class:`~fedcity.core.masked.MaskedSpec`.
    job : str
    round_index : int
        The round this scheme seals, adds and releases (the PRF input ``x``).
    params : LWRParams, default :data:`fedcity.crypto.khprf.DEFAULT_PARAMS`
    pool : WorkerPool, optional
        Worker processes for the key's encryption and partial decryption.

    Raises
    ------
    ValueError
        The precision does not fit ``p`` for ``spec.max_summands`` summands (the message gives
        the largest that fits), or an invalid job or round.

    Notes
    -----
    Range audits do not apply: a masked vector reveals nothing to check, so an unmasked sum
    out of range raises :class:`MaskedDecodeError` and the round fails without naming the
    culprit (``docs/trust-model.md``). Differential-privacy noise is not supported.
    """

    def __init__(
        self,
        threshold_key: ThresholdPublicKey,
        spec: PackingSpec,
        *,
        job: str,
        round_index: int,
        params: LWRParams = khprf.DEFAULT_PARAMS,
        pool: WorkerPool | None = None,
    ) -> None:
        super().__init__(threshold_key, pool=pool, optimistic=False)
        khprf.prf_input(job, round_index)  # validates both
        self.job = job
        self.round_index = round_index
        self.params = params
        self.spec = MaskedSpec(
            clip=spec.clip,
            precision_bits=spec.precision_bits,
            max_summands=spec.max_summands,
            params=params,
        )
        self._packing = spec

    def __repr__(self) -> str:
        return f"<MaskedScheme {self.params.name} job={self.job!r} round={self.round_index}>"

    def _check_spec(self, spec: PackingSpec) -> None:
        if spec != self._packing:
            raise RejectedContribution(
                f"layout {spec} is not this masked round's ({self._packing})"
            )

    def _key_spec(self, spec: PackingSpec) -> PackingSpec:
        return khprf.key_packing_spec(self.params, spec.max_summands, self.public_key.n_length)

    def payload_limit(self, kind: str, spec: PackingSpec, length: int) -> int:
        """Masked values plus the key's ciphertexts (contribution), or the key's partial."""
        k = self._key_spec(spec).n_ciphertexts(self.params.dimension)
        cb = self.public_key.ciphertext_bytes
        if kind == "contribution":
            w = -(-self.params.log_p // 8)
            return len(_MAGIC) + 4 + length * w + k * cb + _ENVELOPE
        return k * cb + cb + _ENVELOPE

    # agency side ---------------------------------------------------------------------------
    def seal(self, vector: npt.NDArray[np.float64], spec: PackingSpec, noise: Any = None) -> bytes:
        """Quantize, mask under a fresh PRF key for this round, encrypt the key."""
        if noise is not None:
            raise ValueError("the lwr-masked scheme does not support differential privacy noise")
        self._check_spec(spec)
        agent = MaskingAgent("agency", self.public_key, self.spec, pool=self.pool)
        c = agent.mask(vector, job=self.job, round_index=self.round_index)
        return self._to_bytes(c.masked, c.encrypted_key)

    # both sides ----------------------------------------------------------------------------
    def _to_bytes(self, masked: npt.NDArray[np.uint32], key: EncryptedVector) -> bytes:
        w = -(-self.params.log_p // 8)
        raw = np.ascontiguousarray(masked, dtype="<u4").view(np.uint8).reshape(-1, 4)[:, :w]
        return (
            _MAGIC
            + len(masked).to_bytes(4, "big")
            + raw.tobytes()
            + serde.encrypted_vector_to_bytes(key)
        )

    def _parse(self, payload: bytes, spec: PackingSpec, length: int, what: str) -> MaskedAggregate:
        self._check_spec(spec)
        w = -(-self.params.log_p // 8)
        head = len(_MAGIC) + 4
        if not payload.startswith(_MAGIC) or len(payload) < head:
            raise RejectedContribution(f"{what} is not an lwr-masked payload")
        d = int.from_bytes(payload[len(_MAGIC) : head], "big")
        if d != length:
            raise RejectedContribution(f"{what} has {d} masked values, the round expects {length}")
        end = head + d * w
        if len(payload) <= end:
            raise RejectedContribution(f"{what} is truncated ({len(payload)} bytes)")
        raw = np.zeros((d, 4), dtype=np.uint8)
        raw[:, :w] = np.frombuffer(payload[head:end], dtype=np.uint8).reshape(d, w)
        masked = raw.view("<u4").reshape(d).astype(np.uint32)
        if d and int(masked.max()) >= self.params.p:
            raise RejectedContribution(f"{what}: a masked value is >= p = 2^{self.params.log_p}")
        try:
            key = serde.encrypted_vector_from_bytes(payload[end:], self.public_key)
        except CryptoError as exc:
            raise RejectedContribution(f"{what}: invalid encrypted key: {exc}") from exc
        if key.spec != self._key_spec(spec) or key.length != self.params.dimension:
            raise RejectedContribution(
                f"{what}: the encrypted key must be one {self.params.name} key "
                f"({self.params.dimension} values in {self._key_spec(spec)}), got length "
                f"{key.length} in {key.spec}"
            )
        return MaskedAggregate(key, masked)

    # coordinator side ----------------------------------------------------------------------
    def open(self, payload: bytes, spec: PackingSpec, length: int) -> MaskedAggregate:
        """Parse a contribution: ``length`` masked values below ``p`` and one encrypted key."""
        c = self._parse(payload, spec, length, "contribution")
        if c.summands != 1:
            raise RejectedContribution(
                f"a contribution must be one summand, got summands={c.summands}"
            )
        return c

    def add(self, contributions: Sequence[EncryptedVector]) -> EncryptedVector:
        """Multiply the encrypted keys; add the masked vectors mod ``p``.

        Parts of contributions (a decryptor's decryption-group check, which holds only key
        ciphertexts) add to the product of their key parts.
        """
        masked = [c for c in contributions if isinstance(c, MaskedAggregate)]
        key = self._sum(contributions)
        if not masked:
            return key
        if len(masked) != len(contributions):
            raise RejectedContribution("lwr-masked contributions and key parts do not add")
        total = np.zeros(len(masked[0].masked), dtype=np.uint32)
        for c in masked:
            total = (total + c.masked) & np.uint32(self.params.p - 1)
        return MaskedAggregate(key, total)

    def aggregate_to_bytes(self, aggregate: EncryptedVector) -> bytes:
        """The masked sum and the encrypted key sum (what decryptors and the store get)."""
        if not isinstance(aggregate, MaskedAggregate):
            raise ValueError("an lwr-masked aggregate is needed")
        return self._to_bytes(aggregate.masked, aggregate)

    def aggregate_from_bytes(
        self, payload: bytes, spec: PackingSpec, length: int
    ) -> MaskedAggregate:
        """Parse an aggregate (a decryptor before decrypting, the coordinator after a restart)."""
        return self._parse(payload, spec, length, "aggregate")

    def decode(
        self, aggregate: EncryptedVector, plaintexts: Sequence[int]
    ) -> npt.NDArray[np.float64]:
        """Read ``K = Σ k_i mod q`` from the key plaintexts, unmask, dequantize.

        Raises
        ------
        MaskedDecodeError
            The key sum or the unmasked sum is out of range: some contribution was
            malformed. Masked vectors cannot be range-audited, so the culprit is not named.
        """
        if not isinstance(aggregate, MaskedAggregate):
            raise ValueError("an lwr-masked aggregate is needed")
        params = self.params
        try:
            slots = aggregate.spec.unpack(
                [int(m) for m in plaintexts], params.dimension, aggregate.summands
            )
        except SlotRangeError as exc:
            raise MaskedDecodeError(f"the decrypted key sum is out of range ({exc})") from exc
        key_sum = (slots & np.uint64(params.q - 1)).astype(np.uint32)
        released = _ReleasedSum(self, self.spec, aggregate.masked, aggregate.summands)
        return released.unmask(key_sum)


def scheme_for_task(base: AggregationScheme, task: Task) -> AggregationScheme:
    """The scheme a task's round uses: ``base``, or a :class:`MaskedScheme` over its key.

    Raises
    ------
    RejectedContribution
        The task asks for an unknown scheme, or for ``"lwr-masked"`` with differential
        privacy or without a threshold key (key-holder or plaintext federation).
    """
    try:
        name = task_aggregation(task)
    except ValueError as exc:
        raise RejectedContribution(str(exc)) from exc
    if name == DEFAULT_AGGREGATION:
        return base
    if isinstance(base, MaskedScheme):
        return base
    if task.dp:
        raise RejectedContribution(
            "aggregation 'lwr-masked' does not support differential privacy (no noise is "
            "added to masked vectors); use the default 'paillier'"
        )
    if not isinstance(base, PaillierScheme):
        raise RejectedContribution(
            "aggregation 'lwr-masked' needs the federation's threshold key; this federation "
            f"runs {type(base).__name__} (key-holder or plaintext mode)"
        )
    try:
        return MaskedScheme(
            base.threshold_key, task.spec, job=task.job_id, round_index=task.round, pool=base.pool
        )
    except ValueError as exc:
        raise RejectedContribution(f"aggregation 'lwr-masked': {exc}") from exc
