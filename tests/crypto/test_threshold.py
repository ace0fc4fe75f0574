from __future__ import annotations

import dataclasses
import itertools
import json
import math
import stat
from pathlib import Path
from typing import Any

import gmpy2
import numpy as np
import pytest
from gmpy2 import mpz
from hypothesis import given, settings
from hypothesis import strategies as st

from fedcity.crypto import (
    EncryptedVector,
    InvalidPartialDecryptionError,
    KeyFileError,
    KeyKind,
    KeyMismatchError,
    KeyShare,
    MalformedCiphertextError,
    NotEnoughSharesError,
    PackingSpec,
    PartialDecryption,
    PrivateKey,
    PublicKey,
    SlotRangeError,
    ThresholdPublicKey,
    combine_partial_decryptions,
    deal_threshold_key,
    encrypt_vector,
    partial_decrypt,
    raw_combine,
    verify_partial_decryption,
)

ThresholdKey = tuple[ThresholdPublicKey, list[KeyShare]]
KeyPair = tuple[PublicKey, PrivateKey]


def _tol(spec: PackingSpec, summands: int) -> float:
    return summands * spec.step / 2 * (1 + 1e-9) + 1e-12


@pytest.fixture(scope="module")
def vector_3of5(
    threshold_3of5: ThresholdKey, spec: PackingSpec
) -> tuple[EncryptedVector, np.ndarray, list[PartialDecryption]]:
    """A sum of three vectors under the 3-of-5 key and every share's partial decryption."""
    tpk, shares = threshold_3of5
    rng = np.random.default_rng(5)
    xs = [rng.uniform(-1.2, 1.2, 60) for _ in range(3)]
    total = sum(encrypt_vector(tpk.public_key, x, spec) for x in xs)
    expected = np.sum([np.clip(x, -1, 1) for x in xs], axis=0)
    partials = [partial_decrypt(s, total) for s in shares]
    return total, expected, partials


def _forged(partial: PartialDecryption, **changes: Any) -> PartialDecryption:
    return dataclasses.replace(partial, **changes)


# -- dealing -----------------------------------------------------------------------------------
def test_dealt_key_shape(threshold_3of5: ThresholdKey) -> None:
    tpk, shares = threshold_3of5
    pk = tpk.public_key
    assert (tpk.threshold, tpk.parties, tpk.delta) == (3, 5, math.factorial(5))
    assert pk.kind is KeyKind.THRESHOLD
    assert pk.n_length == 512 and pk.exponent_bits == 256
    assert [s.index for s in shares] == [1, 2, 3, 4, 5]
    assert all(s.threshold_key is tpk for s in shares)
    assert len(tpk.verification_keys) == 5
    assert tpk.key_id == pk.key_id
    for s in shares:  # v_i = v^(Δ s_i)
        expected = gmpy2.powmod(tpk.verification_base, tpk.delta * s._s, pk.nsquare)
        assert tpk.verification_keys[s.index - 1] == expected
    assert len({int(s._s) for s in shares}) == 5


@pytest.mark.parametrize(
    ("bits", "t", "n", "message"),
    [
        (512, 0, 3, "threshold"),
        (512, 4, 3, "threshold"),
        (512, 1, 0, "parties"),
        (264, 2, 3, "multiple of 16"),
        (240, 2, 3, ">= 256"),
    ],
)
def test_deal_validation(bits: int, t: int, n: int, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        deal_threshold_key(bits, threshold=t, parties=n)


def test_modulus_has_the_required_size() -> None:
    for bits in (256, 288):
        tpk, _ = deal_threshold_key(bits, threshold=1, parties=2)
        assert tpk.public_key.n.bit_length() == bits


# -- combination over every subset ---------------------------------------------------------------
@settings(max_examples=25, deadline=None)
@given(messages=st.lists(st.integers(0, 2**511), min_size=1, max_size=3))
def test_every_t_subset_recovers_the_message(
    threshold_3of5: ThresholdKey, messages: list[int]
) -> None:
    tpk, shares = threshold_3of5
    pk = tpk.public_key
    messages = [m % pk.n for m in messages]
    cts = [pk.raw_encrypt(m) for m in messages]
    partials = {s.index: [s.raw_partial_decrypt(c) for c in cts] for s in shares}
    for subset in itertools.combinations(range(1, 6), 3):
        assert raw_combine(tpk, {i: partials[i] for i in subset}) == messages, subset


def test_fewer_than_t_shares_do_not_decrypt(threshold_3of5: ThresholdKey) -> None:
    """Lagrange interpolation over t-1 indices does not give the plaintext."""
    tpk, shares = threshold_3of5
    pk = tpk.public_key
    m = 123456789
    c = pk.raw_encrypt(m)
    partials = {s.index: [s.raw_partial_decrypt(c)] for s in shares}
    short = dataclasses.replace(tpk, threshold=2)
    for subset in itertools.combinations(range(1, 6), 2):
        assert raw_combine(short, {i: partials[i] for i in subset}) != [m], subset
    with pytest.raises(NotEnoughSharesError, match="exactly t=3"):
        raw_combine(tpk, {1: partials[1], 2: partials[2]})
    with pytest.raises(NotEnoughSharesError, match="exactly t=3"):
        raw_combine(tpk, {i: partials[i] for i in range(1, 5)})


def test_every_t_subset_combines_a_vector(
    threshold_3of5: ThresholdKey, vector_3of5: tuple[EncryptedVector, np.ndarray, list]
) -> None:
    tpk, _ = threshold_3of5
    total, expected, partials = vector_3of5
    results = []
    for subset in itertools.combinations(partials, 3):
        out = combine_partial_decryptions(tpk, total, list(subset))
        np.testing.assert_allclose(out, expected, atol=_tol(total.spec, 3))
        results.append(out)
    assert len(results) == 10
    assert all(np.array_equal(results[0], r) for r in results)  # exactly the same plaintexts
    # more than t partials: the first t valid ones are used
    out = combine_partial_decryptions(tpk, total, list(reversed(partials)))
    np.testing.assert_array_equal(out, results[0])


def test_threshold_equals_ordinary_decryption() -> None:
    """1-of-1 and n-of-n keys decrypt like a full private key would."""
    for t, n in ((1, 1), (3, 3), (1, 4)):
        tpk, shares = deal_threshold_key(256, threshold=t, parties=n)
        pk = tpk.public_key
        m = 2**200 + 7
        c = pk.raw_encrypt(m)
        for subset in itertools.combinations(shares, t):
            got = raw_combine(tpk, {s.index: [s.raw_partial_decrypt(c)] for s in subset})
            assert got == [m]


def test_partial_decryption_is_deterministic_and_verifies(
    threshold_3of5: ThresholdKey, vector_3of5: tuple[EncryptedVector, np.ndarray, list]
) -> None:
    tpk, shares = threshold_3of5
    total, _, partials = vector_3of5
    for share, partial in zip(shares, partials, strict=True):
        assert partial.share_index == share.index
        assert partial.key_id == tpk.key_id
        assert partial.vector_digest == total.digest()
        assert len(partial.partials) == len(total.ciphertexts)
        assert len(partial.challenge) == 32
        assert verify_partial_decryption(tpk, total, partial)
        assert partial.partials == tuple(share.raw_partial_decrypt(c) for c in total.ciphertexts)
        again = partial_decrypt(share, total)
        assert again.partials == partial.partials
        assert again.response != partial.response  # fresh proof randomness


# -- rejected partial decryptions -------------------------------------------------------------
def test_tampered_partial_value(
    threshold_3of5: ThresholdKey, vector_3of5: tuple[EncryptedVector, np.ndarray, list]
) -> None:
    tpk, _ = threshold_3of5
    total, expected, partials = vector_3of5
    nsq = tpk.public_key.nsquare
    bad = list(partials[1].partials)
    bad[2] = bad[2] * 2 % nsq
    forged = _forged(partials[1], partials=tuple(bad))
    assert not verify_partial_decryption(tpk, total, forged)
    subset = [partials[0], forged, partials[2]]
    with pytest.raises(InvalidPartialDecryptionError, match="share\\(s\\) 2 ") as info:
        combine_partial_decryptions(tpk, total, subset)
    assert info.value.share_indices == (2,)
    # with skip_invalid, another t-subset of valid shares decrypts
    with_spare = [partials[0], forged, partials[2], partials[4]]
    out = combine_partial_decryptions(tpk, total, with_spare, skip_invalid=True)
    np.testing.assert_allclose(out, expected, atol=_tol(total.spec, 3))
    # without a spare, skipping is not enough
    with pytest.raises(InvalidPartialDecryptionError) as info:
        combine_partial_decryptions(tpk, total, subset, skip_invalid=True)
    assert info.value.share_indices == (2,)


def test_sign_flipped_partial_is_rejected(
    threshold_3of5: ThresholdKey, vector_3of5: tuple[EncryptedVector, np.ndarray, list]
) -> None:
    """-1 vanishes in P^2, but it changes the batch weights the proof is bound to."""
    tpk, _ = threshold_3of5
    total, _, partials = vector_3of5
    nsq = tpk.public_key.nsquare
    bad = list(partials[0].partials)
    bad[0] = nsq - bad[0]
    assert not verify_partial_decryption(tpk, total, _forged(partials[0], partials=tuple(bad)))


def test_another_shares_partials_under_this_index(
    threshold_3of5: ThresholdKey, vector_3of5: tuple[EncryptedVector, np.ndarray, list]
) -> None:
    tpk, _ = threshold_3of5
    total, _, partials = vector_3of5
    # share 4's honest partials and proof, relabelled as share 5
    relabelled = _forged(partials[3], share_index=5)
    assert not verify_partial_decryption(tpk, total, relabelled)
    # share 4's partials with share 5's proof
    mixed = _forged(partials[4], partials=partials[3].partials)
    assert not verify_partial_decryption(tpk, total, mixed)
    with pytest.raises(InvalidPartialDecryptionError, match="5") as info:
        combine_partial_decryptions(tpk, total, [partials[0], partials[1], mixed])
    assert info.value.share_indices == (5,)


@pytest.mark.parametrize(
    "change",
    ["response+1", "response-negative", "challenge", "key_id", "index0", "index6", "short"],
)
def test_forged_proof_fields(
    threshold_3of5: ThresholdKey,
    vector_3of5: tuple[EncryptedVector, np.ndarray, list],
    change: str,
) -> None:
    tpk, _ = threshold_3of5
    total, _, partials = vector_3of5
    p = partials[2]
    forged = {
        "response+1": lambda: _forged(p, response=p.response + 1),
        "response-negative": lambda: _forged(p, response=-p.response),
        "challenge": lambda: _forged(p, challenge=bytes(32)),
        "key_id": lambda: _forged(p, key_id=bytes(16)),
        "index0": lambda: _forged(p, share_index=0),
        "index6": lambda: _forged(p, share_index=6),
        "short": lambda: _forged(p, partials=p.partials[:-1]),
    }[change]()
    assert verify_partial_decryption(tpk, total, p)
    assert not verify_partial_decryption(tpk, total, forged)


def test_non_unit_partial_is_rejected(
    threshold_3of5: ThresholdKey, vector_3of5: tuple[EncryptedVector, np.ndarray, list]
) -> None:
    tpk, _ = threshold_3of5
    total, _, partials = vector_3of5
    for value in (mpz(0), tpk.public_key.n, tpk.public_key.nsquare):
        forged = _forged(partials[0], partials=(value, *partials[0].partials[1:]))
        assert not verify_partial_decryption(tpk, total, forged)


def test_partial_for_a_different_vector(
    threshold_3of5: ThresholdKey,
    vector_3of5: tuple[EncryptedVector, np.ndarray, list],
    spec: PackingSpec,
) -> None:
    tpk, shares = threshold_3of5
    total, _, partials = vector_3of5
    other = total + encrypt_vector(tpk.public_key, np.zeros(total.length), spec)
    stale = partial_decrypt(shares[0], other)
    assert stale.vector_digest != total.digest()
    assert not verify_partial_decryption(tpk, total, stale)
    # same ciphertexts, but the partial names the other vector's digest
    assert not verify_partial_decryption(
        tpk, total, _forged(partials[0], vector_digest=other.digest())
    )
    with pytest.raises(InvalidPartialDecryptionError, match="share\\(s\\) 1 ") as info:
        combine_partial_decryptions(tpk, total, [stale, partials[1], partials[2]])
    assert info.value.share_indices == (1,)


def test_not_enough_partials(
    threshold_3of5: ThresholdKey, vector_3of5: tuple[EncryptedVector, np.ndarray, list]
) -> None:
    tpk, _ = threshold_3of5
    total, _, partials = vector_3of5
    for k in (0, 1, 2):
        with pytest.raises(NotEnoughSharesError, match="needs t=3"):
            combine_partial_decryptions(tpk, total, partials[:k])


def test_duplicate_share_index(
    threshold_3of5: ThresholdKey, vector_3of5: tuple[EncryptedVector, np.ndarray, list]
) -> None:
    tpk, _ = threshold_3of5
    total, _, partials = vector_3of5
    with pytest.raises(InvalidPartialDecryptionError, match="share 2 appears twice") as info:
        combine_partial_decryptions(tpk, total, [partials[1], partials[0], partials[1]])
    assert info.value.share_indices == (2,)


def test_vector_under_another_key(
    threshold_3of5: ThresholdKey,
    threshold_2of3: ThresholdKey,
    keypair: KeyPair,
    spec: PackingSpec,
    vector_3of5: tuple[EncryptedVector, np.ndarray, list],
) -> None:
    tpk, shares = threshold_3of5
    foreign = encrypt_vector(keypair[0], [0.1] * 10, spec)
    with pytest.raises(KeyMismatchError, match="share 1"):
        partial_decrypt(shares[0], foreign)
    other_tpk, other_shares = threshold_2of3
    with pytest.raises(KeyMismatchError):
        partial_decrypt(other_shares[0], vector_3of5[0])
    with pytest.raises(KeyMismatchError):
        combine_partial_decryptions(other_tpk, vector_3of5[0], vector_3of5[2])
    # partials made under the 2-of-3 key are rejected by the 3-of-5 key's verifier
    other_vec = encrypt_vector(other_tpk.public_key, [0.1] * 10, spec)
    other_partial = partial_decrypt(other_shares[0], other_vec)
    assert not verify_partial_decryption(tpk, other_vec, other_partial)


def test_combined_slot_out_of_range(threshold_2of3: ThresholdKey, spec: PackingSpec) -> None:
    tpk, shares = threshold_2of3
    pk = tpk.public_key
    s, w = spec.slots_per_ciphertext, spec.slot_bits
    packed = spec.pack(np.zeros(40, dtype=np.uint64))
    packed[1] += (spec.levels + 1) << (w * 3)
    crafted = EncryptedVector(pk, spec, 40, 1, [pk.raw_encrypt(m) for m in packed])
    partials = [partial_decrypt(sh, crafted) for sh in shares[:2]]
    with pytest.raises(SlotRangeError) as info:
        combine_partial_decryptions(tpk, crafted, partials)
    assert (info.value.position, info.value.ciphertext) == (s + 3, 1)


# -- key objects -------------------------------------------------------------------------------
def test_share_validation(threshold_3of5: ThresholdKey) -> None:
    tpk, shares = threshold_3of5
    for index in (0, 6):
        with pytest.raises(ValueError, match=r"\[1, 5\]"):
            KeyShare(tpk, index, shares[0]._s)
    with pytest.raises(ValueError, match="share 2 does not match"):
        KeyShare(tpk, 2, shares[0]._s)
    with pytest.raises(ValueError, match="does not match"):
        KeyShare(tpk, 1, shares[0]._s + 1)


def test_threshold_public_key_validation(threshold_3of5: ThresholdKey) -> None:
    tpk, _ = threshold_3of5
    with pytest.raises(ValueError, match="threshold"):
        dataclasses.replace(tpk, threshold=0)
    with pytest.raises(ValueError, match="threshold"):
        dataclasses.replace(tpk, threshold=6)
    with pytest.raises(ValueError, match="4 verification keys for 5"):
        dataclasses.replace(tpk, verification_keys=tpk.verification_keys[:4])
    with pytest.raises(MalformedCiphertextError):
        dataclasses.replace(tpk, verification_base=mpz(0))
    with pytest.raises(MalformedCiphertextError, match="position 3"):
        keys = list(tpk.verification_keys)
        keys[2] = tpk.public_key.n
        dataclasses.replace(tpk, verification_keys=tuple(keys))


def _secret_spellings(value: int) -> list[str]:
    return [str(value), format(value, "x"), format(value, "X")]


def test_share_repr_hides_the_share(threshold_3of5: ThresholdKey) -> None:
    tpk, shares = threshold_3of5
    for share in shares:
        text = repr(share) + str(share)
        assert f"{share.index}/5" in text and "t=3" in text
        for s in _secret_spellings(int(share._s)):
            assert s not in text
    assert "3-of-5" in repr(tpk)


# -- files -----------------------------------------------------------------------------------
def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_files_round_trip(
    threshold_3of5: ThresholdKey,
    vector_3of5: tuple[EncryptedVector, np.ndarray, list],
    tmp_path: Path,
) -> None:
    tpk, shares = threshold_3of5
    total, expected, partials = vector_3of5
    tpk.save(str(tmp_path / "threshold.pub.json"))
    assert _mode(tmp_path / "threshold.pub.json") == 0o644
    loaded_tpk = ThresholdPublicKey.load(str(tmp_path / "threshold.pub.json"))
    assert loaded_tpk.public_key == tpk.public_key
    assert loaded_tpk.public_key.djn_base == tpk.public_key.djn_base
    assert loaded_tpk.public_key.kind is KeyKind.THRESHOLD
    assert (loaded_tpk.threshold, loaded_tpk.parties) == (3, 5)
    assert loaded_tpk.verification_base == tpk.verification_base
    assert loaded_tpk.verification_keys == tpk.verification_keys
    for share in shares:
        path = tmp_path / f"share{share.index}.json"
        share.save(str(path))
        assert _mode(path) == 0o600
    loaded = [KeyShare.load(str(tmp_path / f"share{i}.json")) for i in (2, 4, 5)]
    assert [s.index for s in loaded] == [2, 4, 5]
    assert all(s._s == shares[s.index - 1]._s for s in loaded)
    fresh = [partial_decrypt(s, total) for s in loaded]
    assert all(verify_partial_decryption(tpk, total, p) for p in fresh)
    out = combine_partial_decryptions(loaded_tpk, total, [fresh[0], partials[0], fresh[2]])
    np.testing.assert_allclose(out, expected, atol=_tol(total.spec, 3))


def test_files_refuse_to_overwrite(threshold_2of3: ThresholdKey, tmp_path: Path) -> None:
    tpk, shares = threshold_2of3
    path = tmp_path / "x.json"
    shares[0].save(str(path))
    before = path.read_text()
    with pytest.raises(KeyFileError, match="refusing to overwrite"):
        shares[1].save(str(path))
    with pytest.raises(KeyFileError, match="refusing to overwrite"):
        tpk.save(str(path))
    assert path.read_text() == before
    assert [p.name for p in tmp_path.iterdir()] == ["x.json"]


@pytest.fixture
def share_json(threshold_2of3: ThresholdKey) -> dict[str, Any]:
    return threshold_2of3[1][1].to_json_dict()


def _load_share(tmp_path: Path, data: Any) -> KeyShare:
    path = tmp_path / "share.json"
    path.write_text(data if isinstance(data, str) else json.dumps(data))
    return KeyShare.load(str(path))


def _edit(data: dict[str, Any], dotted: str, value: Any) -> dict[str, Any]:
    out = json.loads(json.dumps(data))
    *parents, last = dotted.split(".")
    target = out
    for key in parents:
        target = target[key]
    if value is _DELETE:
        del target[last]
    else:
        target[last] = value
    return out


_DELETE = object()


@pytest.mark.parametrize(
    ("field", "value", "message"),
    [
        ("format", "fedcity.paillier.private-key", "expected a 'fedcity.paillier.key-share'"),
        ("version", 0, "version 0"),
        ("key_id", "ab" * 16, "key_id does not match"),
        ("index", 3, "share 3 does not match"),
        ("index", 9, "invalid key share"),
        ("index", "two", "invalid key share"),
        ("index", _DELETE, "lacks field 'index'"),
        ("share", "12g", "not hexadecimal"),
        ("share", "-1", "not hexadecimal"),
        ("share", "1", "does not match its verification key"),
        ("share", _DELETE, "lacks field 'share'"),
        ("threshold_public_key", _DELETE, "threshold_public_key"),
        ("threshold_public_key", "none", "threshold_public_key"),
        ("threshold_public_key.format", "x", "threshold-public-key"),
        ("threshold_public_key.version", 2, "version 2"),
        ("threshold_public_key.key_id", "00" * 16, "key_id does not match"),
        ("threshold_public_key.threshold", 7, "threshold"),
        ("threshold_public_key.threshold", _DELETE, "lacks field 'threshold'"),
        ("threshold_public_key.verification_keys", "abc", "must be a list"),
        ("threshold_public_key.verification_keys", ["01"], "verification keys for 3"),
        ("threshold_public_key.verification_base", "0", "outside"),
        ("threshold_public_key.n", "zz", "not hexadecimal"),
    ],
)
def test_bad_share_files(
    share_json: dict[str, Any], tmp_path: Path, field: str, value: Any, message: str
) -> None:
    with pytest.raises(KeyFileError, match=message):
        _load_share(tmp_path, _edit(share_json, field, value))


def test_tampered_verification_key(share_json: dict[str, Any], tmp_path: Path) -> None:
    data = json.loads(json.dumps(share_json))
    vkeys = data["threshold_public_key"]["verification_keys"]
    vkeys[1], vkeys[2] = vkeys[2], vkeys[1]  # share 2 now meets share 3's key
    with pytest.raises(KeyFileError, match="share 2 does not match"):
        _load_share(tmp_path, data)


def test_corrupt_share_and_public_files(tmp_path: Path) -> None:
    with pytest.raises(KeyFileError, match="not valid JSON"):
        _load_share(tmp_path, "{")
    with pytest.raises(KeyFileError, match="cannot read"):
        ThresholdPublicKey.load(str(tmp_path / "missing.json"))
    (tmp_path / "pub.json").write_text("[]")
    with pytest.raises(KeyFileError, match="JSON object"):
        ThresholdPublicKey.load(str(tmp_path / "pub.json"))


# -- full size ----------------------------------------------------------------------------------
@pytest.mark.slow
def test_2048_bit_threshold_aggregation() -> None:
    tpk, shares = deal_threshold_key(2048, threshold=2, parties=3)
    pk = tpk.public_key
    assert pk.n.bit_length() == 2048 and pk.kind is KeyKind.THRESHOLD
    spec = PackingSpec(clip=1.0, precision_bits=16, max_summands=100)
    rng = np.random.default_rng(2048)
    agencies = [rng.normal(0.0, 0.4, 300) for _ in range(3)]
    total = sum(encrypt_vector(pk, x, spec) for x in agencies)
    assert total.summands == 3 and len(total.ciphertexts) == 4
    partials = [partial_decrypt(s, total) for s in (shares[2], shares[0])]
    assert all(verify_partial_decryption(tpk, total, p) for p in partials)
    out = combine_partial_decryptions(tpk, total, partials)
    expected = np.sum([np.clip(x, -1, 1) for x in agencies], axis=0)
    np.testing.assert_allclose(out, expected, atol=_tol(spec, 3))
    assert np.abs(out - expected).max() > 0  # quantized, not exact: the decode really ran
    # another pair of shares gives the identical result
    pair = [partial_decrypt(shares[1], total), partials[1]]
    np.testing.assert_array_equal(combine_partial_decryptions(tpk, total, pair), out)


# -- decryption parts, partials without proof, the combination check -------------------------
@settings(max_examples=60, deadline=None)
@given(k=st.integers(1, 300), groups=st.integers(1, 40))
def test_split_parts_cover_every_ciphertext_exactly_once(k: int, groups: int) -> None:
    from fedcity.crypto.threshold import split_parts

    parts = split_parts(k, groups)
    assert len(parts) == min(k, groups)
    assert [j for a, b in parts for j in range(a, b)] == list(range(k))
    sizes = [b - a for a, b in parts]
    assert min(sizes) >= 1 and max(sizes) - min(sizes) <= 1


@pytest.mark.parametrize(("k", "groups"), [(0, 1), (3, 0), (True, 1), (3, 1.5)])
def test_split_parts_validation(k: Any, groups: Any) -> None:
    from fedcity.crypto.threshold import split_parts

    with pytest.raises(ValueError, match="positive integer"):
        split_parts(k, groups)


def test_parts_of_a_sum_are_sums_of_parts_and_decrypt_to_its_slice(
    threshold_3of5: ThresholdKey,
    vector_3of5: tuple[EncryptedVector, np.ndarray, list[PartialDecryption]],
    spec: PackingSpec,
) -> None:
    from fedcity.crypto.threshold import split_parts, vector_part

    tpk, shares = threshold_3of5
    total, expected, _ = vector_3of5
    rng = np.random.default_rng(11)
    a, b = (encrypt_vector(tpk.public_key, rng.uniform(-1, 1, 60), spec) for _ in range(2))
    slots = spec.slots_per_ciphertext
    pieces = []
    for start, stop in split_parts(len(total.ciphertexts), 2):
        assert (
            vector_part(a + b, start, stop).ciphertexts
            == (vector_part(a, start, stop) + vector_part(b, start, stop)).ciphertexts
        )
        part = vector_part(total, start, stop)
        assert part.length == min(stop * slots, total.length) - start * slots
        got = combine_partial_decryptions(
            tpk, part, [partial_decrypt(s, part) for s in shares[1:4]]
        )
        pieces.append(got)
    np.testing.assert_allclose(np.concatenate(pieces), expected, atol=_tol(spec, 3))
    with pytest.raises(ValueError, match="non-empty range"):
        vector_part(total, 1, 1)


def test_a_partial_without_proof_is_proven_later_for_the_same_values(
    threshold_3of5: ThresholdKey,
    vector_3of5: tuple[EncryptedVector, np.ndarray, list[PartialDecryption]],
) -> None:
    from fedcity.crypto.threshold import prove_partial_decryption

    tpk, shares = threshold_3of5
    total, _, proven = vector_3of5
    bare = partial_decrypt(shares[0], total, prove=False)
    assert not bare.proven and bare.partials == proven[0].partials
    assert not verify_partial_decryption(tpk, total, bare)
    later = prove_partial_decryption(shares[0], total, bare)
    assert later.proven and later.partials == bare.partials
    assert verify_partial_decryption(tpk, total, later)
    # proving values that are not this share's partials gives a proof that fails
    wrong = _forged(
        bare, partials=(bare.partials[0] * 4 % tpk.public_key.nsquare, *bare.partials[1:])
    )
    assert not verify_partial_decryption(
        tpk, total, prove_partial_decryption(shares[0], total, wrong)
    )
    with pytest.raises(ValueError, match="does not belong"):
        prove_partial_decryption(shares[1], total, bare)


def test_the_combination_check_catches_garbage_but_not_a_crafted_shift(
    threshold_3of5: ThresholdKey,
) -> None:
    """``raw_combine(check=True)``: a value that is not a decryption raises, naming no
    share; a partial multiplied by (1+n)^y combines to a shifted plaintext (only proofs
    catch that, as the docstring says)."""
    tpk, shares = threshold_3of5
    pk = tpk.public_key
    n, nsq = pk.n, pk.nsquare
    m = 987654321
    c = pk.raw_encrypt(m)
    honest = {s.index: [s.raw_partial_decrypt(c)] for s in shares[:3]}
    assert raw_combine(tpk, honest, check=True) == [m]
    garbage = dict(honest)
    garbage[1] = [honest[1][0] * 3 % nsq]
    with pytest.raises(InvalidPartialDecryptionError, match="do not combine") as info:
        raw_combine(tpk, garbage, check=True)
    assert info.value.share_indices == ()
    shifted = dict(honest)
    shifted[1] = [honest[1][0] * gmpy2.powmod(1 + n, 12345, nsq) % nsq]
    out = raw_combine(tpk, shifted, check=True)  # passes the check ...
    assert out != [m]  # ... with a plaintext the cheater moved


@settings(max_examples=20, deadline=None)
@given(m=st.integers(0, 2**500), subset=st.sampled_from(list(itertools.combinations(range(5), 3))))
def test_every_t_subset_decrypts_under_the_combination_check(
    threshold_3of5: ThresholdKey, m: int, subset: tuple[int, ...]
) -> None:
    tpk, shares = threshold_3of5
    pk = tpk.public_key
    m %= pk.n
    c = pk.raw_encrypt(m)
    chosen = {shares[i].index: [shares[i].raw_partial_decrypt(c)] for i in subset}
    assert raw_combine(tpk, chosen, check=True) == [m]


@settings(max_examples=20, deadline=None)
@given(z=st.integers(0, 2**3000))
def test_the_verification_base_table_equals_powmod(threshold_3of5: ThresholdKey, z: int) -> None:
    """Prover and verifier raise v through a cached fixed-base table (powmod past its size)."""
    from fedcity.crypto.threshold import _response_bits, _v_pow

    tpk, _ = threshold_3of5
    nsq = tpk.public_key.nsquare
    for e in (z % (1 << (_response_bits(tpk) + 1)), z):
        assert _v_pow(tpk, e) == gmpy2.powmod(tpk.verification_base, e, nsq)
