"""Federated evaluation: global metrics from secure sums, per-agency metrics stay local.

The model travels to agencies as declarative parameters (a GLM's family, coefficients and
preprocessing; see :data:`MODEL_PREDICTORS`), never as code or a pickle. Each agency scores
its own rows and returns the additive statistics of :mod:`fedcity.learn.metrics`; only the
sum is decrypted, so the federation learns global log loss, Brier score, accuracy and ROC AUC
(from summed score histograms) or RMSE, MAE, R² and Poisson deviance — and nothing per agency.
An agency that wants its own figures computes them locally with the returned estimator.

A classifier is evaluated in two rounds of the one vetted step ``"eval.model"``:

1. **summary**: the scalar sums, calibration sums over 10 probability bins and score
   histograms over ``coarse_bins`` (128) bins, at 52-bit precision;
2. **refinement**: for the coarse bins that hold both classes (only there does the order
   of pairs inside a bin matter for ROC AUC), the histograms at full ``n_bins`` (8,192)
   resolution. Bins holding one class only are not refined: where their weight sits inside
   the bin changes neither the AUC nor the ROC curve. When every weight is an integer (the
   summary counts rows with fractional weights), the counts are packed at the bits they
   need — from the released total weight and the number of agencies, so that the sum is
   exact — instead of 52 bits.

The metrics equal those of the one-round 8,192-bin histogram that earlier versions sent
(``coarse_bins=None`` still does), at a fraction of the ciphertexts. What is released is
less: the fine histogram only inside mixed coarse bins, plus the calibration sums.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Iterator, Mapping
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
    pred = predictor(model, data)
    if params["problem"] != "classification":
        return metrics.regression_statistics(
            data.y(), pred, data.sample_weight(), poisson=params["problem"] == "poisson"
        )
    stage = params.get("stage")
    if stage is None:  # one round, full histograms (earlier versions, coarse_bins=None)
        return metrics.classification_statistics(
            data.y(),
            pred,
            data.sample_weight(),
            threshold=params["threshold"],
            n_bins=params["n_bins"],
        )
    if stage == "summary":
        return metrics.classification_summary(
            data.y(),
            pred,
            data.sample_weight(),
            threshold=params["threshold"],
            n_bins=params["n_bins"],
            coarse_bins=params["coarse_bins"],
            calibration_bins=params["calibration_bins"],
        )
    if stage == "refine":
        return metrics.histogram_refinement(
            data.y(),
            pred,
            data.sample_weight(),
            bins=np.asarray(params["bins"]),
            n_bins=params["n_bins"],
            coarse_bins=params["coarse_bins"],
        )
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
    """Global metrics from secure sums: one round for regression, two for a classifier.

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
    coarse_bins : int or None, default metrics.DEFAULT_COARSE_BINS
        Histogram bins of the summary round; must divide ``n_bins``. ``None`` sends the
        full ``n_bins`` histograms in one round at 52 bits, as earlier versions did.
    calibration_bins : int, default metrics.DEFAULT_CALIBRATION_BINS
        Probability bins of the calibration curve.

    Attributes
    ----------
    metrics_ : EvaluationMetrics or None
        The global metrics once finished.
    refined_bins_ : list of int
        The coarse bins the refinement round asked for.
    integer_counts_ : bool
        Whether the refinement packed exact integer counts (every weight an integer).
    """

    def __init__(
        self,
        model: Mapping[str, Any],
        problem: str,
        *,
        dataset: str = "test",
        threshold: float = 0.5,
        n_bins: int = metrics.DEFAULT_N_BINS,
        coarse_bins: int | None = metrics.DEFAULT_COARSE_BINS,
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
        else:
            metrics.summary_vector_length(coarse_bins, calibration_bins)  # validates both
            metrics._check_levels(n_bins, coarse_bins)
        self.model = dict(model)
        self.problem = problem
        self.dataset = dataset
        self.threshold = threshold
        self.n_bins = n_bins
        self.coarse_bins = coarse_bins
        self.calibration_bins = calibration_bins
        self.metrics_: EvaluationMetrics | None = None
        self.refined_bins_: list[int] = []
        self.integer_counts_ = False
        self._summary: npt.NDArray[np.float64] | None = None
        self._summary_contributors: list[str] = []
        self._refine_clip = _EVAL_CLIP
        self._refine_bits = _FLOAT_BITS

    @property
    def max_rounds(self) -> int:
        """Two rounds for a classifier with refinement, otherwise one."""
        two = self.problem == "classification" and self.coarse_bins not in (None, self.n_bins)
        return 2 if two else 1

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
        """The summary round, then (if some coarse bin holds both classes) the refinement."""
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
            return TaskRequest(
                "eval.model",
                self._params(
                    stage="summary",
                    coarse_bins=self.coarse_bins,
                    calibration_bins=self.calibration_bins,
                ),
                metrics.summary_vector_length(self.coarse_bins, self.calibration_bins),
                clip=_EVAL_CLIP,
                precision_bits=_FLOAT_BITS,
                label=f"{label}: summary, {self.coarse_bins} score bins",
            )
        r = self.n_bins // self.coarse_bins
        return TaskRequest(
            "eval.model",
            self._params(stage="refine", coarse_bins=self.coarse_bins, bins=self.refined_bins_),
            2 * r * len(self.refined_bins_),
            clip=self._refine_clip,
            precision_bits=self._refine_bits,
            label=(
                f"{label}: refining {len(self.refined_bins_)} of {self.coarse_bins} score bins"
                + (f" ({self._refine_bits}-bit counts)" if self.integer_counts_ else "")
            ),
        )

    def update(
        self, request: TaskRequest, released: npt.NDArray[np.float64], record: RoundRecord
    ) -> None:
        """Turn the released sums into global metrics (or into the refinement request)."""
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
            self._after_refinement(released, record)

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
        assert self.coarse_bins is not None
        summary = np.array(released, dtype=np.float64)
        layout = metrics.summary_layout(self.coarse_bins, self.calibration_bins)
        k = max(len(record.contributors), 1)
        error = k * record.step / 2.0  # bound on each entry's quantization error
        fractional = float(summary[layout["fractional_weights"]][0])
        hist = slice(layout["positives"].start, layout["negatives"].stop)
        if error < 0.25 and round(fractional) == 0:
            self.integer_counts_ = True
            summary[hist] = np.rint(summary[hist])
        summary[hist] = np.maximum(summary[hist], 0.0)
        self._summary = summary
        self._summary_contributors = list(record.contributors)
        pos, neg = summary[layout["positives"]], summary[layout["negatives"]]
        tol = 0.5 if self.integer_counts_ else 2.0 * error
        mixed = np.flatnonzero((pos > tol) & (neg > tol))
        if self.coarse_bins == self.n_bins or len(mixed) == 0:
            self.integer_counts_ = False
            self._finish(self._expand(pos, neg))
            return
        self.refined_bins_ = [int(b) for b in mixed]
        total = float(summary[layout["weight"]][0])
        if self.integer_counts_:
            bound = round(total) + 1  # no agency holds more in one bin
            bits = (4 * k * bound).bit_length()  # sum error <= k·bound/(2^bits - 1) < 1/4
            if bits <= _FLOAT_BITS:
                self._refine_clip, self._refine_bits = float(bound), bits
                return
            self.integer_counts_ = False
        self._refine_clip = max(_EVAL_CLIP, 2.0 ** math.ceil(math.log2(max(total, 1.0) * 1.01)))
        self._refine_bits = _FLOAT_BITS

    def _after_refinement(self, released: npt.NDArray[np.float64], record: RoundRecord) -> None:
        assert self._summary is not None and self.coarse_bins is not None
        layout = metrics.summary_layout(self.coarse_bins, self.calibration_bins)
        pos_c, neg_c = self._summary[layout["positives"]], self._summary[layout["negatives"]]
        fine_pos, fine_neg = self._expand(pos_c, neg_c)
        r = self.n_bins // self.coarse_bins
        half = len(released) // 2
        sub_pos = np.array(released[:half]).reshape(-1, r)
        sub_neg = np.array(released[half:]).reshape(-1, r)
        error = max(len(record.contributors), 1) * record.step / 2.0
        if self.integer_counts_:
            if error >= 0.5:  # cannot happen unless the packing was widened
                self.integer_counts_ = False
            else:
                sub_pos, sub_neg = np.rint(sub_pos), np.rint(sub_neg)
        sub_pos, sub_neg = np.maximum(sub_pos, 0.0), np.maximum(sub_neg, 0.0)
        bins = np.asarray(self.refined_bins_)
        notes: list[str] = []
        left = sorted(set(self._summary_contributors) - set(record.contributors))
        tol = 0.5 if self.integer_counts_ else 4.0 * r * error + 1e-9 * float(pos_c.sum())
        if left or set(record.contributors) - set(self._summary_contributors):
            notes.append(
                f"agencies {left} left between the evaluation's rounds; ROC AUC and its curve "
                f"come from {self.coarse_bins} coarse score bins (see roc_auc_tie_bound)"
            )
        elif (
            np.abs(sub_pos.sum(axis=1) - pos_c[bins]).max() > tol
            or np.abs(sub_neg.sum(axis=1) - neg_c[bins]).max() > tol
        ):
            notes.append(
                "the refined score histograms do not add up to the summary's (an agency's "
                f"data changed between the rounds); ROC AUC comes from {self.coarse_bins} "
                "coarse score bins"
            )
        else:
            fine_pos.reshape(-1, r)[bins] = sub_pos
            fine_neg.reshape(-1, r)[bins] = sub_neg
        self._finish((fine_pos, fine_neg), notes)

    def _expand(
        self, pos: npt.NDArray[np.float64], neg: npt.NDArray[np.float64]
    ) -> tuple[npt.NDArray[np.float64], npt.NDArray[np.float64]]:
        """Coarse histograms as ``n_bins`` histograms, each bin's weight in its first sub-bin.

        Pairs across coarse bins keep their order and pairs inside one count as ties, so
        ROC AUC, its tie bound and the ROC curve are those of the coarse histograms.
        """
        assert self.coarse_bins is not None
        r = self.n_bins // self.coarse_bins
        fine_pos = np.zeros(self.n_bins)
        fine_neg = np.zeros(self.n_bins)
        fine_pos[::r], fine_neg[::r] = pos, neg
        return fine_pos, fine_neg

    def _finish(
        self,
        fine: tuple[npt.NDArray[np.float64], npt.NDArray[np.float64]],
        notes: Iterable[str] = (),
    ) -> None:
        assert self._summary is not None and self.coarse_bins is not None
        layout = metrics.summary_layout(self.coarse_bins, self.calibration_bins)
        head = self._summary[: len(metrics.CLASSIFICATION_FIELDS)]
        vector = np.concatenate([head, fine[0], fine[1]])
        values = metrics.classification_metrics_from_sum(vector, n_bins=self.n_bins)
        calibration = (
            self._summary[layout["calibration_weight"]],
            self._summary[layout["calibration_weight_y"]],
            self._summary[layout["calibration_weight_p"]],
        )
        curves = _curves(*fine, calibration, values["roc_auc"], self.calibration_bins)
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
