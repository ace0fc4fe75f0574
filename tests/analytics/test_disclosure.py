"""Disclosure control on hand-built tables, checked by an independent attacker.

The attacker here is written separately from the module: it rebuilds the released equations
from the masks with numpy (every published margin as ``np.sum`` over its axes), tests exact
disclosure by a rank comparison, and bounds each withheld cell with ``linprog`` under
non-negativity only.
"""

from __future__ import annotations

import numpy as np
import numpy.typing as npt
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from scipy.optimize import linprog

from fedcity.analytics.disclosure import (
    Disclosure,
    DisclosureError,
    all_margins,
    suppress,
)

# -- the independent attacker ----------------------------------------------------------------


def released_equations(
    counts: npt.NDArray[np.int64],
    cell_mask: npt.NDArray[np.bool_],
    margin_masks: dict[tuple[int, ...], npt.NDArray[np.bool_]],
) -> tuple[npt.NDArray[np.int64], npt.NDArray[np.float64], npt.NDArray[np.float64]]:
    """Unknown cells, and A x = b over them from every released cell and margin."""
    unknown = np.flatnonzero(cell_mask.ravel())
    col = {int(c): k for k, c in enumerate(unknown)}
    known = np.where(cell_mask, 0, counts)
    rows, rhs = [], []
    idx = np.arange(counts.size).reshape(counts.shape)
    for axes, mmask in margin_masks.items():
        totals = counts.sum(axis=axes)
        known_part = known.sum(axis=axes)
        keep = [d for d in range(counts.ndim) if d not in axes]
        members = np.moveaxis(idx, keep, list(range(len(keep)))).reshape(
            int(np.prod([counts.shape[d] for d in keep])) if keep else 1, -1
        )
        for g, cells in enumerate(members):
            if np.asarray(mmask).ravel()[g]:
                continue  # withheld margin: no equation
            row = np.zeros(unknown.size)
            for cell in cells:
                if int(cell) in col:
                    row[col[int(cell)]] = 1.0
            if row.any():
                rows.append(row)
                rhs.append(float(np.asarray(totals).ravel()[g] - np.asarray(known_part).ravel()[g]))
    A = np.array(rows) if rows else np.zeros((0, unknown.size))
    return unknown, A, np.array(rhs)


def exactly_determined(A: npt.NDArray[np.float64], k: int) -> bool:
    """Is unknown k determined by A x = b (unit vector in the row space)?"""
    e = np.zeros(A.shape[1])
    e[k] = 1.0
    if A.shape[0] == 0:
        return False
    return bool(np.linalg.matrix_rank(np.vstack([A, e])) == np.linalg.matrix_rank(A))


def interval(A: npt.NDArray[np.float64], b: npt.NDArray[np.float64], k: int) -> tuple[float, float]:
    """min and max of unknown k subject to A x = b, x >= 0 (LP)."""
    c = np.zeros(A.shape[1])
    c[k] = 1.0
    ends = []
    for sign in (1.0, -1.0):
        res = linprog(
            sign * c,
            A_eq=A if A.shape[0] else None,
            b_eq=b if A.shape[0] else None,
            bounds=[(0, None)] * A.shape[1],
            method="highs",
        )
        if res.status == 3:  # unbounded: -inf for the minimum, +inf for the maximum
            ends.append(-sign * np.inf)
        else:
            assert res.status == 0, res.message
            ends.append(sign * float(res.fun))
    return ends[0], ends[1]


def attack(
    counts: npt.NDArray[np.int64], d: Disclosure
) -> dict[tuple[int, ...], tuple[float, float, bool]]:
    """For every withheld cell: (lo, hi, exactly determined)."""
    unknown, A, b = released_equations(counts, d.mask, {m.axes: m.mask for m in d.margins})
    out = {}
    for k, cell in enumerate(unknown):
        lo, hi = interval(A, b, k)
        out[tuple(int(i) for i in np.unravel_index(int(cell), counts.shape))] = (
            lo,
            hi,
            exactly_determined(A, k),
        )
    return out


def assert_protected(counts: npt.NDArray[np.int64], d: Disclosure) -> None:
    for cell, (lo, hi, exact) in attack(counts, d).items():
        if d.reasons[cell].startswith("complementary"):
            continue
        assert not exact, f"cell {cell} is exactly determined"
        assert hi - lo >= 1.0 - 1e-6, f"cell {cell} narrowed to [{lo}, {hi}]"


# -- primary ---------------------------------------------------------------------------------


def test_primary_cell_gets_a_rectangle_of_complements() -> None:
    counts = np.array([[20, 3, 30], [25, 40, 50], [35, 45, 60]])
    agencies = np.full(counts.shape, 3)
    d = suppress(counts, agencies)
    assert d.reason((0, 1)) == "primary: count < 10"
    # in 2-D with all margins the smallest protecting pattern is a rectangle through (0, 1)
    assert d.n_suppressed == 4
    rows, cols = np.nonzero(d.mask)
    assert len(set(rows)) == 2 and len(set(cols)) == 2 and (0, 1) in zip(rows, cols, strict=True)
    # the complements are the smallest counts that close a rectangle
    assert d.mask[0, 0] and d.mask[1, 0] and d.mask[1, 1]
    for cell in [(0, 0), (1, 0), (1, 1)]:
        assert d.reason(cell) == "complementary: protects (0, 1)"
    assert not any(m.mask.any() for m in d.margins)
    assert_protected(counts, d)
    # the reason never states the count
    assert "3" not in d.reason((0, 1))


def test_zero_cells_are_released_and_no_complement_needed_without_margins() -> None:
    counts = np.array([[0, 4, 30], [25, 0, 50]])
    agencies = np.array([[0, 2, 3], [3, 0, 3]])
    d = suppress(counts, agencies, margins=[])
    assert d.mask.tolist() == [[False, True, False], [False, False, False]]
    assert d.reason((0, 0)) == "" and d.reason((1, 1)) == ""
    assert d.margins == ()


def test_one_dimension_with_total_needs_one_complement_the_smallest() -> None:
    d = suppress([5, 50, 12, 60], [2, 3, 2, 3])
    assert d.mask.tolist() == [True, False, True, False]
    assert d.reason((2,)) == "complementary: protects (0,)"
    (audit,) = d.audit
    # x0 + x2 = 17 with x2 >= 10 (not primary) and x0 >= 2 (two agencies): x0 in [2, 7]; the
    # audit certifies a sub-interval at least ceil(0.25 * 5) = 2 wide
    assert 2.0 - 1e-9 <= audit.lower <= audit.upper <= 7.0 + 1e-9
    assert audit.upper - audit.lower >= 2
    # the independent attacker (non-negativity only) finds [0, 17]
    assert attack(np.array([5, 50, 12, 60]), d)[(0,)][:2] == pytest.approx((0.0, 17.0))


def test_a_margin_below_min_count_is_withheld_and_protected_by_another_margin() -> None:
    counts = np.array([[2, 3, 0], [40, 45, 60], [35, 45, 60]])
    agencies = np.array([[2, 2, 0], [3, 3, 3], [3, 3, 3]])
    d = suppress(counts, agencies)
    row_totals = d.margin((1,))
    assert row_totals.reasons[0] == "primary: count < 10"
    # row 0's total is the grand total minus the other row totals, whatever cells are
    # withheld: only withholding another row total protects it (the smaller one, row 2)
    assert row_totals.mask.tolist() == [True, False, True]
    assert row_totals.reasons[2] == "complementary: protects total over axis 1 at (0,)"
    assert not d.margin((0, 1)).mask
    assert d.mask[0, 0] and d.mask[0, 1] and not d.mask[0, 2]  # the zero stays released
    assert_protected(counts, d)
    # independent check of the row total: its coefficients over the withheld cells are not a
    # combination of the released equations
    unknown, A, _ = released_equations(counts, d.mask, {m.axes: m.mask for m in d.margins})
    g = np.array([1.0 if np.unravel_index(int(u), counts.shape)[0] == 0 else 0.0 for u in unknown])
    assert np.linalg.matrix_rank(np.vstack([A, g])) > np.linalg.matrix_rank(A)
    assert all(a.protected for a in d.audit)
    assert [a.label for a in d.audit][-1] == "total over axis 1 at (0,)"


def test_one_cell_table_withholds_its_total() -> None:
    d = suppress([[7]], [[2]])
    assert d.mask.all()
    assert all(m.mask.all() for m in d.margins)


# -- agency count ----------------------------------------------------------------------------


def test_agency_count_suppression_of_a_large_cell_is_protected_by_interval() -> None:
    counts = np.array([[500, 40, 30], [30, 20, 45], [60, 70, 80]])
    agencies = np.array([[1, 3, 3], [3, 3, 3], [3, 3, 3]])
    d = suppress(counts, agencies, protection=0.25)
    assert d.reason((0, 0)) == "agencies: 1 < 2"
    (audit,) = d.audit
    assert audit.required_width == 125  # ceil(0.25 * 500)
    assert audit.upper - audit.lower >= 125
    lo, hi, exact = attack(counts, d)[(0, 0)]
    assert not exact and hi - lo >= 125 - 1e-6


def test_both_reasons_are_stated() -> None:
    d = suppress([[4, 50], [60, 70]], [[1, 3], [3, 3]])
    assert d.reason((0, 0)) == "primary: count < 10; agencies: 1 < 2"


def test_cell_not_computed_is_withheld_outside_every_margin() -> None:
    counts = np.array([[np.nan, 40, 30], [30, 20, 45], [60, 70, 80]])
    agencies = np.array([[1, 3, 3], [3, 3, 3], [3, 3, 3]])
    d = suppress(counts, agencies)
    assert d.reason((0, 0)) == "agencies: 1 < 2 (not computed)"
    assert d.n_suppressed == 1  # nothing to protect: its count enters no published figure
    assert d.audit == ()


def test_labels_use_names_and_levels() -> None:
    counts = np.array([[20, 3], [25, 40]])
    d = suppress(
        counts,
        np.full((2, 2), 2),
        names=["ward", "facility"],
        levels=[["1", "2"], ["Restaurant", "Grocery"]],
    )
    assert d.reason((0, 0)) == "complementary: protects ward=1, facility=Grocery"


# -- the naive rule leaks, this module does not ------------------------------------------------


def naive_rule_holds(mask: npt.NDArray[np.bool_]) -> bool:
    """Every row and column holding a withheld cell holds at least two."""
    return all(int(k) != 1 for k in mask.sum(axis=1)) and all(int(k) != 1 for k in mask.sum(axis=0))


BRIDGE_COUNTS = np.array(
    [
        [4, 14, 90, 80, 50],
        [15, 13, 6, 70, 40],
        [60, 70, 16, 18, 45],
        [65, 75, 17, 3, 55],
        [50, 60, 70, 80, 90],
    ]
)


def test_naive_rule_leaks_a_bridge_between_two_cycles() -> None:
    counts = BRIDGE_COUNTS
    # primary: (0, 0)=4, (1, 2)=6, (3, 3)=3. A naive pattern: two 2x2 cycles joined by (1, 2).
    naive = np.zeros(counts.shape, dtype=bool)
    for cell in [(0, 0), (0, 1), (1, 0), (1, 1), (2, 2), (2, 3), (3, 2), (3, 3), (1, 2)]:
        naive[cell] = True
    assert naive_rule_holds(naive)
    margins = {
        axes: np.zeros(np.sum(counts, axis=axes).shape, dtype=bool) for axes in all_margins(2)
    }
    unknown, A, b = released_equations(counts, naive, margins)
    k = list(unknown).index(1 * 5 + 2)
    assert exactly_determined(A, k)
    # solve for it: any solution of the released equations gives the true value
    x, *_ = np.linalg.lstsq(A, b, rcond=None)
    assert round(float(x[k])) == counts[1, 2] == 6
    # closed form: row 1 minus (cols 0 and 1 minus row 0), using released figures only
    r = counts.sum(axis=1)
    c = counts.sum(axis=0)
    released = np.where(naive, 0, counts)
    row1 = r[1] - released[1].sum()
    cols01 = (c[0] - released[:, 0].sum()) + (c[1] - released[:, 1].sum())
    row0 = r[0] - released[0].sum()
    assert row1 - (cols01 - row0) == 6
    lo, hi = interval(A, b, k)
    assert lo == pytest.approx(hi) == pytest.approx(6.0)


def test_this_module_protects_the_bridge_table() -> None:
    counts = BRIDGE_COUNTS
    d = suppress(counts, np.full(counts.shape, 2))
    assert d.mask[0, 0] and d.mask[1, 2] and d.mask[3, 3]
    assert_protected(counts, d)
    for a in d.audit:
        assert not a.exact and a.upper - a.lower >= a.required_width


def test_three_dimensions_with_every_margin() -> None:
    rng = np.random.default_rng(7)
    counts = rng.integers(20, 90, size=(3, 3, 3))
    counts[1, 1, 1] = 4
    counts[0, 2, 1] = 7
    d = suppress(counts, np.full(counts.shape, 2))
    assert len(d.margins) == 7
    assert d.mask[1, 1, 1] and d.mask[0, 2, 1]
    # every line through a primary cell that is a released margin forces a complement in 3-D:
    # the smallest protecting pattern is a 2x2x2 sub-cube (8 cells)
    assert d.n_suppressed >= 8
    attacker = attack(counts, d)
    for cell in [(1, 1, 1), (0, 2, 1)]:
        lo, hi, exact = attacker[cell]
        assert not exact and hi - lo >= 1.0 - 1e-6


# Found by a search over unions and symmetric differences of 2x2x2 boxes in a 4x4x4 table:
# every line (the cells summed by a 2-D margin) holds 0 or >= 2 of these 16 cells, yet with
# every margin released each of them is determined.
NAIVE_3D = [
    (0, 1, 0), (0, 1, 1), (0, 3, 0), (0, 3, 1), (1, 1, 0), (1, 1, 3), (1, 2, 0), (1, 2, 1),
    (1, 3, 1), (1, 3, 3), (3, 1, 1), (3, 1, 3), (3, 2, 0), (3, 2, 1), (3, 3, 0), (3, 3, 3),
]  # fmt: skip


def test_naive_rule_leaks_in_three_dimensions_but_not_this_module() -> None:
    rng = np.random.default_rng(3)
    counts = rng.integers(20, 90, size=(4, 4, 4))
    counts[0, 1, 0] = 5  # the primary cell
    naive = np.zeros(counts.shape, dtype=bool)
    for cell in NAIVE_3D:
        naive[cell] = True
    assert all((naive.sum(axis=a) != 1).all() for a in range(3))  # the naive rule holds
    margins = {
        axes: np.zeros(np.sum(counts, axis=axes).shape, dtype=bool) for axes in all_margins(3)
    }
    unknown, A, b = released_equations(counts, naive, margins)
    k = list(unknown).index(int(np.ravel_multi_index((0, 1, 0), counts.shape)))
    assert exactly_determined(A, k)
    x, *_ = np.linalg.lstsq(A, b, rcond=None)
    assert round(float(x[k])) == 5  # the attacker solves for the primary cell
    d = suppress(counts, np.full(counts.shape, 2))
    assert d.mask[0, 1, 0]
    lo, hi, exact = attack(counts, d)[(0, 1, 0)]
    assert not exact and hi - lo >= 1.0 - 1e-6


# -- property: random small tables -------------------------------------------------------------


@st.composite
def small_tables(draw: st.DrawFn) -> tuple[npt.NDArray[np.int64], npt.NDArray[np.int64], int]:
    r = draw(st.integers(2, 5))
    c = draw(st.integers(2, 5))
    cells = draw(
        st.lists(
            st.one_of(st.just(0), st.integers(1, 9), st.integers(10, 80)),
            min_size=r * c,
            max_size=r * c,
        )
    )
    counts = np.array(cells, dtype=np.int64).reshape(r, c)
    ag = draw(st.lists(st.integers(1, 4), min_size=r * c, max_size=r * c))
    agencies = np.minimum(np.array(ag).reshape(r, c), counts)
    min_agencies = draw(st.integers(1, 2))
    return counts, agencies, min_agencies


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(small_tables())
def test_no_withheld_sensitive_cell_is_determined(
    table: tuple[npt.NDArray[np.int64], npt.NDArray[np.int64], int],
) -> None:
    counts, agencies, min_agencies = table
    d = suppress(counts, agencies, min_agencies=min_agencies)
    sensitive = ((counts > 0) & (counts < 10)) | ((counts > 0) & (agencies < min_agencies))
    assert (d.mask >= sensitive).all()  # every sensitive cell is withheld
    assert not (d.mask & (counts == 0)).any()  # zeros are released
    assert_protected(counts, d)
    assert all(a.protected for a in d.audit)


@st.composite
def small_cubes(draw: st.DrawFn) -> tuple[npt.NDArray[np.int64], npt.NDArray[np.int64]]:
    shape = tuple(draw(st.integers(2, 3)) for _ in range(3))
    size = int(np.prod(shape))
    cells = draw(
        st.lists(
            st.one_of(st.just(0), st.integers(1, 9), st.integers(10, 80)),
            min_size=size,
            max_size=size,
        )
    )
    counts = np.array(cells, dtype=np.int64).reshape(shape)
    agencies = np.minimum(counts, 2)
    return counts, agencies


@settings(max_examples=20, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(small_cubes())
def test_no_withheld_sensitive_cell_is_determined_in_three_dimensions(
    table: tuple[npt.NDArray[np.int64], npt.NDArray[np.int64]],
) -> None:
    counts, agencies = table
    d = suppress(counts, agencies)
    assert (d.mask >= ((counts > 0) & (counts < 10))).all()
    assert_protected(counts, d)


# -- bad input -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"counts": [[1, 2]], "agencies": [1, 1]}, "agencies has shape"),
        ({"counts": [[-1, 2]], "agencies": [[0, 1]]}, "non-negative integers"),
        ({"counts": [[1.5, 2]], "agencies": [[1, 1]]}, "non-negative integers"),
        ({"counts": [[1, 2]], "agencies": [[2, 1]]}, "cell (0, 0): 2 agencies but 1 rows"),
        ({"counts": [[1, 2]], "agencies": [[1, -1]]}, "agencies must be >= 0"),
        ({"counts": [[1, 2]], "agencies": [[1, 0]]}, "cell (0, 1): 2 rows but no contributing"),
        ({"counts": [[1, 2]], "agencies": [[1, 1]], "min_count": 0}, "min_count must be"),
        ({"counts": [[1, 2]], "agencies": [[1, 1]], "min_agencies": 0}, "min_agencies"),
        ({"counts": [[1, 2]], "agencies": [[1, 1]], "protection": 1.5}, "protection must"),
        ({"counts": [[1, 2]], "agencies": [[1, 1]], "margins": [(2,)]}, "margin (2,) must"),
        ({"counts": [[1, 2]], "agencies": [[1, 1]], "margins": [(0,), (0,)]}, "listed twice"),
        ({"counts": [[1, 2]], "agencies": [[1, 1]], "names": ["a", "b"]}, "both names"),
        ({"counts": 5, "agencies": 1}, "1 to 6 dimensions"),
        ({"counts": np.zeros(100_001), "agencies": np.zeros(100_001)}, "1 to 100000 cells"),
    ],
)
def test_bad_input_is_refused_precisely(kwargs: dict[str, object], message: str) -> None:
    with pytest.raises(DisclosureError) as err:
        suppress(**kwargs)  # type: ignore[arg-type]
    assert message in str(err.value)
