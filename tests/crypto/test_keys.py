from __future__ import annotations

import hashlib
import json
import os
import pickle
import stat
import types
from pathlib import Path
from typing import Any

import gmpy2
import numpy as np
import phe
import pytest
from gmpy2 import mpz

from fedcity.crypto import (
    KeyFileError,
    KeyKind,
    KeyMismatchError,
    MalformedCiphertextError,
    PackingSpec,
    PrivateKey,
    PublicKey,
    decrypt_vector,
    encrypt_vector,
    generate_keypair,
    load_key,
    save_key,
)
from fedcity.crypto import _numbers as nt
from fedcity.crypto.keys import SHORT_EXPONENT_BITS, key_id_for

KeyPair = tuple[PublicKey, PrivateKey]

# -- known-answer vector ---------------------------------------------------------------------
# Two fixed 256-bit primes (next primes above SHA-256 digests with the top two bits set) and a
# ciphertext computed with nothing but Python's built-in pow:
#   h = (-x^2)^n mod n^2,  c = (1 + n*m) * h^a mod n^2
KAT_P = 0xE7D3E0DADD9AE71EE8AD0D8FE0434E2F4880374DECE1F8B7D449483B762B1BD1
KAT_Q = 0xFFE3E9C03D73A44D700B9287F13905A1F1503EB50A4CD5495393F49C5A9BF67B
KAT_X = 0x4E0055D45666B7B61202464EE3B69A9C47B4D4A19F8B60A39C09A123A8411093
KAT_A = 0x3794CB475CA5547203605583E2D6829A972C0568B64775EE8C4A2AF16AC01459
KAT_M = 0x1234567890ABCDEF
KAT_C = int(
    "a9150c99334824d7059d3e93372db6573fcf94f5b02469053626c6f226c9b4959c87805e31f77ab3125ecd53"
    "f623480a360d951eb50d32fcbccd2462974be0fd2581763967a0121ad11eab3aed3ba75fbf952f0bdee6397e"
    "856aa00addb6cef8a47a6d3ace6c3a2e359c9e5ea097c67e60cb8c834e74428d0a696afb1ae2dea2",
    16,
)


def _kat_key(window: int = 8) -> tuple[PublicKey, int, int]:
    n = KAT_P * KAT_Q
    n2 = n * n
    h = pow((-KAT_X * KAT_X) % n, n, n2)
    return PublicKey(n, djn_base=h, window=window), n, h


def test_kat_primes_are_prime() -> None:
    assert gmpy2.is_prime(KAT_P, 50) and gmpy2.is_prime(KAT_Q, 50)
    assert (KAT_P * KAT_Q).bit_length() == 512


@pytest.mark.parametrize("window", [8, 1, 3, 5, 6, 11])
def test_known_answer_djn_ciphertext(window: int) -> None:
    pk, n, h = _kat_key(window)
    n2 = n * n
    assert pk.n_length == 512 and pk.exponent_bits == 256
    # independent computation with plain Python pow reproduces the hard-coded vector
    assert (1 + n * KAT_M) * pow(h, KAT_A, n2) % n2 == KAT_C
    # the fixed-base table of the key reproduces it too
    assert pk.table.window == window
    assert (1 + n * KAT_M) * pk.table.pow(KAT_A) % n2 == KAT_C
    # and it is an ordinary Paillier ciphertext: both private keys decrypt it
    sk = PrivateKey(pk, KAT_P, KAT_Q)
    assert sk.raw_decrypt(KAT_C) == KAT_M
    assert sk.to_phe().raw_decrypt(KAT_C) == KAT_M
    phe_sk = phe.PaillierPrivateKey(phe.PaillierPublicKey(n), KAT_P, KAT_Q)
    assert phe_sk.raw_decrypt(KAT_C) == KAT_M


@pytest.mark.parametrize("window", [8, 4, 7])
def test_kat_table_against_builtin_pow(window: int) -> None:
    pk, n, h = _kat_key(window)
    n2 = n * n
    bits = pk.exponent_bits
    exps = [0, 1, 2, 3, (1 << bits) - 1, 1 << (bits - 1), KAT_A]
    exps += [(1 << k) - 1 for k in range(1, bits + 1, 7)]
    exps += [int.from_bytes(os.urandom(bits // 8), "big") for _ in range(60)]
    for a in exps:
        assert pk.table.pow(a) == pow(h, a, n2), a


def test_key_id_fingerprints_the_whole_encryption_key() -> None:
    pk, n, h = _kat_key()
    material = n.to_bytes(64, "big") + h.to_bytes(128, "big") + (256).to_bytes(4, "big")
    expected = hashlib.sha256(b"fedcity.v1.paillier" + material + b"standard").digest()[:16]
    assert key_id_for(n, h, 256, KeyKind.STANDARD) == expected
    assert pk.key_id == expected
    # any change an encryptor would feel changes the id
    assert key_id_for(n, h + 1, 256, KeyKind.STANDARD) != expected
    assert key_id_for(n, h, 264, KeyKind.STANDARD) != expected
    assert key_id_for(n, h, 256, KeyKind.THRESHOLD) != expected


def test_tampered_djn_base_is_detected_in_files_and_on_the_wire(keypair: KeyPair) -> None:
    from fedcity.crypto.serde import public_key_from_proto, public_key_to_proto

    pk, _ = keypair
    data = pk.to_json_dict()
    data["djn_base"] = format(int(pk.nsquare) - 1, "x")  # -1 has order 2: no randomness
    with pytest.raises(KeyFileError, match="key_id does not match"):
        PublicKey.from_json_dict(data)
    msg = public_key_to_proto(pk)
    msg.djn_base = (int(pk.nsquare) - 1).to_bytes(pk.ciphertext_bytes, "big")
    with pytest.raises(KeyMismatchError, match="key_id does not match"):
        public_key_from_proto(msg)


def test_kat_djn_base_is_an_nth_residue() -> None:
    _, n, h = _kat_key()
    phi = (KAT_P - 1) * (KAT_Q - 1)
    assert pow(h, phi, n * n) == 1  # h^phi = 1 exactly for n-th residues


# -- generation and raw operations -------------------------------------------------------------
@pytest.mark.parametrize("bits", [256, 264, 512, 520])
def test_generate_keypair_sizes(bits: int) -> None:
    pk, sk = generate_keypair(bits)
    assert pk.n_length == bits == pk.n.bit_length()
    assert pk.kind is KeyKind.STANDARD
    assert pk.exponent_bits == bits // 2
    assert pk.ciphertext_bytes == 2 * pk.n_bytes == bits // 4
    phe_sk = sk.to_phe()
    assert phe_sk.p * phe_sk.q == pk.n
    assert phe_sk.p != phe_sk.q
    assert gmpy2.is_prime(phe_sk.p) and gmpy2.is_prime(phe_sk.q)
    for m in (0, 1, 12345, int(pk.n) - 1):
        assert sk.raw_decrypt(pk.raw_encrypt(m)) == m


@pytest.mark.parametrize("bits", [0, 248, 255, 260, 513])
def test_generate_keypair_rejects_sizes(bits: int) -> None:
    with pytest.raises(ValueError, match="n_length"):
        generate_keypair(bits)


def test_raw_encrypt_range(keypair: KeyPair) -> None:
    pk, _ = keypair
    with pytest.raises(ValueError, match=r"\[0, n\)"):
        pk.raw_encrypt(-1)
    with pytest.raises(ValueError, match=r"\[0, n\)"):
        pk.raw_encrypt(pk.n)


def test_raw_encrypt_is_randomized_and_valid(keypair: KeyPair) -> None:
    pk, sk = keypair
    cts = [pk.raw_encrypt(42) for _ in range(20)]
    assert len(set(cts)) == 20
    for c in cts:
        assert pk.check_ciphertext(c) == c
        assert sk.raw_decrypt(c) == 42


def test_raw_add_is_homomorphic(keypair: KeyPair) -> None:
    pk, sk = keypair
    a, b = int(pk.n) - 5, 17
    assert sk.raw_decrypt(pk.raw_add(pk.raw_encrypt(a), pk.raw_encrypt(b))) == (a + b) % pk.n


def test_check_ciphertext(keypair: KeyPair) -> None:
    pk, sk = keypair
    p = int(sk.to_phe().p)
    for bad in (0, -1, pk.nsquare, pk.nsquare + 1):
        with pytest.raises(MalformedCiphertextError, match=r"outside \[1, n\^2\)"):
            pk.check_ciphertext(bad)
    for bad in (p, 7 * p, int(pk.n), int(pk.n) * 3):
        with pytest.raises(MalformedCiphertextError, match="not a unit"):
            pk.check_ciphertext(bad)
    with pytest.raises(MalformedCiphertextError, match="at position 7"):
        pk.check_ciphertext(0, position=7)
    assert pk.check_ciphertext(1) == 1


def test_raw_decrypt_validates_ciphertext(keypair: KeyPair) -> None:
    _, sk = keypair
    with pytest.raises(MalformedCiphertextError):
        sk.raw_decrypt(0)
    with pytest.raises(MalformedCiphertextError):
        sk.raw_decrypt(int(sk.to_phe().q))


@pytest.mark.parametrize("window", [1, 5, 12])
def test_other_windows_encrypt_correctly(keypair: KeyPair, window: int) -> None:
    pk, sk = keypair
    pk_w = PublicKey(pk.n, djn_base=pk.djn_base, window=window)
    assert pk_w.table.window == window
    for m in (0, 7, int(pk.n) - 1):
        assert sk.raw_decrypt(pk_w.raw_encrypt(m)) == m


def test_exponent_not_a_multiple_of_eight() -> None:
    """A 520-bit key has 260-bit exponents: pow_random takes the generic path."""
    pk, sk = generate_keypair(520)
    assert pk.exponent_bits % 8 == 4
    assert sk.raw_decrypt(pk.raw_encrypt(99)) == 99


def test_public_key_validation(keypair: KeyPair) -> None:
    pk, sk = keypair
    with pytest.raises(ValueError, match="odd"):
        PublicKey(pk.n + 1)
    with pytest.raises(ValueError, match="at least 256 bits"):
        PublicKey((1 << 255) - 1)
    with pytest.raises(ValueError, match=r"exponent_bits must lie in \[256, 512\]"):
        PublicKey(pk.n, exponent_bits=513)
    with pytest.raises(ValueError, match=r"exponent_bits must lie in \[224, 512\]"):
        PublicKey(pk.n, exponent_bits=64, kind=KeyKind.SHORT_EXPONENT)
    p = int(sk.to_phe().p)
    for base in (0, 1, pk.nsquare, p, p * int(sk.to_phe().q) ** 2):
        with pytest.raises(ValueError, match="djn_base"):
            PublicKey(pk.n, djn_base=base)


def test_private_key_validation(keypair: KeyPair) -> None:
    pk, sk = keypair
    p, q = int(sk.to_phe().p), int(sk.to_phe().q)
    with pytest.raises(ValueError, match="does not equal"):
        PrivateKey(pk, p + 2, q)
    with pytest.raises(ValueError, match="does not equal"):
        PrivateKey(pk, 1, int(pk.n))
    with pytest.raises(ValueError, match="does not equal"):
        PrivateKey(pk, -p, -q)
    square = PublicKey(mpz(KAT_P) * KAT_P)
    with pytest.raises(ValueError, match="differ"):
        PrivateKey(square, KAT_P, KAT_P)
    # factor order does not matter
    assert PrivateKey(pk, q, p).raw_decrypt(pk.raw_encrypt(5)) == 5


def test_equality_hash_and_pickle(keypair: KeyPair, other_keypair: KeyPair) -> None:
    pk, sk = keypair
    same = PublicKey(pk.n, djn_base=pk.djn_base)
    assert same == pk and hash(same) == hash(pk)
    twin = PublicKey(pk.n)  # fresh DJN base, same modulus: another encryption key ...
    assert twin != pk and twin.djn_base != pk.djn_base
    assert sk.raw_decrypt(twin.raw_encrypt(5)) == 5  # ... that the same private key opens
    assert pk != other_keypair[0]
    assert pk != int(pk.n)
    clone = pickle.loads(pickle.dumps(pk))
    assert clone == pk
    assert (clone.djn_base, clone.exponent_bits, clone.kind, clone.window) == (
        pk.djn_base,
        pk.exponent_bits,
        pk.kind,
        pk.window,
    )
    assert sk.raw_decrypt(clone.raw_encrypt(31337)) == 31337


# -- python-paillier interop -------------------------------------------------------------------
def test_fedcity_ciphertext_decrypts_with_phe(keypair: KeyPair) -> None:
    pk, sk = keypair
    phe_sk = sk.to_phe()
    assert phe_sk.public_key.n == pk.n
    assert phe_sk.public_key.g == pk.n + 1
    for m in (0, 1, 2**200 + 3, int(pk.n) - 1):
        c = pk.raw_encrypt(m)
        assert phe_sk.raw_decrypt(int(c)) == m
    # through phe's EncryptedNumber layer as well (an integer with exponent 0)
    enc = phe.EncryptedNumber(phe_sk.public_key, int(pk.raw_encrypt(123456)), 0)
    assert phe_sk.decrypt(enc) == 123456
    neg = phe.EncryptedNumber(phe_sk.public_key, int(pk.raw_encrypt(int(pk.n) - 9)), 0)
    assert phe_sk.decrypt(neg) == -9


def test_phe_ciphertext_decrypts_with_fedcity() -> None:
    phe_pk, phe_sk = phe.generate_paillier_keypair(n_length=512)
    sk = PrivateKey.from_phe(phe_sk)
    assert sk.public_key.n == phe_pk.n
    for m in (0, 1, 987654321, phe_pk.n - 1):
        assert sk.raw_decrypt(phe_pk.raw_encrypt(m)) == m
    for x in (0, 5, 2**40 + 1):
        assert sk.raw_decrypt(phe_pk.encrypt(x).ciphertext()) == x
    # a negative integer encodes as n - |x|
    assert sk.raw_decrypt(phe_pk.encrypt(-3).ciphertext()) == phe_pk.n - 3
    # and fedcity's public half encrypts for phe's private key
    pk = PublicKey.from_phe(phe_pk)
    assert phe_sk.raw_decrypt(int(pk.raw_encrypt(2024))) == 2024


def test_mixed_homomorphic_sum(keypair: KeyPair) -> None:
    pk, sk = keypair
    phe_pk = pk.to_phe()
    c = pk.raw_add(pk.raw_encrypt(1000), mpz(phe_pk.raw_encrypt(234)))
    assert sk.raw_decrypt(c) == 1234
    assert sk.to_phe().raw_decrypt(int(c)) == 1234


def test_raw_methods_hand_phe_plain_ints(keypair: KeyPair) -> None:
    # phe's raw_encrypt / raw_decrypt check isinstance(x, int), which gmpy2's mpz fails
    pk, sk = keypair
    phe_sk = sk.to_phe()
    phe_pk = phe_sk.public_key
    c = pk.raw_encrypt(31337)
    assert type(c) is int
    assert phe_sk.raw_decrypt(c) == 31337
    total = pk.raw_add(c, phe_pk.raw_encrypt(663))
    assert type(total) is int
    assert phe_sk.raw_decrypt(total) == 32000
    assert type(pk.raw_add(mpz(c), mpz(c))) is int
    # a plaintext fedcity decrypted goes straight back into phe's encryption
    m = sk.raw_decrypt(phe_pk.raw_encrypt(2**300 + 5))
    assert type(m) is int
    assert phe_sk.raw_decrypt(phe_pk.raw_encrypt(m)) == 2**300 + 5
    # and through phe's EncryptedNumber arithmetic
    enc = phe.EncryptedNumber(phe_pk, pk.raw_encrypt(40), 0) + 2
    assert phe_sk.decrypt(enc) == 42
    assert sk.raw_decrypt(enc.ciphertext()) == 42


def test_phe_round_trip_of_keys(keypair: KeyPair) -> None:
    pk, sk = keypair
    back = PrivateKey.from_phe(sk.to_phe())
    assert back.public_key.n == pk.n  # same modulus; phe keys carry no DJN base
    assert back.raw_decrypt(pk.raw_encrypt(77)) == 77
    assert PublicKey.from_phe(pk.to_phe()).n == pk.n


def test_from_phe_rejects_other_generators(keypair: KeyPair) -> None:
    fake = types.SimpleNamespace(n=int(keypair[0].n), g=int(keypair[0].n) + 2)
    with pytest.raises(ValueError, match="g = n"):
        PublicKey.from_phe(fake)  # type: ignore[arg-type]


# -- secrets never printed ---------------------------------------------------------------------
def _secret_spellings(value: int) -> list[str]:
    return [str(value), format(value, "x"), format(value, "X"), hex(value)]


def test_private_key_repr_hides_factors(keypair: KeyPair) -> None:
    pk, sk = keypair
    text = repr(sk) + str(sk) + f"{sk}"
    for secret in (sk.to_phe().p, sk.to_phe().q):
        for s in _secret_spellings(int(secret)):
            assert s not in text
    assert pk.key_id.hex() in repr(sk)
    assert repr(pk).startswith("<PublicKey ")


# -- short exponents -------------------------------------------------------------------------
@pytest.mark.parametrize("kind", [KeyKind.STANDARD, KeyKind.THRESHOLD])
@pytest.mark.parametrize("bits", [64, 224, 255])
def test_short_exponent_refused_on_ordinary_keys(
    keypair: KeyPair, kind: KeyKind, bits: int
) -> None:
    with pytest.raises(ValueError, match="short_exponent=True"):
        PublicKey(keypair[0].n, exponent_bits=bits, kind=kind)


def test_longer_exponent_allowed(keypair: KeyPair) -> None:
    pk, sk = keypair
    long = PublicKey(pk.n, djn_base=pk.djn_base, exponent_bits=400)
    assert long.table.exponent_bits == 400
    assert sk.raw_decrypt(long.raw_encrypt(8)) == 8


def test_short_exponent_keypair_512() -> None:
    pk, sk = generate_keypair(512, short_exponent=True)
    assert pk.kind is KeyKind.SHORT_EXPONENT
    assert pk.n_length == 512
    assert pk.exponent_bits == 224 < 256
    assert pk.table.exponent_bits == 224
    phe_sk = sk.to_phe()
    for m in (0, 1, 2**300 + 1, int(pk.n) - 1):
        c = pk.raw_encrypt(m)
        assert sk.raw_decrypt(c) == m
        assert phe_sk.raw_decrypt(int(c)) == m
    # the vector path works with a short-exponent key
    spec = PackingSpec(precision_bits=12, max_summands=4, n_length=512)
    x = np.linspace(-1, 1, 40)
    total = sum(encrypt_vector(pk, x, spec) for _ in range(3))
    np.testing.assert_allclose(decrypt_vector(sk, total), 3 * x, atol=3 * spec.step / 2)


def test_short_exponent_key_structure(monkeypatch: pytest.MonkeyPatch) -> None:
    """h_s has order p'q' for 112-bit primes p' | p - 1 and q' | q - 1 (Ma–Han–Lei)."""
    drawn: list[int] = []
    real = nt.random_prime

    def recording(bits: int) -> mpz:
        prime = real(bits)
        drawn.append(int(prime))
        return prime

    monkeypatch.setattr(nt, "random_prime", recording)
    pk, sk = generate_keypair(512, short_exponent=True)
    phe_sk = sk.to_phe()
    p, q, n2 = int(phe_sk.p), int(phe_sk.q), int(pk.nsquare)
    assert p.bit_length() == q.bit_length() == 256
    p_small = {r for r in drawn if r.bit_length() == 112 and (p - 1) % r == 0}
    q_small = {r for r in drawn if r.bit_length() == 112 and (q - 1) % r == 0}
    assert len(p_small) == len(q_small) == 1
    (ps,), (qs,) = p_small, q_small
    # the large cofactors are prime as well: p = 2 p' p1 + 1
    assert gmpy2.is_prime((p - 1) // (2 * ps)) and gmpy2.is_prime((q - 1) // (2 * qs))
    h = int(pk.djn_base)
    assert pow(h, ps * qs, n2) == 1  # order divides p'q' < 2^224 = 2^exponent_bits
    assert pow(h, ps, n2) != 1 and pow(h, qs, n2) != 1  # and is exactly p'q'
    assert (ps * qs).bit_length() <= pk.exponent_bits


def test_short_exponent_defaults() -> None:
    assert SHORT_EXPONENT_BITS == {2048: 448, 3072: 512}
    pk, _ = generate_keypair(512)
    short = PublicKey(pk.n, djn_base=pk.djn_base, kind=KeyKind.SHORT_EXPONENT)
    assert short.exponent_bits == 256  # no table entry for 512 bits: the default size


def test_short_exponent_smallest_size() -> None:
    """264 bits is the smallest multiple of 8 at which a Ma–Han–Lei key fits."""
    pk, sk = generate_keypair(264, short_exponent=True)
    assert pk.kind is KeyKind.SHORT_EXPONENT
    assert sk.to_phe().raw_decrypt(int(pk.raw_encrypt(5))) == 5
    with pytest.raises(ValueError, match="short"):
        generate_keypair(256, short_exponent=True)


# -- key files --------------------------------------------------------------------------------
def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_save_and_load_public_key(keypair: KeyPair, tmp_path: Path) -> None:
    pk, sk = keypair
    path = save_key(pk, tmp_path / "keys" / "public.json")
    assert path == tmp_path / "keys" / "public.json"
    assert _mode(path) == 0o644
    loaded = load_key(path)
    assert isinstance(loaded, PublicKey)
    assert loaded == pk
    assert (loaded.djn_base, loaded.exponent_bits, loaded.kind) == (
        pk.djn_base,
        pk.exponent_bits,
        pk.kind,
    )
    assert sk.raw_decrypt(loaded.raw_encrypt(55)) == 55
    data = json.loads(path.read_text())
    assert data["format"] == "fedcity.paillier.public-key"
    assert data["version"] == 1
    assert data["key_id"] == pk.key_id.hex()
    assert int(data["n"], 16) == pk.n
    assert list(tmp_path.joinpath("keys").iterdir()) == [path]  # no temporary left behind


def test_save_and_load_private_key(keypair: KeyPair, tmp_path: Path) -> None:
    pk, sk = keypair
    path = save_key(sk, tmp_path / "private.json")
    assert _mode(path) == 0o600
    loaded = load_key(path)
    assert isinstance(loaded, PrivateKey)
    assert loaded.public_key == pk
    assert loaded.public_key.djn_base == pk.djn_base
    assert loaded.raw_decrypt(pk.raw_encrypt(31)) == 31
    assert sk.raw_decrypt(loaded.public_key.raw_encrypt(32)) == 32


def test_save_and_load_short_exponent_key(tmp_path: Path) -> None:
    pk, sk = generate_keypair(264, short_exponent=True)
    loaded = load_key(save_key(sk, tmp_path / "mhl.json"))
    assert isinstance(loaded, PrivateKey)
    assert loaded.public_key.kind is KeyKind.SHORT_EXPONENT
    assert loaded.public_key.exponent_bits == pk.exponent_bits
    public = load_key(save_key(pk, tmp_path / "mhl.pub.json"))
    assert isinstance(public, PublicKey) and public.kind is KeyKind.SHORT_EXPONENT


def test_save_refuses_to_overwrite(keypair: KeyPair, tmp_path: Path) -> None:
    pk, sk = keypair
    path = tmp_path / "key.json"
    path.write_text("precious")
    for key in (pk, sk):
        with pytest.raises(KeyFileError, match="refusing to overwrite"):
            save_key(key, path)
    assert path.read_text() == "precious"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["key.json"]


def _write(tmp_path: Path, data: Any, name: str = "key.json") -> Path:
    path = tmp_path / name
    path.write_text(data if isinstance(data, str) else json.dumps(data))
    return path


def test_load_missing_and_corrupt_files(tmp_path: Path) -> None:
    with pytest.raises(KeyFileError, match="cannot read key file"):
        load_key(tmp_path / "absent.json")
    with pytest.raises(KeyFileError, match="not valid JSON"):
        load_key(_write(tmp_path, '{"format": "fedcity.paillier.public-key",', "trunc.json"))
    with pytest.raises(KeyFileError, match="not valid JSON"):
        load_key(_write(tmp_path, "", "empty.json"))
    with pytest.raises(KeyFileError, match="JSON object"):
        load_key(_write(tmp_path, [1, 2], "list.json"))
    (tmp_path / "binary.json").write_bytes(b"\xff\xfe\x00garbage")
    with pytest.raises(KeyFileError):
        load_key(tmp_path / "binary.json")


@pytest.fixture
def private_json(keypair: KeyPair) -> dict[str, Any]:
    return keypair[1].to_json_dict()


@pytest.mark.parametrize(
    ("field", "value", "message"),
    [
        ("format", "fedcity.paillier.secret-key", "not a fedcity key file"),
        ("format", None, "not a fedcity key file"),
        ("version", 2, "version 2"),
        ("version", "1", "version '1'"),
        ("version", None, "version None"),
        ("key_id", "00" * 16, "key_id does not match"),
        ("n", "not-hex", "not hexadecimal"),
        ("n", 12345, "hexadecimal string"),
        ("n", "-" + "f" * 128, "hexadecimal"),
        ("n", "0x" + "f" * 128, "hexadecimal"),
        ("djn_base", "zz", "not hexadecimal"),
        ("djn_base", "0", "djn_base"),
        ("p", "xyz", "not hexadecimal"),
        ("p", "3", "does not equal"),
        ("q", None, "hexadecimal string"),
        ("exponent_bits", "many", "invalid"),
        ("exponent_bits", None, "mistypes"),
        ("exponent_bits", 100, "short_exponent"),
        ("kind", "quantum", "invalid"),
    ],
)
def test_bad_private_key_fields(
    private_json: dict[str, Any], tmp_path: Path, field: str, value: Any, message: str
) -> None:
    data = {**private_json, field: value}
    with pytest.raises(KeyFileError, match=message):
        load_key(_write(tmp_path, data))


@pytest.mark.parametrize("field", ["n", "djn_base", "p", "q", "exponent_bits", "kind", "key_id"])
def test_missing_private_key_fields(
    private_json: dict[str, Any], tmp_path: Path, field: str
) -> None:
    data = {k: v for k, v in private_json.items() if k != field}
    with pytest.raises(KeyFileError):
        load_key(_write(tmp_path, data))


def test_tampered_public_key_file(keypair: KeyPair, other_keypair: KeyPair, tmp_path: Path) -> None:
    pk, _ = keypair
    data = other_keypair[0].to_json_dict()
    data["key_id"] = pk.key_id.hex()  # a valid key under another key's id
    with pytest.raises(KeyFileError, match="key_id does not match"):
        load_key(_write(tmp_path, data))
    assert PublicKey.from_json_dict(pk.to_json_dict()) == pk


def test_public_loader_rejects_private_format(keypair: KeyPair) -> None:
    with pytest.raises(KeyFileError, match=r"expected a 'fedcity\.paillier\.public-key'"):
        PublicKey.from_json_dict(keypair[1].to_json_dict())
    with pytest.raises(KeyFileError, match="JSON object"):
        PublicKey.from_json_dict([])  # type: ignore[arg-type]


def test_save_key_refuses_shares_and_integer_clip_specs_are_canonical(tmp_path: Path) -> None:
    from fedcity.crypto import deal_threshold_key

    _, shares = deal_threshold_key(256, threshold=1, parties=1)
    with pytest.raises(TypeError, match=r"KeyShare\.save"):
        save_key(shares[0], tmp_path / "share.json")  # type: ignore[arg-type]
    assert not (tmp_path / "share.json").exists()
    assert PackingSpec(clip=1, n_length=512) == PackingSpec(clip=1.0, n_length=512)
    assert isinstance(PackingSpec(clip=2, n_length=512).clip, float)
