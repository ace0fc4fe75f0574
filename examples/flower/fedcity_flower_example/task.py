"""A numpy logistic regression on scikit-learn's bundled breast-cancer data (offline)."""

from __future__ import annotations

import numpy as np
from sklearn.datasets import load_breast_cancer

N_FEATURES = 30


def load_partition(partition_id: int, num_partitions: int) -> tuple[np.ndarray, np.ndarray]:
    """Standardised features and labels of one node's share of the data (disjoint, fixed)."""
    x, y = load_breast_cancer(return_X_y=True)
    x = (x - x.mean(axis=0)) / x.std(axis=0)
    order = np.random.default_rng(0).permutation(len(y))
    part = np.array_split(order, num_partitions)[partition_id]
    return x[part], y[part].astype(np.float64)


def initial_model() -> dict[str, np.ndarray]:
    return {"coef": np.zeros(N_FEATURES, dtype=np.float64), "intercept": np.zeros(1)}


def _sigmoid(z: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-np.clip(z, -30, 30)))


def train(
    model: dict[str, np.ndarray], x: np.ndarray, y: np.ndarray, epochs: int, lr: float
) -> tuple[dict[str, np.ndarray], float]:
    w, b = model["coef"].copy(), model["intercept"].copy()
    for _ in range(epochs):
        p = _sigmoid(x @ w + b[0])
        w -= lr * (x.T @ (p - y) / len(y) + 1e-3 * w)
        b -= lr * np.array([np.mean(p - y)])
    return {"coef": w, "intercept": b}, log_loss(w, b, x, y)


def log_loss(w: np.ndarray, b: np.ndarray, x: np.ndarray, y: np.ndarray) -> float:
    p = np.clip(_sigmoid(x @ w + b[0]), 1e-12, 1 - 1e-12)
    return float(-np.mean(y * np.log(p) + (1 - y) * np.log(1 - p)))


def accuracy(model: dict[str, np.ndarray], x: np.ndarray, y: np.ndarray) -> float:
    p = _sigmoid(x @ model["coef"] + model["intercept"][0])
    return float(np.mean((p > 0.5) == (y > 0.5)))
