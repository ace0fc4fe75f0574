"""Signed updates: committee members decrypt only the product of signed contributions."""

from __future__ import annotations

import stat
from pathlib import Path

import numpy as np
import pytest
from conftest import NODES
from flower_apps import LocalGrid, initial_arrays, make_client_app, node_id_of, plain_fedavg
from flwr.app import Array, ArrayRecord, ConfigRecord, Message, MessageType, RecordDict

from fedcity.crypto import EncryptedVector
from fedcity.flower import FlowerKeyFiles, SecureAggregationMod, SecureFedAvg, deal_flower_keys
from fedcity.flower.__main__ import main as cli
from fedcity.flower.keys import load_verify_keys
from fedcity.flower.protocol import (
    CONFIG_KEY,
    EVIDENCE_KEY,
    PAYLOAD_KEY,
    STAGE_DECRYPT,
    array_to_bytes,
    bytes_to_array,
)


@pytest.fixture(scope="module")
def signed(tmp_path_factory: pytest.TempPathFactory) -> FlowerKeyFiles:
    root: Path = tmp_path_factory.mktemp("signed-keys")
    return deal_flower_keys(root, NODES, threshold=2, committee=3, key_bits=512, signed=True)


def strategy(keys: FlowerKeyFiles, **kw: object) -> SecureFedAvg:
    return SecureFedAvg(
        keys.public,
        max_weight=100.0,
        fraction_evaluate=0.0,
        min_train_nodes=NODES,
        **kw,  # type: ignore[arg-type]
    )


def test_dealer_writes_signing_keys_and_the_committee_verify_list(signed: FlowerKeyFiles) -> None:
    assert signed.signed
    for name, path in signed.nodes.items():
        signing = path.parent / "signing.json"
        assert stat.S_IMODE(signing.stat().st_mode) == 0o600
        listing = path.parent / "verify-keys.json"
        assert listing.exists() == (name in signed.committee)
    keys = load_verify_keys(signed.root / "verify-keys.json")
    assert keys is not None and sorted(keys) == sorted(signed.nodes)


def test_signed_round_equals_plaintext_fedavg(signed: FlowerKeyFiles) -> None:
    s = strategy(signed, signed=True)
    grid = LocalGrid(make_client_app([SecureAggregationMod(key_dir=signed.root)]), NODES)
    result = s.start(grid=grid, initial_arrays=initial_arrays(), num_rounds=1, timeout=30)
    assert s.rounds_[0].released and not s.rounds_[0].failed_decryptors
    want = plain_fedavg(NODES, 1)
    for n in want:
        assert np.max(np.abs(result.arrays[n].numpy().astype(np.float64) - want[n])) < 1e-4
    # each member downloaded every update with the sum
    assert s.rounds_[0].decrypt_bytes > len(s.rounds_[0].decryptors) * s.rounds_[0].upload_bytes


def test_members_with_a_verify_list_refuse_an_unsigned_sum(signed: FlowerKeyFiles) -> None:
    s = strategy(signed)  # signed=False: no evidence is sent
    grid = LocalGrid(make_client_app([SecureAggregationMod(key_dir=signed.root)]), NODES)
    s.start(grid=grid, initial_arrays=initial_arrays(), num_rounds=1, timeout=30)
    rec = s.rounds_[0]
    # the two asked refuse; the third alone cannot reach t = 2, so it is not asked
    assert not rec.released and len(rec.failed_decryptors) == 2
    assert all("signed contributions" in r for r in rec.failed_decryptors.values())


def test_a_signed_strategy_rejects_unsigned_updates(keys: FlowerKeyFiles) -> None:
    s = strategy(keys, signed=True)  # the session's keys have no signing keys
    grid = LocalGrid(make_client_app([SecureAggregationMod(key_dir=keys.root)]), NODES)
    s.start(grid=grid, initial_arrays=initial_arrays(), num_rounds=1, timeout=30)
    rec = s.rounds_[0]
    assert not rec.released and all("unsigned" in r for r in rec.rejected.values())


def test_a_server_cannot_pass_one_update_off_as_the_sum(signed: FlowerKeyFiles) -> None:
    """The attack signing closes: one node's ciphertexts labelled as a sum of all."""
    s = strategy(signed, signed=True)
    grid = LocalGrid(make_client_app([SecureAggregationMod(key_dir=signed.root)]), NODES)
    msgs = list(s.configure_train(1, initial_arrays(), ConfigRecord(), grid))
    replies = list(grid.send_and_receive(msgs))
    spec = s._round_spec
    assert spec is not None
    length = sum(a.numpy().size for a in initial_arrays().values()) + 1
    payloads = [array_to_bytes(r.content[PAYLOAD_KEY]) for r in replies]
    vecs = [s._scheme.open(p, spec.packing, length) for p in payloads]
    names = [r.content[CONFIG_KEY]["agency"] for r in replies]
    sigs = [r.content[CONFIG_KEY]["signature"] for r in replies]

    def ask(vector: EncryptedVector, agencies: list[str], signatures: list[bytes]) -> Message:
        evidence = ArrayRecord(
            {str(j): Array(np.frombuffer(p, dtype=np.uint8).copy()) for j, p in enumerate(payloads)}
        )
        config = spec.to_config(
            STAGE_DECRYPT, length=length, agencies=agencies, signatures=signatures
        )
        content = RecordDict(
            {
                PAYLOAD_KEY: bytes_to_array(s._scheme.aggregate_to_bytes(vector)),
                CONFIG_KEY: config,
                EVIDENCE_KEY: evidence,
            }
        )
        req = Message(content, dst_node_id=node_id_of(0), message_type=MessageType.TRAIN)
        [reply] = grid.send_and_receive([req])
        return reply

    pk = vecs[0].public_key
    relabelled = EncryptedVector(pk, vecs[0].spec, length, NODES, vecs[0].ciphertexts)
    bad = ask(relabelled, names, sigs)
    assert bad.has_error() and "not the product" in bad.error.reason
    forged = ask(s._scheme.add(vecs), names, [sigs[1], *sigs[1:]])
    assert forged.has_error() and "does not verify" in forged.error.reason
    stranger = ask(s._scheme.add(vecs), ["node-99", *names[1:]], sigs)
    assert stranger.has_error() and "not a node of this federation" in stranger.error.reason
    twice = ask(s._scheme.add(vecs), [names[0], names[0], *names[2:]], sigs)
    assert twice.has_error() and "twice" in twice.error.reason
    assert not ask(s._scheme.add(vecs), names, sigs).has_error()  # the honest sum


def test_cli_deals_signed_keys(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    args = ["deal", str(tmp_path / "k"), "--nodes", "3", "--threshold", "2"]
    code = cli([*args, "--key-bits", "512", "--signed"])
    assert code == 0
    assert (tmp_path / "k" / "nodes" / "node-2" / "signing.json").exists()
    assert (tmp_path / "k" / "verify-keys.json").exists()
