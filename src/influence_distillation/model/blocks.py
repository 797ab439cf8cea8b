"""A model's decoder blocks, and the copy of its first K blocks that the JVP embeddings run."""

from __future__ import annotations

import copy

import torch
from torch import nn

from influence_distillation.errors import ConfigError, ModelError
from influence_distillation.model.last_token import trim_last_block

# Attribute paths of the decoder-block list, relative to the backbone (`model.base_model`).
BLOCK_PATHS = ("layers", "h", "blocks", "decoder.layers")


def find_blocks(model: nn.Module) -> tuple[nn.Module, str, nn.ModuleList]:
    """Return `(owner, attribute, blocks)` of the decoder-block list inside the model's backbone."""
    backbone = model.base_model
    for path in BLOCK_PATHS:
        owner, *rest = [backbone, *path.split(".")]
        for name in rest[:-1]:
            owner = getattr(owner, name, None)
        blocks = getattr(owner, rest[-1], None) if owner is not None else None
        if isinstance(blocks, nn.ModuleList) and len(blocks) > 0:
            return owner, rest[-1], blocks
    raise ModelError(
        f"cannot find the decoder blocks of {type(model).__name__}: looked for {', '.join(BLOCK_PATHS)} under "
        f"{type(backbone).__name__}; this architecture is not supported yet"
    )


def truncated_backbone(model: nn.Module, num_blocks: int, last_token: bool = True, attention: str = "eager",
                       dtype: torch.dtype | None = None) -> nn.Module:
    """A copy of the backbone (embeddings, first `num_blocks` blocks, final norm; no LM head).

    The copy's forward returns the final-normed hidden states after block K, as in the paper's JVP embeddings. With
    `last_token` its last block can skip what the last-token reading does not need (`last_token.last_positions`).
    `attention` is eager for forward-mode AD (no JVP rule for the fused kernels); plain forward passes (central
    differences) take sdpa. `dtype` casts the copy only, so the K blocks can run in float32 under a bf16 model.
    """
    owner, name, blocks = find_blocks(model)
    if not 1 <= num_blocks <= len(blocks):
        raise ConfigError(f"EmbeddingConfig.num_blocks must be between 1 and {len(blocks)} for this model, got "
                          f"{num_blocks}")
    backbone = model.base_model
    setattr(owner, name, nn.ModuleList(list(blocks)[:num_blocks]))
    try:
        truncated = copy.deepcopy(backbone)
    finally:
        setattr(owner, name, blocks)
    config = truncated.config
    config.num_hidden_layers = num_blocks
    if isinstance(getattr(config, "layer_types", None), list):
        config.layer_types = config.layer_types[:num_blocks]
    if dtype is not None:
        truncated.to(dtype)
    if hasattr(truncated, "set_attn_implementation"):
        truncated.set_attn_implementation(attention)
    else:  # pragma: no cover - older transformers
        config._attn_implementation = attention
    truncated.eval()
    for parameter in truncated.parameters():
        parameter.requires_grad_(False)
    if last_token:
        trim_last_block(truncated, find_blocks(truncated)[2])
    return truncated
