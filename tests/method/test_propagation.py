import math

import pytest
import torch

from influence_distillation.method.propagation import (
    fit_kernel_ridge,
    leave_one_out,
    median_bandwidth,
    rbf_kernel,
    squared_distances,
    tune_kernel_ridge,
)
from influence_distillation.stats import spearman


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
    krr = fit_kernel_ridge(landmarks, values)
    together = krr.predict(points, chunk_size=7)
    # The kernels are float32 (float32 embeddings), and BLAS may block a (7 × 25) product differently from a
    # (200 × 25) one, so each kernel entry may move by some float32 ulps of 1; a prediction then moves by at most
    # that times the column's Σ|coef|.
    bound = 32 * torch.finfo(torch.float32).eps * krr.coef.abs().sum(0)
    for j in range(4):
        alone = fit_kernel_ridge(landmarks, values[:, j]).predict(points, chunk_size=1000)
        assert (together[:, j] - alone[:, 0]).abs().max() <= bound[j]
    exact = fit_kernel_ridge(landmarks.double(), values).predict(points.double())  # float64 kernels throughout
    assert ((together - exact).abs() <= bound).all()


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

    from influence_distillation.method.propagation import heldout_fidelity

    torch.manual_seed(5)
    x, y = torch.randn(50, dtype=torch.float64), torch.randn(50, dtype=torch.float64)
    assert spearman(x, y) == pytest.approx(scipy.stats.spearmanr(x, y).statistic)
    tied_x, tied_y = torch.round(x * 2) / 2, torch.round(y)  # many ties: average ranks, as scipy's
    assert len(set(tied_x.tolist())) < 20
    assert spearman(tied_x, tied_y) == pytest.approx(scipy.stats.spearmanr(tied_x, tied_y).statistic, abs=1e-12)
    assert spearman(torch.ones(5), x[:5]) == 0.0
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
    # float32 kernel blocks of another size: equal up to float32 rounding, which depends on the CPU's kernels
    torch.testing.assert_close(torch.from_numpy(np.asarray(out)), krr.predict(points), rtol=1e-5, atol=1e-5)


def test_leave_one_out_equals_refitting_without_each_landmark():
    torch.manual_seed(3)
    landmarks = torch.randn(30, 4, dtype=torch.float64)
    values = torch.randn(30, 2, dtype=torch.float64)
    kernel = rbf_kernel(landmarks, landmarks, 1.3)
    ridges = (1e-3, 0.1)
    for ridge, closed_form in zip(ridges, leave_one_out(kernel, values, ridges)):
        for i in range(30):
            kept = torch.arange(30) != i
            refit = fit_kernel_ridge(landmarks[kept], values[kept], ridge=ridge, bandwidth=1.3)
            torch.testing.assert_close(closed_form[i], refit.predict(landmarks[i : i + 1])[0], rtol=1e-8, atol=1e-8)


def test_tuned_kernel_ridge_is_the_best_grid_point_by_refitting():
    torch.manual_seed(4)
    landmarks = torch.randn(40, 3, dtype=torch.float64)
    values = torch.sin(3 * landmarks[:, :1]) + 0.1 * torch.randn(40, 1, dtype=torch.float64)
    factors, ridges = (0.25, 1.0, 4.0), (1e-3, 1e-1)
    bandwidth, ridge, score = tune_kernel_ridge(landmarks, values, factors, ridges)
    median = median_bandwidth(landmarks)
    brute = {}
    for factor in factors:
        for r in ridges:
            predicted = torch.stack([fit_kernel_ridge(landmarks[torch.arange(40) != i], values[torch.arange(40) != i],
                                                      ridge=r, bandwidth=median * factor).predict(landmarks[i:i + 1])[0]
                                     for i in range(40)])
            brute[(factor, r)] = spearman(predicted[:, 0], values[:, 0])
    (best_factor, best_ridge), best = max(brute.items(), key=lambda item: item[1])
    assert (bandwidth, ridge) == pytest.approx((median * best_factor, best_ridge))
    assert score == pytest.approx(best)
    assert best > min(brute.values()) + 0.05  # the grid matters here, so picking the best is a real choice


def test_npy_rows_written_and_gathered_on_disk_equal_the_array(tmp_path):
    import numpy as np

    from influence_distillation.artifacts import NpyRows

    full = np.random.default_rng(0).standard_normal((50, 3))
    rows = NpyRows.create(tmp_path / "rows.npy", full.shape, np.float64)
    assert np.array_equal(np.asarray(rows), np.zeros_like(full))
    for start in range(0, 50, 16):
        rows[start : start + 16] = full[start : start + 16]
    rows[[4, 9]] = -full[[4, 9]]
    full[[4, 9]] *= -1
    assert np.array_equal(np.load(tmp_path / "rows.npy"), full)  # an ordinary .npy
    assert np.array_equal(rows[[49, 0, 4, -1]], full[[49, 0, 4, -1]]) and np.array_equal(rows[7:23], full[7:23])
    with pytest.raises(IndexError):
        rows[[50]]


def test_propagation_into_a_file_equals_propagation_in_memory(tmp_path):
    import numpy as np

    from influence_distillation.artifacts import NpyRows
    from influence_distillation.config import PropagationConfig
    from influence_distillation.method.propagation import propagate

    torch.manual_seed(5)
    points, landmarks = torch.randn(200, 6), np.array([3, 50, 7, 120, 199, 0, 88, 42, 9, 150])
    values = torch.randn(len(landmarks), 3, dtype=torch.float64)
    config = PropagationConfig(chunk_size=32)
    in_memory, _ = propagate(points, landmarks, values, config, seed=1)
    on_disk, _ = propagate(points, landmarks, values, config, 1, NpyRows.create(tmp_path / "s.npy", (200, 3), float))
    assert np.array_equal(np.asarray(on_disk), in_memory) and np.array_equal(in_memory[landmarks], values.numpy())
