"""Optimal sample weights (paper §2.3): exactly k non-zero, non-negative, summing to n.

    minimise  F(w) = −pᵀw + (η/2)·wᵀQw + (λ/2)·‖w‖²   subject to  w ≥ 0,  Σ w = n.

* Q = 0: w(λ) = max(0, (p − τ)/λ) with τ fixing the sum — the Euclidean projection of p/λ onto the scaled simplex.
  Its support is the top-m of p, and exactly k weights are non-zero iff
  λ ∈ ((S_k − k·p₍k₎)/n, (S_k − k·p₍k+1₎)/n], S_k the sum of the k largest scores. We take the interval's midpoint.
* Q ≠ 0: FISTA (accelerated projected gradient, with adaptive restart) at fixed λ, inside a bisection on log λ for a
  support of exactly k. F is convex when ηQ + λI ⪰ 0, so λ is kept above −η·λ_min(Q). Q is any `QuadraticForm`:
  a dense matrix for small pools, or the factored C·Q_L·Cᵀ of the landmark method, never an n×n matrix.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch


class QuadraticForm:
    """A symmetric n×n operator w ↦ Qw."""

    size: int

    def matvec(self, w: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def extreme_eigenvalues(self, iterations: int = 100) -> tuple[float, float]:
        """(λ_min, λ_max) estimates by power iteration (shifted for λ_min); exact enough to set step sizes."""
        generator = torch.Generator().manual_seed(0)
        top = _power_iteration(self.matvec, self.size, iterations, generator)
        low = _power_iteration(lambda w: self.matvec(w) - top * w, self.size, iterations, generator) + top
        return min(low, top), max(low, top)


class DenseQuadraticForm(QuadraticForm):
    def __init__(self, matrix: torch.Tensor):
        self.matrix = matrix.double()
        self.size = matrix.shape[0]

    def matvec(self, w: torch.Tensor) -> torch.Tensor:
        return self.matrix @ w

    def extreme_eigenvalues(self, iterations: int = 100) -> tuple[float, float]:
        eigenvalues = torch.linalg.eigvalsh(self.matrix)
        return float(eigenvalues[0]), float(eigenvalues[-1])


class FactoredQuadraticForm(QuadraticForm):
    """Q̂ = C Q_L Cᵀ for propagation coefficients C (n, l) and landmark curvature Q_L (l, l)."""

    def __init__(self, coefficients: torch.Tensor, landmark_q: torch.Tensor):
        self.coefficients, self.landmark_q = coefficients.double(), landmark_q.double()
        self.size = coefficients.shape[0]

    def matvec(self, w: torch.Tensor) -> torch.Tensor:
        return self.coefficients @ (self.landmark_q @ (self.coefficients.T @ w))


def _power_iteration(matvec, size: int, iterations: int, generator) -> float:
    v = torch.randn(size, generator=generator, dtype=torch.float64)
    v /= v.norm()
    value = 0.0
    for _ in range(iterations):
        u = matvec(v)
        value = float(torch.dot(v, u))
        if u.norm() == 0:
            return 0.0
        v = u / u.norm()
    return value


def project_to_simplex(v: torch.Tensor, total: float) -> torch.Tensor:
    """Euclidean projection of v (n,) onto {w ≥ 0, Σ w = total}, by sorting (Held et al.; Duchi et al. 2008)."""
    u = torch.sort(v, descending=True).values
    cumulative = u.cumsum(0) - total
    index = torch.arange(1, v.numel() + 1, dtype=v.dtype)
    rho = int((u - cumulative / index > 0).nonzero().max())
    tau = cumulative[rho] / (rho + 1)
    return (v - tau).clamp_min(0)


@dataclass
class WeightSolution:
    weights: torch.Tensor  # (n,) float64
    lam: float  # the L2 strength λ used
    num_nonzero: int
    exact_k: bool  # whether exactly k weights are non-zero
    message: str = ""
    iterations: int = 0

    def support(self) -> np.ndarray:
        """Indices of the non-zero weights, by decreasing weight (ties: lower index first)."""
        w = self.weights.numpy()
        nonzero = np.flatnonzero(w > 0)
        return nonzero[np.argsort(-w[nonzero], kind="stable")]


def lambda_interval(p: torch.Tensor, k: int, total: float) -> tuple[float, float]:
    """(low, high]: the λ for which the first-order (Q = 0) solution has exactly k non-zeros; empty if low ≥ high."""
    s = torch.sort(p.double(), descending=True).values
    top = float(s[:k].sum())
    low = (top - k * float(s[k - 1])) / total
    high = (top - k * float(s[k])) / total if k < s.numel() else math.inf
    return low, high


def first_order_weights(p: torch.Tensor, k: int, total: float | None = None) -> WeightSolution:
    """Closed-form weights for Q = 0 with exactly k non-zeros (the top k of p), λ at the interval's midpoint."""
    p = p.double()
    n = p.numel()
    total = float(n if total is None else total)
    low, high = lambda_interval(p, k, total)
    if not low < high:
        value = float(torch.sort(p, descending=True).values[k - 1])
        message = (f"no λ gives exactly {k} non-zero weights: the {k}th and {k + 1}th largest scores tie at "
                   f"{value:.6g}; the weights keep every tied sample")
        lam = high if high > 0 else 1.0
        w = project_to_simplex(p / lam, total)
        return WeightSolution(w, lam, int((w > 0).sum()), False, message)
    lam = (low + high) / 2 if math.isfinite(high) else max(2 * low, 1e-12)
    w = project_to_simplex(p / lam, total)
    return WeightSolution(w, lam, int((w > 0).sum()), int((w > 0).sum()) == k)


def solve_fixed_lambda(
    p: torch.Tensor, q: QuadraticForm | None, eta: float, lam: float, total: float,
    start: torch.Tensor | None = None, lipschitz: float | None = None, tol: float = 1e-10, max_iter: int = 20000,
) -> tuple[torch.Tensor, int]:
    """argmin F over the scaled simplex at one λ, by FISTA with gradient-based adaptive restart."""
    p = p.double()
    if q is None:
        return project_to_simplex(p / lam, total), 0
    if lipschitz is None:
        lipschitz = eta * max(abs(v) for v in q.extreme_eigenvalues()) + lam
    step = 1.0 / lipschitz
    w = project_to_simplex(start.double() if start is not None else p / lam, total)
    y, momentum = w.clone(), 1.0
    scale = max(float(p.abs().max()), 1e-300)
    for iteration in range(1, max_iter + 1):
        gradient = -p + eta * q.matvec(y) + lam * y
        w_next = project_to_simplex(y - step * gradient, total)
        moved = float((w_next - w).norm())
        if torch.dot(gradient, w_next - w) > 0:  # restart when momentum points uphill (O'Donoghue & Candès)
            momentum, y = 1.0, w_next.clone()
        else:
            momentum_next = (1 + math.sqrt(1 + 4 * momentum**2)) / 2
            y = w_next + (momentum - 1) / momentum_next * (w_next - w)
            momentum = momentum_next
        w = w_next
        if moved * lipschitz <= tol * scale * math.sqrt(total):
            return w, iteration
    return w, max_iter


def solve_weights(
    p: torch.Tensor, k: int, eta: float = 0.0, q: QuadraticForm | None = None, total: float | None = None,
    max_bisections: int = 100,
) -> WeightSolution:
    """Weights with exactly k non-zeros when some λ gives them; otherwise the closest found and a message why not."""
    p = p.double()
    n = p.numel()
    total = float(n if total is None else total)
    if not 0 < k <= n:
        raise ValueError(f"k must be in [1, {n}], got {k}")
    if q is None or eta == 0:
        return first_order_weights(p, k, total)
    low_eig, high_eig = q.extreme_eigenvalues()
    convex_floor = max(0.0, -eta * low_eig) * (1 + 1e-9)
    lipschitz_q = eta * max(abs(low_eig), abs(high_eig))
    low, high = lambda_interval(p, k, total)
    lam = max((low + high) / 2 if low < high and math.isfinite(high) else max(low, 1e-12), 2 * convex_floor, 1e-300)

    # The support grows with λ (more L2 spreads the weight): expand a bracket (lo: < k non-zeros, hi: > k), then
    # bisect on log λ, warm-starting every solve from the previous solution.
    lo = hi = None
    w, iterations = None, 0
    found: dict[float, tuple[torch.Tensor, int]] = {}
    for _ in range(max_bisections):
        w, used = solve_fixed_lambda(p, q, eta, lam, total, start=w, lipschitz=lipschitz_q + lam)
        iterations += used
        count = int((w > 0).sum())
        found[lam] = (w, count)
        if count == k:
            return WeightSolution(w, lam, k, True, iterations=iterations)
        if count < k:
            lo = lam
            lam = lam * 4 if hi is None else math.sqrt(lo * hi)
        else:
            hi = lam
            if lam <= convex_floor * (1 + 1e-6):
                return WeightSolution(w, lam, count, False, (
                    f"no convex λ gives {k} non-zero weights: η·λ_min(Q) = {eta * low_eig:.3g} forces "
                    f"λ ≥ {convex_floor:.3g}, where {count} weights are already non-zero"), iterations)
            lam = max(lam / 4, convex_floor) if lo is None else math.sqrt(lo * hi)
        if lo is not None and hi is not None and hi - lo <= 1e-12 * hi:
            break
    best = hi if hi is not None else lam
    w, count = found.get(best, (w, int((w > 0).sum())))
    below = found[lo][1] if lo is not None else "fewer"
    return WeightSolution(w, best, count, False, (
        f"no λ gives exactly {k} non-zero weights: the support jumps from {below} to {count} at λ ≈ {best:.6g} "
        "(tied or degenerate scores)"), iterations)


def kkt_residual(p: torch.Tensor, q: QuadraticForm | None, eta: float, lam: float, w: torch.Tensor) -> float:
    """Largest violation of the KKT conditions, relative to max|p|: on the support ∇F_i equals a common ν, off it ≥ ν."""
    gradient = -p.double() + lam * w
    if q is not None:
        gradient = gradient + eta * q.matvec(w)
    support = w > 0
    nu = gradient[support].mean()
    violation = max(float((gradient[support] - nu).abs().max()),
                    float((nu - gradient[~support]).clamp_min(0).max()) if (~support).any() else 0.0)
    return violation / max(float(p.abs().max()), 1e-300)
