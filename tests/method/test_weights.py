import numpy as np
import pytest
import scipy.optimize
import torch

from influence_distillation.method.weights import (
    DenseQuadraticForm,
    FactoredQuadraticForm,
    first_order_weights,
    kkt_residual,
    lambda_interval,
    project_to_simplex,
    solve_fixed_lambda,
    solve_weights,
)


def scipy_reference(p, q, eta, lam, total):
    """The fixed-λ problem solved by SLSQP: an independent check of the FISTA solver."""
    n = p.numel()
    matrix = eta * q.numpy() + lam * np.eye(n)
    result = scipy.optimize.minimize(
        lambda w: -p.numpy() @ w + 0.5 * w @ matrix @ w, np.full(n, total / n),
        jac=lambda w: -p.numpy() + matrix @ w, bounds=[(0, None)] * n,
        constraints=[{"type": "eq", "fun": lambda w: w.sum() - total, "jac": lambda w: np.ones(n)}],
        method="SLSQP", options={"ftol": 1e-14, "maxiter": 1000},
    )
    return torch.from_numpy(result.x)


def test_simplex_projection_is_the_closest_feasible_point():
    torch.manual_seed(0)
    for total in (1.0, 7.0):
        v = torch.randn(30, dtype=torch.float64) * 3
        w = project_to_simplex(v, total)
        assert (w >= 0).all() and w.sum().item() == pytest.approx(total)
        reference = scipy.optimize.minimize(
            lambda x: ((x - v.numpy()) ** 2).sum(), np.full(30, total / 30), jac=lambda x: 2 * (x - v.numpy()),
            bounds=[(0, None)] * 30, constraints=[{"type": "eq", "fun": lambda x: x.sum() - total}],
            method="SLSQP", options={"ftol": 1e-15, "maxiter": 1000},
        ).x
        np.testing.assert_allclose(w.numpy(), reference, atol=1e-6)


def test_first_order_weights_have_exactly_k_nonzeros_on_the_top_k():
    torch.manual_seed(1)
    p = torch.randn(50, dtype=torch.float64)
    for k in (1, 5, 17, 49, 50):
        solution = first_order_weights(p, k)
        assert solution.exact_k and solution.num_nonzero == k
        assert (solution.weights >= 0).all() and solution.weights.sum().item() == pytest.approx(50)
        assert set(solution.support().tolist()) == set(torch.topk(p, k).indices.tolist())
        low, high = lambda_interval(p, k, 50)
        assert low < solution.lam <= high
        assert kkt_residual(p, None, 0.0, solution.lam, solution.weights) < 1e-12
        # Just outside the interval the support size changes.
        below = project_to_simplex(p / (low * 0.999), 50) if low > 0 else None
        if below is not None:
            assert int((below > 0).sum()) < k
        if np.isfinite(high):
            assert int((project_to_simplex(p / (high * 1.001), 50) > 0).sum()) > k


def test_ties_at_the_boundary_are_reported():
    p = torch.tensor([3.0, 2.0, 2.0, 1.0], dtype=torch.float64)
    solution = first_order_weights(p, 2)
    assert not solution.exact_k and "tie" in solution.message


def test_generic_solver_with_zero_curvature_equals_the_closed_form():
    torch.manual_seed(2)
    p = torch.randn(40, dtype=torch.float64)
    closed = first_order_weights(p, 9)
    zero = DenseQuadraticForm(torch.zeros(40, 40, dtype=torch.float64))
    generic, _ = solve_fixed_lambda(p, zero, eta=1.0, lam=closed.lam, total=40.0)
    torch.testing.assert_close(generic, closed.weights, atol=1e-8, rtol=0)
    assert set(solve_weights(p, 9, eta=1.0, q=zero).support().tolist()) == set(torch.topk(p, 9).indices.tolist())


@pytest.mark.parametrize("indefinite", [False, True])
def test_second_order_solution_satisfies_kkt_and_has_exactly_k(indefinite):
    torch.manual_seed(3)
    n, k, eta = 40, 8, 0.5
    p = torch.randn(n, dtype=torch.float64)
    basis = torch.randn(n, 6, dtype=torch.float64)
    q = basis @ basis.T / 6
    if indefinite:
        q = q - 0.3 * torch.eye(n, dtype=torch.float64)
    form = DenseQuadraticForm(q)
    solution = solve_weights(p, k, eta=eta, q=form)
    assert solution.exact_k and solution.num_nonzero == k, solution.message
    assert (solution.weights >= 0).all() and solution.weights.sum().item() == pytest.approx(n)
    assert kkt_residual(p, form, eta, solution.lam, solution.weights) < 1e-6
    reference = scipy_reference(p, q, eta, solution.lam, float(n))
    np.testing.assert_allclose(solution.weights.numpy(), reference.numpy(), atol=1e-4)
    assert solution.lam > max(0.0, -eta * torch.linalg.eigvalsh(q)[0].item())  # stayed in the convex range


def test_factored_form_equals_the_dense_product_and_solves_the_same():
    torch.manual_seed(4)
    c, q_l = torch.randn(30, 5, dtype=torch.float64), torch.randn(5, 5, dtype=torch.float64)
    q_l = q_l @ q_l.T
    factored, dense = FactoredQuadraticForm(c, q_l), DenseQuadraticForm(c @ q_l @ c.T)
    w = torch.rand(30, dtype=torch.float64)
    torch.testing.assert_close(factored.matvec(w), dense.matvec(w))
    low, high = factored.extreme_eigenvalues(iterations=500)
    exact = torch.linalg.eigvalsh(c @ q_l @ c.T)
    assert high == pytest.approx(exact[-1].item(), rel=1e-6) and low == pytest.approx(exact[0].item(), abs=1e-6)
    p = torch.randn(30, dtype=torch.float64)
    a, b = solve_weights(p, 6, 0.1, factored), solve_weights(p, 6, 0.1, dense)
    assert a.exact_k and b.exact_k
    assert set(a.support().tolist()) == set(b.support().tolist())
