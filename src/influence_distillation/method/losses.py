"""The per-sample training loss, and the plumbing around it: which parameters get gradients, the dtype gradients
accumulate in, and backpropagating a batch's mean loss in bounded memory.

The per-sample loss is the mean token cross-entropy over the sample's completion tokens (labels != -100), the same
loss a Hugging Face causal LM computes from `labels`; logits are computed on completion tokens only where the
architecture allows.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch
import torch.nn.functional as F
from torch import nn

from influence_distillation.data.tokenization import IGNORE_INDEX, Batch, Example, collate

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


def working_dtype(dtype: torch.dtype) -> torch.dtype:
    """Accumulate in at least float32; keep float64 when the model runs in it."""
    return torch.promote_types(dtype, torch.float32)


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
