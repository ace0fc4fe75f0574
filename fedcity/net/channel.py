"""Client-side gRPC plumbing shared by the agent and the data scientist's client.

Every channel carries explicit message-size limits
(:data:`~fedcity.net.messages.MAX_MESSAGE_BYTES`) and a reconnect backoff capped at a few
seconds; every call carries ``authorization: Bearer <token>`` metadata. TLS verifies the
coordinator against the federation's CA; plaintext is only allowed to a loopback address.
"""

from __future__ import annotations

import ipaddress
import os
from pathlib import Path
from typing import Any

import grpc

__all__ = [
    "RETRYABLE_CODES",
    "AddressError",
    "bearer_metadata",
    "channel_options",
    "is_loopback",
    "open_channel",
    "parse_address",
]

RETRYABLE_CODES = frozenset({grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED})
"""Status codes after which a call is retried with backoff (the coordinator is away)."""


def channel_options() -> list[tuple[str, int]]:
    """Options of every client channel: message-size limits and a short reconnect backoff."""
    from fedcity.net.messages import MAX_MESSAGE_BYTES  # imported late: it pulls in numpy

    return [
        ("grpc.max_send_message_length", MAX_MESSAGE_BYTES),
        ("grpc.max_receive_message_length", MAX_MESSAGE_BYTES),
        # gRPC's own reconnect backoff defaults to a 120 s cap; keep it near our retry cap
        # so a restarted coordinator is found again within seconds.
        ("grpc.initial_reconnect_backoff_ms", 250),
        ("grpc.min_reconnect_backoff_ms", 250),
        ("grpc.max_reconnect_backoff_ms", 5000),
    ]


class AddressError(ValueError):
    """A coordinator address that is not ``host:port``."""


def parse_address(address: str) -> tuple[str, int]:
    """Split ``host:port`` (IPv6 as ``[::1]:50051``).

    Parameters
    ----------
    address : str

    Returns
    -------
    (str, int)
        The host (without brackets) and the port.

    Raises
    ------
    AddressError
    """
    if not isinstance(address, str) or not address:
        raise AddressError(f"coordinator address must be 'host:port', got {address!r}")
    if address.startswith("["):
        host, sep, rest = address[1:].partition("]")
        if not sep or not rest.startswith(":"):
            raise AddressError(f"coordinator address must be '[ipv6]:port', got {address!r}")
        port_text = rest[1:]
    else:
        host, sep, port_text = address.rpartition(":")
        if not sep or ":" in host:
            raise AddressError(f"coordinator address must be 'host:port', got {address!r}")
    if not host or any(c.isspace() for c in host):
        raise AddressError(f"coordinator address {address!r} lacks a host")
    if not port_text.isdigit() or not 1 <= int(port_text) <= 65535:
        raise AddressError(f"coordinator address {address!r} needs a port between 1 and 65535")
    return host, int(port_text)


def is_loopback(host: str) -> bool:
    """Whether ``host`` is ``localhost`` or a loopback IP address."""
    if host.lower() in ("localhost", "localhost."):
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def bearer_metadata(token: str) -> tuple[tuple[str, str], ...]:
    """The per-call metadata that authenticates a principal."""
    return (("authorization", f"Bearer {token}"),)


def open_channel(
    address: str, *, ca_file: str | os.PathLike[str] | None, insecure: bool = False
) -> Any:
    """A channel to the coordinator: TLS pinned to ``ca_file``, or plaintext on loopback.

    Parameters
    ----------
    address : str
        ``host:port``.
    ca_file : str or path-like, optional
        PEM CA certificate(s) that signed the coordinator's certificate.
    insecure : bool, default False
        Plaintext; refused unless ``address`` is a loopback address.

    Returns
    -------
    grpc.Channel

    Raises
    ------
    AddressError
        A malformed address, or ``insecure`` with a non-loopback host.
    ValueError
        Neither ``ca_file`` nor ``insecure``.
    OSError
        ``ca_file`` cannot be read.
    """
    host, _ = parse_address(address)
    if insecure:
        if not is_loopback(host):
            raise AddressError(
                f"plaintext (insecure) connections are allowed only to a loopback coordinator, "
                f"not {host!r}"
            )
        return grpc.insecure_channel(address, options=channel_options())
    if ca_file is None:
        raise ValueError("a CA file is required unless the connection is insecure (loopback)")
    ca = Path(ca_file).read_bytes()
    credentials = grpc.ssl_channel_credentials(root_certificates=ca)
    return grpc.secure_channel(address, credentials, options=channel_options())
