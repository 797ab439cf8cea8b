"""Warm-up: a short AdamW fine-tune on a seeded random slice of the pool, saving the model and its optimizer state.

The Adam variant of the influence (paper §3) needs the moments of an optimizer that has been training on data like
the pool; this stage produces them. The output folder is a Hugging Face model directory (safetensors) plus
`optimizer.pt` (`torch.optim.AdamW(model.named_parameters()).state_dict()`, loadable with `weights_only=True`, with
parameter names recorded) and `warmup.json`. It is written to a temporary sibling and renamed into place, so a
folder named `--out` is always complete.
"""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path

import numpy as np
import torch
from tqdm.auto import tqdm

from influence_distillation.artifacts import atomic_directory
from influence_distillation.config import WarmupConfig
from influence_distillation.data.records import load_samples
from influence_distillation.data.tokenization import tokenize_samples, training_batches
from influence_distillation.errors import ConfigError, OutputError
from influence_distillation.method import backward_mean_loss, select_parameters
from influence_distillation.model.loading import load_model, pad_token_id
from influence_distillation.options import to_dict

log = logging.getLogger(__name__)


def run_warmup(config: WarmupConfig, overwrite: bool = False, progress: bool = True) -> Path:
    """Train, then write the model, `optimizer.pt` and `warmup.json` into `config.out`; returns that path."""
    config.validate()
    out = Path(config.out)
    if out.exists() and any(out.iterdir()) and not overwrite:
        raise OutputError(f"WarmupConfig.out={str(out)!r} is not empty; choose another folder or pass "
                          "overwrite=True")
    started = time.perf_counter()
    model, tokenizer = load_model(config.model)
    samples = load_samples(config.pool, "pool", config.data.split, config.data.subset, "WarmupConfig.pool")
    rng = np.random.default_rng(config.seed)
    chosen = np.sort(rng.choice(len(samples), size=min(config.size, len(samples)), replace=False))
    tokenized = tokenize_samples([samples[i] for i in chosen], tokenizer, config.data.max_length,
                                 config.data.template_fallback, "warm-up")
    if not tokenized.examples:
        raise ConfigError(f"no warm-up sample has a trainable token within "
                          f"DataConfig.max_length={config.data.max_length}")
    trained = select_parameters(model, config.params, "WarmupConfig.params")
    for name, p in model.named_parameters():
        p.requires_grad_(name in trained)
    optimizer = torch.optim.AdamW(list(trained.items()), lr=config.learning_rate,
                                  weight_decay=config.weight_decay)
    losses = _train(model, tokenized.examples, optimizer, config, rng, pad_token_id(tokenizer), progress)

    with atomic_directory(out) as staging:
        for p in model.parameters():
            p.requires_grad_(True)
        model.save_pretrained(staging)
        tokenizer.save_pretrained(staging)
        torch.save(optimizer.state_dict(), staging / "optimizer.pt")
        summary = {"config": to_dict(config), "samples": len(tokenized.examples), "steps": config.steps,
                   "trained_parameters": len(trained), "losses": losses,
                   "seconds": round(time.perf_counter() - started, 3), "status": "complete"}
        (staging / "warmup.json").write_text(json.dumps(summary, indent=2) + "\n", encoding="utf-8")
    return out


def _train(model, examples, optimizer, config: WarmupConfig, rng, pad_id: int, progress: bool) -> list[float]:
    """`steps` AdamW steps on length-bucketed random batches (mean of per-sample losses); returns every step's loss."""
    model.train()
    losses = []
    batches = training_batches([len(e) for e in examples], config.batch_size, config.steps, rng)
    with tqdm(batches, total=config.steps, desc="warm-up", unit="step", disable=not progress) as bar:
        for batch_indices in bar:
            optimizer.zero_grad(set_to_none=True)
            loss = backward_mean_loss(model, [examples[i] for i in batch_indices], pad_id)
            optimizer.step()
            losses.append(round(loss, 6))
            bar.set_postfix(loss=f"{losses[-1]:.4f}")
    model.eval()
    return losses
