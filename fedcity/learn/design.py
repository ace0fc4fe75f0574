"""Public preprocessing parameters and the design matrix an agency builds from them.

Global standardisation and one-hot levels are learned from securely summed statistics
(:mod:`fedcity.learn.stats`) and travel to agencies inside each task as plain JSON: they are
released aggregates, not anyone's records. Every agency builds the same design matrix
from its own rows; the fitted :class:`~fedcity.data.preprocess.FederatedPreprocessor` in the
returned scikit-learn pipeline applies exactly the same transformation at prediction time.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np
import numpy.typing as npt

if TYPE_CHECKING:
    from fedcity.data.dataset import AgencyDataset

__all__ = ["Preprocessing", "design_matrix"]


@dataclass(frozen=True)
class Preprocessing:
    """Released global preprocessing: means, scales and the one-hot levels kept.

    Attributes
    ----------
    numeric : tuple of str
    mean, scale : tuple of float
        Weighted global mean and population standard deviation (1.0 where it is 0).
    categorical : tuple of (column, vocabulary, kept levels)
        Levels are kept when their global count is positive, in declared order.
    total_weight : float
        Σ sample weights over all contributing agencies.
    n_samples : int
    """

    numeric: tuple[str, ...]
    mean: tuple[float, ...]
    scale: tuple[float, ...]
    categorical: tuple[tuple[str, tuple[str, ...], tuple[str, ...]], ...]
    total_weight: float
    n_samples: int

    @property
    def n_features(self) -> int:
        """Columns of the design matrix, without the intercept."""
        return len(self.numeric) + sum(len(kept) for _, _, kept in self.categorical)

    def feature_names(self) -> list[str]:
        """Names of the design-matrix columns, as scikit-learn's one-hot names them."""
        names = list(self.numeric)
        for col, _, kept in self.categorical:
            names += [f"{col}_{level}" for level in kept]
        return names

    def to_params(self) -> dict[str, Any]:
        """JSON-serialisable form carried in task parameters."""
        return {
            "numeric": list(self.numeric),
            "mean": list(self.mean),
            "scale": list(self.scale),
            "categorical": [[c, list(v), list(k)] for c, v, k in self.categorical],
            "total_weight": self.total_weight,
            "n_samples": self.n_samples,
        }

    @classmethod
    def from_params(cls, params: Mapping[str, Any]) -> Preprocessing:
        """Inverse of :meth:`to_params`."""
        return cls(
            numeric=tuple(params["numeric"]),
            mean=tuple(float(v) for v in params["mean"]),
            scale=tuple(float(v) for v in params["scale"]),
            categorical=tuple((str(c), tuple(v), tuple(k)) for c, v, k in params["categorical"]),
            total_weight=float(params["total_weight"]),
            n_samples=int(params["n_samples"]),
        )


def design_matrix(pre: Preprocessing, dataset: AgencyDataset) -> npt.NDArray[np.float64]:
    """Standardised numerics then one-hot columns, for one agency's rows (no intercept)."""
    blocks: list[npt.NDArray[np.float64]] = []
    if pre.numeric:
        x = dataset.X_numeric()
        blocks.append((x - np.asarray(pre.mean)) / np.asarray(pre.scale))
    if pre.categorical:
        codes = dataset.categorical_codes()
        names = list(dataset.spec.categorical)
        for col, vocab, kept in pre.categorical:
            column_codes = codes[:, names.index(col)]
            kept_codes = np.array([vocab.index(level) for level in kept], dtype=np.int64)
            blocks.append((column_codes[:, None] == kept_codes[None, :]).astype(np.float64))
    if not blocks:
        return np.zeros((dataset.n_samples, 0))
    return np.hstack(blocks)
