"""What a data scientist writes: a job description, handed to a federation, returning a model.

::

    from fedcity.learn import LocalFederation, LogisticRegressionJob

    with LocalFederation(agency_datasets, threshold=3) as federation:
        result = LogisticRegressionJob(C=1.0).fit(federation, progress=True)
    result.estimator_.predict_proba(test_frame)     # an ordinary scikit-learn Pipeline
    result.history_                                  # per-round loss, contributors, bytes, seconds

Every job first learns the global preprocessing (standardisation, one-hot levels) from secure
sums, then trains; the returned pipeline applies that preprocessing itself.
"""

from __future__ import annotations

import json
import math
import time
import warnings
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import numpy.typing as npt
from sklearn.base import BaseEstimator
from sklearn.exceptions import ConvergenceWarning
from sklearn.linear_model import LogisticRegression, PoissonRegressor, Ridge
from sklearn.pipeline import Pipeline

from fedcity.learn.algorithm import Algorithm, RoundRecord
from fedcity.learn.design import Preprocessing
from fedcity.learn.dp import NEEDS_PUBLIC_PREPROCESSING, DPPlan
from fedcity.learn.driver import Chain
from fedcity.learn.glm import FederatedGLM, GLMFamily, convergence_message
from fedcity.learn.stats import FederatedStatistics
from fedcity.privacy import DPConfig

if TYPE_CHECKING:
    from fedcity.data.dataset import FeatureSpec
    from fedcity.learn.federation import LocalFederation

__all__ = [
    "JOB_TYPES",
    "FederatedResult",
    "LogisticRegressionJob",
    "PoissonRegressionJob",
    "RidgeJob",
    "estimator_from_result_json",
    "job_from_spec",
    "make_preprocessor",
    "record_to_dict",
    "result_to_json",
]


@dataclass
class FederatedResult:
    """A trained model and how it was trained.

    Attributes
    ----------
    estimator_ : sklearn.pipeline.Pipeline
        ``FederatedPreprocessor`` followed by a fitted scikit-learn estimator.
    history_ : list of RoundRecord
        Every round: kind, global loss, contributors, decryptors, bytes, seconds per stage.
    preprocessing_ : Preprocessing
        The released global preprocessing.
    job_id_ : str
    seconds_ : float
        Wall time of the whole job in this process.
    privacy_ : tuple of (epsilon, delta) or None
        Differential privacy spent by the job, if it used DP: every release of the job (a DP
        job runs no exact preprocessing round), one agency's update as the unit, against any
        outside observer; ``privacy_report_`` adds the figures against a contributing agency
        and for one record.
    converged_ : bool or None
        GLM jobs: whether Newton met its stopping criterion before ``max_iter`` rounds
        (always False with differential privacy, which takes exactly ``max_iter`` steps).
        None for FedAvg jobs.
    n_iter_ : int or None
        GLM jobs: Newton rounds run, backtracking rounds included. None for FedAvg jobs.
    last_step_ : float or None
        GLM jobs: largest change of one standardised coefficient in the last Newton step.
    """

    estimator_: Pipeline
    history_: list[RoundRecord]
    preprocessing_: Preprocessing
    job_id_: str
    seconds_: float
    privacy_: tuple[float, float] | None = None
    privacy_report_: dict[str, Any] | None = None
    """With DP: ``(ε, δ)`` against outsiders, a contributing agency and for one record
    (:meth:`fedcity.learn.dp.DPPlan.report`)."""
    model_params_: dict[str, Any] = field(default_factory=dict)
    """Declarative description of the model (what agencies need to score it)."""
    problem_: str = "classification"
    """``"classification"``, ``"regression"`` or ``"poisson"``."""
    converged_: bool | None = None
    n_iter_: int | None = None
    last_step_: float | None = None

    @property
    def contributors_(self) -> list[list[str]]:
        """Who contributed to each round."""
        return [r.contributors for r in self.history_]

    @property
    def bytes_per_agency_(self) -> float:
        """Bytes each agency uploaded over the job, on average."""
        return float(sum(r.bytes_per_agency for r in self.history_))

    def plot(
        self,
        directory: str | Path,
        metrics: Mapping[str, float] | None = None,
        *,
        formats: Sequence[str] = ("png", "svg"),
    ) -> list[Path]:
        """Save the job's charts (see :func:`fedcity.plots.save_result_plots`).

        Parameters
        ----------
        directory : str or Path
            Created if missing.
        metrics : mapping, optional
            What :meth:`LocalFederation.evaluate` returned: adds ROC and calibration charts
            for a classifier.
        formats : sequence of {"png", "svg"}, default both

        Returns
        -------
        list of Path
            The files written: training curves, participation, coefficients (GLMs), ROC and
            calibration (with a classifier's evaluation).
        """
        from fedcity.plots import save_result_plots

        return save_result_plots(self, directory, metrics=metrics, formats=formats)


def make_preprocessor(pre: Preprocessing, spec: FeatureSpec) -> BaseEstimator:
    """A fitted :class:`~fedcity.data.preprocess.FederatedPreprocessor` for ``pre``.

    The released means and scales are installed exactly, so the pipeline transforms new
    rows precisely as the agencies transformed theirs during training.
    """
    from fedcity.data.preprocess import FederatedPreprocessor

    mean = np.asarray(pre.mean, dtype=np.float64)
    scale = np.asarray(pre.scale, dtype=np.float64)
    total = pre.total_weight
    kept = {col: kept_levels for col, _, kept_levels in pre.categorical}
    level_counts = {
        col: np.array([1 if lv in kept[col] else 0 for lv in vocab])
        for col, vocab, _ in pre.categorical
    }
    out = FederatedPreprocessor.from_statistics(
        spec, total, mean * total, (scale**2 + mean**2) * total, level_counts
    )
    out.mean_ = mean
    out.scale_ = scale
    out.var_ = np.where(scale == 1.0, out.var_, scale**2)
    return out


def _progress_callback(progress: bool, total: int | None) -> Any:
    if not progress:
        return None, None
    from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn

    bar = Progress(
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        TextColumn("{task.completed}/{task.total} rounds"),
        TextColumn("{task.fields[status]}"),
        TimeElapsedColumn(),
    )
    task_id = bar.add_task("federated job", total=total, status="")

    def update(record: RoundRecord) -> None:
        loss = "" if record.loss is None else f"loss {record.loss:.6f}"
        bar.update(
            task_id,
            advance=1,
            description=record.label,
            status=f"{len(record.contributors)} agencies {loss}",
        )

    return bar, update


class _Job:
    """Shared driver: statistics, then the model's algorithm, then the estimator."""

    def _algorithm(self, pre: Preprocessing) -> Algorithm:
        raise NotImplementedError

    def _estimator(self, algorithm: Algorithm, pre: Preprocessing) -> BaseEstimator:
        raise NotImplementedError

    def _dp(self, federation: LocalFederation) -> Any:
        return None

    def _model_params(self, algorithm: Algorithm, pre: Preprocessing) -> dict[str, Any]:
        return {}

    def _convergence(self, algorithm: Algorithm) -> dict[str, Any]:
        """``converged_``, ``n_iter_`` and ``last_step_`` of the result, where they apply."""
        return {}

    problem: str = "classification"

    def algorithm(self, spec: FeatureSpec) -> Chain:
        """The whole job as one algorithm: statistics, then the model's rounds.

        This is what a coordinator runs; :meth:`result` turns it into the fitted model.
        """

        def model_stage(stats: Algorithm) -> Algorithm:
            assert isinstance(stats, FederatedStatistics) and stats.result_ is not None
            return self._algorithm(stats.result_)

        return Chain(FederatedStatistics(spec, public=self._public_preprocessing()), model_stage)

    def _public_preprocessing(self) -> Preprocessing | None:
        """Public preprocessing given to the job (then no statistics round runs)."""
        return None

    def result(
        self,
        chain: Chain,
        spec: FeatureSpec,
        *,
        history: list[RoundRecord],
        job_id: str,
        seconds: float,
        dp: Any = None,
    ) -> FederatedResult:
        """Build the :class:`FederatedResult` of a finished :meth:`algorithm`."""
        stats, model_algorithm = chain.first, chain.second
        assert isinstance(stats, FederatedStatistics) and stats.result_ is not None
        assert model_algorithm is not None, "the job has not finished"
        pre = stats.result_
        model = self._estimator(model_algorithm, pre)
        pipeline = Pipeline([("preprocess", make_preprocessor(pre, spec)), ("model", model)])
        return FederatedResult(
            estimator_=pipeline,
            history_=history,
            preprocessing_=pre,
            job_id_=job_id,
            seconds_=seconds,
            privacy_=None if dp is None else dp.spent(),
            privacy_report_=None if dp is None else dp.report(),
            model_params_=self._model_params(model_algorithm, pre),
            problem_=self.problem,
            **self._convergence(model_algorithm),
        )

    def fit(self, federation: LocalFederation, *, progress: bool = False) -> FederatedResult:
        """Run the job on ``federation`` and return the fitted model and its history."""
        start = time.perf_counter()
        job_id = federation.new_job()
        chain = self.algorithm(federation.feature_spec)
        algo_rounds = getattr(self, "max_iter", None) or getattr(self, "rounds", None)
        bar, callback = _progress_callback(progress, (algo_rounds or 0) + 4)
        dp = self._dp(federation)
        try:
            if bar is not None:
                bar.start()
            history = federation.run(chain, job_id=job_id, dp=dp, progress=callback)
        finally:
            if bar is not None:
                done = bar.tasks[0].completed
                bar.update(bar.task_ids[0], total=done, completed=done)
                bar.stop()
        return self.result(
            chain,
            federation.feature_spec,
            history=history,
            job_id=job_id,
            seconds=time.perf_counter() - start,
            dp=dp,
        )


@dataclass
class _GLMJob(_Job):
    family: GLMFamily = field(init=False)
    max_iter: int = 25
    tol: float = 1e-10
    privacy: DPConfig | None = field(default=None, kw_only=True)
    preprocessing: Preprocessing | None = field(default=None, kw_only=True)
    """Public preprocessing (required with ``privacy``; see :func:`fedcity.learn.dp.
    public_preprocessing`): no exact statistics round runs."""

    def _dp(self, federation: LocalFederation) -> Any:
        if self.privacy is None:
            return None
        return DPPlan(
            self.privacy,
            n_contributors_min=federation.min_agencies,
            encrypted=bool(getattr(federation, "encrypted", True)),
        )

    def _public_preprocessing(self) -> Preprocessing | None:
        return self.preprocessing

    def _penalty(self) -> float:
        raise NotImplementedError

    def _validate(self) -> None:
        if not isinstance(self.max_iter, int) or self.max_iter < 1:
            raise ValueError(f"max_iter must be a positive integer, got {self.max_iter!r}")
        if not (isinstance(self.tol, float | int) and self.tol > 0):
            raise ValueError(f"tol must be positive, got {self.tol!r}")
        if isinstance(self.preprocessing, Mapping):
            try:
                self.preprocessing = Preprocessing.from_params(self.preprocessing)
            except (KeyError, TypeError, ValueError) as exc:
                raise ValueError(f"preprocessing: not a description ({exc!r})") from exc
        if self.preprocessing is not None and not isinstance(self.preprocessing, Preprocessing):
            raise ValueError(
                f"preprocessing must be a Preprocessing, got {type(self.preprocessing).__name__}"
            )
        if self.privacy is not None and self.preprocessing is None:
            raise ValueError(NEEDS_PUBLIC_PREPROCESSING)

    def _algorithm(self, pre: Preprocessing) -> Algorithm:
        self._validate()
        return FederatedGLM(
            self.family,
            pre,
            penalty=self._penalty(),
            max_iter=self.max_iter,
            tol=self.tol,
            noisy=self.privacy is not None,
        )

    @property
    def problem(self) -> str:  # type: ignore[override]
        """The evaluation problem of this family."""
        return {"logistic": "classification", "ridge": "regression"}.get(self.family, "poisson")

    def _model_params(self, algorithm: Algorithm, pre: Preprocessing) -> dict[str, Any]:
        assert isinstance(algorithm, FederatedGLM)
        return {
            "type": "glm",
            "family": self.family,
            "beta": algorithm.beta_.tolist(),
            "preprocessing": pre.to_params(),
        }

    def _hyper(self) -> dict[str, float]:
        raise NotImplementedError

    def _estimator(self, algorithm: Algorithm, pre: Preprocessing) -> BaseEstimator:
        assert isinstance(algorithm, FederatedGLM)
        return _glm_estimator(
            self.family, algorithm.beta_, pre.n_features, algorithm.n_iter_, self._hyper()
        )

    def _convergence(self, algorithm: Algorithm) -> dict[str, Any]:
        assert isinstance(algorithm, FederatedGLM)
        step = algorithm.last_step_
        return {
            "converged_": bool(algorithm.converged_),
            "n_iter_": int(algorithm.n_iter_),
            "last_step_": float(step) if math.isfinite(step) else None,
        }

    def fit(self, federation: LocalFederation, *, progress: bool = False) -> FederatedResult:
        """Run the job on ``federation`` and return the fitted model and its history.

        Warns
        -----
        sklearn.exceptions.ConvergenceWarning
            Newton reached ``max_iter`` rounds before its stopping criterion (not with
            differential privacy, which takes exactly ``max_iter`` steps by design).

        Raises
        ------
        JobFailed
            The federation could not finish the job, or the data cannot be fitted (a
            logistic regression whose labels are all 1 or all 0).
        """
        result = super().fit(federation, progress=progress)
        if result.converged_ is False and self.privacy is None:
            message = convergence_message(
                self.family, result.n_iter_ or 0, result.last_step_, float(self.tol)
            )
            warnings.warn(message, ConvergenceWarning, stacklevel=2)
        return result


@dataclass
class LogisticRegressionJob(_GLMJob):
    """A risk model: L2-penalised logistic regression, exact by federated Newton.

    Equals ``sklearn.linear_model.LogisticRegression(C=C)`` fitted on the pooled data.

    Parameters
    ----------
    C : float, default 1.0
        Inverse regularisation strength, as in scikit-learn.
    max_iter : int, default 25
    tol : float, default 1e-10
    """

    C: float = 1.0

    def __post_init__(self) -> None:
        self.family = "logistic"
        self._validate()
        if not (isinstance(self.C, float | int) and np.isfinite(self.C) and self.C > 0):
            raise ValueError(f"C must be a positive finite number, got {self.C!r}")

    def _penalty(self) -> float:
        return 1.0 / float(self.C)

    def _hyper(self) -> dict[str, float]:
        return {"C": float(self.C)}


@dataclass
class _AlphaGLMJob(_GLMJob):
    alpha: float = 1.0

    def __post_init__(self) -> None:
        self._validate()
        if not (
            isinstance(self.alpha, float | int) and np.isfinite(self.alpha) and self.alpha >= 0
        ):
            raise ValueError(f"alpha must be a finite number >= 0, got {self.alpha!r}")

    def _penalty(self) -> float:
        return float(self.alpha)

    def _hyper(self) -> dict[str, float]:
        return {"alpha": float(self.alpha)}


@dataclass
class RidgeJob(_AlphaGLMJob):
    """A demand model: ridge regression, exact in one federated round.

    Equals ``sklearn.linear_model.Ridge(alpha=alpha)`` fitted on the pooled data.
    """

    def __post_init__(self) -> None:
        self.family = "ridge"
        super().__post_init__()


@dataclass
class PoissonRegressionJob(_AlphaGLMJob):
    """A count-demand model: L2-penalised Poisson regression by federated Newton.

    Equals ``sklearn.linear_model.PoissonRegressor(alpha=alpha)`` on the pooled data.
    """

    def __post_init__(self) -> None:
        self.family = "poisson"
        super().__post_init__()


# -- jobs from declarative specifications (the coordinator's registry) --------------------------
JobBuilder = Callable[[dict[str, Any], "DPConfig | None"], _Job]


def _no_unknown(what: str, given: Mapping[str, Any], allowed: Sequence[str]) -> None:
    unknown = sorted(set(given) - set(allowed))
    if unknown:
        raise ValueError(f"{what}: unknown parameter(s) {unknown}; allowed: {sorted(allowed)}")


def _only_paillier(job_type: str, params: Mapping[str, Any]) -> None:
    """Refuse the opt-in masked aggregation for job types it does not support."""
    value = params.get("aggregation", "paillier")
    if value != "paillier":
        raise ValueError(
            f"{job_type}: aggregation {value!r} is offered only for fedavg jobs (FedAvg/"
            "FedProx); GLM, statistics, evaluation and analytics rounds use the default "
            "'paillier' (leave aggregation out)"
        )


def _glm_builder(job_type: str, cls: type[_GLMJob]) -> JobBuilder:
    allowed = [f.name for f in fields(cls) if f.init and f.name != "privacy"]

    def build(params: dict[str, Any], privacy: DPConfig | None) -> _Job:
        _only_paillier(job_type, params)
        _no_unknown(job_type, params, allowed)
        for key, value in params.items():
            if key == "preprocessing":
                if not isinstance(value, Mapping):
                    raise ValueError(
                        f"{job_type}: parameter 'preprocessing' must be an object (see "
                        "Preprocessing.to_params)"
                    )
                continue
            if isinstance(value, bool) or not isinstance(value, int | float):
                raise ValueError(f"{job_type}: parameter {key!r} must be a number, got {value!r}")
        job = cls(**params, privacy=privacy)
        job._validate()
        return job

    return build


def _fedavg_builder(params: dict[str, Any], privacy: DPConfig | None) -> _Job:
    from fedcity.learn.fedavg import ESTIMATORS, FedAvgJob, make_estimator

    if privacy is not None:
        raise ValueError("fedavg jobs do not support differential privacy; leave privacy empty")
    _no_unknown(
        "fedavg",
        params,
        [
            "estimator",
            "rounds",
            "local_epochs",
            "mu",
            "classes",
            "seed",
            "clip",
            "accuracy",
            "precision_bits",
            "aggregation",
        ],
    )
    spec = params.get("estimator")
    if not isinstance(spec, Mapping) or not isinstance(spec.get("class"), str):
        raise ValueError(
            'fedavg: parameter "estimator" must be {"class": <one of '
            f'{list(ESTIMATORS)}>, "params": {{...}}}}, got {spec!r}'
        )
    _no_unknown("fedavg estimator", spec, ["class", "params"])
    estimator = make_estimator(spec["class"], spec.get("params", {}))
    rest = {k: v for k, v in params.items() if k != "estimator"}
    try:
        return FedAvgJob(estimator, **rest)
    except TypeError as exc:  # e.g. classes that are not a list
        raise ValueError(f"fedavg: {exc}") from exc


JOB_TYPES: dict[str, JobBuilder] = {
    "logistic_regression": _glm_builder("logistic_regression", LogisticRegressionJob),
    "ridge": _glm_builder("ridge", RidgeJob),
    "poisson_regression": _glm_builder("poisson_regression", PoissonRegressionJob),
    "fedavg": _fedavg_builder,
}
"""Job types a coordinator accepts, each with the builder of its job from JSON parameters."""


STATISTICS_STEPS = ("stats.counts", "stats.mean", "stats.variance")
"""The preprocessing statistics every training job starts with."""


def job_steps(job: Any, *, evaluate: bool = False) -> tuple[str, ...]:
    """The vetted local steps (task kinds) a training job will ask agencies to run.

    Parameters
    ----------
    job : job
        A job from :func:`job_from_spec`.
    evaluate : bool, default False
        Whether a federated evaluation (``eval.model``) follows training.
    """
    from fedcity.learn.fedavg import _CLASSIFIERS, FedAvgJob, _describe

    model: tuple[str, ...]
    if isinstance(job, FedAvgJob):
        name, _ = _describe(job.estimator)
        counts = name in _CLASSIFIERS and job.classes is None
        model = (("fedavg.label_counts",) if counts else ()) + ("fedavg.local",)
    else:
        model = ("glm.newton",)
    return STATISTICS_STEPS + model + (("eval.model",) if evaluate else ())


def job_from_spec(
    job_type: str, params: Mapping[str, Any], privacy: Mapping[str, Any] | None
) -> _Job:
    """Build a job from its declarative description (what a ``JobSpec`` carries).

    Parameters
    ----------
    job_type : str
        A key of :data:`JOB_TYPES`.
    params : mapping
        The job class's parameters as JSON values, e.g. ``{"C": 0.5}``; for ``"fedavg"``,
        ``{"estimator": {"class": "MLPClassifier", "params": {...}}, "rounds": 20,
        "local_epochs": 1, "mu": 0.0, "classes": [0, 1], "seed": 0}``.
    privacy : mapping or None
        :class:`~fedcity.privacy.DPConfig` keywords (GLM jobs only); None or empty: no DP.

    Returns
    -------
    job
        A :class:`LogisticRegressionJob`, :class:`RidgeJob`, :class:`PoissonRegressionJob` or
        :class:`~fedcity.learn.fedavg.FedAvgJob`.

    Raises
    ------
    ValueError
        An unknown job type, unknown or invalid parameters (the message names them).
    """
    builder = JOB_TYPES.get(job_type)
    if builder is None:
        raise ValueError(f"unknown job type {job_type!r}; known types: {sorted(JOB_TYPES)}")
    if not isinstance(params, Mapping):
        raise ValueError(f"{job_type}: parameters must be a JSON object")
    config = None
    if privacy:
        allowed = [f.name for f in fields(DPConfig) if f.init]
        _no_unknown("privacy", privacy, allowed)
        try:
            config = DPConfig(**privacy)
        except TypeError as exc:
            raise ValueError(f"privacy: {exc}") from exc
    return builder(dict(params), config)


def _json_safe(value: Any) -> Any:
    """Plain JSON data: non-finite floats become None, numpy scalars and tuples plain."""
    if isinstance(value, dict):
        return {str(k): _json_safe(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_json_safe(v) for v in value]
    if isinstance(value, np.ndarray):
        return _json_safe(value.tolist())
    if isinstance(value, bool | np.bool_):
        return bool(value)
    if isinstance(value, int | np.integer):
        return int(value)
    if isinstance(value, float | np.floating):
        return float(value) if np.isfinite(value) else None
    return value


def record_to_dict(record: RoundRecord) -> dict[str, Any]:
    """A round record as JSON-safe data."""
    out: dict[str, Any] = _json_safe(asdict(record))
    return out


RESULT_FORMAT = "fedcity.result"


def result_to_json(
    result: FederatedResult,
    metrics: Mapping[str, float] | None = None,
    *,
    job: Mapping[str, Any] | None = None,
) -> str:
    """The declarative, JSON form of a job's result (never a pickle).

    Parameters
    ----------
    result : FederatedResult
    metrics : mapping, optional
        Global evaluation metrics, if the job was evaluated.
    job : mapping, optional
        ``{"job_type", "params", "privacy"}`` the job was submitted with.

    Returns
    -------
    str
        ``{"format": "fedcity.result", "version": 1, "job_id", "job", "problem", "model",
        "preprocessing", "history", "metrics", "privacy", "seconds", "bytes_per_agency",
        "converged", "n_iter", "last_step"}`` (the last three null for FedAvg jobs), plus
        ``"curves"`` (ROC and calibration) when ``metrics`` is a classifier's
        :class:`~fedcity.learn.evaluation.EvaluationMetrics`;
        :func:`estimator_from_result_json` rebuilds the pipeline from it.
    """
    privacy = None
    if result.privacy_ is not None:
        privacy = {**(result.privacy_report_ or {})}
        privacy.update(epsilon=result.privacy_[0], delta=result.privacy_[1])
    data = {
        "format": RESULT_FORMAT,
        "version": 1,
        "job_id": result.job_id_,
        "job": None if job is None else dict(job),
        "problem": result.problem_,
        "model": result.model_params_,
        "preprocessing": result.preprocessing_.to_params(),
        "history": [asdict(r) for r in result.history_],
        "metrics": None if metrics is None else dict(metrics),
        "privacy": privacy,
        "seconds": result.seconds_,
        "bytes_per_agency": result.bytes_per_agency_,
        "converged": result.converged_,
        "n_iter": result.n_iter_,
        "last_step": result.last_step_,
    }
    curves = getattr(metrics, "curves", None)
    if curves is not None:  # ROC and calibration curves of a classifier's evaluation
        data["curves"] = curves.to_dict()
    return json.dumps(_json_safe(data), sort_keys=True, allow_nan=False)


def _glm_estimator(
    family: str,
    beta: npt.NDArray[np.float64],
    n_features: int,
    n_iter: int,
    hyper: Mapping[str, Any],
) -> Any:
    """A fitted scikit-learn GLM holding federated coefficients ``beta`` (intercept first).

    A fit on a two-row placeholder sets scikit-learn's private fitted state (loss objects,
    classes); the federated coefficients then replace the placeholder's.
    """
    beta = np.asarray(beta, dtype=np.float64)
    if beta.shape != (n_features + 1,) or not np.isfinite(beta).all():
        raise ValueError(f"model beta must be {n_features + 1} finite numbers")
    est: Any
    if family == "logistic":
        est, y = LogisticRegression(C=float(hyper.get("C", 1.0))), [0.0, 1.0]
    elif family == "ridge":
        est, y = Ridge(alpha=float(hyper.get("alpha", 1.0))), [0.0, 1.0]
    elif family == "poisson":
        est, y = PoissonRegressor(alpha=float(hyper.get("alpha", 1.0))), [1.0, 1.0]
    else:
        raise ValueError(f"unknown GLM family {family!r}")
    est.fit(np.zeros((2, n_features)), np.asarray(y))
    logistic = family == "logistic"
    est.coef_ = beta[1:].reshape(1, -1).copy() if logistic else beta[1:].copy()
    est.intercept_ = np.array([beta[0]]) if logistic else float(beta[0])
    est.n_iter_ = np.array([n_iter]) if logistic else n_iter
    return est


def estimator_from_result_json(text: str, feature_spec: FeatureSpec) -> Pipeline:
    """Rebuild the scikit-learn pipeline of a result written by :func:`result_to_json`.

    Parameters
    ----------
    text : str
        The result JSON (``JobResult.result_json``).
    feature_spec : FeatureSpec
        The columns of the job's dataset (the pipeline's input).

    Returns
    -------
    sklearn.pipeline.Pipeline
        ``("preprocess", FederatedPreprocessor)`` then ``("model", estimator)``, predicting
        exactly like the pipeline the coordinator's job built.

    Raises
    ------
    ValueError
        Not a fedcity result, or a model description that does not fit together.

    Warns
    -----
    sklearn.exceptions.ConvergenceWarning
        The result is a GLM whose Newton iterations stopped at ``max_iter`` without
        converging (``"converged": false``; not for jobs with differential privacy).
    """
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        raise ValueError(f"result is not valid JSON: {exc}") from exc
    if not isinstance(data, dict) or data.get("format") != RESULT_FORMAT:
        raise ValueError(f"not a fedcity result (format must be {RESULT_FORMAT!r})")
    model = data.get("model")
    if not isinstance(model, dict) or "preprocessing" not in model:
        raise ValueError("the result holds no model description")
    try:
        pre = Preprocessing.from_params(model["preprocessing"])
        if model.get("type") == "glm":
            job = data.get("job") or {}
            hyper = job.get("params") or {}
            n_iter = data.get("n_iter")
            if isinstance(n_iter, bool) or not isinstance(n_iter, int):  # older results
                n_iter = sum(1 for r in data.get("history", []) if r.get("kind") == "glm.newton")
            beta = np.asarray(model.get("beta"), dtype=np.float64)
            family = model.get("family", "")
            est = _glm_estimator(family, beta, pre.n_features, n_iter, hyper)
            if data.get("converged") is False and not data.get("privacy"):
                step = data.get("last_step")
                tol = hyper.get("tol", _GLMJob.tol)
                message = convergence_message(
                    str(family),
                    n_iter,
                    float(step) if isinstance(step, int | float) else None,
                    float(tol) if isinstance(tol, int | float) else _GLMJob.tol,
                )
                warnings.warn(message, ConvergenceWarning, stacklevel=2)
        elif model.get("type") == "fedavg":
            from fedcity.learn.fedavg import estimator_from_model_params

            est = estimator_from_model_params(model)
        else:
            raise ValueError(f"unknown model type {model.get('type')!r}")
        preprocess = make_preprocessor(pre, feature_spec)
    except (KeyError, TypeError) as exc:
        raise ValueError(f"invalid model description: {exc!r}") from exc
    return Pipeline([("preprocess", preprocess), ("model", est)])
