"""The client mod: encrypt the trained update, answer partial-decryption requests.

Add it to any Message-API ClientApp whose train function returns one ArrayRecord (the
trained model) and one MetricRecord with the sample count::

    app = ClientApp(mods=[fedcity_mod])

On a ``train`` message from :class:`~fedcity.flower.SecureFedAvg` the mod lets the app
train, then replaces its reply by the packed, quantized, encrypted sample-weighted update:
the reply holds ciphertexts and the node's share index, nothing else. The app's train
metrics stay on the node, except those the server names in the round's ``metrics``: their
values are encrypted inside the same vector, so only their sample-weighted average over the
round's contributors is ever decrypted. On a ``decrypt`` message a committee member returns
its partial decryption of the blocks of the aggregate it is asked for (all of it by
default) with one batched equality-of-discrete-log proof. Encryption randomness is
precomputed while the process is idle (:mod:`fedcity.flower.precompute`). A ``train``
message without fedcity's settings is refused, so a misconfigured server never receives a
plaintext update. Evaluate and query messages pass through unchanged.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping, Sequence
from pathlib import Path

from flwr.app import ArrayRecord, ConfigRecord, Context, Message, MessageType, RecordDict
from flwr.clientapp.typing import ClientAppCallable

from fedcity.core.aggregation import PaillierScheme
from fedcity.core.errors import RejectedContribution
from fedcity.crypto import EncryptedVector, KeyShare, encrypt_vector, partial_decrypt, serde
from fedcity.crypto.signing import VerifyKey
from fedcity.crypto.threshold import vector_part
from fedcity.flower.keys import (
    SIGNING_FILE,
    VERIFY_KEYS_FILE,
    NodeKey,
    load_node_key,
    load_signing_key,
    load_verify_keys,
    node_name,
    shared_public_key,
)
from fedcity.flower.precompute import DEFAULT_POOL_SIZE, busy, precompute_for
from fedcity.flower.protocol import (
    CONFIG_KEY,
    EVIDENCE_KEY,
    PAYLOAD_KEY,
    STAGE_DECRYPT,
    STAGE_DISCOVER,
    STAGE_TRAIN,
    RoundSpec,
    aggregate_view,
    array_to_bytes,
    bytes_to_array,
    contribution_statement,
    encode_update,
    flat_length,
    parse_parts,
)

__all__ = ["KEY_CONFIG", "KEY_DIR_CONFIG", "SecureAggregationMod", "fedcity_mod"]

log = logging.getLogger(__name__)

KEY_CONFIG = "fedcity-key"
"""Node-config entry naming the node's key file (share or public key)."""
KEY_DIR_CONFIG = "fedcity-key-dir"
"""Run- or node-config entry naming a directory of ``node-<partition-id>/key.json`` files."""
_STATE_KEY = "fedcity.state"


class FedcityRequestError(ValueError):
    """A fedcity request this node refuses (named reason); Flower returns it as an error."""


class SecureAggregationMod:
    """Flower client mod running fedcity's packed threshold Paillier aggregation.

    Parameters
    ----------
    key_file : str or path-like, optional
        This node's key file. Default: the node-config entry ``fedcity-key``.
    key_dir : str or path-like, optional
        A directory written by :func:`~fedcity.flower.deal_flower_keys`; the node loads
        ``<key_dir>/nodes/node-<partition-id>/key.json`` (simulation engine). Also read from
        the node or run config entry ``fedcity-key-dir``.
    min_summands : int, default 2
        This node's policy: it partially decrypts only aggregates of at least this many
        contributions, so a single node's update is never released.
    weight_key : str, default "num-examples"
        Metric of the app's reply holding the sample count.
    randomness_pool : int, default 16384
        Most precomputed encryption randomness pairs this process keeps (about 0.8 KiB each
        at 2048 bits), filled while idle up to what the process sealed in a recent round;
        0 turns precomputation off.

    Notes
    -----
    A committee member partially decrypts at most one aggregate per server round.
    """

    def __init__(
        self,
        *,
        key_file: str | os.PathLike[str] | None = None,
        key_dir: str | os.PathLike[str] | None = None,
        min_summands: int = 2,
        weight_key: str = "num-examples",
        randomness_pool: int = DEFAULT_POOL_SIZE,
    ) -> None:
        if isinstance(min_summands, bool) or not isinstance(min_summands, int):
            raise ValueError(f"min_summands must be an integer, got {min_summands!r}")
        if min_summands < 1:
            raise ValueError(f"min_summands must be >= 1, got {min_summands}")
        if not isinstance(weight_key, str) or not weight_key:
            raise ValueError("weight_key must be a non-empty string")
        if isinstance(randomness_pool, bool) or not isinstance(randomness_pool, int):
            raise ValueError(f"randomness_pool must be an integer, got {randomness_pool!r}")
        if randomness_pool < 0:
            raise ValueError(f"randomness_pool must be >= 0, got {randomness_pool}")
        self.randomness_pool = randomness_pool
        self.key_file = None if key_file is None else Path(key_file)
        self.key_dir = None if key_dir is None else Path(key_dir)
        self.min_summands = min_summands
        self.weight_key = weight_key

    def __repr__(self) -> str:
        return (
            f"SecureAggregationMod(key_file={self.key_file}, key_dir={self.key_dir}, "
            f"min_summands={self.min_summands})"
        )

    # -- key material ------------------------------------------------------------------------
    def key_path(self, context: Context) -> Path:
        """Where this node's key file is: node config, then arguments, then run config."""
        explicit = context.node_config.get(KEY_CONFIG)
        if isinstance(explicit, str) and explicit:
            return Path(explicit)
        if self.key_file is not None:
            return self.key_file
        directory: object = self.key_dir
        if directory is None:
            directory = context.node_config.get(KEY_DIR_CONFIG) or context.run_config.get(
                KEY_DIR_CONFIG
            )
        pid = context.node_config.get("partition-id")
        if isinstance(directory, str | Path) and str(directory) and isinstance(pid, int):
            return Path(directory) / "nodes" / node_name(pid) / "key.json"
        raise FedcityRequestError(
            f"no fedcity key configured for this node: set the node-config entry {KEY_CONFIG!r} "
            f"(or {KEY_DIR_CONFIG!r} in the simulation engine)"
        )

    def node_key(self, context: Context) -> NodeKey:
        """The key of this node (cached per process)."""
        return load_node_key(self.key_path(context))

    # -- the mod -----------------------------------------------------------------------------
    def __call__(self, msg: Message, ctxt: Context, call_next: ClientAppCallable) -> Message:
        """Handle one message (the Flower mod signature)."""
        with busy():  # no randomness precomputation while a message is handled
            return self._handle(msg, ctxt, call_next)

    def _handle(self, msg: Message, ctxt: Context, call_next: ClientAppCallable) -> Message:
        if msg.metadata.message_type != MessageType.TRAIN:
            return call_next(msg, ctxt)
        if CONFIG_KEY not in msg.content.config_records:
            raise FedcityRequestError(
                "train request without fedcity settings: this node sends only encrypted "
                "updates (use fedcity.flower.SecureFedAvg on the server)"
            )
        config = msg.content.config_records[CONFIG_KEY]
        stage = config.get("stage")
        key = self.node_key(ctxt)
        tpk = shared_public_key(key)
        if stage == STAGE_DISCOVER:
            return self._reply(msg, key, RecordDict())
        spec = RoundSpec.from_config(config)
        if spec.key_id != tpk.key_id:
            raise FedcityRequestError(
                f"request is for key {spec.key_id.hex()[:8]}, this node holds "
                f"{tpk.key_id.hex()[:8]}"
            )
        if spec.n_length != tpk.public_key.n_length:
            raise FedcityRequestError("request's n-length differs from the key's")
        if stage == STAGE_TRAIN:
            return self._train(msg, ctxt, call_next, key, tpk_scheme(key), spec)
        if stage == STAGE_DECRYPT:
            return self._decrypt(msg, ctxt, key, spec)
        raise FedcityRequestError(f"unknown fedcity stage {stage!r}")

    def _reply(
        self, msg: Message, key: NodeKey, content: RecordDict, **extra: str | bytes
    ) -> Message:
        tpk = shared_public_key(key)
        content[CONFIG_KEY] = ConfigRecord(
            {
                "key-id": tpk.key_id,
                "share-index": key.index if isinstance(key, KeyShare) else 0,
                **extra,
            }
        )
        return Message(content, reply_to=msg)

    def _train(
        self,
        msg: Message,
        ctxt: Context,
        call_next: ClientAppCallable,
        key: NodeKey,
        scheme: PaillierScheme,
        spec: RoundSpec,
    ) -> Message:
        arrays = [k for k in msg.content.array_records if k != PAYLOAD_KEY]
        if len(arrays) != 1:
            raise FedcityRequestError(
                f"a fedcity train request carries one global model, got records {arrays}"
            )
        global_record = msg.content.array_records[arrays[0]]
        reply = call_next(msg, ctxt)
        if reply.has_error():
            return reply
        out = reply.content
        if len(out.array_records) != 1 or len(out.metric_records) != 1:
            raise FedcityRequestError(
                "the ClientApp's train reply must hold one ArrayRecord and one MetricRecord, "
                f"got {len(out.array_records)} and {len(out.metric_records)}"
            )
        local_record = next(iter(out.array_records.values()))
        metrics = next(iter(out.metric_records.values()))
        if self.weight_key not in metrics:
            raise FedcityRequestError(
                f"the ClientApp's train metrics lack the sample weight {self.weight_key!r}"
            )
        weight = metrics[self.weight_key]
        if not isinstance(weight, int | float):
            raise FedcityRequestError(f"metric {self.weight_key!r} must be a single number")
        values = []
        for name in spec.metrics:  # the train metrics the server asked for, by name
            value = metrics.get(name)
            if isinstance(value, bool) or not isinstance(value, int | float):
                raise FedcityRequestError(
                    f"the server asks for the train metric {name!r}; the ClientApp's reply "
                    "has no single number under that name"
                )
            values.append(float(value))
        try:
            vector = encode_update(global_record, local_record, float(weight), spec, values)
        except ValueError as exc:
            raise FedcityRequestError(str(exc)) from exc
        if vector.size != flat_length(global_record) + len(spec.metrics) + 1:
            raise FedcityRequestError("update length does not match the global model")
        pk = scheme.public_key
        pool = None
        if self.randomness_pool:
            pre = precompute_for(pk, self.randomness_pool)
            pre.record(spec.server_round, spec.packing.n_ciphertexts(vector.size))
            pool = pre.pool
        encrypted = encrypt_vector(pk, vector, spec.packing, randomness=pool)
        payload = serde.encrypted_vector_to_bytes(encrypted)
        content = RecordDict({PAYLOAD_KEY: bytes_to_array(payload)})
        signing = load_signing_key(self.key_path(ctxt).parent / SIGNING_FILE)
        if signing is None:
            return self._reply(msg, key, content)
        name, signing_key = signing
        statement = contribution_statement(msg.metadata.run_id, spec, name, payload)
        return self._reply(msg, key, content, agency=name, signature=signing_key.sign(statement))

    def _decrypt(self, msg: Message, ctxt: Context, key: NodeKey, spec: RoundSpec) -> Message:
        if not isinstance(key, KeyShare):
            raise FedcityRequestError("this node is not on the decryption committee")
        if PAYLOAD_KEY not in msg.content.array_records:
            raise FedcityRequestError("decrypt request without an aggregate")
        length = msg.content.config_records[CONFIG_KEY].get("length")
        if isinstance(length, bool) or not isinstance(length, int) or length < 1:
            raise FedcityRequestError(f"decrypt request has an invalid length {length!r}")
        scheme = tpk_scheme(key)
        try:
            aggregate = scheme.aggregate_from_bytes(
                array_to_bytes(msg.content.array_records[PAYLOAD_KEY]), spec.packing, length
            )
            ranges = parse_parts(
                msg.content.config_records[CONFIG_KEY].get("parts"), len(aggregate.ciphertexts)
            )
        except (RejectedContribution, ValueError) as exc:
            raise FedcityRequestError(f"decrypt request: {exc}") from exc
        verify_keys = load_verify_keys(self.key_path(ctxt).parent / VERIFY_KEYS_FILE)
        if verify_keys is not None:
            try:
                check_evidence(msg, aggregate, spec, verify_keys, ranges, scheme)
            except (RejectedContribution, ValueError, KeyError) as exc:
                raise FedcityRequestError(f"decrypt request: {exc}") from exc
        if aggregate.summands < self.min_summands:
            raise FedcityRequestError(
                f"refusing to decrypt an aggregate of {aggregate.summands} contribution(s); "
                f"this node's policy needs at least {self.min_summands}"
            )
        state = ctxt.state.config_records.get(_STATE_KEY)
        digest = aggregate.digest()
        if (
            state is not None
            and state.get("round") == spec.server_round
            and state.get("digest") != digest
        ):
            raise FedcityRequestError(
                f"already decrypted another aggregate in round {spec.server_round}; a node "
                "decrypts one aggregate per round"
            )
        ctxt.state.config_records[_STATE_KEY] = ConfigRecord(
            {"round": spec.server_round, "digest": digest}
        )
        # one aggregate per round, any blocks of it: the view is its ciphertexts `ranges`
        pd = partial_decrypt(key, aggregate_view(aggregate, ranges))
        payload = serde.partial_decryption_to_bytes(pd, scheme.public_key)
        return self._reply(msg, key, RecordDict({PAYLOAD_KEY: bytes_to_array(payload)}))


def check_evidence(
    msg: Message,
    aggregate: EncryptedVector,
    spec: RoundSpec,
    verify_keys: Mapping[str, VerifyKey],
    ranges: Sequence[tuple[int, int]],
    scheme: PaillierScheme,
) -> None:
    """Check that ``aggregate`` is the product of the signed contributions sent with ``msg``.

    The request must carry, under :data:`EVIDENCE_KEY`, one payload array per contribution
    (named ``"0"``, ``"1"``, …) and, in its config, the contributors' names (``agencies``)
    and signatures (``signatures``), as many as the aggregate's summands. Every name must be
    distinct and in ``verify_keys``, every signature must verify for this run, round, key
    and payload, every payload must be one well-formed summand of the round's layout, and
    the product of their ciphertexts must equal the aggregate's in ``ranges`` (the blocks
    this member decrypts).

    Raises
    ------
    ValueError
        The evidence is missing, malformed, or does not match (reason named).
    """
    config = msg.content.config_records[CONFIG_KEY]
    agencies, signatures = config.get("agencies"), config.get("signatures")
    if EVIDENCE_KEY not in msg.content.array_records or not isinstance(agencies, list):
        raise ValueError("this node decrypts only sums of signed contributions; none were sent")
    record = msg.content.array_records[EVIDENCE_KEY]
    n = len(agencies)
    if not isinstance(signatures, list) or len(signatures) != n or len(record) != n:
        raise ValueError("the evidence's names, signatures and payloads differ in number")
    if n != aggregate.summands or n > spec.max_summands:
        raise ValueError(
            f"the evidence holds {n} contribution(s), the aggregate claims {aggregate.summands}"
        )
    if len(set(agencies)) != n:
        raise ValueError("the evidence names a contributor twice")
    sums: list[EncryptedVector | None] = [None] * len(ranges)
    for j, (agency, signature) in enumerate(zip(agencies, signatures, strict=True)):
        if not isinstance(agency, str) or agency not in verify_keys:
            raise ValueError(f"contributor {agency!r} is not a node of this federation")
        if str(j) not in record or not isinstance(signature, bytes):
            raise ValueError(f"evidence entry {j} is malformed")
        payload = array_to_bytes(ArrayRecord({"bytes": record[str(j)]}))
        statement = contribution_statement(msg.metadata.run_id, spec, agency, payload)
        if not verify_keys[agency].verify(statement, signature):
            raise ValueError(f"the signature of {agency!r} does not verify for this round")
        vec = scheme.open(payload, aggregate.spec, aggregate.length)
        for r, (start, stop) in enumerate(ranges):  # homomorphic sum of this member's blocks
            part = vector_part(vec, start, stop)
            total = sums[r]
            sums[r] = part if total is None else total + part
    for (start, stop), total in zip(ranges, sums, strict=True):
        if total is None or total.ciphertexts != vector_part(aggregate, start, stop).ciphertexts:
            raise ValueError("the aggregate is not the product of the signed contributions")


def tpk_scheme(key: NodeKey) -> PaillierScheme:
    """The aggregation scheme of a node's key (shared public key object per process)."""
    return PaillierScheme(shared_public_key(key))


fedcity_mod = SecureAggregationMod()
"""The mod with default settings: the key file comes from the node config."""
