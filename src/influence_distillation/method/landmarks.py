"""Choosing the landmark samples that get exact gradients (paper §5.3).

Strategies are functions `(num_samples, count, seed, embeddings) -> sorted indices`, registered in `STRATEGIES`
by the name used on the command line: `random` (the paper's), and `kmeans++` / `k-center` in embedding space.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import torch

from influence_distillation.errors import ConfigError
from influence_distillation.method.selection import round_robin

Strategy = Callable[[int, int, int, torch.Tensor | None], np.ndarray]


def random_landmarks(num_samples: int, count: int, seed: int, embeddings: torch.Tensor | None = None) -> np.ndarray:
    """`count` distinct indices drawn uniformly at random, sorted."""
    return np.sort(np.random.default_rng(seed).choice(num_samples, size=count, replace=False))


def _needs_embeddings(name: str, embeddings: torch.Tensor | None) -> torch.Tensor:
    if embeddings is None:
        raise ConfigError(f"LandmarkConfig.strategy={name!r} needs embeddings (it is not available with "
                          "InfluenceConfig.exact=True)")
    return embeddings.double()


def _squared_distances(points: torch.Tensor):
    """Squared distances from every point to point i, as ‖x‖² − 2x·xᵢ + ‖xᵢ‖²: one matrix-vector product per
    landmark instead of a fresh N × d temporary per landmark (8 GB in float64 at a million 1024-dimensional
    embeddings). Where that expansion is within rounding error of zero (near-duplicates, or embeddings far from the
    origin), the distance is recomputed directly, so a copy of a landmark is exactly as far from it as a direct
    difference says: zero."""
    points = points.double()  # a no-op for `_needs_embeddings`' output
    norms = points.square().sum(1)
    rounding = 16 * torch.finfo(points.dtype).eps

    def distance(i: int) -> torch.Tensor:
        squared = norms - 2 * (points @ points[i]) + norms[i]
        close = torch.nonzero(squared <= rounding * (norms + norms[i])).squeeze(1)
        if close.numel():
            squared[close] = (points[close] - points[i]).square().sum(1)
        return squared.clamp_min(0)

    return distance


def kmeanspp_landmarks(num_samples: int, count: int, seed: int, embeddings: torch.Tensor | None = None) -> np.ndarray:
    """k-means++ seeding in embedding space: each next landmark is drawn with probability ∝ its squared distance to
    the nearest landmark so far, so dense regions get landmarks and so do outliers, in proportion."""
    points = _needs_embeddings("kmeans++", embeddings)
    rng = np.random.default_rng(seed)
    chosen = [int(rng.integers(num_samples))]
    distance = _squared_distances(points)
    nearest = distance(chosen[0])
    for _ in range(count - 1):
        weights = nearest.numpy()
        total = weights.sum()
        candidates = np.flatnonzero(weights > 0)
        if total <= 0 or candidates.size == 0:  # every remaining point coincides with a landmark
            remaining = np.setdiff1d(np.arange(num_samples), chosen)
            chosen += rng.choice(remaining, size=count - len(chosen), replace=False).tolist()
            break
        pick = int(rng.choice(num_samples, p=weights / total))
        chosen.append(pick)
        nearest = torch.minimum(nearest, distance(pick))
    return np.sort(np.asarray(chosen))


def kcenter_landmarks(num_samples: int, count: int, seed: int, embeddings: torch.Tensor | None = None) -> np.ndarray:
    """Greedy k-center (farthest-point) in embedding space: each next landmark is the sample farthest from all
    landmarks so far, which bounds the distance from any sample to its nearest landmark."""
    points = _needs_embeddings("k-center", embeddings)
    chosen = [int(np.random.default_rng(seed).integers(num_samples))]
    distance = _squared_distances(points)
    nearest = distance(chosen[0])
    for _ in range(count - 1):
        pick = int(nearest.argmax())
        chosen.append(pick)
        nearest = torch.minimum(nearest, distance(pick))
    return np.sort(np.asarray(chosen))


STRATEGIES: dict[str, Strategy] = {"random": random_landmarks, "kmeans++": kmeanspp_landmarks,
                                   "k-center": kcenter_landmarks}


# The default rule (`--landmarks -1`): a fraction of the pool between a floor and a cap. Past the cap the landmark
# gradients (about 20 JVP embeddings' worth each) are a fixed cost, so the run grows only with its cheapest
# per-sample stage; what KRR needs is a number of landmarks covering the embedding space, not a share of the pool.
AUTO_FRACTION, AUTO_FLOOR, AUTO_CAP = 0.05, 32, 128


def landmark_count(requested: float, num_samples: int) -> int:
    """An integer count, a fraction of the pool when below 1, or for -1 the default rule (`AUTO_*`: 5% of the pool,
    at least 32, at most 128); at least 1 and at most the pool."""
    if requested == -1:
        count = min(max(round(AUTO_FRACTION * num_samples), AUTO_FLOOR), AUTO_CAP)
    else:
        count = round(requested * num_samples) if requested < 1 else int(requested)
    return max(1, min(count, num_samples))


def choose_landmarks(
    num_samples: int, requested: float, seed: int, strategy: str = "random", embeddings: torch.Tensor | None = None
) -> np.ndarray:
    if strategy not in STRATEGIES:
        raise ValueError(f"strategy={strategy!r} is not one of {', '.join(STRATEGIES)}")
    return STRATEGIES[strategy](num_samples, landmark_count(requested, num_samples), seed, embeddings)


def target_neighbours(embeddings, queries: torch.Tensor, exclude: np.ndarray, count: int, seed: int = 0) -> np.ndarray:
    """`count` pool rows nearest by cosine to the target samples' embeddings `queries` (t, d_e), taken round-robin
    over the target samples (each takes its nearest row not yet taken); rows in `exclude` are never taken.

    Why: a pool region without landmarks is ranked by the KRR's extrapolation, and the pool samples nearest a target
    sample are where its largest influences are likely (on the benchmark suite's multirc target, the examples of the
    target's own task and its siblings). An exact gradient there finds what propagation from random landmarks misses.
    `embeddings` may be a tensor or anything with row slices (a lazy shard reader): the similarities are computed a
    chunk at a time as the selection reads them, never held whole."""
    return round_robin(_CosineToTargets(embeddings, queries, exclude), min(count, embeddings.shape[0]), seed)


class _CosineToTargets:
    """The (N, t) cosine similarities of pool rows to the target samples, computed for the rows a slice asks for;
    excluded rows read −2, below every cosine, so they are taken only if nothing else is left."""

    ndim = 2

    def __init__(self, embeddings, queries: torch.Tensor, exclude: np.ndarray):
        self.embeddings, self.queries = embeddings, torch.nn.functional.normalize(queries.double(), dim=1)
        self.shape = (embeddings.shape[0], queries.shape[0])
        self.excluded = np.zeros(self.shape[0], dtype=bool)
        self.excluded[np.asarray(exclude, dtype=np.int64)] = True

    def __getitem__(self, rows: slice) -> np.ndarray:
        block = torch.as_tensor(np.asarray(self.embeddings[rows])).double()
        similarity = (torch.nn.functional.normalize(block, dim=1) @ self.queries.T).numpy()
        similarity[self.excluded[rows]] = -2.0
        return similarity
