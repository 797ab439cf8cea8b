"""Per-sample loss gradients on a parameter subset, preconditioned, L2-normalised and SRHT-projected (paper §5.5).

The per-sample loss is the mean token cross-entropy over the sample's completion tokens (labels != -100), the same
loss a Hugging Face causal LM computes from `labels`. Gradients are taken one unpadded sample at a time: on a CPU
this is as fast as `vmap` and needs far less memory, and no padding is ever computed.
"""

from __future__ import annotations

import contextlib
import re
from collections.abc import Iterator

import torch
import torch.nn.functional as F
from torch import nn
from tqdm.auto import tqdm

from .errors import ConfigError
from .projection import HadamardProjector, IdentityProjector
from .tokenization import IGNORE_INDEX, Example

# Names of the MLP output projection across architectures: Llama/Qwen/Mistral, GPT-2, GPT-NeoX, OPT/Phi, Mixtral-style.
MLP_DOWN = r"(down_proj|mlp\.c_proj|dense_4h_to_h|fc2|mlp\.w2)\.(weight|bias)$"


def select_parameters(model: nn.Module, spec: str) -> dict[str, nn.Parameter]:
    """Parameters named by `spec`: 'mlp-down', 'all', or a regular expression searched in parameter names."""
    pattern = {"mlp-down": MLP_DOWN, "all": ""}.get(spec, spec)
    try:
        regex = re.compile(pattern)
    except re.error as exc:
        raise ConfigError(f"--grad-params: invalid regular expression {spec!r} ({exc})") from None
    chosen = {name: p for name, p in model.named_parameters() if regex.search(name)}
    if not chosen:
        raise ConfigError(f"--grad-params {spec!r} matches no parameter of {type(model).__name__}")
    return chosen


def sample_loss(model: nn.Module, example: Example) -> torch.Tensor:
    """Mean cross-entropy over the completion tokens of one sample (labels shifted as in HF causal LMs)."""
    device = next(model.parameters()).device
    input_ids = example.input_ids.to(device)[None]
    logits = model(input_ids=input_ids, use_cache=False).logits[0, :-1]
    logits = logits.to(working_dtype(logits.dtype))
    return F.cross_entropy(logits, example.labels.to(device)[1:], ignore_index=IGNORE_INDEX)


@contextlib.contextmanager
def only_requires_grad(model: nn.Module, params: dict[str, nn.Parameter]) -> Iterator[None]:
    """Backpropagate into `params` only, restoring every flag afterwards."""
    before = {name: p.requires_grad for name, p in model.named_parameters()}
    chosen = {id(p) for p in params.values()}
    try:
        for p in model.parameters():
            p.requires_grad_(id(p) in chosen)
        yield
    finally:
        for name, p in model.named_parameters():
            p.requires_grad_(before[name])


def flat_gradient(model: nn.Module, params: dict[str, nn.Parameter], example: Example) -> torch.Tensor:
    """∇ℓ(θ; x) over `params`, flattened in `params` order, in float32 (float64 for a float64 model).

    Call inside `only_requires_grad`."""
    grads = torch.autograd.grad(sample_loss(model, example), list(params.values()))
    return torch.cat([g.reshape(-1).to(working_dtype(g.dtype)) for g in grads])


def working_dtype(dtype: torch.dtype) -> torch.dtype:
    """Accumulate in at least float32; keep float64 when the model runs in it."""
    return torch.promote_types(dtype, torch.float32)


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
) -> tuple[torch.Tensor, torch.Tensor]:
    """Rows P(a ⊙ ∇ℓ(θ; x)), unit-normalised before projection if asked, and the norms ‖a ⊙ ∇ℓ‖: (n, k_p), (n,).

    Args:
        preconditioner: the flat Adam vector a (same order as `params`), or None for plain gradients.
        chunk: gradients projected together; trades memory (chunk × D floats) for fewer transform calls.
    """
    device = next(model.parameters()).device
    a = preconditioner.to(device) if preconditioner is not None else None
    out = torch.empty(len(examples), projector.out_dim)
    norms = torch.empty(len(examples), dtype=torch.float64)
    pending: list[torch.Tensor] = []
    done = 0
    with only_requires_grad(model, params), tqdm(total=len(examples), desc=desc, unit="sample", disable=not progress) as bar:
        for example in examples:
            pending.append(flat_gradient(model, params, example))
            if len(pending) == chunk or done + len(pending) == len(examples):
                rows = torch.stack(pending) if len(pending) > 1 else pending[0][None]
                stop = done + len(pending)
                norms[done:stop] = (rows if a is None else rows * a).norm(dim=1).double().cpu()
                out[done:stop] = projector(rows, diag=a, normalize=normalize).cpu()
                done = stop
                bar.update(len(pending))
                pending.clear()
    return out, norms
