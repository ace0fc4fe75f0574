"""The charts of :mod:`fedcity.plots` (matplotlib, Agg renderer, no pyplot state)."""

from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator

from fedcity.learn.metrics import EvaluationCurves

if TYPE_CHECKING:
    from fedcity.learn.jobs import FederatedResult

__all__ = [
    "FORMATS",
    "MAX_AGENCIES",
    "MAX_COEFFICIENTS",
    "MAX_ROUNDS",
    "ResultView",
    "plot_calibration",
    "plot_coefficients",
    "plot_participation",
    "plot_roc",
    "plot_training_curves",
    "result_view",
    "save_figure",
    "save_job_plots",
    "save_result_plots",
]

FORMATS: Final[tuple[str, ...]] = ("png", "svg")
"""File formats a chart is written in (chosen by the file's extension)."""

MAX_ROUNDS: Final[int] = 10_000
"""Most rounds a training or participation chart draws."""

MAX_AGENCIES: Final[int] = 1_000
"""Most agencies a participation chart draws."""

MAX_COEFFICIENTS: Final[int] = 200
"""Most coefficients a coefficient chart draws (``top`` picks the largest)."""

_MAX_RESULT_JSON: Final[int] = 64 * 1024 * 1024


@dataclass(frozen=True)
class ResultView:
    """What the charts read from a job's result, whichever form it came in.

    Attributes
    ----------
    job_id : str
    problem : str
    history : list of dict
        One :class:`~fedcity.learn.algorithm.RoundRecord` as a dict per round, in order.
    model : dict
        The declarative model (``"type"``, for GLMs ``"family"`` and ``"beta"``, and
        ``"preprocessing"``).
    metrics : dict of str to float or None
        Global evaluation metrics, if the job was evaluated.
    curves : EvaluationCurves or None
        ROC and calibration curves of a classifier's federated evaluation.
    """

    job_id: str
    problem: str
    history: list[dict[str, Any]]
    model: dict[str, Any] = field(default_factory=dict)
    metrics: dict[str, float] | None = None
    curves: EvaluationCurves | None = None

    def feature_names(self) -> list[str]:
        """Design-matrix column names of the model (empty when not described)."""
        pre = self.model.get("preprocessing")
        if not isinstance(pre, Mapping):
            return []
        from fedcity.learn.design import Preprocessing

        try:
            return Preprocessing.from_params(pre).feature_names()
        except (KeyError, TypeError, ValueError) as exc:
            raise ValueError(f"the result's preprocessing is not readable: {exc!r}") from exc


def result_view(
    result: FederatedResult | ResultView | Mapping[str, Any] | str | bytes,
    metrics: Mapping[str, float] | None = None,
) -> ResultView:
    """Normalise a result into a :class:`ResultView`.

    Parameters
    ----------
    result : FederatedResult, ResultView, mapping, str or bytes
        A result object, or the JSON of :func:`fedcity.learn.jobs.result_to_json` (as text
        or parsed).
    metrics : mapping, optional
        Evaluation metrics to attach (an ``EvaluationMetrics`` brings its ``curves``).

    Raises
    ------
    ValueError
        Not a fedcity result, or a result whose parts cannot be read.
    """
    from fedcity.learn.jobs import RESULT_FORMAT, FederatedResult

    curves = getattr(metrics, "curves", None)
    values = _float_metrics(metrics) if metrics is not None else None
    if isinstance(result, ResultView):
        return ResultView(
            result.job_id,
            result.problem,
            result.history,
            result.model,
            values if values is not None else result.metrics,
            curves if curves is not None else result.curves,
        )
    if isinstance(result, FederatedResult):
        return ResultView(
            job_id=result.job_id_,
            problem=result.problem_,
            history=[asdict(r) for r in result.history_],
            model=dict(result.model_params_),
            metrics=values,
            curves=curves,
        )
    data: Any = result
    if isinstance(result, str | bytes):
        if len(result) > _MAX_RESULT_JSON:
            raise ValueError(
                f"result JSON holds {len(result):,} bytes; at most {_MAX_RESULT_JSON:,}"
            )
        try:
            data = json.loads(result)
        except json.JSONDecodeError as exc:
            raise ValueError(f"result is not valid JSON: {exc}") from exc
    if not isinstance(data, Mapping) or data.get("format") != RESULT_FORMAT:
        raise ValueError(f"not a fedcity result (format must be {RESULT_FORMAT!r})")
    history = data.get("history") or []
    if not isinstance(history, list) or not all(isinstance(r, Mapping) for r in history):
        raise ValueError("the result's history must be a list of round records")
    if curves is None and data.get("curves") is not None:
        curves = EvaluationCurves.from_dict(data["curves"])
    if values is None and isinstance(data.get("metrics"), Mapping):
        values = _float_metrics(data["metrics"])
    model = data.get("model")
    return ResultView(
        job_id=str(data.get("job_id", "")),
        problem=str(data.get("problem", "classification")),
        history=[dict(r) for r in history],
        model=dict(model) if isinstance(model, Mapping) else {},
        metrics=values,
        curves=curves,
    )


def _float_metrics(metrics: Mapping[str, Any]) -> dict[str, float]:
    out = {}
    for k, v in metrics.items():
        if isinstance(v, int | float) and not isinstance(v, bool):
            out[str(k)] = float(v)
        elif v is None:
            out[str(k)] = math.nan
    return out


def _new_figure(width: float, height: float) -> Figure:
    fig = Figure(figsize=(width, height), layout="constrained")
    FigureCanvasAgg(fig)
    return fig


def _check_rounds(history: Sequence[Mapping[str, Any]]) -> None:
    if not history:
        raise ValueError("the result has no rounds to draw")
    if len(history) > MAX_ROUNDS:
        raise ValueError(
            f"the result has {len(history):,} rounds; a chart draws at most {MAX_ROUNDS:,}"
        )


# -- training curves ------------------------------------------------------------------------
def plot_training_curves(
    result: FederatedResult | ResultView | Mapping[str, Any] | str,
    *,
    metrics: Mapping[str, Sequence[float | None]] | None = None,
) -> Figure:
    """Loss per round, and a per-round metric, rounds numbered from 1.

    Parameters
    ----------
    result : FederatedResult, ResultView, mapping or str
        The job's result (see :func:`result_view`).
    metrics : mapping of str to sequence, optional
        Per-round metric values to draw in the lower panel, one value (or None) per round
        of the result's history (e.g. a hold-out AUC measured after each round). Without
        it, the lower panel shows the seconds each round took (agencies in parallel).

    Returns
    -------
    matplotlib.figure.Figure
        Two axes: "training loss" and the metric panel.

    Raises
    ------
    ValueError
        No rounds, more than :data:`MAX_ROUNDS`, or metric series of the wrong length.
    """
    view = result_view(result)
    history = view.history
    _check_rounds(history)
    rounds = np.arange(1, len(history) + 1)
    fig = _new_figure(7.0, 6.0)
    ax_loss, ax_metric = fig.subplots(2, 1, sharex=True)
    loss = np.array(
        [math.nan if r.get("loss") is None else float(r["loss"]) for r in history], dtype=float
    )
    has_loss = np.isfinite(loss)
    if has_loss.any():
        ax_loss.plot(rounds[has_loss], loss[has_loss], marker="o", label="loss")
        first = int(rounds[has_loss][0])
        if first > 1:
            ax_loss.axvspan(0.5, first - 0.5, color="0.92", label="preprocessing rounds")
        ax_loss.legend(loc="upper right")
    else:
        ax_loss.text(0.5, 0.5, "no round reported a loss", ha="center", transform=ax_loss.transAxes)
    ax_loss.set_ylabel("training loss")
    ax_loss.set_title(f"Training of job {view.job_id}" if view.job_id else "Training")
    if metrics:
        for name, series in metrics.items():
            values = list(series)
            if len(values) != len(history):
                raise ValueError(
                    f"metric {name!r} has {len(values)} values; the result has "
                    f"{len(history)} rounds"
                )
            y = np.array([math.nan if v is None else float(v) for v in values], dtype=float)
            ok = np.isfinite(y)
            ax_metric.plot(rounds[ok], y[ok], marker="o", label=str(name))
        ax_metric.set_ylabel("metric")
        ax_metric.legend(loc="best")
    else:
        seconds = [float(sum((r.get("seconds") or {}).values())) for r in history]
        ax_metric.bar(rounds, seconds, color="tab:gray", label="seconds per round")
        ax_metric.set_ylabel("seconds per round")
    ax_metric.set_xlabel("round")
    ax_metric.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax_metric.set_xlim(0.5, len(history) + 0.5)
    return fig


# -- ROC and calibration --------------------------------------------------------------------
def _curves(
    source: EvaluationCurves | Mapping[str, Any] | FederatedResult | ResultView | str,
) -> EvaluationCurves:
    if isinstance(source, EvaluationCurves):
        return source
    curves = getattr(source, "curves", None)
    if isinstance(curves, EvaluationCurves):
        return curves
    if isinstance(source, Mapping) and "roc" in source:
        return EvaluationCurves.from_dict(source)
    view = result_view(source)
    if view.curves is None:
        raise ValueError(
            "the result holds no evaluation curves: evaluate a classifier federatedly "
            "(LocalFederation.evaluate or --evaluate-dataset) first"
        )
    return view.curves


def plot_roc(
    curves: EvaluationCurves | Mapping[str, Any] | ResultView | str,
    *,
    title: str = "ROC curve (federated evaluation)",
) -> Figure:
    """The ROC curve from the evaluation's secure score histograms.

    Parameters
    ----------
    curves : EvaluationCurves, EvaluationMetrics, its dict form, or a result with curves

    Returns
    -------
    matplotlib.figure.Figure
        One axes: the curve (labelled with its AUC) and the chance diagonal.
    """
    c = _curves(curves)
    fig = _new_figure(5.5, 5.0)
    ax = fig.subplots()
    auc = "" if math.isnan(c.roc_auc) else f" (AUC {c.roc_auc:.4f})"
    ax.plot(c.roc_fpr, c.roc_tpr, drawstyle="default", label=f"model{auc}")
    ax.plot([0, 1], [0, 1], linestyle="--", color="0.6", label="chance")
    ax.set_xlabel("false positive rate")
    ax.set_ylabel("true positive rate")
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1.01)
    ax.set_aspect("equal")
    ax.set_title(title)
    ax.legend(loc="lower right")
    return fig


def plot_calibration(
    curves: EvaluationCurves | Mapping[str, Any] | ResultView | str,
    *,
    title: str = "Calibration (federated evaluation)",
) -> Figure:
    """Reliability diagram from the evaluation's per-bin sums, with the weight per bin.

    Returns
    -------
    matplotlib.figure.Figure
        Two axes: observed share of positives against mean predicted probability (and the
        diagonal), and the weight of rows in each probability bin.
    """
    c = _curves(curves)
    if not c.calibration_predicted:
        raise ValueError("the evaluation holds no calibration sums (it ran with coarse_bins=None)")
    fig = _new_figure(5.5, 6.0)
    ax, ax_w = fig.subplots(2, 1, height_ratios=[3, 1], sharex=True)
    ax.plot([0, 1], [0, 1], linestyle="--", color="0.6", label="perfectly calibrated")
    ax.plot(c.calibration_predicted, c.calibration_observed, marker="o", label="model")
    ax.set_ylabel("observed share of positives")
    ax.set_ylim(0, 1.01)
    ax.set_title(title)
    ax.legend(loc="upper left")
    width = 1.0 / c.calibration_bins
    edges = np.floor(np.asarray(c.calibration_predicted) / width).clip(0, c.calibration_bins - 1)
    ax_w.bar(edges * width, c.calibration_weight, width=width, align="edge", color="tab:gray")
    ax_w.set_ylabel("rows")
    ax_w.set_xlabel("mean predicted probability")
    ax_w.set_xlim(0, 1)
    return fig


# -- participation --------------------------------------------------------------------------
def plot_participation(
    result: FederatedResult | ResultView | Mapping[str, Any] | str,
) -> Figure:
    """Which agency contributed to (and helped decrypt) each round, rounds from 1.

    Returns
    -------
    matplotlib.figure.Figure
        One axes: a grid of agencies × rounds (dark: contributed, light: absent), with a
        dot where the agency also decrypted.

    Raises
    ------
    ValueError
        No rounds, or more than :data:`MAX_ROUNDS` rounds or :data:`MAX_AGENCIES` agencies.
    """
    view = result_view(result)
    history = view.history
    _check_rounds(history)
    agencies: list[str] = []
    for r in history:
        for name in [*(r.get("contributors") or []), *(r.get("decryptors") or [])]:
            if name not in agencies:
                agencies.append(str(name))
    if not agencies:
        raise ValueError("no round of the result names a contributor")
    if len(agencies) > MAX_AGENCIES:
        raise ValueError(
            f"the result names {len(agencies):,} agencies; a chart draws at most {MAX_AGENCIES:,}"
        )
    agencies.sort()
    row = {a: i for i, a in enumerate(agencies)}
    grid = np.zeros((len(agencies), len(history)))
    dec_x: list[int] = []
    dec_y: list[int] = []
    for j, r in enumerate(history):
        for name in r.get("contributors") or []:
            grid[row[str(name)], j] = 1.0
        for name in r.get("decryptors") or []:
            dec_x.append(j + 1)
            dec_y.append(row[str(name)])
    fig = _new_figure(min(4.0 + 0.25 * len(history), 16.0), min(2.0 + 0.3 * len(agencies), 14.0))
    ax = fig.subplots()
    ax.imshow(
        grid,
        aspect="auto",
        cmap="Blues",
        vmin=0.0,
        vmax=1.25,
        interpolation="nearest",
        extent=(0.5, len(history) + 0.5, len(agencies) - 0.5, -0.5),
    )
    if dec_x:
        ax.scatter(dec_x, dec_y, s=12, color="tab:orange", label="also decrypted")
        ax.legend(loc="upper left", bbox_to_anchor=(1.01, 1.0))
    ax.set_yticks(range(len(agencies)), agencies if len(agencies) <= 60 else None)
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_xlabel("round")
    ax.set_ylabel("agency")
    ax.set_xticks(np.arange(0.5, len(history) + 1.0), minor=True)
    ax.set_yticks(np.arange(-0.5, len(agencies)), minor=True)
    ax.grid(which="minor", color="white", linewidth=1.0)
    ax.tick_params(which="minor", length=0)
    counts = grid.sum(axis=0)
    low, high = int(counts.min()), int(counts.max())
    spread = f"{high} in every round" if low == high else f"{low}–{high} per round"
    ax.set_title(f"Participation: {len(agencies)} agencies, contributors {spread}")
    return fig


# -- coefficients ---------------------------------------------------------------------------
def plot_coefficients(
    result: FederatedResult | ResultView | Mapping[str, Any] | str,
    *,
    feature_names: Sequence[str] | None = None,
    top: int | None = 30,
) -> Figure:
    """A GLM's coefficients with feature names, largest magnitude first.

    Parameters
    ----------
    result : FederatedResult, ResultView, mapping or str
        A GLM job's result (``model["type"] == "glm"``).
    feature_names : sequence of str, optional
        Names of the design columns (default: from the released preprocessing).
    top : int or None, default 30
        Draw only the ``top`` largest coefficients by magnitude (None: all, up to
        :data:`MAX_COEFFICIENTS`).

    Returns
    -------
    matplotlib.figure.Figure
        One axes of horizontal bars; numeric features are standardised, so a coefficient
        is the effect of one standard deviation (on the link scale).

    Raises
    ------
    ValueError
        Not a GLM, names that do not match the coefficients, or a bad ``top``.
    """
    view = result_view(result)
    if view.model.get("type") != "glm":
        raise ValueError(
            f"coefficient charts are for GLMs; this model is {view.model.get('type')!r}"
        )
    beta = np.asarray(view.model.get("beta", []), dtype=float)
    if beta.ndim != 1 or len(beta) < 2 or not np.isfinite(beta).all():
        raise ValueError("the GLM's beta must hold an intercept and at least one coefficient")
    names = list(feature_names) if feature_names is not None else view.feature_names()
    coef = beta[1:]
    if len(names) != len(coef):
        raise ValueError(f"{len(names)} feature names for {len(coef)} coefficients")
    if top is not None and (isinstance(top, bool) or not isinstance(top, int) or top < 1):
        raise ValueError(f"top must be a positive integer or None, got {top!r}")
    limit = MAX_COEFFICIENTS if top is None else min(top, MAX_COEFFICIENTS)
    order = np.argsort(-np.abs(coef), kind="stable")[:limit][::-1]
    fig = _new_figure(7.0, min(1.5 + 0.28 * len(order), 30.0))
    ax = fig.subplots()
    colors = ["tab:red" if coef[i] > 0 else "tab:blue" for i in order]
    ax.barh([str(names[i]) for i in order], coef[order], color=colors)
    ax.axvline(0.0, color="0.3", linewidth=0.8)
    family = view.model.get("family", "")
    ax.set_xlabel("coefficient (per standard deviation; one-hot levels per level)")
    shown = f"{len(order)} largest of {len(coef)}" if len(order) < len(coef) else f"{len(coef)}"
    ax.set_title(f"{family} GLM coefficients ({shown}; intercept {beta[0]:.3g})".replace("  ", " "))
    return fig


# -- saving ---------------------------------------------------------------------------------
def save_figure(fig: Figure, path: str | Path) -> Path:
    """Write a figure as PNG or SVG, chosen by the file's extension.

    Raises
    ------
    ValueError
        An extension other than ``.png`` or ``.svg``.
    """
    out = Path(path)
    fmt = out.suffix.lower().lstrip(".")
    if fmt not in FORMATS:
        raise ValueError(f"chart files end in .png or .svg, got {out.name!r}")
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, format=fmt, dpi=120)
    return out


def _check_formats(formats: Sequence[str]) -> list[str]:
    if isinstance(formats, str):
        formats = [formats]
    out = [f.lower().lstrip(".") for f in formats]
    bad = [f for f in out if f not in FORMATS]
    if bad or not out:
        raise ValueError(f"formats must be chosen from {FORMATS}, got {list(formats)!r}")
    return list(dict.fromkeys(out))


def save_result_plots(
    result: FederatedResult | ResultView | Mapping[str, Any] | str,
    directory: str | Path,
    *,
    metrics: Mapping[str, float] | None = None,
    formats: Sequence[str] = FORMATS,
    prefix: str = "",
) -> list[Path]:
    """Write every chart that applies to a result; returns the files written.

    Charts: ``training``, ``participation``, ``coefficients`` (GLMs), and ``roc`` and
    ``calibration`` (when a federated evaluation's curves are given or in the result).

    Parameters
    ----------
    result : FederatedResult, ResultView, mapping or str
    directory : str or Path
        Created if missing.
    metrics : mapping, optional
        What :meth:`LocalFederation.evaluate` returned (its ``curves`` give ROC and
        calibration charts).
    formats : sequence of {"png", "svg"}, default both
    prefix : str, default ""
        Prepended to every file name (e.g. ``"logistic-"``).
    """
    view = result_view(result, metrics)
    kinds = _check_formats(formats)
    if "/" in prefix or "\\" in prefix:
        raise ValueError(f"prefix must not hold a path separator, got {prefix!r}")
    figures: list[tuple[str, Figure]] = [
        ("training", plot_training_curves(view)),
        ("participation", plot_participation(view)),
    ]
    if view.model.get("type") == "glm":
        figures.append(("coefficients", plot_coefficients(view)))
    if view.curves is not None:
        figures.append(("roc", plot_roc(view.curves)))
        if view.curves.calibration_predicted:
            figures.append(("calibration", plot_calibration(view.curves)))
    base = Path(directory)
    return [
        save_figure(fig, base / f"{prefix}{name}.{kind}") for name, fig in figures for kind in kinds
    ]


def save_job_plots(
    result_json_or_result: FederatedResult | ResultView | Mapping[str, Any] | str | bytes,
    directory: str | Path,
    *,
    formats: Sequence[str] = FORMATS,
) -> list[Path]:
    """Write the charts of a job's result (e.g. ``fedcity job result ID --plot DIR``).

    Parameters
    ----------
    result_json_or_result : str, bytes, mapping, FederatedResult or ResultView
        The coordinator's ``JobResult.result_json`` (text or parsed) or a result object.
        ROC and calibration charts appear when the result carries evaluation curves
        (``"curves"``, written by :func:`~fedcity.learn.jobs.result_to_json`).
    directory : str or Path
    formats : sequence of {"png", "svg"}, default both

    Returns
    -------
    list of Path
        The files written.
    """
    return save_result_plots(result_view(result_json_or_result), directory, formats=formats)
