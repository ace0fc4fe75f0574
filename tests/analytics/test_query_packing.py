"""Query rounds pack their integers at the integers' own width: >= 95 % of the theory.

Theory: ``floor((n_length - 1) / (w + ceil(log2 K)))`` values per ciphertext for ``w``-bit
integers and ``K`` participants, with ``w`` what the round's values need, computed here from
the query: 1 bit for the presence round (0 or 1), the limb size for the cells round, one bit
more for noised (differential privacy) entries in ``±(2^b - 1)``, and for a quantile round
the bit length of the largest row count of its cells (a bin count never exceeds it). Achieved:
the ciphertexts of every real 512-bit threshold-encrypted contribution.
"""

from __future__ import annotations

from slots import round_slots
from test_query import FULL

from fedcity.analytics import QueryFederation


def _needed_width(rnd, algorithm) -> int:
    params = rnd.task.request.params
    kind = rnd.task.request.kind
    if kind == "query.presence":
        return 1
    if "dp" in params:
        return int(params["limb_bits"]) + 1
    if kind == "query.quantile":
        targets = params["targets"]
        if all(t[5] == 1 for t in targets):
            rows = [algorithm.totals_.values[t[1]][0] for t in targets]
            return max(max(1, r.bit_length()) for r in rows)
    return int(params["limb_bits"])


def _efficiencies(fed, result, public_key):
    algorithm = fed.drivers[result.job_id].algorithm
    out = []
    for rnd in fed.rounds(result.job_id):
        slots = round_slots(rnd, public_key, _needed_width(rnd, algorithm))
        out.append(slots)
    return out


def test_query_rounds_fill_their_ciphertexts(permit_tables, key_3_of_5):
    fed = QueryFederation(permit_tables, threshold=3, key=key_3_of_5)
    result = fed.run(FULL)
    rounds = _efficiencies(fed, result, key_3_of_5[0].public_key)
    kinds = [s.kind for s in rounds]
    assert kinds[:2] == ["query.presence", "query.cells"] and "query.quantile" in kinds
    for slots in rounds:
        assert slots.efficiency >= 0.95, slots
    presence = rounds[0]
    assert presence.theory == 511 // (1 + 3)  # five agencies: 3 headroom bits


def test_noised_query_rounds_fill_their_ciphertexts(permit_tables, key_3_of_5):
    spec = {
        **FULL,
        "aggregate": FULL["aggregate"][:4],
        "privacy": {"epsilon": 1.0, "delta": 1e-6, "noise": "gaussian"},
    }
    fed = QueryFederation(permit_tables, threshold=3, key=key_3_of_5)
    result = fed.run(spec)
    rounds = _efficiencies(fed, result, key_3_of_5[0].public_key)
    assert [s.kind for s in rounds] == ["query.cells"]
    assert rounds[0].efficiency >= 0.95, rounds[0]
