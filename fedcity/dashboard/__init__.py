"""A read-only web dashboard of a running coordinator.

``fedcity coordinator serve --dashboard-port N`` serves it beside the gRPC API (HTTPS with
the coordinator's certificate; plain HTTP only with ``--insecure`` on loopback). It shows the
federation's health, the connected agencies (last heartbeat, declared datasets and tables,
allowed steps), the caller's jobs round by round (seconds and bytes per stage), the agencies
that left each job and why, and released results with their charts.

It reads the coordinator only through its snapshot calls
(:class:`~fedcity.net.coordinator.snapshot.SnapshotCalls`), behind the same bearer tokens and
roles as the gRPC API: a data scientist sees health, agencies and their own jobs; an agency
has no access. No contribution, partial decryption, aggregate or figure of a single agency
ever reaches it. The web layer is a thin shell: Starlette, server-rendered Jinja2 templates
without script, inline SVG charts, JSON endpoints under ``/api/``.
"""

from fedcity.dashboard.app import create_app, result_summary
from fedcity.dashboard.charts import ChartCache, result_charts, stacked_bars_svg
from fedcity.dashboard.server import DashboardServer

__all__ = [
    "ChartCache",
    "DashboardServer",
    "create_app",
    "result_charts",
    "result_summary",
    "stacked_bars_svg",
]
