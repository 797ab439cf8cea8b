"""Choosing the landmark samples that get exact gradients (paper §5.3).

Strategies are functions `(num_samples, count, seed, embeddings) -> sorted indices`, registered in `STRATEGIES`
by the name used on the command line; smarter strategies (k-means++, k-center) take the embeddings.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import torch

from .errors import ConfigError

Strategy = Callable[[int, int, int, torch.Tensor | None], np.ndarray]


def random_landmarks(num_samples: int, count: int, seed: int, embeddings: torch.Tensor | None = None) -> np.ndarray:
    """`count` distinct indices drawn uniformly at random, sorted."""
    return np.sort(np.random.default_rng(seed).choice(num_samples, size=count, replace=False))


STRATEGIES: dict[str, Strategy] = {"random": random_landmarks}


def landmark_count(requested: float, num_samples: int) -> int:
    """An integer count, or a fraction of the pool when below 1; at least 1 and at most the pool."""
    count = round(requested * num_samples) if requested < 1 else int(requested)
    return max(1, min(count, num_samples))


def choose_landmarks(
    num_samples: int, requested: float, seed: int, strategy: str = "random", embeddings: torch.Tensor | None = None
) -> np.ndarray:
    if strategy not in STRATEGIES:
        raise ConfigError(f"--landmark-strategy: unknown strategy {strategy!r}; choose from {', '.join(STRATEGIES)}")
    return STRATEGIES[strategy](num_samples, landmark_count(requested, num_samples), seed, embeddings)
