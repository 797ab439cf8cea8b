import pytest
import torch
from conftest import make_model

from influence_distillation.data.records import Sample
from influence_distillation.data.tokenization import IGNORE_INDEX, tokenize_samples
from influence_distillation.errors import ConfigError
from influence_distillation.method.gradients import flat_gradient, projected_gradients, select_parameters
from influence_distillation.method.losses import only_requires_grad, sample_loss
from influence_distillation.method.projection import HadamardProjector, IdentityProjector


@pytest.fixture
def examples(tokenizer):
    samples = [
        Sample("a", {}, (("user", "What is 3 plus 4?"), ("assistant", "3 plus 4 is 7.")), None),
        Sample("b", {}, (("user", "Name the capital of Peru."), ("assistant", "The capital is Lima.")), None),
        Sample("c", {}, None, "The sky looked blue today."),
    ]
    return tokenize_samples(samples, tokenizer, 512).examples


@pytest.mark.parametrize("kind", ["llama", "gpt2"])
def test_per_sample_gradient_equals_hf_loss_backward_on_that_sample_alone(kind, tokenizer, examples, device):
    model = make_model(kind, len(tokenizer)).double().to(device)
    params = select_parameters(model, "mlp-down")
    for example in examples:
        with only_requires_grad(model, params):
            ours = flat_gradient(model, params, example)
        model.zero_grad()
        reference = model(input_ids=example.input_ids[None].to(device), labels=example.labels[None].to(device)).loss
        reference.backward()
        expected = torch.cat([p.grad.reshape(-1) for p in params.values()])
        # HF's loss upcasts logits to float32 (ours stays float64), hence float32-level agreement.
        torch.testing.assert_close(ours, expected, rtol=1e-4, atol=1e-8)
        assert (ours - expected).norm() / expected.norm() < 1e-5  # float32 rounding (~6e-8) with CPU-dependent kernels
        assert sample_loss(model, example).item() == pytest.approx(reference.item(), rel=1e-5)


def test_prompt_tokens_carry_no_loss(tokenizer, examples):
    model = make_model("llama", len(tokenizer))
    example = examples[0]
    logits = model(input_ids=example.input_ids[None]).logits[0].detach().requires_grad_(True)
    loss = torch.nn.functional.cross_entropy(logits[:-1], example.labels[1:], ignore_index=IGNORE_INDEX)
    loss.backward()
    predicts_prompt = torch.cat([example.labels[1:] == IGNORE_INDEX, torch.tensor([True])])
    assert predicts_prompt.sum() > 5
    assert (logits.grad[predicts_prompt] == 0).all()
    assert (logits.grad[~predicts_prompt].abs().sum(dim=1) > 0).all()
    # And the pipeline's loss is exactly this completion-only loss.
    assert sample_loss(model, example).item() == pytest.approx(loss.item(), rel=1e-5)  # float32, other kernels


def test_projected_gradients_are_preconditioned_then_normalised(tokenizer, examples, device):
    model = make_model("llama", len(tokenizer)).to(device)
    params = select_parameters(model, "mlp-down")
    size = sum(p.numel() for p in params.values())
    a = torch.rand(size) + 0.5
    rows, norms = projected_gradients(model, examples, params, IdentityProjector(size), preconditioner=a, chunk=2,
                                      progress=False)
    with only_requires_grad(model, params):
        raw = torch.stack([flat_gradient(model, params, e) for e in examples]).cpu()
    assert rows.device.type == norms.device.type == "cpu"
    expected = (raw * a) / (raw * a).norm(dim=1, keepdim=True)
    torch.testing.assert_close(rows, expected)
    torch.testing.assert_close(norms, (raw * a).norm(dim=1).double())
    unnormalised, _ = projected_gradients(model, examples, params, IdentityProjector(size), preconditioner=a,
                                          normalize=False, progress=False)
    torch.testing.assert_close(unnormalised, raw * a)
    projector = HadamardProjector(size, 512, seed=0)
    projected, _ = projected_gradients(model, examples, params, projector, progress=False)
    torch.testing.assert_close(projected, projector(raw / raw.norm(dim=1, keepdim=True)), rtol=1e-4, atol=1e-6)
    assert all(p.requires_grad for p in model.parameters()), "requires_grad flags must be restored"


@pytest.mark.parametrize(
    "kind, expected",
    [
        ("llama", r"model\.layers\.\d\.mlp\.down_proj\.weight"),
        ("qwen2", r"model\.layers\.\d\.mlp\.down_proj\.weight"),
        ("gpt2", r"transformer\.h\.\d\.mlp\.c_proj\.(weight|bias)"),
        ("neox", r"gpt_neox\.layers\.\d\.mlp\.dense_4h_to_h\.(weight|bias)"),
    ],
)
def test_mlp_down_projection_is_found_in_every_architecture(kind, expected):
    import re

    names = list(select_parameters(make_model(kind, 64), "mlp-down"))
    assert names and all(re.fullmatch(expected, name) for name in names)
    assert len({n.rsplit(".", 1)[0] for n in names}) == 3  # one per block


def test_parameter_specs_all_regex_and_errors():
    model = make_model("llama", 64)
    assert len(select_parameters(model, "all")) == len(list(model.parameters()))
    assert list(select_parameters(model, r"layers\.0\.self_attn\.q_proj")) == ["model.layers.0.self_attn.q_proj.weight"]
    with pytest.raises(ConfigError, match="invalid regular expression"):
        select_parameters(model, "(")
    with pytest.raises(ConfigError, match="matches no parameter"):
        select_parameters(model, "nothing_like_this")


def test_batched_losses_equal_single_sample_losses(tokenizer, examples, device):
    from influence_distillation.data.tokenization import collate
    from influence_distillation.method.losses import batch_losses

    model = make_model("llama", len(tokenizer)).to(device)
    for side in ("right", "left"):
        losses = batch_losses(model, collate(examples, pad_id=0, padding_side=side).to(device))
        expected = torch.stack([sample_loss(model, e) for e in examples])
        torch.testing.assert_close(losses, expected, rtol=1e-5, atol=1e-6)


def test_micro_batched_backward_equals_one_batch(tokenizer, examples):
    from influence_distillation.data.tokenization import collate
    from influence_distillation.method.losses import backward_mean_loss, batch_losses

    model = make_model("llama", len(tokenizer)).double()
    loss = batch_losses(model, collate(examples, 0)).mean()
    loss.backward()
    expected = [p.grad.clone() for p in model.parameters()]
    model.zero_grad()
    value = backward_mean_loss(model, examples, max_tokens=1)  # one sample per micro-batch
    assert value == pytest.approx(loss.item())
    for p, g in zip(model.parameters(), expected):
        torch.testing.assert_close(p.grad, g)


def test_weighted_micro_batched_backward_equals_the_weighted_sum_of_per_sample_gradients(tokenizer, examples):
    from influence_distillation.method.losses import backward_mean_loss

    model = make_model("llama", len(tokenizer)).double()
    weights = torch.linspace(0.0, 2.0, len(examples), dtype=torch.float64)
    params = list(model.parameters())
    expected = [torch.zeros_like(p) for p in params]
    for w, example in zip(weights, examples):  # reference: one autograd gradient per sample
        for total, g in zip(expected, torch.autograd.grad(sample_loss(model, example), params)):
            total += w * g / len(examples)
    backward_mean_loss(model, examples, max_tokens=40, weights=weights)
    for p, g in zip(params, expected):
        torch.testing.assert_close(p.grad, g)
