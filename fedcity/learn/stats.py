"""Federated preprocessing statistics: counts, category levels, means and variances.

Three rounds, each a secure sum:

1. ``stats.counts`` — rows, Σ weights, and per declared category level the (weighted-free) row
   count. The federation learns which levels exist in total, never which agency holds them.
2. ``stats.mean`` — Σ w·x / W for every numeric column (W from round 1).
3. ``stats.variance`` — Σ w·(x - mean)² / W, centred on the released means, which avoids the
   cancellation of Σx² - (Σx)²/W on features with large offsets. One packing bound serves the
   whole vector, so columns whose variance is tiny next to the largest get few significant
   bits; a fourth round then repeats the sum with every column divided by its coarse variance
   (a public, released figure), which restores full relative precision.

The result is a :class:`~fedcity.learn.design.Preprocessing` that every later task carries.

Differential privacy: these sums are released exactly (counts, means, variances), so a job
with differential privacy does not run them. It is given *public* preprocessing instead
(``FederatedStatistics(spec, public=...)``, e.g. from
:func:`fedcity.learn.dp.public_preprocessing`), asks no round at all, and every release of
the job is a noisy, accounted training release (see ``docs/privacy.md`` §1).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

import numpy as np
import numpy.typing as npt

from fedcity.core.tasks import TaskRequest, local_step
from fedcity.learn.algorithm import Algorithm, RoundRecord
from fedcity.learn.design import Preprocessing

if TYPE_CHECKING:
    from fedcity.data.dataset import AgencyDataset, FeatureSpec

__all__ = ["FederatedStatistics", "check_public_preprocessing"]

_COUNT_CLIP = float(2**24)  # widened automatically if an agency holds more rows


@local_step("stats.counts")
def _counts(params: Mapping[str, Any], data: AgencyDataset) -> npt.NDArray[np.float64]:
    out = [float(data.n_samples), float(data.sample_weight().sum())]
    for col in params["categorical"]:
        out += [float(c) for c in data.level_counts(col)]
    return np.asarray(out)


@local_step("stats.mean")
def _mean(params: Mapping[str, Any], data: AgencyDataset) -> npt.NDArray[np.float64]:
    w = data.sample_weight()
    result: npt.NDArray[np.float64] = w @ data.X_numeric() / float(params["total_weight"])
    return result


@local_step("stats.variance")
def _variance(params: Mapping[str, Any], data: AgencyDataset) -> npt.NDArray[np.float64]:
    w = data.sample_weight()
    centred = data.X_numeric() - np.asarray(params["mean"])
    unit = np.asarray(params.get("unit") or np.ones(centred.shape[1]))
    result: npt.NDArray[np.float64] = w @ (centred**2) / (float(params["total_weight"]) * unit)
    return result


def check_public_preprocessing(pre: Preprocessing, spec: FeatureSpec) -> None:
    """Refuse public preprocessing that does not fit the declared features.

    Parameters
    ----------
    pre : Preprocessing
    spec : FeatureSpec

    Raises
    ------
    ValueError
        The message names the mismatch.
    """
    if not isinstance(pre, Preprocessing):
        raise ValueError(f"preprocessing must be a Preprocessing, got {type(pre).__name__}")
    if tuple(pre.numeric) != tuple(spec.numeric):
        raise ValueError(
            f"preprocessing: numeric columns {list(pre.numeric)} differ from the dataset's "
            f"{list(spec.numeric)}"
        )
    n = len(pre.numeric)
    if len(pre.mean) != n or len(pre.scale) != n:
        raise ValueError(f"preprocessing: mean and scale must have {n} values each")
    if not all(np.isfinite(pre.mean)) or not all(np.isfinite(s) and s > 0 for s in pre.scale):
        raise ValueError("preprocessing: means must be finite and scales positive and finite")
    declared = {c: tuple(v) for c, v in spec.categorical.items()}
    given = {c: (tuple(v), tuple(k)) for c, v, k in pre.categorical}
    if list(given) != list(declared):
        raise ValueError(
            f"preprocessing: categorical columns {list(given)} differ from the dataset's "
            f"{list(declared)}"
        )
    for col, (vocab, kept) in given.items():
        if vocab != declared[col]:
            raise ValueError(f"preprocessing: the vocabulary of {col!r} differs from the dataset's")
        if not set(kept) <= set(vocab) or len(set(kept)) != len(kept):
            raise ValueError(f"preprocessing: kept levels of {col!r} must be distinct levels of it")
    if not (np.isfinite(pre.total_weight) and pre.total_weight > 0):
        raise ValueError(f"preprocessing: total_weight must be positive, got {pre.total_weight!r}")
    if isinstance(pre.n_samples, bool) or not isinstance(pre.n_samples, int) or pre.n_samples < 1:
        raise ValueError(
            f"preprocessing: n_samples must be a positive integer, got {pre.n_samples!r}"
        )


class FederatedStatistics(Algorithm):
    """Learn global preprocessing from secure sums over agencies.

    Parameters
    ----------
    spec : FeatureSpec
        The declared features: numeric columns and categorical columns with vocabularies.
    public : Preprocessing, optional
        Public preprocessing that does not depend on the agencies' data: no round is run and
        it is the result as given (what a job with differential privacy uses).

    Raises
    ------
    ValueError
        ``public`` does not fit ``spec`` (the message names the column).
    """

    def __init__(self, spec: FeatureSpec, *, public: Preprocessing | None = None) -> None:
        self.spec = spec
        self.numeric = tuple(spec.numeric)
        self.vocab = {c: tuple(v) for c, v in spec.categorical.items()}
        self._stage = 0
        self.n_samples_: int | None = None
        self.total_weight_: float | None = None
        self.level_counts_: dict[str, npt.NDArray[np.int64]] = {}
        self.mean_: npt.NDArray[np.float64] | None = None
        self.var_: npt.NDArray[np.float64] | None = None
        self.result_: Preprocessing | None = None
        self.public = public
        if public is not None:
            check_public_preprocessing(public, spec)
            self.result_ = public
            self.n_samples_ = public.n_samples
            self.total_weight_ = public.total_weight
            self._stage = 4

    @property
    def max_rounds(self) -> int:
        """Three or four secure sums (none with public preprocessing)."""
        return 0 if self.public is not None else 4

    def next_request(self) -> TaskRequest | None:
        """Counts, then means, then variances (nothing with public preprocessing)."""
        if self._stage >= 4:
            return None
        if self._stage == 0:
            length = 2 + sum(len(v) for v in self.vocab.values())
            return TaskRequest(
                "stats.counts",
                {"categorical": list(self.vocab)},
                length,
                clip=_COUNT_CLIP,
                precision_bits=52,
                label="statistics: counts and category levels",
            )
        if not self.numeric:
            self._stage = 4
        if self._stage == 1:
            return TaskRequest(
                "stats.mean",
                {"total_weight": self.total_weight_},
                len(self.numeric),
                clip=1024.0,
                label="statistics: means",
            )
        if self._stage == 2:
            assert self.mean_ is not None
            return TaskRequest(
                "stats.variance",
                {"total_weight": self.total_weight_, "mean": self.mean_.tolist()},
                len(self.numeric),
                clip=1024.0,
                label="statistics: variances",
            )
        if self._stage == 3:
            assert self.mean_ is not None and self.var_ is not None
            unit = np.where(self.var_ > 0, self.var_, 1.0)
            return TaskRequest(
                "stats.variance",
                {
                    "total_weight": self.total_weight_,
                    "mean": self.mean_.tolist(),
                    "unit": unit.tolist(),
                },
                len(self.numeric),
                clip=4.0,
                label="statistics: variances, refined",
            )
        return None

    def update(
        self, request: TaskRequest, released: npt.NDArray[np.float64], record: RoundRecord
    ) -> None:
        """Store each stage's released sums; build the preprocessing after the last."""
        if request.kind == "stats.counts":
            # row and level counts are integers; the weight sum need not be
            counts = np.rint(released).astype(np.int64)
            self.n_samples_ = int(counts[0])
            self.total_weight_ = float(released[1])
            if self.total_weight_ <= 0:
                raise ValueError("the agencies' sample weights sum to zero")
            pos = 2
            for col, vocab in self.vocab.items():
                self.level_counts_[col] = counts[pos : pos + len(vocab)]
                pos += len(vocab)
            self._stage = 1
        elif request.kind == "stats.mean":
            self.mean_ = released.copy()
            self._stage = 2
        elif request.kind == "stats.variance" and "unit" not in request.params:
            self.var_ = np.maximum(released, 0.0)
            # relative precision of the smallest variances given the bound finally used
            step = 2.0 * record.clip / 2.0**request.precision_bits * len(record.contributors)
            positive = self.var_[self.var_ > 0]
            coarse = positive.size > 0 and float(positive.min()) < step * 2.0**30
            self._stage = 3 if coarse else 4
        elif request.kind == "stats.variance":
            self.var_ = np.maximum(released, 0.0) * np.asarray(request.params["unit"])
            self._stage = 4
        if self._stage == 4 and self.result_ is None:
            self._finish()

    def _finish(self) -> None:
        assert self.n_samples_ is not None and self.total_weight_ is not None
        if self.numeric:
            assert self.mean_ is not None and self.var_ is not None
            std = np.sqrt(self.var_)
            # like StandardScaler: constant features keep scale 1
            scale = np.where(
                std < 10 * np.finfo(np.float64).eps * np.maximum(np.abs(self.mean_), 1), 1.0, std
            )
            mean = tuple(float(m) for m in self.mean_)
            scales = tuple(float(s) for s in scale)
        else:
            mean, scales = (), ()
        categorical = tuple(
            (
                col,
                vocab,
                tuple(lv for lv, c in zip(vocab, self.level_counts_[col], strict=True) if c > 0),
            )
            for col, vocab in self.vocab.items()
        )
        self.result_ = Preprocessing(
            numeric=self.numeric,
            mean=mean,
            scale=scales,
            categorical=categorical,
            total_weight=self.total_weight_,
            n_samples=self.n_samples_,
        )
