"""Federated evaluation: global metrics from secure sums, per-agency metrics stay local.

The model travels to agencies as declarative parameters (a GLM's family, coefficients and
preprocessing; see :data:`MODEL_PREDICTORS`), never as code or a pickle. Each agency scores
its own rows and returns the additive statistics of :mod:`fedcity.learn.metrics`; only the
sum is decrypted, so the federation learns global log loss, Brier score, accuracy and ROC AUC
(from summed score histograms) or RMSE, MAE, R² and Poisson deviance — and nothing per agency.
An agency that wants its own figures computes them locally with the returned estimator.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
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

__all__ = ["MODEL_PREDICTORS", "FederatedEvaluation", "model_predictor"]

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


@local_step("eval.model")
def _evaluate(params: Mapping[str, Any], data: AgencyDataset) -> npt.NDArray[np.float64]:
    model = params["model"]
    predictor = MODEL_PREDICTORS.get(model.get("type", ""))
    if predictor is None:
        raise ValueError(f"model type {model.get('type')!r} is not vetted for evaluation")
    pred = predictor(model, data)
    if params["problem"] == "classification":
        return metrics.classification_statistics(
            data.y(),
            pred,
            data.sample_weight(),
            threshold=params["threshold"],
            n_bins=params["n_bins"],
        )
    return metrics.regression_statistics(
        data.y(), pred, data.sample_weight(), poisson=params["problem"] == "poisson"
    )


class FederatedEvaluation(Algorithm):
    """One secure sum of metric statistics.

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
        Score histogram bins for ROC AUC.
    """

    def __init__(
        self,
        model: Mapping[str, Any],
        problem: str,
        *,
        dataset: str = "test",
        threshold: float = 0.5,
        n_bins: int = metrics.DEFAULT_N_BINS,
    ) -> None:
        if problem not in ("classification", "regression", "poisson"):
            raise ValueError(f"problem must be classification, regression or poisson: {problem!r}")
        if not 0.0 < threshold < 1.0:
            raise ValueError(f"threshold must lie in (0, 1), got {threshold}")
        self.model = dict(model)
        self.problem = problem
        self.dataset = dataset
        self.threshold = threshold
        self.n_bins = n_bins
        self.metrics_: dict[str, float] | None = None

    @property
    def max_rounds(self) -> int:
        """One round."""
        return 1

    def next_request(self) -> TaskRequest | None:
        """Ask every agency for its metric statistics, once."""
        if self.metrics_ is not None:
            return None
        length = (
            metrics.classification_vector_length(self.n_bins)
            if self.problem == "classification"
            else len(metrics.REGRESSION_FIELDS)
        )
        return TaskRequest(
            "eval.model",
            {
                "model": self.model,
                "problem": self.problem,
                "dataset": self.dataset,
                "threshold": self.threshold,
                "n_bins": self.n_bins,
            },
            length,
            clip=float(2**20),
            precision_bits=52,
            label=f"evaluation on {self.dataset!r}",
        )

    def update(
        self, request: TaskRequest, released: npt.NDArray[np.float64], record: RoundRecord
    ) -> None:
        """Turn the released sums into global metrics."""
        if self.problem == "classification":
            self.metrics_ = metrics.classification_metrics_from_sum(released, n_bins=self.n_bins)
        else:
            self.metrics_ = metrics.regression_metrics_from_sum(
                released, poisson=self.problem == "poisson"
            )
