"""Per-sample gradients of linear layers for a whole batch in one forward and one backward pass.

For a linear layer y = W x + b applied at every token, sample s's loss has ∇_W ℓ_s = Σ_t δ_{s,t} x_{s,t}ᵀ and
∇_b ℓ_s = Σ_t δ_{s,t}, with x the layer's input and δ = ∂ℓ_s/∂y at token t. Hooks record x on the forward pass
and δ on the backward pass of Σ_s ℓ_s. Samples do not interact (attention is causal and padding is masked; there are
no batch statistics), so δ_{s,·} is sample s's own and padded positions carry δ = 0 (and are masked out
explicitly): the result is exactly the one-sample-at-a-time gradient.

Two uses:

* `batched_gradients`: the flat per-sample gradients (B, D), for the SRHT projection and an exact Adam
  preconditioner;
* `KroneckerProjector.project_records`: R_o ∇_W ℓ_s R_iᵀ = Σ_t (R_o δ_{s,t})(R_i x_{s,t})ᵀ per layer (LoGra-style),
  so the projected gradient is computed from projected activations and never formed at full size.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn
from tqdm.auto import tqdm

from influence_distillation.data.tokenization import Batch, Example, collate
from influence_distillation.errors import ConfigError
from influence_distillation.method.losses import batch_losses, only_requires_grad, working_dtype


@dataclass(frozen=True)
class LinearLayer:
    """A linear module whose weight and/or bias are among the chosen parameters."""

    module: nn.Module
    weight: str | None  # parameter name, if chosen
    bias: str | None
    transposed: bool  # GPT-2's Conv1D stores the weight as (in, out)

    @property
    def shape(self) -> tuple[int, int]:
        """(out, in) of the layer's map."""
        rows, cols = self.module.weight.shape
        return (cols, rows) if self.transposed else (rows, cols)


def linear_layers(model: nn.Module, params: dict[str, nn.Parameter]) -> list[LinearLayer] | None:
    """The chosen parameters as weights and biases of linear layers, or None when any of them is something else
    (an embedding, a norm): those need the one-sample-at-a-time path."""
    by_id = {id(p): name for name, p in params.items()}
    layers, covered = [], set()
    for module in model.modules():
        transposed = type(module).__name__ == "Conv1D"
        if not (isinstance(module, nn.Linear) or transposed):
            continue
        weight = by_id.get(id(module.weight))
        bias = by_id.get(id(module.bias)) if getattr(module, "bias", None) is not None else None
        if weight or bias:
            layers.append(LinearLayer(module, weight, bias, transposed))
            covered |= {weight, bias} - {None}
    return layers if covered == set(params) else None


def _offsets(params: dict[str, nn.Parameter]) -> dict[str, int]:
    """Where each parameter starts in the flat gradient (`params` order)."""
    starts = np.cumsum([0] + [p.numel() for p in params.values()])[:-1]
    return {name: int(start) for name, start in zip(params, starts, strict=True)}


class _Recorder:
    """Forward hooks that keep each layer's input and, through a tensor hook on its output, the output's gradient."""

    def __init__(self, layers: list[LinearLayer]):
        self.inputs: dict[nn.Module, torch.Tensor] = {}
        self.grads: dict[nn.Module, torch.Tensor] = {}
        self.handles = [layer.module.register_forward_hook(self._forward) for layer in layers]

    def _forward(self, module, inputs, output):
        if module in self.inputs:
            raise RuntimeError(f"{type(module).__name__} is called twice in one forward pass; per-sample gradients "
                               "from hooks need each chosen layer to run once (use GradientConfig.batch_size=1)")
        self.inputs[module] = inputs[0].detach()
        output.register_hook(lambda grad: self.grads.__setitem__(module, grad.detach()))

    def close(self) -> None:
        for handle in self.handles:
            handle.remove()


def record(model: nn.Module, params: dict[str, nn.Parameter], layers: list[LinearLayer], batch: Batch):
    """One forward and backward pass of Σ_s ℓ_s over `batch`: {module: (x, δ)}, each (B, T, ·)."""
    recorder = _Recorder(layers)
    try:
        with only_requires_grad(model, params):
            losses = batch_losses(model, batch)
            torch.autograd.grad(losses.sum(), list(params.values()))  # the hooks keep what the rows need
    finally:
        recorder.close()
    missing = [layer for layer in layers if layer.module not in recorder.grads]
    if missing:  # a layer the loss does not depend on: its gradient is zero
        for layer in missing:
            x = recorder.inputs[layer.module]
            recorder.grads[layer.module] = x.new_zeros(*x.shape[:-1], layer.shape[0])
    # Padded positions contribute nothing in exact arithmetic; zero them explicitly, because a fully masked
    # attention row (left padding) can hold NaN there, and 0 · NaN is NaN.
    real = batch.attention_mask.bool()[..., None]
    return {layer.module: (torch.where(real, recorder.inputs[layer.module], 0),
                           torch.where(real, recorder.grads[layer.module], 0)) for layer in layers}


def batched_gradients(model: nn.Module, params: dict[str, nn.Parameter], layers: list[LinearLayer],
                      batch: Batch) -> torch.Tensor:
    """Flat per-sample gradients (B, D) over `params`, in `params` order (as `gradients.flat_gradient`)."""
    records = record(model, params, layers, batch)
    dtype = working_dtype(next(iter(params.values())).dtype)
    offsets = _offsets(params)
    out = torch.empty(batch.input_ids.shape[0], sum(p.numel() for p in params.values()), dtype=dtype,
                      device=batch.input_ids.device)
    for layer in layers:
        x, delta = (t.to(dtype) for t in records[layer.module])
        if layer.weight:
            grad = torch.einsum("bti,bto->bio" if layer.transposed else "bto,bti->boi", x if layer.transposed
                                else delta, delta if layer.transposed else x)
            out[:, offsets[layer.weight] : offsets[layer.weight] + grad[0].numel()] = grad.reshape(len(grad), -1)
        if layer.bias:
            out[:, offsets[layer.bias] : offsets[layer.bias] + delta.shape[-1]] = delta.sum(1)
    return out


class KroneckerProjector:
    """A seeded Kronecker-structured Gaussian projection of gradients of linear layers (LoGra-style).

    Each chosen weight (out × in) gets R_o (k × out) and R_i (k × in) with N(0, 1/k) entries and contributes the
    k² numbers R_o M R_iᵀ of its gradient block M; a chosen bias contributes R_o m. E⟨P g, P g'⟩ = ⟨g, g'⟩, as for
    any Johnson–Lindenstrauss map; k is chosen so that the total is close to `out_dim`.

    `__call__` projects flat vectors (any preconditioner is applied exactly first), with the same interface as
    `projection.HadamardProjector`, except that `normalize` gives the projected rows unit length (the full-size norm
    is not available on the path that never forms the gradient; both paths do the same); `project_records` projects
    per-sample gradients straight from recorded activations, Σ_t (R_o δ_t)(R_i x_t)ᵀ, without forming them.
    """

    def __init__(self, layers: list[LinearLayer], params: dict[str, nn.Parameter], out_dim: int, seed: int):
        self.layers, self.params = layers, params
        self.in_dim = sum(p.numel() for p in params.values())
        weights = sum(bool(layer.weight) for layer in layers)
        self.factor = max(1, int(math.sqrt(out_dim / max(1, weights))))
        generator = torch.Generator().manual_seed(seed)
        self.maps = {}
        for layer in layers:
            rows, cols = layer.shape
            self.maps[layer.module] = (torch.randn(self.factor, rows, generator=generator) / math.sqrt(self.factor),
                                       torch.randn(self.factor, cols, generator=generator) / math.sqrt(self.factor))
        self.out_dim = sum(self.factor**2 * bool(layer.weight) + self.factor * bool(layer.bias) for layer in layers)
        self.offsets = _offsets(params)

    def __call__(self, x: torch.Tensor, diag: torch.Tensor | None = None, normalize: bool = False) -> torch.Tensor:
        """Project rows of flat vectors (B, D) in `params` order → (B, out_dim), float32 (float64 stays)."""
        dtype = torch.promote_types(x.dtype, torch.float32)
        x = x.to(dtype) if diag is None else x.to(dtype) * diag.to(x.device, dtype)
        pieces = []
        for layer in self.layers:
            left, right = (m.to(x.device, dtype) for m in self.maps[layer.module])
            rows, cols = layer.shape
            if layer.weight:
                block = x[:, self.offsets[layer.weight] : self.offsets[layer.weight] + rows * cols]
                block = block.reshape(len(x), cols, rows).transpose(1, 2) if layer.transposed else block.reshape(
                    len(x), rows, cols)
                pieces.append((left @ block @ right.T).flatten(1))
            if layer.bias:
                pieces.append(x[:, self.offsets[layer.bias] : self.offsets[layer.bias] + rows] @ left.T)
        y = torch.cat(pieces, dim=1)
        return y / y.norm(dim=1, keepdim=True).clamp_min(torch.finfo(dtype).tiny) if normalize else y

    def project_records(self, records) -> torch.Tensor:
        """Projected per-sample gradients (B, out_dim) from recorded (x, δ) of `record`, never at full size."""
        pieces = []
        for layer in self.layers:
            x, delta = records[layer.module]
            dtype = working_dtype(x.dtype)
            left, right = (m.to(x.device, dtype) for m in self.maps[layer.module])
            if layer.weight:
                pieces.append(torch.einsum("bto,bti->boi", delta.to(dtype) @ left.T, x.to(dtype) @ right.T).flatten(1))
            if layer.bias:
                pieces.append(delta.to(dtype).sum(1) @ left.T)
        return torch.cat(pieces, dim=1)


def token_batches(lengths: list[int], max_tokens: int, max_batch: int) -> list[list[int]]:
    """Length-sorted batches of at most `max_batch` samples and `max_tokens` padded tokens (a long sample alone)."""
    order = np.argsort(lengths, kind="stable").tolist()
    batches, current = [], []
    for index in order:
        if current and (len(current) == max_batch or (len(current) + 1) * lengths[index] > max_tokens):
            batches.append(current)
            current = []
        current.append(index)
    return batches + ([current] if current else [])


def batched_projected_gradients(model: nn.Module, examples: list[Example], params: dict[str, nn.Parameter], projector,
                                preconditioner: torch.Tensor | None = None, normalize: bool = True,
                                batch_size: int = 8, max_tokens: int = 4096, transform=None, desc: str = "gradients",
                                progress: bool = True) -> tuple[torch.Tensor, torch.Tensor]:
    """`gradients.projected_gradients` with one forward and backward pass per batch of similar-length samples.

    A `KroneckerProjector` with neither a preconditioner nor a transform projects straight from the recorded
    activations (the norms are then those of the projected rows, a Johnson–Lindenstrauss estimate); otherwise the
    batch's full per-sample gradients are formed and projected exactly as one at a time.
    """
    layers = linear_layers(model, params)
    if layers is None:
        raise ConfigError("batched per-sample gradients need every GradientConfig.params parameter to be the weight "
                          "or bias of a linear layer; use GradientConfig.batch_size=1")
    device = next(model.parameters()).device
    a = preconditioner.to(device) if preconditioner is not None else None
    direct = isinstance(projector, KroneckerProjector) and a is None and transform is None
    out = torch.empty(len(examples), projector.out_dim)
    norms = torch.empty(len(examples), dtype=torch.float64)
    with tqdm(total=len(examples), desc=desc, unit="sample", disable=not progress) as bar:
        for rows in token_batches([len(e) for e in examples], max_tokens, batch_size):
            batch = collate([examples[i] for i in rows], 0).to(device)
            if direct:
                projected = projector.project_records(record(model, params, layers, batch))
                norm = projected.norm(dim=1)
                if normalize:
                    projected = projected / norm.clamp_min(torch.finfo(projected.dtype).tiny)[:, None]
            else:
                flat = batched_gradients(model, params, layers, batch)
                if transform is not None:
                    flat = torch.stack([transform(g) for g in flat])
                norm = (flat if a is None else flat * a).norm(dim=1)
                projected = projector(flat, diag=a, normalize=normalize)
            out[rows], norms[rows] = projected.float().cpu(), norm.double().cpu()
            bar.update(len(rows))
    return out, norms
