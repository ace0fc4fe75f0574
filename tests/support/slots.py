"""Slot efficiency of real rounds: values sent per ciphertext against the theoretical bound.

Used by ``tests/learn/test_slot_efficiency.py`` and ``tests/analytics/test_query_packing.py``.
"""

from __future__ import annotations

from dataclasses import dataclass

from fedcity.core.precision import slot_efficiency, theoretical_slots
from fedcity.crypto.serde import encrypted_vector_from_bytes


@dataclass(frozen=True)
class RoundSlots:
    """What one round's contributions carried."""

    kind: str
    values: int
    ciphertexts: int
    theory: int
    width: int
    summands: int

    @property
    def efficiency(self) -> float:
        """Fewest ciphertexts the theory allows over the ciphertexts sent."""
        return slot_efficiency(self.values, self.ciphertexts, self.theory)


def round_slots(rnd, public_key, width: int) -> RoundSlots:
    """Count the ciphertexts of every contribution of ``rnd`` (they must agree) and compare
    with the theory for ``width``-bit values (the declared precision) and the round's
    participants as summands."""
    counts = set()
    for payload in rnd.contributions.values():
        vec = encrypted_vector_from_bytes(payload, public_key)
        assert vec.length == rnd.task.vector_length
        counts.add(len(vec.ciphertexts))
    assert len(counts) == 1, counts
    summands = rnd.task.spec.max_summands
    assert summands == len(rnd.participants)
    theory = theoretical_slots((1 << width) - 1, summands, public_key.n_length)
    return RoundSlots(
        rnd.task.request.kind, rnd.task.vector_length, counts.pop(), theory, width, summands
    )
