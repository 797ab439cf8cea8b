"""The one-step Taylor model behind the weights, checked against real steps on a tiny model (float64).

Each prediction is compared with the loss change measured by actually taking the step: a gradient-descent step on
the weighted pool loss, and a genuine `torch.optim.AdamW.step()` from a warmed-up state.
"""

import copy

import pytest
import torch
from conftest import make_model

from influence_distillation.data.tokenization import Example
from influence_distillation.method.gradients import flat_gradient, select_parameters
from influence_distillation.method.hessian import target_hvp
from influence_distillation.method.influence import adam_offset, adam_terms, gd_terms, predicted_loss_change
from influence_distillation.method.losses import only_requires_grad, sample_loss
from influence_distillation.method.preconditioning import AdamParamState, adam_coefficients

N_POOL = 6


def random_example(length, seed):
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(0, 64, (length,), generator=g)
    labels = ids.clone()
    labels[: length // 2] = -100
    return Example(str(seed), ids, labels, False)


@pytest.fixture
def setup():
    torch.manual_seed(0)
    model = make_model("llama", 64).double()
    params = select_parameters(model, "mlp-down")
    pool = [random_example(10 + i, i) for i in range(N_POOL)]
    target = [random_example(12 + i, 100 + i) for i in range(3)]
    return model, params, pool, target


def target_loss(model, target):
    with torch.no_grad():
        return float(sum(sample_loss(model, e) for e in target)) / len(target)


def weighted_pool_loss(model, pool, w):
    return sum(wi * sample_loss(model, e) for wi, e in zip(w.tolist(), pool)) / len(pool)


def gradients(model, params, examples):
    with only_requires_grad(model, params):
        return torch.stack([flat_gradient(model, params, e) for e in examples])


def random_weights(seed):
    g = torch.Generator().manual_seed(seed)
    w = torch.rand(N_POOL, generator=g, dtype=torch.float64) ** 2
    return w / w.sum() * N_POOL  # w ≥ 0, Σw = n


def test_hvp_equals_finite_difference_of_gradients(device):
    # GPT-2 computes LayerNorm in the model dtype, so float64 finite differences are clean.
    model = make_model("gpt2", 64).double().to(device)
    params = select_parameters(model, "mlp-down")
    target = [random_example(9, 1), random_example(13, 2)]
    vectors = torch.randn(2, sum(p.numel() for p in params.values()), dtype=torch.float64)
    weights = torch.tensor([0.7, 0.3], dtype=torch.float64)
    products = target_hvp(model, params, target, vectors, weights)
    assert products.device == torch.device(device)  # HVPs stay where the model is

    def gradient_at(shift):
        with torch.no_grad():
            start = 0
            for p in params.values():
                p.add_(shift[start : start + p.numel()].view_as(p).to(device))
                start += p.numel()
        g = (weights[:, None] * gradients(model, params, target).cpu()).sum(0)
        with torch.no_grad():
            start = 0
            for p in params.values():
                p.sub_(shift[start : start + p.numel()].view_as(p).to(device))
                start += p.numel()
        return g

    def central_difference(v, eps):
        return (gradient_at(eps * v) - gradient_at(-eps * v)) / (2 * eps)

    eps = 1e-4
    for v, hv in zip(vectors, products):
        extrapolated = (4 * central_difference(v, eps / 2) - central_difference(v, eps)) / 3  # Richardson
        assert (extrapolated - hv.cpu()).norm() / hv.norm().cpu() < 1e-8


def test_gd_step_second_order_prediction_is_markedly_better(setup):
    model, params, pool, target = setup
    G = gradients(model, params, pool)
    g_T = gradients(model, params, target).mean(0)
    p, q = gd_terms(G, g_T, target_hvp(model, params, target, G), N_POOL)
    before = target_loss(model, target)
    for seed in range(3):
        w = random_weights(seed)
        errors = []
        for eta in (1.0, 0.5, 0.25):
            trial = copy.deepcopy(model)
            trial_params = select_parameters(trial, "mlp-down")
            with only_requires_grad(trial, trial_params):
                step = torch.autograd.grad(weighted_pool_loss(trial, pool, w), list(trial_params.values()))
            with torch.no_grad():
                for param, grad in zip(trial_params.values(), step):
                    param -= eta * grad
            actual = target_loss(trial, target) - before
            first = predicted_loss_change(p, None, w, eta, N_POOL)
            second = predicted_loss_change(p, q, w, eta, N_POOL)
            errors.append((abs(first - actual), abs(second - actual)))
            print(f"GD    w#{seed} eta={eta:<6} actual={actual:+.3e} "
                  f"|err1|={errors[-1][0]:.2e} |err2|={errors[-1][1]:.2e}")
        for first_error, second_error in errors:
            assert second_error < first_error / 10
        # First-order errors shrink like η². The second-order ones (~1e-9) sit at the noise floor of Llama's RMSNorm,
        # which computes in float32 even in a float64 model, so their own decay is not asserted: on another CPU's
        # kernels it is not monotone. That they stay 10x below first order at every η is the claim.
        assert errors[0][0] > 3 * errors[1][0] > 9 * errors[2][0]


def adam_state_of(optimizer, params):
    group = optimizer.param_groups[0]
    a_parts, b_parts = [], []
    for p in params.values():
        entry = optimizer.state[p]
        state = AdamParamState(entry["exp_avg"], entry["exp_avg_sq"], int(entry["step"]), group["lr"],
                               *group["betas"], group["eps"], group["weight_decay"])
        a, b = adam_coefficients(state, p)
        a_parts.append(a.reshape(-1))
        b_parts.append(b.reshape(-1))
    return torch.cat(a_parts), torch.cat(b_parts)


def test_adamw_step_second_order_prediction_is_markedly_better(setup):
    model, params, pool, target = setup
    optimizer = torch.optim.AdamW(list(params.values()), lr=1e-4, betas=(0.9, 0.999), weight_decay=0.1)
    generator = torch.Generator().manual_seed(7)
    # Warm up on randomly re-weighted pool losses, so that v_t has seen gradients like the one of the step.
    with only_requires_grad(model, params):
        for _ in range(50):
            optimizer.zero_grad()
            w = torch.rand(N_POOL, generator=generator, dtype=torch.float64)
            weighted_pool_loss(model, pool, w / w.sum() * N_POOL).backward()
            optimizer.step()
    # The derivation holds v_{t+1} at β2·v_t. For a real step to obey it, send β2 → 1 with a long history (bias
    # corrections → 1), keeping the warmed-up m and v: the step is then affine in g and the test measures the Taylor
    # error alone. (At β2 = 0.999 after 200 steps the new gradient still moves v̂ by ~1/t, a 0.5% step error.)
    optimizer.param_groups[0]["betas"] = (0.9, 1 - 1e-10)
    for entry in optimizer.state.values():
        entry["step"] = torch.tensor(1e13)
    a, b = adam_state_of(optimizer, params)
    G = gradients(model, params, pool)
    g_T = gradients(model, params, target).mean(0)
    rows = G * a
    hessian_rows = target_hvp(model, params, target, rows)
    hessian_b = target_hvp(model, params, target, b[None])[0]
    before = target_loss(model, target)
    for seed in range(2):
        w = random_weights(seed)
        errors = []
        for eta in (2e-3, 1e-3, 5e-4):
            saved_params = {name: p.detach().clone() for name, p in params.items()}
            saved_state = copy.deepcopy(optimizer.state_dict())
            optimizer.param_groups[0]["lr"] = eta
            with only_requires_grad(model, params):
                optimizer.zero_grad()
                weighted_pool_loss(model, pool, w).backward()
                optimizer.step()
            after = target_loss(model, target)
            with torch.no_grad():
                for name, p in params.items():
                    p.copy_(saved_params[name])
            optimizer.load_state_dict(saved_state)
            actual = after - before
            first = -eta * float(g_T @ (rows.T @ w / N_POOL + b))
            p, q = adam_terms(rows, g_T, hessian_rows, hessian_b, eta, N_POOL)
            second = adam_offset(g_T, b, hessian_b, eta) + predicted_loss_change(p, q, w, eta, N_POOL)
            errors.append((abs(first - actual), abs(second - actual)))
            print(f"AdamW w#{seed} eta={eta:<6} actual={actual:+.3e} "
                  f"|err1|={errors[-1][0]:.2e} |err2|={errors[-1][1]:.2e}")
        for first_error, second_error in errors:
            assert second_error < first_error / 5
        assert errors[0][0] > 3 * errors[1][0] > 9 * errors[2][0]  # first-order error ~ η²
        assert errors[0][1] > 5 * errors[1][1] > 25 * errors[2][1]  # second-order error ~ η³


def test_linearised_adam_step_is_the_real_step_when_beta2_tends_to_one():
    """With β2 → 1 (and a long history, so bias corrections are 1) AdamW's v stops moving: the documented model."""
    torch.manual_seed(0)
    theta = torch.randn(50, dtype=torch.float64)
    param = torch.nn.Parameter(theta.clone())
    optimizer = torch.optim.AdamW([param], lr=1e-3, betas=(0.9, 1 - 1e-10), eps=1e-8, weight_decay=0.05)
    state = {"step": torch.tensor(1e13, dtype=torch.float64), "exp_avg": torch.randn(50, dtype=torch.float64),
             "exp_avg_sq": torch.rand(50, dtype=torch.float64) + 0.1}
    optimizer.state[param] = {k: v.clone() for k, v in state.items()}
    gradient = torch.randn(50, dtype=torch.float64)
    param.grad = gradient.clone()
    optimizer.step()
    group = optimizer.param_groups[0]
    a, b = adam_coefficients(AdamParamState(state["exp_avg"], state["exp_avg_sq"], int(state["step"]), group["lr"],
                                            *group["betas"], group["eps"], group["weight_decay"]), theta)
    torch.testing.assert_close(param.detach(), theta - 1e-3 * (a * gradient + b), rtol=1e-9, atol=1e-12)
