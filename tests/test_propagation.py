import math

import pytest
import torch

from influence_distillation.propagation import (
    fit_kernel_ridge,
    median_bandwidth,
    rbf_kernel,
    squared_distances,
)


def test_squared_distances_and_median_match_brute_force():
    torch.manual_seed(0)
    x = torch.randn(40, 5, dtype=torch.float64)
    brute = torch.tensor([[float(((a - b) ** 2).sum()) for b in x] for a in x], dtype=torch.float64)
    torch.testing.assert_close(squared_distances(x, x), brute)
    upper = [brute[i, j] for i in range(40) for j in range(i + 1, 40)]
    assert median_bandwidth(x) == pytest.approx(math.sqrt(torch.tensor(upper).median().item()))


def test_krr_reproduces_landmark_values_up_to_the_ridge():
    torch.manual_seed(0)
    landmarks = torch.randn(30, 4, dtype=torch.float64)
    values = torch.randn(30, 3, dtype=torch.float64)
    errors = []
    for ridge in (1e-1, 1e-3, 1e-6):
        krr = fit_kernel_ridge(landmarks, values, ridge=ridge, bandwidth=0.7)
        errors.append((krr.predict(landmarks) - values).abs().max().item())
        # The exact identity: K (K + δI)^-1 P = P - δ (K + δI)^-1 P.
        kernel = rbf_kernel(landmarks, landmarks, krr.bandwidth)
        residual = ridge * torch.linalg.solve(kernel + ridge * torch.eye(30, dtype=torch.float64), values)
        torch.testing.assert_close(krr.predict(landmarks), values - residual, rtol=1e-6, atol=1e-6)
    assert errors[0] > errors[1] > errors[2] and errors[2] < 1e-4


def test_krr_interpolates_a_smooth_function():
    grid = torch.linspace(-3, 3, 121, dtype=torch.float64)[:, None]
    landmarks = grid[::4]
    krr = fit_kernel_ridge(landmarks, torch.sin(landmarks), ridge=1e-8, bandwidth=0.5)
    inside = grid[10:-10]  # away from the ends, where an RBF interpolant bends back towards 0
    assert (krr.predict(inside) - torch.sin(inside)).abs().max().item() < 1e-3


def test_krr_batched_over_targets_equals_per_column_and_chunking_changes_nothing():
    torch.manual_seed(1)
    landmarks, points = torch.randn(25, 6), torch.randn(200, 6)
    values = torch.randn(25, 4, dtype=torch.float64)
    together = fit_kernel_ridge(landmarks, values).predict(points, chunk_size=7)
    for j in range(4):
        alone = fit_kernel_ridge(landmarks, values[:, j]).predict(points, chunk_size=1000)
        torch.testing.assert_close(together[:, j : j + 1], alone)


def test_coefficient_matrix_reproduces_predictions():
    torch.manual_seed(2)
    landmarks, points = torch.randn(20, 5, dtype=torch.float64), torch.randn(70, 5, dtype=torch.float64)
    values = torch.randn(20, 3, dtype=torch.float64)
    krr = fit_kernel_ridge(landmarks, values)
    coefficients = krr.coefficients(points, chunk_size=16)
    assert coefficients.shape == (70, 20)
    torch.testing.assert_close(coefficients @ values, krr.predict(points), rtol=1e-9, atol=1e-10)


def test_spearman_and_heldout_fidelity():
    import scipy.stats

    from influence_distillation.propagation import heldout_fidelity, spearman

    torch.manual_seed(5)
    x, y = torch.randn(50, dtype=torch.float64), torch.randn(50, dtype=torch.float64)
    assert spearman(x, y) == pytest.approx(scipy.stats.spearmanr(x, y).statistic)
    points = torch.randn(200, 3, dtype=torch.float64)
    smooth = torch.stack([points[:, 0], points[:, 1] ** 2], dim=1)  # a smooth function of the embedding
    noise = torch.randn(200, 2, dtype=torch.float64)  # unrelated to it
    assert heldout_fidelity(points, smooth, 1e-3, None) > 0.8
    assert abs(heldout_fidelity(points, noise, 1e-3, None)) < 0.2
    assert heldout_fidelity(points[:10], smooth[:10], 1e-3, None) is None


def test_prediction_streams_from_a_file_into_a_memmap(tmp_path):
    import numpy as np

    from influence_distillation.artifacts import NpyRows

    torch.manual_seed(3)
    points = torch.randn(300, 8)
    np.save(tmp_path / "points.npy", points.numpy())
    krr = fit_kernel_ridge(points[:40], torch.randn(40, 2, dtype=torch.float64))
    out = np.lib.format.open_memmap(tmp_path / "scores.npy", mode="w+", dtype=np.float64, shape=(300, 2))
    reader = NpyRows(tmp_path / "points.npy")
    assert reader.shape == (300, 8) and np.array_equal(reader[10:20], points[10:20].numpy())
    krr.predict(reader, chunk_size=64, out=out)
    torch.testing.assert_close(torch.from_numpy(np.asarray(out)), krr.predict(points))
