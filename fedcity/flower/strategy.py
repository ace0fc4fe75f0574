"""The server side: FedAvg over packed threshold Paillier ciphertexts.

:class:`SecureFedAvg` is a drop-in for :class:`flwr.serverapp.strategy.FedAvg`: swap the class
and keep ``strategy.start(grid=..., initial_arrays=...)``. Each round it

1. sends the global model with the round's public settings (:class:`RoundSpec`);
2. receives one encrypted vector per node (ciphertexts only) and multiplies them into the
   encrypted sum;
3. asks ``t`` committee members for partial decryptions of that sum, verifies every proof, and
   asks other share holders in place of any that fail or do not answer in time, while ``t``
   remain;
4. combines ``t`` verified partial decryptions and takes the FedAvg step.

The strategy holds the threshold *public* key only; no share and no single node's update
ever reaches it. Flower's ``aggregate_train`` receives no grid, so the strategy keeps the grid
it is given in ``configure_train`` to send the decryption requests.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from flwr.app import ArrayRecord, ConfigRecord, Message, MessageType, MetricRecord, RecordDict
from flwr.serverapp import Grid
from flwr.serverapp.strategy import FedAvg

from fedcity.core.aggregation import PaillierScheme
from fedcity.core.errors import RejectedContribution
from fedcity.crypto import CryptoError, EncryptedVector, PartialDecryption, ThresholdPublicKey
from fedcity.flower.keys import load_public_key
from fedcity.flower.protocol import (
    CONFIG_KEY,
    PAYLOAD_KEY,
    STAGE_DECRYPT,
    STAGE_DISCOVER,
    STAGE_TRAIN,
    RoundSpec,
    apply_average,
    array_to_bytes,
    bytes_to_array,
    flat_length,
)

__all__ = ["RoundRecord", "SecureFedAvg"]

log = logging.getLogger(__name__)


@dataclass
class RoundRecord:
    """What happened in one secure round (kept in ``SecureFedAvg.rounds_``).

    Attributes
    ----------
    server_round : int
    contributors : list of int
        Node ids whose encrypted update entered the sum.
    rejected : dict of int to str
        Node ids whose reply was refused, with the reason.
    decryptors : list of int
        Node ids whose verified partial decryption was combined.
    failed_decryptors : dict of int to str
        Node ids asked to decrypt that failed, did not answer in time, or sent a partial
        decryption whose proof did not verify.
    waves : int
        Rounds of decryption requests sent.
    upload_bytes : int
        Ciphertext bytes received from the contributors (payload arrays only).
    decrypt_bytes : int
        Bytes of aggregates sent and partial decryptions received.
    released : bool
        Whether the round produced a new global model.
    """

    server_round: int
    contributors: list[int] = field(default_factory=list)
    rejected: dict[int, str] = field(default_factory=dict)
    decryptors: list[int] = field(default_factory=list)
    failed_decryptors: dict[int, str] = field(default_factory=dict)
    waves: int = 0
    upload_bytes: int = 0
    decrypt_bytes: int = 0
    released: bool = False


class SecureFedAvg(FedAvg):
    """FedAvg whose updates are added under packed threshold Paillier encryption.

    Parameters
    ----------
    public_key : ThresholdPublicKey or str or path-like
        The federation's threshold public key (``public.json`` of
        :func:`~fedcity.flower.deal_flower_keys`). A share file is refused.
    clip : float, default 1.0
        Each coordinate of a node's update (local minus global model) is clipped to
        ``[-clip, clip]`` before quantization.
    precision_bits : int, default 20
        Quantization bits per value.
    max_weight : float, default 1000.0
        Public cap ``W`` on a node's sample weight; weights are encrypted as ``min(w, W)/W``.
        Set it near the largest expected sample count: the error of the average grows as
        the typical weight falls below it.
    min_contributions : int, default 2
        Fewest encrypted updates a round releases (nodes refuse fewer by their own policy).
    decrypt_timeout : float, default 60.0
        Seconds to wait for each wave of partial decryptions.
    spare_decryptors : int, default 0
        Extra share holders asked in the first wave, so one dropout costs no second wave
        (each spare spends a partial decryption).
    **kwargs
        Passed to :class:`flwr.serverapp.strategy.FedAvg` (``fraction_train``,
        ``min_train_nodes``, ``weighted_by_key``, ``arrayrecord_key``, ...).

    Attributes
    ----------
    rounds_ : list of RoundRecord
        One record per aggregated round.
    holders_ : dict of int to int
        Node id → share index of the committee members heard from.
    """

    def __init__(
        self,
        public_key: ThresholdPublicKey | str | os.PathLike[str],
        *,
        clip: float = 1.0,
        precision_bits: int = 20,
        max_weight: float = 1000.0,
        min_contributions: int = 2,
        decrypt_timeout: float = 60.0,
        spare_decryptors: int = 0,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        tpk = (
            public_key
            if isinstance(public_key, ThresholdPublicKey)
            else load_public_key(public_key)
        )
        self.threshold_key = tpk
        self.clip = clip
        self.precision_bits = precision_bits
        self.max_weight = max_weight
        if isinstance(min_contributions, bool) or not isinstance(min_contributions, int):
            raise ValueError(f"min_contributions must be an integer, got {min_contributions!r}")
        if min_contributions < 1:
            raise ValueError(f"min_contributions must be >= 1, got {min_contributions}")
        if not decrypt_timeout > 0:
            raise ValueError(f"decrypt_timeout must be positive, got {decrypt_timeout!r}")
        if isinstance(spare_decryptors, bool) or not isinstance(spare_decryptors, int):
            raise ValueError(f"spare_decryptors must be an integer, got {spare_decryptors!r}")
        if spare_decryptors < 0:
            raise ValueError(f"spare_decryptors must be >= 0, got {spare_decryptors}")
        self.min_contributions = min_contributions
        self.decrypt_timeout = float(decrypt_timeout)
        self.spare_decryptors = spare_decryptors
        self._scheme = PaillierScheme(tpk)
        # validate clip / precision / weight now rather than in the first round
        self._spec(1, 1)
        self.rounds_: list[RoundRecord] = []
        self.holders_: dict[int, int] = {}
        self._non_holders: set[int] = set()
        self._grid: Grid | None = None
        self._global: ArrayRecord | None = None
        self._round_spec: RoundSpec | None = None

    def _spec(self, server_round: int, summands: int) -> RoundSpec:
        return RoundSpec(
            key_id=self.threshold_key.key_id,
            clip=self.clip,
            precision_bits=self.precision_bits,
            max_summands=max(1, summands),
            max_weight=self.max_weight,
            n_length=self.threshold_key.public_key.n_length,
            server_round=server_round,
        )

    def summary(self) -> None:
        """Log the configuration."""
        super().summary()
        tpk = self.threshold_key
        log.info(
            "fedcity: %d-of-%d threshold Paillier, %d-bit key %s, clip %g, %d bits, W=%g",
            tpk.threshold,
            tpk.parties,
            tpk.public_key.n_length,
            tpk.key_id.hex()[:8],
            self.clip,
            self.precision_bits,
            self.max_weight,
        )

    # -- train -------------------------------------------------------------------------------
    def configure_train(
        self, server_round: int, arrays: ArrayRecord, config: ConfigRecord, grid: Grid
    ) -> Iterable[Message]:
        """Sample nodes as FedAvg does and attach the round's fedcity settings."""
        messages = list(super().configure_train(server_round, arrays, config, grid))
        self._grid = grid
        self._global = arrays
        flat_length(arrays)  # bounded model size
        spec = self._spec(server_round, len(messages))
        self._round_spec = spec
        record = spec.to_config(STAGE_TRAIN)
        for m in messages:
            m.content[CONFIG_KEY] = record
        return messages

    def aggregate_train(
        self, server_round: int, replies: Iterable[Message]
    ) -> tuple[ArrayRecord | None, MetricRecord | None]:
        """Add the encrypted updates, have them threshold-decrypted, take the FedAvg step."""
        spec, global_record, grid = self._round_spec, self._global, self._grid
        if spec is None or global_record is None or grid is None:
            raise RuntimeError("aggregate_train called before configure_train")
        rec = RoundRecord(server_round)
        self.rounds_.append(rec)
        length = flat_length(global_record) + 1
        contributions: list[EncryptedVector] = []
        for msg in replies:
            nid = msg.metadata.src_node_id
            if msg.has_error():
                rec.rejected[nid] = f"error reply: {msg.error.reason}"
                continue
            try:
                self._note_holder(msg)
                payload = array_to_bytes(msg.content.array_records[PAYLOAD_KEY])
                vec = self._scheme.open(payload, spec.packing, length)
            except (KeyError, ValueError, RejectedContribution) as exc:
                rec.rejected[nid] = str(exc)
                continue
            rec.upload_bytes += len(payload)
            rec.contributors.append(nid)
            contributions.append(vec)
        for nid, reason in rec.rejected.items():
            log.warning("round %d: node %d contributed nothing: %s", server_round, nid, reason)
        if len(contributions) < self.min_contributions:
            log.warning(
                "round %d: %d encrypted update(s), fewer than min_contributions=%d; the "
                "global model stays as it was",
                server_round,
                len(contributions),
                self.min_contributions,
            )
            return None, None
        aggregate = self._scheme.add(contributions)
        total = self._threshold_decrypt(grid, spec, aggregate, rec)
        if total is None:
            return None, None
        try:
            new = apply_average(global_record, total, spec)
        except ValueError as exc:
            log.warning("round %d: %s", server_round, exc)
            return None, None
        rec.released = True
        metrics = MetricRecord(
            {
                "fedcity-contributions": len(rec.contributors),
                "fedcity-decryption-waves": rec.waves,
            }
        )
        return new, metrics

    def _note_holder(self, msg: Message) -> int:
        config = msg.content.config_records[CONFIG_KEY]
        if config.get("key-id") != self.threshold_key.key_id:
            raise ValueError("reply is under another key")
        index = config.get("share-index")
        if isinstance(index, bool) or not isinstance(index, int):
            raise ValueError(f"reply has an invalid share index {index!r}")
        if not 0 <= index <= self.threshold_key.parties:
            raise ValueError(f"reply names share {index}, outside 0..{self.threshold_key.parties}")
        nid = msg.metadata.src_node_id
        if index:
            self.holders_[nid] = index
        else:
            self._non_holders.add(nid)
        return index

    # -- threshold decryption ----------------------------------------------------------------
    def _discover(self, grid: Grid, spec: RoundSpec) -> None:
        """Ask nodes never heard from whether they hold a share (tiny messages)."""
        unknown = [
            n for n in grid.get_node_ids() if n not in self.holders_ and n not in self._non_holders
        ]
        if not unknown:
            return
        record = RecordDict({CONFIG_KEY: spec.to_config(STAGE_DISCOVER)})
        msgs = [Message(record, dst_node_id=n, message_type=MessageType.TRAIN) for n in unknown]
        for reply in grid.send_and_receive(msgs, timeout=self.decrypt_timeout):
            if not reply.has_error():
                try:
                    self._note_holder(reply)
                except (KeyError, ValueError) as exc:
                    log.warning("node %d: %s", reply.metadata.src_node_id, exc)

    def _threshold_decrypt(
        self, grid: Grid, spec: RoundSpec, aggregate: EncryptedVector, rec: RoundRecord
    ) -> Any:
        t = self.threshold_key.threshold
        discovered = False
        agg_bytes = self._scheme.aggregate_to_bytes(aggregate)
        request = RecordDict(
            {
                PAYLOAD_KEY: bytes_to_array(agg_bytes),
                CONFIG_KEY: spec.to_config(STAGE_DECRYPT, length=aggregate.length),
            }
        )
        alive = set(rec.contributors)
        valid: dict[int, PartialDecryption] = {}
        used: dict[int, int] = {}
        tried: set[int] = set()
        while len(valid) < t:
            candidates = sorted(
                (n for n, i in self.holders_.items() if n not in tried and i not in valid),
                key=lambda n: (n not in alive, self.holders_[n]),
            )
            if not candidates and not discovered:
                self._discover(grid, spec)  # share holders not sampled for training so far
                discovered = True
                continue
            if not candidates:
                log.warning(
                    "round %d: %d valid partial decryption(s) of t=%d and no other share "
                    "holder to ask; the global model stays as it was",
                    spec.server_round,
                    len(valid),
                    t,
                )
                return None
            extra = self.spare_decryptors if rec.waves == 0 else 0
            ask = candidates[: t - len(valid) + extra]
            tried.update(ask)
            rec.waves += 1
            rec.decrypt_bytes += len(agg_bytes) * len(ask)
            msgs = [
                Message(
                    request,
                    dst_node_id=n,
                    message_type=MessageType.TRAIN,
                    group_id=str(spec.server_round),
                )
                for n in ask
            ]
            started = time.monotonic()
            replies = list(grid.send_and_receive(msgs, timeout=self.decrypt_timeout))
            answered = set()
            for reply in replies:
                nid = reply.metadata.src_node_id
                answered.add(nid)
                if reply.has_error():
                    rec.failed_decryptors[nid] = f"error reply: {reply.error.reason}"
                    continue
                try:
                    payload = array_to_bytes(reply.content.array_records[PAYLOAD_KEY])
                    rec.decrypt_bytes += len(payload)
                    pd = self._scheme.open_partial(payload, aggregate)
                except (KeyError, ValueError, RejectedContribution, CryptoError) as exc:
                    rec.failed_decryptors[nid] = str(exc)
                    continue
                if pd.share_index != self.holders_.get(nid):
                    rec.failed_decryptors[nid] = (
                        f"sent share {pd.share_index}, registered as {self.holders_.get(nid)}"
                    )
                    continue
                if len(valid) < t:
                    valid[pd.share_index] = pd
                    used[pd.share_index] = nid
            for nid in set(ask) - answered:
                rec.failed_decryptors[nid] = f"no answer within {time.monotonic() - started:.1f} s"
        for nid, reason in rec.failed_decryptors.items():
            log.warning("round %d: decryptor node %d replaced: %s", spec.server_round, nid, reason)
        rec.decryptors = [used[i] for i in sorted(used)]
        try:
            return self._scheme.release(aggregate, [valid[i] for i in sorted(valid)])
        except CryptoError as exc:  # a slot out of range: a malformed contribution
            log.warning("round %d: aggregate not released: %s", spec.server_round, exc)
            return None
