"""Influence of training samples on the target loss: the terms of the one-step Taylor model (paper §2–3).

Weighted training takes one step on L(θ; S, w) = (1/n) Σ_i w_i ℓ(θ; S_i). Writing U for the matrix whose rows are the
samples' (preconditioned) gradients, g_T for the target gradient, H for the target Hessian:

* gradient descent, θ' = θ − (η/n) Uᵀw:
      L_T(θ') − L_T(θ) ≈ (η/n)·[−pᵀw + (η/2)·wᵀQw],   p = U g_T,   Q = (1/n) U H Uᵀ;
* AdamW with its second moment held at β2·v_t (see `preconditioning`), θ' = θ − η(a ⊙ (1/n)Gᵀw + b), U = G·diag(a):
      L_T(θ') − L_T(θ) ≈ c + (η/n)·[−pᵀw + (η/2)·wᵀQw],   p = U (g_T − η H b),   Q = (1/n) U H Uᵀ,
      c = −η g_Tᵀ b + (η²/2) bᵀ H b.

Every function takes rows already multiplied by H where needed (`HU`, `Hb`), so the same code serves exact
full-size vectors and their SRHT projections (which preserve inner products).
"""

from __future__ import annotations

import torch


def first_order_influence(landmark_grads, target_grads: torch.Tensor, chunk_rows: int = 4096) -> torch.Tensor:
    """p_L = G_L G_Tᵀ: (l, k_p) × (t, k_p) → (l, t), one column per target sample.

    `landmark_grads` may also be rows read from disk on access (`shards.ShardRows`: exact mode's gradient of every
    pool sample), multiplied `chunk_rows` at a time so they are never all in memory."""
    targets = target_grads.double().T
    if isinstance(landmark_grads, torch.Tensor):
        return landmark_grads.double() @ targets
    return torch.cat([torch.as_tensor(landmark_grads[start : start + chunk_rows]).double() @ targets
                      for start in range(0, len(landmark_grads), chunk_rows)])


def curvature(rows: torch.Tensor, hessian_rows: torch.Tensor, num_pool: int) -> torch.Tensor:
    """Q = (1/n) U (H U)ᵀ, symmetrised (H is symmetric; projection noise is not): (r, r) float64."""
    q = rows.double() @ hessian_rows.double().T / num_pool
    return (q + q.T) / 2


def gd_terms(rows, target_grad: torch.Tensor, hessian_rows: torch.Tensor | None, num_pool: int):
    """(p, Q) for a gradient-descent step; Q is None when `hessian_rows` is None (first order). `rows` may be read
    from disk on access, as in `first_order_influence`."""
    p = first_order_influence(rows, target_grad[None])[:, 0]
    return p, None if hessian_rows is None else curvature(rows, hessian_rows, num_pool)


def adam_terms(
    rows,
    target_grad: torch.Tensor,
    hessian_rows: torch.Tensor | None,
    hessian_b: torch.Tensor | None,
    eta: float,
    num_pool: int,
):
    """(p_Adam, Q_Adam) for an AdamW step; `rows` are a ⊙ g_i. Without `hessian_b` the η·H·b correction is dropped."""
    direction = target_grad.double() if hessian_b is None else target_grad.double() - eta * hessian_b.double()
    return gd_terms(rows, direction, hessian_rows, num_pool)


def adam_offset(target_grad: torch.Tensor, b: torch.Tensor, hessian_b: torch.Tensor | None, eta: float) -> float:
    """c = −η g_Tᵀ b + (η²/2) bᵀ H b: the loss change from momentum and weight decay alone (independent of w)."""
    offset = -eta * torch.dot(target_grad.double(), b.double())
    if hessian_b is not None:
        offset = offset + eta**2 / 2 * torch.dot(b.double(), hessian_b.double())
    return float(offset)


def predicted_loss_change(
    p: torch.Tensor, q: torch.Tensor | None, weights: torch.Tensor, eta: float, num_pool: int, offset: float = 0.0
) -> float:
    """The Taylor model's L_T(θ') − L_T(θ) for weights w."""
    w = weights.double()
    value = -torch.dot(p.double(), w)
    if q is not None:
        value = value + eta / 2 * torch.dot(w, q.double() @ w)
    return float(eta / num_pool * value + offset)
