"""The server side: FedAvg over packed threshold Paillier ciphertexts.

:class:`SecureFedAvg` is a drop-in for :class:`flwr.serverapp.strategy.FedAvg`: swap the class
and keep ``strategy.start(grid=..., initial_arrays=...)``. Each round it

1. sends the global model with the round's public settings (:class:`RoundSpec`);
2. receives one encrypted vector per node (ciphertexts only) and multiplies them into the
   encrypted sum;
3. cuts the sum into blocks, gives each block to ``t`` of the committee members that just
   trained (:func:`~fedcity.flower.protocol.plan_decryption`: each member decrypts about
   ``t/k`` of the sum), verifies every member's batched proof, and asks other share holders
   for the blocks of any member that fails or does not answer in time, while ``t`` remain;
4. combines each block's ``t`` verified partial decryptions and takes the FedAvg step (and
   releases the sample-weighted average of the requested train metrics).

With ``signed=True`` every update must be signed and each member is sent the signed updates
with the sum, to check the sum is their product before it decrypts.

The strategy holds the threshold *public* key only; no share and no single node's update
ever reaches it. Flower's ``aggregate_train`` receives no grid, so the strategy keeps the grid
it is given in ``configure_train`` to send the decryption requests.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from flwr.app import (
    Array,
    ArrayRecord,
    ConfigRecord,
    Message,
    MessageType,
    MetricRecord,
    RecordDict,
)
from flwr.serverapp import Grid
from flwr.serverapp.strategy import FedAvg

from fedcity.core.aggregation import PaillierScheme
from fedcity.core.errors import RejectedContribution
from fedcity.crypto import CryptoError, EncryptedVector, ThresholdPublicKey, raw_combine
from fedcity.crypto.vector import decode_plaintexts
from fedcity.flower.keys import load_public_key
from fedcity.flower.protocol import (
    CONFIG_KEY,
    EVIDENCE_KEY,
    PAYLOAD_KEY,
    SECAGG_PLUS_ACCURACY,
    STAGE_DECRYPT,
    STAGE_DISCOVER,
    STAGE_TRAIN,
    RoundSpec,
    aggregate_view,
    array_to_bytes,
    bytes_to_array,
    flat_length,
    flat_parts,
    merge_ranges,
    plan_decryption,
    precision_for,
    split_average,
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
    precision_bits : int, optional
        Quantization bits per value. Default: the fewest bits whose rounding error at
        ``clip`` is at most ``accuracy`` (:func:`~fedcity.flower.protocol.precision_for`,
        the policy of fedcity's own FedAvg): 20 bits at the default clip of 1.
    accuracy : float, optional
        Largest rounding error of one value of a node's weighted update, used when
        ``precision_bits`` is not given. Default ``2^-19`` (≈ 1.9e-6): deterministic
        rounding to the step of Flower's SecAgg+ at its defaults (clip 8, 2^22 levels).
    max_weight : float, default 1000.0
        Public cap ``W`` on a node's sample weight; weights are encrypted as ``min(w, W)/W``.
        Set it near the largest expected sample count: the error of the average grows as
        the typical weight falls below it.
    train_metrics : sequence of str, default ()
        Train metrics (names in the ClientApp's train MetricRecord) that every node encrypts
        with its update; their sample-weighted averages over the contributors are released
        in the round's MetricRecord (as plain FedAvg aggregates train metrics), never a
        single node's value. A node lacking one sends an error instead of an update.
    metric_bound : float, default 100.0
        Public bound ``B``: metrics are clipped to ``[-B, B]``; the rounding error of a
        released metric average is ``B/clip`` times that of a model coordinate.
    min_contributions : int, default 2
        Fewest encrypted updates a round releases (nodes refuse fewer by their own policy).
    decrypt_timeout : float, default 60.0
        Seconds to wait for each wave of partial decryptions.
    signed : bool, default False
        Require every update to be signed (keys dealt with ``signed=True``) and send each
        committee member the signed updates with the sum, so that it can check the sum is
        their product before it decrypts (members holding a ``verify-keys.json`` refuse
        otherwise). Costs each member the download of every update.
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
        precision_bits: int | None = None,
        accuracy: float | None = None,
        max_weight: float = 1000.0,
        train_metrics: Sequence[str] = (),
        metric_bound: float = 100.0,
        min_contributions: int = 2,
        decrypt_timeout: float = 60.0,
        spare_decryptors: int = 0,
        signed: bool = False,
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
        if precision_bits is not None and accuracy is not None:
            raise ValueError("give precision_bits or accuracy, not both")
        if precision_bits is None:
            acc = SECAGG_PLUS_ACCURACY if accuracy is None else accuracy
            precision_bits = precision_for(clip, acc)
        self.accuracy = accuracy
        self.precision_bits = precision_bits
        if isinstance(train_metrics, str):
            raise ValueError("train_metrics is a sequence of metric names, not one string")
        self.train_metrics = tuple(train_metrics)
        self.metric_bound = metric_bound
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
        self.signed = bool(signed)
        self._scheme = PaillierScheme(tpk)
        # validate clip / precision / weight now rather than in the first round
        self._spec(1, 1)
        self.rounds_: list[RoundRecord] = []
        self.holders_: dict[int, int] = {}
        self._non_holders: set[int] = set()
        self._grid: Grid | None = None
        self._global: ArrayRecord | None = None
        self._round_spec: RoundSpec | None = None
        self._evidence: tuple[list[str], list[bytes], list[bytes]] = ([], [], [])

    def _spec(self, server_round: int, summands: int) -> RoundSpec:
        return RoundSpec(
            key_id=self.threshold_key.key_id,
            clip=self.clip,
            precision_bits=self.precision_bits,
            max_summands=max(1, summands),
            max_weight=self.max_weight,
            n_length=self.threshold_key.public_key.n_length,
            server_round=server_round,
            metrics=self.train_metrics,
            metric_bound=self.metric_bound,
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
        length = flat_length(global_record) + len(spec.metrics) + 1
        contributions: list[EncryptedVector] = []
        agencies: list[str] = []
        signatures: list[bytes] = []
        payloads: list[bytes] = []
        for msg in replies:
            nid = msg.metadata.src_node_id
            if msg.has_error():
                rec.rejected[nid] = f"error reply: {msg.error.reason}"
                continue
            try:
                self._note_holder(msg)
                payload = array_to_bytes(msg.content.array_records[PAYLOAD_KEY])
                vec = self._scheme.open(payload, spec.packing, length)
                if self.signed:
                    config = msg.content.config_records[CONFIG_KEY]
                    agency, signature = config.get("agency"), config.get("signature")
                    if not isinstance(agency, str) or not isinstance(signature, bytes):
                        raise ValueError("unsigned update (the strategy requires signed ones)")
                    if agency in agencies:
                        raise ValueError(f"a second update signed as {agency!r}")
                    agencies.append(agency)
                    signatures.append(signature)
                    payloads.append(payload)
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
        self._evidence = (agencies, signatures, payloads)
        aggregate = self._scheme.add(contributions)
        total = self._threshold_decrypt(grid, spec, aggregate, rec)
        if total is None:
            return None, None
        try:
            new, averages = split_average(global_record, total, spec)
        except ValueError as exc:
            log.warning("round %d: %s", server_round, exc)
            return None, None
        rec.released = True
        metrics = MetricRecord(
            {
                **averages,
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
        n_ct = len(aggregate.ciphertexts)
        alive = set(rec.contributors)

        def ordered(exclude: set[int]) -> list[int]:  # live contributors first, then by share
            return sorted(
                (n for n in self.holders_ if n not in exclude),
                key=lambda n: (n not in alive, self.holders_[n]),
            )

        discovered = False
        members = ordered(set())
        if len(members) < t:
            self._discover(grid, spec)  # share holders not sampled for training so far
            discovered = True
            members = ordered(set())
        if len(members) < t:
            log.warning(
                "round %d: %d share holder(s) known, t=%d; the global model stays as it was",
                spec.server_round,
                len(members),
                t,
            )
            return None
        live = [n for n in members if n in alive]
        if len(live) >= t:  # holders that just answered; the others only as replacements
            members = live
        blocks, plan = plan_decryption(members, n_ct, t, t + self.spare_decryptors)
        pending: dict[int, list[int]] | None = plan
        agg_array = bytes_to_array(self._scheme.aggregate_to_bytes(aggregate))
        agg_size = int(agg_array["bytes"].shape[0])
        got: list[dict[int, tuple[Any, ...]]] = [{} for _ in blocks]  # share index -> values
        node_of: dict[int, int] = {}
        asked: dict[int, set[int]] = {}
        failed: set[int] = set()
        while pending:
            rec.waves += 1
            self._decrypt_wave(grid, spec, aggregate, agg_array, blocks, pending, got, rec)
            evidence_size = sum(map(len, self._evidence[2])) if self.signed else 0
            rec.decrypt_bytes += (agg_size + evidence_size) * len(pending)
            for nid, bs in pending.items():
                asked.setdefault(nid, set()).update(bs)
            failed.update(rec.failed_decryptors)
            node_of.update({i: n for n, i in self.holders_.items()})
            missing = [b for b in range(len(blocks)) if len(got[b]) < t]
            if not missing:
                break
            pending = self._replacements(blocks, missing, got, asked, ordered(failed), t)
            if pending is None and not discovered:
                self._discover(grid, spec)
                discovered = True
                pending = self._replacements(blocks, missing, got, asked, ordered(failed), t)
            if pending is None:
                log.warning(
                    "round %d: %d block(s) of the aggregate lack t=%d valid partial "
                    "decryptions and no other share holder can be asked; the global model "
                    "stays as it was",
                    spec.server_round,
                    len(missing),
                    t,
                )
                self._log_failures(spec, rec)
                return None
        self._log_failures(spec, rec)
        plaintexts: list[Any] = []
        combined: set[int] = set()
        try:
            for b in range(len(blocks)):
                chosen = dict(sorted(got[b].items())[:t])
                combined.update(chosen)
                plaintexts.extend(raw_combine(self.threshold_key, chosen, check=True))
            rec.decryptors = [node_of[i] for i in sorted(combined)]
            return decode_plaintexts(
                aggregate.spec, plaintexts, aggregate.length, aggregate.summands
            )
        except CryptoError as exc:  # a slot out of range: a malformed contribution
            log.warning("round %d: aggregate not released: %s", spec.server_round, exc)
            return None

    def _log_failures(self, spec: RoundSpec, rec: RoundRecord) -> None:
        for nid, reason in rec.failed_decryptors.items():
            log.warning("round %d: decryptor node %d replaced: %s", spec.server_round, nid, reason)

    def _replacements(
        self,
        blocks: list[tuple[int, int]],
        missing: list[int],
        got: list[dict[int, tuple[Any, ...]]],
        asked: dict[int, set[int]],
        candidates: list[int],
        t: int,
    ) -> dict[int, list[int]] | None:
        """Share holders to ask for the blocks still short of ``t`` partials (least loaded)."""
        load = {n: sum(blocks[b][1] - blocks[b][0] for b in asked.get(n, ())) for n in candidates}
        out: dict[int, list[int]] = {}
        for b in missing:
            options = [
                n
                for n in candidates
                if b not in asked.get(n, ()) and self.holders_[n] not in got[b]
            ]
            need = t - len(got[b])
            if len(options) < need:
                return None
            for n in sorted(options, key=lambda n: load[n])[:need]:
                out.setdefault(n, []).append(b)
                load[n] += blocks[b][1] - blocks[b][0]
        return out

    def _decrypt_wave(
        self,
        grid: Grid,
        spec: RoundSpec,
        aggregate: EncryptedVector,
        agg_array: ArrayRecord,
        blocks: list[tuple[int, int]],
        pending: dict[int, list[int]],
        got: list[dict[int, tuple[Any, ...]]],
        rec: RoundRecord,
    ) -> None:
        """Ask each node in ``pending`` for its blocks; file the verified partials in ``got``."""
        ranges = {n: merge_ranges(blocks, bs) for n, bs in pending.items()}
        evidence = ArrayRecord(
            {
                str(j): Array(np.frombuffer(payload, dtype=np.uint8).copy())
                for j, payload in enumerate(self._evidence[2])
            }
        )
        msgs = []
        for n in pending:
            extra: dict[str, Any] = {"length": aggregate.length}
            if ranges[n] != [(0, len(aggregate.ciphertexts))]:
                extra["parts"] = flat_parts(ranges[n])
            if self.signed:
                extra["agencies"], extra["signatures"] = self._evidence[:2]
            content = RecordDict(
                {PAYLOAD_KEY: agg_array, CONFIG_KEY: spec.to_config(STAGE_DECRYPT, **extra)}
            )
            if self.signed:
                content[EVIDENCE_KEY] = evidence
            msgs.append(
                Message(
                    content,
                    dst_node_id=n,
                    message_type=MessageType.TRAIN,
                    group_id=str(spec.server_round),
                )
            )
        started = time.monotonic()
        answered = set()
        for reply in grid.send_and_receive(msgs, timeout=self.decrypt_timeout):
            nid = reply.metadata.src_node_id
            if nid not in pending:
                continue
            answered.add(nid)
            if reply.has_error():
                rec.failed_decryptors[nid] = f"error reply: {reply.error.reason}"
                continue
            view = aggregate_view(aggregate, ranges[nid])
            try:
                payload = array_to_bytes(reply.content.array_records[PAYLOAD_KEY])
                rec.decrypt_bytes += len(payload)
                pd = self._scheme.open_partial(payload, view)
            except (KeyError, ValueError, RejectedContribution, CryptoError) as exc:
                rec.failed_decryptors[nid] = str(exc)
                continue
            if pd.share_index != self.holders_.get(nid):
                rec.failed_decryptors[nid] = (
                    f"sent share {pd.share_index}, registered as {self.holders_.get(nid)}"
                )
                continue
            pos = 0
            for start, stop in ranges[nid]:
                for b in pending[nid]:
                    bs, be = blocks[b]
                    if start <= bs and be <= stop:
                        lo, hi = pos + bs - start, pos + be - start
                        got[b][pd.share_index] = tuple(pd.partials[lo:hi])
                pos += stop - start
        for nid in set(pending) - answered:
            rec.failed_decryptors[nid] = f"no answer within {time.monotonic() - started:.1f} s"
