import math

import numpy as np
import pytest
import scipy.linalg
import torch

from influence_distillation.method.projection import HadamardProjector, IdentityProjector, fwht, make_projector


@pytest.mark.parametrize("n", [1, 2, 8, 256, 4096])
def test_fwht_equals_dense_sylvester_hadamard(n, device):
    x = torch.randn(3, n, dtype=torch.float64, device=device)
    dense = torch.from_numpy(scipy.linalg.hadamard(n)).double().to(device) / math.sqrt(n)
    torch.testing.assert_close(fwht(x), x @ dense.T)


def test_fwht_is_orthonormal_involution():
    x = torch.randn(2, 1 << 15, dtype=torch.float64)
    torch.testing.assert_close(fwht(fwht(x)), x)
    torch.testing.assert_close(fwht(x).norm(dim=1), x.norm(dim=1))


def test_srht_equals_explicit_matrix_built_independently(device):
    in_dim, out_dim, seed = 37, 16, 5
    projector = HadamardProjector(in_dim, out_dim, seed)
    n = projector.padded_dim
    assert n == 64
    # Rebuild S·H·D from its definition with scipy's Hadamard matrix and the projector's seeded choices.
    rng = np.random.default_rng(seed)
    signs = rng.integers(0, 2, size=in_dim, dtype=np.int8).astype(np.int64) * 2 - 1
    rows = np.sort(rng.choice(n, size=out_dim, replace=False))
    dense = math.sqrt(n / out_dim) * (scipy.linalg.hadamard(n) / math.sqrt(n))[rows][:, :in_dim] * signs
    x = torch.randn(5, in_dim, dtype=torch.float64)
    np.testing.assert_allclose(projector(x.to(device)).cpu().numpy(), x.numpy() @ dense.T, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(projector.dense().numpy(), dense, atol=1e-6)


def test_srht_preserves_inner_products_within_jl_tolerance():
    torch.manual_seed(0)
    in_dim, out_dim, count = 300_000, 8192, 12
    # Correlated unit vectors, sparse-ish to stress the randomisation.
    base = torch.randn(count, in_dim) * (torch.rand(count, in_dim) < 0.05)
    base[1::2] = base[::2] + 0.5 * torch.randn(count // 2, in_dim) * (torch.rand(count // 2, in_dim) < 0.05)
    x = base / base.norm(dim=1, keepdim=True)
    y = HadamardProjector(in_dim, out_dim, seed=1)(x)
    error = (y @ y.T - x @ x.T).abs().max().item()
    # JL: |<Px,Py> - <x,y>| ~ sqrt(2/k) per pair; allow 4 sigma over 78 pairs.
    assert error < 4 * math.sqrt(2 / out_dim), error


def test_projector_is_seeded_and_identity_when_not_smaller():
    x = torch.randn(2, 1000)
    torch.testing.assert_close(HadamardProjector(1000, 64, 3)(x), HadamardProjector(1000, 64, 3)(x))
    assert not torch.allclose(HadamardProjector(1000, 64, 3)(x), HadamardProjector(1000, 64, 4)(x))
    assert isinstance(make_projector(1000, 1000, 0), IdentityProjector)
    assert isinstance(make_projector(1001, 1000, 0), HadamardProjector)


def test_diagonal_weights_and_normalisation_are_fused_exactly(device):
    torch.manual_seed(0)
    x, d = torch.randn(3, 500, dtype=torch.float64), torch.rand(500, dtype=torch.float64) + 0.1
    x, d = x.to(device), d.to(device)
    projector = HadamardProjector(500, 64, seed=9)
    weighted = x * d
    torch.testing.assert_close(projector(x, diag=d), projector(weighted))
    torch.testing.assert_close(projector(x, diag=d, normalize=True),
                               projector(weighted / weighted.norm(dim=1, keepdim=True)), rtol=1e-5, atol=1e-6)
    identity = IdentityProjector(500)
    torch.testing.assert_close(identity(x, diag=d, normalize=True),
                               weighted / weighted.norm(dim=1, keepdim=True))


def test_countsketch_is_one_signed_entry_per_column_and_unbiased(monkeypatch, device):
    from influence_distillation.method.projection import CountSketchProjector

    for chunk in ("CHUNK", "DEVICE_CHUNK"):
        monkeypatch.setattr(CountSketchProjector, chunk, 7)  # several chunks even at this size
    sketch = CountSketchProjector(50, 12, seed=2)
    dense = sketch.dense()
    assert ((dense != 0).sum(0) == 1).all() and set(dense.unique().tolist()) <= {-1.0, 0.0, 1.0}
    x = torch.randn(4, 50, dtype=torch.float64)
    diag = torch.rand(50, dtype=torch.float64)
    # Independent reference: a plain Python loop over coordinates.
    loop = torch.zeros(4, 12, dtype=torch.float64)
    for i in range(50):
        loop[:, int(sketch.buckets[i])] += float(sketch.signs[i]) * diag[i] * x[:, i]
    on_device = lambda **kw: sketch(x.to(device), diag=diag.to(device), **kw).cpu()
    torch.testing.assert_close(on_device(), loop)
    torch.testing.assert_close(on_device(normalize=True), loop / (x * diag).norm(dim=1, keepdim=True))
    torch.testing.assert_close(on_device(), loop)  # again, with the maps already on the device
    a, b = torch.randn(2, 300, dtype=torch.float64)
    estimates = torch.tensor([float(p(a[None])[0] @ p(b[None])[0])
                              for p in (CountSketchProjector(300, 32, seed) for seed in range(400))])
    assert abs(estimates.mean() - a @ b) < 4 * estimates.std() / 20
