"""Batched per-sample gradients from hooks and the Kronecker projection, against one-sample-at-a-time autograd."""

import pytest
import torch
from conftest import make_model, synthetic_pool

from influence_distillation.data.records import Sample
from influence_distillation.data.tokenization import collate, tokenize_samples
from influence_distillation.method.gradients import flat_gradient, projected_gradients, select_parameters
from influence_distillation.method.losses import only_requires_grad
from influence_distillation.method.per_sample import (
    KroneckerProjector,
    batched_gradients,
    linear_layers,
    record,
    token_batches,
)
from influence_distillation.method.projection import HadamardProjector


@pytest.fixture
def examples(tokenizer):
    records = synthetic_pool(7)
    samples = [Sample(str(i), r, (("user", r["prompt"] + " Please answer." * (i % 3)), ("assistant", r["completion"])),
                      None) for i, r in enumerate(records)]
    return tokenize_samples(samples, tokenizer, 512).examples  # lengths differ: batches are padded


@pytest.mark.parametrize("kind, spec", [("llama", "mlp-down"), ("llama", r"(o_proj|up_proj)"),
                                        ("gpt2", r"mlp\.c_proj|attn\.c_attn")])
def test_batched_gradients_equal_one_sample_at_a_time(kind, spec, tokenizer, examples, device):
    model = make_model(kind, len(tokenizer)).double().to(device)
    params = select_parameters(model, spec)
    layers = linear_layers(model, params)
    assert layers is not None and any(layer.transposed for layer in layers) == (kind == "gpt2")
    batched = batched_gradients(model, params, layers, collate(examples, 0).to(device))  # right padding, as the pipeline
    with only_requires_grad(model, params):
        for row, example in enumerate(examples):
            alone = flat_gradient(model, params, example)
            assert (batched[row] - alone).norm() <= 1e-9 * alone.norm()  # float64: padding changes nothing
    assert all(p.grad is None for p in model.parameters())  # nothing accumulated into .grad


def test_parameters_that_are_not_linear_layers_are_refused(tokenizer):
    model = make_model("llama", len(tokenizer))
    assert linear_layers(model, select_parameters(model, "norm")) is None
    assert linear_layers(model, select_parameters(model, "all")) is None


def dense_kronecker(projector: KroneckerProjector) -> torch.Tensor:
    """The explicit (out_dim, D) matrix: per layer kron(R_o, R_i) on the row-major (out × in) weight block."""
    blocks = []
    for layer in projector.layers:
        left, right = (m.double() for m in projector.maps[layer.module])
        rows, cols = layer.shape
        if layer.weight:
            matrix = torch.kron(left, right)  # acts on vec(M) with M (rows × cols), row-major
            if layer.transposed:  # the stored block is Mᵀ (cols × rows), row-major
                matrix = matrix.reshape(-1, rows, cols).transpose(1, 2).reshape(len(matrix), -1)
            blocks.append((layer.weight, matrix))
        if layer.bias:
            blocks.append((layer.bias, left))
    dim = projector.in_dim
    out = []
    for name, matrix in blocks:
        full = torch.zeros(len(matrix), dim, dtype=torch.float64)
        start = projector.offsets[name]
        full[:, start : start + matrix.shape[1]] = matrix.double()
        out.append(full)
    return torch.cat(out)


@pytest.mark.parametrize("kind, spec", [("llama", "mlp-down"), ("gpt2", r"mlp\.c_proj")])
def test_kronecker_projection_is_a_fixed_matrix_and_needs_no_full_gradient(kind, spec, tokenizer, examples, device):
    model = make_model(kind, len(tokenizer)).double().to(device)
    params = select_parameters(model, spec)
    layers = linear_layers(model, params)
    projector = KroneckerProjector(layers, params, out_dim=200, seed=3)
    batch = collate(examples, 0).to(device)
    flat = batched_gradients(model, params, layers, batch)
    dense = dense_kronecker(projector).to(device)
    assert dense.shape == (projector.out_dim, flat.shape[1])
    torch.testing.assert_close(projector(flat), flat @ dense.T, rtol=1e-9, atol=1e-12)
    # Straight from the recorded activations, never forming the gradient:
    torch.testing.assert_close(projector.project_records(record(model, params, layers, batch)), flat @ dense.T,
                               rtol=1e-9, atol=1e-12)
    a = torch.rand(flat.shape[1], dtype=torch.float64, device=device)
    projected = (flat * a) @ dense.T
    torch.testing.assert_close(projector(flat, diag=a, normalize=True),
                               projected / projected.norm(dim=1, keepdim=True), rtol=1e-9, atol=1e-12)


def test_kronecker_inner_products_are_unbiased(tokenizer, examples):
    model = make_model("llama", len(tokenizer)).double()
    params = select_parameters(model, "mlp-down")
    layers = linear_layers(model, params)
    flat = batched_gradients(model, params, layers, collate(examples[:2], 0))
    true = float(flat[0] @ flat[1])
    estimates = torch.tensor([float(p(flat)[0] @ p(flat)[1]) for p in
                              (KroneckerProjector(layers, params, 64, seed) for seed in range(300))])
    assert abs(estimates.mean() - true) < 4 * estimates.std() / len(estimates) ** 0.5


@pytest.mark.parametrize("projection", ["srht", "kronecker"])
def test_batched_rows_equal_the_one_at_a_time_rows(projection, tokenizer, examples, device):
    model = make_model("llama", len(tokenizer)).double().to(device)
    params = select_parameters(model, "mlp-down")
    size = sum(p.numel() for p in params.values())
    projector = HadamardProjector(size, 256, 1) if projection == "srht" else KroneckerProjector(
        linear_layers(model, params), params, 256, 1)
    a = torch.rand(size, dtype=torch.float64) + 0.5
    for preconditioner in (None, a):
        one, one_norms = projected_gradients(model, examples, params, projector, preconditioner, progress=False)
        many, many_norms = projected_gradients(model, examples, params, projector, preconditioner, progress=False,
                                               batch_size=3)
        torch.testing.assert_close(many, one, rtol=1e-5, atol=1e-6)
        if projection == "srht" or preconditioner is not None:  # exact norms (else a JL estimate)
            torch.testing.assert_close(many_norms, one_norms, rtol=1e-9, atol=0)


def test_token_batches_cover_every_sample_once_within_the_limits():
    lengths = [5, 40, 3, 300, 12, 12, 7, 90]
    batches = token_batches(lengths, max_tokens=100, max_batch=3)
    assert sorted(i for b in batches for i in b) == list(range(len(lengths)))
    for batch in batches:
        assert len(batch) <= 3 and (len(batch) == 1 or len(batch) * max(lengths[i] for i in batch) <= 100)


def test_select_with_batched_kronecker_gradients_matches_one_at_a_time(model_dir, data_files, tmp_path):
    import numpy as np
    from conftest import select_args

    from influence_distillation.cli import main

    pool, target = data_files
    runs = {}
    for batch in ("1", "4"):
        out = tmp_path / f"b{batch}"
        assert main(select_args(pool, target, model_dir("llama"), out, 6, "--exact", "--grad-projection",
                                "kronecker", "--grad-batch-size", batch)) == 0
        runs[batch] = np.load(out / "target_scores.npy")
    np.testing.assert_allclose(runs["4"], runs["1"], rtol=1e-4, atol=1e-5)
    assert np.abs(runs["1"]).max() > 1e-3
