"""The last of the K blocks computed only as far as the last-token reading needs.

The JVP embeddings read the K-th block's output at each sequence's last real token. That output needs the block's
keys and values at every position, but its query, attention output, output projection and MLP — over 90% of a
block's weights — only at that token. `LastTokenBlock` computes just that while `last_positions` says which token,
so the embedding stage does K − 1 whole blocks and a sliver of the K-th.
"""

from __future__ import annotations

import logging
import sys
from contextlib import contextmanager

import torch
from torch import nn

log = logging.getLogger(__name__)

PRE_NORM_PARTS = {"input_layernorm", "self_attn", "post_attention_layernorm", "mlp"}
ATTENTION_PARTS = {"q_proj", "k_proj", "v_proj", "o_proj"}


class LastTokenBlock(nn.Module):
    """A Llama-style pre-norm block (Llama, Mistral, Qwen2/3, …) that, while `rows` is set, computes its output at
    one position per sequence; every other position keeps the block's input, which nothing reads.

    It holds the original block's parts under their own names, so parameter names (and tangents drawn by name)
    are unchanged; with `rows` unset it runs the original block itself (kept unregistered: it shares those parts).
    Attention uses the architecture's own rotary and eager-attention functions from its modelling module.
    """

    def __init__(self, block: nn.Module):
        super().__init__()
        for name, part in block.named_children():
            setattr(self, name, part)
        self.__dict__["whole"] = block  # not a submodule: its parameters are the parts above
        code = sys.modules[type(self.self_attn).__module__]
        self._rotary, self._attention = code.apply_rotary_pos_emb, code.eager_attention_forward
        self.rows: torch.Tensor | None = None

    def forward(self, hidden_states, attention_mask=None, position_embeddings=None, **kwargs) -> torch.Tensor:
        if self.rows is None:
            return self.whole(hidden_states, attention_mask=attention_mask, position_embeddings=position_embeddings,
                              **kwargs)
        normed = self.input_layernorm(hidden_states)
        batch = torch.arange(hidden_states.shape[0], device=hidden_states.device)
        picked = hidden_states[batch, self.rows] + self._attend_at(normed, batch, attention_mask, position_embeddings)
        out = picked + self.mlp(self.post_attention_layernorm(picked))
        keep = torch.zeros(hidden_states.shape[:2], dtype=torch.bool, device=hidden_states.device)
        keep[batch, self.rows] = True
        return torch.where(keep.unsqueeze(-1), out.unsqueeze(1), hidden_states)

    def _attend_at(self, normed, batch, mask, position_embeddings) -> torch.Tensor:
        """The attention output at `rows` only: (B, d). Keys and values at every position, the query at one."""
        attn, rows = self.self_attn, self.rows
        (count, width), head = normed.shape[:2], attn.head_dim
        query = attn.q_proj(normed[batch, rows]).view(count, 1, -1, head)
        key = attn.k_proj(normed).view(count, width, -1, head)
        value = attn.v_proj(normed).view(count, width, -1, head).transpose(1, 2)
        if hasattr(attn, "q_norm"):  # Qwen3: RMSNorm over each head before the rotation
            query, key = attn.q_norm(query), attn.k_norm(key)
        cos, sin = position_embeddings
        query = self._rotary(query.transpose(1, 2), query.transpose(1, 2), cos[batch, rows].unsqueeze(1),
                             sin[batch, rows].unsqueeze(1))[0]
        key = self._rotary(key.transpose(1, 2), key.transpose(1, 2), cos, sin)[1]
        mask = additive_row_mask(mask, batch, rows, key.dtype)
        out, _ = self._attention(attn, query, key, value, mask, scaling=attn.scaling, dropout=0.0)
        return attn.o_proj(out.reshape(count, -1))


def additive_row_mask(mask, batch, rows, dtype) -> torch.Tensor | None:
    """The read token's row of the layer's attention mask, (B, 1, 1, T), as eager attention adds it: eager layers
    get an additive float mask, sdpa layers a boolean one (True: may attend) or none when nothing is padded (then the
    read token, the last, attends to every position)."""
    if mask is None:
        return None
    mask = mask[batch, :, rows].unsqueeze(2)
    if mask.dtype == torch.bool:
        mask = torch.zeros(mask.shape, dtype=dtype, device=mask.device).masked_fill(~mask, torch.finfo(dtype).min)
    return mask


@contextmanager
def last_positions(backbone: nn.Module, rows: torch.Tensor | None):
    """Within the block, the backbone's output is exact only at `rows` (one position per sequence) and computed
    only as far as those need; a backbone without a `LastTokenBlock`, or `rows=None`, computes everything."""
    blocks = [m for m in backbone.modules() if isinstance(m, LastTokenBlock)]
    for block in blocks:
        block.rows = rows
    try:
        yield
    finally:
        for block in blocks:
            block.rows = None


def llama_layout(block: nn.Module) -> bool:
    """Whether the block has Llama's parts and its modelling module the functions `LastTokenBlock` calls."""
    attn = getattr(block, "self_attn", None)
    code = sys.modules.get(type(attn).__module__)
    return ({n for n, _ in block.named_children()} == PRE_NORM_PARTS
            and next(block.parameters(recurse=False), None) is None
            and ATTENTION_PARTS <= {n for n, _ in attn.named_children()}
            and all(hasattr(code, f) for f in ("apply_rotary_pos_emb", "eager_attention_forward")))


def every_position_weights(block: nn.Module) -> int:
    """Weights of a trimmed block used at every position (keys and values); the rest run once per sequence."""
    return sum(p.numel() for name, p in block.named_parameters() if name.startswith(("self_attn.k_proj",
                                                                                    "self_attn.v_proj")))


def trim_last_block(backbone: nn.Module, blocks: nn.ModuleList) -> None:
    """Swap the last block for a `LastTokenBlock` where its layout is Llama's, checked numerically on a short
    input: a block with the same parts but another forward (Granite's scaled residuals) keeps its own."""
    last = blocks[-1]
    if not llama_layout(last):
        return
    device = next(backbone.parameters()).device
    ids = torch.arange(1, 6, device=device).remainder(backbone.config.vocab_size).unsqueeze(0)
    with torch.no_grad():
        reference = backbone(input_ids=ids, use_cache=False).last_hidden_state[:, -1].float()
        blocks[-1] = LastTokenBlock(last)
        with last_positions(backbone, torch.tensor([ids.shape[1] - 1], device=device)):
            candidate = backbone(input_ids=ids, use_cache=False).last_hidden_state[:, -1].float()
    tolerance = 1e-4 if next(backbone.parameters()).dtype == torch.float32 else 3e-2
    if not (candidate - reference).norm() <= tolerance * reference.norm():
        blocks[-1] = last
        log.info("embeddings: the last block of %s does not compute as Llama's; it runs at every position",
                 type(backbone).__name__)
