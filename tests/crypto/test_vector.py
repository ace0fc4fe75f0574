from __future__ import annotations

import dataclasses

import numpy as np
import pytest
from gmpy2 import mpz
from hypothesis import given, settings
from hypothesis import strategies as st

from fedcity.crypto import (
    EncryptedVector,
    KeyMismatchError,
    MalformedCiphertextError,
    PackingSpec,
    PrivateKey,
    PublicKey,
    SlotRangeError,
    SpecMismatchError,
    SummandLimitError,
    decrypt_vector,
    encrypt_vector,
    generate_keypair,
)

KeyPair = tuple[PublicKey, PrivateKey]

VALUES = st.floats(min_value=-3.0, max_value=3.0, allow_nan=False, allow_infinity=False)


def _tol(spec: PackingSpec, summands: int) -> float:
    """Half a quantization step per summand, plus float rounding."""
    return summands * spec.step / 2 * (1 + 1e-9) + 1e-12


# -- round trips -------------------------------------------------------------------------------
@pytest.mark.parametrize("length", [0, 1, 25, 26, 27, 78, 100])
def test_round_trip_lengths(keypair: KeyPair, spec: PackingSpec, length: int) -> None:
    pk, sk = keypair
    x = np.linspace(-1.5, 1.5, length)
    enc = encrypt_vector(pk, x, spec)
    assert (enc.length, enc.summands) == (length, 1)
    assert len(enc.ciphertexts) == spec.n_ciphertexts(length) == -(-length // 26)
    assert enc.nbytes == len(enc.ciphertexts) * 128 == len(enc.ciphertext_bytes())
    out = decrypt_vector(sk, enc)
    assert out.shape == (length,) and out.dtype == np.float64
    np.testing.assert_allclose(out, np.clip(x, -1, 1), rtol=0, atol=_tol(spec, 1))


@settings(max_examples=40, deadline=None)
@given(x=st.lists(VALUES, min_size=1, max_size=60))
def test_decrypt_encrypt_within_half_step(keypair: KeyPair, spec: PackingSpec, x: list[float]):
    pk, sk = keypair
    out = decrypt_vector(sk, encrypt_vector(pk, x, spec))
    assert np.abs(out - np.clip(x, -1.0, 1.0)).max() <= _tol(spec, 1)


@settings(max_examples=30, deadline=None)
@given(data=st.data(), k=st.integers(1, 8), length=st.integers(1, 40))
def test_sum_of_k_vectors(
    keypair: KeyPair, spec: PackingSpec, data: st.DataObject, k: int, length: int
) -> None:
    pk, sk = keypair
    xs = [np.array(data.draw(st.lists(VALUES, min_size=length, max_size=length))) for _ in range(k)]
    total = sum(encrypt_vector(pk, x, spec) for x in xs)
    assert isinstance(total, EncryptedVector)
    assert total.summands == k
    expected = np.sum([np.clip(x, -1, 1) for x in xs], axis=0)
    assert np.abs(decrypt_vector(sk, total) - expected).max() <= _tol(spec, k)


@settings(max_examples=30, deadline=None)
@given(x=st.lists(VALUES, min_size=1, max_size=30), k=st.integers(0, 8))
def test_scalar_multiplication(keypair: KeyPair, spec: PackingSpec, x: list[float], k: int) -> None:
    pk, sk = keypair
    enc = encrypt_vector(pk, x, spec)
    for scaled in (k * enc, enc * k, enc * np.int64(k)):
        assert scaled.summands == k
        out = decrypt_vector(sk, scaled)
        assert np.abs(out - k * np.clip(x, -1, 1)).max() <= _tol(spec, k)


def test_weighted_sum(keypair: KeyPair, spec: PackingSpec, rng: np.random.Generator) -> None:
    pk, sk = keypair
    a, b = rng.uniform(-1, 1, 50), rng.uniform(-1, 1, 50)
    total = 3 * encrypt_vector(pk, a, spec) + 2 * encrypt_vector(pk, b, spec)
    assert total.summands == 5
    np.testing.assert_allclose(decrypt_vector(sk, total), 3 * a + 2 * b, atol=_tol(spec, 5))


def test_extremes_at_max_summands(keypair: KeyPair, spec: PackingSpec) -> None:
    """K summands of +clip and of -clip stay in their slots (no carry, no borrow)."""
    pk, sk = keypair
    x = np.array([1.0, -1.0] * 30 + [5.0, -5.0])
    enc = encrypt_vector(pk, x, spec)
    total = sum([enc] * spec.max_summands)
    np.testing.assert_allclose(decrypt_vector(sk, total), 8 * np.clip(x, -1, 1), atol=_tol(spec, 8))
    np.testing.assert_allclose(decrypt_vector(sk, 8 * enc), 8 * np.clip(x, -1, 1), atol=1e-9)


def test_encryption_is_randomized(keypair: KeyPair, spec: PackingSpec) -> None:
    pk, sk = keypair
    a, b = encrypt_vector(pk, [0.25] * 30, spec), encrypt_vector(pk, [0.25] * 30, spec)
    assert set(a.ciphertexts).isdisjoint(b.ciphertexts)
    np.testing.assert_array_equal(decrypt_vector(sk, a), decrypt_vector(sk, b))


def test_noise_is_added_in_steps(keypair: KeyPair) -> None:
    pk, sk = keypair
    spec = PackingSpec(precision_bits=12, max_summands=4, n_length=512, noise_bound=5)
    x = np.linspace(-0.9, 0.9, 30)
    eta = np.arange(30) % 11 - 5
    enc1 = encrypt_vector(pk, x, spec, noise=eta)
    enc2 = encrypt_vector(pk, x, spec, noise=-eta)
    np.testing.assert_allclose(decrypt_vector(sk, enc1), x + eta * spec.step, atol=_tol(spec, 1))
    np.testing.assert_allclose(decrypt_vector(sk, enc1 + enc2), 2 * x, atol=_tol(spec, 2))
    with pytest.raises(ValueError, match="noise_bound"):
        encrypt_vector(pk, x, spec, noise=eta * 2)


# -- refusals ---------------------------------------------------------------------------------
@pytest.mark.parametrize("bad", [float("nan"), float("inf"), -float("inf")])
def test_non_finite_input_names_position(keypair: KeyPair, spec: PackingSpec, bad: float) -> None:
    x = [0.0] * 40
    x[33] = bad
    with pytest.raises(ValueError, match="position 33 "):
        encrypt_vector(keypair[0], x, spec)


def test_different_keys(keypair: KeyPair, other_keypair: KeyPair, spec: PackingSpec) -> None:
    a = encrypt_vector(keypair[0], [0.5] * 5, spec)
    b = encrypt_vector(other_keypair[0], [0.5] * 5, spec)
    with pytest.raises(KeyMismatchError, match="different keys"):
        a + b
    with pytest.raises(KeyMismatchError):
        sum([b, a])
    with pytest.raises(KeyMismatchError, match="private key"):
        decrypt_vector(other_keypair[1], a)


@pytest.mark.parametrize(
    "change",
    [
        {"clip": 2.0},
        {"precision_bits": 15},
        {"max_summands": 9},
        {"noise_bound": 1},
    ],
)
def test_different_specs(keypair: KeyPair, spec: PackingSpec, change: dict[str, object]) -> None:
    pk, _ = keypair
    other = dataclasses.replace(spec, **change)
    a = encrypt_vector(pk, [0.5] * 5, spec)
    b = encrypt_vector(pk, [0.5] * 5, other)
    with pytest.raises(SpecMismatchError, match="packed as"):
        a + b


def test_different_lengths(keypair: KeyPair, spec: PackingSpec) -> None:
    pk, _ = keypair
    a = encrypt_vector(pk, [0.5] * 5, spec)
    b = encrypt_vector(pk, [0.5] * 6, spec)  # same number of ciphertexts, different length
    with pytest.raises(SpecMismatchError, match="lengths 5 and 6"):
        a + b


def test_spec_for_another_key_size(keypair: KeyPair) -> None:
    pk, _ = keypair
    spec2048 = PackingSpec()
    with pytest.raises(SpecMismatchError, match="2048-bit"):
        encrypt_vector(pk, [0.1], spec2048)
    with pytest.raises(SpecMismatchError, match="2048-bit"):
        EncryptedVector(pk, spec2048, 1, 1, [pk.raw_encrypt(0)])


def test_summand_limit_by_addition(keypair: KeyPair, spec: PackingSpec) -> None:
    pk, _ = keypair
    enc = encrypt_vector(pk, [0.5] * 5, spec)
    full = sum([enc] * spec.max_summands)
    assert full.summands == spec.max_summands
    with pytest.raises(SummandLimitError, match="9 summands"):
        full + enc
    with pytest.raises(SummandLimitError):
        sum([enc] * (spec.max_summands + 1))
    with pytest.raises(SummandLimitError):
        (5 * enc) + (4 * enc)


def test_summand_limit_by_multiplication(keypair: KeyPair, spec: PackingSpec) -> None:
    pk, _ = keypair
    enc = encrypt_vector(pk, [0.5] * 5, spec)
    assert (8 * enc).summands == 8
    with pytest.raises(SummandLimitError, match="multiplying by 9"):
        9 * enc
    with pytest.raises(SummandLimitError, match="multiplying by 3 makes 9"):
        (enc + enc + enc) * 3
    with pytest.raises(SummandLimitError):
        enc * 10**30


def test_multiplication_argument_types(keypair: KeyPair, spec: PackingSpec) -> None:
    pk, sk = keypair
    enc = encrypt_vector(pk, [0.5] * 5, spec)
    with pytest.raises(ValueError, match="non-negative"):
        -1 * enc
    for bad in (True, 2.0, "2", None):
        with pytest.raises(TypeError):
            enc * bad  # type: ignore[operator]
    with pytest.raises(TypeError):
        enc + 1  # type: ignore[operator]
    zero = 0 * enc
    assert zero.summands == 0
    np.testing.assert_array_equal(decrypt_vector(sk, zero), np.zeros(5))
    np.testing.assert_allclose(decrypt_vector(sk, zero + enc), [0.5] * 5, atol=_tol(spec, 1))


def test_constructor_validation(keypair: KeyPair, spec: PackingSpec) -> None:
    pk, sk = keypair
    c = pk.raw_encrypt(0)
    with pytest.raises(MalformedCiphertextError, match="cannot hold 30 values"):
        EncryptedVector(pk, spec, 30, 1, [c])
    with pytest.raises(SummandLimitError):
        EncryptedVector(pk, spec, 3, 9, [c])
    with pytest.raises(ValueError, match="non-negative"):
        EncryptedVector(pk, spec, -1, 1, [])
    p = int(sk.to_phe().p)
    with pytest.raises(MalformedCiphertextError, match="position 1"):
        EncryptedVector(pk, spec, 30, 1, [c, mpz(p)])
    with pytest.raises(MalformedCiphertextError, match="position 0"):
        EncryptedVector(pk, spec, 3, 1, [pk.nsquare])
    # validate=False is the trusted internal path
    assert EncryptedVector(pk, spec, 3, 1, [mpz(0)], validate=False).ciphertexts == [0]


# -- malformed contributions surface as SlotRangeError ---------------------------------------
def _packed_with(spec: PackingSpec, length: int, slot: int, value: int) -> list[int]:
    q = np.zeros(length, dtype=np.uint64)
    packed = spec.pack(q)
    s, w = spec.slots_per_ciphertext, spec.slot_bits
    packed[slot // s] += value << (w * (slot % s))
    return packed


def test_crafted_slot_above_levels(keypair: KeyPair, spec: PackingSpec) -> None:
    pk, sk = keypair
    length = 70  # three ciphertexts of 26 slots
    packed = _packed_with(spec, length, 40, spec.levels + 1)
    enc = EncryptedVector(pk, spec, length, 1, [pk.raw_encrypt(m) for m in packed])
    with pytest.raises(SlotRangeError, match="value 40 ") as info:
        decrypt_vector(sk, enc)
    assert (info.value.position, info.value.ciphertext) == (40, 1)
    # one summand more makes the same slot legal
    enc2 = EncryptedVector(pk, spec, length, 2, enc.ciphertexts)
    assert decrypt_vector(sk, enc2)[40] == pytest.approx(
        (spec.levels + 1) * spec.step - 2 * spec.clip
    )


def test_homomorphically_added_raw_ciphertext(keypair: KeyPair, spec: PackingSpec) -> None:
    """A 'contribution' smuggled into one ciphertext is caught after decryption."""
    pk, sk = keypair
    x = np.full(60, 0.9)
    enc = encrypt_vector(pk, x, spec) + encrypt_vector(pk, x, spec)
    s, w = spec.slots_per_ciphertext, spec.slot_bits
    bump = pk.raw_encrypt(spec.levels << (w * 7))  # slot 7 of ciphertext 2: value 2s + 7
    tampered = EncryptedVector(
        pk,
        spec,
        enc.length,
        enc.summands,
        [enc.ciphertexts[0], enc.ciphertexts[1], pk.raw_add(enc.ciphertexts[2], bump)],
    )
    with pytest.raises(SlotRangeError) as info:
        decrypt_vector(sk, tampered)
    assert (info.value.position, info.value.ciphertext) == (2 * s + 7, 2)


def test_crafted_padding_slot(keypair: KeyPair, spec: PackingSpec) -> None:
    pk, sk = keypair
    length = 30  # ciphertext 1 holds values 26..29 and 22 padding slots
    packed = _packed_with(spec, length, 35, 1)
    enc = EncryptedVector(pk, spec, length, 1, [pk.raw_encrypt(m) for m in packed])
    with pytest.raises(SlotRangeError, match="padding slot 35") as info:
        decrypt_vector(sk, enc)
    assert (info.value.position, info.value.ciphertext) == (35, 1)


def test_crafted_bits_above_last_slot(keypair: KeyPair, spec: PackingSpec) -> None:
    pk, sk = keypair
    s, w = spec.slots_per_ciphertext, spec.slot_bits
    packed = [0, 1 << (s * w)]  # s*w = 494 bits < 511: still a valid plaintext
    enc = EncryptedVector(pk, spec, 2 * s, 1, [pk.raw_encrypt(m) for m in packed])
    with pytest.raises(SlotRangeError, match="above its last slot") as info:
        decrypt_vector(sk, enc)
    assert (info.value.position, info.value.ciphertext) == (s, 1)
    # "negative" plaintexts (n - 1) land there too
    enc_neg = EncryptedVector(pk, spec, 3, 1, [pk.raw_encrypt(pk.n - 1)])
    with pytest.raises(SlotRangeError) as info:
        decrypt_vector(sk, enc_neg)
    assert (info.value.position, info.value.ciphertext) == (0, 0)


# -- identity and digest ------------------------------------------------------------------------
def test_digest_binds_everything(keypair: KeyPair, other_keypair: KeyPair, spec: PackingSpec):
    pk, _ = keypair
    enc = encrypt_vector(pk, [0.5] * 30, spec)
    d = enc.digest()
    assert len(d) == 32
    same = EncryptedVector(pk, spec, 30, 1, list(enc.ciphertexts))
    assert same.digest() == d
    variants = [
        EncryptedVector(pk, spec, 29, 1, enc.ciphertexts),
        EncryptedVector(pk, spec, 30, 2, enc.ciphertexts),
        EncryptedVector(pk, dataclasses.replace(spec, clip=2.0), 30, 1, enc.ciphertexts),
        EncryptedVector(pk, dataclasses.replace(spec, precision_bits=15), 30, 1, enc.ciphertexts),
        EncryptedVector(pk, dataclasses.replace(spec, max_summands=9), 30, 1, enc.ciphertexts),
        EncryptedVector(pk, dataclasses.replace(spec, noise_bound=3), 30, 1, enc.ciphertexts),
        EncryptedVector(pk, spec, 30, 1, [enc.ciphertexts[0], enc.ciphertexts[0]]),
        EncryptedVector(
            other_keypair[0], spec, 30, 1, [pk.raw_encrypt(0) for _ in range(2)], validate=False
        ),
    ]
    digests = {v.digest() for v in variants}
    assert d not in digests
    assert len(digests) == len(variants)


def test_repr_is_short(keypair: KeyPair, spec: PackingSpec) -> None:
    enc = encrypt_vector(keypair[0], [0.5] * 30, spec)
    text = repr(enc)
    assert "length=30" in text and "summands=1" in text and "ciphertexts=2" in text
    assert str(int(enc.ciphertexts[0])) not in text
    assert len(text) < 120


# -- full size ----------------------------------------------------------------------------------
@pytest.mark.slow
def test_2048_bit_vector_with_phe_interop(rng: np.random.Generator) -> None:
    import phe

    pk, sk = generate_keypair(2048)
    assert pk.exponent_bits == 1024 and pk.n.bit_length() == 2048
    spec = PackingSpec(clip=1.0, precision_bits=16, max_summands=100)
    assert spec.slots_per_ciphertext == 89
    xs = [rng.normal(0, 0.3, 300) for _ in range(3)]
    total = sum(encrypt_vector(pk, x, spec) for x in xs)
    assert len(total.ciphertexts) == 4
    expected = np.sum([np.clip(x, -1, 1) for x in xs], axis=0)
    np.testing.assert_allclose(decrypt_vector(sk, total), expected, atol=_tol(spec, 3))
    # phe decrypts the packed plaintexts identically, and fedcity decrypts phe's ciphertexts
    phe_sk = sk.to_phe()
    assert [phe_sk.raw_decrypt(int(c)) for c in total.ciphertexts] == [
        sk.raw_decrypt(c) for c in total.ciphertexts
    ]
    phe_pub, phe_priv = phe.generate_paillier_keypair(n_length=2048)
    ours = PrivateKey.from_phe(phe_priv)
    assert ours.raw_decrypt(phe_pub.raw_encrypt(2**2000 + 1)) == 2**2000 + 1
    assert ours.raw_decrypt(phe_pub.encrypt(123456789).ciphertext()) == 123456789
    theirs = ours.public_key
    assert phe_priv.raw_decrypt(int(theirs.raw_encrypt(42))) == 42
    enc = encrypt_vector(theirs, xs[0], spec)
    packed = [phe_priv.raw_decrypt(int(c)) for c in enc.ciphertexts]
    assert packed == spec.pack(spec.quantize(xs[0]))
