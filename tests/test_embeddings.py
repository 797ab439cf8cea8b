import pytest
import torch
from conftest import make_model

from influence_distillation.embeddings import (
    jvp_embeddings,
    jvp_outputs,
    sample_tangents,
)
from influence_distillation.models import truncated_backbone
from influence_distillation.projection import HadamardProjector
from influence_distillation.tokenization import Example, collate


def random_examples(vocab, lengths, seed=0):
    g = torch.Generator().manual_seed(seed)
    return [Example(str(i), torch.randint(0, vocab, (n,), generator=g), torch.zeros(n, dtype=torch.long), False)
            for i, n in enumerate(lengths)]


def last_token_output(backbone, params, batch):
    out = torch.func.functional_call(backbone, params, args=(), kwargs={
        "input_ids": batch.input_ids, "attention_mask": batch.attention_mask, "position_ids": batch.position_ids,
        "use_cache": False})
    return out.last_hidden_state[torch.arange(batch.input_ids.shape[0]), batch.last_index]


@pytest.mark.parametrize("kind", ["llama", "gpt2"])
def test_jvp_equals_central_finite_difference(kind):
    backbone = truncated_backbone(make_model(kind, 64).double(), 2)
    batch = collate(random_examples(64, [5, 9, 7]), pad_id=0)
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
def test_batched_equals_one_at_a_time(kind, side):
    backbone = truncated_backbone(make_model(kind, 64), 2)
    examples = random_examples(64, [4, 11, 7, 2])
    tangents = sample_tangents(dict(backbone.named_parameters()), 2, seed=0)
    with torch.no_grad():
        together = jvp_outputs(backbone, tangents, collate(examples, 0, side))
        for row, example in enumerate(examples):
            alone = jvp_outputs(backbone, tangents, collate([example], 0))
            torch.testing.assert_close(together[row], alone[0], rtol=1e-4, atol=1e-5)


def test_embeddings_concatenate_tangents_and_project_reproducibly():
    backbone = truncated_backbone(make_model("llama", 64), 2)
    examples = random_examples(64, [6, 3, 8, 5, 4])
    exact = jvp_embeddings(backbone, examples, num_tangents=2, dim=4096, seed=1, batch_size=2,
                           progress=False)
    assert exact.shape == (5, 64)  # m * d_model = 2 * 32 <= d_e: exact coordinates are kept
    tangents = sample_tangents(dict(backbone.named_parameters()), 2, seed=1)
    with torch.no_grad():
        u = jvp_outputs(backbone, tangents, collate([examples[2]], 0))
    torch.testing.assert_close(exact[2], u.reshape(-1), rtol=1e-4, atol=1e-5)
    projected = jvp_embeddings(backbone, examples, 2, dim=16, seed=1, batch_size=2, progress=False)
    torch.testing.assert_close(projected, HadamardProjector(64, 16, seed=2)(exact), rtol=1e-4, atol=1e-5)
    again = jvp_embeddings(backbone, examples, 2, dim=16, seed=1, batch_size=2, progress=False)
    assert torch.equal(projected, again)
