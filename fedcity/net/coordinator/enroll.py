"""The enrollment service: certificates for invited principals (a thin shell over the registry)."""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

import grpc

from fedcity.governance.ca import MAX_CSR_BYTES, CAError, CertificateAuthority, identity_of
from fedcity.governance.enrollment import (
    MAX_TOKEN_CHARS,
    EnrollmentError,
    EnrollmentRegistry,
)
from fedcity.net import messages
from fedcity.net.auth import CertificateCheck, Refused
from fedcity.v1 import federation_pb2 as fpb
from fedcity.v1 import federation_pb2_grpc as fpb_grpc

__all__ = ["EnrollmentServicer"]

log = logging.getLogger("fedcity.net.coordinator")


class EnrollmentServicer(fpb_grpc.EnrollmentServiceServicer):
    """``Enroll`` (one-time token + CSR) and ``Renew`` (current certificate + CSR).

    Parameters
    ----------
    ca : CertificateAuthority
    registry : EnrollmentRegistry
    certificates : CertificateCheck
        Checks the caller's current certificate on ``Renew`` (revocation included).
    days : int
        Lifetime of issued certificates.
    audit : callable, optional
        ``audit(type, body=...)``: records every certificate issued in the coordinator's
        audit log (:mod:`fedcity.governance.audit`, record type ``"enroll"``).
    """

    def __init__(
        self,
        ca: CertificateAuthority,
        registry: EnrollmentRegistry,
        certificates: CertificateCheck,
        *,
        days: int = 90,
        audit: Callable[..., Any] | None = None,
    ) -> None:
        self.ca = ca
        self.registry = registry
        self.certificates = certificates
        self.days = days
        self.audit = audit

    def _record(self, action: str, cert: bytes) -> None:
        if self.audit is None:
            return
        identity = identity_of(cert)
        self.audit(
            "enroll",
            body={
                "action": action,
                "name": identity.name,
                "role": identity.role,
                "serial": format(identity.serial, "x"),
                "not_after": identity.not_after.isoformat(),
            },
        )

    def _answer(self, cert: bytes) -> fpb.EnrollResponse:
        identity = identity_of(cert)
        return fpb.EnrollResponse(
            certificate_pem=cert,
            ca_pem=self.ca.cert_pem,
            role=identity.role,
            not_after_unix=identity.not_after.timestamp(),
        )

    def Enroll(self, request: Any, context: grpc.ServicerContext) -> Any:  # noqa: N802
        """A certificate for an invited principal (token and CSR checked)."""
        if len(request.token) > MAX_TOKEN_CHARS or len(request.csr_pem) > MAX_CSR_BYTES:
            context.abort(grpc.StatusCode.INVALID_ARGUMENT, "token or signing request too large")
        try:
            name = messages.check_name(request.name, "name")
            cert = self.registry.redeem(
                request.token, name, bytes(request.csr_pem), self.ca, days=self.days
            )
        except EnrollmentError as exc:
            log.warning("enrollment of %s refused: %s", messages.shown(request.name), exc)
            context.abort(grpc.StatusCode.PERMISSION_DENIED, messages.status_message(str(exc)))
        except (CAError, messages.MessageError) as exc:
            context.abort(grpc.StatusCode.INVALID_ARGUMENT, messages.status_message(str(exc)))
        log.info("enrolled %s (%s)", name, identity_of(cert).role)
        self._record("enroll", cert)
        return self._answer(cert)

    def Renew(self, request: Any, context: grpc.ServicerContext) -> Any:  # noqa: N802
        """A fresh certificate for the caller's own name and role."""
        pems = context.auth_context().get("x509_pem_cert") or []
        if not pems:
            context.abort(
                grpc.StatusCode.UNAUTHENTICATED, "renewal needs the current client certificate"
            )
        if len(request.csr_pem) > MAX_CSR_BYTES:
            context.abort(grpc.StatusCode.INVALID_ARGUMENT, "signing request too large")
        current = bytes(pems[0])
        try:
            principal = self.certificates.principal(current)
            cert = self.registry.renew(current, bytes(request.csr_pem), self.ca, days=self.days)
        except Refused as exc:
            context.abort(exc.code, exc.message)
        except CAError as exc:
            context.abort(grpc.StatusCode.INVALID_ARGUMENT, messages.status_message(str(exc)))
        log.info("renewed the certificate of %s", principal.name)
        self._record("renew", cert)
        return self._answer(cert)
