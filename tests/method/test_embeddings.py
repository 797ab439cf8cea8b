import pytest
import torch
from conftest import make_model

from influence_distillation.data.tokenization import Example, collate
from influence_distillation.method.embeddings import POOLINGS, jvp_embeddings, jvp_outputs, sample_tangents
from influence_distillation.method.projection import HadamardProjector
from influence_distillation.model.blocks import truncated_backbone


def random_examples(vocab, lengths, seed=0):
    g = torch.Generator().manual_seed(seed)
    return [Example(str(i), torch.randint(0, vocab, (n,), generator=g), torch.zeros(n, dtype=torch.long), False)
            for i, n in enumerate(lengths)]


def last_token_output(backbone, params, batch):
    out = torch.func.functional_call(backbone, params, args=(), kwargs={
        "input_ids": batch.input_ids, "attention_mask": batch.attention_mask, "position_ids": batch.position_ids,
        "use_cache": False})
    return out.last_hidden_state[torch.arange(batch.input_ids.shape[0]), batch.last_index]


@pytest.mark.parametrize("kind", ["llama", "qwen2", "gpt2"])
def test_jvp_equals_central_finite_difference(kind, device):
    backbone = truncated_backbone(make_model(kind, 64).double().to(device), 2)
    batch = collate(random_examples(64, [5, 9, 7]), pad_id=0).to(device)
    params = dict(backbone.named_parameters())
    tangents = sample_tangents(params, 2, seed=3)

    def central_difference(j, eps):
        plus = last_token_output(backbone, {k: v + eps * tangents[k][j] for k, v in params.items()}, batch)
        minus = last_token_output(backbone, {k: v - eps * tangents[k][j] for k, v in params.items()}, batch)
        return (plus - minus) / (2 * eps)

    with torch.no_grad():
        u = jvp_outputs(backbone, tangents, batch)
        for j in range(2):
            # A unit Gaussian tangent is huge next to weights of scale 0.02, and Llama's RMSNorm computes in
            # float32, so a plain difference is either truncation- or round-off-limited; Richardson fixes both.
            eps = 1e-4
            extrapolated = (4 * central_difference(j, eps / 2) - central_difference(j, eps)) / 3
            relative = (extrapolated - u[:, j]).norm() / u[:, j].norm()
            assert relative < 1e-4, relative


@pytest.mark.parametrize("kind", ["llama", "gpt2"])
@pytest.mark.parametrize("side", ["right", "left"])
def test_batched_equals_one_at_a_time(kind, side, device):
    backbone = truncated_backbone(make_model(kind, 64).to(device), 2)
    examples = random_examples(64, [4, 11, 7, 2])
    tangents = sample_tangents(dict(backbone.named_parameters()), 2, seed=0)
    with torch.no_grad():
        together = jvp_outputs(backbone, tangents, collate(examples, 0, side).to(device))
        for row, example in enumerate(examples):
            alone = jvp_outputs(backbone, tangents, collate([example], 0).to(device))
            torch.testing.assert_close(together[row], alone[0], rtol=1e-4, atol=1e-5)


def test_embeddings_concatenate_tangents_and_project_reproducibly(device):
    backbone = truncated_backbone(make_model("llama", 64).to(device), 2)
    examples = random_examples(64, [6, 3, 8, 5, 4])
    exact = jvp_embeddings(backbone, examples, num_tangents=2, dim=4096, seed=1, batch_size=2,
                           progress=False)
    assert exact.shape == (5, 64)  # m * d_model = 2 * 32 <= d_e: exact coordinates are kept
    tangents = sample_tangents(dict(backbone.named_parameters()), 2, seed=1)
    with torch.no_grad():
        u = jvp_outputs(backbone, tangents, collate([examples[2]], 0).to(device))
    assert exact.device.type == "cpu"  # embeddings come back to the CPU whatever the model's device
    torch.testing.assert_close(exact[2], u.reshape(-1).cpu(), rtol=1e-4, atol=1e-5)
    projected = jvp_embeddings(backbone, examples, 2, dim=16, seed=1, batch_size=2, progress=False)
    torch.testing.assert_close(projected, HadamardProjector(64, 16, seed=2)(exact), rtol=1e-4, atol=1e-5)
    again = jvp_embeddings(backbone, examples, 2, dim=16, seed=1, batch_size=2, progress=False)
    assert torch.equal(projected, again)


def pooled_reference(backbone, params, batch, pooling):
    """The K-block outputs pooled by hand from every position's hidden state (no `pooling_weights`)."""
    out = torch.func.functional_call(backbone, params, args=(), kwargs={
        "input_ids": batch.input_ids, "attention_mask": batch.attention_mask, "position_ids": batch.position_ids,
        "use_cache": False}).last_hidden_state
    rows = []
    for b in range(out.shape[0]):
        n = int(batch.attention_mask[b].sum())
        hidden = out[b, :n]
        if pooling == "last":
            rows.append(hidden[-1])
        elif pooling == "mean":
            rows.append(hidden.mean(0))
        elif pooling == "weighted":
            w = torch.arange(1, n + 1, dtype=hidden.dtype, device=hidden.device)
            rows.append((w[:, None] * hidden).sum(0) / w.sum())
        else:  # completion: positions j whose next token j + 1 carries a label
            predicting = [j for j in range(n - 1) if batch.labels[b, j + 1] != -100]
            rows.append(hidden[predicting].mean(0))
    return torch.stack(rows)


def labelled_examples(vocab, lengths, seed=0):
    """Random examples whose last few tokens are the completion."""
    g = torch.Generator().manual_seed(seed)
    out = []
    for i, n in enumerate(lengths):
        ids = torch.randint(0, vocab, (n,), generator=g)
        labels = torch.full((n,), -100)
        labels[n - 1 - i % 3 :] = ids[n - 1 - i % 3 :]
        out.append(Example(str(i), ids, labels, False))
    return out


def test_pooled_jvp_equals_finite_difference_of_hand_pooled_outputs(device):
    """Every pooling against an independent reference: Richardson-extrapolated central differences of the hidden
    states pooled by hand; the primal against the hand-pooled outputs themselves."""
    backbone = truncated_backbone(make_model("llama", 64).double().to(device), 2)
    batch = collate(labelled_examples(64, [6, 9, 7]), pad_id=0).to(device)
    params = dict(backbone.named_parameters())
    tangents = sample_tangents(params, 1, seed=5)
    with torch.no_grad():
        u, primal = jvp_outputs(backbone, tangents, batch, POOLINGS, with_primal=True)
        d = backbone.config.hidden_size
        for index, pooling in enumerate(POOLINGS):
            def difference(eps):
                shift = lambda sign: {k: v + sign * eps * tangents[k][0] for k, v in params.items()}
                return (pooled_reference(backbone, shift(1), batch, pooling)
                        - pooled_reference(backbone, shift(-1), batch, pooling)) / (2 * eps)

            reference = (4 * difference(5e-5) - difference(1e-4)) / 3
            mine = u[:, 0, index * d : (index + 1) * d]
            assert (mine - reference).norm() / reference.norm() < 1e-4, pooling
            torch.testing.assert_close(primal[:, index * d : (index + 1) * d],
                                       pooled_reference(backbone, params, batch, pooling))


@pytest.mark.parametrize("side", ["right", "left"])
def test_pooled_outputs_do_not_depend_on_padding(side, device):
    backbone = truncated_backbone(make_model("llama", 64).to(device), 2)
    examples = labelled_examples(64, [4, 11, 7, 5])
    tangents = sample_tangents(dict(backbone.named_parameters()), 2, seed=0)
    with torch.no_grad():
        together = jvp_outputs(backbone, tangents, collate(examples, 0, side).to(device), POOLINGS)
        for row, example in enumerate(examples):
            alone = jvp_outputs(backbone, tangents, collate([example], 0).to(device), POOLINGS)
            torch.testing.assert_close(together[row], alone[0], rtol=1e-4, atol=1e-5)


def test_central_differences_match_forward_mode(device):
    from influence_distillation.method.embeddings import difference_outputs

    # Unit-Gaussian tangents dwarf weights of scale 0.02: steps of 1e-3 are already far into the non-linear range.
    for dtype, step, tolerance in ((torch.float64, 1e-5, 1e-3), (torch.float32, 1e-5, 1e-3), (torch.float32, 1e-3, None)):
        backbone = truncated_backbone(make_model("llama", 64).to(device, dtype), 2)
        batch = collate(labelled_examples(64, [6, 9, 7]), pad_id=0).to(device)
        tangents = sample_tangents(dict(backbone.named_parameters()), 2, seed=4)
        with torch.no_grad():
            exact = jvp_outputs(backbone, tangents, batch, ("last", "mean"))
            approximate = difference_outputs(backbone, tangents, batch, ("last", "mean"), step)
        assert approximate.shape == exact.shape
        error = (approximate - exact).norm() / exact.norm()
        assert error < tolerance if tolerance else error > 0.05, (dtype, step)  # the test can tell a bad step
        if dtype == torch.float64:  # one `last` pooling: the last block runs its MLP at the last token only
            with torch.no_grad():
                last = difference_outputs(backbone, tangents, batch, ("last",), step)
            d = backbone.config.hidden_size
            reference = exact.reshape(3, 2, 2, d)[:, :, 0]
            assert (last - reference).norm() / reference.norm() < tolerance


def test_difference_embedder_matches_forward_mode_in_float32_under_a_bf16_model(device):
    """The `difference` embedder as a run builds it — sdpa attention, the K blocks copied to float32, the step
    calibrated — against forward-mode AD in eager attention on the same (bf16-rounded) weights in float32, over
    padded batches; the bf16 model itself is left in bf16. The calibrated step is the one that best matches the
    JVP on the check input, so a fixed step that suits the real model (3e-4) would fail here."""
    from influence_distillation.config import EmbeddingConfig
    from influence_distillation.method.embeddings import DIFFERENCE_STEPS, make_embedder

    model = make_model("llama", 64).to(device, torch.bfloat16)
    reference_model = make_model("llama", 64).to(device, torch.bfloat16).float()
    examples = labelled_examples(64, [6, 11, 4, 9, 7])
    config = EmbeddingConfig(method="difference", num_tangents=2, dim=64, pooling="last+mean")
    embedder = make_embedder(model, config, seed=3, batch_size=3)
    assert embedder.backbone.config._attn_implementation == "sdpa"
    assert next(embedder.backbone.parameters()).dtype == torch.float32
    assert next(model.parameters()).dtype == torch.bfloat16
    assert embedder.step < 3e-4 and embedder.step in DIFFERENCE_STEPS and embedder.step_error < 1e-3
    got = embedder(examples)
    exact = make_embedder(reference_model, EmbeddingConfig(method="jvp", num_tangents=2, dim=64, pooling="last+mean"),
                          seed=3, batch_size=3)
    assert exact.backbone.config._attn_implementation == "eager"
    expected = exact(examples)
    error = (got - expected).norm(dim=1) / expected.norm(dim=1)
    assert error.max() < 3e-3, error


@pytest.mark.parametrize("kind, names", [("llama", ["model.layers.2.mlp.down_proj.weight"]),
                                         ("gpt2", ["transformer.h.2.mlp.c_proj.weight", "transformer.h.2.mlp.c_proj.bias"])])
def test_gradient_embeddings_are_the_top_down_projection_gradient_of_each_sample_alone(kind, names, device):
    """Against HF's own loss backward on each sample alone, the top block's down-projection named by hand; then the
    projected rows against the projection of those references."""
    from influence_distillation.method.embeddings import GradientEmbedder

    model = make_model(kind, 64).double().to(device)
    examples = labelled_examples(64, [6, 11, 4, 9, 7])
    params = dict(model.named_parameters())
    references = []
    for example in examples:
        model.zero_grad()
        model(input_ids=example.input_ids[None].to(device), labels=example.labels[None].to(device)).loss.backward()
        flat = torch.cat([params[name].grad.reshape(-1) for name in names]).cpu()
        references.append(flat / flat.norm())
    model.zero_grad()
    reference = torch.stack(references)
    size = reference.shape[1]
    exact = GradientEmbedder(model, dim=size, seed=3, batch_size=3)(examples)  # batches of 3: padded
    assert exact.shape == (5, size) and exact.device.type == "cpu"
    torch.testing.assert_close(exact.double(), reference, rtol=1e-5, atol=1e-6)
    embedder = GradientEmbedder(model, dim=16, seed=3, batch_size=2)
    torch.testing.assert_close(embedder(examples).double(), HadamardProjector(size, 16, seed=3)(reference.float())
                               .double(), rtol=1e-4, atol=1e-5)
    assert all(p.grad is None for p in model.parameters())  # nothing accumulated into .grad
