"""Additive sufficient statistics for federated model evaluation.

Every agency turns its own labels and predictions into one flat float vector of *sums*
(:func:`classification_statistics`, :func:`regression_statistics`). The vectors are
encrypted and added by the caller; only their sum is decrypted, and the global metrics are
computed from that sum (:func:`classification_metrics_from_sum`,
:func:`regression_metrics_from_sum`). Pooled metrics equal scikit-learn's metrics on the
pooled data; only ROC AUC is approximate (see below). This module is pure numpy: no I/O
and no encryption.

Vector layouts
--------------
Classification, ``5 + 2·n_bins`` entries (:func:`classification_layout`)::

    [Σw, Σw·y, Σw·logloss, Σw·brier, Σw·correct, positives[n_bins], negatives[n_bins]]

where ``logloss = -log(clip(p_true, eps, 1 - eps))`` with ``p_true = p`` for ``y = 1`` and
``1 - p`` for ``y = 0`` and ``eps = finfo(float64).eps`` (exactly what
:func:`sklearn.metrics.log_loss` does in scikit-learn 1.9 for float64 input; it no longer
takes an ``eps`` argument), ``brier = (y - p)²``, ``correct = [(p >= threshold) == y]``,
and ``positives[b]`` / ``negatives[b]`` are the weights of positive / negative samples
whose score falls in bin ``b`` (:func:`score_bin_edges`).

Regression, 6 entries (:func:`regression_layout`)::

    [Σw, Σw·(y-c), Σw·(y-c)², Σw·(y-ŷ)², Σw·|y-ŷ|, Σw·poisson_deviance]

with ``c = 0`` unless a ``y_range`` is given (then ``c`` is its midpoint); the deviance
entry is 0 unless ``poisson=True``. ``R² = 1 - SSE/SST`` with
``SST = Σw(y-c)² - (Σw(y-c))²/Σw`` (shift invariant, so equal to scikit-learn's).

Normalisation
-------------
Packed Paillier encoding clips every entry to ``[-clip, clip]`` and quantizes it with
``precision_bits`` (:class:`fedcity.crypto.PackingSpec`), so entries must be bounded by a
*public* constant. Pass ``weight_bound`` — a public upper bound ``W`` on any single
agency's total sample weight (its row count when unweighted) — and every entry is divided
by a fixed public scale (:func:`classification_scale`, :func:`regression_scale`):

* classification: every entry divided by ``W``, the log-loss entry also by
  ``LOG_LOSS_MAX = -log(eps) ≈ 36.04`` (the largest per-sample log loss after sklearn's
  clipping), so every entry lies in ``[0, 1]``;
* regression additionally needs public target bounds ``y_range = (lo, hi)``. With
  ``c = (lo + hi)/2`` and ``h = (hi - lo)/2`` the scales are
  ``W·[1, h, h², 4h², 2h, 2h]``. ``y_true`` must lie in ``y_range``, which bounds the first
  three entries by 1; the error and deviance entries are bounded whenever the mean squared
  error is at most ``(hi - lo)²`` and the mean absolute error and mean deviance at most
  ``hi - lo`` (predictions inside ``y_range`` guarantee the first two).

A normalised vector is checked to lie in ``[-1, 1]`` (a ``ValueError`` names the entry and
the bound to raise otherwise), so ``PackingSpec(clip=1.0)`` never clips it. Pass the same
``weight_bound`` (and ``y_range``) to the ``*_from_sum`` function, which multiplies the
scales back. Without ``weight_bound`` the vectors hold raw sums and the caller must choose
``clip`` above every local sum.

Precision
---------
Summing ``K`` quantized vectors leaves an absolute error of at most
``atol = K·clip / (2^precision_bits - 1)`` on each entry of the decoded sum (half a step per
summand), plus float64 rounding in the decoder (:func:`quantization_atol` adds
``K·clip·2^-50`` for it). Pass ``atol`` to :func:`classification_error_bounds` /
:func:`regression_error_bounds` for rigorous (AUC: first-order) bounds on every metric.
With normalised vectors, ``clip = 1``, and ``s = Σw / W`` (the pooled weight in units of
``W``) they are roughly ``2·atol/s`` for accuracy, Brier, prevalence,
``(LOG_LOSS_MAX + log_loss)·atol/s`` for log loss, and at most
``n_bins·atol·(1/P + 1/N)`` for ROC AUC, with ``P``, ``N`` the class weights in units of
``W``. Example: ``K = 5``, 40 bits, ``n_bins = 8192``: ``atol = 4.5e-12`` and the AUC bound
stays below 1e-6 while each class holds at least ~8 % of ``W``; 48 bits relax that to
~0.03 %. Note that entries in ``[0, 1]`` use only half of ``[-clip, clip]`` (one bit).

ROC AUC from histograms
-----------------------
Scores are binned (:func:`score_bin_edges`); pairs in different bins are ordered exactly,
pairs in the same bin count as ties (one half). The error against the exact AUC is at most
*half* the weighted mass of same-bin positive–negative pairs divided by ``P·N``::

    |AUC_hist - AUC_exact| <= ½ Σ_b positives[b]·negatives[b] / (P·N)

which :func:`classification_metrics_from_sum` reports as ``roc_auc_tie_bound``. The actual
error is far smaller (within-bin orderings are close to a coin flip). The bins are uniform
in ``u(p) = α·p + (1-α)·(clip(logit p, -z, z) + z)/(2z)`` with ``α = UNIFORM_SHARE = 0.25``
and ``z = LOGIT_SPAN = 16``: fine in probability near 0.5 *and* in the tails where
confident models put most of their mass (a uniform grid lumps all scores below
``1/n_bins`` together). With the default ``DEFAULT_N_BINS = 8192`` the measured error
against :func:`sklearn.metrics.roc_auc_score` was below 1e-4 for logistic regression,
random forest and gradient boosting scores on scikit-learn data sets and synthetic data
(prevalence 0.5 % to 50 %); the worst case seen, 2.4e-4, was a model whose predicted
logits all lay within ±0.15 of the base rate (almost all scores in a few bins). The tie
bound flags such cases.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from functools import lru_cache
from typing import Any, Final

import numpy as np
import numpy.typing as npt

__all__ = [
    "CLASSIFICATION_FIELDS",
    "DEFAULT_CALIBRATION_BINS",
    "DEFAULT_COARSE_BINS",
    "DEFAULT_LEVELS",
    "DEFAULT_N_BINS",
    "EPS",
    "LOGIT_SPAN",
    "LOG_LOSS_MAX",
    "MAX_N_BINS",
    "REGRESSION_FIELDS",
    "REGRESSION_VECTOR_LENGTH",
    "SUMMARY_FIELDS",
    "UNIFORM_SHARE",
    "EvaluationCurves",
    "calibration_curve_from_sums",
    "classification_error_bounds",
    "classification_layout",
    "classification_metrics_from_sum",
    "classification_scale",
    "classification_statistics",
    "classification_summary",
    "classification_vector_length",
    "count_digits",
    "histogram_refinement",
    "pack_counts",
    "quantization_atol",
    "regression_error_bounds",
    "regression_layout",
    "regression_metrics_from_sum",
    "regression_scale",
    "regression_statistics",
    "roc_curve_from_histogram",
    "score_bin_edges",
    "score_bins",
    "summary_layout",
    "summary_vector_length",
    "unpack_counts",
]

FloatArray = npt.NDArray[np.float64]

EPS: Final[float] = float(np.finfo(np.float64).eps)
"""Probability clipping of log loss, as :func:`sklearn.metrics.log_loss` for float64."""

LOG_LOSS_MAX: Final[float] = -math.log(EPS)
"""Largest per-sample log loss after clipping: ``-log(eps) ≈ 36.04``."""

DEFAULT_N_BINS: Final[int] = 8192
"""Score bins of the ROC histograms (vector length ``5 + 2·8192 = 16389``)."""

MAX_N_BINS: Final[int] = 1 << 16
"""Largest number of score bins an agency accepts (bounds every vector it computes)."""

DEFAULT_COARSE_BINS: Final[int] = 64
"""Score bins of the first evaluation round (:func:`classification_summary`)."""

DEFAULT_LEVELS: Final[tuple[int, ...]] = (64, 1024)
"""Histogram bins of the evaluation rounds before the last, which reaches ``n_bins``: bins
holding both classes are split 16-fold, then 8-fold (64 → 1,024 → 8,192)."""

DEFAULT_CALIBRATION_BINS: Final[int] = 10
"""Bins uniform in the predicted probability, as :func:`sklearn.calibration.calibration_curve`."""

MAX_CALIBRATION_BINS: Final[int] = 1000

LOGIT_SPAN: Final[float] = 16.0
"""Scores with ``|logit p| > LOGIT_SPAN`` share the first or last bin."""

UNIFORM_SHARE: Final[float] = 0.25
"""Share ``α`` of the bins spread uniformly in probability (the rest uniformly in logit)."""

CLASSIFICATION_FIELDS: Final[tuple[str, ...]] = (
    "weight",
    "weight_y",
    "log_loss",
    "brier",
    "correct",
)
"""Names of the scalar entries that open a classification vector, in order."""

SUMMARY_FIELDS: Final[tuple[str, ...]] = (*CLASSIFICATION_FIELDS, "fractional_weights")
"""Scalar entries that open a summary vector (:func:`classification_summary`), in order:
the classification fields, then the number of rows whose weight is not an integer."""

REGRESSION_FIELDS: Final[tuple[str, ...]] = (
    "weight",
    "weight_y",
    "weight_y2",
    "squared_error",
    "absolute_error",
    "poisson_deviance",
)
"""Names of the entries of a regression vector, in order."""

REGRESSION_VECTOR_LENGTH: Final[int] = len(REGRESSION_FIELDS)

_N_HEAD: Final[int] = len(CLASSIFICATION_FIELDS)
_BISECTION_STEPS: Final[int] = 80
_BOUND_SLACK: Final[float] = 1e-9  # relative slack of the [-1, 1] check (rounding of sums)


# -- layouts and scales ---------------------------------------------------------------------
def classification_vector_length(n_bins: int = DEFAULT_N_BINS) -> int:
    """Length ``5 + 2·n_bins`` of a classification statistics vector."""
    return _N_HEAD + 2 * _check_n_bins(n_bins)


def classification_layout(n_bins: int = DEFAULT_N_BINS) -> dict[str, slice]:
    """Where each part of a classification vector lives.

    Parameters
    ----------
    n_bins : int, default DEFAULT_N_BINS

    Returns
    -------
    dict of str to slice
        One entry per name in :data:`CLASSIFICATION_FIELDS` plus ``"positives"`` and
        ``"negatives"`` (the two score histograms).

    Examples
    --------
    >>> classification_layout(4)["negatives"]
    slice(9, 13, None)
    """
    n = _check_n_bins(n_bins)
    layout = {name: slice(i, i + 1) for i, name in enumerate(CLASSIFICATION_FIELDS)}
    layout["positives"] = slice(_N_HEAD, _N_HEAD + n)
    layout["negatives"] = slice(_N_HEAD + n, _N_HEAD + 2 * n)
    return layout


def regression_layout() -> dict[str, slice]:
    """Where each entry of a regression vector lives (one slice per :data:`REGRESSION_FIELDS`)."""
    return {name: slice(i, i + 1) for i, name in enumerate(REGRESSION_FIELDS)}


def classification_scale(
    *, n_bins: int = DEFAULT_N_BINS, weight_bound: float | None = None
) -> FloatArray:
    """Per-entry divisors that normalise a classification vector into ``[0, 1]``.

    Parameters
    ----------
    n_bins : int, default DEFAULT_N_BINS
    weight_bound : float, optional
        Public upper bound ``W`` on one agency's total sample weight. ``None`` gives all
        ones (raw sums).

    Returns
    -------
    ndarray of float64
        ``W`` for every entry, ``W·LOG_LOSS_MAX`` for the log-loss entry.
    """
    length = classification_vector_length(n_bins)
    if weight_bound is None:
        return np.ones(length)
    scale = np.full(length, _check_positive(weight_bound, "weight_bound"))
    scale[CLASSIFICATION_FIELDS.index("log_loss")] *= LOG_LOSS_MAX
    return scale


def regression_scale(
    *, weight_bound: float | None = None, y_range: tuple[float, float] | None = None
) -> FloatArray:
    """Per-entry divisors that normalise a regression vector into ``[-1, 1]``.

    Parameters
    ----------
    weight_bound : float, optional
        Public upper bound ``W`` on one agency's total sample weight.
    y_range : (float, float), optional
        Public bounds ``(lo, hi)`` on the targets. Give both or neither.

    Returns
    -------
    ndarray of float64
        ``W·[1, h, h², 4h², 2h, 2h]`` with ``h = (hi - lo)/2``, or all ones when neither
        bound is given.
    """
    norm = _regression_normalisation(weight_bound, y_range)
    if norm is None:
        return np.ones(REGRESSION_VECTOR_LENGTH)
    w, _, h = norm
    return w * np.array([1.0, h, h * h, 4.0 * h * h, 2.0 * h, 2.0 * h])


def quantization_atol(clip: float, precision_bits: int, summands: int) -> float:
    """Bound on the absolute error of each entry of a decoded sum of quantized vectors.

    Each of the ``summands`` vectors is rounded to the nearest of ``2^precision_bits - 1``
    steps over ``[-clip, clip]`` (half a step of error each, see
    :class:`fedcity.crypto.PackingSpec`), and the float64 decoder adds rounding of order
    ``summands·clip·2^-52``; the bound is ``summands·clip·(1/(2^precision_bits - 1) + 2^-50)``.

    Parameters
    ----------
    clip : float
    precision_bits : int
    summands : int
        Number of vectors summed (agencies).

    Returns
    -------
    float
        The ``atol`` to pass to :func:`classification_error_bounds`,
        :func:`regression_error_bounds` and :func:`classification_metrics_from_sum`.

    Examples
    --------
    >>> f"{quantization_atol(1.0, 40, 5):.3g}"
    '4.55e-12'
    """
    c = _check_positive(clip, "clip")
    if (
        isinstance(precision_bits, bool)
        or not isinstance(precision_bits, int)
        or precision_bits < 1
    ):
        raise ValueError(f"precision_bits must be a positive integer, got {precision_bits!r}")
    if isinstance(summands, bool) or not isinstance(summands, int) or summands < 1:
        raise ValueError(f"summands must be a positive integer, got {summands!r}")
    return summands * c * (1.0 / ((1 << precision_bits) - 1) + 2.0**-50)


# -- score bins -----------------------------------------------------------------------------
def _bin_coordinate(p: FloatArray) -> FloatArray:
    """The monotone map ``u(p)`` in which the bins are uniform."""
    with np.errstate(divide="ignore"):
        logit = np.log(p) - np.log1p(-p)
    z = LOGIT_SPAN
    u: FloatArray = UNIFORM_SHARE * p + (1.0 - UNIFORM_SHARE) * (np.clip(logit, -z, z) + z) / (
        2.0 * z
    )
    return u


@lru_cache(maxsize=8)
def _interior_edges(n_bins: int) -> FloatArray:
    """Strictly increasing inner bin edges ``u⁻¹(k / n_bins)``, ``k = 1 … n_bins-1``."""
    targets = np.arange(1, n_bins, dtype=np.float64) / n_bins
    lo = np.zeros_like(targets)
    hi = np.ones_like(targets)
    for _ in range(_BISECTION_STEPS):
        mid = 0.5 * (lo + hi)
        below = _bin_coordinate(mid) < targets
        lo = np.where(below, mid, lo)
        hi = np.where(below, hi, mid)
    hi.flags.writeable = False
    return hi


def score_bin_edges(n_bins: int = DEFAULT_N_BINS) -> FloatArray:
    """Edges ``0 = e_0 < e_1 < … < e_n = 1`` of the score bins.

    Bin ``b`` holds scores in ``[e_b, e_{b+1})``, the last bin also 1. The edges are the
    points where ``u(p) = α·p + (1-α)·(clip(logit p, -z, z) + z)/(2z)`` crosses
    ``b / n_bins`` (``α = UNIFORM_SHARE``, ``z = LOGIT_SPAN``).

    Parameters
    ----------
    n_bins : int, default DEFAULT_N_BINS

    Returns
    -------
    ndarray of float64, shape (n_bins + 1,)
    """
    inner = _interior_edges(_check_n_bins(n_bins))
    return np.concatenate([[0.0], inner, [1.0]])


def score_bins(y_score: npt.ArrayLike, n_bins: int = DEFAULT_N_BINS) -> npt.NDArray[np.intp]:
    """Bin index of each score in ``[0, 1]`` (see :func:`score_bin_edges`).

    Raises
    ------
    ValueError
        A score is not finite or lies outside ``[0, 1]``.
    """
    p = _as_float_vector(y_score, "y_score")
    _check_probabilities(p)
    idx: npt.NDArray[np.intp] = np.searchsorted(
        _interior_edges(_check_n_bins(n_bins)), p, side="right"
    )
    return idx


# -- classification -------------------------------------------------------------------------
def classification_statistics(
    y_true: npt.ArrayLike,
    y_score: npt.ArrayLike,
    sample_weight: npt.ArrayLike | None = None,
    *,
    threshold: float = 0.5,
    n_bins: int = DEFAULT_N_BINS,
    weight_bound: float | None = None,
) -> FloatArray:
    """One agency's additive statistics for binary classification metrics.

    Parameters
    ----------
    y_true : array_like of shape (n,)
        Binary labels, 0 or 1 (bool accepted).
    y_score : array_like of shape (n,)
        Predicted probabilities of the positive class, in ``[0, 1]``.
    sample_weight : array_like of shape (n,), optional
        Non-negative weights; all ones by default.
    threshold : float, default 0.5
        A sample is predicted positive when ``y_score >= threshold`` (as
        :class:`sklearn.model_selection.FixedThresholdClassifier`; ``predict`` of
        scikit-learn's linear models uses ``>`` and differs only for scores exactly equal
        to the threshold).
    n_bins : int, default DEFAULT_N_BINS
        Score bins of each ROC histogram; every agency must use the same value.
    weight_bound : float, optional
        Public upper bound on this agency's total weight. When given, the vector is
        divided by :func:`classification_scale` so that every entry lies in ``[0, 1]``.

    Returns
    -------
    ndarray of float64, shape (5 + 2·n_bins,)
        See the module docstring for the layout.

    Raises
    ------
    ValueError
        Inputs of different lengths or not one-dimensional, non-finite values, labels
        other than 0/1, scores outside ``[0, 1]``, negative weights, or a total weight
        above ``weight_bound``.

    Examples
    --------
    >>> v = classification_statistics([0, 1, 1], [0.2, 0.7, 0.4])
    >>> v.shape
    (16389,)
    >>> m = classification_metrics_from_sum(v)
    >>> round(m["accuracy"], 4), m["roc_auc"], m["roc_auc_tie_bound"]
    (0.6667, 1.0, 0.0)
    """
    n = _check_n_bins(n_bins)
    thr = _check_finite(threshold, "threshold")
    y, p, w = _validate_inputs(y_true, y_score, sample_weight, pred_name="y_score")
    bad = (y != 0.0) & (y != 1.0)
    if bad.any():
        i = int(np.flatnonzero(bad)[0])
        raise ValueError(f"y_true must hold binary labels 0 or 1; position {i} is {float(y[i])!r}")
    _check_probabilities(p)

    positive = y == 1.0
    p_true = np.where(positive, p, 1.0 - p)
    log_loss = -np.log(np.clip(p_true, EPS, 1.0 - EPS))
    brier = (y - p) ** 2
    correct = ((p >= thr) == positive).astype(np.float64)
    wy = w * y
    idx = np.searchsorted(_interior_edges(n), p, side="right")
    vector = np.concatenate(
        [
            [w.sum(), wy.sum(), w @ log_loss, w @ brier, w @ correct],
            np.bincount(idx, weights=wy, minlength=n),
            np.bincount(idx, weights=w - wy, minlength=n),
        ]
    )
    if weight_bound is None:
        return vector
    bound = _check_positive(weight_bound, "weight_bound")
    if vector[0] > bound * (1.0 + _BOUND_SLACK):
        raise ValueError(
            f"total sample weight {vector[0]:.6g} exceeds weight_bound={bound:.6g}; "
            "the public bound must cover every agency"
        )
    normalised: FloatArray = vector / classification_scale(n_bins=n, weight_bound=bound)
    return normalised


def classification_metrics_from_sum(
    vector: npt.ArrayLike,
    *,
    n_bins: int = DEFAULT_N_BINS,
    weight_bound: float | None = None,
    atol: float = 0.0,
) -> dict[str, float]:
    """Global classification metrics from the sum of the agencies' vectors.

    Parameters
    ----------
    vector : array_like of shape (5 + 2·n_bins,)
        Sum of :func:`classification_statistics` vectors (possibly decoded from
        quantized encryptions).
    n_bins : int, default DEFAULT_N_BINS
        The value the agencies used.
    weight_bound : float, optional
        The value the agencies used (``None``: raw sums).
    atol : float, default 0.0
        Absolute error of each entry of ``vector`` (see :func:`classification_error_bounds`).
        A class whose histogram weight is at most ``n_bins·atol`` counts as absent.

    Returns
    -------
    dict of str to float
        ``n`` (total weight), ``prevalence`` (weighted share of positives), ``log_loss``,
        ``brier``, ``accuracy``, ``roc_auc`` (NaN when a class is absent, as
        :func:`sklearn.metrics.roc_auc_score` refuses) and ``roc_auc_tie_bound`` (bound on
        ``|roc_auc - exact AUC|`` from binning, NaN with ``roc_auc``).

    Raises
    ------
    ValueError
        Wrong length, non-finite entries, or a total weight that is not positive.
    """
    n = _check_n_bins(n_bins)
    tol = _check_non_negative(atol, "atol")
    raw = _check_sum_vector(vector, classification_vector_length(n), f"n_bins={n}")
    scale = classification_scale(n_bins=n, weight_bound=weight_bound)
    s = raw * scale
    total, s_y, s_ll, s_brier, s_correct = (float(x) for x in s[:_N_HEAD])
    if total <= tol * scale[0]:
        raise ValueError(f"the total sample weight is {total:.6g}: no samples were summed")
    pos, neg = s[_N_HEAD : _N_HEAD + n], s[_N_HEAD + n :]
    auc, tie = _histogram_auc(pos, neg, floor=n * tol * scale[0])
    return {
        "n": total,
        "prevalence": s_y / total,
        "log_loss": s_ll / total,
        "brier": s_brier / total,
        "accuracy": s_correct / total,
        "roc_auc": auc,
        "roc_auc_tie_bound": tie,
    }


def classification_error_bounds(
    vector: npt.ArrayLike,
    *,
    n_bins: int = DEFAULT_N_BINS,
    weight_bound: float | None = None,
    atol: float,
) -> dict[str, float]:
    """Bounds on how far quantization can move each metric from its exact value.

    Parameters
    ----------
    vector : array_like of shape (5 + 2·n_bins,)
        The (decoded) sum, as passed to :func:`classification_metrics_from_sum`.
    n_bins : int, default DEFAULT_N_BINS
    weight_bound : float, optional
    atol : float
        Bound on the absolute error of every entry of ``vector``; for a sum of ``K``
        vectors quantized by :class:`fedcity.crypto.PackingSpec` use
        ``quantization_atol(spec.clip, spec.precision_bits, K)``.

    Returns
    -------
    dict of str to float
        One bound per metric of :func:`classification_metrics_from_sum` (``n``,
        ``prevalence``, ``log_loss``, ``brier``, ``accuracy``, ``roc_auc``); ``inf`` when
        the error could swamp a denominator. The ``roc_auc`` bound is first order and
        excludes the binning error (``roc_auc_tie_bound``).
    """
    n = _check_n_bins(n_bins)
    tol = _check_non_negative(atol, "atol")
    raw = _check_sum_vector(vector, classification_vector_length(n), f"n_bins={n}")
    scale = classification_scale(n_bins=n, weight_bound=weight_bound)
    s = raw * scale
    e = tol * scale
    total = float(s[0])
    bounds = {"n": float(e[0])}
    for name, i in (("prevalence", 1), ("log_loss", 2), ("brier", 3), ("accuracy", 4)):
        bounds[name] = _ratio_bound(float(s[i]), total, float(e[i]), float(e[0]))
    pos, neg = s[_N_HEAD : _N_HEAD + n], s[_N_HEAD + n :]
    eh = float(e[_N_HEAD])
    p_min, n_min = float(pos.sum()) - n * eh, float(neg.sum()) - n * eh
    if p_min <= 0.0 or n_min <= 0.0:
        bounds["roc_auc"] = math.inf
    else:
        auc, _ = _histogram_auc(pos, neg, floor=0.0)
        below = (np.cumsum(neg) - 0.5 * neg) / neg.sum()  # ∂AUC/∂pos_b = (below_b - AUC)/P
        above = (pos.sum() - np.cumsum(pos) + 0.5 * pos) / pos.sum()
        bounds["roc_auc"] = eh * (
            float(np.abs(below - auc).sum()) / p_min + float(np.abs(above - auc).sum()) / n_min
        )
    return bounds


def _histogram_auc(pos: FloatArray, neg: FloatArray, *, floor: float) -> tuple[float, float]:
    """ROC AUC with same-bin pairs counted as ties, and the tie bound."""
    p_total, n_total = float(pos.sum()), float(neg.sum())
    if p_total <= floor or n_total <= floor:
        return math.nan, math.nan
    below = np.cumsum(neg) - neg
    denom = p_total * n_total
    tied = float(pos @ neg)
    auc = (float(pos @ below) + 0.5 * tied) / denom
    return auc, 0.5 * tied / denom


# -- two-round evaluation: summary, then refinement of mixed bins ---------------------------
def summary_vector_length(coarse_bins: int, calibration_bins: int) -> int:
    """Length ``6 + 3·calibration_bins + 2·coarse_bins`` of a summary vector."""
    c = _check_calibration_bins(calibration_bins)
    return len(SUMMARY_FIELDS) + 3 * c + 2 * _check_n_bins(coarse_bins)


def summary_layout(coarse_bins: int, calibration_bins: int) -> dict[str, slice]:
    """Where each part of a summary vector (:func:`classification_summary`) lives.

    Returns
    -------
    dict of str to slice
        One entry per name in :data:`SUMMARY_FIELDS`, then ``"calibration_weight"``,
        ``"calibration_weight_y"``, ``"calibration_weight_p"`` (``calibration_bins`` each)
        and ``"positives"``, ``"negatives"`` (``coarse_bins`` each).

    Examples
    --------
    >>> summary_layout(4, 2)["positives"]
    slice(12, 16, None)
    """
    c = _check_calibration_bins(calibration_bins)
    n = _check_n_bins(coarse_bins)
    layout = {name: slice(i, i + 1) for i, name in enumerate(SUMMARY_FIELDS)}
    at = len(SUMMARY_FIELDS)
    for name in ("calibration_weight", "calibration_weight_y", "calibration_weight_p"):
        layout[name] = slice(at, at + c)
        at += c
    layout["positives"] = slice(at, at + n)
    layout["negatives"] = slice(at + n, at + 2 * n)
    return layout


def _check_levels(n_bins: int, coarse_bins: int) -> tuple[int, int]:
    n = _check_n_bins(n_bins)
    c = _check_n_bins(coarse_bins)
    if n > MAX_N_BINS:
        raise ValueError(f"n_bins must be at most {MAX_N_BINS}, got {n}")
    if c > n or n % c:
        raise ValueError(f"coarse_bins={c} must divide n_bins={n}")
    return n, c


def classification_summary(
    y_true: npt.ArrayLike,
    y_score: npt.ArrayLike,
    sample_weight: npt.ArrayLike | None = None,
    *,
    threshold: float = 0.5,
    n_bins: int = DEFAULT_N_BINS,
    coarse_bins: int = DEFAULT_COARSE_BINS,
    calibration_bins: int = DEFAULT_CALIBRATION_BINS,
) -> FloatArray:
    """One agency's first-round statistics: scalar sums, calibration sums, coarse histograms.

    The coarse histogram bin ``j`` is the union of the score bins
    ``j·r … (j+1)·r - 1`` of :func:`score_bins` with ``n_bins`` (``r = n_bins /
    coarse_bins``), so a later :func:`histogram_refinement` splits it exactly.

    Parameters
    ----------
    y_true, y_score, sample_weight, threshold
        As :func:`classification_statistics`.
    n_bins : int, default DEFAULT_N_BINS
        The finest score bins (what a full refinement reaches).
    coarse_bins : int, default DEFAULT_COARSE_BINS
        Bins of this round's histograms; must divide ``n_bins``.
    calibration_bins : int, default DEFAULT_CALIBRATION_BINS
        Bins uniform in the predicted probability for the calibration curve.

    Returns
    -------
    ndarray of float64, shape (6 + 3·calibration_bins + 2·coarse_bins,)
        See :func:`summary_layout`. The calibration entries are the weight, the weight of
        positives and the weighted sum of scores in each probability bin.

    Raises
    ------
    ValueError
        As :func:`classification_statistics`, or bins that do not fit together.
    """
    n, c = _check_levels(n_bins, coarse_bins)
    k = _check_calibration_bins(calibration_bins)
    head = classification_statistics(y_true, y_score, sample_weight, threshold=threshold, n_bins=2)
    y, p, w = _validate_inputs(y_true, y_score, sample_weight, pred_name="y_score")
    wy = w * y
    coarse = np.searchsorted(_interior_edges(n), p, side="right") // (n // c)
    cal = np.searchsorted(np.linspace(0.0, 1.0, k + 1)[1:-1], p, side="right")
    fractional = float(np.count_nonzero(w != np.floor(w)))
    return np.concatenate(
        [
            head[:_N_HEAD],
            [fractional],
            np.bincount(cal, weights=w, minlength=k),
            np.bincount(cal, weights=wy, minlength=k),
            np.bincount(cal, weights=w * p, minlength=k),
            np.bincount(coarse, weights=wy, minlength=c),
            np.bincount(coarse, weights=w - wy, minlength=c),
        ]
    )


def histogram_refinement(
    y_true: npt.ArrayLike,
    y_score: npt.ArrayLike,
    sample_weight: npt.ArrayLike | None = None,
    *,
    bins: npt.ArrayLike,
    n_bins: int = DEFAULT_N_BINS,
    coarse_bins: int = DEFAULT_COARSE_BINS,
    fine_bins: int | None = None,
) -> FloatArray:
    """One agency's score histograms at ``fine_bins`` resolution inside chosen coarse bins.

    Bin ``j`` of ``k`` bins is the union of the score bins ``j·n/k … (j+1)·n/k - 1`` of
    :func:`score_bins` with ``n = n_bins``, so every level splits the previous one exactly.

    Parameters
    ----------
    y_true, y_score, sample_weight
        As :func:`classification_statistics` (labels and scores are checked the same way).
    bins : array_like of int
        Strictly increasing bin indices in ``[0, coarse_bins)`` to refine.
    n_bins : int, default DEFAULT_N_BINS
        The finest score bins.
    coarse_bins : int, default DEFAULT_COARSE_BINS
        The level ``bins`` refer to; must divide ``fine_bins``.
    fine_bins : int, optional
        The level to refine to (default ``n_bins``); must divide ``n_bins``.

    Returns
    -------
    ndarray of float64, shape (2·r·len(bins),)
        ``positives`` then ``negatives``; each holds, for every listed bin in order, the
        weights of its ``r = fine_bins / coarse_bins`` sub-bins.

    Raises
    ------
    ValueError
        Invalid inputs, levels that do not divide each other, or ``bins`` that are empty,
        unordered or out of range.
    """
    n, f = _check_levels(n_bins, n_bins if fine_bins is None else fine_bins)
    _, c = _check_levels(f, coarse_bins)
    chosen = _check_bin_list(bins, c)
    y, p, w = _validate_inputs(y_true, y_score, sample_weight, pred_name="y_score")
    bad = (y != 0.0) & (y != 1.0)
    if bad.any():
        i = int(np.flatnonzero(bad)[0])
        raise ValueError(f"y_true must hold binary labels 0 or 1; position {i} is {float(y[i])!r}")
    _check_probabilities(p)
    r = f // c
    sub = np.searchsorted(_interior_edges(n), p, side="right") // (n // f)
    slot = np.full(c, -1, dtype=np.intp)
    slot[chosen] = np.arange(len(chosen))
    where = slot[sub // r]
    keep = where >= 0
    idx = where[keep] * r + sub[keep] % r
    wy = (w * y)[keep]
    size = len(chosen) * r
    return np.concatenate(
        [
            np.bincount(idx, weights=wy, minlength=size),
            np.bincount(idx, weights=w[keep] - wy, minlength=size),
        ]
    )


MAX_PACKED: Final[int] = 1 << 52
"""Largest value (exclusive) of one entry of :func:`pack_counts`."""


def count_digits(base: int, agencies: int) -> int:
    """How many counts below ``base`` one value of :func:`pack_counts` can carry.

    The packed value of one agency stays below ``C = base**digits``; quantized with at least
    ``4·agencies·C`` levels, the sum of ``agencies`` values is off by at most 1/4, and
    ``16·agencies²·C <= 2**52`` keeps float64 decoding within a further 1/16, so rounding
    the decoded sum gives it exactly.
    """
    if isinstance(base, bool) or not isinstance(base, int) or base < 2:
        raise ValueError(f"base must be an integer >= 2, got {base!r}")
    if isinstance(agencies, bool) or not isinstance(agencies, int) or agencies < 1:
        raise ValueError(f"agencies must be a positive integer, got {agencies!r}")
    room = MAX_PACKED // (16 * agencies * agencies)
    digits = 0
    value = 1
    while value * base <= room:
        value *= base
        digits += 1
    return digits


def pack_counts(counts: npt.ArrayLike, *, base: int, digits: int) -> FloatArray:
    """Integer counts below ``base``, ``digits`` to a value: ``Σ_j counts[i·d + j]·base^j``.

    Sums of packed vectors unpack to the sums of the counts as long as every summed count
    stays below ``base`` (no carry from one digit into the next).

    Raises
    ------
    ValueError
        A count that is negative, not an integer, or not below ``base``; or a packing whose
        values could reach ``2**52``.
    """
    c = _as_float_vector(counts, "counts")
    d = _check_digits(base, digits)
    bad = (c < 0) | (c >= base) | (c != np.floor(c))
    if bad.any():
        i = int(np.flatnonzero(bad)[0])
        raise ValueError(
            f"count {float(c[i])!r} at position {i} is not an integer in [0, {base}); "
            "the announced bound does not cover this agency's rows"
        )
    padded = np.zeros(-(-len(c) // d) * d)
    padded[: len(c)] = c
    powers = float(base) ** np.arange(d)
    packed: FloatArray = padded.reshape(-1, d) @ powers
    return packed


def unpack_counts(values: npt.ArrayLike, *, base: int, digits: int, length: int) -> FloatArray:
    """Inverse of :func:`pack_counts` for (summed, exactly rounded) packed values."""
    v = _as_float_vector(values, "values")
    d = _check_digits(base, digits)
    if len(v) != -(-length // d):
        raise ValueError(f"{len(v)} packed values cannot hold {length} counts of {d} digits")
    q = np.rint(v).astype(np.int64)
    if (q < 0).any() or (q >= MAX_PACKED).any():
        raise ValueError("packed values out of range")
    out = np.empty((len(q), d), dtype=np.int64)
    for j in range(d):
        out[:, j] = q % base
        q //= base
    return out.reshape(-1)[:length].astype(np.float64)


def _check_digits(base: int, digits: int) -> int:
    if isinstance(base, bool) or not isinstance(base, int | np.integer) or base < 2:
        raise ValueError(f"base must be an integer >= 2, got {base!r}")
    if isinstance(digits, bool) or not isinstance(digits, int | np.integer) or digits < 1:
        raise ValueError(f"digits must be a positive integer, got {digits!r}")
    if int(base) ** int(digits) > MAX_PACKED:
        raise ValueError(f"base**digits = {base}**{digits} exceeds 2**52")
    return int(digits)


def roc_curve_from_histogram(
    positives: npt.ArrayLike, negatives: npt.ArrayLike
) -> tuple[FloatArray, FloatArray]:
    """The ROC curve of score histograms, thresholds at bin edges.

    Pairs inside one bin are ties, so a bin holding both classes is a diagonal segment (as
    :func:`sklearn.metrics.roc_curve` draws tied scores); collinear points are dropped.

    Parameters
    ----------
    positives, negatives : array_like of shape (n_bins,)
        Non-negative weights per score bin, lowest scores first.

    Returns
    -------
    fpr, tpr : ndarray of float64
        From ``(0, 0)`` to ``(1, 1)``.

    Raises
    ------
    ValueError
        Histograms of different lengths, negative or non-finite entries, or a class
        without weight.
    """
    pos = _as_float_vector(positives, "positives")
    neg = _as_float_vector(negatives, "negatives")
    if len(pos) != len(neg):
        raise ValueError(f"histograms have different lengths: {len(pos)} and {len(neg)}")
    if (pos < 0).any() or (neg < 0).any():
        raise ValueError("histogram weights must be non-negative")
    p_total, n_total = float(pos.sum()), float(neg.sum())
    if p_total <= 0.0 or n_total <= 0.0:
        raise ValueError("an ROC curve needs weight in both classes")
    dp, dn = pos[::-1] / p_total, neg[::-1] / n_total
    used = (dp > 0) | (dn > 0)
    dp, dn = dp[used], dn[used]
    # merge runs of pure bins of the same class (collinear segments)
    kind = np.where(dn == 0, 1, np.where(dp == 0, 2, 0))
    start = np.ones(len(kind), dtype=bool)
    start[1:] = (kind[1:] != kind[:-1]) | (kind[1:] == 0)
    group = np.cumsum(start) - 1
    tpr = np.concatenate([[0.0], np.cumsum(np.bincount(group, weights=dp))])
    fpr = np.concatenate([[0.0], np.cumsum(np.bincount(group, weights=dn))])
    tpr[-1] = fpr[-1] = 1.0
    return np.minimum(fpr, 1.0), np.minimum(tpr, 1.0)


def calibration_curve_from_sums(
    weight: npt.ArrayLike, weight_y: npt.ArrayLike, weight_p: npt.ArrayLike
) -> tuple[FloatArray, FloatArray, FloatArray]:
    """Calibration curve from per-bin sums, as :func:`sklearn.calibration.calibration_curve`.

    Parameters
    ----------
    weight, weight_y, weight_p : array_like of shape (calibration_bins,)
        Summed weight, weight of positives and weighted scores in each probability bin.

    Returns
    -------
    mean_predicted, fraction_positive, bin_weight : ndarray of float64
        For the bins holding weight (empty bins are left out, as scikit-learn does).
    """
    w = _as_float_vector(weight, "weight")
    wy = _as_float_vector(weight_y, "weight_y")
    wp = _as_float_vector(weight_p, "weight_p")
    if not len(w) == len(wy) == len(wp):
        raise ValueError("calibration sums have different lengths")
    keep = w > 0
    return wp[keep] / w[keep], wy[keep] / w[keep], w[keep]


def _check_calibration_bins(k: int) -> int:
    if isinstance(k, bool) or not isinstance(k, int | np.integer) or not k >= 1:
        raise ValueError(f"calibration_bins must be a positive integer, got {k!r}")
    if k > MAX_CALIBRATION_BINS:
        raise ValueError(f"calibration_bins must be at most {MAX_CALIBRATION_BINS}, got {k}")
    return int(k)


def _check_bin_list(bins: npt.ArrayLike, n: int) -> npt.NDArray[np.intp]:
    arr = np.asarray(bins)
    if arr.ndim != 1 or len(arr) == 0:
        raise ValueError(f"bins must be a non-empty list of bin indices, got shape {arr.shape}")
    if arr.dtype.kind not in "iu":
        raise ValueError(f"bins must be integers, got dtype {arr.dtype}")
    if len(arr) > n or int(arr.min()) < 0 or int(arr.max()) >= n:
        raise ValueError(f"bins must lie in [0, {n}); got {int(arr.min())} … {int(arr.max())}")
    if (np.diff(arr) <= 0).any():
        raise ValueError("bins must be strictly increasing")
    return arr.astype(np.intp)


@dataclass(frozen=True)
class EvaluationCurves:
    """What a federated evaluation of a classifier releases for pictures.

    Derived from the released sums only (no per-agency figure).

    Attributes
    ----------
    roc_fpr, roc_tpr : tuple of float
        The ROC curve (:func:`roc_curve_from_histogram`), ``(0, 0)`` to ``(1, 1)``.
    roc_auc : float
        The area under it (the evaluation's ``roc_auc``).
    calibration_predicted, calibration_observed, calibration_weight : tuple of float
        Mean score, share of positives and weight of each non-empty probability bin.
    calibration_bins : int
        Bins uniform in ``[0, 1]`` the calibration sums used.
    """

    roc_fpr: tuple[float, ...]
    roc_tpr: tuple[float, ...]
    roc_auc: float
    calibration_predicted: tuple[float, ...]
    calibration_observed: tuple[float, ...]
    calibration_weight: tuple[float, ...]
    calibration_bins: int

    def __post_init__(self) -> None:
        if len(self.roc_fpr) != len(self.roc_tpr) or len(self.roc_fpr) < 2:
            raise ValueError("roc_fpr and roc_tpr must hold the same number (>= 2) of points")
        if len(self.roc_fpr) > 2 * MAX_N_BINS + 2:
            raise ValueError(f"an ROC curve holds at most {2 * MAX_N_BINS + 2} points")
        k = _check_calibration_bins(self.calibration_bins)
        cal = (self.calibration_predicted, self.calibration_observed, self.calibration_weight)
        if len({len(c) for c in cal}) != 1 or len(cal[0]) > k:
            raise ValueError(
                f"calibration points must have equal lengths of at most calibration_bins={k}"
            )
        for name in ("roc_fpr", "roc_tpr", "calibration_predicted", "calibration_observed"):
            values = np.asarray(getattr(self, name), dtype=np.float64)
            if values.size and not (np.isfinite(values).all() and (values >= 0).all()):
                raise ValueError(f"{name} must hold finite values in [0, 1]")
            if values.size and (values > 1.0 + 1e-9).any():
                raise ValueError(f"{name} must hold finite values in [0, 1]")

    @classmethod
    def from_sums(
        cls,
        positives: npt.ArrayLike,
        negatives: npt.ArrayLike,
        calibration: tuple[npt.ArrayLike, npt.ArrayLike, npt.ArrayLike],
        *,
        roc_auc: float,
        calibration_bins: int | None = None,
    ) -> EvaluationCurves:
        """Build the curves from released histograms and calibration sums.

        ``calibration_bins`` defaults to the length of the calibration sums.
        """
        fpr, tpr = roc_curve_from_histogram(positives, negatives)
        pred, obs, wt = calibration_curve_from_sums(*calibration)
        return cls(
            roc_fpr=tuple(map(float, fpr)),
            roc_tpr=tuple(map(float, tpr)),
            roc_auc=float(roc_auc),
            calibration_predicted=tuple(map(float, np.clip(pred, 0.0, 1.0))),
            calibration_observed=tuple(map(float, np.clip(obs, 0.0, 1.0))),
            calibration_weight=tuple(map(float, wt)),
            calibration_bins=(
                len(np.asarray(calibration[0])) if calibration_bins is None else calibration_bins
            ),
        )

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready form (see :meth:`from_dict`)."""
        return {
            "roc": {"fpr": list(self.roc_fpr), "tpr": list(self.roc_tpr), "auc": self.roc_auc},
            "calibration": {
                "bins": self.calibration_bins,
                "predicted": list(self.calibration_predicted),
                "observed": list(self.calibration_observed),
                "weight": list(self.calibration_weight),
            },
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> EvaluationCurves:
        """Read :meth:`to_dict`'s form back, checking it.

        Raises
        ------
        ValueError
            Missing parts, wrong types, or values out of range.
        """
        try:
            roc, cal = data["roc"], data["calibration"]
            return cls(
                roc_fpr=tuple(float(x) for x in roc["fpr"]),
                roc_tpr=tuple(float(x) for x in roc["tpr"]),
                roc_auc=float(roc["auc"]) if roc.get("auc") is not None else math.nan,
                calibration_predicted=tuple(float(x) for x in cal["predicted"]),
                calibration_observed=tuple(float(x) for x in cal["observed"]),
                calibration_weight=tuple(float(x) for x in cal["weight"]),
                calibration_bins=int(cal["bins"]),
            )
        except (KeyError, TypeError, AttributeError) as exc:
            raise ValueError(f"invalid evaluation curves: {exc!r}") from exc


# -- regression -----------------------------------------------------------------------------
def regression_statistics(
    y_true: npt.ArrayLike,
    y_pred: npt.ArrayLike,
    sample_weight: npt.ArrayLike | None = None,
    *,
    poisson: bool = False,
    weight_bound: float | None = None,
    y_range: tuple[float, float] | None = None,
) -> FloatArray:
    """One agency's additive statistics for regression and count metrics.

    Parameters
    ----------
    y_true : array_like of shape (n,)
    y_pred : array_like of shape (n,)
    sample_weight : array_like of shape (n,), optional
        Non-negative weights; all ones by default.
    poisson : bool, default False
        Also sum the Poisson deviance ``2·(y·log(y/ŷ) - y + ŷ)``; needs ``y_true >= 0``
        and ``y_pred > 0``.
    weight_bound : float, optional
        Public upper bound ``W`` on this agency's total weight.
    y_range : (float, float), optional
        Public bounds ``(lo, hi)`` on ``y_true``. With ``weight_bound`` (give both or
        neither) the vector is centred on ``(lo + hi)/2`` and divided by
        :func:`regression_scale` so that every entry lies in ``[-1, 1]``.

    Returns
    -------
    ndarray of float64, shape (6,)
        See the module docstring for the layout.

    Raises
    ------
    ValueError
        Inputs of different lengths or not one-dimensional, non-finite values, negative
        weights, invalid Poisson inputs, targets outside ``y_range``, or a normalised
        entry outside ``[-1, 1]`` (the message names the bound to raise).
    """
    y, f, w = _validate_inputs(y_true, y_pred, sample_weight, pred_name="y_pred")
    norm = _regression_normalisation(weight_bound, y_range)
    centre = 0.0 if norm is None else norm[1]
    if poisson:
        if (y < 0).any():
            i = int(np.flatnonzero(y < 0)[0])
            raise ValueError(f"Poisson deviance needs y_true >= 0; position {i} is {float(y[i])!r}")
        if (f <= 0).any():
            i = int(np.flatnonzero(f <= 0)[0])
            raise ValueError(f"Poisson deviance needs y_pred > 0; position {i} is {float(f[i])!r}")
        pos = y > 0
        y_log = np.zeros_like(y)
        y_log[pos] = y[pos] * np.log(y[pos] / f[pos])  # xlogy(y, y/ŷ), 0 where y == 0
        deviance = float(w @ (2.0 * (y_log - y + f)))
    else:
        deviance = 0.0
    d = y - centre
    r = y - f
    vector = np.array([w.sum(), w @ d, w @ (d * d), w @ (r * r), w @ np.abs(r), deviance])
    if norm is None:
        return vector
    bound, _, h = norm
    lo, hi = centre - h, centre + h
    outside = (y < lo) | (y > hi)
    if outside.any():
        i = int(np.flatnonzero(outside)[0])
        raise ValueError(f"y_true[{i}] = {float(y[i])!r} lies outside y_range=({lo!r}, {hi!r})")
    if vector[0] > bound * (1.0 + _BOUND_SLACK):
        raise ValueError(
            f"total sample weight {vector[0]:.6g} exceeds weight_bound={bound:.6g}; "
            "the public bound must cover every agency"
        )
    normalised: FloatArray = vector / regression_scale(weight_bound=bound, y_range=y_range)
    over = np.abs(normalised) > 1.0 + _BOUND_SLACK
    if over.any():
        i = int(np.flatnonzero(over)[0])
        raise ValueError(
            f"normalised {REGRESSION_FIELDS[i]} entry is {normalised[i]:.6g}, outside [-1, 1]: "
            f"the predictions are too far from y_range=({lo!r}, {hi!r}) for its width; "
            "widen y_range (or raise weight_bound)"
        )
    return normalised


def regression_metrics_from_sum(
    vector: npt.ArrayLike,
    *,
    poisson: bool = False,
    weight_bound: float | None = None,
    y_range: tuple[float, float] | None = None,
) -> dict[str, float]:
    """Global regression metrics from the sum of the agencies' vectors.

    Parameters
    ----------
    vector : array_like of shape (6,)
        Sum of :func:`regression_statistics` vectors.
    poisson : bool, default False
        Whether the agencies summed the Poisson deviance; otherwise
        ``mean_poisson_deviance`` is NaN.
    weight_bound, y_range : optional
        The values the agencies used.

    Returns
    -------
    dict of str to float
        ``n`` (total weight), ``mean`` (weighted mean of ``y_true``), ``rmse``, ``mae``,
        ``r2`` and ``mean_poisson_deviance``. As :func:`sklearn.metrics.r2_score`, ``r2``
        is 1.0 for constant targets predicted exactly and 0.0 for constant targets
        otherwise.

    Raises
    ------
    ValueError
        Wrong length, non-finite entries, or a total weight that is not positive.
    """
    s = _regression_raw(vector, weight_bound, y_range)
    total, t1, t2, sse, sae, dev = (float(x) for x in s)
    if total <= 0.0:
        raise ValueError(f"the total sample weight is {total:.6g}: no samples were summed")
    centre = 0.0 if y_range is None else 0.5 * (float(y_range[0]) + float(y_range[1]))
    sst = t2 - t1 * t1 / total
    # sklearn's force_finite: constant targets score 1.0 if predicted exactly, else 0.0.
    r2 = 1.0 - sse / sst if sst > 0.0 else (1.0 if sse <= 0.0 else 0.0)
    return {
        "n": total,
        "mean": centre + t1 / total,
        "rmse": math.sqrt(max(sse / total, 0.0)),
        "mae": sae / total,
        "r2": r2,
        "mean_poisson_deviance": dev / total if poisson else math.nan,
    }


def regression_error_bounds(
    vector: npt.ArrayLike,
    *,
    weight_bound: float | None = None,
    y_range: tuple[float, float] | None = None,
    atol: float,
) -> dict[str, float]:
    """Bounds on how far quantization can move each regression metric.

    Parameters
    ----------
    vector : array_like of shape (6,)
        The (decoded) sum, as passed to :func:`regression_metrics_from_sum`.
    weight_bound, y_range : optional
        The values the agencies used.
    atol : float
        Bound on the absolute error of every entry of ``vector``; for ``K`` vectors
        quantized by :class:`fedcity.crypto.PackingSpec` use
        ``quantization_atol(spec.clip, spec.precision_bits, K)``.

    Returns
    -------
    dict of str to float
        One bound per metric of :func:`regression_metrics_from_sum`; ``inf`` when the error
        could swamp a denominator. The ``r2`` bound includes the second-order term of
        ``(Σw·y)²``.
    """
    tol = _check_non_negative(atol, "atol")
    s = _regression_raw(vector, weight_bound, y_range)
    e = tol * regression_scale(weight_bound=weight_bound, y_range=y_range)
    total, t1, t2, sse, sae, dev = (float(x) for x in s)
    e0, e1, e2, e3, e4, e5 = (float(x) for x in e)
    if total <= 0.0:
        raise ValueError(f"the total sample weight is {total:.6g}: no samples were summed")
    mse = sse / total
    mse_bound = _ratio_bound(sse, total, e3, e0)
    if mse - mse_bound > 0.0:
        rmse_bound = mse_bound / (math.sqrt(mse) + math.sqrt(mse - mse_bound))
    else:
        rmse_bound = math.sqrt(max(mse, 0.0) + mse_bound)
    # SST = Σw(y-c)² - g with g = (Σw(y-c))²/Σw = m²·Σw, m = Σw(y-c)/Σw. Along the segment
    # between observed and true sums m stays within mean_bound of its observed value, and
    # |∂g/∂Σw(y-c)| = 2|m|, |∂g/∂Σw| = m².
    mean_bound = _ratio_bound(t1, total, e1, e0)
    m_max = abs(t1 / total) + mean_bound
    sst = t2 - t1 * t1 / total
    sst_bound = e2 + 2.0 * m_max * e1 + m_max * m_max * e0
    return {
        "n": e0,
        "mean": mean_bound,
        "rmse": rmse_bound,
        "mae": _ratio_bound(sae, total, e4, e0),
        "r2": _ratio_bound(sse, sst, e3, sst_bound) if sst > 0.0 else math.inf,
        "mean_poisson_deviance": _ratio_bound(dev, total, e5, e0),
    }


def _regression_raw(
    vector: npt.ArrayLike, weight_bound: float | None, y_range: tuple[float, float] | None
) -> FloatArray:
    """Check a regression sum and multiply the normalisation scales back."""
    raw = _check_sum_vector(vector, REGRESSION_VECTOR_LENGTH, "regression")
    scaled: FloatArray = raw * regression_scale(weight_bound=weight_bound, y_range=y_range)
    return scaled


def _regression_normalisation(
    weight_bound: float | None, y_range: tuple[float, float] | None
) -> tuple[float, float, float] | None:
    """``(W, centre, half_width)`` of a regression normalisation, or ``None`` for raw sums."""
    if weight_bound is None and y_range is None:
        return None
    if weight_bound is None or y_range is None:
        raise ValueError("regression normalisation needs both weight_bound and y_range")
    bound = _check_positive(weight_bound, "weight_bound")
    if len(y_range) != 2:
        raise ValueError(f"y_range must be a pair (lo, hi), got {y_range!r}")
    lo = _check_finite(y_range[0], "y_range[0]")
    hi = _check_finite(y_range[1], "y_range[1]")
    if not lo < hi:
        raise ValueError(f"y_range must satisfy lo < hi, got {y_range!r}")
    return bound, 0.5 * (lo + hi), 0.5 * (hi - lo)


# -- validation helpers ---------------------------------------------------------------------
def _ratio_bound(num: float, den: float, e_num: float, e_den: float) -> float:
    """Bound on ``|num/den - true_num/true_den|`` given ``|num - true_num| <= e_num`` etc."""
    if den - e_den <= 0.0:
        return math.inf
    return (e_num + abs(num / den) * e_den) / (den - e_den)


def _as_float_vector(x: npt.ArrayLike, name: str) -> FloatArray:
    arr = np.asarray(x)
    if arr.ndim != 1:
        raise ValueError(f"{name} must be one-dimensional, got shape {arr.shape}")
    if arr.dtype.kind not in "biuf":
        raise ValueError(f"{name} must be numeric, got dtype {arr.dtype}")
    out = arr.astype(np.float64)
    bad = ~np.isfinite(out)
    if bad.any():
        i = int(np.flatnonzero(bad)[0])
        raise ValueError(f"{name} must be finite; position {i} is {float(out[i])!r}")
    return out


def _validate_inputs(
    y_true: npt.ArrayLike,
    y_pred: npt.ArrayLike,
    sample_weight: npt.ArrayLike | None,
    *,
    pred_name: str,
) -> tuple[FloatArray, FloatArray, FloatArray]:
    y = _as_float_vector(y_true, "y_true")
    f = _as_float_vector(y_pred, pred_name)
    if len(f) != len(y):
        raise ValueError(f"y_true and {pred_name} have different lengths: {len(y)} and {len(f)}")
    if sample_weight is None:
        return y, f, np.ones_like(y)
    w = _as_float_vector(sample_weight, "sample_weight")
    if len(w) != len(y):
        raise ValueError(f"y_true and sample_weight have different lengths: {len(y)} and {len(w)}")
    if (w < 0).any():
        i = int(np.flatnonzero(w < 0)[0])
        raise ValueError(f"sample_weight must be non-negative; position {i} is {float(w[i])!r}")
    return y, f, w


def _check_probabilities(p: FloatArray) -> None:
    bad = (p < 0.0) | (p > 1.0)
    if bad.any():
        i = int(np.flatnonzero(bad)[0])
        raise ValueError(
            f"y_score must be probabilities in [0, 1]; position {i} is {float(p[i])!r}"
        )


def _check_sum_vector(vector: npt.ArrayLike, length: int, what: str) -> FloatArray:
    v = _as_float_vector(vector, "vector")
    if len(v) != length:
        raise ValueError(f"vector has length {len(v)}, but {what} needs length {length}")
    return v


def _check_n_bins(n_bins: int) -> int:
    if isinstance(n_bins, bool) or not isinstance(n_bins, int | np.integer) or n_bins < 2:
        raise ValueError(f"n_bins must be an integer >= 2, got {n_bins!r}")
    return int(n_bins)


def _check_finite(x: float, name: str) -> float:
    if isinstance(x, bool) or not isinstance(x, int | float | np.integer | np.floating):
        raise ValueError(f"{name} must be a number, got {x!r}")
    value = float(x)
    if not math.isfinite(value):
        raise ValueError(f"{name} must be finite, got {x!r}")
    return value


def _check_positive(x: float, name: str) -> float:
    value = _check_finite(x, name)
    if value <= 0.0:
        raise ValueError(f"{name} must be positive, got {x!r}")
    return value


def _check_non_negative(x: float, name: str) -> float:
    value = _check_finite(x, name)
    if value < 0.0:
        raise ValueError(f"{name} must be non-negative, got {x!r}")
    return value
