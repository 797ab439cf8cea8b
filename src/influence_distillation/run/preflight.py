"""`select --dry-run`: what a run will cost, before any heavy work, for this run and for its peers RDS+ and LESS.

Each stage's own code is timed on a few calibration batches on this machine (`calibrate`) at three lengths of the
pool's (its 25th, 75th and 99th percentiles), and a per-sample cost a·T + b·T² in the padded length T is fitted to
them: the linear layers and the attention. That cost is then summed over the batches the run will actually form
(each shard of rows sorted by length and cut into batches, as `sharded` stages do), so padding and the long tail of
the pool are counted. Gradients (one sample at a time) get the same fit plus a per-sample part: the projection, and
for LESS also its Adam direction. Loading and tokenising are done for real. `estimates.py` turns the rates into
per-stage time, memory and disk; a run whose peak memory or disk would not fit is refused with a message that says
which stage and what to change.
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
from influence_distillation.data.records import iter_samples
from influence_distillation.data.tokenization import tokenize_samples
from influence_distillation.errors import ConfigError
from influence_distillation.method import (
    AdamParamState,
    Layout,
    Projection,
    Tokens,
    baseline_parts,
    flat_gradient,
    influence_parts,
    landmark_count,
    less_transform,
    only_requires_grad,
    rds_embeddings,
)
from influence_distillation.model.blocks import find_blocks
from influence_distillation.model.loading import load_model, pad_token_id
from influence_distillation.run import estimates
from influence_distillation.run.estimates import GIB, Estimate, Rates, Sizes, Workload
from influence_distillation.run.policy import run_embedder, run_gradient_space, verification_count
from influence_distillation.run.shards import EMBEDDING_SHARD

PEERS = ("rds+", "less")
QUANTILES = (0.25, 0.75, 0.99)  # the lengths calibration batches are timed at
RDS_BATCH = 16  # rds_embeddings' batch size


@dataclass
class DryRun:
    estimates: list[Estimate]  # this run's stages
    methods: dict[str, tuple[list[Estimate], float]]  # method → (its stages, its FLOPs), this run's first
    pool: int
    rates: Rates


def available_memory() -> float:
    with open("/proc/meminfo") as handle:
        for line in handle:
            if line.startswith("MemAvailable:"):
                return float(line.split()[1]) * 1024
    return float("inf")  # pragma: no cover - not Linux


def dry_run(config: SelectConfig) -> DryRun:
    """Load the model, read and tokenise the data, time the calibration batches and predict this run and its peers."""
    config.validate()
    start = time.perf_counter()
    model, tokenizer = load_model(config.model)
    loaded = time.perf_counter()
    pool, target = (tokenize_samples(iter_samples(path, name, config.data.split, config.data.subset,
                                                  f"SelectConfig.{name}"), tokenizer,
                                     config.data.max_length, config.data.template_fallback, name, False).examples
                    for name, path in (("pool", config.pool), ("target", config.target)))  # the pool streams
    tokenized = time.perf_counter()
    if not pool or not target:
        raise ConfigError(f"no pool or target sample has a trainable token within "
                          f"DataConfig.max_length={config.data.max_length}")
    rates, sizes, layout, projector = calibrate(model, tokenizer, pool, target, config, loaded - start,
                                                tokenized - loaded)
    first = landmark_count(config.landmarks.count, len(pool))
    work = Workload(Tokens.of(pool), Tokens.of(target), first,
                    verification_count(config.landmarks.verify, config.selection.budget, first, len(pool)),
                    config.selection.budget, config.landmarks.verify_rounds)
    order = config.influence.order
    methods = {}
    for method in dict.fromkeys([config.method, *(("influence",) if config.method not in ("influence", "exact")
                                                  else ()), *PEERS]):
        exact = method == "exact" or (method == "influence" and config.influence.exact)
        name = "exact" if exact else method
        if name in ("influence", "exact"):
            landmarks = work.pool if exact else work.pool.scaled(work.landmarks + work.verify)
            flops = influence_parts(layout, work.pool, landmarks, work.targets, config.embedding,
                                    Projection.of(projector), exact, order if method == config.method else 1)
        else:
            flops = baseline_parts(name, layout, work.pool, work.targets, Projection.of(projector))
        label = f"{name} (this run)" if method == config.method else name
        methods[label] = (estimates.for_method(name, work, rates, sizes, order if method == config.method else 1),
                          float(sum(flops.values())))
    return DryRun(next(iter(methods.values()))[0], methods, len(pool), rates)


def estimate(config: SelectConfig) -> list[Estimate]:
    """This run's per-stage estimates (see `dry_run`)."""
    return dry_run(config).estimates


def calibrate(model, tokenizer, pool, target, config: SelectConfig, load_seconds: float, tokenize_seconds: float):
    """Time each stage's own work on a few batches: `Rates` (effective per-token rates for this pool's lengths and
    batches), and the `Sizes`, `Layout` and gradient projector of this model and configuration."""
    lengths = np.asarray(pool.lengths() if hasattr(pool, "lengths") else [len(e) for e in pool])
    by_length = np.argsort(lengths, kind="stable")
    at = [int(by_length[min(len(pool) - 1, int(q * len(pool)))]) for q in QUANTILES]  # rows at those lengths
    bytes_per = torch.finfo(next(model.parameters()).dtype).bits // 8
    model_bytes = sum(p.numel() for p in model.parameters()) * bytes_per
    tokens = max(1, int(lengths.sum()))

    space = run_gradient_space(model, config.gradients, 0)  # the run's parameters, projection and batching
    projector, size = space.projector, space.num_coordinates
    with only_requires_grad(model, space.params):
        gradient = _length_cost(lambda examples: flat_gradient(model, space.params, examples[0]), pool, at, 1)
    zero = torch.zeros(1, size)
    projection = _fastest(lambda: projector(zero))
    transform = less_transform(_blank_adam_states(space.params), space.params)
    less_sample = projection + _fastest(lambda: transform(zero[0]))
    gradient_seconds = float(np.sum(gradient(lengths)))  # one unpadded sample at a time: the pool's mean per token

    embedder = run_embedder(model, config.embedding, 0, pad_token_id(tokenizer))  # ours is always predicted
    embed = _length_cost(lambda batch: embedder(batch), pool, at, embedder.batch_size)
    forward = _length_cost(lambda batch: rds_embeddings(model, batch, pad_token_id(tokenizer), progress=False),
                           pool, at, RDS_BATCH)
    rates = Rates(load=load_seconds, tokenize_token=tokenize_seconds / tokens,
                  embed_token=_over_batches(embed, lengths, embedder.batch_size) / tokens,
                  gradient_sample=projection, gradient_token=gradient_seconds / tokens, less_sample=less_sample,
                  forward_token=_over_batches(forward, lengths, RDS_BATCH) / tokens, flops_per_second=_matmul_rate())
    hidden, layers, longest = model.config.hidden_size, len(find_blocks(model)[2]), int(lengths.max())
    settings = config.embedding
    if settings.method == "gradient":  # per sample of a batch: the whole model's activations, one layer's gradient
        layer = sum(p.numel() for p in embedder.params.values())
        working = embedder.batch_size * (longest * hidden * layers * 48 * bytes_per + layer * 4 * 3)
    else:
        # the kept blocks (the embedder's own copy, in its dtype) and their tangents (central differences keep
        # θ ± εv too) and a batch's activations (forward-mode AD carries a tangent beside each)
        kept_bytes = next(embedder.backbone.parameters()).element_size()
        kept = sum(p.numel() for p in embedder.backbone.parameters()) * kept_bytes
        copies, carried = (3, 0) if settings.method == "difference" else (1, settings.num_tangents)
        working = kept * (1 + copies * settings.num_tangents) + embedder.batch_size * longest * hidden \
            * settings.num_blocks * 64 * (1 + carried) * kept_bytes
    sizes = Sizes(model_bytes, bytes_per, hidden, layers, longest, size, getattr(projector, "padded_dim", size),
                  projector.out_dim, embedder.out_dim, working)
    return rates, sizes, Layout.of(model), projector


def _length_cost(run, pool, rows: list[int], batch: int):
    """Seconds per sample as a function of the padded length T, a·T + b·T² (a, b ≥ 0), fitted to `run` timed on a
    batch of `batch` copies of each of `rows` (copies: the batch then has exactly that length, no padding)."""
    timed = []
    for number, row in enumerate(rows):
        examples = [pool[row]] * batch
        if number == 0:
            run(examples)  # warm-up: first calls are slow
        timed.append((len(pool[row]), _fastest(lambda: run(examples), 2) / batch))
    lengths = np.array([t for t, _ in timed], dtype=float)
    seconds = np.array([s for _, s in timed])
    design = np.stack([lengths, lengths**2], axis=1)
    coefficients = np.linalg.lstsq(design, seconds, rcond=None)[0]
    if coefficients.min() < 0:  # noise made the quadratic part negative: the best linear fit instead
        coefficients = np.array([float(lengths @ seconds / (lengths @ lengths)), 0.0])
    return lambda t: coefficients[0] * np.asarray(t, dtype=float) + coefficients[1] * np.asarray(t, dtype=float) ** 2


def _over_batches(per_sample, lengths: np.ndarray, batch: int, shard_rows: int = EMBEDDING_SHARD) -> float:
    """Seconds for the whole pool, batched as the run batches it: each shard of rows sorted by length and cut into
    batches, every sample of a batch costing `per_sample` at the batch's longest length."""
    total = 0.0
    for start in range(0, len(lengths), shard_rows):
        ordered = np.sort(lengths[start : start + shard_rows])
        for first in range(0, len(ordered), batch):
            part = ordered[first : first + batch]
            total += len(part) * float(per_sample(part[-1]))
    return total


def _blank_adam_states(params) -> dict[str, AdamParamState]:
    """Moments of the right shapes for timing LESS's Adam direction: its cost does not depend on their values."""
    return {name: AdamParamState(torch.zeros_like(p, dtype=torch.float32), torch.ones_like(p, dtype=torch.float32),
                                 1, 1e-5, 0.9, 0.999, 1e-8, 0.0) for name, p in params.items()}


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


def check_fits(estimated: list[Estimate], out: Path, memory: float | None = None, disk: float | None = None) -> None:
    """Refuse a run whose peak memory or total disk would not fit."""
    memory = available_memory() if memory is None else memory
    peak = max(estimated, key=lambda e: e.memory)
    if peak.memory > 0.9 * memory:
        raise ConfigError(
            f"estimated peak memory {peak.memory / GIB:.1f} GiB (stage {peak.stage}) exceeds the "
            f"{memory / GIB:.1f} GiB available; lower EmbeddingConfig.batch_size, GradientConfig.proj_dim, "
            "LandmarkConfig.count or DataConfig.max_length, or use a bigger machine")
    root = out if out.exists() else next(p for p in out.parents if p.exists())
    disk = shutil.disk_usage(root).free if disk is None else disk
    needed = sum(e.disk for e in estimated)
    if needed > 0.9 * disk:
        raise ConfigError(f"the run needs about {needed / GIB:.1f} GiB of disk, {root} has {disk / GIB:.1f} GiB free")


def cpu_note() -> str:
    return f"(calibrated on this machine: {os.cpu_count()} CPUs, {torch.get_num_threads()} torch threads)"
