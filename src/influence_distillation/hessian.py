"""Hessian-vector products of the (weighted) target loss on the gradient parameter subset (paper §4).

H v = Σ_i ω_i ∇²ℓ(θ; T_i) v, by double backward: for each target sample the gradient is taken with
`create_graph=True` and differentiated again against a whole block of vectors at once (`is_grads_batched`), so one
target pass serves many vectors. With ω_i = 1/t this is the Hessian of the mean target loss L_T.
"""

from __future__ import annotations

import torch
from torch import nn
from tqdm.auto import tqdm

from .gradients import only_requires_grad, sample_loss, working_dtype
from .tokenization import Example


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


def projected_hvp_rows(
    model: nn.Module,
    params: dict[str, nn.Parameter],
    targets: list[Example],
    vectors_fn,
    count: int,
    projector,
    sample_weights: torch.Tensor | None = None,
    block: int = 8,
    desc: str = "Hessian-vector products",
    progress: bool = True,
) -> torch.Tensor:
    """Rows P(H v_j) for j < count, where `vectors_fn(start, stop)` yields the (stop-start, D) vectors on demand.

    Vectors are produced and multiplied `block` at a time, so at most `block` full-size vectors live in memory.
    """
    out = torch.empty(count, projector.out_dim)
    with tqdm(total=count, desc=desc, unit="vector", disable=not progress) as bar:
        for start in range(0, count, block):
            stop = min(start + block, count)
            products = target_hvp(model, params, targets, vectors_fn(start, stop), sample_weights)
            out[start:stop] = projector(products).cpu()
            bar.update(stop - start)
    return out
