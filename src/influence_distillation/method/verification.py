"""Verification landmarks (`LandmarkConfig.verify`): after propagating from the first landmarks, exact values for the
samples the selection would take, added as landmarks in rounds, so the selection rests on exact influence where it
is made. How many a run places is the run's choice (`run/policy.verification_count`)."""

from __future__ import annotations

import numpy as np
import torch

from influence_distillation.config import LandmarkConfig, PropagationConfig
from influence_distillation.method.landmarks import target_neighbours
from influence_distillation.method.propagation import propagate
from influence_distillation.method.selection import row_means, select


def round_sizes(count: int, rounds: int) -> list[int]:
    """`count` split into `rounds` near-equal non-empty parts (fewer parts when count < rounds)."""
    return [size for r in range(rounds) if (size := round(count * (r + 1) / rounds) - round(count * r / rounds))]


def near_target_count(count: int, config: LandmarkConfig) -> int:
    """How many of `count` verification landmarks `verify_landmarks` gives to the target samples' neighbours."""
    return sum(_near_part(size, config.verify_neighbours) for size in round_sizes(count, config.verify_rounds))


def _near_part(size: int, share: float) -> int:
    """The rows of a verification round of `size` that go to the target samples' neighbours."""
    return round(share * size)


def verification_rows(scores: np.ndarray, landmarks: np.ndarray, count: int,
                      skipped: np.ndarray | None = None) -> np.ndarray:
    """The `count` samples with the highest propagated mean influence over the target samples, landmarks excluded
    (their values are exact already), and `skipped` rows too (ones the selection may not take): the consensus
    candidates of the selection, where an exact gradient confirms or removes a pick. (In a simulation on the
    benchmark suite, picking by the mean confirmed more of the final selection than picking each target sample's own
    best.)"""
    masked = row_means(scores)
    excluded = landmarks if skipped is None else np.concatenate([landmarks, skipped])
    masked[excluded] = masked.min() - 1.0  # below every other row: taken only if nothing else is left
    return select(masked[:, None], count, "top-k")


def verify_landmarks(embeddings: torch.Tensor, landmarks: np.ndarray, values: torch.Tensor, count: int, rounds: int,
                     config: PropagationConfig, seed: int, measure, out=None, queries: torch.Tensor | None = None,
                     neighbour_share: float = 0.0, neighbour_rows=None, skipped: np.ndarray | None = None):
    """Verification rounds: propagate from the landmarks so far, `measure` the exact values (l', t) of the
    `verification_rows` (called as measure(rows, round_number)), add them as landmarks, repeat. `out` is where each
    round's propagated scores go, as in `propagate`. With `queries` (the target samples' embeddings), each round
    gives `neighbour_share` of its rows to the `target_neighbours` instead of the highest propagated influence: nearest
    in `embeddings`, or in `neighbour_rows` (another embedding of the same pool rows, in the space of `queries`).
    `skipped` rows (ones the selection may not take) are verified only if nothing else is left.

    Returns the landmarks (sorted), their values, and the permutation that sorted the concatenation of the first
    landmarks and each round's rows in order, for callers that keep more per landmark than its values.
    """
    for number, size in enumerate(round_sizes(count, rounds), 1):
        near = _near_part(size, neighbour_share) if queries is not None else 0
        picks = np.zeros(0, dtype=np.int64)
        if size > near:  # the propagated scores are needed only for picks by influence
            scores, _ = propagate(embeddings, landmarks, values, config, seed, out)
            picks = verification_rows(scores, landmarks, size - near, skipped)
        if near:
            space = embeddings if neighbour_rows is None else neighbour_rows
            taken = [landmarks, picks] + ([] if skipped is None else [skipped])
            picks = np.concatenate([picks, target_neighbours(space, queries, np.concatenate(taken), near, seed)])
        values = torch.cat([values.reshape(len(landmarks), -1), measure(picks, number).reshape(len(picks), -1)])
        landmarks = np.concatenate([landmarks, picks])
    order = np.argsort(landmarks, kind="stable")
    return landmarks[order], values[torch.as_tensor(order)], order
