"""Pictures of federated jobs: training curves, ROC and calibration, participation, coefficients.

Every chart is built from what a job released — a :class:`~fedcity.learn.FederatedResult`
(or the result JSON a coordinator returns) and, for ROC and calibration curves, the
:class:`~fedcity.learn.evaluation.EvaluationMetrics` of a federated evaluation, whose
secure histograms hold the curves. No chart needs anything an agency did not release.

::

    from fedcity.plots import save_result_plots

    metrics = federation.evaluate(result, test_agencies)
    for path in save_result_plots(result, "charts/", metrics=metrics):
        print(path)

Figures are plain :class:`matplotlib.figure.Figure` objects drawn with the Agg renderer (no
display, no global pyplot state); :func:`save_figure` writes PNG or SVG by the file's
extension.
"""

from fedcity.plots.charts import (
    FORMATS,
    MAX_AGENCIES,
    MAX_COEFFICIENTS,
    MAX_ROUNDS,
    ResultView,
    plot_calibration,
    plot_coefficients,
    plot_participation,
    plot_roc,
    plot_training_curves,
    result_view,
    save_figure,
    save_job_plots,
    save_result_plots,
)

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
