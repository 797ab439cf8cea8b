"""Per-sample loss gradients on a parameter subset, preconditioned, L2-normalised and projected (paper §5.5).

The loss is `losses.sample_loss`. By default gradients are taken one unpadded sample at a time;
`batch_size` > 1 takes a batch's per-sample gradients of linear layers from one forward and backward pass
(`per_sample.py`).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn
from tqdm.auto import tqdm

from influence_distillation.config import GradientConfig
from influence_distillation.data.tokenization import Example
from influence_distillation.errors import ConfigError
from influence_distillation.method.losses import only_requires_grad, sample_loss, working_dtype
from influence_distillation.method.per_sample import KroneckerProjector, batched_projected_gradients, linear_layers
from influence_distillation.method.preconditioning import (
    AdamParamState,
    adam_offset_vector,
    adam_preconditioner,
    load_adamw_state,
)
from influence_distillation.method.projection import (
    CountSketchProjector,
    HadamardProjector,
    IdentityProjector,
    make_projector,
)

# Names of the MLP output projection across architectures: Llama/Qwen/Mistral, GPT-2, GPT-NeoX, OPT/Phi, Mixtral-style.
MLP_DOWN = r"(down_proj|mlp\.c_proj|dense_4h_to_h|fc2|mlp\.w2)\.(weight|bias)$"


def select_parameters(model: nn.Module, spec: str, field: str = "spec") -> dict[str, nn.Parameter]:
    """Parameters named by `spec`: 'mlp-down', 'all', or a regular expression searched in parameter names. `field`
    is how errors refer to `spec` (a run passes its config field, `GradientConfig.params`)."""
    pattern = {"mlp-down": MLP_DOWN, "all": ""}.get(spec, spec)
    try:
        regex = re.compile(pattern)
    except re.error as exc:
        raise ConfigError(f"{field}: invalid regular expression {spec!r} ({exc})") from None
    chosen = {name: p for name, p in model.named_parameters() if regex.search(name)}
    if not chosen:
        raise ConfigError(f"{field}={spec!r} matches no parameter of {type(model).__name__}")
    return chosen


def flat_gradient(model: nn.Module, params: dict[str, nn.Parameter], example: Example) -> torch.Tensor:
    """∇ℓ(θ; x) over `params`, flattened in `params` order, in float32 (float64 for a float64 model).

    Call inside `only_requires_grad`."""
    grads = torch.autograd.grad(sample_loss(model, example), list(params.values()))
    return torch.cat([g.reshape(-1).to(working_dtype(g.dtype)) for g in grads])


def gradient_vectors(
    model: nn.Module,
    examples: list[Example],
    params: dict[str, nn.Parameter],
    preconditioner: torch.Tensor | None = None,
    normalize: bool = True,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Full-size rows a ⊙ ∇ℓ(θ; x) (unit-normalised if asked) for a few examples, and the norms ‖a ⊙ ∇ℓ‖: (r, D), (r,).

    For stages that need the unprojected vectors (Hessian-vector products); call inside `only_requires_grad`.
    """
    rows = torch.stack([flat_gradient(model, params, example) for example in examples])
    if preconditioner is not None:
        rows *= preconditioner.to(rows)
    norms = rows.norm(dim=1)
    if normalize:
        rows /= norms.clamp_min(torch.finfo(rows.dtype).tiny)[:, None]
    return rows, norms


def projected_gradients(
    model: nn.Module,
    examples: list[Example],
    params: dict[str, nn.Parameter],
    projector: HadamardProjector | IdentityProjector,
    preconditioner: torch.Tensor | None = None,
    normalize: bool = True,
    chunk: int = 1,
    desc: str = "gradients",
    progress: bool = True,
    transform=None,
    batch_size: int = 1,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Rows P(a ⊙ ∇ℓ(θ; x)), unit-normalised before projection if asked, and the norms ‖a ⊙ ∇ℓ‖: (n, k_p), (n,).

    Args:
        preconditioner: the flat Adam vector a (same order as `params`), or None for plain gradients.
        chunk: gradients projected together; trades memory (chunk × D floats) for fewer transform calls.
        transform: an optional map applied to each flat gradient first (e.g. LESS's Adam update direction).
        batch_size: above 1, one forward and backward pass per batch of samples
            (`per_sample.batched_projected_gradients`): the same rows from hooks on the linear layers.
    """
    if batch_size > 1:
        return batched_projected_gradients(model, examples, params, projector, preconditioner, normalize,
                                           max(1, batch_size), transform=transform, desc=desc, progress=progress)
    device = next(model.parameters()).device
    a = preconditioner.to(device) if preconditioner is not None else None
    out = torch.empty(len(examples), projector.out_dim)
    norms = torch.empty(len(examples), dtype=torch.float64)
    pending: list[torch.Tensor] = []
    done = 0
    with only_requires_grad(model, params), tqdm(total=len(examples), desc=desc, unit="sample", disable=not progress) as bar:
        for example in examples:
            gradient = flat_gradient(model, params, example)
            pending.append(gradient if transform is None else transform(gradient))
            if len(pending) == chunk or done + len(pending) == len(examples):
                rows = torch.stack(pending) if len(pending) > 1 else pending[0][None]
                stop = done + len(pending)
                norms[done:stop] = (rows if a is None else rows * a).norm(dim=1).double().cpu()
                out[done:stop] = projector(rows, diag=a, normalize=normalize).cpu()
                done = stop
                bar.update(len(pending))
                pending.clear()
    return out, norms


@dataclass
class GradientSpace:
    """What landmark and target gradients share: parameters, projection, normalisation, optional AdamW state."""

    params: dict[str, nn.Parameter]
    projector: Any
    normalize: bool = True
    adam_states: dict[str, AdamParamState] | None = None
    preconditioner: torch.Tensor | None = None  # the flat Adam vector a
    batch_size: int = 1  # samples per forward/backward pass (per_sample.py above 1)

    @property
    def num_coordinates(self) -> int:
        return sum(p.numel() for p in self.params.values())

    def offset(self) -> torch.Tensor:
        """The flat Adam vector b (momentum + weight decay part of the next step)."""
        return adam_offset_vector(self.adam_states, self.params)


def gradient_space(model: nn.Module, config: GradientConfig, seed: int,
                   batch_size: int | None = None) -> GradientSpace:
    """The parameters `config.params` names, their projection (seeded) and, with `config.optimizer_state`, the Adam
    preconditioner. Batches are `config.batch_size`; unset, `batch_size` where batching is exact (every chosen
    parameter a linear layer's), else 1 (a run picks `batch_size` by device: `run/policy.py`)."""
    params = select_parameters(model, config.params, "GradientConfig.params")
    size = sum(p.numel() for p in params.values())
    layers = linear_layers(model, params)
    if config.projection == "kronecker":
        if layers is None:
            raise ConfigError(f"GradientConfig.projection='kronecker' needs every GradientConfig.params="
                              f"{config.params!r} parameter to be the weight or bias of a linear layer; use "
                              "GradientConfig.projection='srht'")
        projector = KroneckerProjector(layers, params, config.proj_dim, seed)
    elif config.projection == "countsketch" and size > config.proj_dim:
        projector = CountSketchProjector(size, config.proj_dim, seed)
    else:
        projector = make_projector(size, config.proj_dim, seed)
    if config.batch_size is not None:
        batch_size = config.batch_size
    else:  # batched only where it is exact
        batch_size = (batch_size or 1) if layers is not None else 1
    space = GradientSpace(params, projector, config.normalize, batch_size=batch_size)
    if config.optimizer_state:
        space.adam_states = load_adamw_state(config.optimizer_state, model)
        space.preconditioner = adam_preconditioner(space.adam_states, list(params))
    return space


def compute_gradients(
    model: nn.Module, examples: list[Example], space: GradientSpace, precondition: bool, desc: str = "gradients",
    progress: bool = True,
) -> torch.Tensor:
    """Stage 3: projected per-sample gradients (n, k_p), unit-normalised and Adam-preconditioned as configured."""
    rows, _ = projected_gradients(
        model, examples, space.params, space.projector, space.preconditioner if precondition else None,
        space.normalize, desc=desc, progress=progress, batch_size=space.batch_size,
    )
    return rows
