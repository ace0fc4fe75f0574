"""Federated evaluation: global metrics from secure sums, per-agency metrics stay local.

The model travels to agencies as declarative parameters (a GLM's family, coefficients and
preprocessing; see :data:`MODEL_PREDICTORS`), never as code or a pickle. Each agency scores
its own rows and returns the additive statistics of :mod:`fedcity.learn.metrics`; only the
sum is decrypted, so the federation learns global log loss, Brier score, accuracy and ROC AUC
(from summed score histograms) or RMSE, MAE, R² and Poisson deviance — and nothing per agency.
An agency that wants its own figures computes them locally with the returned estimator.

A classifier is evaluated in a few rounds of the one vetted step ``"eval.model"``:

1. **summary**: the scalar sums, calibration sums over 10 probability bins and score
   histograms over 64 bins, at 52-bit precision;
2. **refinements** (default 64 → 1,024 → 8,192 bins): each round asks only for the bins of
   the previous round that hold both classes — only there does the order of pairs inside a
   bin matter for ROC AUC — split into their sub-bins. Bins holding one class only are not
   split: where their weight sits inside the bin changes neither the AUC, nor its tie bound,
   nor the ROC curve. When every weight is an integer (the summary counts rows with
   fractional weights), the counts are exact integers below ``base = total weight + 1``
   (released by the summary) and are packed several to a value, ``Σ_j c_j·base^j``, at the
   bits that keep the decrypted sum exact, instead of one count per 52-bit value.

The metrics equal those of the one-round 8,192-bin histograms that earlier versions sent
(``coarse_bins=None`` still does); on the Chicago test window the rounds hold 26 ciphertexts
per agency instead of 469 at 2048 bits. What is released is less: the fine histograms only
inside mixed bins, plus the calibration sums. If an agency leaves between rounds, the
refinement is not combined with the earlier sums; the metrics then come from the last
consistent level (``EvaluationMetrics.notes`` says so, ``roc_auc_tie_bound`` shows the
larger bound).
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any

import numpy as np
import numpy.typing as npt
from scipy.special import expit

from fedcity.core.tasks import TaskRequest, local_step
from fedcity.learn import metrics
from fedcity.learn.algorithm import Algorithm, RoundRecord
from fedcity.learn.design import Preprocessing, design_matrix

if TYPE_CHECKING:
    from fedcity.data.dataset import AgencyDataset

__all__ = [
    "MODEL_PREDICTORS",
    "EvaluationMetrics",
    "FederatedEvaluation",
    "evaluation_progress",
    "evaluation_statistics",
    "model_predictor",
]

Predictor = Callable[[Mapping[str, Any], "AgencyDataset"], npt.NDArray[np.float64]]

MODEL_PREDICTORS: dict[str, Predictor] = {}
"""Vetted model types an agency can score, by the ``"type"`` of the model parameters."""


def model_predictor(kind: str) -> Callable[[Predictor], Predictor]:
    """Register how agencies score a declaratively described model type."""

    def register(fn: Predictor) -> Predictor:
        MODEL_PREDICTORS[kind] = fn
        return fn

    return register


@model_predictor("glm")
def _predict_glm(model: Mapping[str, Any], data: AgencyDataset) -> npt.NDArray[np.float64]:
    pre = Preprocessing.from_params(model["preprocessing"])
    beta = np.asarray(model["beta"], dtype=np.float64)
    eta = beta[0] + design_matrix(pre, data) @ beta[1:]
    family = model["family"]
    if family == "logistic":
        out: npt.NDArray[np.float64] = expit(eta)
    elif family == "poisson":
        out = np.exp(eta)
    else:
        out = eta
    return out


_EVAL_CLIP = float(2**20)
_FLOAT_BITS = 52


@local_step("eval.model")
def _evaluate(params: Mapping[str, Any], data: AgencyDataset) -> npt.NDArray[np.float64]:
    model = params["model"]
    predictor = MODEL_PREDICTORS.get(model.get("type", ""))
    if predictor is None:
        raise ValueError(f"model type {model.get('type')!r} is not vetted for evaluation")
    return evaluation_statistics(params, data.y(), predictor(model, data), data.sample_weight())


def evaluation_statistics(
    params: Mapping[str, Any],
    y_true: npt.ArrayLike,
    y_pred: npt.ArrayLike,
    sample_weight: npt.ArrayLike | None = None,
) -> npt.NDArray[np.float64]:
    """One agency's vector for an ``"eval.model"`` task, from its labels and predictions.

    Parameters
    ----------
    params : mapping
        The task's parameters (:meth:`FederatedEvaluation.next_request`).
    y_true, y_pred, sample_weight : array_like
        The agency's labels, scores (probabilities of class 1) or predictions, weights.

    Raises
    ------
    ValueError
        Invalid data or parameters (unknown stage, bins out of range, counts above the
        announced bound, ...).
    """
    if params["problem"] != "classification":
        return metrics.regression_statistics(
            y_true, y_pred, sample_weight, poisson=params["problem"] == "poisson"
        )
    stage = params.get("stage")
    if stage is None:  # one round, full histograms (earlier versions, coarse_bins=None)
        return metrics.classification_statistics(
            y_true,
            y_pred,
            sample_weight,
            threshold=params["threshold"],
            n_bins=params["n_bins"],
        )
    if stage == "summary":
        return metrics.classification_summary(
            y_true,
            y_pred,
            sample_weight,
            threshold=params["threshold"],
            n_bins=params["n_bins"],
            coarse_bins=params["coarse_bins"],
            calibration_bins=params["calibration_bins"],
        )
    if stage == "refine":
        counts = metrics.histogram_refinement(
            y_true,
            y_pred,
            sample_weight,
            bins=np.asarray(params["bins"]),
            n_bins=params["n_bins"],
            coarse_bins=params["coarse_bins"],
            fine_bins=params.get("fine_bins"),
        )
        if "base" not in params:
            return counts
        return metrics.pack_counts(counts, base=params["base"], digits=params["digits"])
    raise ValueError(f"unknown evaluation stage {stage!r}")


class EvaluationMetrics(dict[str, float]):
    """Global metrics of a federated evaluation: a ``dict`` of floats, plus its curves.

    Attributes
    ----------
    curves : EvaluationCurves or None
        ROC and calibration curves of a classifier (None for regression, or when a class
        is absent).
    notes : list of str
        Anything the reader should know (e.g. a refinement that could not be applied).
    """

    def __init__(
        self,
        values: Mapping[str, float],
        curves: metrics.EvaluationCurves | None = None,
        notes: Iterable[str] = (),
    ) -> None:
        super().__init__(values)
        self.curves = curves
        self.notes = list(notes)


class FederatedEvaluation(Algorithm):
    """Global metrics from secure sums: one round for regression, a few for a classifier.

    A classifier's first round (the summary) sends the scalar sums, calibration sums and
    score histograms over ``levels[0]`` bins; each further round splits only the bins of the
    previous level that hold both classes, until ``n_bins``. The metrics are those of the
    ``n_bins`` histograms (module docstring).

    Parameters
    ----------
    model : mapping
        Declarative model parameters with a registered ``"type"``.
    problem : {"classification", "regression", "poisson"}
    dataset : str, default "test"
        Which of each agency's named tables to score.
    threshold : float, default 0.5
        Decision threshold for accuracy.
    n_bins : int, default metrics.DEFAULT_N_BINS
        Score histogram bins for ROC AUC (at most :data:`metrics.MAX_N_BINS`).
    coarse_bins : int, sequence of int, or None, default metrics.DEFAULT_LEVELS
        Histogram bins of the summary round, or of every round before the last (each level
        dividing the next and ``n_bins``); the default keeps those of 64 and 1,024 that divide
        a smaller ``n_bins``. ``None`` sends the full ``n_bins`` histograms in one round at
        52 bits, as earlier versions did.
    calibration_bins : int, default metrics.DEFAULT_CALIBRATION_BINS
        Probability bins of the calibration curve.

    Attributes
    ----------
    metrics_ : EvaluationMetrics or None
        The global metrics once finished.
    levels_ : tuple of int
        Bins of each round's histograms, ending with ``n_bins``.
    refined_bins_ : list of list of int
        The bins each refinement round asked for, at the previous round's level.
    integer_counts_ : bool
        Whether refinements packed exact integer counts (every weight an integer).
    """

    def __init__(
        self,
        model: Mapping[str, Any],
        problem: str,
        *,
        dataset: str = "test",
        threshold: float = 0.5,
        n_bins: int = metrics.DEFAULT_N_BINS,
        coarse_bins: int | Sequence[int] | None = metrics.DEFAULT_LEVELS,
        calibration_bins: int = metrics.DEFAULT_CALIBRATION_BINS,
    ) -> None:
        if problem not in ("classification", "regression", "poisson"):
            raise ValueError(f"problem must be classification, regression or poisson: {problem!r}")
        if not 0.0 < threshold < 1.0:
            raise ValueError(f"threshold must lie in (0, 1), got {threshold}")
        if coarse_bins is None:
            metrics.classification_vector_length(n_bins)  # validates n_bins
            if n_bins > metrics.MAX_N_BINS:
                raise ValueError(f"n_bins must be at most {metrics.MAX_N_BINS}, got {n_bins}")
            self.levels_: tuple[int, ...] = (n_bins,)
        else:
            if coarse_bins is metrics.DEFAULT_LEVELS:  # the default adapts to n_bins
                fit = [b for b in coarse_bins if b < n_bins and n_bins % b == 0]
                coarse_bins = tuple(fit) or (n_bins,)
            coarse = (coarse_bins,) if isinstance(coarse_bins, int) else tuple(coarse_bins)
            if not coarse or len(coarse) > 8:
                raise ValueError(f"coarse_bins must name 1 to 8 levels, got {coarse_bins!r}")
            metrics.summary_vector_length(coarse[0], calibration_bins)  # validates both
            levels = (*coarse, n_bins) if coarse[-1] != n_bins else coarse
            for a, b in itertools.pairwise(levels):
                metrics._check_levels(b, a)
                if a == b:
                    raise ValueError(f"coarse_bins must increase, got {coarse_bins!r}")
            metrics._check_levels(n_bins, levels[0])
            self.levels_ = levels
        self.model = dict(model)
        self.problem = problem
        self.dataset = dataset
        self.threshold = threshold
        self.n_bins = n_bins
        self.coarse_bins = coarse_bins
        self.calibration_bins = calibration_bins
        self.metrics_: EvaluationMetrics | None = None
        self.refined_bins_: list[list[int]] = []
        self.integer_counts_ = False
        self._summary: npt.NDArray[np.float64] | None = None
        self._contributors: list[str] = []
        self._level = 0  # index into levels_ of the newest histograms
        self._pos = np.zeros(0)  # n_bins histograms, each known bin's weight at its first slot
        self._neg = np.zeros(0)
        self._open: list[int] = []  # bins at levels_[_level] to refine next
        self._tol = 0.0  # weight below which a bin counts as empty
        self._clip = _EVAL_CLIP
        self._bits = _FLOAT_BITS
        self._base = 0  # > 0: counts packed `_digits` to a value below _base**_digits
        self._digits = 1

    @property
    def max_rounds(self) -> int:
        """Rounds at most: one, or one per histogram level for a refined classifier."""
        if self.problem != "classification" or self.coarse_bins is None:
            return 1
        return len(self.levels_)

    def _params(self, **extra: Any) -> dict[str, Any]:
        return {
            "model": self.model,
            "problem": self.problem,
            "dataset": self.dataset,
            "threshold": self.threshold,
            "n_bins": self.n_bins,
            **extra,
        }

    def next_request(self) -> TaskRequest | None:
        """The summary round, then one refinement per level while some bin holds both classes."""
        if self.metrics_ is not None:
            return None
        label = f"evaluation on {self.dataset!r}"
        if self.problem != "classification" or self.coarse_bins is None:
            length = (
                metrics.classification_vector_length(self.n_bins)
                if self.problem == "classification"
                else len(metrics.REGRESSION_FIELDS)
            )
            return TaskRequest(
                "eval.model",
                self._params(),
                length,
                clip=_EVAL_CLIP,
                precision_bits=_FLOAT_BITS,
                label=label,
            )
        if self._summary is None:
            coarse = self.levels_[0]
            return TaskRequest(
                "eval.model",
                self._params(
                    stage="summary",
                    coarse_bins=coarse,
                    calibration_bins=self.calibration_bins,
                ),
                metrics.summary_vector_length(coarse, self.calibration_bins),
                clip=_EVAL_CLIP,
                precision_bits=_FLOAT_BITS,
                label=f"{label}: summary, {coarse} score bins",
            )
        level, finer = self.levels_[self._level], self.levels_[self._level + 1]
        counts = 2 * (finer // level) * len(self._open)
        packed = {"base": self._base, "digits": self._digits} if self._base else {}
        return TaskRequest(
            "eval.model",
            self._params(
                stage="refine",
                coarse_bins=level,
                fine_bins=finer,
                bins=list(self._open),
                **packed,
            ),
            -(-counts // self._digits),
            clip=self._clip,
            precision_bits=self._bits,
            label=(
                f"{label}: {len(self._open)} of {level} score bins to {finer}"
                + (f", {self._digits} counts per {self._bits}-bit value" if self._base else "")
            ),
        )

    def update(
        self, request: TaskRequest, released: npt.NDArray[np.float64], record: RoundRecord
    ) -> None:
        """Turn the released sums into global metrics (or into the next refinement)."""
        if self.problem != "classification":
            values = metrics.regression_metrics_from_sum(
                released, poisson=self.problem == "poisson"
            )
            self.metrics_ = EvaluationMetrics(values)
            return
        stage = request.params.get("stage")
        if stage is None:
            self._finish_legacy(released)
        elif stage == "summary":
            self._after_summary(released, record)
        else:
            self._after_refinement(request, released, record)

    # -- internals ----------------------------------------------------------------------------
    def _finish_legacy(self, released: npt.NDArray[np.float64]) -> None:
        values = metrics.classification_metrics_from_sum(released, n_bins=self.n_bins)
        layout = metrics.classification_layout(self.n_bins)
        pos, neg = released[layout["positives"]], released[layout["negatives"]]
        empty = np.zeros(0)
        self.metrics_ = EvaluationMetrics(
            values, _curves(pos, neg, (empty, empty, empty), values["roc_auc"], 1)
        )

    def _after_summary(self, released: npt.NDArray[np.float64], record: RoundRecord) -> None:
        coarse = self.levels_[0]
        summary = np.array(released, dtype=np.float64)
        layout = metrics.summary_layout(coarse, self.calibration_bins)
        k = max(len(record.contributors), 1)
        error = k * record.step / 2.0  # bound on each entry's quantization error
        fractional = float(summary[layout["fractional_weights"]][0])
        hist = slice(layout["positives"].start, layout["negatives"].stop)
        if error < 0.25 and round(fractional) == 0:
            self.integer_counts_ = True
            summary[hist] = np.rint(summary[hist])
        summary[hist] = np.maximum(summary[hist], 0.0)
        self._summary = summary
        self._contributors = list(record.contributors)
        step = self.n_bins // coarse
        self._pos, self._neg = np.zeros(self.n_bins), np.zeros(self.n_bins)
        self._pos[::step] = summary[layout["positives"]]
        self._neg[::step] = summary[layout["negatives"]]
        self._tol = 0.5 if self.integer_counts_ else 2.0 * error
        self._open = self._mixed(np.arange(coarse), coarse)
        if len(self.levels_) == 1 or not self._open:
            self.integer_counts_ = False
            self._finish()
            return
        total = float(summary[layout["weight"]][0])
        if self.integer_counts_:
            base = round(total) + 1  # every count, summed or not, lies below it
            digits = metrics.count_digits(base, k)
            if digits >= 1:
                self._base, self._digits = base, digits
                self._clip = float(base**digits)
                self._bits = (4 * k * base**digits).bit_length()  # sum error <= 1/4
                return
            self.integer_counts_ = False
        self._clip = max(_EVAL_CLIP, 2.0 ** math.ceil(math.log2(max(total, 1.0) * 1.01)))
        self._bits = _FLOAT_BITS

    def _mixed(self, bins: npt.NDArray[np.intp], level: int) -> list[int]:
        """Which of ``bins`` (at ``level``) hold weight of both classes."""
        at = bins * (self.n_bins // level)
        keep = (self._pos[at] > self._tol) & (self._neg[at] > self._tol)
        return [int(b) for b in bins[keep]]

    def _after_refinement(
        self, request: TaskRequest, released: npt.NDArray[np.float64], record: RoundRecord
    ) -> None:
        level, finer = self.levels_[self._level], self.levels_[self._level + 1]
        r = finer // level
        counts = 2 * r * len(self._open)
        error = max(len(record.contributors), 1) * record.step / 2.0
        values = np.array(released, dtype=np.float64)
        notes: list[str] = []
        if self._base:
            if error >= 0.25:  # the packing was widened: the digits cannot be trusted
                notes.append("the refinement's packing was widened; its counts were not used")
                self._finish(notes)
                return
            values = metrics.unpack_counts(
                values, base=self._base, digits=self._digits, length=counts
            )
        elif self.integer_counts_ and error < 0.5:
            values = np.rint(values)
        values = np.maximum(values, 0.0)
        half = counts // 2
        sub_pos, sub_neg = values[:half].reshape(-1, r), values[half : 2 * half].reshape(-1, r)
        bins = np.asarray(self._open)
        at = bins * (self.n_bins // level)
        left = sorted(set(self._contributors) - set(record.contributors))
        tol = 0.5 if self.integer_counts_ else 4.0 * r * error + 1e-9 * float(self._pos.sum())
        if left or set(record.contributors) - set(self._contributors):
            notes.append(
                f"agencies {left} left between the evaluation's rounds; ROC AUC and its curve "
                f"come from {level} score bins (see roc_auc_tie_bound)"
            )
        elif (
            np.abs(sub_pos.sum(axis=1) - self._pos[at]).max() > tol
            or np.abs(sub_neg.sum(axis=1) - self._neg[at]).max() > tol
        ):
            notes.append(
                "the refined score histograms do not add up to the previous round's (an "
                f"agency's data changed between the rounds); ROC AUC comes from {level} "
                "score bins"
            )
        if notes:
            self._finish(notes)
            return
        self.refined_bins_.append(list(self._open))
        fine_step = self.n_bins // finer
        where = (bins[:, None] * r + np.arange(r)[None, :]) * fine_step
        self._pos[at], self._neg[at] = 0.0, 0.0
        self._pos[where], self._neg[where] = sub_pos, sub_neg
        self._level += 1
        self._open = self._mixed(where.reshape(-1) // fine_step, finer)
        if self._level == len(self.levels_) - 1 or not self._open:
            self._finish()

    def _finish(self, notes: Iterable[str] = ()) -> None:
        """Metrics and curves of the histograms known so far.

        A bin not split further keeps its weight in its first slot: pairs across bins keep
        their order and pairs inside one count as ties, so ROC AUC, its tie bound and the
        ROC curve are those of the histograms at the bins' own resolution.
        """
        assert self._summary is not None
        layout = metrics.summary_layout(self.levels_[0], self.calibration_bins)
        head = self._summary[: len(metrics.CLASSIFICATION_FIELDS)]
        vector = np.concatenate([head, self._pos, self._neg])
        values = metrics.classification_metrics_from_sum(vector, n_bins=self.n_bins)
        calibration = (
            self._summary[layout["calibration_weight"]],
            self._summary[layout["calibration_weight_y"]],
            self._summary[layout["calibration_weight_p"]],
        )
        curves = _curves(
            self._pos, self._neg, calibration, values["roc_auc"], self.calibration_bins
        )
        self.metrics_ = EvaluationMetrics(values, curves, notes)


def _curves(
    pos: npt.NDArray[np.float64],
    neg: npt.NDArray[np.float64],
    calibration: tuple[npt.ArrayLike, npt.ArrayLike, npt.ArrayLike],
    auc: float,
    calibration_bins: int,
) -> metrics.EvaluationCurves | None:
    """The released curves, or None when a class is absent (no ROC curve exists)."""
    if math.isnan(auc):
        return None
    return metrics.EvaluationCurves.from_sums(
        np.maximum(pos, 0.0),
        np.maximum(neg, 0.0),
        calibration,
        roc_auc=auc,
        calibration_bins=calibration_bins,
    )


@contextmanager
def evaluation_progress(
    enabled: bool, total: int | None, *, description: str = "federated evaluation"
) -> Iterator[Callable[[RoundRecord], None] | None]:
    """A rich progress bar for an evaluation's rounds (as ``Job.fit(progress=True)``).

    Parameters
    ----------
    enabled : bool
        False yields None (no display).
    total : int or None
        Rounds expected (``FederatedEvaluation.max_rounds``); the bar ends at the rounds
        actually run.

    Yields
    ------
    callable or None
        Pass it as ``progress=`` to :meth:`LocalFederation.run`.
    """
    if not enabled:
        yield None
        return
    from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn

    bar = Progress(
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        TextColumn("{task.completed}/{task.total} rounds"),
        TextColumn("{task.fields[status]}"),
        TimeElapsedColumn(),
    )
    task_id = bar.add_task(description, total=total, status="")

    def update(record: RoundRecord) -> None:
        bar.update(
            task_id,
            advance=1,
            description=record.label,
            status=f"{len(record.contributors)} agencies",
        )

    bar.start()
    try:
        yield update
    finally:
        done = bar.tasks[0].completed
        bar.update(task_id, total=done, completed=done)
        bar.stop()
