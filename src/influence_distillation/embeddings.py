"""JVP embeddings (paper §5.4): how the first K blocks' output at the last real token moves along m random directions.

For a sample x, u_j(x) = J_θ h(x; θ_{≤K}) v_j, where h is the final-normed hidden state after block K at the last real
token, θ_{≤K} are all parameters of the truncated model (token embeddings included), and v_1..v_m are Gaussian
tangents shared by every sample. The embedding is [u_1; …; u_m], projected to at most d_e dimensions.

The m tangents are pushed through `torch.func.vmap` over `torch.func.jvp`: the primal (unbatched) is computed once
per batch and only the tangent computation is batched.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.func import functional_call, jvp, vmap
from tqdm.auto import tqdm

from .projection import make_projector
from .tokenization import Batch, Example, collate, length_batches


def sample_tangents(params: dict[str, torch.Tensor], num_tangents: int, seed: int) -> dict[str, torch.Tensor]:
    """m standard-normal tangents per parameter, stacked on dim 0; drawn on the CPU so every device gets the same."""
    generator = torch.Generator().manual_seed(seed)
    return {
        name: torch.randn((num_tangents, *p.shape), generator=generator).to(device=p.device, dtype=p.dtype)
        for name, p in params.items()
    }


def jvp_outputs(backbone: nn.Module, tangents: dict[str, torch.Tensor], batch: Batch) -> torch.Tensor:
    """Tangent outputs at each sample's last real token: (B, m, d_model), in the backbone's dtype.

    The token-embedding lookup is linear in its weight, so its tangent is the same lookup into the tangent; it is
    computed directly and fed in through `inputs_embeds`. This keeps the vocabulary-sized embedding tangent out of
    the vmapped forward-mode pass (measured 10–30% faster, docs/BENCHMARKS.md).
    """
    embedding = backbone.get_input_embeddings()
    embedding_name = next(name for name, p in backbone.named_parameters() if p is embedding.weight)
    params = {name: p for name, p in backbone.named_parameters() if name != embedding_name}
    block_tangents = {name: t for name, t in tangents.items() if name != embedding_name}
    embeds = embedding(batch.input_ids)
    embed_tangents = torch.stack(
        [functional_call(embedding, {"weight": t}, (batch.input_ids,)) for t in tangents[embedding_name]]
    )
    rows = torch.arange(batch.input_ids.shape[0], device=batch.input_ids.device)
    inputs = {"attention_mask": batch.attention_mask, "position_ids": batch.position_ids, "use_cache": False}

    def last_hidden(p, inputs_embeds):
        out = functional_call(backbone, p, args=(), kwargs={**inputs, "inputs_embeds": inputs_embeds})
        return out.last_hidden_state[rows, batch.last_index]

    def along(block_tangent, embed_tangent):
        return jvp(last_hidden, (params, embeds), (block_tangent, embed_tangent))[1]

    return vmap(along)(block_tangents, embed_tangents).transpose(0, 1)


class JvpEmbedder:
    """Embeds batches of examples with fixed tangents and projection, so a sharded stage draws them only once."""

    def __init__(self, backbone: nn.Module, num_tangents: int, dim: int, seed: int, batch_size: int = 8,
                 pad_id: int = 0):
        self.backbone, self.batch_size, self.pad_id = backbone, batch_size, pad_id
        self.tangents = sample_tangents(dict(backbone.named_parameters()), num_tangents, seed)
        self.width = num_tangents * backbone.config.hidden_size
        self.projector = make_projector(self.width, dim, seed + 1)

    def __call__(self, examples: list[Example], progress: bool = False) -> torch.Tensor:
        device = next(self.backbone.parameters()).device
        out = torch.empty(len(examples), self.projector.out_dim)
        with tqdm(total=len(examples), desc="JVP embeddings", unit="sample", disable=not progress) as bar:
            for indices in length_batches([len(e) for e in examples], self.batch_size):
                batch = collate([examples[i] for i in indices], self.pad_id).to(device)
                with torch.no_grad():
                    u = jvp_outputs(self.backbone, self.tangents, batch)
                out[indices] = self.projector(u.reshape(len(indices), self.width)).cpu()
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
) -> torch.Tensor:
    """Embeddings of `examples` in their order: (N, min(m·d_model, d_e)) float32 on the CPU.

    Args:
        backbone: a truncated backbone from `models.truncated_backbone` (eager attention, no grad).
        seed: fixes the tangents and the projection.
        pad_id: any token id; padded positions are masked out.
    """
    return JvpEmbedder(backbone, num_tangents, dim, seed, batch_size, pad_id)(examples, progress)
