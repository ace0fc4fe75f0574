"""Paillier keys with Damgård–Jurik–Nielsen (DJN) encryption, compatible with python-paillier.

A :class:`PublicKey` uses the generator ``g = n + 1`` like python-paillier (``phe``) and adds
the DJN base ``h_s = (-x^2)^n mod n^2``. Encryption of ``m`` is

    c = (1 + n·m) · h_s^a  mod n^2,   a uniform in [0, 2^exponent_bits)

computed with a fixed-base window table (:mod:`fedcity.crypto.fixedbase`), built once per key
and process. Every such ciphertext is an ordinary Paillier ciphertext: phe's private key
decrypts it, and fedcity's :class:`PrivateKey` decrypts phe's. The ``raw_`` methods that phe
has too (``raw_encrypt``, ``raw_decrypt``) and ``raw_add`` take ``int`` or ``mpz`` and return
plain Python ``int``, which phe insists on; fedcity computes with gmpy2 ``mpz`` inside.

The exponent length defaults to ``n_length // 2`` bits (1024 for a 2048-bit key), as in the
DJN paper, Intel IPCL and SecretFlow HEU. Shorter exponents are refused on ordinary keys; they
are only offered for Ma–Han–Lei keys (``generate_keypair(..., short_exponent=True)``), whose
``h_s`` lies in a subgroup of known small prime order.
"""

from __future__ import annotations

import hashlib
import json
import os
import string
import tempfile
from enum import StrEnum
from pathlib import Path
from typing import TYPE_CHECKING, Any

import gmpy2
from gmpy2 import mpz

from fedcity.crypto import _numbers as nt
from fedcity.crypto.errors import KeyFileError, MalformedCiphertextError
from fedcity.crypto.fixedbase import FixedBaseTable

if TYPE_CHECKING:
    import phe

__all__ = [
    "KeyKind",
    "PrivateKey",
    "PublicKey",
    "generate_keypair",
    "key_id_for",
    "load_key",
    "save_key",
]

MIN_N_LENGTH = 256
"""Smallest modulus accepted at all (test keys). Production keys should be >= 2048 bits."""

SHORT_EXPONENT_BITS = {2048: 448, 3072: 512}
"""Exponent sizes of Ma–Han–Lei keys (ACSAC 2021) at 112- and 128-bit security."""

_KEY_ID_DOMAIN = b"fedcity.v1.paillier"
_MIN_SHORT_EXPONENT_BITS = 224
"""Shortest DJN exponent of any Ma–Han–Lei key: twice the 112-bit security level."""


class KeyKind(StrEnum):
    """What a key's modulus and DJN base were generated for."""

    STANDARD = "standard"
    """Ordinary Paillier key; DJN exponents of ``n_length // 2`` bits."""
    THRESHOLD = "threshold"
    """Modulus from safe primes, secret exponent Shamir-shared among agencies."""
    SHORT_EXPONENT = "short-exponent"
    """Ma–Han–Lei key: ``h_s`` has small prime order, so short DJN exponents are safe."""


def key_id_for(n: int | mpz, djn_base: int | mpz, exponent_bits: int, kind: KeyKind) -> bytes:
    """Return the 16-byte fingerprint of a public encryption key.

    ``SHA-256(domain || n || h_s || exponent_bits || kind)[:16]`` with fixed-width big-endian
    integers. It covers everything an encryptor uses, so a key whose DJN base or exponent
    size was tampered with has another id than the one agreed at the key ceremony.
    """
    width = (int(n).bit_length() + 7) // 8
    h = hashlib.sha256(_KEY_ID_DOMAIN)
    h.update(int(n).to_bytes(width, "big"))
    h.update(int(djn_base).to_bytes(2 * width, "big"))
    h.update(int(exponent_bits).to_bytes(4, "big"))
    h.update(KeyKind(kind).value.encode())
    return h.digest()[:16]


def _random_djn_base(n: mpz, n2: mpz) -> mpz:
    x = nt.random_unit(n)
    return gmpy2.powmod((-x * x) % n, n, n2)


class PublicKey:
    """A Paillier public key (``g = n + 1``) with a DJN base for fast encryption.

    Parameters
    ----------
    n : int
        The modulus.
    djn_base : int, optional
        ``h_s``, an ``n``-th power in ``Z*_{n^2}``. Drawn at random if omitted (which is
        correct for ordinary keys; threshold and short-exponent keys supply their own).
    exponent_bits : int, optional
        Size of the random DJN exponent. Defaults to ``n_length // 2``. Shorter values are
        only accepted for ``kind=KeyKind.SHORT_EXPONENT``.
    kind : KeyKind, default KeyKind.STANDARD
    window : int, default 8
        Window of the fixed-base table (16 MiB at 2048 bits for ``window=8``).

    Notes
    -----
    The window table is built lazily on first encryption and cached on the instance, i.e.
    once per key and process.
    """

    def __init__(
        self,
        n: int | mpz,
        *,
        djn_base: int | mpz | None = None,
        exponent_bits: int | None = None,
        kind: KeyKind = KeyKind.STANDARD,
        window: int = 8,
    ) -> None:
        self.n = mpz(n)
        if self.n.bit_length() < MIN_N_LENGTH or self.n % 2 == 0:
            raise ValueError(
                f"modulus must be odd and at least {MIN_N_LENGTH} bits, got "
                f"{self.n.bit_length()} bits"
            )
        self.n_length = self.n.bit_length()
        self.nsquare = self.n * self.n
        self.kind = KeyKind(kind)
        default_bits = (self.n_length + 1) // 2
        if exponent_bits is None:
            exponent_bits = (
                SHORT_EXPONENT_BITS.get(self.n_length, default_bits)
                if self.kind is KeyKind.SHORT_EXPONENT
                else default_bits
            )
        if exponent_bits < default_bits and self.kind is not KeyKind.SHORT_EXPONENT:
            raise ValueError(
                f"a {exponent_bits}-bit DJN exponent is below the secure default of "
                f"{default_bits} bits for a {self.n_length}-bit {self.kind.value} key; short "
                "exponents need a Ma–Han–Lei key: generate_keypair(..., short_exponent=True)"
            )
        floor = (
            SHORT_EXPONENT_BITS.get(self.n_length, _MIN_SHORT_EXPONENT_BITS)
            if self.kind is KeyKind.SHORT_EXPONENT
            else default_bits
        )
        if not floor <= exponent_bits <= self.n_length:
            raise ValueError(
                f"exponent_bits must lie in [{floor}, {self.n_length}] for a "
                f"{self.n_length}-bit {self.kind.value} key, got {exponent_bits}"
            )
        self.exponent_bits = int(exponent_bits)
        if djn_base is None:
            djn_base = _random_djn_base(self.n, self.nsquare)
        self.djn_base = mpz(djn_base)
        if not 1 < self.djn_base < self.nsquare or gmpy2.gcd(self.djn_base, self.n) != 1:
            raise ValueError("djn_base must be a unit of Z*_{n^2}")
        self.window = window
        self.key_id = key_id_for(self.n, self.djn_base, self.exponent_bits, self.kind)
        self._table: FixedBaseTable | None = None

    # -- identity ---------------------------------------------------------------------------
    @property
    def n_bytes(self) -> int:
        """Width in bytes of an element of ``Z_n`` on the wire."""
        return int((self.n_length + 7) // 8)

    @property
    def ciphertext_bytes(self) -> int:
        """Width in bytes of a ciphertext (an element of ``Z*_{n^2}``) on the wire."""
        return 2 * self.n_bytes

    def __eq__(self, other: object) -> bool:
        return isinstance(other, PublicKey) and self.key_id == other.key_id

    def __hash__(self) -> int:
        return hash(self.key_id)

    def __repr__(self) -> str:
        return (
            f"<PublicKey {self.key_id.hex()} n_length={self.n_length} kind={self.kind.value} "
            f"exponent_bits={self.exponent_bits}>"
        )

    def __getstate__(self) -> dict[str, Any]:
        state = {k: getattr(self, k) for k in ("n", "djn_base", "exponent_bits", "kind", "window")}
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__init__(  # type: ignore[misc]
            state["n"],
            djn_base=state["djn_base"],
            exponent_bits=state["exponent_bits"],
            kind=state["kind"],
            window=state["window"],
        )

    # -- encryption -------------------------------------------------------------------------
    @property
    def table(self) -> FixedBaseTable:
        """The fixed-base window table for ``h_s`` (built on first use)."""
        if self._table is None:
            self._table = FixedBaseTable(
                self.djn_base, self.nsquare, self.exponent_bits, self.window
            )
        return self._table

    def raw_encrypt(self, plaintext: int | mpz) -> int:
        """Encrypt an integer ``0 <= plaintext < n``; returns the bare ciphertext.

        This is the low-level integer path: no encoding, no overflow protection, no record
        of how many ciphertexts were summed. Use :func:`fedcity.crypto.encrypt_vector`
        for real data.

        The ciphertext is a Python ``int``, so python-paillier accepts it as is
        (``phe.PaillierPrivateKey.raw_decrypt`` refuses anything else).
        """
        return int(self._raw_encrypt(plaintext))

    def _raw_encrypt(self, plaintext: int | mpz) -> mpz:
        """:meth:`raw_encrypt` as ``mpz``, for fedcity's own vectors (no conversion)."""
        return self._raw_encrypt_with(plaintext, self.table.pow_random())

    def _raw_encrypt_with(self, plaintext: int | mpz, power: mpz) -> mpz:
        """``(1 + n·m)·power mod n²``: encryption with ready randomness ``power = h_s^a``.

        The one multiplication every encryption ends with; ``power`` comes fresh from the
        fixed-base table or precomputed from a :class:`fedcity.crypto.pool.RandomnessPool`,
        and must never be used twice.
        """
        m = mpz(plaintext)
        if not 0 <= m < self.n:
            raise ValueError("plaintext must lie in [0, n)")
        return (1 + self.n * m) * power % self.nsquare

    def _raw_encrypt_opened(self, plaintext: int | mpz) -> tuple[mpz, mpz]:
        """:meth:`_raw_encrypt` that also returns its DJN exponent: ``(c, a)``.

        ``c = (1 + n·m)·h_s^a mod n²`` with ``a`` uniform in ``[0, 2^exponent_bits)``, the same
        distribution as :meth:`_raw_encrypt`. ``a`` opens ``c``: keep it secret (see
        :class:`fedcity.crypto.vector.Openings`).
        """
        a = nt.random_bits(self.exponent_bits)
        return self._raw_encrypt_with(plaintext, self.table.pow(a)), a

    def raw_add(self, c1: int | mpz, c2: int | mpz) -> int:
        """Homomorphic addition of two bare ciphertexts (no validation); a Python ``int``."""
        return int(mpz(c1) * mpz(c2) % self.nsquare)

    def check_ciphertext(self, c: int | mpz, *, position: int | None = None) -> mpz:
        """Return ``c`` as mpz if it is an element of ``Z*_{n^2}``, else raise.

        Raises
        ------
        MalformedCiphertextError
            ``c`` is not in ``[1, n^2)`` or shares a factor with ``n``.
        """
        c = mpz(c)
        where = "" if position is None else f" at position {position}"
        if not 0 < c < self.nsquare:
            raise MalformedCiphertextError(f"ciphertext{where} is outside [1, n^2)")
        if gmpy2.gcd(c, self.n) != 1:
            raise MalformedCiphertextError(f"ciphertext{where} is not a unit of Z*_(n^2)")
        return c

    # -- python-paillier interop ------------------------------------------------------------
    @classmethod
    def from_phe(cls, key: phe.PaillierPublicKey) -> PublicKey:
        """Wrap a python-paillier public key (a fresh DJN base is drawn)."""
        if int(key.g) != int(key.n) + 1:
            raise ValueError("only phe keys with g = n + 1 are supported")
        return cls(int(key.n))

    def to_phe(self) -> phe.PaillierPublicKey:
        """Return the equivalent python-paillier public key."""
        import phe

        return phe.PaillierPublicKey(int(self.n))

    # -- files ------------------------------------------------------------------------------
    def to_json_dict(self) -> dict[str, Any]:
        """Return the documented JSON form (see ``docs/crypto-api.md``)."""
        return {
            "format": "fedcity.paillier.public-key",
            "version": 1,
            "key_id": self.key_id.hex(),
            "kind": self.kind.value,
            "n_length": self.n_length,
            "n": _hex(self.n),
            "djn_base": _hex(self.djn_base),
            "exponent_bits": self.exponent_bits,
        }

    @classmethod
    def from_json_dict(cls, data: dict[str, Any]) -> PublicKey:
        """Inverse of :meth:`to_json_dict`; validates format, version and key id."""
        _expect_format(data, "fedcity.paillier.public-key")
        try:
            key = cls(
                _unhex(data, "n"),
                djn_base=_unhex(data, "djn_base"),
                exponent_bits=int(data["exponent_bits"]),
                kind=KeyKind(data["kind"]),
            )
        except (KeyError, TypeError) as exc:
            raise KeyFileError(f"public key file lacks or mistypes field {exc}") from exc
        except ValueError as exc:
            raise KeyFileError(f"invalid public key: {exc}") from exc
        if key.key_id.hex() != data.get("key_id"):
            raise KeyFileError(
                "public key file: key_id does not match the key's fields (corrupted or tampered)"
            )
        return key


class PrivateKey:
    """A Paillier private key (the factors of ``n``), decrypting with CRT.

    Parameters
    ----------
    public_key : PublicKey
    p, q : int
        The prime factors of ``public_key.n``.

    Notes
    -----
    The ``repr`` shows only the key id; the factors are never printed.
    """

    def __init__(self, public_key: PublicKey, p: int | mpz, q: int | mpz) -> None:
        p, q = mpz(p), mpz(q)
        if p * q != public_key.n or p < 3 or q < 3:
            raise ValueError("p * q does not equal the public modulus")
        if p == q:
            raise ValueError("p and q must differ")
        self.public_key = public_key
        self._p, self._q = (p, q) if p < q else (q, p)
        self._psq = self._p * self._p
        self._qsq = self._q * self._q
        self._hp = self._h(self._p, self._psq)
        self._hq = self._h(self._q, self._qsq)
        self._q_inv_p = gmpy2.invert(self._q, self._p)
        n = public_key.n
        if gmpy2.gcd(n, (self._p - 1) * (self._q - 1)) != 1:
            raise ValueError("gcd(n, (p-1)(q-1)) must be 1")
        self._n_inv_p1 = gmpy2.invert(n, self._p - 1)
        self._n_inv_q1 = gmpy2.invert(n, self._q - 1)

    def _h(self, x: mpz, xsq: mpz) -> mpz:
        g = self.public_key.n + 1
        return gmpy2.invert((gmpy2.powmod(g, x - 1, xsq) - 1) // x, x)

    def __repr__(self) -> str:
        return f"<PrivateKey {self.public_key.key_id.hex()} n_length={self.public_key.n_length}>"

    def raw_decrypt(self, ciphertext: int | mpz) -> int:
        """Decrypt a bare ciphertext to an integer in ``[0, n)``.

        The low-level integer path, without decoding or range checks; use
        :func:`fedcity.crypto.decrypt_vector` for vectors. The plaintext is a Python
        ``int``, so it can go straight into ``phe.PaillierPublicKey.raw_encrypt``.
        """
        return int(self._raw_decrypt(ciphertext))

    def _raw_decrypt(self, ciphertext: int | mpz) -> mpz:
        """:meth:`raw_decrypt` as ``mpz``."""
        c = self.public_key.check_ciphertext(ciphertext)
        p, q = self._p, self._q
        mp = (gmpy2.powmod(c, p - 1, self._psq) - 1) // p * self._hp % p
        mq = (gmpy2.powmod(c, q - 1, self._qsq) - 1) // q * self._hq % q
        return nt.crt_pair(mp, mq, p, q, self._q_inv_p)

    def raw_decrypt_with_randomness(self, ciphertext: int | mpz) -> tuple[mpz, mpz]:
        """Decrypt a bare ciphertext to ``(m, ρ)`` with ``c = (1 + m·n)·ρⁿ mod n²``.

        ``ρ ∈ Z*_n`` is the ciphertext's randomness (for a DJN ciphertext, ``(-x²)^a mod n``).
        Together with ``m`` it lets anyone re-encrypt and so check the decryption (see
        :func:`fedcity.crypto.verify_keyholder_decryption`). Low-level: no decoding.
        """
        m = self._raw_decrypt(ciphertext)
        c = mpz(ciphertext)
        p, q = self._p, self._q
        rp = gmpy2.powmod(c % p, self._n_inv_p1, p)  # c ≡ ρⁿ (mod p)
        rq = gmpy2.powmod(c % q, self._n_inv_q1, q)
        return m, nt.crt_pair(rp, rq, p, q, self._q_inv_p)

    @classmethod
    def from_phe(cls, key: phe.PaillierPrivateKey) -> PrivateKey:
        """Wrap a python-paillier private key."""
        return cls(PublicKey.from_phe(key.public_key), int(key.p), int(key.q))

    def to_phe(self) -> phe.PaillierPrivateKey:
        """Return the equivalent python-paillier private key."""
        import phe

        return phe.PaillierPrivateKey(self.public_key.to_phe(), int(self._p), int(self._q))

    def to_json_dict(self) -> dict[str, Any]:
        """Return the documented JSON form; it holds the secret factors."""
        data = self.public_key.to_json_dict()
        data.update(format="fedcity.paillier.private-key", p=_hex(self._p), q=_hex(self._q))
        return data

    @classmethod
    def from_json_dict(cls, data: dict[str, Any]) -> PrivateKey:
        """Inverse of :meth:`to_json_dict`."""
        _expect_format(data, "fedcity.paillier.private-key")
        public = PublicKey.from_json_dict({**data, "format": "fedcity.paillier.public-key"})
        try:
            return cls(public, _unhex(data, "p"), _unhex(data, "q"))
        except KeyError as exc:
            raise KeyFileError(f"private key file lacks field {exc}") from exc
        except ValueError as exc:
            raise KeyFileError(f"invalid private key: {exc}") from exc


def generate_keypair(
    n_length: int = 2048, *, short_exponent: bool = False
) -> tuple[PublicKey, PrivateKey]:
    """Generate a Paillier key pair with a DJN base.

    Parameters
    ----------
    n_length : int, default 2048
        Bits of the modulus; a multiple of 8 and at least 256. 2048 bits give about
        112-bit security, 3072 bits 128-bit.
    short_exponent : bool, default False
        Opt in to a Ma–Han–Lei key (ACSAC 2021): ``n = pq`` with ``p = 2·p'·p1 + 1``,
        ``q = 2·q'·q1 + 1`` for primes ``p', q'`` of ``exponent_bits / 2`` bits, and ``h_s``
        of order ``p'q'``. DJN exponents then need only 448 bits at 2048-bit ``n`` (512 at
        3072), about twice as fast to encrypt. The key is an ordinary Paillier key for
        decryption (phe decrypts it); its security rests on the additional assumption of
        that paper.

    Returns
    -------
    (PublicKey, PrivateKey)
    """
    if n_length < MIN_N_LENGTH or n_length % 8:
        raise ValueError(f"n_length must be a multiple of 8 and >= {MIN_N_LENGTH}, got {n_length}")
    if short_exponent:
        return _generate_mhl_keypair(n_length)
    half = n_length // 2
    while True:
        p, q = nt.random_prime(half), nt.random_prime(n_length - half)
        n = p * q
        if p != q and n.bit_length() == n_length:
            break
    public = PublicKey(n)
    return public, PrivateKey(public, p, q)


def _generate_mhl_keypair(n_length: int) -> tuple[PublicKey, PrivateKey]:
    exponent_bits = SHORT_EXPONENT_BITS.get(n_length, max(2 * 112, n_length // 5) // 8 * 8)
    sub = exponent_bits // 2
    if n_length // 2 - sub - 1 < 16:  # room for the large prime factor p1 of p - 1
        raise ValueError(
            f"a short-exponent key needs n_length >= {(2 * sub + 41) // 8 * 8}, got {n_length}"
        )

    def prime_factor_form() -> tuple[mpz, mpz, mpz]:
        # p = 2 p' p1 + 1 with p' a `sub`-bit prime and p1 a prime, p of n_length/2 bits
        # fix the large prime p1 and redraw the cheap small prime until p is prime
        while True:
            p1 = nt.random_prime(n_length // 2 - sub - 1)
            for _ in range(4 * n_length):
                small = nt.random_prime(sub)
                p = 2 * small * p1 + 1
                if (
                    p.bit_length() == n_length // 2
                    and gmpy2.is_strong_prp(p, 2)
                    and gmpy2.is_prime(p, 40)
                ):
                    return p, small, p1

    while True:
        p, ps, p1 = prime_factor_form()
        q, qs, q1 = prime_factor_form()
        n = p * q
        if p != q and n.bit_length() == n_length and gmpy2.gcd(ps * qs, p1 * q1) == 1:
            break
    n2 = n * n
    # h of order p'q' in Z*_n: y^(2 p1 q1), then h_s = h^n mod n^2
    while True:
        h = gmpy2.powmod(nt.random_unit(n), 2 * p1 * q1, n)
        if gmpy2.powmod(h, ps, n) != 1 and gmpy2.powmod(h, qs, n) != 1:
            break
    public = PublicKey(
        n,
        djn_base=gmpy2.powmod(h, n, n2),
        exponent_bits=exponent_bits,
        kind=KeyKind.SHORT_EXPONENT,
    )
    return public, PrivateKey(public, p, q)


# -- files -----------------------------------------------------------------------------------
def _hex(value: int | mpz) -> str:
    return format(int(value), "x")


def _unhex(data: dict[str, Any], field: str) -> mpz:
    value = data[field]
    if not isinstance(value, str):
        raise KeyFileError(f"field {field!r} must be a hexadecimal string")
    # plain digits only: int(..., 16) would also take a sign, "0x", "_" and whitespace
    if not value or value.strip(string.hexdigits):
        raise KeyFileError(f"field {field!r} is not hexadecimal")
    return mpz(int(value, 16))


def _expect_format(data: dict[str, Any], fmt: str) -> None:
    if not isinstance(data, dict):
        raise KeyFileError("key file must hold a JSON object")
    if data.get("format") != fmt:
        raise KeyFileError(f"expected a {fmt!r} file, found format {data.get('format')!r}")
    if data.get("version") != 1:
        raise KeyFileError(f"unsupported {fmt} version {data.get('version')!r} (expected 1)")


def write_json_file(path: str | os.PathLike[str], data: dict[str, Any], *, secret: bool) -> Path:
    """Write ``data`` as JSON atomically; secret files get mode 0600 from the start.

    An existing file is never overwritten (a key or share is not something to lose by a
    repeated command); remove it first on purpose.
    """
    target = Path(path)
    if target.exists():
        raise KeyFileError(f"{target} exists; refusing to overwrite a key file")
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.", suffix=".tmp")
    try:
        os.fchmod(fd, 0o600 if secret else 0o644)
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            json.dump(data, fh, indent=2, sort_keys=True)
            fh.write("\n")
            fh.flush()
            os.fsync(fh.fileno())
        os.link(tmp, target)  # fails if target appeared meanwhile: no silent overwrite
    except FileExistsError as exc:
        raise KeyFileError(f"{target} exists; refusing to overwrite a key file") from exc
    finally:
        Path(tmp).unlink(missing_ok=True)
    return target


def read_json_file(path: str | os.PathLike[str], *, what: str = "key file") -> dict[str, Any]:
    """Read a JSON object file, with clear errors (naming ``what``) for missing or corrupt files.

    Raises
    ------
    KeyFileError
    """
    p = Path(path)
    try:
        text = p.read_text(encoding="utf-8")
    except OSError as exc:
        raise KeyFileError(f"cannot read {what} {p}: {exc.strerror or exc}") from exc
    except UnicodeDecodeError as exc:
        raise KeyFileError(f"{p} is not UTF-8 text: {exc.reason}") from exc
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        raise KeyFileError(f"{p} is not valid JSON (line {exc.lineno}: {exc.msg})") from exc
    if not isinstance(data, dict):
        raise KeyFileError(f"{p} must hold a JSON object")
    return data


def load_key(path: str | os.PathLike[str]) -> PublicKey | PrivateKey:
    """Load a public or private key file written by :func:`save_key`."""
    data = read_json_file(path)
    fmt = data.get("format")
    if fmt == "fedcity.paillier.private-key":
        return PrivateKey.from_json_dict(data)
    if fmt == "fedcity.paillier.public-key":
        return PublicKey.from_json_dict(data)
    raise KeyFileError(f"{path}: not a fedcity key file (format {fmt!r})")


def save_key(key: PublicKey | PrivateKey, path: str | os.PathLike[str]) -> Path:
    """Write a key file (private keys with mode 0600); never overwrites an existing file.

    Threshold keys and shares have their own ``save`` methods.
    """
    if not isinstance(key, PublicKey | PrivateKey):
        raise TypeError(
            f"save_key writes PublicKey or PrivateKey objects, got {type(key).__name__}; "
            "use ThresholdPublicKey.save or KeyShare.save"
        )
    return write_json_file(path, key.to_json_dict(), secret=isinstance(key, PrivateKey))
