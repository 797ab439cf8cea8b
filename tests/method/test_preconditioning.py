import copy

import pytest
import torch
from torch import nn

from influence_distillation.errors import ModelError
from influence_distillation.method.preconditioning import adam_coefficients, adam_preconditioner, load_adamw_state


def warmed_up(named: bool, steps: int = 5, weight_decay: float = 0.1):
    """A float64 model and an AdamW that took `steps` real steps on random gradients."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 6), nn.Tanh(), nn.Linear(6, 3)).double()
    params = model.named_parameters() if named else model.parameters()
    optimizer = torch.optim.AdamW(params, lr=1e-2, betas=(0.9, 0.99), eps=1e-8, weight_decay=weight_decay)
    for _ in range(steps):
        for p in model.parameters():
            p.grad = torch.randn_like(p)
        optimizer.step()
    return model, optimizer


def real_step(model, optimizer, grads):
    """Parameters after one genuine AdamW step from copies of the model and optimizer."""
    model, optimizer_copy = copy.deepcopy(model), None
    optimizer_copy = torch.optim.AdamW(model.named_parameters(), **{k: v for k, v in optimizer.defaults.items()
                                                                   if k in ("lr", "betas", "eps", "weight_decay")})
    optimizer_copy.load_state_dict(copy.deepcopy(optimizer.state_dict()))
    for (name, p) in model.named_parameters():
        p.grad = grads[name].clone()
    optimizer_copy.step()
    return {name: p.detach().clone() for name, p in model.named_parameters()}


def test_linearisation_matches_a_real_adamw_step(tmp_path):
    model, optimizer = warmed_up(named=True)
    path = tmp_path / "optimizer.pt"
    torch.save(optimizer.state_dict(), path)
    states = load_adamw_state(path, model)
    lr = optimizer.param_groups[0]["lr"]
    theta = {name: p.detach().clone() for name, p in model.named_parameters()}
    zero = {name: torch.zeros_like(p) for name, p in theta.items()}
    direction = {name: torch.randn_like(p) for name, p in theta.items()}
    at_zero = real_step(model, optimizer, zero)
    for name, p in theta.items():
        a, b = adam_coefficients(states[name], p)
        # g = 0: the step is exactly -lr * b (momentum and weight decay only).
        torch.testing.assert_close(at_zero[name], p - lr * b, rtol=0, atol=1e-13)
    # The derivative along g: (step(s g) - step(0)) / s -> -lr * a * g, with an O(s) error from the dropped g² term.
    errors = []
    for s in (1e-2, 1e-3):
        moved = real_step(model, optimizer, {n: s * d for n, d in direction.items()})
        error = max(
            ((moved[n] - at_zero[n]) / s + lr * adam_coefficients(states[n])[0] * direction[n]).abs().max().item()
            for n in theta
        )
        errors.append(error)
    assert errors[1] < errors[0] / 5 and errors[1] < 1e-5


def test_flat_preconditioner_follows_the_requested_order(tmp_path):
    model, optimizer = warmed_up(named=True)
    torch.save(optimizer.state_dict(), tmp_path / "opt.pt")
    states = load_adamw_state(tmp_path / "opt.pt", model)
    names = ["2.weight", "0.bias"]
    flat = adam_preconditioner(states, names)
    expected = torch.cat([adam_coefficients(states[n])[0].reshape(-1) for n in names]).float()
    torch.testing.assert_close(flat, expected)
    with pytest.raises(ModelError, match="no Adam state"):
        adam_preconditioner({k: v for k, v in states.items() if k != "0.bias"}, names)


def test_states_without_names_map_in_parameter_order(tmp_path):
    named_model, named_opt = warmed_up(named=True)
    plain_model, plain_opt = warmed_up(named=False)
    assert "param_names" not in plain_opt.state_dict()["param_groups"][0]
    torch.save(named_opt.state_dict(), tmp_path / "named.pt")
    torch.save(plain_opt.state_dict(), tmp_path / "plain.pt")
    named = load_adamw_state(tmp_path / "named.pt", named_model)
    plain = load_adamw_state(tmp_path / "plain.pt", plain_model)
    assert named.keys() == plain.keys()
    for key in named:
        torch.testing.assert_close(named[key].exp_avg_sq, plain[key].exp_avg_sq)


def test_mismatched_or_unsafe_states_are_refused(tmp_path):
    model, optimizer = warmed_up(named=False)
    torch.save(optimizer.state_dict(), tmp_path / "opt.pt")
    other = nn.Sequential(nn.Linear(5, 6), nn.Tanh(), nn.Linear(6, 3)).double()
    with pytest.raises(ModelError, match="shape"):
        load_adamw_state(tmp_path / "opt.pt", other)
    torch.save({"state": {}, "param_groups": [], "extra": nn.Linear(1, 1)}, tmp_path / "pickled.pt")
    with pytest.raises(ModelError, match="weights_only"):
        load_adamw_state(tmp_path / "pickled.pt", model)
    torch.save({"hello": torch.zeros(1)}, tmp_path / "notopt.pt")
    with pytest.raises(ModelError, match="not an optimizer state_dict"):
        load_adamw_state(tmp_path / "notopt.pt", model)
    with pytest.raises(ModelError, match="not found"):
        load_adamw_state(tmp_path / "missing.pt", model)


def test_hugging_face_trainer_grouping_and_checkpoint_folders(tmp_path):
    from conftest import make_model

    from influence_distillation.method.preconditioning import state_learning_rate

    model = make_model("llama", 64)
    named = dict(model.named_parameters())
    decay = [n for n in named if "norm" not in n and "bias" not in n]
    no_decay = [n for n in named if n not in decay]
    assert decay and no_decay
    groups = [{"params": [named[n] for n in decay], "weight_decay": 0.1},
              {"params": [named[n] for n in no_decay], "weight_decay": 0.0}]
    optimizer = torch.optim.AdamW(groups, lr=3e-4)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: 0.0)  # decays to 0, records initial_lr
    for p in model.parameters():
        p.grad = torch.randn_like(p)
    optimizer.step()
    scheduler.step()
    (tmp_path / "checkpoint-1").mkdir()
    torch.save(optimizer.state_dict(), tmp_path / "checkpoint-1" / "optimizer.pt")
    states = load_adamw_state(tmp_path / "checkpoint-1", model)
    assert set(states) == set(named)
    for name in named:
        assert states[name].weight_decay == (0.1 if name in decay else 0.0)
        torch.testing.assert_close(states[name].exp_avg, optimizer.state[named[name]]["exp_avg"])
    assert states[decay[0]].lr == 0.0
    assert state_learning_rate(states, decay) == pytest.approx(1.5e-4)  # half the initial rate
