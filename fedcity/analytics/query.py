"""The rounds of a secure group-by query (an :class:`~fedcity.learn.algorithm.Algorithm`).

1. ``query.presence`` — per cell, 1 if the agency has a matching row. The decrypted sum is the
   number of agencies per cell; it is public and decides which cells are *eligible*
   (at least ``min_agencies`` agencies).
2. ``query.cells`` — for eligible cells only: row counts, non-missing counts, offset
   fixed-point sums and sums of squares, histogram bin counts, each split into base-2^30 limbs,
   plus the total of out-of-domain rows. Cells that are not eligible are neither computed nor
   encrypted nor decrypted. Disclosure control then decides which cells are released.
3. ``query.quantile`` (only for quantile aggregates) — per released cell, bin counts of the
   column within the brackets that hold the ranks pandas interpolates between; repeated until
   every bracket is narrower than the requested tolerance.

Exactness and packing. Every vector entry is an integer in ``[0, 2^w)``, and without
differential privacy it is packed at that width: :class:`~fedcity.core.precision.ExactIntegers`
quantizes each integer to itself, so a slot takes ``w + ceil(log2 s)`` bits for ``s``
contributing agencies, the least any packing of such integers can (``w = 1`` in the presence
round; ``w = b``, the limb size, in the cells round; in a quantile round the bit length of the
largest row count among its cells, whose bin counts cannot exceed it, when one limb per bin
suffices). The limb size ``b`` in [24, 40] is chosen after the presence round: the one that packs
the cells round into the fewest bits (``b + ceil(log2 s) <= 53`` keeps every released sum exact
in float64). Under differential privacy there is no presence round: ``b`` comes from
:func:`~fedcity.analytics.local.limb_bits_for` for :data:`MAX_AGENCIES`, the noised entries in
``±(2^b - 1)`` travel shifted by ``2^b - 1`` (``w = b + 1``, task parameter ``value_offset``),
and the headroom is sized for :data:`MAX_AGENCIES`. The released sums decode exactly, and the
limbs recombine exactly in Python integers. Means, variances (``ddof=1``, as pandas),
standard deviations and ratios are computed from these exact integers with rational arithmetic
and rounded once to float.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from fractions import Fraction
from typing import TYPE_CHECKING, Any

import numpy as np
import numpy.typing as npt

from fedcity.analytics.local import (
    LIMB_BITS,
    MAX_LIMB_BITS,
    MIN_LIMB_BITS,
    ROW_BITS,
    Quantity,
    cell_quantities,
    from_limbs,
    limb_bits_for,
    ranges_from_cells,
)
from fedcity.analytics.spec import QueryError, QuerySpec, TableSchema
from fedcity.core.errors import JobFailed
from fedcity.core.precision import ExactIntegers
from fedcity.core.tasks import TaskRequest
from fedcity.learn.algorithm import Algorithm, RoundRecord

if TYPE_CHECKING:
    from fedcity.analytics.result import QueryResult

__all__ = [
    "MAX_AGENCIES",
    "QueryAlgorithm",
    "QueryJob",
    "basic_suppression",
    "query_job_from_spec",
    "query_steps",
]

MAX_PROTECTED_CELLS = 300
"""Most cells one release may need to protect by complementary suppression (its cost)."""
MAX_AGENCIES = 4096
"""Most agencies whose limb sums stay exact (see the module notes)."""
MAX_VECTOR = 4_000_000
"""Longest vector of one round (entries)."""
DEFAULT_BINS = 32
"""Bins per bracket and quantile round."""
MAX_QUANTILE_ROUNDS = 256
QUANTILE_ROUND_ENTRIES = 500_000
"""Entries of one quantile round; more brackets wait for the next round."""
MAX_TARGETS = 20_000
"""Brackets refined in one quantile round (bounds the task's parameters)."""

SuppressionRule = Callable[..., tuple[npt.NDArray[np.bool_], npt.NDArray[np.object_]]]


def basic_suppression(
    counts: npt.NDArray[np.float64],
    agencies: npt.NDArray[np.int64],
    *,
    min_count: int,
    min_agencies: int,
) -> tuple[npt.NDArray[np.bool_], npt.NDArray[np.object_]]:
    """Primary and agency-count suppression only (no complementary suppression).

    The fallback when :mod:`fedcity.analytics.disclosure` is unavailable (e.g. zero group-by
    dimensions). ``counts`` is NaN for cells that were not computed.

    Returns
    -------
    (mask, reasons)
        ``True`` where withheld; the reason text (``""`` where released).
    """
    mask = np.zeros(counts.shape, dtype=bool)
    reasons = np.full(counts.shape, "", dtype=object)
    for idx in np.ndindex(counts.shape):
        v, a = counts[idx], int(agencies[idx])
        parts = []
        computed = not math.isnan(v)
        if computed and 0 < v < min_count:
            parts.append(f"primary: count < {min_count}")
        if (not computed or v > 0) and a < min_agencies:
            parts.append(
                f"agencies: {a} < {min_agencies}" + ("" if computed else " (not computed)")
            )
        if parts:
            mask[idx] = True
            reasons[idx] = "; ".join(parts)
    return mask, reasons


def _suppress(
    spec: QuerySpec,
    counts: npt.NDArray[np.float64],
    agencies: npt.NDArray[np.int64],
    min_agencies: int,
) -> tuple[npt.NDArray[np.bool_], npt.NDArray[np.object_]]:
    """Disclosure control: the full module (complementary suppression) when it applies.

    Complementary suppression solves linear programs whose cost grows with the number of
    cells to protect; it runs while the coordinator holds its state, so a release with more
    than :data:`MAX_PROTECTED_CELLS` cells to protect fails with a clear message instead.
    """
    min_count = spec.disclosure.min_count
    computed = ~np.isnan(counts)
    sensitive = int(
        (computed & (counts > 0) & (counts < min_count)).sum()
        + ((~computed | (counts > 0)) & (agencies > 0) & (agencies < min_agencies)).sum()
    )
    if counts.ndim >= 2 and sensitive > MAX_PROTECTED_CELLS:
        raise JobFailed(
            f"{sensitive} cells are below the disclosure thresholds (min_count={min_count}, "
            f"min_agencies={min_agencies}); complementary suppression protects at most "
            f"{MAX_PROTECTED_CELLS} per release: group by fewer levels, filter, or use "
            "differential privacy"
        )
    if counts.ndim >= 1:
        try:
            from fedcity.analytics import disclosure
        except ImportError:  # pragma: no cover - the module ships with fedcity
            disclosure = None  # type: ignore[assignment]
        if disclosure is not None and hasattr(disclosure, "suppress"):
            out = disclosure.suppress(
                counts,
                agencies,
                min_count=min_count,
                min_agencies=min_agencies,
                names=spec.group_names(),
                levels=[list(spec.levels_of(g)) for g in spec.group_by],
            )
            return np.asarray(out.mask, dtype=bool), np.asarray(out.reasons, dtype=object)
    return basic_suppression(counts, agencies, min_count=min_count, min_agencies=min_agencies)


def _noisy_suppression(
    spec: QuerySpec,
    counts: npt.NDArray[np.float64],
    agencies: npt.NDArray[np.int64],
    min_agencies: int,
) -> tuple[npt.NDArray[np.bool_], npt.NDArray[np.object_]]:
    """Under differential privacy: primary suppression on the noisy counts.

    Agencies per cell are not released under DP (every cell is computed and noised), so the
    agency-count rule does not apply; the noise protects cells of one agency.
    """
    return basic_suppression(
        np.where(np.isnan(counts), np.nan, np.maximum(counts, 0.0)),
        np.zeros(counts.shape, dtype=np.int64),
        min_count=spec.disclosure.min_count,
        min_agencies=0,
    )


_PRIVACY_KEYS = ("epsilon", "delta", "noise", "colluding", "queries")


def plan_noise(spec: QuerySpec, privacy: Mapping[str, Any], min_agencies: int) -> Any:
    """The calibrated noise plan of a query (:func:`fedcity.analytics.privacy.plan_query_noise`).

    Raises
    ------
    QueryError
        Unknown or invalid privacy parameters, or an aggregate DP cannot serve.
    """
    from fedcity.analytics.privacy import plan_query_noise, query_blocks

    unknown = sorted(set(privacy) - set(_PRIVACY_KEYS))
    if unknown:
        raise QueryError(f"privacy: unknown key(s) {unknown}; allowed: {list(_PRIVACY_KEYS)}")
    if "epsilon" not in privacy or "delta" not in privacy:
        raise QueryError("privacy: epsilon and delta are required")
    ranges: dict[str, tuple[int, float]] = {}
    for name, col in spec.columns.items():
        if col.clip is not None:
            d, lo, hi = col.units(name)
            ranges[name] = (hi - lo, 10.0**-d)
    try:
        blocks = query_blocks(
            [a.to_dict() for a in spec.aggregates], ranges, cells=spec.n_cells, presence=False
        )
        return plan_query_noise(
            blocks,
            epsilon=privacy["epsilon"],
            delta=privacy["delta"],
            noise=privacy.get("noise", "gaussian"),
            n_agencies_min=min_agencies,
            colluding=privacy.get("colluding", 0),
            queries=privacy.get("queries", 1),
        )
    except ValueError as exc:
        if isinstance(exc, QueryError):
            raise
        raise QueryError(f"privacy: {exc}") from exc


@dataclass
class _Rank:
    """Refinement state of one order statistic (0-based rank) of one cell's column."""

    rank: int
    lo: int  # bracket in offset fixed-point units, inclusive
    hi: int
    below: int = 0  # values < lo


@dataclass
class _QuantileState:
    aggregate: str
    column: str
    cell: int
    n: int
    h: float
    ranks: list[_Rank] = field(default_factory=list)


@dataclass
class CellTotals:
    """Released exact totals of the eligible cells (what the coordinator learns)."""

    quantities: list[Quantity]
    values: dict[int, tuple[int, ...]]
    out_of_domain: int


class QueryAlgorithm(Algorithm):
    """Presence, eligible cells, then quantile refinement, as secure sums.

    Parameters
    ----------
    spec : QuerySpec
        A parsed spec (validated against the table's schema when the schema is known).
    min_agencies : int, default 2
        The job's minimum contributors; a cell needs ``max(min_agencies,
        spec.disclosure.min_agencies)`` agencies to be computed.
    bins : int, default 32
        Bins per bracket per quantile round.
    suppression : callable, optional
        ``suppression(spec, counts, agencies, min_agencies) -> (mask, reasons)``; default:
        :mod:`fedcity.analytics.disclosure` (complementary suppression included).
    privacy : mapping, optional
        Differential privacy: ``{"epsilon", "delta", "noise": "gaussian"|"skellam",
        "colluding": 0, "queries": 1}`` (see :mod:`fedcity.analytics.privacy`). Every agency adds
        a calibrated noise share to every entry of the presence and cells rounds, each quantity
        travels as one entry (no limbs), and disclosure control works on the noisy counts
        (primary and agency-count rules; complementary suppression is not needed under DP).
        ``var``, ``std`` and ``quantile`` are refused.
    accountant : PrivacyAccountant, optional
        Charged once per query (default: a fresh one from the noise plan).

    Attributes
    ----------
    agencies_ : numpy.ndarray of int
        Agencies per cell (shape ``spec.dims``), after the presence round.
    eligible_ : list of int
        Cells computed in the cells round.
    totals_ : CellTotals
        Exact released totals of the eligible cells.
    mask_, reasons_ : numpy.ndarray
        Disclosure control's decision per cell.
    quantiles_ : dict
        ``(aggregate, cell) -> (estimate, low, high)``.
    n_contributors_ : int
        Agencies that took part in the presence round.
    """

    def __init__(
        self,
        spec: QuerySpec,
        *,
        min_agencies: int = 2,
        bins: int = DEFAULT_BINS,
        suppression: Callable[..., tuple[Any, Any]] | None = None,
        privacy: Mapping[str, Any] | None = None,
        accountant: Any = None,
    ) -> None:
        if not isinstance(spec, QuerySpec):
            raise TypeError(f"spec must be a QuerySpec, got {type(spec).__name__}")
        if isinstance(bins, bool) or not isinstance(bins, int) or not 2 <= bins <= 1024:
            raise QueryError(f"bins must be an integer in [2, 1024], got {bins!r}")
        if isinstance(min_agencies, bool) or not isinstance(min_agencies, int) or min_agencies < 1:
            raise QueryError(f"min_agencies must be a positive integer, got {min_agencies!r}")
        self.spec = spec.resolved()
        self.params_spec = self.spec.to_dict()
        self.quantities = cell_quantities(self.spec)
        self.min_agencies = max(min_agencies, spec.disclosure.min_agencies or 1)
        self.bins = bins
        self.suppression = suppression or _suppress
        self.plan_ = None if not privacy else plan_noise(self.spec, privacy, self.min_agencies)
        self.limb_bits_ = LIMB_BITS
        self.per_cell = self._per_cell()
        self.accountant = accountant
        if self.plan_ is not None and accountant is None:
            self.accountant = self.plan_.accountant()
        if self.plan_ is not None and suppression is None:
            self.suppression = _noisy_suppression
        if self.spec.n_cells * self.per_cell + self._ood_limbs > MAX_VECTOR:
            raise QueryError(
                f"the query needs {self.spec.n_cells} cells × {self.per_cell} entries per cell; "
                f"the limit is {MAX_VECTOR} entries per round (fewer levels or aggregates)"
            )
        self._stage = "presence"
        self.n_contributors_: int | None = None
        self.agencies_: npt.NDArray[np.int64] | None = None
        self.eligible_: list[int] = []
        if self.plan_ is not None:
            # under DP every cell is computed: its noise protects a one-agency cell, and no
            # exact presence round is released (agencies per cell stay unknown: -1)
            self._stage = "cells"
            self.eligible_ = list(range(self.spec.n_cells))
            self.agencies_ = np.full(self.spec.dims or (), -1, dtype=np.int64)
            self.limb_bits_ = limb_bits_for(MAX_AGENCIES)
        self.totals_: CellTotals | None = None
        self.mask_: npt.NDArray[np.bool_] | None = None
        self.reasons_: npt.NDArray[np.object_] | None = None
        self.quantiles_: dict[tuple[str, int], tuple[float, float, float]] = {}
        self._qstates: list[_QuantileState] = []
        self._targets: list[tuple[str, int, int, int, int, int]] = []
        self.quantile_rounds_ = 0

    # -- rounds ---------------------------------------------------------------------------------
    @property
    def finished(self) -> bool:
        """All rounds done."""
        return self._stage == "done"

    def _per_cell(self) -> int:
        if self.plan_ is not None:
            return len(self.quantities)  # one noised entry per quantity
        return sum(q.n_limbs(self.limb_bits_) for q in self.quantities)

    @property
    def _ood_limbs(self) -> int:
        return 1 if self.plan_ is not None else -(-ROW_BITS // self.limb_bits_)

    def _request(
        self,
        kind: str,
        extra: Mapping[str, Any],
        length: int,
        label: str,
        value_bits: int | None = None,
    ) -> TaskRequest:
        params = {"table": self.spec.table, "spec": self.params_spec, **extra}
        if kind != "query.presence" or self.plan_ is not None:
            params["limb_bits"] = self.limb_bits_
        width = value_bits if value_bits is not None else self.limb_bits_
        if self.plan_ is not None:
            params["dp"] = self.plan_.task_params()
            # noised entries lie in ±(2^b - 1): shifted by 2^b - 1 they are b + 1 bits wide
            params["value_offset"] = (1 << self.limb_bits_) - 1
            width = self.limb_bits_ + 1
        # exact integers at their own width (module notes, "Exactness and packing")
        codec = ExactIntegers.for_summands(width, self._max_summands)
        params["value_bits"] = codec.bits
        params["unit_bits"] = codec.unit_bits
        return TaskRequest(
            kind,
            params,
            length,
            clip=codec.clip,
            precision_bits=codec.precision_bits,
            label=label,
        )

    @property
    def _max_summands(self) -> int:
        """Most contributors a round can have: the presence round's, once known."""
        return MAX_AGENCIES if self.n_contributors_ is None else max(self.n_contributors_, 1)

    def next_request(self) -> TaskRequest | None:
        """Presence, then cells, then quantile rounds until every bracket is narrow enough."""
        if self._stage == "presence":
            return self._request(
                "query.presence", {}, self.spec.n_cells, "query: agencies per cell", 1
            )
        if self._stage == "cells":
            if self.plan_ is not None:
                from fedcity.privacy import BudgetExceededError

                try:
                    self.accountant.check()
                except BudgetExceededError as exc:
                    raise JobFailed(f"privacy budget exhausted: {exc}") from exc
            length = len(self.eligible_) * self.per_cell + self._ood_limbs
            if length > MAX_VECTOR:
                raise JobFailed(f"the cells round would need {length} entries (> {MAX_VECTOR})")
            return self._request(
                "query.cells",
                {"cells": ranges_from_cells(self.eligible_)},
                length,
                f"query: {len(self.eligible_)} eligible cells",
            )
        if self._stage == "quantile":
            if self.quantile_rounds_ >= MAX_QUANTILE_ROUNDS:
                raise JobFailed(
                    f"quantile refinement did not finish in {MAX_QUANTILE_ROUNDS} rounds"
                )
            self._targets = self._quantile_targets()
            if not self._targets:
                self._finish_quantiles()
                self._stage = "done"
                return None
            length = sum(t[4] * t[5] for t in self._targets)
            if length > MAX_VECTOR:
                raise JobFailed(f"a quantile round would need {length} entries (> {MAX_VECTOR})")
            # one limb per bin count (below the cell's row count) packs at the counts' width
            single = all(t[5] == 1 for t in self._targets)
            width = (
                max(max(1, self._cell_rows(t[1]).bit_length()) for t in self._targets)
                if single
                else self.limb_bits_
            )
            return self._request(
                "query.quantile",
                {"targets": [list(t) for t in self._targets]},
                length,
                f"query: quantile refinement {self.quantile_rounds_ + 1}",
                width,
            )
        return None

    @property
    def max_rounds(self) -> int | None:
        """Two rounds (one under DP), plus quantile refinement rounds when asked."""
        if not any(a.func == "quantile" for a in self.spec.aggregates):
            return 1 if self.plan_ is not None else 2
        worst = 0
        for a in self.spec.aggregates:
            if a.func == "quantile" and a.column:
                _, lo, hi = self.spec.columns[a.column].units(a.column)
                worst = max(
                    worst, math.ceil(max(1, (hi - lo + 1).bit_length()) / math.log2(self.bins))
                )
        return 2 + worst

    def update(
        self, request: TaskRequest, released: npt.NDArray[np.float64], record: RoundRecord
    ) -> None:
        """Decode the released limb sums of a round (exact integers)."""
        n = len(record.contributors)
        if n > MAX_AGENCIES:
            raise JobFailed(f"{n} agencies exceed the {MAX_AGENCIES} a query can sum exactly")
        if "unit_bits" in request.params:
            codec = ExactIntegers(request.params["value_bits"], request.params["unit_bits"])
            try:
                ints = codec.decode(released, n)
            except ValueError as exc:
                raise JobFailed(f"{request.kind}: {exc}") from exc
            offset = int(request.params.get("value_offset", 0))
            ints = [v - n * offset for v in ints]
            bits = int(request.params.get("limb_bits", codec.bits))
        else:
            ints = [int(v) for v in np.rint(released)]
            bits = int(request.params.get("limb_bits", 1))
        top = n * ((1 << bits) - 1)
        low = -top if self.plan_ is not None else 0
        bad = [i for i, v in enumerate(ints) if not low <= v <= top]
        if bad:
            raise JobFailed(
                f"{request.kind}: released entry {bad[0]} = {ints[bad[0]]} is outside "
                f"[0, {top}] for {n} agencies; an agency sent values outside the encoding"
            )
        if request.kind == "query.presence":
            self._on_presence(ints, n)
        elif request.kind == "query.cells":
            if self.plan_ is not None:
                self.accountant.charge()  # the query's one noisy release
                self.n_contributors_ = n
            self._on_cells(ints)
        elif request.kind == "query.quantile":
            self._on_quantile(ints)
            self.quantile_rounds_ += 1
        else:  # pragma: no cover - the algorithm only issues its own kinds
            raise JobFailed(f"unexpected round {request.kind!r}")

    def _on_presence(self, ints: list[int], n: int) -> None:
        self.n_contributors_ = n
        self.agencies_ = np.asarray(ints, dtype=np.int64).reshape(self.spec.dims or ())
        self.eligible_ = [i for i, a in enumerate(ints) if a >= self.min_agencies]
        # later rounds have at most these contributors: the limb size that packs the cells
        # round into the fewest bits at their headroom
        self.limb_bits_ = self._best_limb_bits(max(n, 1))
        self.per_cell = self._per_cell()
        self._stage = "cells"

    def _best_limb_bits(self, agencies: int) -> int:
        """Limb size in [MIN_LIMB_BITS, MAX_LIMB_BITS] with the fewest cells-round bits.

        Each limb takes ``bits + h`` bits of a plaintext (``h = ceil(log2 agencies)``); sums
        stay exact in float64 while ``bits + h <= 53``. Ties go to the larger limb.
        """
        h = (agencies - 1).bit_length()
        top = min(MAX_LIMB_BITS, 53 - h)
        cells = len(self.eligible_)

        def cost(bits: int) -> tuple[int, int]:
            limbs = cells * sum(q.n_limbs(bits) for q in self.quantities)
            limbs += -(-ROW_BITS // bits)
            return limbs * (bits + h), -bits

        return min(range(MIN_LIMB_BITS, top + 1), key=cost)

    def _cell_rows(self, cell: int) -> int:
        assert self.totals_ is not None
        return int(self.totals_.values[cell][0])

    def _on_cells(self, ints: list[int]) -> None:
        values: dict[int, tuple[int, ...]] = {}
        pos = 0
        for cell in self.eligible_:
            cell_vals: list[int] = []
            for q in self.quantities:
                k = 1 if self.plan_ is not None else q.n_limbs(self.limb_bits_)
                cell_vals.append(from_limbs(ints[pos : pos + k], self.limb_bits_))
                pos += k
            values[cell] = tuple(cell_vals)
        ood = from_limbs(ints[pos : pos + self._ood_limbs], self.limb_bits_)
        self.totals_ = CellTotals(self.quantities, values, ood)
        assert self.agencies_ is not None
        flat_agencies = self.agencies_.reshape(-1)
        counts = np.full(self.spec.n_cells, np.nan)
        if self.plan_ is None:
            counts[flat_agencies == 0] = 0.0  # no agency has a row: the count is known to be 0
        for cell, vals in values.items():
            counts[cell] = float(vals[0])
        shape = self.spec.dims or ()
        mask, reasons = self.suppression(
            self.spec, counts.reshape(shape), self.agencies_, self.min_agencies
        )
        self.mask_ = np.asarray(mask, dtype=bool).reshape(shape)
        self.reasons_ = np.asarray(reasons, dtype=object).reshape(shape)
        self._init_quantiles()
        self._stage = "quantile" if self._qstates else "done"

    # -- quantiles ------------------------------------------------------------------------------
    def _init_quantiles(self) -> None:
        assert self.totals_ is not None and self.mask_ is not None
        flat_mask = self.mask_.reshape(-1)
        keys = [q.key for q in self.quantities]
        for a in self.spec.aggregates:
            if a.func != "quantile":
                continue
            assert a.column is not None and a.q is not None
            _, lo, hi = self.spec.columns[a.column].units(a.column)
            nn_index = keys.index(f"nn:{a.column}")
            for cell in self.eligible_:
                if flat_mask[cell]:
                    continue  # withheld cells are not refined
                n = self.totals_.values[cell][nn_index]
                if n == 0:
                    continue
                h = (n - 1) * a.q
                ranks = sorted({math.floor(h), math.ceil(h)})
                state = _QuantileState(a.name, a.column, cell, n, h)
                state.ranks = [_Rank(r, 0, hi - lo) for r in ranks]
                self._qstates.append(state)

    def _tolerance_units(self, aggregate: str) -> float:
        a = next(x for x in self.spec.aggregates if x.name == aggregate)
        assert a.column is not None and a.tolerance is not None
        d = self.spec.columns[a.column].resolved_decimals(a.column)
        return float(a.tolerance) * float(10**d)

    def _quantile_targets(self) -> list[tuple[str, int, int, int, int, int]]:
        assert self.totals_ is not None
        targets: dict[tuple[str, int, int, int], tuple[str, int, int, int, int, int]] = {}
        n_index = 0  # row count bounds every per-agency bin count of the cell
        entries = 0
        for st in self._qstates:
            if entries >= QUANTILE_ROUND_ENTRIES or len(targets) >= MAX_TARGETS:
                break  # the remaining brackets are refined in the next round
            tol = self._tolerance_units(st.aggregate)
            total = self.totals_.values[st.cell][n_index]
            limbs = max(1, -(-max(1, total.bit_length()) // self.limb_bits_))
            for r in st.ranks:
                if r.hi - r.lo <= tol:
                    continue
                key = (st.column, st.cell, r.lo, r.hi)
                k = min(self.bins, r.hi - r.lo + 1)
                if key not in targets:
                    targets[key] = (st.column, st.cell, r.lo, r.hi, k, limbs)
                    entries += k * limbs
        return list(targets.values())

    def _on_quantile(self, ints: list[int]) -> None:
        counts: dict[tuple[str, int, int, int], list[int]] = {}
        pos = 0
        for column, cell, lo, hi, k, limbs in self._targets:
            bins = []
            for _ in range(k):
                bins.append(from_limbs(ints[pos : pos + limbs], self.limb_bits_))
                pos += limbs
            counts[(column, cell, lo, hi)] = bins
        for st in self._qstates:
            for r in st.ranks:
                got = counts.get((st.column, st.cell, r.lo, r.hi))
                if got is None:
                    continue
                k = len(got)
                width = r.hi - r.lo + 1
                below = r.below
                for j, c in enumerate(got):
                    if below + c > r.rank:
                        start = r.lo + -(-j * width // k)
                        stop = r.lo + -(-(j + 1) * width // k) - 1
                        r.lo, r.hi, r.below = start, stop, below
                        break
                    below += c
                else:
                    raise JobFailed(
                        f"quantile {st.aggregate!r}: rank {r.rank} of cell {st.cell} is not in "
                        f"its bracket (the agencies' data changed during the query?)"
                    )

    def _finish_quantiles(self) -> None:
        for st in self._qstates:
            d, lo_u, _ = self.spec.columns[st.column].units(st.column)
            scale = 10**d
            r1 = st.ranks[0]
            r2 = st.ranks[-1]
            frac = st.h - math.floor(st.h)
            mid1 = (lo_u + (r1.lo + r1.hi) / 2) / scale
            mid2 = (lo_u + (r2.lo + r2.hi) / 2) / scale
            low = ((lo_u + r1.lo) + frac * (r2.lo - r1.lo)) / scale
            high = ((lo_u + r1.hi) + frac * (r2.hi - r1.hi)) / scale
            self.quantiles_[(st.aggregate, st.cell)] = (mid1 + frac * (mid2 - mid1), low, high)

    # -- results --------------------------------------------------------------------------------
    def cell_values(self) -> dict[str, list[Any]]:
        """Aggregate columns of the result, one value per cell (None where withheld)."""
        assert self.totals_ is not None and self.mask_ is not None
        spec = self.spec
        keys = {q.key: i for i, q in enumerate(self.quantities)}
        flat_mask = self.mask_.reshape(-1)
        assert self.agencies_ is not None
        flat_agencies = self.agencies_.reshape(-1)
        zero = (0,) * len(self.quantities)
        out: dict[str, list[Any]] = {}
        for a in spec.aggregates:
            names = _output_columns(spec, a.name)
            cols: dict[str, list[Any]] = {n: [] for n in names}
            for cell in range(spec.n_cells):
                vals = self.totals_.values.get(cell)
                if vals is None and flat_agencies[cell] == 0 and self.plan_ is None:
                    vals = zero  # no agency has a matching row: every total is 0
                if vals is None or flat_mask[cell]:
                    for n in names:
                        cols[n].append(None)
                    continue
                for n, v in zip(
                    names, _aggregate_value(spec, a, vals, keys, self, cell), strict=True
                ):
                    cols[n].append(v)
            out.update(cols)
        return out


def _output_columns(spec: QuerySpec, name: str) -> list[str]:
    a = next(x for x in spec.aggregates if x.name == name)
    if a.func == "histogram":
        assert a.bins is not None
        edges = a.bins
        last = len(edges) - 2
        return [
            f"{a.name}[{edges[j]:g},{edges[j + 1]:g}{']' if j == last else ')'}"
            for j in range(len(edges) - 1)
        ]
    if a.func == "quantile":
        return [a.name, f"{a.name}_low", f"{a.name}_high"]
    return [a.name]


def _column_total(
    spec: QuerySpec, col: str, vals: Sequence[int], keys: Mapping[str, int]
) -> Fraction:
    """Exact sum of the fixed-point values of ``col`` (in the column's units)."""
    d, lo, _ = spec.columns[col].units(col)
    s = vals[keys[f"s:{col}"]] + vals[keys[f"nn:{col}"]] * lo
    return Fraction(s, 10**d)


def _exact_or_float(x: Fraction) -> int | float:
    return int(x) if x.denominator == 1 else float(x)


def _aggregate_value(
    spec: QuerySpec,
    a: Any,
    vals: Sequence[int],
    keys: Mapping[str, int],
    algo: QueryAlgorithm,
    cell: int,
) -> list[Any]:
    nan = float("nan")
    if a.func == "count":
        return [vals[keys[f"nn:{a.column}"]] if a.column else vals[keys["n"]]]
    if a.func == "histogram":
        assert a.bins is not None
        return [vals[keys[f"h:{a.name}:{j}"]] for j in range(len(a.bins) - 1)]
    if a.func == "quantile":
        got = algo.quantiles_.get((a.name, cell))
        return list(got) if got is not None else [nan, nan, nan]
    if a.func == "ratio":
        num = _column_total(spec, a.numerator, vals, keys)
        if a.denominator:
            den = _column_total(spec, a.denominator, vals, keys)
        else:
            den = Fraction(vals[keys["n"]])
        return [float(num / den * Fraction(a.scale)) if den > 0 else nan]
    col = a.column
    n = vals[keys[f"nn:{col}"]]
    total = _column_total(spec, col, vals, keys)
    if a.func == "sum":
        kind = spec.columns[col].type
        d = spec.columns[col].resolved_decimals(col)
        return [
            int(total) if (kind == "integer" or d == 0) and total.denominator == 1 else float(total)
        ]
    if a.func == "mean":
        return [float(total / n) if n > 0 else nan]
    # var / std from the offset values (shift-invariant), ddof=1 like pandas
    d = spec.columns[col].resolved_decimals(col)
    if n < 2:
        return [nan]
    s = vals[keys[f"s:{col}"]]
    ss = vals[keys[f"ss:{col}"]]
    var = Fraction(n * ss - s * s, n * (n - 1)) / 10 ** (2 * d)
    return [float(var) if a.func == "var" else math.sqrt(var)]


# -- the job ------------------------------------------------------------------------------------
@dataclass
class QueryJob:
    """A query as a job: spec (+ schema, privacy) -> algorithm -> result.

    Parameters
    ----------
    spec : QuerySpec
    privacy : mapping, optional
        Differential-privacy settings (``fedcity.analytics.privacy``).
    schema : TableSchema, optional
        The table's declared schema; when given, the spec is validated against it.
    bins : int, default 32
        Bins per quantile refinement round.
    """

    spec: QuerySpec
    privacy: Mapping[str, Any] | None = None
    schema: TableSchema | None = None
    bins: int = DEFAULT_BINS

    def __post_init__(self) -> None:
        if self.schema is not None:
            self.spec = self.spec.validate_against(self.schema)
        if self.privacy and self.spec.privacy and dict(self.privacy) != dict(self.spec.privacy):
            raise QueryError(
                f"privacy is given twice and differs: {dict(self.privacy)} for the job, "
                f"{dict(self.spec.privacy)} in the spec"
            )
        self.privacy = dict(self.privacy or self.spec.privacy or {}) or None
        if self.privacy:
            plan_noise(self.spec, self.privacy, 2)  # refuses bad parameters up front

    def algorithm(self, min_agencies: int = 2, *, accountant: Any = None) -> QueryAlgorithm:
        """The algorithm a coordinator (or :func:`run_query`) drives.

        Parameters
        ----------
        min_agencies : int, default 2
            The job's fewest contributors (also the fewest agencies of a computed cell).
        accountant : PrivacyAccountant, optional
            With differential privacy: the budget to charge (default: one per query).
        """
        return QueryAlgorithm(
            self.spec,
            min_agencies=min_agencies,
            bins=self.bins,
            privacy=self.privacy,
            accountant=accountant,
        )

    def result(
        self,
        algorithm: QueryAlgorithm,
        *,
        history: Sequence[RoundRecord] = (),
        job_id: str = "",
        seconds: float = 0.0,
    ) -> QueryResult:
        """The :class:`QueryResult` of a finished :meth:`algorithm`."""
        from fedcity.analytics.result import QueryResult

        return QueryResult.from_algorithm(
            algorithm, history=list(history), job_id=job_id, seconds=seconds
        )


def query_steps(job: QueryJob) -> tuple[str, ...]:
    """The vetted local steps a query will ask agencies to run, in order.

    A query with differential privacy runs one noisy cells round (no presence round);
    quantiles add refinement rounds.
    """
    noisy = bool(job.privacy or job.spec.privacy)
    quantiles = any(a.func == "quantile" for a in job.spec.aggregates)
    return (
        (() if noisy else ("query.presence",))
        + ("query.cells",)
        + (("query.quantile",) if quantiles else ())
    )


def query_job_from_spec(
    params: Mapping[str, Any],
    privacy: Mapping[str, Any] | None = None,
    *,
    schema: TableSchema | None = None,
) -> QueryJob:
    """Build a :class:`QueryJob` from a spec's plain data (the job's JSON parameters).

    Parameters
    ----------
    params : mapping
        The spec as :meth:`QuerySpec.from_dict` reads it (e.g. ``json.loads(spec.to_json())``).
    privacy : mapping, optional
        Differential-privacy settings; None or empty: none.
    schema : TableSchema, optional
        The registered schema of the table (validates the spec against it).

    Raises
    ------
    QueryError
        Any invalid spec (the message names the problem).
    """
    if not isinstance(params, Mapping):
        raise QueryError("query parameters must be a JSON object (the query spec)")
    spec = QuerySpec.from_dict(params)
    return QueryJob(spec, privacy=dict(privacy) if privacy else None, schema=schema)
