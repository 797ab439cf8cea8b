"""Adam(W) preconditioning from a warm-up's optimizer state (paper §3).

One AdamW step from state (m_t, v_t, t) on a gradient g moves θ by −η(a⊙g + b) + O(g²), where, with the next step's
bias corrections c1 = 1 − β1^(t+1) and c2 = 1 − β2^(t+1) and d = sqrt(β2·v_t / c2) + ε,

    a = (1 − β1) / (c1 · d),        b = β1·m_t / (c1 · d) + λ_wd·θ.

This is the exact linearisation of `torch.optim.AdamW.step()` at g = 0: the only term dropped is (1 − β2)·g² inside
v, which is second order in g. (The official code writes v_t / c2 without the β2 factor, i.e. it also treats β2 as
1 there; the difference is a factor sqrt(β2) ≈ 0.9995 that does not change rankings.) First-order influence uses a
only: landmark gradients are multiplied by a before normalisation; target gradients are not.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from influence_distillation.errors import ModelError


@dataclass(frozen=True)
class AdamParamState:
    exp_avg: torch.Tensor
    exp_avg_sq: torch.Tensor
    step: int
    lr: float
    beta1: float
    beta2: float
    eps: float
    weight_decay: float
    initial_lr: float | None = None  # set when a scheduler drove the run


# Hugging Face Trainer puts these parameters in its no-weight-decay group (transformers.Trainer.get_decay_parameter_names).
_NO_DECAY_PATTERNS = (r"bias", r"layernorm", r"rmsnorm", r"(?:^|\.)norm(?:$|\.)", r"_norm(?:$|\.)")


def load_adamw_state(path: str | Path, model: nn.Module) -> dict[str, AdamParamState]:
    """Read a `torch.optim.AdamW(...).state_dict()` saved with `torch.save`, keyed by the model's parameter names.

    `path` may be the file or a folder holding `optimizer.pt` (a Hugging Face Trainer checkpoint). Parameter names
    come from the state's `param_names` (an optimizer built from `model.named_parameters()`); otherwise the states
    are matched to trainable parameters in model order, then in the Trainer's decay/no-decay grouping, and the first
    order under which every shape agrees is used.
    """
    path = Path(path)
    if path.is_dir():
        path = path / "optimizer.pt"
    if not path.is_file():
        raise ModelError(f"GradientConfig.optimizer_state: file not found: {path}")
    try:
        state_dict = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # unpickling errors come in many types; none is safe to continue from
        raise ModelError(f"GradientConfig.optimizer_state={str(path)!r}: cannot load with weights_only=True "
                         f"({exc})".split("\n")[0]) from None
    if isinstance(state_dict, dict) and "optimizer" in state_dict and "state" not in state_dict:
        state_dict = state_dict["optimizer"]
    if not isinstance(state_dict, dict) or not {"state", "param_groups"} <= set(state_dict):
        raise ModelError(f"GradientConfig.optimizer_state={str(path)!r}: not an optimizer state_dict (needs 'state' "
                         "and 'param_groups')")
    for group in state_dict["param_groups"]:
        _check_group(group, path)
    named = dict(model.named_parameters())
    indices = [index for group in state_dict["param_groups"] for index in group["params"]]
    problems = []
    for order in _candidate_orders(model, state_dict, len(indices)):
        mismatch = _first_mismatch(order, indices, state_dict["state"], named)
        if mismatch is None:
            return _states(order, state_dict)
        problems.append(mismatch)
    if not problems:
        problems.append(f"it holds {len(indices)} parameters, the model has {len(named)}")
    raise ModelError(
        f"GradientConfig.optimizer_state={str(path)!r} does not match the model: {problems[0]}; save the state of an "
        "optimizer built "
        "with torch.optim.AdamW(model.named_parameters()) so parameter names are recorded"
    )


def _candidate_orders(model: nn.Module, state_dict: dict, count: int) -> list[list[str]]:
    """Possible parameter names of the flattened state indices, most trustworthy first."""
    groups = state_dict["param_groups"]
    if all("param_names" in group for group in groups):
        return [[name for group in groups for name in group["param_names"]]]
    trainable = [name for name, p in model.named_parameters() if p.requires_grad]
    orders = [trainable]
    if len(groups) == 2:
        from transformers.trainer_pt_utils import get_parameter_names

        decay = set(get_parameter_names(model, [nn.LayerNorm], list(_NO_DECAY_PATTERNS)))
        orders.append([n for n in trainable if n in decay] + [n for n in trainable if n not in decay])
    return [order for order in orders if len(order) >= count]


def _first_mismatch(order, indices, state, named) -> str | None:
    for position, index in enumerate(indices):
        entry = state.get(index)
        if entry is None:  # a parameter that never received a gradient has no state
            continue
        name = order[position]
        if entry["exp_avg"].shape != named[name].shape:
            return (f"state {index} has shape {tuple(entry['exp_avg'].shape)} but parameter {name} has "
                    f"{tuple(named[name].shape)}")
    return None if indices else "the state holds no parameters"


def _states(order: list[str], state_dict: dict) -> dict[str, AdamParamState]:
    states, position = {}, 0
    for group in state_dict["param_groups"]:
        for index in group["params"]:
            name, position = order[position], position + 1
            entry = state_dict["state"].get(index)
            if entry is None:
                continue
            states[name] = AdamParamState(
                exp_avg=entry["exp_avg"], exp_avg_sq=entry["exp_avg_sq"], step=int(entry["step"]),
                lr=float(group["lr"]), beta1=float(group["betas"][0]), beta2=float(group["betas"][1]),
                eps=float(group["eps"]), weight_decay=float(group["weight_decay"]),
                initial_lr=float(group["initial_lr"]) if "initial_lr" in group else None,
            )
    return states


def _check_group(group: dict, path: Path) -> None:
    missing = {"params", "lr", "betas", "eps", "weight_decay"} - set(group)
    if missing:
        raise ModelError(f"GradientConfig.optimizer_state={str(path)!r}: not an Adam(W) state (param group lacks "
                         f"{sorted(missing)})")
    if group.get("amsgrad") or group.get("maximize"):
        raise ModelError(f"GradientConfig.optimizer_state={str(path)!r}: amsgrad/maximize AdamW states are not "
                         "supported")


def state_learning_rate(states: dict[str, AdamParamState], names: list[str]) -> float:
    """η of the next step: the state's learning rate, or half its initial one if a schedule decayed it to 0.

    (The official code's fallback: a warm-up that ran a linear schedule to 0 ends with lr = 0.)
    """
    rates = {(states[n].lr, states[n].initial_lr) for n in names if n in states}
    lr, initial = max(rates)
    if lr > 0:
        return lr
    if initial:
        return initial / 2
    raise ModelError("GradientConfig.optimizer_state has learning rate 0 and no initial_lr; set "
                     "InfluenceConfig.learning_rate")


def adam_coefficients(state: AdamParamState, param: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """(a, b) of the module docstring for one parameter; b needs the parameter value θ for weight decay."""
    t = state.step
    c1, c2 = 1 - state.beta1 ** (t + 1), 1 - state.beta2 ** (t + 1)
    denom = (state.beta2 * state.exp_avg_sq / c2).sqrt() + state.eps
    a = (1 - state.beta1) / (c1 * denom)
    b = state.beta1 * state.exp_avg / (c1 * denom)
    if param is not None:
        b = b + state.weight_decay * param.detach().to(b)
    return a, b


def adam_preconditioner(states: dict[str, AdamParamState], names: list[str]) -> torch.Tensor:
    """The flat vector a over the parameters `names` (in that order), for preconditioning flat gradients."""
    _check_covers(states, names)
    return torch.cat([adam_coefficients(states[name])[0].reshape(-1).float() for name in names])


def adam_offset_vector(states: dict[str, AdamParamState], params: dict[str, torch.Tensor]) -> torch.Tensor:
    """The flat vector b (momentum and weight-decay part of the next step) over `params`, in their order."""
    _check_covers(states, list(params))
    return torch.cat([adam_coefficients(states[name], p)[1].reshape(-1).float() for name, p in params.items()])


def _check_covers(states: dict[str, AdamParamState], names: list[str]) -> None:
    missing = [name for name in names if name not in states]
    if missing:
        raise ModelError(
            f"GradientConfig.optimizer_state has no Adam state for {len(missing)} gradient parameter(s), e.g. "
            f"{missing[0]}; the warm-up must train every parameter selected by GradientConfig.params"
        )
