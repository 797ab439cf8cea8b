"""Analytic FLOP counts of each selection method, for comparing selection cost across methods and machines.

Conventions (the usual transformer estimates): a forward pass costs 2 FLOPs per parameter per token through the
decoder blocks, plus 2·d·V per token where vocabulary logits are computed (we compute them on completion tokens
only); a backward pass costs twice its forward; a forward-mode JVP along m tangents with the primal shared costs
(1 + 2m) forwards of the K kept blocks, the last of them at the last token only but for its keys and values; a
Walsh–Hadamard transform of n points costs n·log2(n) additions, a CountSketch of D coordinates D; an RBF-KRR
propagation costs 2·N·l·d_e for the kernel. Embedding lookups are free. These are estimates for the ratios between
methods, not measurements (`run/timing.py` measures what a run took).

The counts take a model's `Layout` (its shapes, which a meta-device model without weights has too, so a 7B layout
is counted without loading it) and `Tokens` (samples, tokens and completion tokens of a set), so the same formulas
serve a finished run, the dry run's prediction for a pool, and the paper's setting.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from torch import nn

from influence_distillation.data.tokenization import IGNORE_INDEX, Example
from influence_distillation.model.blocks import find_blocks
from influence_distillation.model.last_token import every_position_weights, llama_layout

MINILM_PARAMETERS = 22_700_000  # all-MiniLM-L6-v2


@dataclass(frozen=True)
class Layout:
    """The shapes FLOP counts need: each decoder block's weights, the weights a last-token-trimmed block still runs
    at every position (keys and values; None where the trim does not apply), and the LM head's d·V."""

    blocks: tuple[int, ...]
    every_position: tuple[int | None, ...]
    head: int

    @classmethod
    def of(cls, model: nn.Module) -> Layout:
        blocks = find_blocks(model)[2]
        head = model.get_output_embeddings()
        return cls(tuple(sum(p.numel() for p in block.parameters()) for block in blocks),
                   tuple(every_position_weights(block) if llama_layout(block) else None for block in blocks),
                   head.weight.numel() if head is not None else 0)

    def block_weights(self, count: int | None = None) -> int:
        return sum(self.blocks[:count])


@dataclass(frozen=True)
class Tokens:
    """How much text a set of samples is: samples, tokens, and completion tokens (those with a label)."""

    samples: int
    tokens: int
    completion: int

    @classmethod
    def of(cls, examples: list[Example]) -> Tokens:
        if hasattr(examples, "total_tokens"):  # a PackedExamples counts as it packs: no sample is read back
            return cls(len(examples), examples.total_tokens, examples.completion_tokens)
        return cls(len(examples), sum(len(e) for e in examples),
                   sum(int((e.labels[1:] != IGNORE_INDEX).sum()) for e in examples))

    def scaled(self, samples: int) -> Tokens:
        """As many samples of the same mean length (e.g. the landmarks, a random subset of the pool)."""
        ratio = samples / max(1, self.samples)
        return Tokens(samples, round(self.tokens * ratio), round(self.completion * ratio))


def token_count(examples: list[Example]) -> int:
    return Tokens.of(examples).tokens


def forward_flops(layout: Layout, tokens: Tokens, logits: bool) -> float:
    return 2.0 * layout.block_weights() * tokens.tokens + (2.0 * layout.head * tokens.completion if logits else 0.0)


@dataclass(frozen=True)
class Projection:
    """How gradients are projected: `kind` (srht, countsketch, kronecker, or none when D ≤ k_p) from D coordinates."""

    kind: str
    coordinates: int
    out_dim: int

    @classmethod
    def of(cls, projector) -> Projection:
        kind = "srht" if hasattr(projector, "padded_dim") else "countsketch" if hasattr(projector, "buckets") \
            else "kronecker" if hasattr(projector, "factor") else "none"
        return cls(kind, getattr(projector, "in_dim", 0), projector.out_dim)

    @property
    def flops(self) -> float:
        """Per projected vector: n·log2(n) for the Hadamard transform of the padded length, D for a CountSketch
        (the Kronecker sketch works on activations, counted as free here)."""
        if self.kind == "srht":
            padded = 1 << max(0, (self.coordinates - 1).bit_length())
            return padded * math.log2(padded)
        return float(self.coordinates) if self.kind == "countsketch" else 0.0


def gradient_flops(layout: Layout, tokens: Tokens, per_sample_projection: float) -> float:
    """Forward + backward of each sample, plus its projection."""
    return 3 * forward_flops(layout, tokens, logits=True) + tokens.samples * per_sample_projection


def embedding_flops(layout: Layout, pool: Tokens, embedding) -> float:
    if embedding.method == "gradient":  # a whole forward, then a backward through the head and the top block
        return forward_flops(layout, pool, logits=True) + 2.0 * layout.head * pool.completion \
            + 4.0 * layout.blocks[-1] * pool.tokens
    weights = layout.block_weights(embedding.num_blocks) * pool.tokens
    kept = layout.every_position[embedding.num_blocks - 1]
    if embedding.poolings() == ("last",) and kept is not None:  # the last block runs once per sample but for K, V
        weights -= (layout.blocks[embedding.num_blocks - 1] - kept) * (pool.tokens - pool.samples)
    # forward-mode AD: the primal, and each tangent through every linear map twice; central differences: two
    # plain forwards per tangent
    passes = 2 * embedding.num_tangents if embedding.method == "difference" else 1 + 2 * embedding.num_tangents
    return passes * 2.0 * weights


def influence_parts(layout: Layout, pool: Tokens, landmarks: Tokens, targets: Tokens, embedding,
                    projection: Projection, exact: bool = False, order: int = 1) -> dict[str, float]:
    """Influence Distillation's FLOPs by stage (exact mode: a gradient of every pool sample, nothing else)."""
    parts = {"gradients": gradient_flops(layout, landmarks, projection.flops)
             + gradient_flops(layout, targets, projection.flops)}
    if not exact:
        parts["embeddings"] = embedding_flops(layout, pool, embedding)
        parts["propagation"] = 2.0 * pool.samples * landmarks.samples * projection.out_dim
    if order == 2:  # one double-backward (≈ 2 gradients) over every target sample per landmark vector
        parts["hessian_vector_products"] = 2 * landmarks.samples * gradient_flops(layout, targets, 0.0)
    return parts


def baseline_parts(method: str, layout: Layout, pool: Tokens, targets: Tokens,
                   projection: Projection | None = None) -> dict[str, float]:
    if method == "random":
        return {}
    if method == "mid-ppl":
        return {"forward": forward_flops(layout, pool, logits=True)}
    if method == "rds+":
        return {"forward": forward_flops(layout, pool, logits=False) + forward_flops(layout, targets, logits=False)}
    if method == "embed-sim":
        return {"minilm_forward": 2.0 * MINILM_PARAMETERS * (pool.tokens + targets.tokens)}
    per_vector = projection.flops  # less: a gradient of every pool sample
    return {"gradients": gradient_flops(layout, pool, per_vector) + gradient_flops(layout, targets, per_vector)}


def _total(parts: dict[str, float]) -> dict[str, float]:
    return {"flops": float(sum(parts.values())), "parts": parts}


def influence_flops(model, pool, landmarks, targets, config, exact: bool, projector, order: int) -> dict[str, float]:
    """A finished run's count, from its model and examples (the manifest's `cost`)."""
    return _total(influence_parts(Layout.of(model), Tokens.of(pool), Tokens.of(landmarks), Tokens.of(targets),
                                  config.embedding, Projection.of(projector), exact, order))


def baseline_flops(method: str, model, pool, targets, projector=None) -> dict[str, float]:
    return _total(baseline_parts(method, Layout.of(model), Tokens.of(pool), Tokens.of(targets),
                                 Projection.of(projector) if projector is not None else None))
