"""Per-sample loss gradients on a parameter subset, preconditioned, L2-normalised and SRHT-projected (paper §5.5).

The per-sample loss is the mean token cross-entropy over the sample's completion tokens (labels != -100), the same
loss a Hugging Face causal LM computes from `labels`. By default gradients are taken one unpadded sample at a time;
`batch_size` > 1 takes a batch's per-sample gradients of linear layers from one forward and backward pass
(`per_sample.py`).
"""

from __future__ import annotations

import contextlib
import re
from collections.abc import Iterator

import torch
import torch.nn.functional as F
from torch import nn
from tqdm.auto import tqdm

from influence_distillation.errors import ConfigError
from influence_distillation.method.projection import HadamardProjector, IdentityProjector
from influence_distillation.runtime.tokenization import IGNORE_INDEX, Batch, Example, collate

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


# Config fields that post-process the LM head's output; models with any of them set get full logits.
_LOGIT_POSTPROCESSING = ("final_logit_softcapping", "logit_scale", "logits_scaling", "output_multiplier_scale")


def backbone_and_head(model: nn.Module) -> tuple[nn.Module, nn.Module] | None:
    """The transformer body and the LM head of a causal LM (PEFT-wrapped or not), or None when logits are more
    than head(hidden) for this architecture. Lets the loss apply the vocabulary projection to completion tokens
    only: prompts are long, completions short, and the head is a large share of a small model's compute."""
    causal = model.get_base_model() if hasattr(model, "get_base_model") else model
    config = getattr(causal, "config", None)
    if config is None or any(getattr(config, name, None) for name in _LOGIT_POSTPROCESSING):
        return None
    backbone, head = getattr(causal, "base_model", None), causal.get_output_embeddings()
    if backbone is None or backbone is causal or head is None:
        return None
    return backbone, head


def token_log_likelihoods(model: nn.Module, batch: Batch) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-row sum and count of log p(token) over the labelled (completion) tokens of a padded batch: (B,), (B,)."""
    inputs = {"input_ids": batch.input_ids, "attention_mask": batch.attention_mask,
              "position_ids": batch.position_ids, "use_cache": False}
    targets = batch.labels[:, 1:]
    mask = targets != IGNORE_INDEX
    parts = backbone_and_head(model)
    if parts is None:
        logits = model(**inputs).logits[:, :-1][mask]
    else:
        logits = parts[1](parts[0](**inputs).last_hidden_state[:, :-1][mask])
    log_probs = F.log_softmax(logits.to(working_dtype(logits.dtype)), dim=-1)
    picked = log_probs.gather(1, targets[mask][:, None])[:, 0]
    rows = torch.arange(targets.shape[0], device=targets.device)[:, None].expand_as(targets)[mask]
    totals = torch.zeros(targets.shape[0], dtype=picked.dtype, device=picked.device).index_add(0, rows, picked)
    return totals, mask.sum(dim=1)


def batch_losses(model: nn.Module, batch: Batch) -> torch.Tensor:
    """Each row's mean completion-token cross-entropy, (B,)."""
    total, count = token_log_likelihoods(model, batch)
    return -total / count.clamp_min(1)


def sample_loss(model: nn.Module, example: Example) -> torch.Tensor:
    """ℓ(θ; x): mean cross-entropy over the completion tokens of one sample (labels shifted as in HF causal LMs)."""
    device = next(model.parameters()).device
    return batch_losses(model, collate([example], pad_id=0).to(device))[0]


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
        from influence_distillation.method.per_sample import batched_projected_gradients

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


def backward_mean_loss(model: nn.Module, examples: list[Example], pad_id: int = 0, max_tokens: int = 1024,
                       autocast=contextlib.nullcontext, weights: torch.Tensor | None = None) -> float:
    """Backpropagate the mean per-sample loss of `examples` (each multiplied by its entry of `weights`, if given) in
    micro-batches of at most `max_tokens` padded tokens.

    Gradients accumulate exactly as for one batch, but activation memory is bounded by the micro-batch: a batch of
    8 × 300 tokens of a 135M model otherwise holds ~6 GB of activations.
    """
    device = next(model.parameters()).device
    order = sorted(range(len(examples)), key=lambda i: len(examples[i]))
    total, start = 0.0, 0
    while start < len(order):
        stop = start + 1
        while stop < len(order) and (stop - start + 1) * len(examples[order[stop]]) <= max_tokens:
            stop += 1
        with autocast():
            losses = batch_losses(model, collate([examples[i] for i in order[start:stop]], pad_id).to(device))
            if weights is not None:
                losses = losses * weights[order[start:stop]].to(device=device, dtype=losses.dtype)
            loss = losses.sum()
        (loss / len(examples)).backward()
        total += loss.item()
        start = stop
    return total / len(examples)
