import pytest
import torch
from conftest import make_model
from torch import nn

from influence_distillation.errors import ConfigError, ModelError
from influence_distillation.runtime.models import find_blocks, truncated_backbone

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
