"""Errors of the protocol core. Each maps to one gRPC status in the networked services."""

from __future__ import annotations


class ProtocolError(ValueError):
    """A message that does not fit the protocol state (wrong round, job or phase)."""


class RejectedContribution(ProtocolError):
    """A contribution or partial decryption was refused; stored state is unchanged."""


class AgencyUnavailable(RuntimeError):
    """An agency did not answer (crashed, disconnected, or left the job)."""


class JobFailed(RuntimeError):
    """A job cannot continue, e.g. fewer agencies remain than its minimum or threshold."""
