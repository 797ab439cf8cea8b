"""Turning an (N, t) score matrix into k distinct pool indices (paper §5.6).

Ties are broken towards the lower index, so the same scores always give the same selection.
"""

from __future__ import annotations

import numpy as np

from .errors import ConfigError


def descending_order(scores: np.ndarray) -> np.ndarray:
    """Indices by decreasing score; equal scores keep increasing index order."""
    return np.argsort(-scores, kind="stable")


def top_k(scores: np.ndarray, budget: int) -> np.ndarray:
    """The `budget` best rows of a score vector (N,) or, for a matrix (N, t), of its row means."""
    scores = np.asarray(scores, dtype=np.float64)
    mean = scores.mean(axis=1) if scores.ndim == 2 else scores
    _check(mean.shape[0], budget, mean)
    return descending_order(mean)[:budget]


def round_robin(scores: np.ndarray, budget: int, seed: int) -> np.ndarray:
    """Each round visits the target columns in a fresh seeded random order; each takes its best unselected row.

    Returns the selected row indices in the order they were taken.
    """
    scores = np.asarray(scores, dtype=np.float64)
    if scores.ndim == 1:
        scores = scores[:, None]
    num_rows, num_targets = scores.shape
    _check(num_rows, budget, scores)
    orders = [descending_order(scores[:, j]) for j in range(num_targets)]
    cursors = [0] * num_targets
    taken = np.zeros(num_rows, dtype=bool)
    picked: list[int] = []
    rng = np.random.default_rng(seed)
    while len(picked) < budget:
        for j in rng.permutation(num_targets):
            order = orders[j]
            while taken[order[cursors[j]]]:
                cursors[j] += 1
            row = int(order[cursors[j]])
            taken[row] = True
            picked.append(row)
            if len(picked) == budget:
                break
    return np.asarray(picked, dtype=np.int64)


SELECTORS = {"round-robin": lambda scores, budget, seed: round_robin(scores, budget, seed),
             "top-k": lambda scores, budget, seed: top_k(scores, budget)}


def select(scores: np.ndarray, budget: int, strategy: str = "round-robin", seed: int = 0) -> np.ndarray:
    if strategy not in SELECTORS:
        raise ConfigError(f"--selection: unknown strategy {strategy!r}; choose from {', '.join(SELECTORS)}")
    return SELECTORS[strategy](scores, budget, seed)


def _check(num_rows: int, budget: int, scores: np.ndarray) -> None:
    if not 0 < budget <= num_rows:
        raise ConfigError(f"--budget must be between 1 and the {num_rows} selectable pool samples, got {budget}")
    if not np.isfinite(scores).all():
        raise ValueError("scores contain NaN or infinity")
