"""Sample data for trying a federation: one CSV per agency, drawn by :func:`make_city`.

``fedcity data synth --agencies 5 --out data/`` writes ``data/<agency>/<task>.csv`` (one
district's rows each, with very unequal sizes and different feature mixes) and
``data/<agency>/<task>_holdout.csv`` (that district's held-out rows, for an evaluation). The
``agency.toml`` templates written by ``fedcity keys deal --data-dir data/`` point at these
files and declare their columns (:func:`sample_columns`).
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal, cast

from fedcity.data.dataset import FeatureSpec
from fedcity.data.synthetic import MIN_AGENCY_ROWS, make_city

__all__ = [
    "SAMPLE_TASK",
    "SAMPLE_TASKS",
    "SampleError",
    "SampleFiles",
    "sample_columns",
    "sample_path",
    "sample_spec",
    "write_sample_data",
]

SampleTask = Literal["flood", "fire", "service_demand", "elder_risk"]
SAMPLE_TASKS: tuple[str, ...] = ("flood", "fire", "service_demand", "elder_risk")
"""Tasks :func:`make_city` draws (flood, fire and elder_risk are binary, service_demand counts)."""
SAMPLE_TASK = "flood"
"""The task the walkthrough and the ``agency.toml`` templates use."""
MAX_SAMPLE_AGENCIES = 100
MAX_SAMPLE_ROWS = 10_000_000


class SampleError(ValueError):
    """Invalid options for the sample data, or an existing file."""


def sample_spec(task: str = SAMPLE_TASK) -> FeatureSpec:
    """The declared columns of the sample table of ``task`` (the same for every seed).

    Parameters
    ----------
    task : str, default "flood"
        One of :data:`SAMPLE_TASKS`.

    Returns
    -------
    FeatureSpec
    """
    _check_task(task)
    return make_city(2, task=cast(SampleTask, task), n_samples=2 * MIN_AGENCY_ROWS, seed=0).spec


def sample_columns(task: str = SAMPLE_TASK) -> dict[str, str]:
    """Column types of the sample table for a ``[tables.<name>]`` section (federated queries)."""
    spec = sample_spec(task)
    columns = {c: "float" for c in spec.numeric}
    columns.update({c: "category" for c in spec.categorical})
    columns[spec.label] = "integer"
    return columns


def sample_path(root: str | os.PathLike[str], agency: str, task: str = SAMPLE_TASK) -> Path:
    """Where :func:`write_sample_data` puts an agency's table: ``root/<agency>/<task>.csv``."""
    return Path(root) / agency / f"{task}.csv"


def _check_task(task: str) -> None:
    if task not in SAMPLE_TASKS:
        raise SampleError(f"unknown task {task!r}; choose one of {', '.join(SAMPLE_TASKS)}")


@dataclass(frozen=True)
class SampleFiles:
    """What :func:`write_sample_data` wrote: per agency its table, held-out rows and sizes."""

    tables: dict[str, Path]
    holdout: dict[str, Path]
    rows: dict[str, int]


def write_sample_data(
    out: str | os.PathLike[str],
    agencies: Sequence[str],
    *,
    task: str = SAMPLE_TASK,
    rows: int = 6000,
    seed: int = 2026,
    force: bool = False,
) -> SampleFiles:
    """Write one synthetic table per agency (and its held-out rows) under ``out``.

    Parameters
    ----------
    out : str or path-like
        Folder (created if needed).
    agencies : sequence of str
        Agency names, largest district first; ``make_city`` draws ``len(agencies)`` districts
        and agency ``i`` receives district ``i``'s rows.
    task : str, default "flood"
        One of :data:`SAMPLE_TASKS`.
    rows : int, default 6000
        Training rows over all agencies, at least 30 per agency.
    seed : int, default 2026
    force : bool, default False
        Overwrite existing files.

    Returns
    -------
    SampleFiles

    Raises
    ------
    SampleError
        Bad options or an existing file without ``force``.
    """
    _check_task(task)
    names = list(agencies)
    if not 1 <= len(names) <= MAX_SAMPLE_AGENCIES:
        raise SampleError(f"agencies: give 1 to {MAX_SAMPLE_AGENCIES}, got {len(names)}")
    if len(set(names)) != len(names):
        raise SampleError(f"agency names must be unique: {names}")
    if not MIN_AGENCY_ROWS * len(names) <= rows <= MAX_SAMPLE_ROWS:
        raise SampleError(
            f"rows must lie in [{MIN_AGENCY_ROWS * len(names)}, {MAX_SAMPLE_ROWS:,}] for "
            f"{len(names)} agencies ({MIN_AGENCY_ROWS} rows each at least), got {rows}"
        )
    root = Path(out)
    tables = {a: sample_path(root, a, task) for a in names}
    holdout = {a: p.with_name(f"{task}_holdout.csv") for a, p in tables.items()}
    existing = [str(p) for p in [*tables.values(), *holdout.values()] if p.exists()]
    if existing and not force:
        raise SampleError(f"refusing to overwrite {', '.join(existing)} (use --force)")
    city = make_city(max(len(names), 2), task=cast(SampleTask, task), n_samples=rows, seed=seed)
    label = city.spec.label
    sizes: dict[str, int] = {}
    for name, district in zip(names, city.agencies, strict=False):
        frame = district.to_frame()
        frame[label] = frame[label].round().astype("int64")
        test = city.test[city.test["district"] == district.agency].drop(columns="district")
        test = test.assign(**{label: test[label].round().astype("int64")})
        tables[name].parent.mkdir(parents=True, exist_ok=True)
        frame.to_csv(tables[name], index=False)
        test.to_csv(holdout[name], index=False)
        sizes[name] = len(frame)
    return SampleFiles(tables=tables, holdout=holdout, rows=sizes)
