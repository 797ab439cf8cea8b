"""Kernel ridge regression from landmarks to the whole pool (paper §5.2).

k(x, y) = exp(−‖x − y‖² / 2σ²) on the embeddings, σ from the median heuristic over (at most 1000) landmarks. The fit
solves (K_LL + δ·mean(diag K_LL)·I) V = P_L once for all target columns (one Cholesky factorisation, t right-hand
sides); the prediction k(E, E_L) V streams over the pool in row chunks, so memory is O(chunk × l). `propagate` is
the stage (the landmarks keep their exact values); `propagation_matrix` the dense coefficients the weights need.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from influence_distillation.config import PropagationConfig
from influence_distillation.stats import spearman


def squared_distances(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """‖x_i − y_j‖² for rows of x (n, d) and y (m, d), clamped at 0 against round-off."""
    return (x.square().sum(1, keepdim=True) + y.square().sum(1) - 2 * x @ y.T).clamp_min(0)


def median_bandwidth(points: torch.Tensor, max_points: int = 1000, seed: int = 0) -> float:
    """sqrt of the median pairwise squared distance among at most `max_points` seeded-random points (≥ 1e-6)."""
    if points.shape[0] > max_points:
        keep = torch.randperm(points.shape[0], generator=torch.Generator().manual_seed(seed))[:max_points]
        points = points[keep]
    distances = squared_distances(points.double(), points.double())
    upper = distances[torch.triu_indices(*distances.shape, offset=1).unbind()]
    if upper.numel() == 0:
        return 1.0
    return max(upper.median().sqrt().item(), 1e-6)


def rbf_kernel(x: torch.Tensor, y: torch.Tensor, bandwidth: float) -> torch.Tensor:
    return torch.exp(-squared_distances(x, y) / (2 * bandwidth**2))


@dataclass
class KernelRidge:
    """A fitted KRR: predictions are rbf(x, landmarks) @ coef."""

    landmarks: torch.Tensor  # (l, d_e)
    coef: torch.Tensor  # (l, t)
    bandwidth: float
    cholesky: torch.Tensor  # (l, l) lower factor of K_LL + δI, float64
    ridge: float = 0.01

    def predict(self, points, chunk_size: int = 4096, out=None):
        """(N, d_e) → (N, t) float64, `chunk_size` rows at a time; kernels in float32 unless `points` are float64.

        `points` may be a tensor or anything that returns row slices as arrays (`np.memmap`, `artifacts.NpyRows`),
        and `out` any (N, t) array to write into, so a pool larger than memory streams through one chunk at a time.
        """
        num_rows = points.shape[0]
        if out is None:
            out = torch.empty(num_rows, self.coef.shape[1], dtype=torch.float64)
        for start in range(0, num_rows, chunk_size):
            block = torch.as_tensor(np.asarray(points[start : start + chunk_size]))
            dtype = torch.promote_types(block.dtype, torch.float32)
            values = rbf_kernel(block.to(dtype), self.landmarks.to(dtype), self.bandwidth).double() @ self.coef
            out[start : start + chunk_size] = values if isinstance(out, torch.Tensor) else values.numpy()
        return out

    def coefficients(self, points: torch.Tensor, chunk_size: int = 4096) -> torch.Tensor:
        """C = k(points, L)(K_LL + δI)⁻¹: (N, l) float64, so that predictions are C·values for any values."""
        out = torch.empty(points.shape[0], self.landmarks.shape[0], dtype=torch.float64)
        for start in range(0, points.shape[0], chunk_size):
            kernel = rbf_kernel(points[start : start + chunk_size].double(), self.landmarks.double(), self.bandwidth)
            out[start : start + chunk_size] = torch.cholesky_solve(kernel.T, self.cholesky).T
        return out


def fit_kernel_ridge(
    landmarks: torch.Tensor, values: torch.Tensor, ridge: float = 0.01, bandwidth: float | None = None, seed: int = 0
) -> KernelRidge:
    """Fit KRR from landmark embeddings (l, d_e) to values (l, t); `ridge` is relative to mean(diag K)."""
    sigma = bandwidth if bandwidth is not None else median_bandwidth(landmarks, seed=seed)
    kernel = rbf_kernel(landmarks.double(), landmarks.double(), sigma)
    kernel += ridge * kernel.diagonal().mean() * torch.eye(kernel.shape[0], dtype=kernel.dtype)
    factor = torch.linalg.cholesky(kernel)
    coef = torch.cholesky_solve(values.double().reshape(kernel.shape[0], -1), factor)
    return KernelRidge(landmarks=landmarks, coef=coef, bandwidth=sigma, cholesky=factor, ridge=ridge)


def fit_propagation(landmarks: torch.Tensor, values: torch.Tensor, ridge: float = 0.01,
                    bandwidth: float | None = None, tune: bool = False, seed: int = 0) -> KernelRidge:
    """`fit_kernel_ridge`, with the bandwidth and ridge chosen by leave-one-out (`tune_kernel_ridge`) if `tune`."""
    if tune and landmarks.shape[0] >= 10:
        bandwidth, ridge, _ = tune_kernel_ridge(landmarks, values, seed=seed)
    return fit_kernel_ridge(landmarks, values, ridge, bandwidth, seed)


def leave_one_out(kernel: torch.Tensor, values: torch.Tensor, ridges) -> list[torch.Tensor]:
    """Leave-one-out KRR predictions (l, t) at each landmark, one per ridge, from one eigendecomposition.

    With A = K + δI and c = A⁻¹y, refitting without landmark i predicts y_i − c_i / (A⁻¹)_ii there (the classical
    closed form for ridge regression), so every ridge costs two (l × l)·(l × t) products, not l refits.
    """
    eigenvalues, vectors = torch.linalg.eigh(kernel.double())
    projected = vectors.T @ values.double()
    squares = vectors.square()
    out = []
    for ridge in ridges:
        inverse = 1.0 / (eigenvalues.clamp_min(0) + ridge)
        coef = vectors @ (inverse[:, None] * projected)
        out.append(values.double() - coef / (squares @ inverse)[:, None])
    return out


def mean_spearman(predicted: torch.Tensor, values: torch.Tensor) -> float:
    """Spearman correlation per column (target sample), averaged."""
    return float(np.mean([spearman(predicted[:, j], values[:, j]) for j in range(values.shape[1])]))


def tune_kernel_ridge(landmarks: torch.Tensor, values: torch.Tensor, bandwidth_factors=(0.25, 0.5, 1.0, 2.0, 4.0),
                      ridges=(1e-3, 1e-2, 1e-1, 1.0), seed: int = 0, max_points: int = 2048):
    """(bandwidth, ridge, score): the RBF bandwidth (a multiple of the median heuristic) and ridge whose
    leave-one-out predictions rank the landmarks' own values best (mean Spearman over target columns).

    Costs one eigendecomposition of an (l × l) kernel per bandwidth; above `max_points` landmarks the search runs on a
    seeded subset of them.
    """
    values = values.double().reshape(landmarks.shape[0], -1)
    if landmarks.shape[0] > max_points:
        keep = torch.randperm(landmarks.shape[0], generator=torch.Generator().manual_seed(seed))[:max_points]
        landmarks, values = landmarks[keep], values[keep]
    median = median_bandwidth(landmarks, seed=seed)
    points = landmarks.double()
    best = (median, 0.01, -np.inf)
    for factor in bandwidth_factors:
        kernel = rbf_kernel(points, points, median * factor)
        for ridge, predicted in zip(ridges, leave_one_out(kernel, values, ridges)):
            score = mean_spearman(predicted, values)
            if score > best[2] + 1e-12:
                best = (median * factor, ridge, score)
    return best


def heldout_fidelity(landmarks: torch.Tensor, values: torch.Tensor, ridge: float, bandwidth: float | None,
                     seed: int = 0, folds: int = 5, tune: bool = False) -> float | None:
    """How well propagation ranks samples it has not seen: k-fold over the landmarks, fit on the rest (tuned on the
    rest alone, if `tune`), Spearman between predicted and exact values of the held-out ones, averaged over target
    columns and folds.

    Costs a few small KRR fits and no extra gradients; None when there are too few landmarks to split.
    """
    count = landmarks.shape[0]
    if count < 5 * folds:
        return None
    values = values.double().reshape(count, -1)
    order = torch.randperm(count, generator=torch.Generator().manual_seed(seed))
    scores = []
    for fold in range(folds):
        held = order[fold::folds]
        kept = order[torch.isin(order, held, invert=True)]
        prediction = fit_propagation(landmarks[kept], values[kept], ridge, bandwidth, tune, seed).predict(
            landmarks[held])
        scores += [spearman(prediction[:, j], values[held, j]) for j in range(values.shape[1])]
    return float(np.mean(scores))


def propagate(
    embeddings: torch.Tensor, landmark_rows: np.ndarray, landmark_values: torch.Tensor, config: PropagationConfig,
    seed: int, out=None,
) -> tuple[Any, KernelRidge]:
    """Stage 5: KRR from the landmarks' values (l, t) to every row, (N, t); landmark rows keep their exact values.

    The scores are an array, or `out` (any (N, t) array that takes row-slice writes: an on-disk `NpyRows` keeps a
    large pool's scores out of memory)."""
    rows = torch.as_tensor(landmark_rows)
    krr = fit_propagation(embeddings[rows], landmark_values, config.ridge, config.bandwidth, config.tune, seed)
    scores = krr.predict(embeddings, config.chunk_size, out)
    exact = landmark_values.double().reshape(len(rows), -1)
    if out is None:
        scores[rows] = exact
        return scores.numpy(), krr
    scores[np.asarray(landmark_rows)] = exact.numpy()
    return scores, krr


def propagation_matrix(krr: KernelRidge, embeddings: torch.Tensor, landmark_rows: np.ndarray,
                       chunk_size: int) -> torch.Tensor:
    """C (N, l) with p̂ = C p_L: KRR coefficients, identity rows at the landmarks (their values are exact). Dense:
    8·N·l bytes (a run checks that they fit first)."""
    coefficients = krr.coefficients(embeddings, chunk_size)
    rows = torch.as_tensor(landmark_rows)
    coefficients[rows] = 0.0
    coefficients[rows, torch.arange(len(rows))] = 1.0
    return coefficients
