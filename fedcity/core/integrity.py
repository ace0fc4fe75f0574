"""What a decryptor checks before it helps decrypt: the aggregate is enough agencies' signed sum.

A coordinator that deviates from the protocol could send one agency's contribution to the
decryptors labelled as an aggregate and read it from their answers. Before an agency
partially decrypts, it therefore asks the coordinator for the *evidence* of the round: every
contribution the aggregate was built from, each with its contributor's Ed25519 signature
(:mod:`fedcity.crypto.signing`). :class:`ContributionVerifier` accepts the aggregate only if

1. the evidence is for the round being decrypted and names each agency at most once, every
   one of them a member of the federation;
2. it holds at least ``summands_min`` contributions (the job's minimum), and as many as the
   aggregate claims summands;
3. every signature verifies under that agency's public key for exactly this job, round,
   kind ``"contribution"``, agency, federation key id and payload digest;
4. in threshold mode, the product of the contributions' ciphertexts (mod n², as the
   coordinator adds them: :meth:`~fedcity.core.aggregation.PaillierScheme.add`) equals the
   aggregate ciphertext by ciphertext.

With differential privacy the agencies add their noise before they encrypt, so the aggregate
is still exactly that product and step 4 applies unchanged. In the single-key-holder mode
the coordinator blinds the product before the key holder sees it, and the key holder must
not see the contributions themselves (it holds the private key and could decrypt each one):
the evidence then carries digests and signatures only, and steps 1-3 are checked, not
step 4 (see ``docs/trust-model.md``).

A decryptor accepts a *second* aggregate for a (job, round) it already checked only with a
range-audit justification (:mod:`fedcity.core.audit`): otherwise a coordinator could read an
honest agency's contribution as the difference of two aggregates.

Everything here is sans-IO: the agent daemon fetches the evidence and hands it over.
"""

from __future__ import annotations

import hashlib
from collections import OrderedDict
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from fedcity.core.aggregation import AggregationScheme, KeyHolderScheme, PaillierScheme
from fedcity.core.errors import RejectedContribution
from fedcity.core.tasks import Task
from fedcity.crypto import CryptoError, EncryptedVector
from fedcity.crypto.signing import Statement, VerifyKey

if TYPE_CHECKING:
    from fedcity.core.audit import Justification

__all__ = [
    "ContributionVerifier",
    "Evidence",
    "SignedContribution",
    "withholds_payloads",
]


@dataclass(frozen=True)
class SignedContribution:
    """One contribution as its contributor signed it.

    Attributes
    ----------
    agency : str
    signature : bytes
        Ed25519 signature of the contribution's :class:`~fedcity.crypto.signing.Statement`.
    digest : bytes
        SHA-256 of the payload.
    payload : bytes or None
        The contribution's bytes; None where withheld (single-key-holder mode).
    """

    agency: str
    signature: bytes
    digest: bytes
    payload: bytes | None = None


@dataclass(frozen=True)
class Evidence:
    """The signed contributions a round's aggregate was built from."""

    job_id: str
    round: int
    contributions: tuple[SignedContribution, ...]

    @property
    def agencies(self) -> list[str]:
        """The contributors, in the order given."""
        return [c.agency for c in self.contributions]

    def digests(self) -> dict[str, str]:
        """Contributor → hex SHA-256 of its contribution (for audit logs)."""
        return {c.agency: c.digest.hex() for c in self.contributions}


def withholds_payloads(scheme: AggregationScheme) -> bool:
    """Whether decryptors are shown digests only (a key holder could decrypt contributions)."""
    return isinstance(scheme, KeyHolderScheme)


class ContributionVerifier:
    """Checks evidence against an aggregate before this agency decrypts it.

    Parameters
    ----------
    verify_keys : mapping of str to VerifyKey
        Every federation member's public signing key (``federation-public.json``).
    key_id : bytes
        The federation key's id, which every signature covers.
    """

    _REMEMBERED = 4096
    """(job, round) pairs whose accepted contributor set is remembered (oldest forgotten)."""

    def __init__(self, verify_keys: Mapping[str, VerifyKey], key_id: bytes) -> None:
        self.verify_keys = dict(verify_keys)
        self.key_id = bytes(key_id)
        self.accepted: OrderedDict[tuple[str, int], dict[str, str]] = OrderedDict()
        """(job, round) → contributor → hex digest of the aggregate this agency accepted."""

    def check(
        self,
        scheme: AggregationScheme,
        task: Task,
        aggregate: Any,
        evidence: Evidence,
        *,
        summands_min: int,
        justification: Justification | None = None,
        part: tuple[int, int] | None = None,
    ) -> dict[str, str]:
        """Accept ``aggregate`` or raise :class:`RejectedContribution` naming the mismatch.

        Parameters
        ----------
        scheme : AggregationScheme
            The federation's scheme (it decides what can be recomputed).
        task : Task
            The round being decrypted.
        aggregate : EncryptedVector
            What the coordinator asks this agency to decrypt (parsed and layout-checked).
        evidence : Evidence
        summands_min : int
            The fewest contributions the aggregate may hold.
        justification : Justification, optional
            Required when this agency already accepted another aggregate of the same round
            (a range audit excluded an agency); re-verified here.
        part : (int, int), optional
            ``(start, stop)``: this agency decrypts only ciphertexts ``start..stop-1`` (a
            decryption group's part), so only they are compared with the product of the
            contributions' ciphertexts at the same positions. That is sound because the
            coordinator adds ciphertext by ciphertext: the part of the sum is the sum of the
            parts, and what this agency decrypts is checked in full.

        Returns
        -------
        dict of str to str
            Contributor → hex SHA-256 of its verified contribution.
        """
        where = f"round {task.round} of job {task.job_id}"
        if evidence.job_id != task.job_id or evidence.round != task.round:
            raise RejectedContribution(
                f"the coordinator showed the contributions of round {evidence.round} of job "
                f"{evidence.job_id} for the aggregate of {where}"
            )
        seen: set[str] = set()
        for c in evidence.contributions:
            if c.agency in seen:
                raise RejectedContribution(f"the evidence for {where} lists {c.agency!r} twice")
            if c.agency not in self.verify_keys:
                raise RejectedContribution(
                    f"the evidence for {where} names {c.agency!r}, which is not a member of "
                    "the federation"
                )
            seen.add(c.agency)
        count = len(evidence.contributions)
        if count < summands_min:
            raise RejectedContribution(
                f"the coordinator showed {count} signed contribution(s) for {where} "
                f"({', '.join(evidence.agencies) or 'none'}); the job requires at least "
                f"{summands_min}"
            )
        summands = getattr(aggregate, "summands", None)
        if summands != count:
            raise RejectedContribution(
                f"the aggregate of {where} claims {summands} summands, but {count} signed "
                f"contribution(s) were shown ({', '.join(evidence.agencies)})"
            )
        for c in evidence.contributions:
            self._check_signature(task, c, where)
        if isinstance(scheme, PaillierScheme):
            self._check_product(scheme, task, aggregate, evidence.contributions, where, part)
        digests = evidence.digests()
        key = (task.job_id, task.round)
        previous = self.accepted.get(key)
        if previous != digests and (justification is not None or previous is not None):
            from fedcity.core.audit import check_justification

            if justification is None:
                raise RejectedContribution(
                    f"this agency already helped decrypt another aggregate of {where} "
                    f"({', '.join(sorted(previous or {}))}); a second one "
                    f"({', '.join(sorted(digests))}) needs a range-audit justification and none "
                    "was given"
                )
            check_justification(
                scheme,
                self.verify_keys,
                self.key_id,
                task,
                {c.agency: c.payload for c in evidence.contributions},
                justification,
                seen=previous,
            )
        if previous != digests:
            self.accepted[key] = digests
            self.accepted.move_to_end(key)
            while len(self.accepted) > self._REMEMBERED:
                self.accepted.popitem(last=False)
        return digests

    def _check_signature(self, task: Task, c: SignedContribution, where: str) -> None:
        if c.payload is not None and hashlib.sha256(c.payload).digest() != c.digest:
            raise RejectedContribution(
                f"the contribution of {c.agency!r} to {where} does not match its SHA-256"
            )
        try:
            statement = Statement(
                task.job_id, task.round, "contribution", c.agency, self.key_id, c.digest
            )
        except CryptoError as exc:
            raise RejectedContribution(f"the evidence for {where}: {exc}") from exc
        if not self.verify_keys[c.agency].verify(statement, c.signature):
            raise RejectedContribution(
                f"the signature of {c.agency!r} is not valid for contribution "
                f"{c.digest.hex()[:16]}… to {where} under key {self.key_id.hex()[:16]}"
            )

    @staticmethod
    def _check_product(
        scheme: PaillierScheme,
        task: Task,
        aggregate: EncryptedVector,
        contributions: Sequence[SignedContribution],
        where: str,
        part: tuple[int, int] | None = None,
    ) -> None:
        opened = []
        for c in contributions:
            if c.payload is None:
                raise RejectedContribution(
                    f"the coordinator withheld the contribution of {c.agency!r} to {where}; "
                    "the aggregate cannot be checked"
                )
            try:
                opened.append(scheme.open(c.payload, task.spec, task.vector_length))
            except RejectedContribution as exc:
                raise RejectedContribution(
                    f"the contribution of {c.agency!r} to {where}: {exc}"
                ) from exc
        offset = 0
        if part is not None:  # only the ciphertexts this agency decrypts
            offset = part[0]
            try:
                aggregate = scheme.part(aggregate, *part)
                opened = [scheme.part(v, *part) for v in opened]
            except ValueError as exc:
                raise RejectedContribution(f"the part asked of {where}: {exc}") from exc
        try:
            total = scheme.add(opened)
        except CryptoError as exc:
            raise RejectedContribution(f"the contributions to {where} do not add: {exc}") from exc
        if total.ciphertexts != aggregate.ciphertexts:
            pairs = zip(total.ciphertexts, aggregate.ciphertexts, strict=False)
            shorter = min(len(total.ciphertexts), len(aggregate.ciphertexts))
            first = offset + next((i for i, (a, b) in enumerate(pairs) if a != b), shorter)
            raise RejectedContribution(
                f"the aggregate of {where} is not the product of the {len(opened)} signed "
                f"contributions of {', '.join(c.agency for c in contributions)} (ciphertext "
                f"{first} differs)"
            )
