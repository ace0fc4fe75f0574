"""Who is calling: bearer tokens, roles, and the server's TLS and listen-address rules.

The coordinator knows principals from a credentials file written by the key ceremony::

    {"principals": [
        {"name": "district-01", "role": "agency",    "token_sha256": "<64 hex digits>"},
        {"name": "analyst",     "role": "scientist", "token_sha256": "<64 hex digits>"}]}

It holds only the SHA-256 of each token. Every call carries ``authorization: Bearer <token>``
metadata; :class:`AuthInterceptor` hashes the token and compares it with every known hash in
constant time (:func:`hmac.compare_digest`). A missing or unknown token is ``UNAUTHENTICATED``;
a principal calling a service of another role is ``PERMISSION_DENIED``. Handlers then ask
:meth:`Authenticator.principal` for the caller and check that an agency only acts as itself.

TLS is mandatory except on a loopback listen address (:func:`check_listen_address`).
"""

from __future__ import annotations

import hashlib
import hmac
import ipaddress
import json
import os
import re
import threading
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import grpc

__all__ = [
    "ROLES",
    "AuthError",
    "AuthInterceptor",
    "Authenticator",
    "CertificateCheck",
    "Principal",
    "Refused",
    "check_listen_address",
    "is_loopback_host",
    "load_credentials",
    "server_credentials",
    "split_host_port",
]

Role = Literal["agency", "scientist", "operator"]
ROLES: tuple[str, ...] = ("agency", "scientist", "operator")
"""Roles a principal may hold."""

_HEX64 = re.compile(r"[0-9a-f]{64}")
_BEARER = re.compile(r"[Bb]earer +(\S+)")


class AuthError(ValueError):
    """An invalid credentials file, TLS configuration or listen address."""


@dataclass(frozen=True)
class Principal:
    """An authenticated caller."""

    name: str
    role: str


def load_credentials(path: str | os.PathLike[str]) -> list[tuple[Principal, bytes]]:
    """Read and validate a credentials file.

    Parameters
    ----------
    path : str or path-like

    Returns
    -------
    list of (Principal, bytes)
        Each principal with the 32-byte SHA-256 of its token.

    Raises
    ------
    AuthError
        Naming the file and the entry at fault.
    """
    p = Path(path)
    try:
        data = json.loads(p.read_text(encoding="utf-8"))
    except OSError as exc:
        raise AuthError(f"cannot read credentials file {p}: {exc.strerror or exc}") from exc
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise AuthError(f"credentials file {p} is not valid JSON: {exc}") from exc
    return parse_credentials(data, source=str(p))


def parse_credentials(
    data: object, *, source: str = "credentials"
) -> list[tuple[Principal, bytes]]:
    """Validate the parsed JSON of a credentials file (see :func:`load_credentials`)."""
    if not isinstance(data, dict) or not isinstance(data.get("principals"), list):
        raise AuthError(f"{source}: expected an object with a 'principals' list")
    out: list[tuple[Principal, bytes]] = []
    names: set[str] = set()
    digests: set[bytes] = set()
    for i, entry in enumerate(data["principals"]):
        where = f"{source}: principals[{i}]"
        if not isinstance(entry, dict):
            raise AuthError(f"{where} must be an object")
        unknown = sorted(set(entry) - {"name", "role", "token_sha256"})
        if unknown:
            raise AuthError(f"{where} has unknown field(s) {unknown}")
        name, role, digest = entry.get("name"), entry.get("role"), entry.get("token_sha256")
        if not isinstance(name, str) or not name:
            raise AuthError(f"{where}: name must be a non-empty string")
        if role not in ROLES:
            raise AuthError(f"{where} ({name}): role must be one of {list(ROLES)}, got {role!r}")
        if not isinstance(digest, str) or not _HEX64.fullmatch(digest.lower()):
            raise AuthError(f"{where} ({name}): token_sha256 must be 64 hex digits")
        raw = bytes.fromhex(digest)
        if name in names:
            raise AuthError(f"{where}: principal {name!r} appears twice")
        if raw in digests:
            raise AuthError(f"{where} ({name}): another principal has the same token")
        names.add(name)
        digests.add(raw)
        out.append((Principal(name, str(role)), raw))
    if not out:
        raise AuthError(f"{source}: no principals")
    return out


class Refused(Exception):
    """A caller whose credentials were presented but cannot be accepted (e.g. revoked)."""

    def __init__(self, code: grpc.StatusCode, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


class CertificateCheck:
    """Principals from verified client certificates (mutual TLS), with revocation.

    gRPC has already checked the chain to the federation's CA and the validity period when
    a call arrives; this reads the name (CN) and role (OU), caching parsed certificates, and
    asks the enrollment registry on every call whether the serial was revoked.

    Parameters
    ----------
    is_revoked : callable
        ``is_revoked(serial) -> bool``, e.g. the enrollment registry's.
    """

    def __init__(self, is_revoked: Callable[[int], bool]) -> None:
        self.is_revoked = is_revoked
        self._cache: dict[bytes, tuple[Principal, int]] = {}
        self._lock = threading.Lock()

    def principal(self, cert_pem: bytes) -> Principal:
        """The certificate's principal, or :class:`Refused`."""
        key = hashlib.sha256(cert_pem).digest()
        with self._lock:
            cached = self._cache.get(key)
        if cached is None:
            from fedcity.governance.ca import CAError, identity_of

            try:
                identity = identity_of(cert_pem)
            except CAError as exc:
                raise Refused(grpc.StatusCode.UNAUTHENTICATED, str(exc)) from exc
            cached = (Principal(identity.name, identity.role), identity.serial)
            with self._lock:
                if len(self._cache) >= _MAX_CACHED_CERTS:
                    self._cache.clear()
                self._cache[key] = cached
        principal, serial = cached
        if self.is_revoked(serial):
            raise Refused(
                grpc.StatusCode.UNAUTHENTICATED,
                f"the certificate of {principal.name!r} was revoked by the federation's operator",
            )
        return principal


_MAX_CACHED_CERTS = 4096


class Authenticator:
    """Maps bearer tokens, or client certificates under mutual TLS, to principals.

    Parameters
    ----------
    principals : sequence of (Principal, bytes)
        As returned by :func:`load_credentials` (bearer tokens).
    certificates : CertificateCheck, optional
        With it, callers are identified by their client certificate alone and bearer tokens
        are not accepted (they only serve enrollment).
    """

    def __init__(
        self,
        principals: list[tuple[Principal, bytes]],
        *,
        certificates: CertificateCheck | None = None,
    ) -> None:
        self._entries = list(principals)
        self.certificates = certificates

    def identify(self, context: grpc.ServicerContext) -> Principal | None:
        """The caller of a call (its certificate under mutual TLS, else its bearer token).

        Raises
        ------
        Refused
            A certificate that cannot be accepted (revoked, no name or role).
        """
        if self.certificates is None:
            return self.lookup(context.invocation_metadata())
        pems = context.auth_context().get("x509_pem_cert") or []
        if not pems:
            return None
        return self.certificates.principal(bytes(pems[0]))

    @property
    def principals(self) -> list[Principal]:
        """Every known principal."""
        return [p for p, _ in self._entries]

    def lookup(self, metadata: Any) -> Principal | None:
        """The principal whose token the call's metadata carries, or None.

        Every known hash is compared (in constant time) whatever matches, so the time taken
        does not reveal which entry, if any, matched.
        """
        token = None
        for key, value in metadata or ():
            if key.lower() == "authorization":
                text = value.decode("latin-1") if isinstance(value, bytes) else str(value)
                match = _BEARER.fullmatch(text.strip())
                if match:
                    token = match.group(1)
                break
        if token is None:
            return None
        digest = hashlib.sha256(token.encode("utf-8")).digest()
        found = None
        for principal, expected in self._entries:
            if hmac.compare_digest(digest, expected):
                found = principal
        return found

    def principal(self, context: grpc.ServicerContext) -> Principal:
        """The authenticated caller of a call, or abort with ``UNAUTHENTICATED``."""
        principal = self.lookup(context.invocation_metadata())
        if principal is None:
            context.abort(grpc.StatusCode.UNAUTHENTICATED, _UNAUTHENTICATED)
        assert principal is not None
        return principal


_UNAUTHENTICATED = "missing or unknown bearer token (metadata 'authorization: Bearer <token>')"


class AuthInterceptor(grpc.ServerInterceptor):  # type: ignore[misc]
    """Refuse calls without a known token, or from a principal of the wrong role.

    Parameters
    ----------
    authenticator : Authenticator
    service_roles : mapping of str to str
        Fully qualified service name (``"fedcity.v1.AgentService"``) to the role allowed to
        call it. Services not listed (e.g. ``grpc.health.v1.Health``) are open.
    """

    def __init__(
        self, authenticator: Authenticator, service_roles: Mapping[str, str | tuple[str, ...]]
    ) -> None:
        self.authenticator = authenticator
        self.service_roles = dict(service_roles)

    def intercept_service(
        self, continuation: Callable[[Any], Any], handler_call_details: Any
    ) -> Any:
        """Check the caller before the method's handler runs."""
        method: str = handler_call_details.method
        service = method.rsplit("/", 1)[0].lstrip("/")
        role = self.service_roles.get(service)
        handler = continuation(handler_call_details)
        if role is None or handler is None:
            return handler
        principal = self.authenticator.lookup(handler_call_details.invocation_metadata)
        if principal is None:
            return _refusal(handler, grpc.StatusCode.UNAUTHENTICATED, _UNAUTHENTICATED)
        roles = (role,) if isinstance(role, str) else tuple(role)
        if principal.role not in roles:
            return _refusal(
                handler,
                grpc.StatusCode.PERMISSION_DENIED,
                f"{principal.role} {principal.name!r} may not call {method}; "
                f"it is reserved to the {' or '.join(roles)} role",
            )
        return handler


def _refusal(handler: Any, code: grpc.StatusCode, details: str) -> Any:
    """A handler of the same shape as ``handler`` that aborts with ``code``."""

    def abort(request: Any, context: grpc.ServicerContext) -> Any:
        context.abort(code, details)

    kwargs = {
        "request_deserializer": handler.request_deserializer,
        "response_serializer": handler.response_serializer,
    }
    if handler.request_streaming and handler.response_streaming:
        return grpc.stream_stream_rpc_method_handler(abort, **kwargs)
    if handler.request_streaming:
        return grpc.stream_unary_rpc_method_handler(abort, **kwargs)
    if handler.response_streaming:
        return grpc.unary_stream_rpc_method_handler(abort, **kwargs)
    return grpc.unary_unary_rpc_method_handler(abort, **kwargs)


# -- listen address and TLS -------------------------------------------------------------------
def split_host_port(address: str) -> tuple[str, int]:
    """Split ``host:port`` (IPv6 as ``[::1]:50051``).

    Raises
    ------
    AuthError
        Not ``host:port`` with a port in 0..65535.
    """
    host, sep, port = address.rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 <= int(port) <= 65535:
        raise AuthError(f"listen address must be host:port (IPv6 as [::1]:port), got {address!r}")
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    elif ":" in host:
        raise AuthError(f"write an IPv6 listen address in brackets, e.g. [::1]:50051: {address!r}")
    return host, int(port)


def is_loopback_host(host: str) -> bool:
    """Whether ``host`` names only this machine (``localhost``, 127.0.0.0/8, ``::1``)."""
    if host.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def check_listen_address(address: str, *, insecure: bool) -> tuple[str, int]:
    """Validate the listen address; plaintext is allowed only on loopback.

    Raises
    ------
    AuthError
        A malformed address, or ``insecure`` with a non-loopback host.
    """
    host, port = split_host_port(address)
    if insecure and not is_loopback_host(host):
        raise AuthError(
            f"--insecure serves plaintext gRPC and is only allowed on a loopback address "
            f"(127.0.0.1, ::1, localhost); {address!r} is reachable from other machines. "
            "Give --tls-cert and --tls-key instead."
        )
    return host, port


def server_credentials(
    cert: str | os.PathLike[str],
    key: str | os.PathLike[str],
    client_ca: str | os.PathLike[str] | None = None,
) -> grpc.ServerCredentials:
    """TLS credentials from PEM files; with ``client_ca`` clients must present certificates.

    Raises
    ------
    AuthError
        A file is missing, unreadable or not PEM.
    """

    def read(path: str | os.PathLike[str], what: str) -> bytes:
        try:
            data = Path(path).read_bytes()
        except OSError as exc:
            raise AuthError(f"cannot read {what} {path}: {exc.strerror or exc}") from exc
        if b"-----BEGIN " not in data:
            raise AuthError(f"{what} {path} is not a PEM file")
        return data

    pair = (read(key, "TLS key"), read(cert, "TLS certificate"))
    if client_ca is None:
        return grpc.ssl_server_credentials([pair])
    return grpc.ssl_server_credentials(
        [pair], root_certificates=read(client_ca, "client CA"), require_client_auth=True
    )
