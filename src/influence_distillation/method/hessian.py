"""Hessian-vector products of the (weighted) target loss on the gradient parameter subset (paper §4).

H v = Σ_i ω_i ∇²ℓ(θ; T_i) v, by double backward: for each target sample the gradient is taken with
`create_graph=True` and differentiated again against a whole block of vectors at once (`is_grads_batched`), so one
target pass serves many vectors. With ω_i = 1/t this is the Hessian of the mean target loss L_T.
"""

from __future__ import annotations

import torch
from torch import nn
from tqdm.auto import tqdm

from influence_distillation.data.tokenization import Example
from influence_distillation.method.gradients import gradient_vectors
from influence_distillation.method.losses import only_requires_grad, sample_loss, working_dtype


def _unflatten(vectors: torch.Tensor, params: dict[str, nn.Parameter]) -> list[torch.Tensor]:
    """(r, D) flat rows → one (r, *shape) tensor per parameter."""
    pieces, start = [], 0
    for p in params.values():
        pieces.append(vectors[:, start : start + p.numel()].reshape(vectors.shape[0], *p.shape).to(p.dtype))
        start += p.numel()
    return pieces


def target_hvp(
    model: nn.Module,
    params: dict[str, nn.Parameter],
    targets: list[Example],
    vectors: torch.Tensor,
    sample_weights: torch.Tensor | None = None,
) -> torch.Tensor:
    """(Σ_i ω_i H_i) V for rows V: (r, D) → (r, D), D = total size of `params` (flattened in their order).

    Args:
        sample_weights: ω (t,); default 1/t (the Hessian of the mean target loss).
    """
    device = next(model.parameters()).device
    weights = sample_weights if sample_weights is not None else torch.full((len(targets),), 1 / len(targets))
    grad_outputs = _unflatten(vectors.to(device), params)
    dtype = working_dtype(next(iter(params.values())).dtype)
    total = torch.zeros(vectors.shape, dtype=dtype, device=device)
    with only_requires_grad(model, params):
        for weight, example in zip(weights.tolist(), targets):
            grads = torch.autograd.grad(sample_loss(model, example), list(params.values()), create_graph=True)
            products = torch.autograd.grad(grads, list(params.values()), grad_outputs=grad_outputs,
                                           is_grads_batched=True)
            total += weight * torch.cat([h.reshape(vectors.shape[0], -1).to(dtype) for h in products], dim=1)
    return total


def gradient_and_hessian_rows(
    model: nn.Module,
    examples: list[Example],
    params: dict[str, nn.Parameter],
    projector,
    targets: list[Example],
    target_weights: torch.Tensor,
    preconditioner: torch.Tensor | None = None,
    normalize: bool = True,
    block: int = 8,
    desc: str = "gradients + Hessian-vector products",
    progress: bool = True,
) -> tuple[torch.Tensor, torch.Tensor]:
    """For each example, u = a ⊙ ∇ℓ (unit-normalised if asked): returns P(u) and P(H u), each (n, k_p).

    Gradients are computed `block` at a time and multiplied by H while still full-size, so no more than `block`
    full vectors are ever held; projecting both with the same SRHT keeps ⟨P u_i, P H u_j⟩ ≈ u_iᵀ H u_j.
    """
    rows = torch.empty(len(examples), projector.out_dim)
    hessian_rows = torch.empty(len(examples), projector.out_dim)
    with tqdm(total=len(examples), desc=desc, unit="sample", disable=not progress) as bar:
        for start in range(0, len(examples), block):
            stop = min(start + block, len(examples))
            with only_requires_grad(model, params):
                vectors, _ = gradient_vectors(model, examples[start:stop], params, preconditioner, normalize)
            rows[start:stop] = projector(vectors).cpu()
            hessian_rows[start:stop] = projector(target_hvp(model, params, targets, vectors, target_weights)).cpu()
            bar.update(stop - start)
    return rows, hessian_rows
