"""Turning an (N, t) score matrix into k distinct pool indices (paper §5.6).

Both strategies read the scores in row chunks and keep only, per target column, the best m = k + ⌈k/t⌉ rows: in
round-robin a column picks at most ⌈k/t⌉ rows and skips at most k rows taken by other columns, so it never looks
further down its order than that. Memory is O(t·(k + chunk)), so an N×t matrix that does not fit in memory (a
`np.memmap`) works as well as an in-memory one. Ties are broken towards the lower index, so the same scores always
give the same selection.
"""

from __future__ import annotations

import math

import numpy as np

CHUNK_ROWS = 1 << 16


def _ordered(values: np.ndarray, rows: np.ndarray) -> np.ndarray:
    """Positions sorting by decreasing value, then increasing row index."""
    return np.lexsort((rows, -values))


def column_candidates(scores, keep: int, chunk_rows: int | None = None) -> list[np.ndarray]:
    """For each column of `scores` (N, t), its `keep` best rows in descending order (ties: lower row first)."""
    num_rows, num_targets = scores.shape
    chunk_rows = chunk_rows or CHUNK_ROWS
    best_rows = [np.empty(0, dtype=np.int64) for _ in range(num_targets)]
    best_values = [np.empty(0) for _ in range(num_targets)]
    for start in range(0, num_rows, chunk_rows):
        block = np.asarray(scores[start : start + chunk_rows], dtype=np.float64)
        if not np.isfinite(block).all():
            raise ValueError("scores contain NaN or infinity")
        rows = np.arange(start, start + block.shape[0])
        for j in range(num_targets):
            values = np.concatenate([best_values[j], block[:, j]])
            candidates = np.concatenate([best_rows[j], rows])
            order = _ordered(values, candidates)[:keep]
            best_values[j], best_rows[j] = values[order], candidates[order]
    return best_rows


def _as_matrix(scores):
    return scores[:, None] if scores.ndim == 1 else scores


class _RowMeans:
    """A lazily computed (N, 1) view of the row means of an (N, t) matrix, read chunk by chunk."""

    def __init__(self, scores):
        self.scores, self.shape = scores, (scores.shape[0], 1)

    def __getitem__(self, rows: slice) -> np.ndarray:
        return row_means(self.scores[rows])[:, None]


def row_means(scores, chunk_rows: int | None = None) -> np.ndarray:
    """The mean of each row of an (N, t) matrix (or the values of a vector), float64, read `chunk_rows` at a time."""
    chunk_rows = chunk_rows or CHUNK_ROWS
    means = np.empty(scores.shape[0])
    for start in range(0, scores.shape[0], chunk_rows):
        part = np.asarray(scores[start : start + chunk_rows], dtype=np.float64)
        means[start : start + len(part)] = part.reshape(len(part), -1).mean(axis=1)
    return means


def top_k(scores, budget: int) -> np.ndarray:
    """The `budget` best rows of a score vector (N,) or, for a matrix (N, t), of its row means."""
    scores = _as_matrix(scores)
    _check(scores.shape[0], budget)
    return column_candidates(_RowMeans(scores), budget)[0]


def round_robin(scores, budget: int, seed: int) -> np.ndarray:
    """Each round visits the target columns in a fresh seeded random order; each takes its best unselected row.

    Returns the selected row indices in the order they were taken.
    """
    scores = _as_matrix(scores)
    num_rows, num_targets = scores.shape
    _check(num_rows, budget)
    orders = column_candidates(scores, min(num_rows, budget + math.ceil(budget / num_targets)))
    cursors = [0] * num_targets
    taken: set[int] = set()
    picked: list[int] = []
    rng = np.random.default_rng(seed)
    while len(picked) < budget:
        for j in rng.permutation(num_targets):
            order = orders[j]
            while int(order[cursors[j]]) in taken:
                cursors[j] += 1
            row = int(order[cursors[j]])
            taken.add(row)
            picked.append(row)
            if len(picked) == budget:
                break
    return np.asarray(picked, dtype=np.int64)


SELECTORS = {"round-robin": lambda scores, budget, seed: round_robin(scores, budget, seed),
             "top-k": lambda scores, budget, seed: top_k(scores, budget)}


def select(scores, budget: int, strategy: str = "round-robin", seed: int = 0,
           eligible: np.ndarray | None = None) -> np.ndarray:
    """`budget` rows by `strategy`; with `eligible` (N,) bool, only eligible rows (at least `budget` of them)."""
    if strategy not in SELECTORS:
        raise ValueError(f"strategy={strategy!r} is not one of {', '.join(SELECTORS)}")
    if eligible is not None:
        if int(np.count_nonzero(eligible)) < budget:
            raise ValueError(f"budget={budget} exceeds the {int(np.count_nonzero(eligible))} eligible rows")
        scores = _OnlyEligible(_as_matrix(scores), eligible)
    return SELECTORS[strategy](scores, budget, seed)


class _OnlyEligible:
    """An (N, t) score matrix read chunk by chunk in which ineligible rows score -1e300, below any real score (and
    finite, so row means stay finite)."""

    ndim = 2

    def __init__(self, scores, eligible: np.ndarray):
        self.scores, self.eligible, self.shape = scores, np.asarray(eligible, dtype=bool), scores.shape

    def __getitem__(self, rows: slice) -> np.ndarray:
        block = np.array(self.scores[rows], dtype=np.float64)
        block[~self.eligible[rows]] = -1e300
        return block


def _check(num_rows: int, budget: int) -> None:
    """The argument's own precondition (a run's budget is checked before: by its config's `validate`, then against the
    pool's size when it is known)."""
    if not 0 < budget <= num_rows:
        raise ValueError(f"budget={budget} must be between 1 and the {num_rows} rows of the scores")
