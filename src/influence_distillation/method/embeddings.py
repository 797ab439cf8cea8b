"""JVP embeddings (paper §5.4): how the first K blocks' output at the last real token moves along m random directions.

For a sample x, u_j(x) = J_θ h(x; θ_{≤K}) v_j, where h is the final-normed hidden state after block K at the last real
token, θ_{≤K} are all parameters of the truncated model (token embeddings included), and v_1..v_m are Gaussian
tangents shared by every sample. The embedding is [u_1; …; u_m], projected to at most d_e dimensions.

The m tangents are pushed through `torch.func.vmap` over `torch.func.jvp`: the primal (unbatched) is computed once
per batch and only the tangent computation is batched. `GradientEmbedder` is the opt-in alternative beyond the paper
(`--embedding-method gradient`): each sample's loss gradient of the last block's MLP down-projection.
"""

from __future__ import annotations

import functools
import logging

import torch
from torch import nn
from torch.func import functional_call, jvp, vmap
from tqdm.auto import tqdm

from influence_distillation.config import POOLINGS, EmbeddingConfig
from influence_distillation.data.tokenization import IGNORE_INDEX, Batch, Example, collate, length_batches
from influence_distillation.errors import ConfigError
from influence_distillation.method.gradients import select_parameters
from influence_distillation.method.per_sample import batched_gradients, linear_layers
from influence_distillation.method.projection import make_projector
from influence_distillation.model.blocks import find_blocks, truncated_backbone
from influence_distillation.model.last_token import last_positions

log = logging.getLogger(__name__)


def sample_tangents(params: dict[str, torch.Tensor], num_tangents: int, seed: int) -> dict[str, torch.Tensor]:
    """m standard-normal tangents per parameter, stacked on dim 0; drawn on the CPU so every device gets the same."""
    generator = torch.Generator().manual_seed(seed)
    return {
        name: torch.randn((num_tangents, *p.shape), generator=generator).to(device=p.device, dtype=p.dtype)
        for name, p in params.items()
    }




def pooling_weights(batch: Batch, pooling: str) -> torch.Tensor:
    """(B, T) weights that read one vector per sample off the K-block outputs, zero on padding.

    `last`: the last real token (the paper's). `mean`: every real token alike. `weighted`: position-weighted mean
    over real tokens (weights 1..n, as RDS+/SGPT pool hidden states). `completion`: the positions whose output
    predicts a completion token, i.e. the positions where the loss (and so the gradient) lives.
    """
    mask = batch.attention_mask.to(torch.float32)
    if pooling == "last":
        weights = torch.zeros_like(mask)
        weights[torch.arange(mask.shape[0]), batch.last_index] = 1.0
        return weights
    if pooling == "mean":
        weights = mask
    elif pooling == "weighted":
        weights = (batch.position_ids + 1).to(torch.float32) * mask
    elif pooling == "completion":
        weights = torch.zeros_like(mask)
        weights[:, :-1] = (batch.labels[:, 1:] != IGNORE_INDEX).to(torch.float32)
    else:
        raise ValueError(f"unknown pooling {pooling!r}; choose from {', '.join(POOLINGS)}")
    return weights / weights.sum(dim=1, keepdim=True).clamp_min(1.0)


def _read_rows(batch: Batch, poolings: tuple[str, ...]) -> torch.Tensor | None:
    """The one position per sequence the poolings read, when they read only one (`last`), for `last_positions`."""
    return batch.last_index if poolings == ("last",) else None


def _split_inputs(backbone: nn.Module, batch: Batch, poolings: tuple[str, ...]):
    """What both ways of differentiating share: the token-embedding module and its parameter's name, the other
    parameters, the input embeddings, the (B, P, T) pooling weights and the backbone's other inputs."""
    embedding = backbone.get_input_embeddings()
    embedding_name = next(name for name, p in backbone.named_parameters() if p is embedding.weight)
    params = {name: p for name, p in backbone.named_parameters() if name != embedding_name}
    embeds = embedding(batch.input_ids)
    weights = torch.stack([pooling_weights(batch, name) for name in poolings], dim=1).to(embeds.dtype)
    inputs = {"attention_mask": batch.attention_mask, "position_ids": batch.position_ids, "use_cache": False}
    return embedding, embedding_name, params, embeds, weights, inputs


def jvp_outputs(backbone: nn.Module, tangents: dict[str, torch.Tensor], batch: Batch,
                poolings: tuple[str, ...] = ("last",), with_primal: bool = False):
    """Tangent outputs read off by each of the P poolings, concatenated: (B, m, P·d_model), in the backbone's dtype;
    with `with_primal` also the primal outputs under the same poolings, (B, P·d_model), at no extra cost.

    Poolings are linear, so pooling the output and then differentiating equals pooling the per-token tangents; the
    pooling happens inside the forward-mode pass and only (B, P, d) per tangent is ever batched.

    The token-embedding lookup is linear in its weight, so its tangent is the same lookup into the tangent; it is
    computed directly and fed in through `inputs_embeds`. This keeps the vocabulary-sized embedding tangent out of
    the vmapped forward-mode pass (measured 10–30% faster, docs/BENCHMARKS.md).
    """
    embedding, embedding_name, params, embeds, weights, inputs = _split_inputs(backbone, batch, poolings)
    block_tangents = {name: t for name, t in tangents.items() if name != embedding_name}
    embed_tangents = torch.stack(
        [functional_call(embedding, {"weight": t}, (batch.input_ids,)) for t in tangents[embedding_name]]
    )

    def pooled(p, inputs_embeds):
        out = functional_call(backbone, p, args=(), kwargs={**inputs, "inputs_embeds": inputs_embeds})
        return torch.einsum("bpt,btd->bpd", weights, out.last_hidden_state)

    def along(block_tangent, embed_tangent):
        return jvp(pooled, (params, embeds), (block_tangent, embed_tangent))

    with last_positions(backbone, _read_rows(batch, poolings)):
        primal, tangent = vmap(along, out_dims=(None, 0))(block_tangents, embed_tangents)
    tangent = tangent.transpose(0, 1).flatten(2)
    return (tangent, primal.flatten(1)) if with_primal else tangent


DIFFERENCE_STEPS = (1e-6, 3e-6, 1e-5, 3e-5, 1e-4, 3e-4, 1e-3)  # ε tried for unit-Gaussian tangents (float32)


def shifted_parameters(backbone: nn.Module, tangents: dict[str, torch.Tensor], step: float) -> list[tuple[dict, dict]]:
    """θ + εv_j and θ − εv_j for each tangent j, over the parameters the blocks take (the token embedding is shifted
    through its lookup instead): formed once per embedder, not per batch (on SmolLM2-135M at K = 2 that was 5% of
    the stage)."""
    embedding = backbone.get_input_embeddings().weight
    params = {name: p for name, p in backbone.named_parameters() if p is not embedding}
    count = next(iter(tangents.values())).shape[0]
    return [tuple({name: p + sign * step * tangents[name][j] for name, p in params.items()} for sign in (1.0, -1.0))
            for j in range(count)]


def difference_outputs(backbone: nn.Module, tangents: dict[str, torch.Tensor], batch: Batch,
                       poolings: tuple[str, ...] = ("last",), step: float = 1e-4,
                       shifted: list[tuple[dict, dict]] | None = None) -> torch.Tensor:
    """`jvp_outputs` by central differences, (h(θ + εv) − h(θ − εv)) / 2ε: two plain forward passes per tangent
    instead of forward-mode AD, exact up to O(ε²) truncation and the round-off of the difference. `shifted`:
    `shifted_parameters(backbone, tangents, step)`, when the caller keeps them across batches."""
    embedding, embedding_name, _, embeds, weights, inputs = _split_inputs(backbone, batch, poolings)
    shifted = shifted if shifted is not None else shifted_parameters(backbone, tangents, step)
    out = []
    with last_positions(backbone, _read_rows(batch, poolings)):
        for j, sides in enumerate(shifted):
            embed_tangent = functional_call(embedding, {"weight": tangents[embedding_name][j]}, (batch.input_ids,))
            ends = []
            for sign, params in zip((1.0, -1.0), sides):
                hidden = functional_call(backbone, params, args=(), kwargs={
                    **inputs, "inputs_embeds": embeds + sign * step * embed_tangent}).last_hidden_state
                ends.append(torch.einsum("bpt,btd->bpd", weights, hidden))
            out.append((ends[0] - ends[1]) / (2 * step))
    return torch.stack(out, dim=1).flatten(2)


def calibrated_step(backbone: nn.Module, tangents: dict[str, torch.Tensor], poolings: tuple[str, ...], seed: int,
                    length: int = 16) -> tuple[float, float]:
    """(ε, relative error): the central-difference step of `DIFFERENCE_STEPS` closest to forward-mode AD on two
    seeded random sequences. Round-off wins below the best step and curvature above it, and the balance is the
    model's (3e-4 for SmolLM2-135M's blocks, 1e-5 for tiny random ones): measured, not assumed. The input is seeded,
    so every shard and every resume picks the same step."""
    generator = torch.Generator().manual_seed(seed)
    ids = torch.randint(0, backbone.config.vocab_size, (2, length), generator=generator)
    batch = collate([Example(str(i), row, row, False) for i, row in enumerate(ids)], 0)
    batch = batch.to(next(backbone.parameters()).device)
    attention = backbone.config._attn_implementation
    backbone.set_attn_implementation("eager")  # forward-mode AD has no rule for the fused kernels
    try:
        exact = jvp_outputs(backbone, tangents, batch, poolings)
    finally:
        backbone.set_attn_implementation(attention)
    errors = {step: ((difference_outputs(backbone, tangents, batch, poolings, step) - exact).norm()
                     / exact.norm()).item() for step in DIFFERENCE_STEPS}
    step = min(errors, key=errors.get)
    return step, errors[step]


class JvpEmbedder:
    """Embeds batches of examples with fixed tangents and projection, so a sharded stage draws them only once.

    With several poolings the embedding is one block per pooling, [u_1; …; u_m] read by that pooling, each block
    projected on its own to at most d_e / P coordinates, so the blocks stay separable (the kernel scales them).
    """

    def __init__(self, backbone: nn.Module, num_tangents: int, dim: int, seed: int, batch_size: int = 8,
                 pad_id: int = 0, poolings: tuple[str, ...] = ("last",), method: str = "jvp"):
        self.backbone, self.batch_size, self.pad_id, self.poolings = backbone, batch_size, pad_id, poolings
        self.tangents = sample_tangents(dict(backbone.named_parameters()), num_tangents, seed)
        self.outputs = jvp_outputs
        if method == "difference":
            with torch.no_grad():
                step, error = calibrated_step(backbone, self.tangents, poolings, seed)
            log.info("embeddings: central differences at step %g (%.1e relative error against forward-mode AD on a "
                     "check input)", step, error)
            self.outputs = functools.partial(difference_outputs, step=step,
                                             shifted=shifted_parameters(backbone, self.tangents, step))
            self.step, self.step_error = step, error
        self.num_tangents, self.hidden = num_tangents, backbone.config.hidden_size
        self.width = num_tangents * self.hidden  # per pooling
        self.projectors = [make_projector(self.width, max(1, dim // len(poolings)), seed + 1 + i)
                           for i in range(len(poolings))]

    @property
    def out_dim(self) -> int:
        return sum(p.out_dim for p in self.projectors)

    def __call__(self, examples: list[Example], progress: bool = False) -> torch.Tensor:
        return embed_in_batches(examples, self.batch_size, self.pad_id, self.backbone, self.out_dim, self._rows,
                                "JVP embeddings", progress)

    def _rows(self, batch: Batch) -> torch.Tensor:
        with torch.no_grad():
            u = self.outputs(self.backbone, self.tangents, batch, self.poolings)
        count = u.shape[0]
        parts = u.reshape(count, self.num_tangents, len(self.poolings), self.hidden).transpose(1, 2)
        return torch.cat([projector(parts[:, i].reshape(count, self.width))
                          for i, projector in enumerate(self.projectors)], dim=1)


def embed_in_batches(examples: list[Example], batch_size: int, pad_id: int, model: nn.Module, out_dim: int,
                     rows, desc: str, progress: bool) -> torch.Tensor:
    """`rows(batch)` over length-bucketed batches on the model's device, gathered in the examples' order on the CPU."""
    device = next(model.parameters()).device
    out = torch.empty(len(examples), out_dim)
    with tqdm(total=len(examples), desc=desc, unit="sample", disable=not progress) as bar:
        for indices in length_batches([len(e) for e in examples], batch_size):
            out[indices] = rows(collate([examples[i] for i in indices], pad_id).to(device)).float().cpu()
            bar.update(len(indices))
    return out


def jvp_embeddings(
    backbone: nn.Module,
    examples: list[Example],
    num_tangents: int,
    dim: int,
    seed: int,
    batch_size: int = 8,
    pad_id: int = 0,
    progress: bool = True,
    poolings: tuple[str, ...] = ("last",),
    method: str = "jvp",
) -> torch.Tensor:
    """Embeddings of `examples` in their order: (N, P·min(m·d_model, d_e/P)) float32 on the CPU.

    Args:
        backbone: a truncated backbone from `models.truncated_backbone` (eager attention, no grad).
        seed: fixes the tangents and the projection.
        pad_id: any token id; padded positions are masked out.
        poolings: the P ways of reading the K-block outputs (`POOLINGS`), one embedding block each.
        method: "jvp" (forward-mode AD) or "difference" (central differences, `difference_outputs`).
    """
    return JvpEmbedder(backbone, num_tangents, dim, seed, batch_size, pad_id, poolings, method)(examples, progress)


class GradientEmbedder:
    """Per-sample loss gradients of the last block's MLP down-projection, projected to d_e and unit-normalised
    (`--embedding-method gradient`; beyond the paper).

    The JVP features see the first K blocks and no loss; on long-context reading targets they rank the pool far worse
    than exact gradients do. The top block's down-projection gradient costs a full forward pass per sample (and a
    backward through one block), but it is a piece of the very gradient the landmarks use, and KRR on it tracks exact
    influence much more closely (docs/BENCHMARKS.md). Padding is masked exactly (`per_sample.batched_gradients`).
    """

    def __init__(self, model: nn.Module, dim: int, seed: int, batch_size: int = 8, pad_id: int = 0):
        last_block = {id(p) for p in find_blocks(model)[2][-1].parameters()}
        self.params = {name: p for name, p in select_parameters(model, "mlp-down").items() if id(p) in last_block}
        self.layers = linear_layers(model, self.params)
        if not self.params or self.layers is None:
            raise ConfigError(f"EmbeddingConfig.method='gradient': no linear MLP down-projection found in the last "
                              f"block of {type(model).__name__}; use EmbeddingConfig.method='jvp'")
        self.model, self.batch_size, self.pad_id = model, batch_size, pad_id
        self.projector = make_projector(sum(p.numel() for p in self.params.values()), dim, seed)

    @property
    def out_dim(self) -> int:
        return self.projector.out_dim

    def __call__(self, examples: list[Example], progress: bool = False) -> torch.Tensor:
        return embed_in_batches(examples, self.batch_size, self.pad_id, self.model, self.out_dim, self._rows,
                                "gradient embeddings", progress)

    def _rows(self, batch: Batch) -> torch.Tensor:
        return self.projector(batched_gradients(self.model, self.params, self.layers, batch), normalize=True)


def make_embedder(model: nn.Module, config: EmbeddingConfig, seed: int, pad_id: int = 0,
                  batch_size: int | None = None):
    """The embedder `config.method` names; called on a list of examples it returns their (n, d_e) float32 rows.

    `batch_size` (samples per batch) defaults to `config.batch_size`, else 8; a run picks it by device
    (`run/policy.py`)."""
    if batch_size is None:
        batch_size = config.batch_size if config.batch_size is not None else 8
    if config.method == "gradient":
        return GradientEmbedder(model, config.dim, seed, batch_size, pad_id)
    return JvpEmbedder(embedding_backbone(model, config), config.num_tangents, config.dim, seed,
                       batch_size, pad_id, config.poolings(), config.method)


def embedding_backbone(model: nn.Module, config: EmbeddingConfig) -> nn.Module:
    """The K blocks the embedding runs: eager attention for forward-mode AD; for central differences sdpa (two plain
    forward passes need no JVP rule) and float32 whatever the model's dtype, since a difference at step ε in
    bfloat16 is round-off (the K blocks are a small copy; the rest of the model keeps its dtype)."""
    if config.method == "difference":
        return truncated_backbone(model, config.num_blocks, attention="sdpa", dtype=torch.float32)
    return truncated_backbone(model, config.num_blocks)


def compute_embeddings(
    model: nn.Module, examples: list[Example], config: EmbeddingConfig, seed: int, pad_id: int = 0,
    progress: bool = True, batch_size: int | None = None,
) -> torch.Tensor:
    """Stage 1: the embeddings of every example (JVP by default), (N, d_e) float32."""
    return make_embedder(model, config, seed, pad_id, batch_size)(examples, progress)
