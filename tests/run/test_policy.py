"""The run's choices for the method (`run/policy.py`): batch sizes by device, and the warning when propagation ranks
poorly."""

import torch
from conftest import make_model

from influence_distillation.config import EmbeddingConfig, GradientConfig
from influence_distillation.run import policy


def test_unset_batch_sizes_follow_the_device_and_batch_only_linear_layers(tokenizer, monkeypatch):
    assert policy.device_batch_size(None, policy.EMBEDDING_BATCH, torch.device("cuda", 0)) == 64
    assert policy.device_batch_size(None, policy.GRADIENT_BATCH, torch.device("cuda")) == 16
    assert policy.device_batch_size(None, policy.EMBEDDING_BATCH, torch.device("meta")) == 8  # the CPU's
    assert policy.device_batch_size(3, policy.EMBEDDING_BATCH, torch.device("cuda")) == 3
    model = make_model("llama", len(tokenizer))
    assert policy.run_embedder(model, EmbeddingConfig(num_blocks=2), 0).batch_size == 8
    assert policy.run_gradient_space(model, GradientConfig(), 0).batch_size == 1
    monkeypatch.setitem(policy.GRADIENT_BATCH, "cpu", 4)  # as on a GPU: batched where every parameter is linear
    assert policy.run_gradient_space(model, GradientConfig(), 0).batch_size == 4
    assert policy.run_gradient_space(model, GradientConfig(params="all"), 0).batch_size == 1  # norms, embeddings
    assert policy.run_gradient_space(model, GradientConfig(params="all", batch_size=2), 0).batch_size == 2  # as asked


def test_the_gpu_gradient_batch_shrinks_to_fit_its_memory():
    gib = 2**30
    # SmolLM2-1.7B's MLP down-projections (24 × 2048 × 8192) on a 141 GiB card: the full batch of 16 fits.
    assert policy.gradient_batch_size(torch.device("cuda"), 24 * 2048 * 8192, 141 * gib) == 16
    # Llama-2-7B's (32 × 4096 × 11008) on an 80 GiB card: as many as fit in half of it, and one more would not.
    coordinates = 32 * 4096 * 11008
    batch = policy.gradient_batch_size(torch.device("cuda"), coordinates, 80 * gib)
    per_sample = policy.GRADIENT_BYTES_PER_COORDINATE * coordinates
    assert 1 < batch < 16 and batch * per_sample <= 40 * gib < (batch + 1) * per_sample
    assert policy.gradient_batch_size(torch.device("cuda"), coordinates, 8 * gib) == 1  # never below one sample
    assert policy.gradient_batch_size(torch.device("cpu"), coordinates) == 1  # a CPU's: one at a time


def test_low_held_out_fidelity_warns_with_the_remedies():
    assert policy.fidelity_warning(None, 40, 1000) is None
    assert policy.fidelity_warning(policy.LOW_FIDELITY, 40, 1000) is None
    line = policy.fidelity_warning(policy.LOW_FIDELITY - 0.1, 40, 1000)
    assert "\n" not in line and "held-out Spearman 0.50" in line
    assert "--landmarks 80" in line and "--verify -1" in line and "--exact" in line
    assert "--landmarks 60" in policy.fidelity_warning(0.2, 40, 60)  # never more landmarks than the pool has
    verified = policy.fidelity_warning(0.2, 40, 1000, verified=50)  # verification already ran: ask for more of it
    assert "(and 50 verification landmarks)" in verified and "--verify 100" in verified
