"""Analytic FLOP counts of each selection method, for comparing selection cost across methods and machines.

Conventions (the usual transformer estimates): a forward pass costs 2 FLOPs per parameter per token through the
decoder blocks, plus 2·d·V per token where vocabulary logits are computed (we compute them on completion tokens
only); a backward pass costs twice its forward; a forward-mode JVP along m tangents with the primal shared costs
(1 + 2m) forwards of the K kept blocks, the last of them at the last token only but for its keys and values; a
Walsh–Hadamard transform of n points costs n·log2(n) additions; an RBF-KRR propagation costs 2·N·l·d_e for the kernel. Embedding lookups are free. These are estimates for the
ratios between methods, not measurements. `StageTimer` measures what a run actually took: wall time and peak memory
per stage.
"""

from __future__ import annotations

import contextlib
import logging
import math
import resource
import time
from collections.abc import Iterator

import torch
from torch import nn

from influence_distillation.runtime.last_token import every_position_weights, llama_layout
from influence_distillation.runtime.models import find_blocks
from influence_distillation.runtime.tokenization import IGNORE_INDEX, Example

log = logging.getLogger(__name__)

MINILM_PARAMETERS = 22_700_000  # all-MiniLM-L6-v2


def token_count(examples: list[Example]) -> int:
    if hasattr(examples, "total_tokens"):  # a PackedExamples counts as it packs: no sample is read back
        return examples.total_tokens
    return sum(len(e) for e in examples)


def _completion_tokens(examples: list[Example]) -> int:
    if hasattr(examples, "completion_tokens"):
        return examples.completion_tokens
    return sum(int((e.labels[1:] != IGNORE_INDEX).sum()) for e in examples)


def _block_parameters(model: nn.Module, count: int | None = None) -> int:
    blocks = find_blocks(model)[2]
    return sum(p.numel() for block in list(blocks)[:count] for p in block.parameters())


def _head_flops(model: nn.Module) -> int:
    head = model.get_output_embeddings()
    return 2 * head.weight.numel() if head is not None else 0


def forward_flops(model: nn.Module, examples: list[Example], logits: bool) -> float:
    total = 2 * _block_parameters(model) * token_count(examples)
    return total + (_head_flops(model) * _completion_tokens(examples) if logits else 0)


def _gradient_flops(model: nn.Module, examples: list[Example], transform_size: int | None) -> float:
    """Forward + backward per example, plus a Walsh–Hadamard transform of `transform_size` points if projected."""
    flops = 3 * forward_flops(model, examples, logits=True)
    if transform_size:
        flops += len(examples) * transform_size * math.log2(transform_size)
    return flops


def influence_flops(model, pool, landmarks, targets, config, exact: bool, projector, order: int) -> dict[str, float]:
    padded = getattr(projector, "padded_dim", None)
    parts = {"gradients": _gradient_flops(model, landmarks, padded) + _gradient_flops(model, targets, padded)}
    if not exact:
        parts["embeddings"] = _embedding_flops(model, pool, config.embedding)
        parts["propagation"] = 2.0 * len(pool) * len(landmarks) * projector.out_dim
    if order == 2:  # one double-backward (≈ 2 gradients) over every target sample per landmark vector
        parts["hessian_vector_products"] = 2 * len(landmarks) * _gradient_flops(model, targets, None)
    return {"flops": float(sum(parts.values())), "parts": parts}


def _embedding_flops(model: nn.Module, pool, embedding) -> float:
    if embedding.method == "gradient":  # a whole forward, then a backward through the head and the top block
        top_block = _block_parameters(model) - _block_parameters(model, len(find_blocks(model)[2]) - 1)
        return forward_flops(model, pool, logits=True) + 2 * _head_flops(model) * _completion_tokens(pool) \
            + 4 * top_block * token_count(pool)
    weights = _block_parameters(model, embedding.num_blocks) * token_count(pool)
    last = find_blocks(model)[2][embedding.num_blocks - 1]
    if embedding.poolings() == ("last",) and llama_layout(last):  # the last block runs once per sample but for K, V
        once = sum(p.numel() for p in last.parameters()) - every_position_weights(last)
        weights -= once * (token_count(pool) - len(pool))
    return (1 + 2 * embedding.num_tangents) * 2 * weights


def baseline_flops(method: str, model, pool, targets, config) -> dict[str, float]:
    if method == "random":
        parts = {}
    elif method == "mid-ppl":
        parts = {"forward": forward_flops(model, pool, logits=True)}
    elif method == "rds+":
        parts = {"forward": forward_flops(model, pool, logits=False) + forward_flops(model, targets, logits=False)}
    elif method == "embed-sim":
        parts = {"minilm_forward": 2 * MINILM_PARAMETERS * (token_count(pool) + token_count(targets))}
    else:  # less
        padded = 1 << max(0, (sum(p.numel() for p in _grad_params(model, config)) - 1).bit_length())
        parts = {"gradients": _gradient_flops(model, pool, padded) + _gradient_flops(model, targets, padded)}
    return {"flops": float(sum(parts.values())), "parts": parts}


def _grad_params(model, config):
    from influence_distillation.method.gradients import select_parameters

    return select_parameters(model, config.gradients.params).values()


class StageTimer:
    """Wall time of each stage, and the process's peak resident memory when it ended (the peak so far: a stage that
    needs more than the ones before it shows up as a step). Once `device` is a GPU (set when the model is loaded), also
    each stage's own peak of allocated memory on it (the allocator's peak is reset when a stage starts)."""

    def __init__(self) -> None:
        self.seconds: dict[str, float] = {}
        self.peak_gib: dict[str, float] = {}
        self.gpu_peak_gib: dict[str, float] = {}
        self.device: torch.device | None = None

    @contextlib.contextmanager
    def __call__(self, stage: str) -> Iterator[None]:
        log.info("stage %s: started", stage)
        if self._on_gpu():
            torch.cuda.reset_peak_memory_stats(self.device)
        start = time.perf_counter()
        yield
        if self._on_gpu():  # the first stage's peak counts from CUDA's start
            torch.cuda.synchronize(self.device)
            self.gpu_peak_gib[stage] = round(torch.cuda.max_memory_allocated(self.device) / 2**30, 3)
        self.seconds[stage] = round(time.perf_counter() - start, 3)
        self.peak_gib[stage] = round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20, 3)  # KiB on Linux
        log.info("stage %s: %.1f s", stage, self.seconds[stage])

    def _on_gpu(self) -> bool:
        return self.device is not None and self.device.type == "cuda"
