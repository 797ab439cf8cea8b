"""The selection's stages as functions a notebook user can call one by one (`run_selection` chains them).

Each takes tensors and configs and returns tensors; nothing here reads or writes files.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import nn

from influence_distillation.config import EmbeddingConfig, GradientConfig, LandmarkConfig, PropagationConfig
from influence_distillation.data.tokenization import Example
from influence_distillation.errors import ConfigError
from influence_distillation.method.embeddings import GradientEmbedder, JvpEmbedder
from influence_distillation.method.gradients import projected_gradients, select_parameters
from influence_distillation.method.landmarks import target_neighbours
from influence_distillation.method.per_sample import KroneckerProjector, linear_layers
from influence_distillation.method.preconditioning import (
    AdamParamState,
    adam_offset_vector,
    adam_preconditioner,
    load_adamw_state,
    state_learning_rate,
)
from influence_distillation.method.projection import CountSketchProjector, make_projector
from influence_distillation.method.propagation import KernelRidge, fit_propagation
from influence_distillation.method.selection import row_means, select
from influence_distillation.model.blocks import truncated_backbone

DEFAULT_LEARNING_RATE = 2e-5  # the paper's fine-tuning rate; used when neither a flag nor a state gives one
MAX_COEFFICIENT_BYTES = 4 << 30  # the dense (N, l) propagation matrix that --order 2 needs
# Batch sizes when the config leaves them unset, by device type. On a CPU one unpadded sample at a time wastes
# nothing; on a GPU small batches are launch-bound (docs/BENCHMARKS.md, "On a GPU").
EMBEDDING_BATCH = {"cpu": 8, "cuda": 64}
GRADIENT_BATCH = {"cpu": 1, "cuda": 16}
# A batch's per-sample gradients are formed at full size before projection: ≈ 9 bytes a coordinate a sample at peak
# (the float32 rows plus the einsum's block; 55 GiB for 16 samples of SmolLM2-1.7B's 403M MLP down-projection
# coordinates on an H200, docs/BENCHMARKS.md). The default batch keeps them within half the GPU's memory.
GRADIENT_BYTES_PER_COORDINATE = 9
GRADIENT_MEMORY_SHARE = 0.5


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


def derive_seed(master: int, stage: str) -> int:
    """An independent, reproducible seed per stage, so changing one stage's randomness leaves the others alone."""
    return int.from_bytes(hashlib.sha256(f"{master}:{stage}".encode()).digest()[:4], "little")


def embedding_batch_size(model: nn.Module, config: EmbeddingConfig) -> int:
    return device_batch_size(config.batch_size, EMBEDDING_BATCH, next(model.parameters()).device)


def make_embedder(model: nn.Module, config: EmbeddingConfig, seed: int, pad_id: int = 0):
    """The embedder `config.method` names; called on a list of examples it returns their (n, d_e) float32 rows."""
    batch_size = embedding_batch_size(model, config)
    if config.method == "gradient":
        return GradientEmbedder(model, config.dim, seed, batch_size, pad_id)
    return JvpEmbedder(truncated_backbone(model, config.num_blocks), config.num_tangents, config.dim, seed,
                       batch_size, pad_id, config.poolings(), config.method)


def compute_embeddings(
    model: nn.Module, examples: list[Example], config: EmbeddingConfig, seed: int, pad_id: int = 0,
    progress: bool = True,
) -> torch.Tensor:
    """Stage 1: the embeddings of every example (JVP by default), (N, d_e) float32."""
    return make_embedder(model, config, seed, pad_id)(examples, progress)


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

    def learning_rate(self, requested: float | None) -> float:
        if requested is not None:
            return requested
        if self.adam_states is not None:
            return state_learning_rate(self.adam_states, list(self.params))
        return DEFAULT_LEARNING_RATE


def gradient_space(model: nn.Module, config: GradientConfig, seed: int) -> GradientSpace:
    params = select_parameters(model, config.params)
    size = sum(p.numel() for p in params.values())
    if config.projection == "kronecker":
        layers = linear_layers(model, params)
        if layers is None:
            raise ConfigError(f"--grad-projection kronecker needs every --grad-params {config.params!r} parameter to "
                              "be the weight or bias of a linear layer; use --grad-projection srht")
        projector = KroneckerProjector(layers, params, config.proj_dim, seed)
    elif config.projection == "countsketch" and size > config.proj_dim:
        projector = CountSketchProjector(size, config.proj_dim, seed)
    else:
        projector = make_projector(size, config.proj_dim, seed)
    batch_size = config.batch_size
    if batch_size is None:  # batched only where it is exact: every chosen parameter a linear layer's
        batch_size = gradient_batch_size(next(model.parameters()).device, size) \
            if linear_layers(model, params) is not None else 1
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


def propagate(
    embeddings: torch.Tensor, landmark_rows: np.ndarray, landmark_values: torch.Tensor, config: PropagationConfig,
    seed: int, out=None,
) -> tuple[Any, KernelRidge]:
    """Stage 5: KRR from the landmarks' values (l, t) to every row, (N, t); landmark rows keep their exact values.

    The scores are an array, or `out` (any (N, t) array that takes row-slice writes: an on-disk `NpyRows` keeps a
    large pool's scores out of memory)."""
    rows = torch.as_tensor(landmark_rows)
    krr = fit_propagation(embeddings[rows], landmark_values, config.ridge, config.bandwidth, config.tune, seed)
    scores = krr.predict(embeddings, config.chunk_size, out)
    exact = landmark_values.double().reshape(len(rows), -1)
    if out is None:
        scores[rows] = exact
        return scores.numpy(), krr
    scores[np.asarray(landmark_rows)] = exact.numpy()
    return scores, krr


LOW_FIDELITY = 0.6  # held-out Spearman below which the propagated ranking is not to be trusted


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


def hessian_sample(targets: list[Example], weights: torch.Tensor, count: int, seed: int):
    """The target samples whose Hessian the second-order term uses: all of them, or a seeded subset of `count`
    reweighted to the same total weight (an unbiased estimate of Σ ω_i H_i under uniform sampling when the ω_i are
    equal; each sample costs a double-backward pass per block of landmarks)."""
    if not count or count >= len(targets):
        return targets, weights
    keep = np.sort(np.random.default_rng(seed).choice(len(targets), size=count, replace=False))
    kept = weights[torch.as_tensor(keep)]
    return [targets[i] for i in keep], kept * (weights.sum() / kept.sum())


def propagation_matrix(krr: KernelRidge, embeddings: torch.Tensor, landmark_rows: np.ndarray,
                       chunk_size: int) -> torch.Tensor:
    """C (N, l) with p̂ = C p_L: KRR coefficients, identity rows at the landmarks (their values are exact)."""
    size = embeddings.shape[0] * len(landmark_rows) * 8
    if size > MAX_COEFFICIENT_BYTES:
        raise ConfigError(
            f"--order 2 needs the {embeddings.shape[0]}×{len(landmark_rows)} propagation matrix "
            f"({size / 2**30:.1f} GiB); use fewer --landmarks"
        )
    coefficients = krr.coefficients(embeddings, chunk_size)
    rows = torch.as_tensor(landmark_rows)
    coefficients[rows] = 0.0
    coefficients[rows, torch.arange(len(rows))] = 1.0
    return coefficients


def verification_count(requested: int, budget: int, landmarks: int, pool: int) -> int:
    """How many verification landmarks a run places: `requested`, or for -1 the smaller of the budget and the
    first landmarks; never more than the samples that are not landmarks yet."""
    count = min(budget, landmarks) if requested == -1 else requested
    return max(0, min(count, pool - landmarks))


def round_sizes(count: int, rounds: int) -> list[int]:
    """`count` split into `rounds` near-equal non-empty parts (fewer parts when count < rounds)."""
    return [size for r in range(rounds) if (size := round(count * (r + 1) / rounds) - round(count * r / rounds))]


def near_target_count(count: int, config: LandmarkConfig) -> int:
    """How many of `count` verification landmarks `verify_landmarks` gives to the target samples' neighbours."""
    return sum(_near_part(size, config.verify_neighbours) for size in round_sizes(count, config.verify_rounds))


def _near_part(size: int, share: float) -> int:
    """The rows of a verification round of `size` that go to the target samples' neighbours."""
    return round(share * size)


def verification_rows(scores: np.ndarray, landmarks: np.ndarray, count: int) -> np.ndarray:
    """The `count` samples with the highest propagated mean influence over the target samples, landmarks excluded
    (their values are exact already): the consensus candidates of the selection, where an exact gradient confirms
    or removes a pick. (In a simulation on the benchmark suite, picking by the mean confirmed more of the final
    selection than picking each target sample's own best.)"""
    masked = row_means(scores)
    masked[landmarks] = masked.min() - 1.0  # below every other row: taken only if nothing else is left
    return select(masked[:, None], count, "top-k")


def verify_landmarks(embeddings: torch.Tensor, landmarks: np.ndarray, values: torch.Tensor, count: int, rounds: int,
                     config: PropagationConfig, seed: int, measure, out=None, queries: torch.Tensor | None = None,
                     neighbour_share: float = 0.0):
    """Verification rounds: propagate from the landmarks so far, `measure` the exact values (l', t) of the
    `verification_rows` (called as measure(rows, round_number)), add them as landmarks, repeat. `out` is where each
    round's propagated scores go, as in `propagate`. With `queries` (the target samples' embeddings), each round
    gives `neighbour_share` of its rows to the `target_neighbours` instead of the highest propagated influence.

    Returns the landmarks (sorted), their values, and the permutation that sorted the concatenation of the first
    landmarks and each round's rows in order, for callers that keep more per landmark than its values.
    """
    for number, size in enumerate(round_sizes(count, rounds), 1):
        near = _near_part(size, neighbour_share) if queries is not None else 0
        picks = np.zeros(0, dtype=np.int64)
        if size > near:  # the propagated scores are needed only for picks by influence
            scores, _ = propagate(embeddings, landmarks, values, config, seed, out)
            picks = verification_rows(scores, landmarks, size - near)
        if near:
            picks = np.concatenate([picks, target_neighbours(embeddings, queries, np.concatenate([landmarks, picks]),
                                                             near, seed)])
        values = torch.cat([values.reshape(len(landmarks), -1), measure(picks, number).reshape(len(picks), -1)])
        landmarks = np.concatenate([landmarks, picks])
    order = np.argsort(landmarks, kind="stable")
    return landmarks[order], values[torch.as_tensor(order)], order
