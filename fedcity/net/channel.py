"""Client-side gRPC plumbing shared by the agent and the data scientist's client.

Every channel carries explicit message-size limits
(:data:`~fedcity.net.messages.MAX_MESSAGE_BYTES`) and a reconnect backoff capped at a few
seconds; every call carries ``authorization: Bearer <token>`` metadata. TLS verifies the
coordinator against the federation's CA; plaintext is only allowed to a loopback address.
"""

from __future__ import annotations

import ipaddress
import os
import socket
import ssl
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc

__all__ = [
    "RETRYABLE_CODES",
    "AddressError",
    "Diagnosis",
    "TLSFileError",
    "bearer_metadata",
    "channel_options",
    "check_tls_pair",
    "diagnose_connection",
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
    address: str,
    *,
    ca_file: str | os.PathLike[str] | None,
    insecure: bool = False,
    cert_file: str | os.PathLike[str] | None = None,
    key_file: str | os.PathLike[str] | None = None,
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
    cert_file, key_file : str or path-like, optional
        This party's client certificate and private key (mutual TLS, after enrollment).

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
    if (cert_file is None) != (key_file is None):
        raise ValueError("give both the client certificate and its key, or neither")
    chain = key = None
    if cert_file is not None and key_file is not None:
        chain, key = Path(cert_file).read_bytes(), Path(key_file).read_bytes()
    credentials = grpc.ssl_channel_credentials(
        root_certificates=ca, private_key=key, certificate_chain=chain
    )
    return grpc.secure_channel(address, credentials, options=channel_options())


# -- explaining transport failures --------------------------------------------------------------
@dataclass(frozen=True)
class Diagnosis:
    """Why a connection to the coordinator failed, in one actionable sentence.

    Attributes
    ----------
    message : str
    fatal : bool
        Retrying cannot help (wrong CA, plaintext against TLS or the reverse); False when the
        coordinator may simply not be running yet.
    """

    message: str
    fatal: bool


def _speaks_tls(host: str, port: int, timeout: float) -> bool | None:
    """Whether ``host:port`` completes a TLS handshake (True), refuses it (False) or is away."""
    context = ssl.create_default_context()
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    context.set_alpn_protocols(["h2"])
    try:
        with (
            socket.create_connection((host, port), timeout=timeout) as raw,
            context.wrap_socket(raw, server_hostname=host),
        ):
            return True
    except ssl.SSLError as exc:
        # a TLS alert from the server (e.g. "certificate required" under mutual TLS) is TLS
        return "ALERT" in str(exc.reason or exc).upper()
    except (ConnectionResetError, BrokenPipeError):
        return False
    except OSError:
        return None


def diagnose_connection(
    address: str,
    details: str,
    *,
    insecure: bool,
    ca_file: str | os.PathLike[str] | None,
    timeout: float = 2.0,
) -> Diagnosis | None:
    """Turn gRPC's ``UNAVAILABLE`` details into one sentence saying what to do.

    Recognises a coordinator certificate the CA file did not sign (or an expired one, or one
    naming other hosts), a plaintext client against a TLS coordinator and the reverse
    (probing the port with a TLS handshake), and nothing listening at the address.

    Parameters
    ----------
    address : str
        ``host:port`` that was dialled.
    details : str
        The RPC error's details.
    insecure : bool
        Whether the connection was plaintext.
    ca_file : path-like, optional
        The CA file the connection trusted.
    timeout : float, default 2.0
        Seconds for the probe.

    Returns
    -------
    Diagnosis or None
        None when the failure is none of these (the caller reports the details).
    """
    try:
        host, port = parse_address(address)
    except AddressError:
        return None
    low = details.lower()
    if "certificate_verify_failed" in low or "certificate verify failed" in low:
        if "expired" in low:
            return Diagnosis(
                f"the coordinator at {address} presented an expired TLS certificate: the "
                "federation's certificates must be renewed (a new key ceremony)",
                fatal=True,
            )
        return Diagnosis(
            f"the coordinator at {address} presented a TLS certificate that {ca_file} did not "
            "sign: use the ca.pem from the same key ceremony as the coordinator's certificate "
            "(its tls/ca.pem)",
            fatal=True,
        )
    if "peer name" in low or "hostname mismatch" in low or "not in peer certificate" in low:
        return Diagnosis(
            f"the coordinator's TLS certificate does not name {host!r}: dial it by a name or "
            "address given to --tls-hosts at the key ceremony (default 127.0.0.1, localhost)",
            fatal=True,
        )
    tls = _speaks_tls(host, port, timeout)
    if tls is None:
        try:
            with socket.create_connection((host, port), timeout=timeout):
                pass
        except ConnectionRefusedError:
            return Diagnosis(
                f"nothing is listening at {address}: start the coordinator there, or check the "
                "host and port",
                fatal=False,
            )
        except OSError as exc:
            return Diagnosis(
                f"cannot reach {address}: {exc.strerror or exc} (check the address, the "
                "network and any firewall)",
                fatal=False,
            )
        return None
    if insecure and tls:
        return Diagnosis(
            f"the coordinator at {address} serves TLS, but this connection is plaintext "
            "(--insecure, or insecure = true in agency.toml): connect with the federation's CA "
            'instead (--ca-file tls/ca.pem, or ca_file = "ca.pem")',
            fatal=True,
        )
    if not insecure and not tls:
        return Diagnosis(
            f"the coordinator at {address} does not speak TLS (it was started with "
            "--insecure): connect with --insecure (insecure = true in agency.toml; loopback "
            "only), or restart it with --tls-cert and --tls-key",
            # not fatal for a daemon: a proxy or load balancer in front of a coordinator that
            # is not up yet closes the handshake the same way, and the coordinator may come
            fatal=False,
        )
    return None


class TLSFileError(ValueError):
    """A TLS certificate or key file that cannot serve (swapped, mismatched, not PEM)."""


def check_tls_pair(cert: str | os.PathLike[str], key: str | os.PathLike[str]) -> None:
    """Check that ``cert`` is a PEM certificate and ``key`` its PEM private key.

    Parameters
    ----------
    cert, key : str or path-like
        The server's ``--tls-cert`` and ``--tls-key``.

    Raises
    ------
    TLSFileError
        Naming the file at fault: swapped files, a key of another certificate, not PEM.
    OSError
        A file cannot be read.
    """
    from cryptography import x509
    from cryptography.hazmat.primitives import serialization

    cert_pem, key_pem = Path(cert).read_bytes(), Path(key).read_bytes()
    if b"PRIVATE KEY-----" in cert_pem and b"-----BEGIN CERTIFICATE" in key_pem:
        raise TLSFileError(
            f"--tls-cert {cert} holds a private key and --tls-key {key} a certificate: the two "
            "files are swapped (give --tls-cert server.pem --tls-key server.key)"
        )
    try:
        certificate = x509.load_pem_x509_certificate(cert_pem)
    except ValueError:
        raise TLSFileError(
            f"--tls-cert {cert} is not a PEM certificate (expected coordinator/server.pem from "
            "the key ceremony)"
        ) from None
    try:
        private = serialization.load_pem_private_key(key_pem, password=None)
    except (ValueError, TypeError):
        raise TLSFileError(
            f"--tls-key {key} is not an unencrypted PEM private key (expected "
            "coordinator/server.key from the key ceremony)"
        ) from None
    fmt = serialization.PublicFormat.SubjectPublicKeyInfo
    enc = serialization.Encoding.DER
    if certificate.public_key().public_bytes(enc, fmt) != private.public_key().public_bytes(
        enc, fmt
    ):
        raise TLSFileError(
            f"--tls-key {key} is not the private key of --tls-cert {cert}: give the "
            "server.pem and server.key of the same key ceremony"
        )
