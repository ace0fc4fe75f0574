"""Key files for Flower federations: a decryption committee of ``m`` share holders.

:func:`deal_flower_keys` runs once, on a trusted machine, with fedcity's own dealer
(:func:`fedcity.crypto.deal_threshold_key`) and writes::

    OUT/public.json                 the threshold public key (the ServerApp loads this only)
    OUT/nodes/<node>/key.json       secret (0600) for the ``m`` committee members: their share;
                                    public (0644) for every other node: the public key

With ``signed=True`` the dealer also writes::

    OUT/nodes/<node>/signing.json   secret (0600): the node's Ed25519 signing key (every node)
    OUT/nodes/<node>/verify-keys.json   public: every node's verify key (committee members)
    OUT/verify-keys.json            the same list, for reference

A node with a ``signing.json`` next to its key file signs every encrypted update; a committee
member with a ``verify-keys.json`` there decrypts only an aggregate shown to be the product of
enough distinct nodes' signed updates (:class:`fedcity.flower.SecureFedAvg` ``signed=True``
sends that evidence).

Only the ``committee`` nodes can take part in decryption; any ``threshold`` of them release an
aggregate, the rest of the federation only encrypts. With ``m ≪ n`` (say 7 of 1,000 agencies)
the cost of threshold decryption no longer grows with the federation.

Each SuperNode is pointed at its file with the node-config entry ``fedcity-key``
(``flower-supernode --node-config 'fedcity-key="OUT/nodes/node-3/key.json"'``); in the
simulation engine a directory and the node's ``partition-id`` do the same (see
:class:`fedcity.flower.SecureAggregationMod`).
"""

from __future__ import annotations

import os
import re
import threading
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from fedcity.crypto import (
    CryptoError,
    KeyFileError,
    KeyShare,
    ThresholdPublicKey,
    deal_threshold_key,
)
from fedcity.crypto.keys import read_json_file, write_json_file
from fedcity.crypto.signing import SigningKey, VerifyKey

__all__ = [
    "FlowerKeyFiles",
    "NodeKey",
    "deal_flower_keys",
    "load_node_key",
    "load_public_key",
    "load_signing_key",
    "load_verify_keys",
    "node_name",
    "shared_public_key",
]

NodeKey = KeyShare | ThresholdPublicKey
"""What a node holds: a committee member's share, or the public key only."""

_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")
_MAX_NODES = 100_000


def node_name(partition_id: int) -> str:
    """Name of the node with a simulation ``partition-id`` (``node-<id>``)."""
    return f"node-{int(partition_id)}"


@dataclass(frozen=True)
class FlowerKeyFiles:
    """Paths written by :func:`deal_flower_keys`.

    Attributes
    ----------
    root : Path
    public : Path
        The threshold public key, for the ServerApp.
    nodes : dict of str to Path
        Every node's key file (share or public key).
    committee : dict of str to int
        Committee members and their share index.
    signed : bool
        Whether signing keys and verify-key lists were written.
    """

    root: Path
    public: Path
    nodes: dict[str, Path] = field(default_factory=dict)
    committee: dict[str, int] = field(default_factory=dict)
    signed: bool = False


def deal_flower_keys(
    out_dir: str | os.PathLike[str],
    nodes: int | Sequence[str],
    *,
    threshold: int,
    committee: int | Sequence[str] | None = None,
    key_bits: int = 2048,
    signed: bool = False,
) -> FlowerKeyFiles:
    """Deal a threshold key to a committee and the public key to every other node.

    Parameters
    ----------
    out_dir : str or path-like
        Directory to write into; none of the files may exist yet.
    nodes : int or sequence of str
        Node names, or a count ``n`` for the simulation names ``node-0 .. node-(n-1)``.
    threshold : int
        ``t``: committee members needed to decrypt, ``1 <= t <= m``.
    committee : int or sequence of str, optional
        The share holders: a count ``m`` (the first ``m`` nodes) or their names. Default:
        every node (``m = n``).
    key_bits : int, default 2048
        Paillier modulus size; 2048 or more outside tests.
    signed : bool, default False
        Also deal each node an Ed25519 signing key (``signing.json``) and give committee
        members every node's verify key (``verify-keys.json``), so they decrypt only
        aggregates of signed updates.

    Returns
    -------
    FlowerKeyFiles

    Raises
    ------
    ValueError
        Invalid or repeated names, a committee naming unknown nodes, a bad threshold, or an
        existing key file (nothing is overwritten).
    """
    names = _node_names(nodes)
    if committee is None:
        members = list(names)
    elif isinstance(committee, int) and not isinstance(committee, bool):
        if not 1 <= committee <= len(names):
            raise ValueError(f"committee size must lie in [1, {len(names)}], got {committee}")
        members = names[:committee]
    elif isinstance(committee, str) or not isinstance(committee, Sequence):
        raise ValueError(f"committee must be a count or a list of node names, got {committee!r}")
    else:
        members = list(committee)
        unknown = sorted(set(members) - set(names))
        if unknown:
            raise ValueError(f"committee names nodes that are not in the federation: {unknown}")
        if len(set(members)) != len(members) or not members:
            raise ValueError("committee must name distinct nodes, at least one")
    if isinstance(threshold, bool) or not isinstance(threshold, int):
        raise ValueError(f"threshold must be an integer, got {threshold!r}")
    if not 1 <= threshold <= len(members):
        raise ValueError(
            f"threshold must lie in [1, {len(members)}] for a committee of {len(members)}, "
            f"got {threshold}"
        )
    root = Path(out_dir)
    files = FlowerKeyFiles(
        root=root,
        public=root / "public.json",
        nodes={n: root / "nodes" / n / "key.json" for n in names},
    )
    extra = [files.root / VERIFY_KEYS_FILE] if signed else []
    for n in names if signed else []:
        extra += [files.nodes[n].parent / SIGNING_FILE, files.nodes[n].parent / VERIFY_KEYS_FILE]
    existing = [str(p) for p in [files.public, *files.nodes.values(), *extra] if p.exists()]
    if existing:
        raise ValueError(f"refusing to overwrite existing key file(s): {', '.join(existing)}")
    tpk, shares = deal_threshold_key(key_bits, threshold=threshold, parties=len(members))
    tpk.save(files.public)
    by_name = dict(zip(members, shares, strict=True))
    for n in names:
        share = by_name.get(n)
        if share is not None:
            share.save(files.nodes[n])
            files.committee[n] = share.index
        else:
            tpk.save(files.nodes[n])
    if signed:
        verify: dict[str, str] = {}
        for n in names:
            key = SigningKey.generate()
            key.save(files.nodes[n].parent / SIGNING_FILE, n)
            verify[n] = key.public_key.hex()
        listing = {"format": VERIFY_KEYS_FORMAT, "version": 1, "keys": verify}
        write_json_file(files.root / VERIFY_KEYS_FILE, listing, secret=False)
        for n in members:
            write_json_file(files.nodes[n].parent / VERIFY_KEYS_FILE, listing, secret=False)
        return FlowerKeyFiles(files.root, files.public, files.nodes, files.committee, True)
    return files


def _node_names(nodes: int | Sequence[str]) -> list[str]:
    if isinstance(nodes, int) and not isinstance(nodes, bool):
        if not 1 <= nodes <= _MAX_NODES:
            raise ValueError(f"nodes must lie in [1, {_MAX_NODES}], got {nodes}")
        return [node_name(i) for i in range(nodes)]
    if isinstance(nodes, str) or not isinstance(nodes, Sequence):
        raise ValueError(f"nodes must be a count or a list of names, got {nodes!r}")
    names = list(nodes)
    if not names or len(names) > _MAX_NODES:
        raise ValueError(f"between 1 and {_MAX_NODES} nodes are needed, got {len(names)}")
    for n in names:
        if not isinstance(n, str) or not _NAME.fullmatch(n):
            raise ValueError(f"{n!r} is not a valid node name (letters, digits, . _ -)")
    if len(set(names)) != len(names):
        raise ValueError("node names must be distinct")
    return names


SIGNING_FILE = "signing.json"
"""A node's Ed25519 signing key, next to its key file."""
VERIFY_KEYS_FILE = "verify-keys.json"
"""Every node's verify key, next to a committee member's key file."""
VERIFY_KEYS_FORMAT = "fedcity.flower.verify-keys"
_MAX_VERIFY_KEYS = 100_000

_CACHE: dict[tuple[str, int, int], NodeKey] = {}
_PUBLIC: dict[bytes, ThresholdPublicKey] = {}
_CACHE_LOCK = threading.Lock()


def shared_public_key(key: NodeKey) -> ThresholdPublicKey:
    """One :class:`ThresholdPublicKey` object per key id and process.

    Every node of a simulation loads its own file, but all encrypt under the same key: they
    share one object, hence one fixed-base encryption table (16 MiB at 2048 bits), instead
    of one table per simulated node.
    """
    tpk = key.threshold_key if isinstance(key, KeyShare) else key
    with _CACHE_LOCK:
        return _PUBLIC.setdefault(tpk.key_id, tpk)


def load_node_key(path: str | os.PathLike[str]) -> NodeKey:
    """Load a node's key file: a :class:`KeyShare` or a :class:`ThresholdPublicKey`.

    Loaded keys are cached per process (by path, size and modification time), so the
    encryption table of a key is built once per process, not once per message.

    Raises
    ------
    KeyFileError
        The file is missing, corrupt, or neither a share nor a threshold public key.
    """
    p = Path(path)
    try:
        st = p.stat()
    except OSError as exc:
        raise KeyFileError(f"cannot read fedcity key file {p}: {exc.strerror or exc}") from exc
    token = (str(p.resolve()), st.st_size, st.st_mtime_ns)
    with _CACHE_LOCK:
        cached = _CACHE.get(token)
    if cached is not None:
        return cached
    data = read_json_file(p, what="fedcity key file")
    fmt = data.get("format")
    key: NodeKey
    if fmt == "fedcity.paillier.key-share":
        key = KeyShare.from_json_dict(data)
    elif fmt == "fedcity.paillier.threshold-public-key":
        key = ThresholdPublicKey.from_json_dict(data)
    else:
        raise KeyFileError(f"{p}: format {fmt!r} is neither a key share nor a threshold public key")
    with _CACHE_LOCK:
        _CACHE[token] = key
    return key


def load_public_key(path: str | os.PathLike[str]) -> ThresholdPublicKey:
    """Load the threshold public key (the ServerApp's only key material).

    A share file is refused: the server must never hold a share.
    """
    key = load_node_key(path)
    if isinstance(key, KeyShare):
        raise KeyFileError(f"{path} holds a key share; the server loads the public key only")
    return key


_SIGNING: dict[tuple[str, int, int], tuple[str, SigningKey]] = {}
_VERIFY: dict[tuple[str, int, int], dict[str, VerifyKey]] = {}


def _token(p: Path) -> tuple[str, int, int] | None:
    try:
        st = p.stat()
    except FileNotFoundError:
        return None
    except OSError as exc:
        raise KeyFileError(f"cannot read {p}: {exc.strerror or exc}") from exc
    return (str(p.resolve()), st.st_size, st.st_mtime_ns)


def load_signing_key(path: str | os.PathLike[str]) -> tuple[str, SigningKey] | None:
    """A node's ``(name, signing key)`` from ``path``, or None if there is no such file.

    Cached per process like :func:`load_node_key`.

    Raises
    ------
    KeyFileError
        The file exists but is unreadable, corrupt or not a signing key.
    """
    p = Path(path)
    token = _token(p)
    if token is None:
        return None
    with _CACHE_LOCK:
        cached = _SIGNING.get(token)
    if cached is None:
        cached = SigningKey.load(p)
        with _CACHE_LOCK:
            _SIGNING[token] = cached
    return cached


def load_verify_keys(path: str | os.PathLike[str]) -> dict[str, VerifyKey] | None:
    """Node name → verify key from a ``verify-keys.json``, or None if there is no such file.

    Raises
    ------
    KeyFileError
        The file exists but is corrupt, of another format, or lists an invalid key or name.
    """
    p = Path(path)
    token = _token(p)
    if token is None:
        return None
    with _CACHE_LOCK:
        cached = _VERIFY.get(token)
    if cached is not None:
        return cached
    data = read_json_file(p, what="fedcity verify-key list")
    keys = data.get("keys")
    if data.get("format") != VERIFY_KEYS_FORMAT or not isinstance(keys, dict):
        raise KeyFileError(f"{p}: not a {VERIFY_KEYS_FORMAT} file")
    if len(keys) > _MAX_VERIFY_KEYS:
        raise KeyFileError(f"{p}: more than {_MAX_VERIFY_KEYS} verify keys")
    out: dict[str, VerifyKey] = {}
    for name, hexkey in keys.items():
        if not isinstance(name, str) or not _NAME.fullmatch(name) or not isinstance(hexkey, str):
            raise KeyFileError(f"{p}: invalid entry {name!r}")
        try:
            out[name] = VerifyKey.from_hex(hexkey)
        except (ValueError, CryptoError) as exc:
            raise KeyFileError(f"{p}: invalid verify key for {name!r}: {exc}") from exc
    with _CACHE_LOCK:
        _VERIFY[token] = out
    return out
