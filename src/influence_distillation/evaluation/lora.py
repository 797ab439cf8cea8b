"""Does fine-tuning on a selection beat fine-tuning on a random subset of the same size? (`influence-distill evaluate`)

For each seed, LoRA adapters are trained from the same base model on (a) the selection and (b) a seeded random
subset of the pool of the same size, with the same recipe; the untrained model is the third row. Each model is scored
on the target's held-out test set by

* test loss: the mean over test samples of the teacher-forced, completion-token cross-entropy (the loss the selection
  optimises);
* accuracy, for multiple-choice test records (with `options`): the option with the highest total log-probability of
  its completion tokens (end-of-turn marker included) given the prompt, compared with the record's `completion`;
* a task metric from greedy answers where the test set has one (`task_metrics`): HumanEval pass@1, exact match on
  the generated maths.
"""

from __future__ import annotations

import copy
import inspect
import json
import logging
import math
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from influence_distillation.artifacts import write_json
from influence_distillation.data.records import Sample, load_samples
from influence_distillation.data.tokenization import (
    IGNORE_INDEX,
    Example,
    collate,
    length_batches,
    tokenize_samples,
    training_batches,
)
from influence_distillation.errors import ConfigError, DataError
from influence_distillation.evaluation.configs import EvalConfig
from influence_distillation.evaluation.task_metrics import task_metrics, task_set
from influence_distillation.method import (
    backbone_and_head,
    backward_mean_loss,
    batch_losses,
    token_log_likelihoods,
)
from influence_distillation.model.loading import load_model, pad_token_id
from influence_distillation.options import to_dict

log = logging.getLogger(__name__)

LORA_TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj", "c_attn", "c_proj",
                "c_fc", "query_key_value", "dense", "dense_h_to_4h", "dense_4h_to_h"]


def _autocast(enabled: bool):
    return torch.autocast("cpu" if not torch.cuda.is_available() else "cuda", dtype=torch.bfloat16, enabled=enabled)


def finetune_lora(base, examples: list[Example], config: EvalConfig, seed: int, pad_id: int, progress: bool = True,
                  weights: torch.Tensor | None = None):
    """A LoRA-adapted copy of `base` trained on `examples` (each loss times its entry of `weights`, if given); the
    base model is left untouched."""
    try:
        from peft import LoraConfig, get_peft_model
    except ImportError:
        raise ConfigError("evaluation needs peft: pip install 'influence-distillation[demo]'") from None
    torch.manual_seed(seed)
    names = {name.rsplit(".", 1)[-1] for name, _ in base.named_modules()}
    model = get_peft_model(copy.deepcopy(base), LoraConfig(
        r=config.lora_rank, lora_alpha=2 * config.lora_rank, lora_dropout=0.0,
        target_modules=[t for t in LORA_TARGETS if t in names]))
    steps = config.steps or math.ceil(config.epochs * len(examples) / config.batch_size)
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=config.learning_rate)
    schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: 1 - step / steps)
    model.train()
    batches = training_batches([len(e) for e in examples], config.batch_size, steps, np.random.default_rng(seed))
    with tqdm(batches, total=steps, desc="LoRA fine-tune", unit="step", disable=not progress, leave=False) as bar:
        for batch in bar:
            optimizer.zero_grad(set_to_none=True)
            loss = backward_mean_loss(model, [examples[i] for i in batch], pad_id,
                                      autocast=lambda: _autocast(config.bf16),
                                      weights=None if weights is None else weights[batch])
            optimizer.step()
            schedule.step()
            bar.set_postfix(loss=f"{loss:.3f}")
    return model.eval()


@torch.no_grad()
def test_metrics(model, test: list[Example], choices: list[tuple[list[Example], int]] | None, config: EvalConfig,
                 pad_id: int, progress: bool = False) -> dict[str, float]:
    """Test loss; with `choices` (per test record: one example per option and the correct index) also accuracy.

    For multiple-choice records both come from one pass (`score_choices`): the loss is the correct option's mean
    token loss, the prediction the option with the highest total log-likelihood.
    """
    device = next(model.parameters()).device
    if not choices:
        batches = length_batches([len(e) for e in test], 16)
        losses = [batch_losses(model, collate([test[i] for i in indices], pad_id).to(device))
                  for indices in tqdm(batches, desc="test loss", unit="batch", disable=not progress, leave=False)]
        return {"test_loss": float(torch.cat(losses).double().mean())}
    scored = score_choices(model, [options for options, _ in choices], pad_id, progress=progress)
    losses = [float(-totals[answer] / counts[answer]) for (totals, counts), (_, answer) in zip(scored, choices)]
    correct = [int(totals.argmax()) == answer for (totals, _), (_, answer) in zip(scored, choices)]
    return {"test_loss": float(np.mean(losses)), "accuracy": float(np.mean(correct))}


def score_choices(model, questions: list[list[Example]], pad_id: int, batch_size: int = 16,
                  progress: bool = False) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """For each question (its options rendered as completions of one prompt): every option's total completion
    log-likelihood and token count, (n_options,) each.

    The prompt is the options' common token prefix (cut before any completion token). Prompts run once, batched
    `batch_size` at a time, and every option continues from its prompt's KV cache, so the long prompt is not paid
    once per option. Falls back to scoring whole sequences for architectures without a plain LM head.
    """
    device = next(model.parameters()).device
    parts = backbone_and_head(model)
    if parts is None:
        return [tuple(t.double().cpu() for t in token_log_likelihoods(model, collate(options, pad_id).to(device)))
                for options in questions]
    backbone, head = parts
    cache_key = "cache" if "cache" in inspect.signature(backbone.forward).parameters else "past_key_values"
    prefixes = [_shared_prefix(options) for options in questions]
    results: list[tuple[torch.Tensor, torch.Tensor] | None] = [None] * len(questions)
    groups = length_batches(prefixes, batch_size)
    for group in tqdm(groups, desc="test loss + accuracy", unit="batch", disable=not progress, leave=False):
        prompt_batch = collate([Example("", questions[q][0].input_ids[: prefixes[q]],
                                        torch.full((prefixes[q],), IGNORE_INDEX), False) for q in group],
                               pad_id).to(device)
        prompt = backbone(input_ids=prompt_batch.input_ids, attention_mask=prompt_batch.attention_mask,
                          position_ids=prompt_batch.position_ids, use_cache=True)
        owner = torch.tensor([row for row, q in enumerate(group) for _ in questions[q]], device=device)
        rests = [Example("", o.input_ids[prefixes[q]:], o.labels[prefixes[q]:], False) for q in group
                 for o in questions[q]]
        rest = collate(rests, pad_id).to(device)
        rest.labels[:, 0] = torch.stack([r.labels[0] for r in rests]).to(device)  # collate masks position 0
        cache = getattr(prompt, "cache", None) or prompt.past_key_values
        cache.batch_select_indices(owner)
        lengths = torch.tensor([prefixes[q] for q in group], device=device)[owner]
        hidden = backbone(input_ids=rest.input_ids,
                          attention_mask=torch.cat([prompt_batch.attention_mask[owner], rest.attention_mask], dim=1),
                          position_ids=rest.position_ids + lengths[:, None], use_cache=True,
                          **{cache_key: cache}).last_hidden_state
        # Token j of an option is predicted from the position before it: the prompt's last state for j = 0.
        last = prompt.last_hidden_state[owner, lengths - 1]
        before = torch.cat([last[:, None], hidden[:, :-1]], dim=1)
        labelled = rest.labels != IGNORE_INDEX
        log_probs = F.log_softmax(head(before[labelled]).double(), dim=-1)
        picked = log_probs.gather(1, rest.labels[labelled][:, None])[:, 0]
        rows = torch.arange(len(rests), device=device)[:, None].expand_as(rest.labels)[labelled]
        totals = torch.zeros(len(rests), dtype=torch.float64, device=device).index_add(0, rows, picked).cpu()
        counts = labelled.sum(dim=1).cpu()
        start = 0
        for q in group:
            stop = start + len(questions[q])
            results[q] = (totals[start:stop], counts[start:stop])
            start = stop
    return results


def _shared_prefix(options: list[Example]) -> int:
    """Length of the options' common token prefix, cut before the first completion (labelled) token."""
    first_label = min(int((e.labels[1:] != IGNORE_INDEX).nonzero()[0]) + 1 for e in options)
    shared = 0
    while shared < first_label - 1 and all(e.input_ids[shared] == options[0].input_ids[shared] for e in options):
        shared += 1
    return max(shared, 1)


def _option_examples(samples: list[Sample], tokenizer, max_length: int, fallback: bool):
    """For multiple-choice test records: each option rendered as the completion, and the correct option's index."""
    choices = []
    for sample in samples:
        options = sample.record.get("options")
        if not options:
            return None
        if sample.messages is None or len(sample.messages) != 2:
            raise DataError(f"test record {sample.id}: multiple-choice 'options' need a prompt/completion (single-turn) "
                            "record")
        variants = [Sample(f"{sample.id}/{i}", {}, (("user", sample.messages[0][1]), ("assistant", str(option))), None)
                    for i, option in enumerate(options)]
        tokenized = tokenize_samples(variants, tokenizer, max_length, fallback)
        if len(tokenized.examples) != len(options):
            raise DataError(f"test record {sample.id}: an option has no token within --max-length {max_length}")
        if sample.record["completion"] not in options:
            raise DataError(f"test record {sample.id}: completion is not one of its options")
        choices.append((tokenized.examples, options.index(sample.record["completion"])))
    return choices


def evaluate_subsets(config: EvalConfig, subsets, test_path: str, progress: bool = True,
                     untrained: bool = True, answers_dir: Path | None = None) -> dict[str, Any]:
    """Fine-tune on each subset (name → samples, or name → function of the seed giving samples) for every seed and
    score on `test_path`; the untrained model is the row `untrained` (unless `untrained` is False). Returns
    mean ± std and per-seed metrics. With `answers_dir`, each model's task-metric answers go to
    `answers_dir/{name}-seed{seed}.jsonl` (`untrained.jsonl`)."""
    started = time.perf_counter()
    model, tokenizer = load_model(config.model)
    pad_id = pad_token_id(tokenizer)
    test_samples = load_samples(test_path, "test", field="EvalConfig.test")

    def tokenize(samples, what):
        result = tokenize_samples(samples, tokenizer, config.max_length, True, what).examples
        if not result:
            raise DataError(f"{what}: no sample has a trainable token within --max-length {config.max_length}")
        return result

    test = tokenize(test_samples, "test")
    choices = _option_examples(test_samples, tokenizer, config.max_length, True)
    tasks = task_set(test_samples, tokenizer) if config.task_metric else None

    def score(scored_model, label: str) -> dict[str, float]:
        metrics = test_metrics(scored_model, test, choices, config, pad_id, progress)
        answers = answers_dir / f"{label}.jsonl" if answers_dir is not None else None
        return {**metrics, **(task_metrics(scored_model, tokenizer, tasks, pad_id, progress, answers) if tasks else {})}
    rows: dict[str, list[dict[str, float]]] = {}
    if untrained:
        rows["untrained"] = [score(model, "untrained")]
    for seed in range(config.seed, config.seed + config.seeds):
        for name, subset in subsets.items():
            samples = subset(seed) if callable(subset) else subset
            examples = tokenize(samples, name)
            weights = training_weights(samples, examples) if config.weighted and name != "random" else None
            tuned = finetune_lora(model, examples, config, seed, pad_id, progress, weights)
            rows.setdefault(name, []).append(score(tuned, f"{name}-seed{seed}"))
            del tuned  # one adapted copy of the model at a time
            log.info("seed %d %s: %s", seed, name, rows[name][-1])
    return {"results": {name: aggregate_runs(runs) for name, runs in rows.items()}, "per_seed": rows,
            "seconds": round(time.perf_counter() - started, 1)}


def training_weights(samples: list[Sample], examples: list[Example]) -> torch.Tensor:
    """Each example's `weight` from its record, rescaled to mean 1 (the optimal weights sum to the pool size)."""
    by_id = {sample.id: sample for sample in samples}
    missing = [e.id for e in examples if not isinstance(by_id[e.id].record.get("weight"), (int, float))]
    if missing:
        raise DataError(f"--weighted: training record {missing[0]} has no numeric 'weight' field (select with "
                        "--selection weights or --order 2 to get one)")
    weights = torch.tensor([float(by_id[e.id].record["weight"]) for e in examples], dtype=torch.float64)
    if not torch.isfinite(weights).all() or (weights < 0).any() or weights.sum() <= 0:
        raise DataError("--weighted: training weights must be finite, non-negative and not all zero")
    return weights * (len(weights) / weights.sum())


def run_evaluation(config: EvalConfig, progress: bool = True) -> dict[str, Any]:
    """Evaluate untrained / random subset / selection; writes and returns the summary (means ± std over seeds)."""
    config.validate()
    selection = load_samples(config.train, "train", field="EvalConfig.train")
    pool = load_samples(config.pool, "pool", field="EvalConfig.pool")
    if len(selection) > len(pool):
        raise DataError(f"--train has {len(selection)} samples, more than the {len(pool)} of --pool")

    def random_subset(seed: int):
        picked = np.random.default_rng(seed).choice(len(pool), size=len(selection), replace=False)
        return [pool[i] for i in np.sort(picked)]

    outcome = evaluate_subsets(config, {"random": random_subset, "selection": selection}, config.test, progress,
                               answers_dir=Path(config.out) / "answers")
    summary = {"config": to_dict(config), "subset_size": len(selection), **outcome}
    write_json(Path(config.out) / "eval.json", summary)
    return summary


def aggregate_runs(runs: list[dict[str, float]]) -> dict[str, float]:
    """Mean and sample std (0 for one run) of each metric over runs."""
    out = {}
    for metric in runs[0]:
        values = np.array([run[metric] for run in runs])
        out[metric] = float(values.mean())
        out[f"{metric}_std"] = float(values.std(ddof=1)) if len(values) > 1 else 0.0
    return out


def format_table(summary: dict[str, Any]) -> str:
    """A Markdown table of one evaluation summary."""
    results = summary["results"]
    metrics = [m for m in results["untrained"] if not m.endswith("_std")]
    lines = ["| model | " + " | ".join(metrics) + " |", "|---|" + "---|" * len(metrics)]
    for name, values in results.items():
        cells = [f"{values[m]:.4f} ± {values[m + '_std']:.4f}" if name != "untrained" else f"{values[m]:.4f}"
                 for m in metrics]
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def load_summary(path: Path) -> dict[str, Any]:
    return json.loads(path.read_text(encoding="utf-8"))
