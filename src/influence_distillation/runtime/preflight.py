"""`select --dry-run`: estimated time, memory and disk of every stage, before any heavy work.

Time comes from timing a few calibration batches on this machine (one JVP batch, two per-sample gradients, one
forward batch) and scaling by the token counts of the real run. Memory and disk come from the model's size and the
shapes each stage holds. A run whose peak memory or disk would not fit what is available is refused with a message
that says which stage and what to change.
"""

from __future__ import annotations

import os
import shutil
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from influence_distillation.config import SelectConfig
from influence_distillation.errors import ConfigError
from influence_distillation.method.gradients import projected_gradients
from influence_distillation.method.landmarks import landmark_count
from influence_distillation.method.stages import gradient_space, make_embedder, verification_count
from influence_distillation.runtime.cost import token_count
from influence_distillation.runtime.data import iter_samples
from influence_distillation.runtime.models import find_blocks, load_model, pad_token_id, truncated_backbone
from influence_distillation.runtime.tokenization import tokenize_samples

GIB = 1 << 30
PER_SAMPLE_BYTES = 57  # kept per pool sample: the packed index (33 bytes) and the row cache (24)


@dataclass
class Estimate:
    stage: str
    seconds: float
    memory: float  # peak bytes while the stage runs (model included)
    disk: float  # bytes it writes


def available_memory() -> float:
    with open("/proc/meminfo") as handle:
        for line in handle:
            if line.startswith("MemAvailable:"):
                return float(line.split()[1]) * 1024
    return float("inf")  # pragma: no cover - not Linux


def estimate(config: SelectConfig) -> list[Estimate]:
    """Per-stage estimates for `config` (loads the model and data, times a few batches)."""
    config.validate()
    start = time.perf_counter()  # loading and tokenizing are done here for real: their time is measured, not guessed
    model, tokenizer = load_model(config.model)
    pool, target = (tokenize_samples(iter_samples(path, name, config.data.split, config.data.subset), tokenizer,
                                     config.data.max_length, config.data.template_fallback, name, False).examples
                    for name, path in (("pool", config.pool), ("target", config.target)))  # the pool streams
    load_seconds = time.perf_counter() - start
    if not pool or not target:
        raise ConfigError("no pool or target sample has a trainable token within --max-length")
    tokens = token_count
    by_length = np.argsort(pool.lengths(), kind="stable")  # no Example is built per pool sample
    median_length = lambda count: [pool[int(i)] for i in by_length[len(pool) // 2 : len(pool) // 2 + count]]
    longest = int(pool.lengths().max())
    bytes_per = torch.finfo(next(model.parameters()).dtype).bits // 8
    model_bytes = sum(p.numel() for p in model.parameters()) * bytes_per
    hidden, layers = model.config.hidden_size, len(find_blocks(model)[2])
    exact = config.influence.exact or config.method == "exact"
    landmarks = len(pool) if exact or config.method == "less" else landmark_count(config.landmarks.count, len(pool))
    if config.method == "influence" and not exact:  # verification landmarks are more of the same gradients
        landmarks += verification_count(config.landmarks.verify, config.selection.budget, landmarks, len(pool))
    landmark_examples = pool[:: max(1, len(pool) // max(1, landmarks))][:landmarks]

    space = gradient_space(model, config.gradients, 0)  # the run's parameters, projection and batching
    params, projector = space.params, space.projector
    size = space.num_coordinates
    sample = median_length(2)
    calibrate = lambda examples: projected_gradients(model, examples, params, projector, progress=False,
                                                     batch_size=space.batch_size)
    calibrate(sample[:1])  # warm-up: first calls are slow
    gradients_seconds = _fastest(lambda: calibrate(sample))
    # A gradient costs a fixed projection plus a length-proportional backward: target samples are often much
    # shorter than pool samples, so one per-token rate would misjudge them.
    per_gradient_fixed = min(_fastest(lambda: projector(torch.zeros(1, size))), gradients_seconds / len(sample))
    per_gradient_token = (gradients_seconds - per_gradient_fixed * len(sample)) / tokens(sample)

    def gradient_seconds(examples) -> float:
        return per_gradient_fixed * len(examples) + per_gradient_token * tokens(examples)

    padded = getattr(projector, "padded_dim", size)
    gradient_memory = model_bytes + size * 4 * 2 + padded * 4 * 3 + longest * hidden * layers * 48 * bytes_per

    estimates = [Estimate("load + tokenize", load_seconds, model_bytes, 0.0)]
    if config.method in ("influence", "exact") and not exact:
        embed = config.embedding
        embedder = make_embedder(model, embed, 0, pad_token_id(tokenizer))
        batch = median_length(embedder.batch_size)
        embedder(batch)  # warm-up
        per_token = _fastest(lambda: embedder(batch)) / tokens(batch)
        if embed.method == "gradient":  # per sample of a batch: the whole model's activations, one layer's gradient
            layer = sum(p.numel() for p in embedder.params.values())
            working = embedder.batch_size * (longest * hidden * layers * 48 * bytes_per + layer * 4 * 3)
        else:
            block_bytes = sum(p.numel() for p in truncated_backbone(model, embed.num_blocks).parameters()) * bytes_per
            working = block_bytes * (1 + embed.num_tangents) + embedder.batch_size * longest * hidden * embed.num_blocks \
                * 64 * (1 + embed.num_tangents) * bytes_per
        estimates.append(Estimate("embeddings", per_token * tokens(pool),
                                  model_bytes + working + len(pool) * PER_SAMPLE_BYTES, len(pool) * embedder.out_dim * 4))
    if config.method in ("influence", "exact", "less"):
        estimates.append(Estimate("target gradients", gradient_seconds(target), gradient_memory, 0.0))
        estimates.append(Estimate("landmark gradients" if config.method != "less" else "pool gradients",
                                  gradient_seconds(landmark_examples) * landmarks / max(1, len(landmark_examples)),
                                  gradient_memory + landmarks * projector.out_dim * 4,
                                  landmarks * projector.out_dim * 4))
        if config.influence.order == 2:
            estimates.append(Estimate("Hessian-vector products", 2 * per_gradient_token * tokens(target) * landmarks,
                                      gradient_memory + 8 * size * 4 * 3, 0.0))
    if config.method in ("influence",) and not exact:
        chunk, width = config.propagation.chunk_size, estimates[-3].disk / max(1, len(pool)) / 4
        flops = 2 * len(pool) * landmarks * width + landmarks**3 / 3 + 2 * landmarks**2 * width
        estimates.append(Estimate("propagation", flops / _matmul_rate(),
                                  model_bytes + landmarks**2 * 16 + chunk * landmarks * 8 + len(pool) * PER_SAMPLE_BYTES,
                                  len(pool) * len(target) * 8))  # the scores go to a scratch file
    if config.method in ("mid-ppl", "rds+"):
        device = next(model.parameters()).device
        with torch.no_grad():
            model(input_ids=sample[0].input_ids[None].to(device))  # warm-up
            start = time.perf_counter()
            model(input_ids=sample[0].input_ids[None].to(device))
        estimates.append(Estimate("pool forward passes", (time.perf_counter() - start) / len(sample[0])
                                  * tokens(pool), model_bytes + 16 * longest * hidden * 8 * bytes_per, 0.0))
    estimates.append(Estimate("write outputs", 1.0, model_bytes + len(pool) * PER_SAMPLE_BYTES,
                              len(pool) * (len(target) * 4 + 64)))
    return estimates


def _fastest(work, repeats: int = 3) -> float:
    """The fastest of a few timings: calibration runs are short, so one timing is mostly the machine's noise."""
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        work()
        times.append(time.perf_counter() - start)
    return min(times)


def _matmul_rate() -> float:
    """float32 FLOP/s of this machine, from a few timed matmuls."""
    a, b = torch.randn(512, 512), torch.randn(512, 1024)
    a @ b
    start = time.perf_counter()
    for _ in range(5):
        a @ b
    return 5 * 2 * 512 * 512 * 1024 / max(time.perf_counter() - start, 1e-9)


def check_fits(estimates: list[Estimate], out: Path, memory: float | None = None, disk: float | None = None) -> None:
    """Refuse a run whose peak memory or total disk would not fit."""
    memory = available_memory() if memory is None else memory
    peak = max(estimates, key=lambda e: e.memory)
    if peak.memory > 0.9 * memory:
        raise ConfigError(
            f"estimated peak memory {peak.memory / GIB:.1f} GiB (stage {peak.stage}) exceeds the "
            f"{memory / GIB:.1f} GiB available; lower --embedding-batch-size, --grad-dim, --landmarks or "
            "--max-length, or use a bigger machine")
    root = out if out.exists() else next(p for p in out.parents if p.exists())
    disk = shutil.disk_usage(root).free if disk is None else disk
    needed = sum(e.disk for e in estimates)
    if needed > 0.9 * disk:
        raise ConfigError(f"the run needs about {needed / GIB:.1f} GiB of disk, {root} has {disk / GIB:.1f} GiB free")


def format_estimates(estimates: list[Estimate]) -> str:
    lines = ["| stage | time | peak memory | disk |", "|---|---|---|---|"]
    for e in estimates:
        lines.append(f"| {e.stage} | {_duration(e.seconds)} | {e.memory / GIB:.2f} GiB | {e.disk / 2**20:.0f} MiB |")
    total = sum(e.seconds for e in estimates)
    peak = max(e.memory for e in estimates)
    lines.append(f"| **total** | {_duration(total)} | {peak / GIB:.2f} GiB | "
                 f"{sum(e.disk for e in estimates) / 2**20:.0f} MiB |")
    return "\n".join(lines)


def _duration(seconds: float) -> str:
    return f"{seconds:.0f} s" if seconds < 120 else f"{seconds / 60:.1f} min"


def cpu_note() -> str:
    return f"(calibrated on this machine: {os.cpu_count()} CPUs, {torch.get_num_threads()} torch threads)"
