"""The sans-IO part of fedcity's Flower integration: record layout, round settings, encoding.

Nothing here sends a message: the client mod and the strategy call these functions to build
and read Flower records, so both sides agree on one layout:

- every fedcity message carries a :class:`~flwr.app.ConfigRecord` under :data:`CONFIG_KEY`
  with its ``stage`` (``"train"``, ``"decrypt"`` or ``"discover"``) and the key id;
- ciphertexts travel in an :class:`~flwr.app.ArrayRecord` under :data:`PAYLOAD_KEY` as one
  ``uint8`` array holding a ``fedcity.v1`` protobuf message (fixed-width big-endian
  ciphertexts), never as pickled Python objects.

The encrypted vector of one node is ``[ŵ·Δ, ŵ·μ·clip/B, clip·ŵ]`` with ``Δ`` the flattened
model update (local minus global, every array in the record's order), ``ŵ = min(w, W)/W``
its sample weight ``w`` scaled by the round's public ``max_weight`` ``W``, and ``μ`` the
train metrics the server asked for by name (``metrics``; none by default), each clipped to
``[-B, B]`` (``metric_bound``) and scaled into the clip range. The decrypted sum gives
``Σŵ·Δ / Σŵ``, the sample-weighted FedAvg update, and ``Σŵ·μ / Σŵ``, the sample-weighted
average of each metric, without the server seeing any ``w`` or any node's metric.

Decryption is spread over the committee (:func:`plan_decryption`): the aggregate's
ciphertexts are cut into contiguous blocks and each block goes to ``t`` (plus spares) of the
``k`` members asked, cyclically, so each member decrypts about ``t/k`` of the aggregate and
every block gets ``t`` partial decryptions. A member's request names its blocks as ranges
(``parts``); it decrypts the :func:`aggregate_view` of those ranges and proves that view
with one batched proof.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt
from flwr.app import Array, ArrayRecord, ConfigRecord

from fedcity.core import precision
from fedcity.crypto import EncryptedVector, PackingSpec
from fedcity.crypto.signing import Statement
from fedcity.crypto.threshold import split_parts

__all__ = [
    "CONFIG_KEY",
    "EVIDENCE_KEY",
    "PAYLOAD_KEY",
    "SECAGG_PLUS_ACCURACY",
    "STAGE_DECRYPT",
    "STAGE_DISCOVER",
    "STAGE_TRAIN",
    "RoundSpec",
    "aggregate_view",
    "apply_average",
    "array_to_bytes",
    "average_error_bound",
    "bytes_to_array",
    "contribution_statement",
    "encode_update",
    "flat_length",
    "merge_ranges",
    "parse_parts",
    "plan_decryption",
    "precision_for",
    "split_average",
]

CONFIG_KEY = "fedcity"
"""Key of the ConfigRecord that carries fedcity's protocol fields in both directions."""
PAYLOAD_KEY = "fedcity.payload"
"""Key of the ArrayRecord that carries ciphertexts (one ``uint8`` array)."""
PAYLOAD_ARRAY = "bytes"
"""Name of the single array inside the payload record."""
STAGE_TRAIN = "train"
STAGE_DECRYPT = "decrypt"
STAGE_DISCOVER = "discover"
STAGES = (STAGE_TRAIN, STAGE_DECRYPT, STAGE_DISCOVER)

MAX_VALUES = 50_000_000
"""Largest model (number of float values) a round may carry."""
MAX_PAYLOAD_BYTES = 1 << 31
"""Largest ciphertext payload accepted in one record."""
EVIDENCE_KEY = "fedcity.evidence"
"""Key of the ArrayRecord carrying the signed contributions to a committee member."""
SECAGG_PLUS_ACCURACY = precision.SECAGG_PLUS_ACCURACY
"""Half the step of Flower's SecAgg+ at its defaults (clip 8, 2^22 levels): 2^-19."""
MAX_METRICS = 256
"""Most train metrics a round averages."""


@dataclass(frozen=True)
class RoundSpec:
    """Public settings of one secure round, sent by the server with every request.

    Parameters
    ----------
    key_id : bytes
        Id of the federation's threshold key (16 bytes); nodes refuse another.
    clip : float
        Each coordinate of a model update is clipped to ``[-clip, clip]``.
    precision_bits : int
        Quantization bits per value (see :class:`~fedcity.crypto.PackingSpec`).
    max_summands : int
        Contributions the round may add (the sampled nodes).
    max_weight : float
        Sample weights are capped at this public value ``W`` and encrypted as ``w/W``.
    n_length : int
        Bits of the key's modulus.
    server_round : int
    metrics : tuple of str, default ()
        Train metrics every node encrypts with its update (sample-weighted average released).
    metric_bound : float, default 100.0
        Each metric is clipped to ``[-metric_bound, metric_bound]``; its rounding error is
        ``metric_bound/clip`` times that of a model value.
    """

    key_id: bytes
    clip: float
    precision_bits: int
    max_summands: int
    max_weight: float
    n_length: int
    server_round: int
    metrics: tuple[str, ...] = ()
    metric_bound: float = 100.0

    def __post_init__(self) -> None:
        if not isinstance(self.key_id, bytes) or len(self.key_id) != 16:
            raise ValueError("key_id must be 16 bytes")
        if not (isinstance(self.max_weight, int | float) and math.isfinite(self.max_weight)):
            raise ValueError(f"max_weight must be a finite number, got {self.max_weight!r}")
        if self.max_weight <= 0:
            raise ValueError(f"max_weight must be positive, got {self.max_weight!r}")
        if isinstance(self.server_round, bool) or not isinstance(self.server_round, int):
            raise ValueError(f"server_round must be an integer, got {self.server_round!r}")
        names = self.metrics
        if (
            not isinstance(names, tuple)
            or len(names) > MAX_METRICS
            or len(set(names)) != len(names)
            or not all(isinstance(n, str) and 0 < len(n) <= 128 for n in names)
        ):
            raise ValueError(
                f"metrics must be at most {MAX_METRICS} distinct non-empty names of at most "
                f"128 characters, got {names!r:.200}"
            )
        bound = self.metric_bound
        if isinstance(bound, bool) or not (
            isinstance(bound, int | float) and math.isfinite(bound) and bound > 0
        ):
            raise ValueError(f"metric_bound must be a positive finite number, got {bound!r}")
        self.packing  # validates clip, precision and summands  # noqa: B018

    @property
    def packing(self) -> PackingSpec:
        """The packing layout of the round's vectors."""
        return PackingSpec(
            clip=self.clip,
            precision_bits=self.precision_bits,
            max_summands=self.max_summands,
            n_length=self.n_length,
        )

    def to_config(
        self, stage: str, **extra: int | str | bytes | list[int] | list[str] | list[bytes]
    ) -> ConfigRecord:
        """The ConfigRecord sent with a request of ``stage``."""
        if stage not in STAGES:
            raise ValueError(f"stage must be one of {STAGES}, got {stage!r}")
        return ConfigRecord(
            {
                "stage": stage,
                "key-id": self.key_id,
                "clip": float(self.clip),
                "precision-bits": self.precision_bits,
                "max-summands": self.max_summands,
                "max-weight": float(self.max_weight),
                "n-length": self.n_length,
                "server-round": self.server_round,
                **({"metrics": list(self.metrics)} if self.metrics else {}),
                "metric-bound": float(self.metric_bound),
                **extra,
            }
        )

    @classmethod
    def from_config(cls, config: Mapping[str, object]) -> RoundSpec:
        """Read and validate the fields written by :meth:`to_config`.

        Raises
        ------
        ValueError
            A field is missing or has the wrong type or range (named).
        """

        def need(name: str, kind: type | tuple[type, ...]) -> object:
            if name not in config:
                raise ValueError(f"fedcity request lacks the field {name!r}")
            value = config[name]
            if isinstance(value, bool) or not isinstance(value, kind):
                raise ValueError(f"fedcity field {name!r} has the wrong type: {value!r}")
            return value

        return cls(
            key_id=need("key-id", bytes),  # type: ignore[arg-type]
            clip=float(need("clip", (int, float))),  # type: ignore[arg-type]
            precision_bits=need("precision-bits", int),  # type: ignore[arg-type]
            max_summands=need("max-summands", int),  # type: ignore[arg-type]
            max_weight=float(need("max-weight", (int, float))),  # type: ignore[arg-type]
            n_length=need("n-length", int),  # type: ignore[arg-type]
            server_round=need("server-round", int),  # type: ignore[arg-type]
            metrics=tuple(need("metrics", list)) if "metrics" in config else (),  # type: ignore[arg-type]
            metric_bound=(
                float(need("metric-bound", (int, float)))  # type: ignore[arg-type]
                if "metric-bound" in config
                else 100.0
            ),
        )


def array_to_bytes(record: ArrayRecord) -> bytes:
    """The payload bytes carried by a payload ArrayRecord.

    Raises
    ------
    ValueError
        The record is not one 1-D ``uint8`` array of bounded size.
    """
    if list(record.keys()) != [PAYLOAD_ARRAY]:
        raise ValueError(f"a fedcity payload holds one array named {PAYLOAD_ARRAY!r}")
    arr = record[PAYLOAD_ARRAY]
    if arr.dtype != "uint8" or len(arr.shape) != 1 or arr.shape[0] > MAX_PAYLOAD_BYTES:
        raise ValueError(
            f"a fedcity payload is a 1-D uint8 array of at most {MAX_PAYLOAD_BYTES} bytes, "
            f"got dtype {arr.dtype} and shape {arr.shape}"
        )
    data: bytes = arr.numpy().tobytes()
    return data


def bytes_to_array(payload: bytes) -> ArrayRecord:
    """Wrap payload bytes into the ArrayRecord that carries them (one ``uint8`` array)."""
    return ArrayRecord({PAYLOAD_ARRAY: Array(np.frombuffer(payload, dtype=np.uint8).copy())})


def _arrays(record: ArrayRecord) -> list[tuple[str, npt.NDArray[np.float64], str]]:
    out = []
    for name in record:
        a = record[name].numpy()
        if not np.issubdtype(a.dtype, np.floating):
            raise ValueError(f"array {name!r} has dtype {a.dtype}; only float models encrypt")
        out.append((name, a, str(a.dtype)))
    return out


def flat_length(record: ArrayRecord) -> int:
    """Number of float values in a model record."""
    n = sum(int(np.prod(record[name].shape)) for name in record)
    if n > MAX_VALUES:
        raise ValueError(f"model has {n} values; a secure round carries at most {MAX_VALUES}")
    return n


def encode_update(
    global_record: ArrayRecord,
    local_record: ArrayRecord,
    weight: float,
    spec: RoundSpec,
    metrics: Sequence[float] = (),
) -> npt.NDArray[np.float64]:
    """The vector a node encrypts: ``[ŵ·(local - global), ŵ·μ·clip/B, clip·ŵ]``.

    ``ŵ = min(w, W)/W``; ``metrics`` are the values ``μ`` of ``spec.metrics`` in that order,
    clipped to ``[-B, B]`` (``B = spec.metric_bound``).

    Raises
    ------
    ValueError
        The records differ in names or shapes, hold non-float arrays or non-finite values,
        the weight is negative or not finite, or the metrics are not one finite number per
        name of ``spec.metrics``.
    """
    if len(metrics) != len(spec.metrics):
        raise ValueError(f"{len(metrics)} metric value(s) for the metrics {spec.metrics}")
    mu = np.asarray(metrics, dtype=np.float64)
    if not np.isfinite(mu).all():
        raise ValueError("a train metric is NaN or infinite")
    if isinstance(weight, bool) or not isinstance(weight, int | float):
        raise ValueError(f"the sample weight must be a number, got {weight!r}")
    if not math.isfinite(weight) or weight < 0:
        raise ValueError(f"the sample weight must be finite and >= 0, got {weight!r}")
    g, loc = _arrays(global_record), _arrays(local_record)
    if [n for n, _, _ in g] != [n for n, _, _ in loc]:
        raise ValueError(
            f"the trained model's arrays {[n for n, _, _ in loc]} differ from the global "
            f"model's {[n for n, _, _ in g]}"
        )
    parts = []
    for (name, ga, _), (_, la, _) in zip(g, loc, strict=True):
        if ga.shape != la.shape:
            raise ValueError(f"array {name!r}: trained shape {la.shape}, global {ga.shape}")
        parts.append((la.astype(np.float64) - ga.astype(np.float64)).ravel())
    scaled = min(float(weight), spec.max_weight) / spec.max_weight
    delta = np.concatenate(parts) if parts else np.zeros(0)
    if not np.isfinite(delta).all():
        raise ValueError("the trained model holds NaN or infinite values")
    mu = np.clip(mu, -spec.metric_bound, spec.metric_bound) * (spec.clip / spec.metric_bound)
    return np.concatenate([scaled * delta, scaled * mu, [spec.clip * scaled]])


def apply_average(
    global_record: ArrayRecord, total: npt.NDArray[np.float64], spec: RoundSpec
) -> ArrayRecord:
    """The next global model from the decrypted sum ``[Σŵ·Δ, Σŵ·μ·clip/B, clip·Σŵ]``.

    Raises
    ------
    ValueError
        The sum has the wrong length or a total weight of zero.
    """
    return split_average(global_record, total, spec)[0]


def split_average(
    global_record: ArrayRecord, total: npt.NDArray[np.float64], spec: RoundSpec
) -> tuple[ArrayRecord, dict[str, float]]:
    """The next global model and the sample-weighted average of each requested metric.

    Raises
    ------
    ValueError
        The sum has the wrong length or a total weight of zero.
    """
    g = _arrays(global_record)
    n = sum(a.size for _, a, _ in g)
    k = len(spec.metrics)
    if total.shape != (n + k + 1,):
        raise ValueError(f"decrypted sum has {total.shape[0]} values, expected {n + k + 1}")
    weight_sum = float(total[-1]) / spec.clip
    if weight_sum <= 0:
        raise ValueError("the contributions' total weight is zero; no average exists")
    avg = total[:n] / weight_sum
    out: dict[str, Array] = {}
    pos = 0
    for name, a, dtype in g:
        step = avg[pos : pos + a.size].reshape(a.shape)
        out[name] = Array((a.astype(np.float64) + step).astype(dtype))
        pos += a.size
    scale = spec.metric_bound / spec.clip
    metrics = {
        name: float(total[n + i]) / weight_sum * scale for i, name in enumerate(spec.metrics)
    }
    return ArrayRecord(out), metrics


def average_error_bound(spec: RoundSpec, contributions: int, weight_sum: float) -> float:
    """Bound on each coordinate's quantization error of the released average update.

    Each summand is off by at most half a quantization step per slot; the average divides
    a sum off by ``K·step/2`` by a total weight off by the same relative amount::

        |err| <= (K·step/2) / Σŵ · (1 + |avg|/clip)  <=  K·step / Σŵ   (for |avg| <= clip)

    with ``Σŵ`` the total scaled weight (``Σ min(w, W)/W``).
    """
    if weight_sum <= 0:
        raise ValueError("weight_sum must be positive")
    return contributions * spec.packing.step / weight_sum


# -- spreading the decryption over the committee -------------------------------------------
Range = tuple[int, int]
"""Ciphertexts ``start..stop-1`` of an aggregate."""


def plan_decryption(
    members: Sequence[int], n_ciphertexts: int, threshold: int, copies: int | None = None
) -> tuple[list[Range], dict[int, list[int]]]:
    """Cut an aggregate into blocks and give each block to ``copies`` of ``members``.

    With ``k = len(members)`` and ``c = min(copies, k)`` (default ``threshold``): if
    ``c == k`` every member decrypts the whole aggregate (one block). Otherwise the
    ciphertexts are cut into ``min(k, n_ciphertexts)`` contiguous near-equal blocks and block
    ``b`` goes to members ``b·c, b·c + 1, …, b·c + c - 1`` (mod ``k``): every block has ``c``
    distinct decryptors, and with ``k`` blocks every member decrypts exactly ``c`` of them,
    about ``c/k`` of the aggregate. (With ``k = 2t`` and ``c = t`` this is two disjoint groups
    of ``t`` each decrypting half; with ``t < k < 2t`` it still spreads the work evenly.)

    Parameters
    ----------
    members : sequence of int
        Distinct ids (node ids or share indices) in order of preference.
    n_ciphertexts : int
    threshold : int
        ``t``: partial decryptions a block needs.
    copies : int, optional
        Decryptors per block (``t`` plus spares); at least ``threshold``.

    Returns
    -------
    (blocks, assignment)
        ``blocks[b] = (start, stop)``; ``assignment[member]`` lists the block indices it
        decrypts, ascending (members with no block are left out).

    Raises
    ------
    ValueError
        Fewer than ``threshold`` members, repeated members, or invalid counts.
    """
    for name, v in (("n_ciphertexts", n_ciphertexts), ("threshold", threshold)):
        if isinstance(v, bool) or not isinstance(v, int) or v < 1:
            raise ValueError(f"{name} must be a positive integer, got {v!r}")
    c = threshold if copies is None else copies
    if isinstance(c, bool) or not isinstance(c, int) or c < threshold:
        raise ValueError(f"copies must be an integer >= threshold={threshold}, got {c!r}")
    ids = list(members)
    if len(set(ids)) != len(ids):
        raise ValueError(f"members must be distinct, got {ids}")
    k = len(ids)
    if k < threshold:
        raise ValueError(f"{k} member(s) cannot decrypt with threshold {threshold}")
    c = min(c, k)
    if c == k:
        return [(0, n_ciphertexts)], {m: [0] for m in ids}
    blocks = split_parts(n_ciphertexts, k)
    assignment: dict[int, list[int]] = {}
    for b in range(len(blocks)):
        for j in range(c):
            assignment.setdefault(ids[(b * c + j) % k], []).append(b)
    return blocks, {m: sorted(v) for m, v in assignment.items()}


def merge_ranges(blocks: Sequence[Range], chosen: Iterable[int]) -> list[Range]:
    """The ranges covered by blocks ``chosen`` (indices into ``blocks``), adjacent ones merged."""
    out: list[Range] = []
    for b in sorted(set(chosen)):
        start, stop = blocks[b]
        if out and out[-1][1] == start:
            out[-1] = (out[-1][0], stop)
        else:
            out.append((start, stop))
    return out


def parse_parts(value: object, n_ciphertexts: int) -> list[Range]:
    """Read a request's ``parts`` field: a flat list ``[start0, stop0, start1, stop1, …]``.

    Absent (None) means the whole aggregate.

    Raises
    ------
    ValueError
        Not a list of integers of even length, or ranges that are empty, overlapping, out of
        order or outside ``[0, n_ciphertexts)``.
    """
    if value is None:
        return [(0, n_ciphertexts)]
    if (
        not isinstance(value, list)
        or not value
        or len(value) % 2
        or len(value) > 2 * n_ciphertexts
        or any(isinstance(v, bool) or not isinstance(v, int) for v in value)
    ):
        raise ValueError(
            f"parts must be a non-empty flat list of start/stop integer pairs (at most "
            f"{n_ciphertexts} pairs), got {value!r:.200}"
        )
    ranges = [(int(value[i]), int(value[i + 1])) for i in range(0, len(value), 2)]
    previous = 0
    for start, stop in ranges:
        if not previous <= start < stop <= n_ciphertexts:
            raise ValueError(
                f"part [{start}, {stop}) is empty, overlaps or precedes the previous one, or "
                f"lies outside the aggregate's {n_ciphertexts} ciphertexts"
            )
        previous = stop
    return ranges


def flat_parts(ranges: Sequence[Range]) -> list[int]:
    """The ``parts`` field for ``ranges`` (inverse of :func:`parse_parts`)."""
    return [v for r in ranges for v in r]


def aggregate_view(aggregate: EncryptedVector, ranges: Sequence[Range]) -> EncryptedVector:
    """The ciphertexts of ``ranges`` (in order) as one encrypted vector, for decryption.

    The whole aggregate for the single range covering it. Otherwise a vector of
    ``count · slots_per_ciphertext`` values with the aggregate's key, layout and summands,
    so a member proves its partial decryptions of exactly these ciphertexts with one batched
    proof, and the server rebuilds the same view to verify it.
    """
    k = len(aggregate.ciphertexts)
    if list(ranges) == [(0, k)]:
        return aggregate
    cts = [c for start, stop in ranges for c in aggregate.ciphertexts[start:stop]]
    return EncryptedVector(
        aggregate.public_key,
        aggregate.spec,
        len(cts) * aggregate.spec.slots_per_ciphertext,
        aggregate.summands,
        cts,
        validate=False,
    )


# -- signed contributions ---------------------------------------------------------------------
def contribution_statement(run_id: int, spec: RoundSpec, agency: str, payload: bytes) -> Statement:
    """What a node signs for its encrypted update: run, round, name, key id, payload digest.

    The job id is ``flower-run-<run_id>`` (Flower's run id), the round the server round, the
    kind ``"contribution"`` (:class:`fedcity.crypto.signing.Statement`).
    """
    return Statement.for_payload(
        f"flower-run-{int(run_id)}", spec.server_round, "contribution", agency, spec.key_id, payload
    )


# -- precision ----------------------------------------------------------------------------------
def precision_for(clip: float, accuracy: float) -> int:
    """Fewest precision bits whose rounding error ``clip/(2^bits - 1)`` is at most ``accuracy``.

    The policy of fedcity's own FedAvg (:func:`fedcity.core.precision.precision_for`, at
    least 8 bits, at most 52), with both inputs validated.

    Raises
    ------
    ValueError
        ``clip`` or ``accuracy`` is not a positive finite number, ``accuracy`` is not below
        ``clip``, or it needs more than 52 bits.
    """
    return precision.precision_for(clip, precision.check_accuracy(accuracy, clip))
