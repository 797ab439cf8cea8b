import pytest
import torch
from conftest import make_model
from torch import nn

from influence_distillation.data.tokenization import Example, collate
from influence_distillation.errors import ConfigError, ModelError
from influence_distillation.model.blocks import find_blocks, truncated_backbone
from influence_distillation.model.last_token import LastTokenBlock, last_positions

FINAL_NORM = {"llama": "norm", "qwen2": "norm", "gpt2": "ln_f", "neox": "final_layer_norm"}


@pytest.mark.parametrize("kind", ["llama", "qwen2", "gpt2", "neox"])
def test_blocks_are_found_and_truncation_keeps_the_first_k(kind):
    model = make_model(kind, vocab_size=64, layers=3)
    _, _, blocks = find_blocks(model)
    assert len(blocks) == 3
    truncated = truncated_backbone(model, 2)
    assert len(find_blocks_of_backbone(truncated)) == 2
    assert len(find_blocks(model)[2]) == 3, "the original model must be left intact"
    assert truncated.config._attn_implementation == "eager"
    ids = torch.randint(0, 64, (2, 7))
    with torch.no_grad():
        expected = model.base_model(input_ids=ids, output_hidden_states=True).hidden_states[2]
        expected = getattr(model.base_model, FINAL_NORM[kind])(expected)
        got = truncated(input_ids=ids).last_hidden_state
    torch.testing.assert_close(got, expected)
    assert not any(p.requires_grad for p in truncated.parameters())
    with pytest.raises(ConfigError, match="between 1 and 3"):
        truncated_backbone(model, 4)


def find_blocks_of_backbone(backbone):
    return next(m for m in backbone.modules() if isinstance(m, nn.ModuleList))


def test_unknown_layout_is_a_clear_error():
    class Strange(nn.Module):
        def __init__(self):
            super().__init__()
            self.stack = nn.Sequential(nn.Linear(2, 2))

        @property
        def base_model(self):
            return self

    with pytest.raises(ModelError, match="cannot find the decoder blocks of Strange"):
        find_blocks(Strange())


@pytest.mark.parametrize("kind, trims", [("llama", True), ("qwen2", True), ("qwen3", True), ("gpt2", False),
                                         ("neox", False)])
@pytest.mark.parametrize("side", ["right", "left"])
@pytest.mark.parametrize("attention", ["eager", "sdpa"])
def test_last_block_at_the_last_token_equals_the_whole_block_there(kind, trims, side, attention):
    """The trimmed backbone's output at each sequence's last real token against the untrimmed eager backbone's, with
    the MLP of the last block seen running on one position per sequence; parameter names (tangents are drawn by name)
    stay the same. Under sdpa the layers get a boolean mask, which the trimmed block must read as eager's additive
    one (else the read token attends to padding)."""
    model = make_model(kind, vocab_size=64, layers=3)  # float32: HF's float64 mask overflows on left padding
    trimmed, full = truncated_backbone(model, 2, attention=attention), truncated_backbone(model, 2, last_token=False)
    assert trimmed.config._attn_implementation == attention
    assert [n for n, _ in trimmed.named_parameters()] == [n for n, _ in full.named_parameters()]
    assert any(isinstance(m, LastTokenBlock) for m in trimmed.modules()) == trims
    examples = [Example(str(i), torch.randint(0, 64, (n,)), torch.zeros(n, dtype=torch.long), False)
                for i, n in enumerate([5, 9, 3])]
    batch = collate(examples, 0, side)
    inputs = {"input_ids": batch.input_ids, "attention_mask": batch.attention_mask,
              "position_ids": batch.position_ids, "use_cache": False}
    widths = []
    hook = find_blocks(trimmed)[2][-1].mlp.register_forward_hook(lambda m, args, out: widths.append(args[0].shape))
    with torch.no_grad():
        expected = full(**inputs).last_hidden_state
        with last_positions(trimmed, batch.last_index):
            got = trimmed(**inputs).last_hidden_state
        untouched = trimmed(**inputs).last_hidden_state  # outside the block: every position again
    hook.remove()
    rows = torch.arange(3), batch.last_index
    torch.testing.assert_close(got[rows], expected[rows], rtol=1e-4, atol=1e-5)
    real = batch.attention_mask.bool()  # sdpa and eager differ only where a padded query attends to nothing
    torch.testing.assert_close(untouched[real], expected[real], rtol=1e-4, atol=1e-5)
    if trims:
        assert widths[0] == (3, 32), widths  # one position per sequence
        assert not torch.allclose(got, expected)  # the positions nobody reads were not computed
        assert widths[1] == (3, batch.input_ids.shape[1], 32)


def test_a_block_with_the_same_parts_but_another_forward_is_kept_whole():
    """Granite scales its residual branches: same four parts as Llama, a different forward; the numerical check
    must keep its block as it is."""
    from transformers import GraniteConfig, GraniteForCausalLM

    torch.manual_seed(0)
    config = GraniteConfig(vocab_size=64, hidden_size=32, intermediate_size=64, num_hidden_layers=3,
                           num_attention_heads=4, num_key_value_heads=2, residual_multiplier=0.3,
                           attn_implementation="eager")
    model = GraniteForCausalLM(config).eval()
    trimmed = truncated_backbone(model, 2)
    assert not any(isinstance(m, LastTokenBlock) for m in trimmed.modules())
    ids = torch.randint(0, 64, (2, 6))
    with torch.no_grad():
        torch.testing.assert_close(trimmed(input_ids=ids).last_hidden_state,
                                   truncated_backbone(model, 2, last_token=False)(input_ids=ids).last_hidden_state,
                                   rtol=1e-4, atol=1e-5)
