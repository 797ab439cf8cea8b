"""What a run chooses for the method: batch sizes by device, seeds per stage, how many verification landmarks, which
target samples the Hessian is taken over, the default learning rate, what memory a stage may take, and when to warn
that propagation ranks poorly. The math these feed is in `method/`; the choices are the run's."""

from __future__ import annotations

import hashlib

import numpy as np
import torch
from torch import nn

from influence_distillation.config import EmbeddingConfig, GradientConfig
from influence_distillation.data.tokenization import Example
from influence_distillation.errors import ConfigError
from influence_distillation.method import (
    GradientSpace,
    gradient_space,
    make_embedder,
    select_parameters,
    state_learning_rate,
)

DEFAULT_LEARNING_RATE = 2e-5  # the paper's fine-tuning rate; used when neither a flag nor a state gives one
MAX_COEFFICIENT_BYTES = 4 << 30  # the dense (N, l) propagation matrix that second order's weights need
# Batch sizes when the config leaves them unset, by device type. On a CPU one unpadded sample at a time wastes
# nothing; on a GPU small batches are launch-bound (docs/BENCHMARKS.md, "On a GPU").
EMBEDDING_BATCH = {"cpu": 8, "cuda": 64}
GRADIENT_BATCH = {"cpu": 1, "cuda": 16}
# A batch's per-sample gradients are formed at full size before projection: ≈ 9 bytes a coordinate a sample at peak
# (the float32 rows plus the einsum's block; 55 GiB for 16 samples of SmolLM2-1.7B's 403M MLP down-projection
# coordinates on an H200, docs/BENCHMARKS.md). The default batch keeps them within half the GPU's memory.
GRADIENT_BYTES_PER_COORDINATE = 9
GRADIENT_MEMORY_SHARE = 0.5
LOW_FIDELITY = 0.6  # held-out Spearman below which the propagated ranking is not to be trusted


def derive_seed(master: int, stage: str) -> int:
    """An independent, reproducible seed per stage, so changing one stage's randomness leaves the others alone."""
    return int.from_bytes(hashlib.sha256(f"{master}:{stage}".encode()).digest()[:4], "little")


def device_batch_size(requested: int | None, defaults: dict[str, int], device: torch.device) -> int:
    """`requested`, or the default for `device`'s type (the CPU's for devices without one)."""
    return requested if requested is not None else defaults.get(torch.device(device).type, defaults["cpu"])


def gradient_batch_size(device: torch.device, coordinates: int, memory_bytes: int | None = None) -> int:
    """The device's default gradient batch, smaller where its full-size per-sample gradients would not fit.

    Without the cap a 7B model's 1.4B MLP down-projection coordinates would need ≈ 200 GB for 16 samples.
    `memory_bytes` is the accelerator's total memory (read from CUDA when not given; none on a CPU).
    """
    device = torch.device(device)
    default = device_batch_size(None, GRADIENT_BATCH, device)
    if memory_bytes is None and device.type == "cuda":
        memory_bytes = torch.cuda.get_device_properties(device).total_memory
    if memory_bytes is None:
        return default
    fits = int(memory_bytes * GRADIENT_MEMORY_SHARE) // (GRADIENT_BYTES_PER_COORDINATE * max(1, coordinates))
    return max(1, min(default, fits))


def embedding_batch_size(model: nn.Module, config: EmbeddingConfig) -> int:
    return device_batch_size(config.batch_size, EMBEDDING_BATCH, next(model.parameters()).device)


def run_embedder(model: nn.Module, config: EmbeddingConfig, seed: int, pad_id: int = 0):
    """`method.make_embedder` with the device's batch size where the config sets none."""
    return make_embedder(model, config, seed, pad_id, embedding_batch_size(model, config))


def run_gradient_space(model: nn.Module, config: GradientConfig, seed: int) -> GradientSpace:
    """`method.gradient_space` with the device's gradient batch (capped by its memory) where the config sets none."""
    batch_size = config.batch_size
    if batch_size is None:
        params = select_parameters(model, config.params, "GradientConfig.params")
        coordinates = sum(p.numel() for p in params.values())
        batch_size = gradient_batch_size(next(model.parameters()).device, coordinates)
    return gradient_space(model, config, seed, batch_size)


def learning_rate(requested: float | None, space: GradientSpace) -> float:
    """η of the one-step model: as asked, else the optimizer state's, else the paper's fine-tuning rate."""
    if requested is not None:
        return requested
    if space.adam_states is not None:
        return state_learning_rate(space.adam_states, list(space.params))
    return DEFAULT_LEARNING_RATE


def verification_count(requested: int, budget: int, landmarks: int, pool: int) -> int:
    """How many verification landmarks a run places: `requested`, or for -1 the smaller of the budget and the
    first landmarks; never more than the samples that are not landmarks yet."""
    count = min(budget, landmarks) if requested == -1 else requested
    return max(0, min(count, pool - landmarks))


def hessian_sample(targets: list[Example], weights: torch.Tensor, count: int, seed: int):
    """The target samples whose Hessian the second-order term uses: all of them, or a seeded subset of `count`
    reweighted to the same total weight (an unbiased estimate of Σ ω_i H_i under uniform sampling when the ω_i are
    equal; each sample costs a double-backward pass per block of landmarks)."""
    if not count or count >= len(targets):
        return targets, weights
    keep = np.sort(np.random.default_rng(seed).choice(len(targets), size=count, replace=False))
    kept = weights[torch.as_tensor(keep)]
    return [targets[i] for i in keep], kept * (weights.sum() / kept.sum())


def check_coefficient_memory(pool: int, landmarks: int) -> None:
    """Refuse a dense (N, l) propagation matrix above `MAX_COEFFICIENT_BYTES`."""
    size = pool * landmarks * 8
    if size > MAX_COEFFICIENT_BYTES:
        raise ConfigError(f"InfluenceConfig.order=2 needs the {pool}×{landmarks} propagation matrix "
                          f"({size / 2**30:.1f} GiB); use fewer LandmarkConfig.count")


def fidelity_warning(fidelity: float | None, landmarks: int, pool: int, verified: int = 0) -> str | None:
    """One line saying that propagation ranks poorly and what to do about it, or None when it ranks well."""
    if fidelity is None or fidelity >= LOW_FIDELITY:
        return None
    more = min(pool, 2 * landmarks)
    placed, verification = (f" (and {verified} verification landmarks)", f"--verify {min(pool, 2 * verified)}") \
        if verified else ("", "--verify -1")
    return (f"propagation is unreliable for this target: held-out Spearman {fidelity:.2f} < {LOW_FIDELITY} over "
            f"{landmarks} landmarks{placed}; more verification ({verification}), more landmarks (--landmarks {more}) "
            f"or, for a small pool, --exact would help; the stage cache keeps the finished embeddings and gradients")
