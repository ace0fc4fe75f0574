"""The key ceremony: everything a federation needs before its first connection.

:func:`deal_federation` runs once, on a trusted machine, and writes a directory that the
operator then hands out piece by piece::

    OUT/federation-public.json          public: threshold key, agency → share index, and every
                                        agency's Ed25519 public signing key (everyone)
    OUT/agencies/<agency>/share.json    secret (0600): that agency's key share only
    OUT/agencies/<agency>/signing-key.json  secret (0600): its Ed25519 signing key (it signs
                                        every upload; see fedcity.crypto.signing)

In the single-key-holder mode (``key_holder=...``) there are no shares: the key holder gets
``agencies/<holder>/private-key.json`` (secret, 0600) and every other agency
``agencies/<agency>/public-key.json``; the public file names the key holder. The rest is
the same:
    OUT/agencies/<agency>/token         secret (0600): that agency's bearer token
    OUT/agencies/<agency>/ca.pem        the CA certificate (a copy of tls/ca.pem)
    OUT/agencies/<agency>/federation-public.json  a copy of the public file
    OUT/agencies/<agency>/agency.toml   a commented agent configuration using the files of
                                        its folder and an example dataset (to adapt)
    OUT/scientists/<name>/token         secret (0600): a data scientist's bearer token
    OUT/scientists/<name>/ca.pem        the CA certificate (a copy of tls/ca.pem)
    OUT/coordinator/credentials.json    (0600) SHA-256 hashes of every token, with roles
    OUT/coordinator/server.pem          the coordinator's TLS certificate (signed by the CA)
    OUT/coordinator/server.key          secret (0600): its private key
    OUT/tls/ca.pem                      the CA certificate every agent and client pins

The coordinator receives only token hashes, its TLS key and the public federation file; it
never receives a token or a key share. The full Paillier secret and the CA's signing key exist
only in the dealer's memory during the call: neither is ever written (a later certificate
needs a new ceremony, which also rotates every token).

No existing file is ever overwritten: the ceremony checks every target before it starts and
creates each file exclusively.
"""

from __future__ import annotations

import hashlib
import ipaddress
import json
import logging
import os
import re
import secrets
import stat
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

from cryptography import x509

from fedcity.core.aggregation import AggregationScheme, KeyHolderScheme, PaillierScheme
from fedcity.crypto import (
    CryptoError,
    KeyFileError,
    KeyShare,
    PrivateKey,
    PublicKey,
    ThresholdPublicKey,
    deal_threshold_key,
    generate_keypair,
    save_key,
)
from fedcity.crypto.keys import read_json_file
from fedcity.crypto.signing import SigningKey, VerifyKey

__all__ = [
    "FEDERATION_FORMAT",
    "FEDERATION_VERSION",
    "KEY_HOLDER",
    "THRESHOLD",
    "CeremonyError",
    "Federation",
    "FederationFiles",
    "deal_federation",
    "load_federation",
    "read_token",
    "token_sha256",
]

log = logging.getLogger(__name__)
K = TypeVar("K")

FEDERATION_FORMAT = "fedcity.federation"
"""``format`` field of ``federation-public.json``."""
FEDERATION_VERSION = 1
"""``version`` field of ``federation-public.json`` this release writes and reads."""
THRESHOLD = "threshold"
"""Decryption by ``t`` of the agencies' key shares (the default)."""
KEY_HOLDER = "key-holder"
"""Decryption of blinded aggregates by one agency holding the private key."""
CERT_DAYS = 365
"""Validity of the CA and server certificates."""

_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")
_DNS_NAME = re.compile(r"(?=.{1,253}$)[A-Za-z0-9*]([A-Za-z0-9-]{0,62})(\.[A-Za-z0-9-]{1,63})*")


class CeremonyError(ValueError):
    """Invalid ceremony input, an existing target file, or an invalid federation file."""


# -- small helpers shared with the agent and the client ---------------------------------------
def token_sha256(token: str) -> str:
    """Hex SHA-256 of a token string (UTF-8), as stored in ``credentials.json``.

    Parameters
    ----------
    token : str

    Returns
    -------
    str
        64 lowercase hex digits.
    """
    return hashlib.sha256(token.encode("utf-8")).hexdigest()


def read_token(path: str | os.PathLike[str]) -> str:
    """Read a bearer token file written by :func:`deal_federation`.

    Surrounding whitespace (the trailing newline) is ignored. A token file its group or others
    may read or write is refused (the ceremony writes tokens with mode 0600).

    Parameters
    ----------
    path : str or path-like

    Returns
    -------
    str

    Raises
    ------
    CeremonyError
        If the file is missing or unreadable, accessible to others, empty, or holds more
        than one word.
    """
    p = Path(path)
    try:
        text = p.read_text(encoding="utf-8")
        mode = p.stat().st_mode
    except OSError as exc:
        raise CeremonyError(f"cannot read token file {p}: {exc.strerror or exc}") from exc
    except UnicodeDecodeError as exc:
        raise CeremonyError(f"token file {p} is not UTF-8 text") from exc
    token = text.strip()
    if not token:
        raise CeremonyError(f"token file {p} is empty")
    if any(c.isspace() or not c.isprintable() for c in token):
        raise CeremonyError(f"token file {p} must hold a single token on one line")
    if mode & (stat.S_IRWXG | stat.S_IRWXO):
        raise CeremonyError(
            f"token file {p} is readable or writable by others (mode {mode & 0o777:04o}); a "
            f"token must be accessible to its owner only: run `chmod 600 {p}`"
        )
    return token


def _check_name(name: object, what: str) -> str:
    if not isinstance(name, str) or not _NAME.fullmatch(name):
        raise CeremonyError(
            f"{what} {name!r} is not a valid name: use 1-64 letters, digits, '.', '_' or '-', "
            "starting with a letter or digit"
        )
    return name


def _write_new(path: Path, data: bytes, *, secret: bool) -> None:
    """Create ``path`` exclusively with its final mode from the start."""
    mode = 0o600 if secret else 0o644
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, mode)
    except FileExistsError as exc:
        raise CeremonyError(f"{path} exists; refusing to overwrite it") from exc
    try:
        os.fchmod(fd, mode)  # independent of the umask
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
    except BaseException:
        path.unlink(missing_ok=True)
        raise


def _json_bytes(data: Mapping[str, Any]) -> bytes:
    return (json.dumps(data, indent=2, sort_keys=True) + "\n").encode("utf-8")


def _private_dir(path: Path) -> None:
    path.mkdir(parents=True, exist_ok=True)
    path.chmod(0o700)


# -- TLS ----------------------------------------------------------------------------------------
def _san(hosts: Sequence[str]) -> x509.SubjectAlternativeName:
    names: list[x509.GeneralName] = []
    for host in hosts:
        try:
            names.append(x509.IPAddress(ipaddress.ip_address(host)))
        except ValueError:
            if not isinstance(host, str) or not _DNS_NAME.fullmatch(host):
                raise CeremonyError(
                    f"TLS host {host!r} is neither an IP address nor a DNS name"
                ) from None
            names.append(x509.DNSName(host))
    return x509.SubjectAlternativeName(names)


def _make_tls(hosts: Sequence[str], label: str) -> tuple[bytes, bytes, bytes]:
    """A fresh CA and a server certificate for ``hosts``; returns (ca pem, cert pem, key pem).

    The certificates come from :class:`fedcity.governance.ca.CertificateAuthority` (the same
    X.509 code as the enrollment CA). The CA's private key is discarded when this function
    returns: a ceremony's CA signs nothing else.
    """
    if not hosts:
        raise CeremonyError("tls_hosts must name at least one host")
    _san(hosts)  # every host an IP address or a DNS name, or a CeremonyError naming it
    from fedcity.governance.ca import CertificateAuthority

    ca = CertificateAuthority.create(f"fedcity-{label}", days=CERT_DAYS)
    key_pem, cert_pem = ca.server_certificate(tuple(str(h) for h in hosts), days=CERT_DAYS)
    return ca.cert_pem, cert_pem, key_pem


# -- the ceremony -------------------------------------------------------------------------------
@dataclass(frozen=True)
class FederationFiles:
    """Paths written by :func:`deal_federation`.

    Attributes
    ----------
    root : Path
    public : Path
        ``federation-public.json``.
    credentials : Path
        The coordinator's token hashes.
    ca_cert, server_cert, server_key : Path
        TLS material.
    shares, agency_tokens : dict of str to Path
        Per agency. ``shares`` holds each agency's secret decryption key: its threshold
        share, or in the key-holder mode the key holder's private key only.
    signing_keys : dict of str to Path
        Per agency: its Ed25519 signing key (secret), next to its key file.
    agency_configs : dict of str to Path
        Per agency: its ``agency.toml`` template (no secret in it).
    agency_ca, agency_public : dict of str to Path
        Per agency: its copies of ``tls/ca.pem`` and ``federation-public.json``, so that the
        agency's folder is complete by itself.
    scientist_ca : dict of str to Path
        Per data scientist: a copy of ``tls/ca.pem`` next to the token.
    public_keys : dict of str to Path
        Key-holder mode: the public key file of every other agency.
    scientist_tokens : dict of str to Path
        Per data scientist.
    """

    root: Path
    public: Path
    credentials: Path
    ca_cert: Path
    server_cert: Path
    server_key: Path
    shares: dict[str, Path] = field(default_factory=dict)
    agency_tokens: dict[str, Path] = field(default_factory=dict)
    scientist_tokens: dict[str, Path] = field(default_factory=dict)
    public_keys: dict[str, Path] = field(default_factory=dict)
    signing_keys: dict[str, Path] = field(default_factory=dict)
    agency_configs: dict[str, Path] = field(default_factory=dict)
    agency_ca: dict[str, Path] = field(default_factory=dict)
    agency_public: dict[str, Path] = field(default_factory=dict)
    scientist_ca: dict[str, Path] = field(default_factory=dict)

    def key_file(self, agency: str) -> Path:
        """The key file an agency's agent loads (its share, private key or public key)."""
        return self.shares.get(agency) or self.public_keys[agency]

    def all_paths(self) -> list[Path]:
        """Every file of the ceremony, in a stable order."""
        return [
            self.public,
            self.credentials,
            self.ca_cert,
            self.server_cert,
            self.server_key,
            *self.shares.values(),
            *self.public_keys.values(),
            *self.signing_keys.values(),
            *self.agency_tokens.values(),
            *self.agency_ca.values(),
            *self.agency_public.values(),
            *self.agency_configs.values(),
            *self.scientist_tokens.values(),
            *self.scientist_ca.values(),
        ]


def _layout(
    root: Path,
    agencies: Sequence[str],
    scientists: Sequence[str],
    key_holder: str | None,
    committee: Sequence[str] | None = None,
) -> FederationFiles:
    if key_holder is not None:
        shares = {key_holder: root / "agencies" / key_holder / "private-key.json"}
        public_keys = {
            a: root / "agencies" / a / "public-key.json" for a in agencies if a != key_holder
        }
    else:
        members = agencies if committee is None else committee
        shares = {a: root / "agencies" / a / "share.json" for a in members}
        public_keys = {  # outside the committee: the threshold public key only
            a: root / "agencies" / a / "threshold-public-key.json"
            for a in agencies
            if a not in members
        }
    return FederationFiles(
        root=root,
        public=root / "federation-public.json",
        credentials=root / "coordinator" / "credentials.json",
        ca_cert=root / "tls" / "ca.pem",
        server_cert=root / "coordinator" / "server.pem",
        server_key=root / "coordinator" / "server.key",
        shares=shares,
        public_keys=public_keys,
        agency_tokens={a: root / "agencies" / a / "token" for a in agencies},
        signing_keys={a: root / "agencies" / a / "signing-key.json" for a in agencies},
        agency_configs={a: root / "agencies" / a / "agency.toml" for a in agencies},
        agency_ca={a: root / "agencies" / a / "ca.pem" for a in agencies},
        agency_public={a: root / "agencies" / a / "federation-public.json" for a in agencies},
        scientist_tokens={s: root / "scientists" / s / "token" for s in scientists},
        scientist_ca={s: root / "scientists" / s / "ca.pem" for s in scientists},
    )


def deal_federation(
    out_dir: str | os.PathLike[str],
    agencies: Sequence[str],
    threshold: int,
    key_bits: int = 2048,
    scientists: Sequence[str] = ("analyst",),
    tls_hosts: Sequence[str] = ("127.0.0.1", "localhost"),
    key_holder: str | None = None,
    coordinator: str | None = None,
    data_dir: str | os.PathLike[str] | None = None,
    committee: Sequence[str] | None = None,
) -> FederationFiles:
    """Deal a threshold key, tokens and TLS material for a new federation.

    Parameters
    ----------
    out_dir : str or path-like
        Directory to write into (created if needed); none of the files may exist yet.
    agencies : sequence of str
        Agency names; agency ``i`` (from 0) receives share ``i + 1``.
    threshold : int
        Agencies needed to decrypt an aggregate, ``1 <= threshold <= len(agencies)``.
    key_bits : int, default 2048
        Paillier modulus size. Use at least 2048 outside tests.
    scientists : sequence of str, default ("analyst",)
        Data scientists who may submit jobs.
    tls_hosts : sequence of str, default ("127.0.0.1", "localhost")
        Names and addresses agents and clients use to reach the coordinator; they become the
        server certificate's subject alternative names (IP addresses as IP entries).
    key_holder : str, optional
        Deal an ordinary Paillier key pair instead, whose private key goes to this agency
        alone (the single-key-holder mode: faster decryption, but it rests on the key holder
        and the coordinator not colluding; see ``docs/trust-model.md``). ``threshold`` must
        then be 1.
    coordinator : str, optional
        ``host:port`` the agents dial, written into each ``agency.toml`` (default: the first
        TLS host, port 50051).
    data_dir : str or path-like, optional
        Folder of the sample data (``fedcity data synth --out DIR``): each ``agency.toml``
        declares ``DIR/<agency>/flood.csv`` (as a path relative to the TOML file). Default: the
        template points at ``data/flood.csv`` inside the agency's folder, to be replaced.
    committee : sequence of str, optional
        A decryption committee: only these agencies (``threshold`` of them decrypt) receive
        a share; every other agency receives the threshold public key and only encrypts.
        Threshold decryption by every agency does not scale to hundreds of agencies; a
        committee of ``m`` keeps each round's decryption work at ``t`` of ``m`` members.
        Default: every agency holds a share.

    Returns
    -------
    FederationFiles
        The paths written.

    Raises
    ------
    CeremonyError
        Invalid or repeated names, a bad threshold or key size, or an existing target file.
    """
    agencies = [_check_name(a, "agency") for a in agencies]
    scientists = [_check_name(s, "scientist") for s in scientists]
    if not agencies:
        raise CeremonyError("a federation needs at least one agency")
    principals = [*agencies, *scientists]
    repeated = sorted({p for p in principals if principals.count(p) > 1})
    if repeated:
        raise CeremonyError(f"names must be unique across agencies and scientists: {repeated}")
    if isinstance(threshold, bool) or not isinstance(threshold, int):
        raise CeremonyError(f"threshold must be an integer, got {threshold!r}")
    if not 1 <= threshold <= len(agencies):
        raise CeremonyError(
            f"threshold must lie in [1, {len(agencies)}] for {len(agencies)} agencies, "
            f"got {threshold}"
        )
    if isinstance(key_bits, bool) or not isinstance(key_bits, int):
        raise CeremonyError(f"key_bits must be an integer, got {key_bits!r}")
    if key_bits < 256 or key_bits % 16:
        raise CeremonyError(f"key_bits must be a multiple of 16 and >= 256, got {key_bits}")
    if committee is not None:
        committee = [_check_name(c, "committee member") for c in committee]
        strangers = sorted(set(committee) - set(agencies))
        if strangers or len(set(committee)) != len(committee) or not committee:
            raise CeremonyError(
                f"the committee must list distinct agencies of the federation, got {committee}"
                + (f" ({strangers} are not agencies)" if strangers else "")
            )
        if key_holder is not None:
            raise CeremonyError("a key-holder federation has no decryption committee")
        if not 1 <= threshold <= len(committee):
            raise CeremonyError(
                f"threshold must lie in [1, {len(committee)}] for a committee of "
                f"{len(committee)}, got {threshold}"
            )
    if key_holder is not None:
        if key_holder not in agencies:
            raise CeremonyError(f"key holder {key_holder!r} is not one of the agencies {agencies}")
        if threshold != 1:
            raise CeremonyError(
                f"a key-holder federation decrypts with one key: threshold must be 1, got "
                f"{threshold}"
            )
    hosts = [str(h) for h in tls_hosts]
    if not hosts:
        raise CeremonyError("tls_hosts must name at least one host")
    _san(hosts)  # validate before the slow part
    if coordinator is None:
        first = hosts[0] if hosts else "127.0.0.1"
        coordinator = f"[{first}]:50051" if ":" in first else f"{first}:50051"
    from fedcity.net.channel import AddressError, parse_address

    try:
        coordinator_host, _ = parse_address(coordinator)
    except AddressError as exc:
        raise CeremonyError(str(exc)) from exc
    if not _names_host(hosts, coordinator_host):
        raise CeremonyError(
            f"the agents would dial {coordinator_host!r}, which the coordinator's TLS "
            f"certificate would not name (TLS hosts: {', '.join(hosts)}): add it to the TLS "
            "hosts (--tls-hosts) or dial one of them (--coordinator)"
        )
    root = Path(out_dir)
    files = _layout(root, agencies, scientists, key_holder, committee)
    existing = [str(p) for p in files.all_paths() if p.exists() or p.is_symlink()]
    if existing:
        raise CeremonyError(
            f"refusing to overwrite existing ceremony file(s): {', '.join(existing)}"
        )

    if key_bits < 2048:
        log.warning("dealing a %d-bit key: use at least 2048 bits outside tests", key_bits)
    public: dict[str, Any] = {"format": FEDERATION_FORMAT, "version": FEDERATION_VERSION}
    if key_holder is None:
        members = list(agencies if committee is None else committee)
        tpk, shares = deal_threshold_key(key_bits, threshold=threshold, parties=len(members))
        key_id = tpk.key_id
        public["threshold_public_key"] = tpk.to_json_dict()
        index = {a: s.index for a, s in zip(members, shares, strict=True)}
        public["agencies"] = {a: index.get(a, 0) for a in agencies}  # 0: not a member
        if committee is not None:
            public["committee"] = members
        keys: dict[str, KeyShare | PrivateKey | PublicKey | ThresholdPublicKey] = {
            a: tpk for a in agencies
        }
        keys.update(zip(members, shares, strict=True))
    else:
        pk, sk = generate_keypair(key_bits)
        key_id = pk.key_id
        public["decryption"] = KEY_HOLDER
        public["public_key"] = pk.to_json_dict()
        public["key_holder"] = key_holder
        public["agencies"] = {a: int(a == key_holder) for a in agencies}
        keys = {a: sk if a == key_holder else pk for a in agencies}
    signing = {a: SigningKey.generate() for a in agencies}
    public["signing_keys"] = {a: signing[a].public_key.hex() for a in agencies}
    ca_pem, cert_pem, key_pem = _make_tls(hosts, key_id.hex()[:16])
    tokens = {name: secrets.token_urlsafe(32) for name in principals}

    root.mkdir(parents=True, exist_ok=True)
    for a in agencies:
        _private_dir(files.agency_tokens[a].parent)
    for s in scientists:
        _private_dir(files.scientist_tokens[s].parent)
    _private_dir(files.credentials.parent)

    _write_new(files.public, _json_bytes(public), secret=False)
    for a in agencies:
        key = keys[a]
        try:
            if isinstance(key, KeyShare | ThresholdPublicKey):
                key.save(files.key_file(a))
            else:
                save_key(key, files.key_file(a))
            signing[a].save(files.signing_keys[a], a)
        except CryptoError as exc:
            raise CeremonyError(str(exc)) from exc
        _write_new(files.agency_tokens[a], (tokens[a] + "\n").encode(), secret=True)
    for s in scientists:
        _write_new(files.scientist_tokens[s], (tokens[s] + "\n").encode(), secret=True)
    credentials = {
        "principals": [
            {"name": a, "role": "agency", "token_sha256": token_sha256(tokens[a])} for a in agencies
        ]
        + [
            {"name": s, "role": "scientist", "token_sha256": token_sha256(tokens[s])}
            for s in scientists
        ]
    }
    _write_new(files.credentials, _json_bytes(credentials), secret=True)
    _write_new(files.ca_cert, ca_pem, secret=False)
    _write_new(files.server_cert, cert_pem, secret=False)
    _write_new(files.server_key, key_pem, secret=True)
    public_bytes = _json_bytes(public)
    for a in agencies:
        _write_new(files.agency_ca[a], ca_pem, secret=False)
        _write_new(files.agency_public[a], public_bytes, secret=False)
        text = agency_template(
            a,
            coordinator,
            files.key_file(a).name,
            None if data_dir is None else Path(data_dir),
            files.agency_configs[a].parent,
            key_holder=key_holder,
            committee_member=a in files.shares,
        )
        _write_new(files.agency_configs[a], text.encode("utf-8"), secret=False)
    for s in scientists:
        _write_new(files.scientist_ca[s], ca_pem, secret=False)
    del tokens, keys, signing
    return files


def _toml_string(value: str) -> str:
    return json.dumps(value, ensure_ascii=False)


def _names_host(hosts: Sequence[str], host: str) -> bool:
    """Whether a certificate for ``hosts`` (IP addresses, DNS names, ``*.`` wildcards) fits."""
    wanted = host.lower().rstrip(".")
    for name in hosts:
        try:
            if ipaddress.ip_address(name) == ipaddress.ip_address(wanted):
                return True
            continue
        except ValueError:
            pass
        pattern = name.lower().rstrip(".")
        if pattern == wanted:
            return True
        if (
            pattern.startswith("*.")
            and wanted.endswith(pattern[1:])
            and "." not in wanted[: -len(pattern) + 1]
        ):
            return True
    return False


def _commented(setting: str, comment: str) -> str:
    return f"{setting:<44}# {comment}"


def agency_template(
    agency: str,
    coordinator: str,
    key_file: str,
    data_dir: Path | None,
    folder: Path,
    *,
    key_holder: str | None = None,
    committee_member: bool = True,
) -> str:
    """The commented ``agency.toml`` the ceremony writes into an agency's folder.

    Parameters
    ----------
    agency, coordinator : str
        The agency's name and the coordinator's ``host:port``.
    key_file : str
        Name of the agency's key file in its folder.
    data_dir : Path or None
        Folder of ``fedcity data synth``'s sample data, or None for ``data/flood.csv`` in
        the agency's own folder.
    folder : Path
        The agency's folder (relative data paths are computed from it).
    key_holder : str, optional
        The key holder's name in a key-holder federation.
    committee_member : bool, default True
        Whether the agency holds a share (False: outside the decryption committee).

    Returns
    -------
    str
        TOML text (valid as written when the data file exists).
    """
    from fedcity.data.sample import SAMPLE_TASK, sample_columns, sample_path, sample_spec

    if data_dir is None:
        data = f"data/{SAMPLE_TASK}.csv"
        holdout = f"data/{SAMPLE_TASK}_holdout.csv"
        where = "a file in this folder (data/): put your table there or change the path"
    else:
        target = sample_path(data_dir, agency).resolve()
        data = Path(os.path.relpath(target, folder.resolve())).as_posix()
        holdout = Path(
            os.path.relpath(target.with_name(f"{SAMPLE_TASK}_holdout.csv"), folder.resolve())
        ).as_posix()
        where = f"the sample `fedcity data synth --out {data_dir}` wrote for {agency}"
    spec = sample_spec()
    numeric = ", ".join(_toml_string(c) for c in spec.numeric)
    cats = ", ".join(
        f"{c} = [{', '.join(_toml_string(v) for v in levels)}]"
        for c, levels in spec.categorical.items()
    )
    columns = ", ".join(f"{c} = {_toml_string(t)}" for c, t in sample_columns().items())
    if key_holder is None and not committee_member:
        key_note = "the threshold public key: this agency encrypts, the committee decrypts"
    elif key_holder is None:
        key_note = "this agency's share of the threshold key (secret)"
    elif key_holder == agency:
        key_note = "the federation's private key: this agency is the key holder (secret)"
    else:
        key_note = f"the public key (the key holder is {key_holder})"
    lines = [
        f"# agency.toml: the agent configuration of {agency!r}, written by `fedcity keys deal`.",
        "# Start the agent with:  fedcity agent run --config agency.toml",
        "# Relative paths are relative to this file's folder; at start the agent prints every",
        "# path it resolved. Unknown keys are errors. Reference: docs/operations.md (section 3).",
        "",
        f"agency = {_toml_string(agency)}",
        _commented(f"coordinator = {_toml_string(coordinator)}", "the coordinator's host:port"),
        _commented('token_file = "token"', "this agency's bearer credential (secret)"),
        _commented(f"key_file = {_toml_string(key_file)}", key_note),
        _commented('signing_key_file = "signing-key.json"', "signs every upload (secret)"),
        _commented(
            'federation_file = "federation-public.json"', "the key, every agency's signing key"
        ),
        _commented('ca_file = "ca.pem"', "the CA the coordinator's certificate chains to"),
        _commented('log_file = "tasks.jsonl"', "one JSON line per task served"),
        _commented("crypto_workers = 1", "processes for encryption and decryption"),
        "",
        f"# A dataset for training jobs: {where}.",
        "# Declare your own table's columns; only declared columns are read, and missing values,",
        "# unknown columns or undeclared category levels stop the agent with a message.",
        f"[datasets.{SAMPLE_TASK}]",
        f"path = {_toml_string(data)}",
        f"numeric = [{numeric}]",
        f"categorical = {{ {cats} }}",
        f"label = {_toml_string(spec.label)}",
        '# weight = "column"                   # optional sample weights',
        "",
        "# Held-out rows of the same table, to evaluate a model (job submit --evaluate-dataset).",
        f"[datasets.{SAMPLE_TASK}_holdout]",
        f"path = {_toml_string(holdout)}",
        f"numeric = [{numeric}]",
        f"categorical = {{ {cats} }}",
        f"label = {_toml_string(spec.label)}",
        "",
        "# A table for federated queries (fedcity query run): column types are category,",
        "# integer, float, date or text; a query can read declared columns only.",
        f"[tables.{SAMPLE_TASK}]",
        f"path = {_toml_string(data)}",
        f"columns = {{ {columns} }}",
        "",
        "[policy]",
        '# allowed_kinds = ["stats.counts", "glm.newton", "eval.model"]   # default: every '
        "vetted step",
        "min_summands = 2     # never help decrypt an aggregate of fewer agencies' contributions",
        "min_cell_count = 10  # refuse queries that would release cells of fewer rows",
    ]
    return "\n".join(lines) + "\n"


# -- reading the public file ------------------------------------------------------------------
@dataclass(frozen=True, eq=False)
class Federation:
    """The public description of a federation (``federation-public.json``).

    Attributes
    ----------
    public_key : PublicKey
        What agencies encrypt under.
    agencies : dict of str to int
        Each agency's share index (threshold mode), or 1 for the key holder and 0 for every
        other agency (key-holder mode).
    threshold_key : ThresholdPublicKey or None
        The threshold key (None in the key-holder mode).
    key_holder : str or None
        The agency holding the private key (key-holder mode only).
    signing_keys : dict of str to VerifyKey
        Every agency's Ed25519 public key: uploads and the contributions decryptors are
        shown must carry a valid signature by it.
    """

    public_key: PublicKey
    agencies: dict[str, int]
    threshold_key: ThresholdPublicKey | None = None
    key_holder: str | None = None
    signing_keys: dict[str, VerifyKey] = field(default_factory=dict)

    @property
    def key_id(self) -> bytes:
        """The federation key's id."""
        return self.public_key.key_id

    @property
    def threshold(self) -> int:
        """Decryptions needed to release an aggregate (1 in the key-holder mode)."""
        return 1 if self.threshold_key is None else self.threshold_key.threshold

    @property
    def decryption(self) -> str:
        """``"threshold"`` or ``"key-holder"``."""
        return THRESHOLD if self.threshold_key is not None else KEY_HOLDER

    def share_index_of(self, agencies: Sequence[str]) -> dict[str, int]:
        """Which of ``agencies`` can decrypt, with their share index."""
        return {a: self.agencies[a] for a in agencies if self.agencies.get(a)}

    def scheme(self, *, blinding_key: bytes | None = None) -> AggregationScheme:
        """The aggregation scheme of this federation (the coordinator passes its blinding key)."""
        if self.threshold_key is not None:
            return PaillierScheme(self.threshold_key)
        return KeyHolderScheme(self.public_key, blinding_key=blinding_key)


def load_federation(path: str | os.PathLike[str]) -> Federation:
    """Read and validate ``federation-public.json``.

    Parameters
    ----------
    path : str or path-like

    Returns
    -------
    Federation

    Raises
    ------
    CeremonyError
        Naming the file and the field at fault.
    """
    p = Path(path)
    try:
        data = read_json_file(p, what="federation file")
    except KeyFileError as exc:
        raise CeremonyError(str(exc)) from exc
    if data.get("format") != FEDERATION_FORMAT:
        raise CeremonyError(
            f"{p}: format is {data.get('format')!r}, expected {FEDERATION_FORMAT!r}"
        )
    version = data.get("version")
    if version != FEDERATION_VERSION or isinstance(version, bool):
        raise CeremonyError(
            f"{p}: unsupported version {version!r} (this fedcity reads version "
            f"{FEDERATION_VERSION})"
        )
    mode = data.get("decryption", THRESHOLD)
    if mode == KEY_HOLDER:
        return _load_key_holder_federation(p, data)
    if mode != THRESHOLD:
        raise CeremonyError(
            f"{p}: decryption must be {THRESHOLD!r} or {KEY_HOLDER!r}, got {mode!r}"
        )
    tpk = _key_field(p, data, "threshold_public_key", ThresholdPublicKey.from_json_dict)
    agencies = _agency_indices(p, data)
    seen: dict[int, str] = {}
    for name, index in agencies.items():
        if index == 0:  # outside the decryption committee: encrypts only
            continue
        if not 1 <= index <= tpk.parties:
            raise CeremonyError(
                f"{p}: agencies[{name!r}] = {index} lies outside the key's share indices "
                f"1..{tpk.parties}"
            )
        if index in seen:
            raise CeremonyError(
                f"{p}: agencies {seen[index]!r} and {name!r} both claim share {index}"
            )
        seen[index] = name
    if len(seen) < tpk.threshold:
        raise CeremonyError(
            f"{p}: only {len(seen)} agencies hold a share, fewer than the threshold {tpk.threshold}"
        )
    signing_keys = _signing_keys(p, data, agencies)
    return Federation(tpk.public_key, agencies, threshold_key=tpk, signing_keys=signing_keys)


def _key_field(
    p: Path, data: Mapping[str, Any], field: str, parse: Callable[[dict[str, Any]], K]
) -> K:
    """Parse the key stored under ``field``, naming the file and field on failure."""
    value = data.get(field)
    if not isinstance(value, dict):
        raise CeremonyError(f"{p}: {field} must be a JSON object")
    try:
        return parse(value)
    except (CryptoError, ValueError) as exc:
        raise CeremonyError(f"{p}: invalid {field}: {exc}") from exc


def _agency_indices(p: Path, data: Mapping[str, Any]) -> dict[str, int]:
    agencies = data.get("agencies")
    if not isinstance(agencies, dict) or not agencies:
        raise CeremonyError(f"{p}: agencies must be a non-empty object of agency → share index")
    for name, index in agencies.items():
        if not _NAME.fullmatch(name):
            raise CeremonyError(f"{p}: agencies: {name!r} is not a valid agency name")
        if isinstance(index, bool) or not isinstance(index, int):
            raise CeremonyError(f"{p}: agencies[{name!r}] must be an integer, got {index!r}")
    return dict(agencies)


def _signing_keys(
    p: Path, data: Mapping[str, Any], agencies: Mapping[str, int]
) -> dict[str, VerifyKey]:
    """Every agency's Ed25519 public key: exactly the agencies, each valid, all distinct."""
    listed = data.get("signing_keys")
    if not isinstance(listed, dict):
        raise CeremonyError(
            f"{p}: signing_keys must be an object of agency → Ed25519 public key (64 hex "
            "digits); a federation file without it predates signed contributions: deal a new "
            "federation"
        )
    missing = sorted(set(agencies) - set(listed))
    extra = sorted(set(listed) - set(agencies))
    if missing or extra:
        raise CeremonyError(
            f"{p}: signing_keys must list exactly the agencies; missing {missing}, "
            f"not an agency {extra}"
        )
    keys: dict[str, VerifyKey] = {}
    owner: dict[bytes, str] = {}
    for name in agencies:
        try:
            key = VerifyKey.from_hex(listed[name])
        except CryptoError as exc:
            raise CeremonyError(f"{p}: signing_keys[{name!r}]: {exc}") from exc
        if key.raw in owner:
            raise CeremonyError(
                f"{p}: agencies {owner[key.raw]!r} and {name!r} list the same signing key"
            )
        owner[key.raw] = name
        keys[name] = key
    return keys


def _load_key_holder_federation(p: Path, data: Mapping[str, Any]) -> Federation:
    pk = _key_field(p, data, "public_key", PublicKey.from_json_dict)
    agencies = _agency_indices(p, data)
    holder = data.get("key_holder")
    if not isinstance(holder, str) or holder not in agencies:
        raise CeremonyError(f"{p}: key_holder must name one of the agencies, got {holder!r}")
    for name, index in agencies.items():
        if index != int(name == holder):
            raise CeremonyError(
                f"{p}: agencies[{name!r}] must be {int(name == holder)} in a key-holder "
                f"federation (1 for the key holder {holder!r}, 0 otherwise), got {index}"
            )
    signing_keys = _signing_keys(p, data, agencies)
    return Federation(pk, agencies, key_holder=holder, signing_keys=signing_keys)
