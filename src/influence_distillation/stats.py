"""Rank statistics shared by the method (held-out fidelity), the report (two runs' score agreement) and the benchmark
(average ranks of methods). At the bottom layer so each imports it directly, not through another layer's modules."""

from __future__ import annotations

import torch


def spearman(x, y) -> float:
    """Spearman rank correlation of two vectors: the Pearson correlation of their ranks, tied values sharing their
    average rank (as scipy's); 0 when either is constant."""
    rank_x, rank_y = average_ranks(torch.as_tensor(x)), average_ranks(torch.as_tensor(y))
    rank_x, rank_y = rank_x - rank_x.mean(), rank_y - rank_y.mean()
    return float((rank_x @ rank_y) / (rank_x.norm() * rank_y.norm()).clamp_min(1e-300))


def average_ranks(values: torch.Tensor) -> torch.Tensor:
    """0-based ranks, equal values sharing the mean of their positions."""
    order = values.argsort(stable=True)
    ordered = values[order]
    starts = torch.ones(len(values), dtype=torch.bool)
    starts[1:] = ordered[1:] != ordered[:-1]
    group = starts.cumsum(0) - 1  # each sorted position's run of equal values
    positions = torch.arange(len(values), dtype=torch.float64)
    size = int(group[-1]) + 1 if len(values) else 0
    sums = torch.zeros(size, dtype=torch.float64).index_add_(0, group, positions)
    counts = torch.zeros(size, dtype=torch.float64).index_add_(0, group, torch.ones_like(positions))
    ranks = torch.empty(len(values), dtype=torch.float64)
    ranks[order] = (sums / counts)[group]
    return ranks
