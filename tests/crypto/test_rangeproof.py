"""Tests of encryption openings and slot range proofs (issue 8 item 16)."""

from __future__ import annotations

import copy
import json
import pickle
from pathlib import Path

import numpy as np
import pytest
from gmpy2 import mpz
from hypothesis import given, settings
from hypothesis import strategies as st

from fedcity.crypto import (
    EncryptedVector,
    KeyShare,
    MalformedCiphertextError,
    PackingSpec,
    PrivateKey,
    PublicKey,
    SlotRangeError,
    ThresholdPublicKey,
    WorkerPool,
    combine_partial_decryptions,
    decrypt_vector,
    encrypt_vector_with_openings,
    generate_keypair,
    partial_decrypt,
)
from fedcity.crypto.rangeproof import (
    MAX_CONTEXT_BYTES,
    RangeProofError,
    SlotLayout,
    _bit_values,
    _dims,
    _prove,
    _slot_values,
    max_proof_bytes,
    prove_slot_ranges,
    verify_slot_ranges,
)

KeyPair = tuple[PublicKey, PrivateKey]
ThresholdKey = tuple[ThresholdPublicKey, list[KeyShare]]


# -- openings --------------------------------------------------------------------------------
def test_openings_reproduce_ciphertexts(
    keypair: KeyPair, spec: PackingSpec, rng: np.random.Generator
) -> None:
    pk, sk = keypair
    x = rng.uniform(-1, 1, 2 * spec.slots_per_ciphertext + 5)
    vector, openings = encrypt_vector_with_openings(pk, x, spec)
    assert len(openings) == len(vector.ciphertexts) == 3
    openings.check(vector)
    for i, c in enumerate(vector.ciphertexts):
        assert sk.raw_decrypt(c) == openings.plaintext(i)
        a = openings.exponent(i)
        assert 0 <= a < 1 << pk.exponent_bits
        assert (1 + pk.n * openings.plaintext(i)) * pow(pk.djn_base, a, pk.nsquare) % (
            pk.nsquare
        ) == c
    assert np.abs(decrypt_vector(sk, vector) - x).max() <= spec.step


def test_openings_check_names_a_wrong_ciphertext(
    keypair: KeyPair, other_keypair: KeyPair, spec: PackingSpec
) -> None:
    pk, _ = keypair
    vector, openings = encrypt_vector_with_openings(pk, np.zeros(40), spec)
    cts = list(vector.ciphertexts)
    cts[1] = cts[1] * cts[1] % pk.nsquare
    tampered = EncryptedVector(pk, spec, vector.length, 1, cts)
    with pytest.raises(MalformedCiphertextError, match="opening 1 does not reproduce"):
        openings.check(tampered)
    other, _ = encrypt_vector_with_openings(other_keypair[0], np.zeros(40), spec)
    with pytest.raises(ValueError, match="openings are for key"):
        openings.check(other)
    with pytest.raises(IndexError, match="outside"):
        openings.plaintext(len(openings))


def test_openings_reveal_nothing_and_refuse_serialization(
    keypair: KeyPair, spec: PackingSpec
) -> None:
    pk, _ = keypair
    _, openings = encrypt_vector_with_openings(pk, np.full(10, 0.5), spec)
    text = repr(openings) + str(openings)
    for i in range(len(openings)):
        assert str(openings.plaintext(i)) not in text
        assert str(openings.exponent(i)) not in text
        assert format(openings.plaintext(i), "x") not in text
    for action in (pickle.dumps, copy.copy, copy.deepcopy, lambda o: o.__getstate__()):
        with pytest.raises(TypeError, match="never"):
            action(openings)
    openings.clear()
    assert len(openings) == 0


def test_openings_from_worker_processes(
    keypair: KeyPair, spec: PackingSpec, rng: np.random.Generator
) -> None:
    pk, sk = keypair
    x = rng.uniform(-1, 1, 3 * spec.slots_per_ciphertext + 1)
    with WorkerPool(2) as pool:
        vector, openings = encrypt_vector_with_openings(pk, x, spec, pool=pool)
    openings.check(vector)
    assert [openings.plaintext(i) for i in range(len(openings))] == [
        sk.raw_decrypt(c) for c in vector.ciphertexts
    ]


# -- range proofs ----------------------------------------------------------------------------
CTX = b"job=j1|round=3|agency=A|ciphertext=0"


def _encrypt_slots(pk: PublicKey, layout: SlotLayout, values: list[int]) -> tuple[int, int, int]:
    """Return ``(c, m, a)`` for a plaintext with ``values`` in the value slots."""
    m = sum(x << (layout.slot_bits * j) for j, x in enumerate(values))
    c, a = pk._raw_encrypt_opened(m)
    return int(c), m, int(a)


def _cheat(pk: PublicKey, c: int, a: int, bits: list[int], layout: SlotLayout) -> bytes:
    """A cheating prover: the real prover's arithmetic on bits the statement does not allow."""
    return _prove(pk, mpz(c), mpz(a), bits, layout, CTX, _dims(pk, layout))


def _values_strategy() -> st.SearchStrategy[tuple[SlotLayout, list[int]]]:
    @st.composite
    def build(draw: st.DrawFn) -> tuple[SlotLayout, list[int]]:
        w = draw(st.integers(1, 24))
        n_values = draw(st.integers(1, min(12, 511 // w)))
        upper = draw(st.integers(0, (1 << w) - 1))
        values = draw(st.lists(st.integers(0, upper), min_size=n_values, max_size=n_values))
        return SlotLayout(w, n_values, upper), values

    return build()


@settings(max_examples=12, deadline=None)
@given(case=_values_strategy())
def test_completeness_for_random_in_range_slots(
    keypair: KeyPair, case: tuple[SlotLayout, list[int]]
) -> None:
    pk, _ = keypair
    layout, values = case
    c, m, a = _encrypt_slots(pk, layout, values)
    proof = prove_slot_ranges(pk, c, m, a, layout, CTX)
    assert len(proof) == max_proof_bytes(pk, layout)
    verify_slot_ranges(pk, c, proof, layout, CTX)


def test_threshold_key_and_its_paillier_key(
    threshold_2of3: ThresholdKey, spec: PackingSpec, rng: np.random.Generator
) -> None:
    tpk, shares = threshold_2of3
    x = rng.uniform(-1, 1, spec.slots_per_ciphertext + 7)
    vector, openings = encrypt_vector_with_openings(tpk.public_key, x, spec)
    for i, c in enumerate(vector.ciphertexts):
        layout = SlotLayout.for_contribution(spec, len(x), i)
        proof = prove_slot_ranges(tpk, c, openings.plaintext(i), openings.exponent(i), layout, CTX)
        verify_slot_ranges(tpk, c, proof, layout, CTX)
        verify_slot_ranges(tpk.public_key, c, proof, layout, CTX)
    partials = [partial_decrypt(s, vector) for s in shares[:2]]
    assert np.abs(combine_partial_decryptions(tpk, vector, partials) - x).max() <= spec.step


def test_short_exponent_key() -> None:
    pk, sk = generate_keypair(512, short_exponent=True)
    layout = SlotLayout(8, 5, 200)
    c, m, a = _encrypt_slots(pk, layout, [1, 200, 3, 0, 9])
    assert a < 1 << pk.exponent_bits < 1 << (pk.n_length // 2)
    proof = prove_slot_ranges(pk, c, m, a, layout, CTX)
    verify_slot_ranges(pk, c, proof, layout, CTX)
    c, m, a = _encrypt_slots(pk, layout, [1, 201, 3, 0, 9])
    bits = _bit_values(layout, [1, 200, 3, 0, 9])
    with pytest.raises(RangeProofError, match="link proof does not verify"):
        verify_slot_ranges(pk, c, _cheat(pk, c, a, bits, layout), layout, CTX)
    assert sk.raw_decrypt(c) == m


def test_contribution_layouts_cover_the_padding(spec: PackingSpec) -> None:
    s = spec.slots_per_ciphertext
    assert SlotLayout.for_contribution(spec, 2 * s + 3, 0) == SlotLayout(
        spec.slot_bits, s, spec.summand_max
    )
    assert SlotLayout.for_contribution(spec, 2 * s + 3, 2).n_values == 3
    with pytest.raises(RangeProofError, match="ciphertext index 3 outside"):
        SlotLayout.for_contribution(spec, 2 * s + 3, 3)


@pytest.mark.parametrize("upper", [(1 << 10) - 1, 1000, 513, 1])
def test_exact_bounds(keypair: KeyPair, upper: int) -> None:
    pk, _ = keypair
    layout = SlotLayout(12, 4, upper)
    c, m, a = _encrypt_slots(pk, layout, [upper, 0, upper, upper // 2])
    verify_slot_ranges(pk, c, prove_slot_ranges(pk, c, m, a, layout, CTX), layout, CTX)
    # upper + 1: the honest prover refuses, naming the slot
    c, m, a = _encrypt_slots(pk, layout, [0, upper + 1, 0, 0])
    with pytest.raises(RangeProofError, match=rf"value slot 1 exceeds upper={upper}:") as err:
        prove_slot_ranges(pk, c, m, a, layout, CTX)
    assert str(upper + 1) not in str(err.value)  # the value is not echoed
    # cheater 1: the bits of upper with the lowest one raised to 2 (sums to upper + 1)
    bits = _bit_values(layout, [0, upper, 0, 0])
    k = layout.bits_per_slot
    assert bits[k] == 1  # the decomposition of upper has its lowest bit set
    bits[k] = 2
    with pytest.raises(RangeProofError, match=r"bit proof of slot 1, bit 0 does not verify"):
        verify_slot_ranges(pk, c, _cheat(pk, c, a, bits, layout), layout, CTX)
    # cheater 2: honest bits of upper, but the ciphertext holds upper + 1
    bits = _bit_values(layout, [0, upper, 0, 0])
    with pytest.raises(RangeProofError, match="link proof does not verify"):
        verify_slot_ranges(pk, c, _cheat(pk, c, a, bits, layout), layout, CTX)


def test_wide_slots(keypair: KeyPair) -> None:
    pk, _ = keypair
    layout = SlotLayout(100, 2, (1 << 99) + 12345)
    c, m, a = _encrypt_slots(pk, layout, [layout.upper, (1 << 99) - 1])
    verify_slot_ranges(pk, c, prove_slot_ranges(pk, c, m, a, layout, CTX), layout, CTX)
    c, m, a = _encrypt_slots(pk, layout, [layout.upper + 1, 0])
    with pytest.raises(RangeProofError, match="value slot 0 exceeds upper"):
        prove_slot_ranges(pk, c, m, a, layout, CTX)


def test_weighted_bits_cover_exactly_zero_to_upper() -> None:
    for upper in [1, 2, 5, 6, 7, 8, 100, 1000, 1023, 1024]:
        layout = SlotLayout(11, 1, upper)
        om = layout.weights()
        sums = {
            sum(w for w, b in zip(om, f"{mask:0{len(om)}b}"[::-1], strict=True) if b == "1")
            for mask in range(1 << len(om))
        }
        assert sums == set(range(upper + 1)), upper
        for x in range(upper + 1):
            bits = _bit_values(layout, [x])
            assert set(bits) <= {0, 1}
            assert sum(b * w for b, w in zip(bits, om, strict=True)) == x


def test_zero_upper_proves_all_zero_slots(keypair: KeyPair) -> None:
    pk, _ = keypair
    layout = SlotLayout(5, 3, 0)
    c, m, a = _encrypt_slots(pk, layout, [0, 0, 0])
    proof = prove_slot_ranges(pk, c, m, a, layout, CTX)
    verify_slot_ranges(pk, c, proof, layout, CTX)
    c, m, a = _encrypt_slots(pk, layout, [0, 1, 0])
    with pytest.raises(RangeProofError, match="link proof does not verify"):
        verify_slot_ranges(pk, c, _cheat(pk, c, a, [], layout), layout, CTX)


def test_padding_and_bits_above_the_last_slot_are_rejected(keypair: KeyPair) -> None:
    pk, _ = keypair
    layout = SlotLayout(10, 5, 1000)
    values = [1, 2, 3, 4, 5]
    base = sum(x << (10 * j) for j, x in enumerate(values))
    for extra, what in [(7 << 50, "padding slot 5"), (1 << (pk.n_length - 2), "top bit")]:
        m = base + extra
        c, a = pk._raw_encrypt_opened(m)
        with pytest.raises(RangeProofError, match="non-zero bits above value slot 4"):
            prove_slot_ranges(pk, c, m, a, layout, CTX)
        # a cheater proves the value slots and hopes nobody looks above them
        proof = _cheat(pk, int(c), int(a), _bit_values(layout, values), layout)
        with pytest.raises(RangeProofError, match="link proof does not verify"):
            verify_slot_ranges(pk, c, proof, layout, CTX), what


def test_a_proof_binds_context_ciphertext_key_and_layout(
    keypair: KeyPair, other_keypair: KeyPair
) -> None:
    pk, _ = keypair
    layout = SlotLayout(8, 6, 200)
    values = [200, 0, 17, 99, 1, 150]
    c, m, a = _encrypt_slots(pk, layout, values)
    proof = prove_slot_ranges(pk, c, m, a, layout, CTX)
    verify_slot_ranges(pk, c, proof, layout, CTX)
    with pytest.raises(RangeProofError, match="does not verify"):
        verify_slot_ranges(pk, c, proof, layout, CTX + b"|round=4")
    c2, _, _ = _encrypt_slots(pk, layout, values)  # same plaintext, another ciphertext
    with pytest.raises(RangeProofError, match="does not verify"):
        verify_slot_ranges(pk, c2, proof, layout, CTX)
    other = other_keypair[0]
    with pytest.raises(RangeProofError):
        verify_slot_ranges(other, c % other.nsquare, proof, layout, CTX)
    with pytest.raises(RangeProofError, match=r"proof is .* bytes; .* exactly"):
        verify_slot_ranges(pk, c, proof, SlotLayout(8, 5, 200), CTX)
    with pytest.raises(RangeProofError, match="does not verify"):  # same size, other upper
        verify_slot_ranges(pk, c, proof, SlotLayout(8, 6, 201), CTX)


def test_refuses_a_wrong_opening(keypair: KeyPair) -> None:
    pk, _ = keypair
    layout = SlotLayout(8, 2, 255)
    c, m, a = _encrypt_slots(pk, layout, [3, 4])
    with pytest.raises(RangeProofError, match="does not reproduce the ciphertext"):
        prove_slot_ranges(pk, c, m + 1, a, layout, CTX)
    with pytest.raises(RangeProofError, match="does not reproduce the ciphertext"):
        prove_slot_ranges(pk, c, m, a + 1, layout, CTX)
    with pytest.raises(RangeProofError, match="DJN exponent must lie in"):
        prove_slot_ranges(pk, c, m, 1 << pk.exponent_bits, layout, CTX)
    with pytest.raises(RangeProofError, match="proven ciphertext is invalid"):
        prove_slot_ranges(pk, pk.n, m, a, layout, CTX)


def test_input_validation(keypair: KeyPair) -> None:
    pk, _ = keypair
    with pytest.raises(RangeProofError, match="upper must lie in"):
        SlotLayout(4, 2, 16)
    with pytest.raises(RangeProofError, match="slot_bits must be positive"):
        SlotLayout(0, 2, 0)
    with pytest.raises(RangeProofError, match="n_values must be an int"):
        SlotLayout(4, True, 3)
    with pytest.raises(RangeProofError, match="exceed the 511 plaintext bits"):
        max_proof_bytes(pk, SlotLayout(64, 8, 5))
    small, _ = generate_keypair(256)
    with pytest.raises(RangeProofError, match="at least 512 bits"):
        max_proof_bytes(small, SlotLayout(4, 2, 3))
    layout = SlotLayout(4, 2, 3)
    c, m, a = _encrypt_slots(pk, layout, [1, 2])
    with pytest.raises(RangeProofError, match="context is 4097 bytes"):
        prove_slot_ranges(pk, c, m, a, layout, b"x" * (MAX_CONTEXT_BYTES + 1))
    with pytest.raises(TypeError, match="context must be bytes"):
        verify_slot_ranges(pk, c, b"", layout, "ctx")  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="PublicKey or ThresholdPublicKey"):
        max_proof_bytes("key", layout)  # type: ignore[arg-type]


@pytest.fixture(scope="module")
def stored(keypair: KeyPair) -> tuple[PublicKey, SlotLayout, int, bytes]:
    pk, _ = keypair
    layout = SlotLayout(7, 4, 100)
    c, m, a = _encrypt_slots(pk, layout, [100, 0, 37, 64])
    return pk, layout, c, prove_slot_ranges(pk, c, m, a, layout, CTX)


def _offsets(pk: PublicKey, layout: SlotLayout) -> dict[str, int]:
    d = _dims(pk, layout)
    cb, nb = d.cb, d.n_bits
    e0 = 1 + 3 * nb * cb + cb
    return {
        "E": 1,
        "A": 1 + nb * cb,
        "A_L": 1 + 3 * nb * cb,
        "e0": e0,
        "z": e0 + nb * 16,
        "z_L": e0 + nb * 16 + 2 * nb * d.zb,
        "zb": d.zb,
        "K": layout.bits_per_slot,
    }


def _put(proof: bytes, at: int, value: bytes) -> bytes:
    return proof[:at] + value + proof[at + len(value) :]


def test_malformed_bytes_are_rejected_with_a_reason(
    stored: tuple[PublicKey, SlotLayout, int, bytes],
) -> None:
    pk, layout, c, proof = stored
    o = _offsets(pk, layout)
    cb = pk.ciphertext_bytes
    size = max_proof_bytes(pk, layout)
    cases: list[tuple[bytes, str]] = [
        (proof[:-1], rf"proof is {size - 1} bytes; .* exactly {size} bytes"),
        (proof + b"\0", rf"proof is {size + 1} bytes"),
        (b"", "proof is 0 bytes"),
        (b"\x02" + proof[1:], "unsupported range proof version 2"),
        (_put(proof, o["E"], bytes(cb)), r"bit commitment E \(slot 0, bit 0\) is outside"),
        (
            _put(proof, o["A_L"], int(pk.nsquare).to_bytes(cb, "big")),
            r"link commitment A_L is outside \[1, n\^2\)",
        ),
        (
            _put(proof, o["A"] + 3 * cb, int(pk.n).to_bytes(cb, "big")),
            r"OR-proof commitment A_1 \(slot 0, bit 1\) is not a unit",
        ),
        (
            _put(proof, o["z"] + (2 * o["K"] + 1) * o["zb"], b"\xff" * o["zb"]),
            r"response z_1 \(slot 1, bit 0\) exceeds its",
        ),
        (_put(proof, o["z_L"], b"\xff" * 8), "link response exceeds its"),
    ]
    for bad, message in cases:
        with pytest.raises(RangeProofError, match=message):
            verify_slot_ranges(pk, c, bad, layout, CTX)
    with pytest.raises(TypeError, match="proof must be bytes"):
        verify_slot_ranges(pk, c, "proof", layout, CTX)  # type: ignore[arg-type]


def test_flipped_bits_are_caught_and_located(
    stored: tuple[PublicKey, SlotLayout, int, bytes],
) -> None:
    pk, layout, c, proof = stored
    o = _offsets(pk, layout)
    k = o["K"]
    # a response of slot 2, bit 3, branch 0: that equation alone fails, and is named
    at = o["z"] + 2 * (2 * k + 3) * o["zb"] + o["zb"] - 1
    flipped = _put(proof, at, bytes([proof[at] ^ 1]))
    with pytest.raises(RangeProofError, match=r"slot 2, bit 3 does not verify \(branch 0\)"):
        verify_slot_ranges(pk, c, flipped, layout, CTX)
    at = o["z_L"] + o["zb"]
    flipped = _put(proof, at, bytes([proof[at] ^ 0x10]))
    with pytest.raises(RangeProofError, match="link proof does not verify"):
        verify_slot_ranges(pk, c, flipped, layout, CTX)
    rnd = np.random.default_rng(7)
    for at in rnd.integers(1, len(proof), 12):  # anywhere: commitments change the challenge
        flipped = _put(proof, int(at), bytes([proof[int(at)] ^ 0x40]))
        with pytest.raises(RangeProofError):
            verify_slot_ranges(pk, c, flipped, layout, CTX)


def test_verifying_a_stored_proof_is_deterministic(
    stored: tuple[PublicKey, SlotLayout, int, bytes],
) -> None:
    """Weights are random per verification; the verdict and the named equation are not."""
    pk, layout, c, proof = stored
    o = _offsets(pk, layout)
    at = o["z"] + (2 * 3 * o["K"] + 1) * o["zb"] + 5  # slot 3, bit 0, branch 1
    bad = _put(proof, at, bytes([proof[at] ^ 0x80]))
    messages = set()
    for _ in range(5):
        verify_slot_ranges(pk, c, proof, layout, CTX)
        with pytest.raises(RangeProofError) as err:
            verify_slot_ranges(pk, c, bad, layout, CTX)
        messages.add(str(err.value))
    assert len(messages) == 1
    assert "slot 3, bit 0 does not verify (branch 1)" in messages.pop()


def test_two_proofs_of_one_ciphertext_differ(
    stored: tuple[PublicKey, SlotLayout, int, bytes], keypair: KeyPair
) -> None:
    pk, layout, c, _ = stored
    m = keypair[1].raw_decrypt(c)
    # the prover is randomized: no commitment or response repeats between two proofs
    _, m2, a2 = _encrypt_slots(pk, layout, _slot_values(layout, m))
    assert m2 == m
    c2 = (1 + pk.n * m) * pow(pk.djn_base, a2, pk.nsquare) % pk.nsquare
    p1 = prove_slot_ranges(pk, c2, m, a2, layout, CTX)
    p2 = prove_slot_ranges(pk, c2, m, a2, layout, CTX)
    cb = pk.ciphertext_bytes
    assert p1 != p2
    assert {p1[1 + i * cb : 1 + (i + 1) * cb] for i in range(8)}.isdisjoint(
        {p2[1 + i * cb : 1 + (i + 1) * cb] for i in range(8)}
    )


def test_the_proof_bytes_carry_no_plaintext(keypair: KeyPair) -> None:
    """Weak but real: no slot value nor the plaintext appears in a fixed-width encoding."""
    pk, _ = keypair
    layout = SlotLayout(33, 2, (1 << 32) - 1)
    values = [0xC0FFEE11, 0x5EED1234]
    c, m, a = _encrypt_slots(pk, layout, values)
    proof = prove_slot_ranges(pk, c, m, a, layout, CTX)
    verify_slot_ranges(pk, c, proof, layout, CTX)
    needles = [
        m.to_bytes(w, o) for w in (pk.n_bytes, pk.ciphertext_bytes) for o in ("big", "little")
    ]
    needles += [x.to_bytes(w, o) for x in values for w in (4, 8) for o in ("big", "little")]
    for needle in needles:
        assert needle not in proof
    # control: the same check does find a value that is there
    assert values[0].to_bytes(4, "big") in proof + values[0].to_bytes(4, "big")


def test_culprit_among_contributors_is_the_one_that_cannot_prove(
    keypair: KeyPair, spec: PackingSpec, rng: np.random.Generator
) -> None:
    """Three agencies; one overflows a slot. Honest ones prove; the culprit cannot."""
    pk, sk = keypair
    length = spec.slots_per_ciphertext + 4
    contributions = {}
    for name in ("A", "B", "C"):
        vector, openings = encrypt_vector_with_openings(pk, rng.uniform(-1, 1, length), spec)
        contributions[name] = (vector, openings)
    # B overflows value 3 of ciphertext 0 by 4 summands' range (the sum still fits the slot)
    vb, ob = contributions["B"]
    m_bad = ob.plaintext(0) + ((spec.summand_max * 4) << (3 * spec.slot_bits))
    c_bad, a_bad = pk._raw_encrypt_opened(m_bad)
    vb = EncryptedVector(pk, spec, length, 1, [c_bad, *vb.ciphertexts[1:]])
    contributions["B"] = (vb, ob)
    total = sum(v for v, _ in contributions.values())
    with pytest.raises(SlotRangeError) as err:
        decrypt_vector(sk, total)
    i = err.value.ciphertext
    layout = SlotLayout.for_contribution(spec, length, i)
    verdicts = {}
    for name, (vector, openings) in contributions.items():
        context = CTX + name.encode()
        c = vector.ciphertexts[i]
        try:
            if name == "B":  # the culprit's honest software refuses; it tries to cheat instead
                with pytest.raises(RangeProofError, match="value slot 3 exceeds upper"):
                    prove_slot_ranges(pk, c, m_bad, a_bad, layout, context)
                values = _slot_values(layout, m_bad)
                values[3] = layout.upper
                bits = _bit_values(layout, values)
                proof = _prove(pk, c, a_bad, bits, layout, context, _dims(pk, layout))
            else:
                proof = prove_slot_ranges(
                    pk, c, openings.plaintext(i), openings.exponent(i), layout, context
                )
            verify_slot_ranges(pk, c, proof, layout, context)
            verdicts[name] = "ok"
        except RangeProofError as exc:
            verdicts[name] = str(exc)
    assert verdicts["A"] == verdicts["C"] == "ok"
    assert "link proof does not verify" in verdicts["B"]


def test_a_stored_version_1_proof_still_verifies() -> None:
    """Known answer: a proof made once and stored pins the wire format and the verifier."""
    data = json.loads((Path(__file__).parent / "data" / "rangeproof_v1.json").read_text())
    pk = PublicKey.from_json_dict(data["public_key"])
    layout = SlotLayout(**data["layout"])
    c = int(data["ciphertext"], 16)
    proof = bytes.fromhex(data["proof"])
    context = data["context"].encode()
    assert max_proof_bytes(pk, layout) == len(proof) == 8146
    for _ in range(3):
        verify_slot_ranges(pk, c, proof, layout, context)
    with pytest.raises(RangeProofError, match="does not verify"):
        verify_slot_ranges(pk, c, proof, layout, context[:-1])
    with pytest.raises(RangeProofError, match="another context, key, layout or ciphertext"):
        verify_slot_ranges(pk, c, proof, SlotLayout(5, 3, 21), context)
