"""Federated averaging (FedAvg) and FedProx for scikit-learn's iterative estimators.

Newton (:mod:`fedcity.learn.glm`) needs the loss to be a sum of per-agency gradients and
Hessians of a convex model; neural networks and stochastic linear models do not fit that
mould. For them every round is one FedAvg step:

1. The coordinator sends the global parameters θ (every weight and intercept, flattened) in
   the task parameters of the vetted local step ``"fedavg.local"``, together with the
   estimator's class *name* and JSON-safe hyperparameters (no code or pickles travel), the
   released preprocessing and the public total weight W. θ travels compactly as
   ``"coefs_f8"``, the base64 text of its little-endian float64 bytes (about 10.7 bytes per
   parameter against about 21 as JSON numbers); agencies also accept a JSON list of numbers
   as ``"coefs"``, the form :meth:`FederatedAveraging.model_params` uses.
2. Agency *i* builds its design matrix, instantiates the estimator, installs θ, evaluates a
   training-loss proxy at θ, trains ``local_epochs`` passes with ``partial_fit`` and returns,
   packed and encrypted,

   ``[(n_i/W)·θ_i, (n_i/W)·loss_i, (n_i/W)·drift_i, n_i/W]``

   where ``n_i`` is its sum of sample weights and ``drift_i`` the mean squared change of its
   parameters during the round.
3. Only the sum over contributors is decrypted. The new global model is
   ``Σ n_i θ_i / Σ n_i`` (the first block divided by the last slot), which stays the
   sample-weighted average of the contributors' models when agencies drop out.

Sample weights
    Both ``SGD*`` and (from scikit-learn 1.7) ``MLP*`` estimators take ``sample_weight`` in
    ``partial_fit``; the weights are passed through and ``n_i = Σ w``. With an older
    scikit-learn whose MLP ``partial_fit`` has no ``sample_weight``, an agency with unequal
    weights trains each epoch on a weighted bootstrap of its rows (``n`` draws, probability
    ∝ w), which has the weighted loss as its expectation.

Classes
    Classifiers need every agency to know the full label set. A job either declares
    ``classes`` or runs one extra secure sum first (``"fedavg.label_counts"``): every agency
    counts its labels equal to 0, 1, ..., 63 plus the labels that are none of these; the
    classes are the integers with a positive global count. Like the category census of
    :mod:`fedcity.learn.stats` this releases global class counts, never which agency holds
    which label.

FedProx
    FedProx adds ``μ/2 ‖w − w_g‖²`` to every local objective. Here it is applied in
    proximal-gradient form: after each local optimizer step the agency applies the proximal
    operator of that term, ``w ← (w + η·μ·w_g) / (1 + η·μ)``, with η the step size in
    effect for that step. For MLPs the step is one mini-batch; with ``solver="sgd"`` η is the
    optimizer's current learning rate, with ``solver="adam"`` the operator is taken in Adam's
    diagonal metric, η = ``learning_rate_init / (√v̂ + ε)`` per coordinate (the step Adam
    actually applies to that coordinate). ``SGD*`` estimators update once per sample;
    ``partial_fit`` runs on chunks of 32 rows and the chunk's per-sample operators are
    applied together, ``w ← w_g + (w − w_g)·Π_t 1/(1 + η_t·μ)``, with η_t the estimator's
    learning-rate schedule (``constant``, ``optimal``, ``invscaling``; ``eta0`` for
    ``adaptive``, ``pa1``, ``pa2``). μ = 0 is plain FedAvg. Applying the operator after
    every step rather than once per epoch keeps it the proximal-gradient form of the FedProx
    objective (mean loss + μ/2 ‖w − w_g‖²); the pull per step is η·μ, so for ``SGD*`` μ is on
    the scale of the estimator's ``alpha``.

Determinism
    Local shuffling (and the ``random_state`` an agency gives its estimator) is seeded from
    the job's seed, the round number and a hash of the agency's name, so a round that the
    federation reruns with a wider packing bound reproduces the same contribution. The
    estimator's own ``random_state`` is ignored during training; the initial MLP weights are
    Glorot-uniform (as scikit-learn draws them) from the job's seed, linear models start at 0.
    A learning-rate schedule that depends on the number of samples seen (``invscaling``,
    ``optimal``) continues across rounds as if the agency had trained without interruption.

What agencies check
    The local step instantiates only the four classes above, by name; hyperparameters must
    be names the class declares with plain JSON values; FedAvg-incompatible settings
    (``early_stopping``, ``solver="lbfgs"``, ``average``, ``class_weight``) are refused; the
    parameter shapes implied by the hyperparameters, the released feature count and the
    classes must equal the shapes the task carries (checked before anything is built, and
    capped at 5 million parameters); every label must be one of the job's classes.

Scoring
    :meth:`FederatedAveraging.model_params` describes the global model declaratively
    (``"type": "fedavg"``); the model predictor registered here lets
    :meth:`~fedcity.learn.federation.LocalFederation.evaluate` score it at the agencies.

Loss proxy
    ``record.loss`` of round *r* is the weighted mean over all contributing rows of the
    loss of the global model the round *starts* from: log loss for ``MLPClassifier`` and
    ``SGDClassifier(loss="log_loss")``, hinge loss of the decision function for other
    ``SGDClassifier`` losses, squared error for regressors. It costs one prediction pass per
    agency and no extra round; values are capped at 1e6 so a diverging model cannot force the
    packing wider than the parameters need.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import inspect
import itertools
import math
import warnings
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

import numpy as np
import numpy.typing as npt
from sklearn.base import BaseEstimator
from sklearn.exceptions import ConvergenceWarning
from sklearn.linear_model import SGDClassifier, SGDRegressor
from sklearn.metrics import hinge_loss, log_loss
from sklearn.neural_network import MLPClassifier, MLPRegressor

from fedcity.core.precision import (
    MAX_PRECISION_BITS,
    MAX_UNIT_BITS,
    MIN_PRECISION_BITS,
    SECAGG_PLUS_ACCURACY,
    ExactIntegers,
    check_accuracy,
    precision_for,
)
from fedcity.core.tasks import TaskRequest, local_step
from fedcity.learn.algorithm import Algorithm, RoundRecord
from fedcity.learn.design import Preprocessing, design_matrix
from fedcity.learn.evaluation import model_predictor
from fedcity.learn.jobs import _Job

if TYPE_CHECKING:
    from fedcity.data.dataset import AgencyDataset

__all__ = [
    "ESTIMATORS",
    "FedAvgJob",
    "FederatedAveraging",
    "estimator_from_model_params",
    "make_estimator",
]

FloatArray = npt.NDArray[np.float64]

_CLASSES: dict[str, Any] = {
    "MLPClassifier": MLPClassifier,
    "MLPRegressor": MLPRegressor,
    "SGDClassifier": SGDClassifier,
    "SGDRegressor": SGDRegressor,
}
ESTIMATORS: tuple[str, ...] = tuple(_CLASSES)
"""Names of the estimator classes FedAvg can train; nothing else is ever instantiated."""

_CLASSIFIERS = frozenset({"MLPClassifier", "SGDClassifier"})
_MLPS = frozenset({"MLPClassifier", "MLPRegressor"})

MAX_LABEL_CLASSES = 64
"""Labels 0 .. 63 are counted when a classifier job does not declare its classes."""

_MAX_PARAMETERS = 5_000_000
_MAX_LOCAL_EPOCHS = 10_000
_SGD_PROX_CHUNK = 32
_LOSS_CAP = 1e6
_COUNT_SUMMANDS = (1 << MAX_UNIT_BITS) - 1  # agencies a label count is packed for


# --------------------------------------------------------------------------------------------
# validation shared by the coordinator and the agencies


def _estimator_class(name: object) -> Any:
    """The scikit-learn class called ``name``; anything else is refused."""
    if not isinstance(name, str) or name not in _CLASSES:
        raise ValueError(
            f"FedAvg trains only the scikit-learn estimators {list(ESTIMATORS)}; "
            f"refusing estimator {name!r}"
        )
    return _CLASSES[name]


def _plain_value(name: str, key: str, value: object) -> Any:
    """A hyperparameter as plain JSON-safe Python, or ValueError."""
    if value is None or isinstance(value, bool | str):
        return value
    if isinstance(value, np.bool_):
        return bool(value)
    if isinstance(value, int | np.integer):
        return int(value)
    if isinstance(value, float | np.floating):
        number = float(value)
        if not math.isfinite(number):
            raise ValueError(f"{name} hyperparameter {key}={value!r} must be finite")
        return number
    if isinstance(value, tuple | list) and all(
        isinstance(v, int | np.integer) and not isinstance(v, bool | np.bool_) for v in value
    ):
        return tuple(int(v) for v in value)
    raise ValueError(
        f"{name} hyperparameter {key}={value!r} cannot be sent to agencies: only numbers, "
        "strings, booleans, None and tuples of ints travel (no objects, callables or dicts)"
    )


def _check_hyperparameters(name: str, hyperparameters: object) -> dict[str, Any]:
    """Validate hyperparameters of estimator ``name``; lists become tuples.

    Raises
    ------
    ValueError
        Unknown names, values that are not plain JSON data, or settings FedAvg cannot honour.
    """
    cls = _estimator_class(name)
    if not isinstance(hyperparameters, Mapping):
        raise ValueError(f"{name} hyperparameters must be a mapping, got {hyperparameters!r}")
    allowed = set(cls._get_param_names())
    out: dict[str, Any] = {}
    for key, value in hyperparameters.items():
        if key not in allowed:
            raise ValueError(f"{name} has no hyperparameter {key!r}")
        out[key] = _plain_value(name, key, value)
    effective = {**cls().get_params(deep=False), **out}
    if effective.get("early_stopping"):
        raise ValueError(
            f"{name}(early_stopping=True) is not supported: local training runs a fixed number "
            "of epochs with partial_fit; leave early_stopping=False"
        )
    if name in _MLPS and effective.get("solver") not in ("adam", "sgd"):
        raise ValueError(
            f"{name}(solver={effective.get('solver')!r}) has no partial_fit; "
            "use solver='adam' or solver='sgd'"
        )
    if name not in _MLPS:
        if effective.get("average"):
            raise ValueError(
                f"{name}(average={effective.get('average')!r}) is not supported: averaged SGD "
                "keeps hidden state that the global parameters cannot carry; use average=False"
            )
        if effective.get("class_weight") is not None:
            raise ValueError(
                f"{name}(class_weight=...) is not supported; use sample weights instead"
            )
    return out


def _check_classes(name: str, classes: object) -> tuple[float | int, ...] | None:
    """Sorted distinct finite numeric classes (classifiers), None (regressors)."""
    if name not in _CLASSIFIERS:
        if classes is not None:
            raise ValueError(f"classes only applies to classifiers, not to {name}")
        return None
    if classes is None:
        return None
    if isinstance(classes, str | bytes) or not isinstance(classes, Sequence | np.ndarray):
        raise ValueError(f"classes must be a sequence of numbers, got {classes!r}")
    values: list[float | int] = []
    for c in list(classes):
        if isinstance(c, bool | np.bool_) or not isinstance(
            c, int | float | np.integer | np.floating
        ):
            raise ValueError(f"classes must be numbers (fedcity labels are numeric), got {c!r}")
        if not math.isfinite(float(c)):
            raise ValueError(f"classes must be finite, got {c!r}")
        values.append(int(c) if isinstance(c, int | np.integer) else float(c))
    if len(set(values)) != len(values):
        raise ValueError(f"classes repeat a value: {values}")
    if len(values) < 2:
        raise ValueError(f"a classifier needs at least two classes, got {values}")
    return tuple(sorted(values))


def _check_training(rounds: object, local_epochs: object, mu: object, seed: object) -> None:
    if isinstance(rounds, bool) or not isinstance(rounds, int) or rounds < 1:
        raise ValueError(f"rounds must be a positive integer, got {rounds!r}")
    if (
        isinstance(local_epochs, bool)
        or not isinstance(local_epochs, int)
        or not 1 <= local_epochs <= _MAX_LOCAL_EPOCHS
    ):
        raise ValueError(
            f"local_epochs must be an integer in [1, {_MAX_LOCAL_EPOCHS}], got {local_epochs!r}"
        )
    if isinstance(mu, bool) or not isinstance(mu, int | float) or not math.isfinite(mu) or mu < 0:
        raise ValueError(f"mu must be a finite number >= 0 (0 is FedAvg), got {mu!r}")
    if isinstance(seed, bool) or not isinstance(seed, int) or seed < 0:
        raise ValueError(f"seed must be a non-negative integer, got {seed!r}")


def _check_precision(clip: object, accuracy: object, precision_bits: object) -> float | None:
    """Validate the packing parameters; the accuracy in force (None: fixed precision)."""
    if (
        isinstance(clip, bool)
        or not isinstance(clip, int | float)
        or not math.isfinite(clip)
        or clip <= 0
    ):
        raise ValueError(f"clip must be positive and finite, got {clip!r}")
    if precision_bits is None:
        return check_accuracy(SECAGG_PLUS_ACCURACY if accuracy is None else accuracy, clip)
    if accuracy is not None:
        raise ValueError(
            f"give accuracy ({accuracy!r}) or precision_bits ({precision_bits!r}), not both: "
            "the accuracy chooses the precision"
        )
    if isinstance(precision_bits, bool) or not isinstance(precision_bits, int):
        raise ValueError(f"precision_bits must be an integer, got {precision_bits!r}")
    if not MIN_PRECISION_BITS <= precision_bits <= MAX_PRECISION_BITS:
        raise ValueError(
            f"precision_bits must lie in [{MIN_PRECISION_BITS}, {MAX_PRECISION_BITS}], "
            f"got {precision_bits}"
        )
    return None


def _describe(estimator: object) -> tuple[str, dict[str, Any]]:
    """Class name and JSON-safe hyperparameters of an estimator instance."""
    if isinstance(estimator, type):
        raise ValueError(
            f"pass an estimator instance such as {estimator.__name__}(), not the class"
        )
    cls = type(estimator)
    name = cls.__name__
    if _CLASSES.get(name) is not cls:
        raise ValueError(
            f"FedAvg trains only the scikit-learn estimators {list(ESTIMATORS)}; got "
            f"{cls.__module__}.{cls.__qualname__}"
        )
    params = estimator.get_params(deep=False)  # type: ignore[attr-defined]
    hyper = _check_hyperparameters(name, params)
    classes = (0, 1) if name in _CLASSIFIERS else None
    _check_size(_expected_shapes(name, hyper, 1, 2))
    try:  # a dry run on a synthetic sample catches invalid values before any round runs
        _initialise(_make_estimator(name, hyper), name, 1, classes)
    except (ValueError, TypeError) as exc:
        raise ValueError(f"{name} cannot be trained with these hyperparameters: {exc}") from exc
    return name, hyper


def _check_size(shapes: Sequence[tuple[int, ...]]) -> None:
    if sum(math.prod(s) for s in shapes) > _MAX_PARAMETERS:
        raise ValueError(f"models with more than {_MAX_PARAMETERS} parameters are refused")


# --------------------------------------------------------------------------------------------
# estimator plumbing


def _make_estimator(name: str, hyperparameters: Mapping[str, Any], **overrides: Any) -> Any:
    return _estimator_class(name)(**{**hyperparameters, **overrides})


def _initialise(est: Any, name: str, n_features: int, classes: Any) -> None:
    """Give ``est`` its fitted structure with one ``partial_fit`` on a synthetic sample.

    The sample is all-zero features with one row per class (two rows of label 0 for a
    regressor), so no agency row is involved; the parameters are overwritten afterwards.
    """
    saved = {k: getattr(est, k) for k in ("verbose", "batch_size") if hasattr(est, k)}
    est.set_params(verbose=False, **({"batch_size": "auto"} if "batch_size" in saved else {}))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        if name in _CLASSIFIERS:
            labels = np.asarray(classes)
            est.partial_fit(np.zeros((len(labels), n_features)), labels, classes=labels)
        else:
            est.partial_fit(np.zeros((2, n_features)), np.zeros(2))
    est.set_params(**saved)


def _parameter_arrays(est: Any) -> list[FloatArray]:
    if hasattr(est, "coefs_"):
        return [*est.coefs_, *est.intercepts_]
    return [est.coef_, est.intercept_]


def _set_parameter_arrays(est: Any, arrays: Sequence[FloatArray]) -> None:
    fresh = [np.array(a, dtype=np.float64, order="C") for a in arrays]
    if hasattr(est, "coefs_"):
        layers = len(est.coefs_)
        est.coefs_ = fresh[:layers]
        est.intercepts_ = fresh[layers:]
    else:
        est.coef_, est.intercept_ = fresh


def _shapes(est: Any) -> list[tuple[int, ...]]:
    return [tuple(int(d) for d in a.shape) for a in _parameter_arrays(est)]


def _flatten(arrays: Sequence[FloatArray]) -> FloatArray:
    return np.concatenate([np.ravel(a) for a in arrays]).astype(np.float64)


def _unflatten(vector: FloatArray, shapes: Sequence[tuple[int, ...]]) -> list[FloatArray]:
    out: list[FloatArray] = []
    pos = 0
    for shape in shapes:
        size = math.prod(shape)
        out.append(vector[pos : pos + size].reshape(shape).copy())
        pos += size
    return out


def _reset_state(est: Any, samples_seen: float) -> None:
    """Forget optimizer state of the synthetic initialisation; continue the LR schedule."""
    est.n_iter_ = 0
    if hasattr(est, "coefs_"):
        if hasattr(est, "_optimizer"):
            del est._optimizer  # a fresh optimizer is built at the next partial_fit
        est.t_ = int(samples_seen)
        est.loss_curve_ = []
        est._no_improvement_count = 0
        est.best_loss_ = np.inf
    else:
        est.t_ = 1.0 + float(samples_seen)


def _glorot(shapes: Sequence[tuple[int, ...]], activation: str, seed: int) -> list[FloatArray]:
    """scikit-learn's MLP initialisation: uniform in ±√(f / (fan_in + fan_out))."""
    rng = np.random.default_rng(seed)
    factor = 2.0 if activation == "logistic" else 6.0
    layers = len(shapes) // 2
    coefs, intercepts = [], []
    for i in range(layers):
        fan_in, fan_out = shapes[i]
        bound = math.sqrt(factor / (fan_in + fan_out))
        coefs.append(rng.uniform(-bound, bound, (fan_in, fan_out)))
        intercepts.append(rng.uniform(-bound, bound, fan_out))
    return [*coefs, *intercepts]


def _loss_proxy(est: Any, name: str, x: FloatArray, y: FloatArray, w: FloatArray) -> float:
    """Weighted mean loss of ``est`` on local rows (see the module docstring)."""
    if name in _CLASSIFIERS:
        if name == "MLPClassifier" or est.loss == "log_loss":
            value = log_loss(y, est.predict_proba(x), sample_weight=w, labels=est.classes_)
        else:
            value = hinge_loss(y, est.decision_function(x), labels=est.classes_, sample_weight=w)
    else:
        with np.errstate(all="ignore"):
            value = np.average((y - est.predict(x)) ** 2, weights=w)
    value = float(value)
    return min(value, _LOSS_CAP) if math.isfinite(value) else _LOSS_CAP


def _sgd_step_sizes(est: Any, t: FloatArray) -> FloatArray:
    """Per-sample learning rates of an SGD estimator at sample counters ``t``."""
    schedule = est.learning_rate
    if schedule == "optimal":
        alpha = float(est.alpha)
        # scikit-learn's plain_sgd: eta = 1 / (alpha (t0 + t - 1)), t0 = 1 / (typw alpha)
        # (typw / max(1, dloss(1, -typw)) = typw for every loss it offers)
        typw = math.sqrt(1.0 / math.sqrt(alpha))
        return 1.0 / (alpha * (1.0 / (typw * alpha) + t - 1.0))
    if schedule == "invscaling":
        result: FloatArray = float(est.eta0) / np.power(t, float(est.power_t))
        return result
    return np.full(t.shape, float(est.eta0))


def _mlp_step_sizes(est: Any, params: Sequence[FloatArray]) -> list[Any]:
    """Step size in effect per parameter array of an MLP (scalar or per coordinate)."""
    opt = getattr(est, "_optimizer", None)
    vs = getattr(opt, "vs", None)
    if vs is not None and len(vs) == len(params):
        # Adam: the coordinate-wise step is lr / (sqrt(v_hat) + eps)
        t = max(int(getattr(opt, "t", 1)), 1)
        correction = 1.0 - float(est.beta_2) ** t
        lr = float(est.learning_rate_init)
        eps = float(est.epsilon)
        return [lr / (np.sqrt(v / correction) + eps) for v in vs]
    rate = float(getattr(opt, "learning_rate", est.learning_rate_init))
    return [rate] * len(params)


def _prox(est: Any, anchors: Sequence[FloatArray], mu: float, t_before: float, rows: int) -> None:
    """Apply the proximal operator of μ/2‖w − anchor‖² for the step(s) just taken."""
    if hasattr(est, "coefs_"):
        params = [*est.coefs_, *est.intercepts_]
        for p, a, eta in zip(params, anchors, _mlp_step_sizes(est, params), strict=True):
            p[...] = (p + eta * mu * a) / (1.0 + eta * mu)
        return
    etas = _sgd_step_sizes(est, t_before + np.arange(rows, dtype=np.float64))
    keep = float(np.exp(-np.sum(np.log1p(etas * mu))))
    coef, intercept = anchors
    est.coef_ = np.ascontiguousarray(coef + (est.coef_ - coef) * keep)
    est.intercept_ = np.ascontiguousarray(intercept + (est.intercept_ - intercept) * keep)


def _accepts_sample_weight(est: Any) -> bool:
    return "sample_weight" in inspect.signature(est.partial_fit).parameters


def _one_call_per_epoch(est: Any, name: str, mu: float) -> bool:
    """Whether one ``partial_fit`` per epoch takes exactly the steps of one call per batch.

    True for ``MLP*`` estimators without FedProx whose optimizer keeps no per-call schedule:
    Adam, and ``solver="sgd"`` with a constant learning rate. scikit-learn updates the
    ``invscaling`` and ``adaptive`` schedules once per ``partial_fit`` call, FedProx applies
    its operator after every batch, and ``SGD*`` estimators are trained in their own chunks.
    """
    if name not in _MLPS or mu > 0:
        return False
    return bool(est.solver == "adam" or est.learning_rate == "constant")


def _train(
    est: Any,
    name: str,
    x: FloatArray,
    y: FloatArray,
    w: FloatArray,
    *,
    epochs: int,
    mu: float,
    anchors: Sequence[FloatArray],
    rng: np.random.Generator,
    per_batch: bool = False,
) -> None:
    """``epochs`` local passes of ``partial_fit``, with the FedProx operator if μ > 0.

    Every epoch permutes the rows (or, for the weighted bootstrap, draws them) and cuts the
    result into consecutive mini-batches. An ``MLP*`` runs with its ``shuffle`` off, so
    scikit-learn neither reorders these batches nor the rows inside them. Where
    :func:`_one_call_per_epoch` allows it and every batch has positive weight, the epoch is a
    single ``partial_fit`` over the permuted rows with ``batch_size`` set to the batch: the
    same optimizer steps on the same batches, bit for bit, without scikit-learn's per-call
    input validation for each batch. Otherwise (or with ``per_batch=True``, the reference
    path) ``partial_fit`` runs once per batch, batches without positive weight are skipped
    and FedProx applies its operator after each.
    """
    n = len(y)
    mlp = name in _MLPS
    weighted = _accepts_sample_weight(est)
    resample = not weighted and not np.all(w == w[0])
    if mlp:
        size, shuffle = est.batch_size, est.shuffle
        batch = min(200, n) if size == "auto" else int(np.clip(size, 1, n))
        est.shuffle = False  # the batches and their row order are ours
    else:
        batch = n if mu == 0 else min(n, _SGD_PROX_CHUNK)
    whole_epochs = not per_batch and _one_call_per_epoch(est, name, mu)
    probs = w / w.sum() if resample else None
    try:
        for _ in range(epochs):
            order = rng.choice(n, size=n, p=probs) if resample else rng.permutation(n)
            if whole_epochs and all(
                w[order[start : start + batch]].sum() > 0 for start in range(0, n, batch)
            ):
                est.batch_size = batch  # scikit-learn cuts the same consecutive batches
                if weighted:
                    est.partial_fit(x[order], y[order], sample_weight=w[order])
                else:
                    est.partial_fit(x[order], y[order])
                continue
            for start in range(0, n, batch):
                idx = order[start : start + batch]
                if w[idx].sum() <= 0:
                    continue  # nothing to learn from (and an MLP cannot normalise the batch)
                t_before = float(getattr(est, "t_", 1.0))
                if mlp:
                    est.batch_size = len(idx)  # one optimizer step on exactly this batch
                if weighted:
                    est.partial_fit(x[idx], y[idx], sample_weight=w[idx])
                else:
                    est.partial_fit(x[idx], y[idx])
                if mu > 0:
                    _prox(est, anchors, mu, t_before, len(idx))
    finally:
        if mlp:
            est.batch_size, est.shuffle = size, shuffle


def _agency_rng(seed: int, round_: int, agency: str) -> np.random.Generator:
    key = int.from_bytes(hashlib.sha256(agency.encode()).digest()[:8], "little")
    return np.random.default_rng(np.random.SeedSequence([seed, round_, key]))


def _int_param(params: Mapping[str, Any], key: str, low: int, high: int) -> int:
    value = params.get(key)
    if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
        raise ValueError(f"task parameter {key!r} must be an integer in [{low}, {high}]")
    return value


def _float_param(params: Mapping[str, Any], key: str, *, positive: bool = False) -> float:
    value = params.get(key)
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ValueError(f"task parameter {key!r} must be a number, got {value!r}")
    number = float(value)
    if not math.isfinite(number) or number < 0 or (positive and number == 0):
        raise ValueError(f"task parameter {key!r} is out of range: {value!r}")
    return number


def _check_shapes(raw: object) -> list[tuple[int, ...]]:
    if not isinstance(raw, Sequence) or not raw:
        raise ValueError("task parameter 'shapes' must be a non-empty list of shapes")
    shapes: list[tuple[int, ...]] = []
    for s in raw:
        if (
            not isinstance(s, Sequence)
            or not 1 <= len(s) <= 2
            or not all(isinstance(d, int) and not isinstance(d, bool) and d > 0 for d in s)
        ):
            raise ValueError(f"invalid parameter shape {s!r}")
        shapes.append(tuple(s))
    _check_size(shapes)
    return shapes


def _encode_coefs(theta: FloatArray) -> str:
    """Base64 text of the little-endian float64 bytes of ``theta`` (``"coefs_f8"``)."""
    raw = np.ascontiguousarray(theta, dtype="<f8").tobytes()
    return base64.b64encode(raw).decode("ascii")


def _coefs(params: Mapping[str, Any], shapes: Sequence[tuple[int, ...]]) -> FloatArray:
    """The flat parameters a model description carries, checked against ``shapes``.

    Either ``"coefs"``, a list of numbers, or ``"coefs_f8"``, base64 of little-endian
    float64 bytes (:func:`_encode_coefs`); exactly one of the two. The base64 text must be
    strict (no whitespace, correct padding) and decode to exactly 8 bytes per parameter.

    Raises
    ------
    ValueError
        Both or neither form, a value that is not of its form, the wrong number of values for
        ``shapes``, or a value that is not finite.
    """
    n_params = sum(math.prod(s) for s in shapes)
    if ("coefs" in params) == ("coefs_f8" in params):
        raise ValueError(
            "a model must carry its parameters as exactly one of 'coefs' (a list of numbers) "
            "and 'coefs_f8' (base64 of little-endian float64), "
            + ("not both" if "coefs" in params else "found neither")
        )
    if "coefs" in params:
        message = f"model parameter 'coefs' must be {n_params} finite numbers"
        try:
            theta = np.asarray(params["coefs"], dtype=np.float64)
        except (TypeError, ValueError) as exc:
            raise ValueError(message) from exc
        if theta.shape != (n_params,) or not np.isfinite(theta).all():
            raise ValueError(message)
        return theta
    text = params["coefs_f8"]
    if not isinstance(text, str):
        raise ValueError(
            f"model parameter 'coefs_f8' must be a base64 string, got {type(text).__name__}"
        )
    try:
        raw = base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError) as exc:
        raise ValueError(f"model parameter 'coefs_f8' is not valid base64: {exc}") from exc
    if len(raw) % 8:
        raise ValueError(
            f"model parameter 'coefs_f8' decodes to {len(raw)} bytes, not a whole number of "
            "float64 values (8 bytes each)"
        )
    if len(raw) != 8 * n_params:
        raise ValueError(
            f"model parameter 'coefs_f8' holds {len(raw) // 8} float64 values; the shapes "
            f"{[list(s) for s in shapes]} need {n_params} ({8 * n_params} bytes)"
        )
    theta = np.frombuffer(raw, dtype="<f8").astype(np.float64)
    bad = np.flatnonzero(~np.isfinite(theta))
    if bad.size:
        raise ValueError(
            f"model parameter 'coefs_f8' holds {bad.size} non-finite value(s); the first is "
            f"{float(theta[bad[0]])} at index {int(bad[0])}"
        )
    return theta


# --------------------------------------------------------------------------------------------
# vetted local steps


@local_step("fedavg.label_counts")
def _label_counts(params: Mapping[str, Any], data: AgencyDataset) -> FloatArray:
    """Rows with label 0, 1, ..., K-1, then rows with any other label."""
    k = _int_param(params, "max_classes", 2, MAX_LABEL_CLASSES)
    y = data.y()
    integral = (y == np.rint(y)) & (y >= 0) & (y < k)
    counts = np.bincount(y[integral].astype(np.int64), minlength=k).astype(np.float64)
    out = np.append(counts, float((~integral).sum()))
    if "unit_bits" not in params:
        return out
    # exact integers at the width of the job's row count (fedcity.core.precision)
    codec = ExactIntegers(
        _int_param(params, "value_bits", 1, 48), _int_param(params, "unit_bits", 0, MAX_UNIT_BITS)
    )
    if out.max() > (1 << codec.bits) - 1:
        raise ValueError(
            f"{int(out.max())} rows of one label exceed the {codec.bits}-bit count the "
            "coordinator asked for (the rows changed since the statistics round?)"
        )
    return codec.encode(out)


def _expected_shapes(
    name: str, hyper: Mapping[str, Any], n_features: int, n_classes: int
) -> list[tuple[int, ...]]:
    """Parameter shapes the estimator will have, computed before building it."""
    if name in _MLPS:
        hidden = hyper.get("hidden_layer_sizes", (100,))
        layers = [hidden] if isinstance(hidden, int) else list(hidden)
        if not all(isinstance(h, int) and h > 0 for h in layers):
            raise ValueError(f"hidden_layer_sizes must be positive integers, got {hidden!r}")
        n_out = n_classes if n_classes > 2 else 1
        units = [n_features, *layers, n_out]
        pairs = list(itertools.pairwise(units))
        return [*pairs, *((b,) for _, b in pairs)]
    if name == "SGDClassifier":
        rows = n_classes if n_classes > 2 else 1
        return [(rows, n_features), (rows,)]
    return [(n_features,), (1,)]


def _checked_description(
    desc: Mapping[str, Any], n_features: int, who: str
) -> tuple[str, dict[str, Any], tuple[float | int, ...] | None, list[tuple[int, ...]], FloatArray]:
    """Validate a model description: class, hyperparameters, classes, shapes, coefficients.

    The shapes must be the ones the hyperparameters give for ``n_features`` features, checked
    before anything is built (a forged layer size could exhaust memory). ``who`` prefixes the
    shape error (the agency, at an agency).
    """
    name = desc.get("estimator")
    _estimator_class(name)
    assert isinstance(name, str)
    hyper = _check_hyperparameters(name, desc.get("hyperparameters"))
    classes = _check_classes(name, desc.get("classes"))
    if name in _CLASSIFIERS and classes is None:
        raise ValueError(f"a {name} model must carry the job's classes")
    shapes = _check_shapes(desc.get("shapes"))
    theta = _coefs(desc, shapes)
    n_classes = 0 if classes is None else len(classes)
    expected = _expected_shapes(name, hyper, n_features, n_classes)
    if expected != shapes:
        raise ValueError(
            f"{who}{name} with these hyperparameters has parameter shapes {expected}, "
            f"the model carries {shapes}"
        )
    return name, hyper, classes, shapes, theta


def _installed_model(
    params: Mapping[str, Any], data: AgencyDataset, n_features: int, random_state: int
) -> tuple[Any, str, FloatArray, list[tuple[int, ...]]]:
    """Validate a model description and build the estimator holding its parameters.

    Returns the estimator, its class name, the flat parameters and their shapes.
    """
    name, hyper, classes, shapes, theta = _checked_description(
        params, n_features, f"agency {data.agency!r}: "
    )
    est = _make_estimator(name, hyper, random_state=random_state, verbose=False)
    labels = None if classes is None else np.asarray(classes, dtype=np.float64)
    _initialise(est, name, n_features, labels)
    if _shapes(est) != shapes:
        raise ValueError(
            f"agency {data.agency!r}: {name} with these hyperparameters has parameter shapes "
            f"{_shapes(est)}, the model carries {shapes}"
        )
    _set_parameter_arrays(est, _unflatten(theta, shapes))
    return est, name, theta, shapes


def _check_labels(est: Any, name: str, y: FloatArray, agency: str) -> None:
    if name in _CLASSIFIERS:
        outside = int((~np.isin(y, est.classes_)).sum())
        if outside:
            raise ValueError(
                f"agency {agency!r}: {outside} label(s) are not among the job's classes "
                f"{est.classes_.tolist()}"
            )


@local_step("fedavg.local")
def _fedavg_local(params: Mapping[str, Any], data: AgencyDataset) -> FloatArray:
    """Local training from the global parameters; returns the weighted model and extras."""
    round_ = _int_param(params, "round", 0, 10**9)
    epochs = _int_param(params, "local_epochs", 1, _MAX_LOCAL_EPOCHS)
    seed = _int_param(params, "seed", 0, 2**63 - 1)
    mu = _float_param(params, "mu")
    total_weight = _float_param(params, "total_weight", positive=True)
    pre = Preprocessing.from_params(params["preprocessing"])
    x = design_matrix(pre, data)
    y = data.y()
    w = data.sample_weight()
    rng = _agency_rng(seed, round_, data.agency)
    est, name, theta, shapes = _installed_model(
        params, data, x.shape[1], int(rng.integers(2**31 - 1))
    )
    _check_labels(est, name, y, data.agency)
    n_i = float(w.sum())
    out = np.zeros(theta.size + 3)
    if n_i <= 0:
        return out  # contributes nothing (and 0 to the weight slot)
    _reset_state(est, samples_seen=float(round_) * epochs * len(y))
    loss = _loss_proxy(est, name, x, y, w)
    anchors = _unflatten(theta, shapes)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        _train(est, name, x, y, w, epochs=epochs, mu=mu, anchors=anchors, rng=rng)
    local = _flatten(_parameter_arrays(est))
    drift = float(np.mean((local - theta) ** 2))
    share = n_i / total_weight
    out[: theta.size] = share * local
    out[theta.size :] = [share * loss, share * drift, share]
    return out


@model_predictor("fedavg")
def _predict_fedavg(model: Mapping[str, Any], data: AgencyDataset) -> FloatArray:
    """Scores for federated evaluation: P(class 1) of a 0/1 classifier, or predictions."""
    pre = Preprocessing.from_params(model["preprocessing"])
    x = design_matrix(pre, data)
    est, name, _, _ = _installed_model(model, data, x.shape[1], 0)
    if name not in _CLASSIFIERS:
        pred: FloatArray = np.asarray(est.predict(x), dtype=np.float64)
        return pred
    if est.classes_.tolist() != [0.0, 1.0]:
        raise ValueError("federated evaluation scores binary classifiers with classes 0 and 1")
    if name == "SGDClassifier" and est.loss not in ("log_loss", "modified_huber"):
        raise ValueError(
            f"federated evaluation needs probabilities; SGDClassifier(loss={est.loss!r}) "
            "has none (use loss='log_loss')"
        )
    proba: FloatArray = np.asarray(est.predict_proba(x)[:, 1], dtype=np.float64)
    return proba


# --------------------------------------------------------------------------------------------
# the coordinator's algorithm


class FederatedAveraging(Algorithm):
    """FedAvg / FedProx over encrypted, sample-weighted model updates.

    Parameters
    ----------
    estimator : MLPClassifier, MLPRegressor, SGDClassifier or SGDRegressor
        An instance whose hyperparameters define the model (its fitted state, if any, is
        ignored; only its class name and ``get_params()`` are used).
    preprocessing : Preprocessing
        Released by :class:`~fedcity.learn.stats.FederatedStatistics`.
    rounds : int, default 20
        Averaging rounds (a classifier without declared ``classes`` runs one more, first, to
        count labels).
    local_epochs : int, default 1
        Passes over its rows each agency makes per round.
    mu : float, default 0.0
        FedProx proximal strength; 0 is FedAvg.
    classes : sequence of numbers, optional
        A classifier's labels. If omitted, they are learned from a secure label count.
    seed : int, default 0
        Seeds the initial weights and every agency's local shuffling.
    clip : float, default 64.0
        Initial packing bound; the federation widens it (×256) when an agency had to clip,
        and later rounds keep the widened bound.
    accuracy : float, optional
        Largest rounding error of one packed value (absolute; the values are the weighted
        parameters ``(n_i/W)·θ_i``). The precision is the fewest bits that honour it at the
        round's clip (:func:`fedcity.core.precision.precision_for`), recomputed when the
        clip widens. Default :data:`~fedcity.core.precision.SECAGG_PLUS_ACCURACY`
        (``2^-19``: half the quantization step of Flower's SecAgg+, ``2·8/2^22``), which is 26
        bits at the default clip. Mutually exclusive with ``precision_bits``.
    precision_bits : int, optional
        A fixed precision in [8, 52] instead (40 was the default before the accuracy
        policy); it does not grow when the clip widens.
    aggregation : {"paillier", "lwr-masked"}, default "paillier"
        How the averaging rounds are aggregated: packed threshold Paillier, or the opt-in
        masked scheme (:mod:`fedcity.core.masked_scheme`: updates masked by an LWR
        key-homomorphic PRF, only the keys under threshold Paillier; threshold mode only, no
        range audits, precision capped by the PRF's modulus; see ``docs/learning.md``).

    Attributes
    ----------
    estimator_name : str
    hyperparameters : dict
        The JSON-safe hyperparameters sent to agencies.
    classes_ : ndarray or None
        A classifier's classes, once known.
    shapes_ : list of tuple of int
        Shapes of the parameter arrays (MLP: weights per layer then intercepts per layer;
        SGD: ``coef_`` then ``intercept_``).
    coef_vector_ : ndarray of float64
        The current global parameters, flattened in the order of ``shapes_``.
    rounds_done_ : int
    loss_history_ : list of float
        Per round, the weighted global loss proxy at the model the round started from.
    drift_history_ : list of float
        Per round, the weighted mean over agencies of the mean squared change of their
        parameters during local training.
    weight_history_ : list of float
        Per round, Σ n_i / W of the contributors (below 1 after dropouts).
    """

    def __init__(
        self,
        estimator: BaseEstimator,
        preprocessing: Preprocessing,
        *,
        rounds: int = 20,
        local_epochs: int = 1,
        mu: float = 0.0,
        classes: Sequence[float | int] | None = None,
        seed: int = 0,
        clip: float = 64.0,
        accuracy: float | None = None,
        precision_bits: int | None = None,
        aggregation: str = "paillier",
    ) -> None:
        from fedcity.core.masked_scheme import check_aggregation

        name, hyper = _describe(estimator)
        _check_training(rounds, local_epochs, mu, seed)
        self.accuracy = _check_precision(clip, accuracy, precision_bits)
        self.aggregation = check_aggregation(aggregation)
        self.estimator_name = name
        self.hyperparameters = hyper
        self.pre = preprocessing
        self.rounds = rounds
        self.local_epochs = local_epochs
        self.mu = float(mu)
        self.seed = seed
        self.clip = float(clip)
        self.fixed_precision_bits = precision_bits
        declared = _check_classes(name, classes)
        self.classes_: npt.NDArray[Any] | None = None
        self.shapes_: list[tuple[int, ...]] = []
        self.coef_vector_: FloatArray = np.zeros(0)
        self.rounds_done_ = 0
        self.loss_history_: list[float] = []
        self.drift_history_: list[float] = []
        self.weight_history_: list[float] = []
        self._count_labels = name in _CLASSIFIERS and declared is None
        if not self._count_labels:
            self._start(None if declared is None else np.asarray(declared))

    @property
    def is_classifier(self) -> bool:
        """Whether the estimator is a classifier."""
        return self.estimator_name in _CLASSIFIERS

    @property
    def precision_bits(self) -> int:
        """Precision of the next averaging round (at the current clip)."""
        if self.fixed_precision_bits is not None:
            return self.fixed_precision_bits
        assert self.accuracy is not None
        return precision_for(self.clip, self.accuracy)

    def precision_bits_for(self, request: TaskRequest, clip: float) -> int:
        """The averaging rounds' precision at the (possibly widened) ``clip``."""
        if request.kind != "fedavg.local" or self.accuracy is None:
            return request.precision_bits
        return precision_for(clip, self.accuracy)

    @property
    def max_rounds(self) -> int:
        """Averaging rounds, plus the label count if classes were not declared."""
        return self.rounds + int(self._count_labels)

    def _start(self, classes: npt.NDArray[Any] | None) -> None:
        """Fix the classes, the parameter layout and the initial parameters."""
        self.classes_ = classes
        n_classes = 0 if classes is None else len(classes)
        _check_size(
            _expected_shapes(
                self.estimator_name, self.hyperparameters, self.pre.n_features, n_classes
            )
        )
        est = self._structure(random_state=self.seed)
        self.shapes_ = _shapes(est)
        if self.estimator_name in _MLPS:
            initial = _glorot(self.shapes_, est.activation, self.seed)
        else:
            initial = [np.zeros(s) for s in self.shapes_]
        self.coef_vector_ = _flatten(initial)

    def _structure(self, **overrides: Any) -> Any:
        est = _make_estimator(self.estimator_name, self.hyperparameters, **overrides)
        _initialise(est, self.estimator_name, self.pre.n_features, self.classes_)
        return est

    def next_request(self) -> TaskRequest | None:
        """A label count first if needed, then ``rounds`` local-training rounds."""
        if self._count_labels and self.classes_ is None:
            # counts of rows, at most the released row count: exact at that width
            width = max(1, int(self.pre.n_samples).bit_length())
            codec = ExactIntegers.for_summands(width, _COUNT_SUMMANDS)
            return TaskRequest(
                "fedavg.label_counts",
                {
                    "max_classes": MAX_LABEL_CLASSES,
                    "value_bits": codec.bits,
                    "unit_bits": codec.unit_bits,
                },
                MAX_LABEL_CLASSES + 1,
                clip=codec.clip,
                precision_bits=codec.precision_bits,
                label="FedAvg: label counts",
            )
        if self.rounds_done_ >= self.rounds:
            return None
        method = "FedProx" if self.mu > 0 else "FedAvg"
        classes = None if self.classes_ is None else [float(c) for c in self.classes_]
        return TaskRequest(
            "fedavg.local",
            {
                "estimator": self.estimator_name,
                "hyperparameters": dict(self.hyperparameters),
                "shapes": [list(s) for s in self.shapes_],
                "coefs_f8": _encode_coefs(self.coef_vector_),
                "classes": classes,
                "preprocessing": self.pre.to_params(),
                "local_epochs": self.local_epochs,
                "mu": self.mu,
                "round": self.rounds_done_,
                "seed": self.seed,
                "total_weight": self.pre.total_weight,
                **({"aggregation": self.aggregation} if self.aggregation != "paillier" else {}),
            },
            self.coef_vector_.size + 3,
            clip=self.clip,
            precision_bits=self.precision_bits,
            label=f"{method} round {self.rounds_done_ + 1}/{self.rounds}",
        )

    def update(self, request: TaskRequest, released: FloatArray, record: RoundRecord) -> None:
        """Learn the classes, or average the contributors' models."""
        if request.kind == "fedavg.label_counts":
            codec = ExactIntegers(request.params["value_bits"], request.params["unit_bits"])
            counts = np.asarray(codec.decode(released, len(record.contributors)), dtype=np.int64)
            if counts[-1] > 0:
                raise ValueError(
                    f"{counts[-1]} label(s) are not integers in [0, {MAX_LABEL_CLASSES}); "
                    "declare the job's classes=..."
                )
            found = np.flatnonzero(counts[:-1] > 0)
            if found.size < 2:
                raise ValueError(
                    f"the agencies' labels hold {found.size} class(es); a classifier needs two"
                )
            self._start(found.astype(np.int64))
            return
        self.clip = record.clip or request.clip
        p = self.coef_vector_.size
        weight = float(released[-1])
        if not weight > 0:
            raise ValueError("no contributing agency had a positive sample weight")
        self.coef_vector_ = released[:p] / weight
        loss = float(released[p] / weight)
        record.loss = loss
        self.loss_history_.append(loss)
        self.drift_history_.append(float(released[p + 1] / weight))
        self.weight_history_.append(weight)
        self.rounds_done_ += 1

    def model_params(self) -> dict[str, Any]:
        """Declarative, JSON-safe description of the global model (for federated scoring)."""
        return {
            "type": "fedavg",
            "estimator": self.estimator_name,
            "hyperparameters": dict(self.hyperparameters),
            "shapes": [list(s) for s in self.shapes_],
            "coefs": self.coef_vector_.tolist(),
            "classes": None if self.classes_ is None else [float(c) for c in self.classes_],
            "preprocessing": self.pre.to_params(),
        }

    def parameters(self) -> list[FloatArray]:
        """The global parameter arrays (MLP: ``coefs_`` then ``intercepts_``)."""
        return _unflatten(self.coef_vector_, self.shapes_)

    def to_estimator(self, *, samples_seen: float | None = None) -> Any:
        """A fitted scikit-learn estimator holding the global parameters.

        Its hyperparameters are the ones given; fitted attributes (``classes_``,
        ``n_features_in_``, ``n_layers_``, ``out_activation_``, ...) come from one
        ``partial_fit`` on a synthetic all-zero sample, after which the parameters are
        replaced and ``n_iter_`` is the number of rounds.
        """
        if not self.shapes_:
            raise ValueError("the algorithm has not learned its classes yet")
        est = self._structure()
        _set_parameter_arrays(est, self.parameters())
        seen = (
            float(self.pre.n_samples) * self.rounds_done_ * self.local_epochs
            if samples_seen is None
            else samples_seen
        )
        _reset_state(est, seen)
        est.n_iter_ = self.rounds_done_
        if self.estimator_name in _MLPS:
            est.loss_curve_ = list(self.loss_history_)
            if self.loss_history_:
                est.loss_ = self.loss_history_[-1]
                est.best_loss_ = min(self.loss_history_)
            est._best_coefs = [c.copy() for c in est.coefs_]
            est._best_intercepts = [c.copy() for c in est.intercepts_]
        return est


# --------------------------------------------------------------------------------------------
# the data scientist's job


class FedAvgJob(_Job):
    """Train an ``MLP*`` or ``SGD*`` scikit-learn estimator by FedAvg / FedProx.

    ::

        job = FedAvgJob(MLPClassifier(hidden_layer_sizes=(16,)), rounds=30, local_epochs=2)
        result = job.fit(federation)
        result.estimator_.predict_proba(test_frame)

    Parameters
    ----------
    estimator : MLPClassifier, MLPRegressor, SGDClassifier or SGDRegressor
        An unfitted instance; its ``get_params()`` are the hyperparameters every agency uses.
        They must be plain numbers, strings, booleans, None or tuples of ints.
    rounds : int, default 20
    local_epochs : int, default 1
    mu : float, default 0.0
        FedProx proximal strength (0: FedAvg).
    classes : sequence of numbers, optional
        A classifier's labels; learned from a secure label count (labels 0..63) if omitted.
    seed : int, default 0
    clip : float, default 64.0
        Initial packing bound of the weighted parameters (widened ×256 when an agency clips).
    accuracy : float, optional
        Largest rounding error per packed value; chooses the precision from the clip
        (default ``2^-19``, half SecAgg+'s step; see :mod:`fedcity.core.precision`).
    precision_bits : int, optional
        A fixed precision in [8, 52] instead of ``accuracy`` (e.g. 40, the former default).
    aggregation : {"paillier", "lwr-masked"}, default "paillier"
        The averaging rounds' aggregation scheme (opt-in masked scheme: see
        :class:`FederatedAveraging` and ``docs/learning.md``).

    Raises
    ------
    ValueError
        Another estimator class, hyperparameters that cannot travel or FedAvg cannot honour
        (``early_stopping``, ``solver="lbfgs"``, ``average``, ``class_weight``), ``rounds`` or
        ``local_epochs`` below 1, negative ``mu``, invalid ``classes``, a non-positive
        ``clip`` or ``accuracy``, an accuracy not below the clip or needing more than 52
        bits, both ``accuracy`` and ``precision_bits``, or ``precision_bits`` outside [8, 52].
    """

    def __init__(
        self,
        estimator: BaseEstimator,
        *,
        rounds: int = 20,
        local_epochs: int = 1,
        mu: float = 0.0,
        classes: Sequence[float | int] | None = None,
        seed: int = 0,
        clip: float = 64.0,
        accuracy: float | None = None,
        precision_bits: int | None = None,
        aggregation: str = "paillier",
    ) -> None:
        from fedcity.core.masked_scheme import check_aggregation

        name, _ = _describe(estimator)
        _check_training(rounds, local_epochs, mu, seed)
        _check_precision(clip, accuracy, precision_bits)
        self.aggregation = check_aggregation(aggregation)
        self.classes = _check_classes(name, classes)
        self.estimator = estimator
        self.rounds = rounds
        self.local_epochs = local_epochs
        self.mu = mu
        self.seed = seed
        self.clip = clip
        self.accuracy = accuracy
        self.precision_bits = precision_bits
        self.algorithm_: FederatedAveraging | None = None

    def __repr__(self) -> str:
        packing = (
            f"precision_bits={self.precision_bits}"
            if self.precision_bits is not None
            else f"accuracy={self.accuracy}"
        )
        return (
            f"FedAvgJob({self.estimator!r}, rounds={self.rounds}, "
            f"local_epochs={self.local_epochs}, mu={self.mu}, classes={self.classes}, "
            f"seed={self.seed}, clip={self.clip}, {packing}"
            + (f", aggregation={self.aggregation!r})" if self.aggregation != "paillier" else ")")
        )

    def _algorithm(self, pre: Preprocessing) -> Algorithm:
        self.algorithm_ = FederatedAveraging(
            self.estimator,
            pre,
            rounds=self.rounds,
            local_epochs=self.local_epochs,
            mu=self.mu,
            classes=self.classes,
            seed=self.seed,
            clip=self.clip,
            accuracy=self.accuracy,
            precision_bits=self.precision_bits,
            aggregation=self.aggregation,
        )
        return self.algorithm_

    @property
    def problem(self) -> str:  # type: ignore[override]
        """``"classification"``, ``"regression"`` or (``MLPRegressor(loss="poisson")``) poisson."""
        name = type(self.estimator).__name__
        if name in _CLASSIFIERS:
            return "classification"
        loss = self.estimator.get_params(deep=False).get("loss")
        return "poisson" if loss == "poisson" else "regression"

    def _model_params(self, algorithm: Algorithm, pre: Preprocessing) -> dict[str, Any]:
        assert isinstance(algorithm, FederatedAveraging)
        return algorithm.model_params()

    def _estimator(self, algorithm: Algorithm, pre: Preprocessing) -> BaseEstimator:
        assert isinstance(algorithm, FederatedAveraging)
        est: BaseEstimator = algorithm.to_estimator()
        return est


# --------------------------------------------------------------------------------------------
# building estimators from declarative descriptions (job specs, results)


def make_estimator(name: object, hyperparameters: object) -> Any:
    """An unfitted estimator of one of :data:`ESTIMATORS`, by class name.

    Parameters
    ----------
    name : str
        ``"MLPClassifier"``, ``"MLPRegressor"``, ``"SGDClassifier"`` or ``"SGDRegressor"``.
    hyperparameters : mapping
        Names the class declares, with plain JSON values (lists of ints become tuples).

    Raises
    ------
    ValueError
        Another class, an unknown hyperparameter, or a value that cannot travel.
    """
    _estimator_class(name)
    assert isinstance(name, str)
    return _make_estimator(name, _check_hyperparameters(name, hyperparameters))


def estimator_from_model_params(model: Mapping[str, Any]) -> Any:
    """The fitted scikit-learn estimator a :meth:`FederatedAveraging.model_params` describes.

    Only the four allowed classes are built, with validated hyperparameters and parameter
    shapes checked against them before anything is allocated (as agencies check a task).

    Parameters
    ----------
    model : mapping
        ``{"type": "fedavg", "estimator", "hyperparameters", "shapes", "coefs", "classes",
        "preprocessing"}``; the parameters may instead be ``"coefs_f8"`` (base64 of
        their little-endian float64 bytes).

    Returns
    -------
    MLPClassifier, MLPRegressor, SGDClassifier or SGDRegressor
        Holding the global parameters (without the preprocessing step).

    Raises
    ------
    ValueError
        An unknown class, invalid hyperparameters, or shapes or coefficients that do not fit.
    """
    if model.get("type") != "fedavg":
        raise ValueError(f"not a FedAvg model description (type {model.get('type')!r})")
    pre = Preprocessing.from_params(model["preprocessing"])
    name, hyper, classes, shapes, theta = _checked_description(model, pre.n_features, "")
    labels: Any = None
    if classes is not None:
        integral = all(float(c).is_integer() for c in classes)
        labels = np.asarray(classes, dtype=np.int64 if integral else np.float64)
    est = _make_estimator(name, hyper)
    _initialise(est, name, pre.n_features, labels)
    _set_parameter_arrays(est, _unflatten(theta, shapes))
    _reset_state(est, 0.0)
    return est
