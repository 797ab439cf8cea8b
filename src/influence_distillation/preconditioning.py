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

from .errors import ModelError


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


def load_adamw_state(path: str | Path, model: nn.Module) -> dict[str, AdamParamState]:
    """Read a `torch.optim.AdamW(...).state_dict()` saved with `torch.save`, keyed by the model's parameter names.

    Parameter names come from the state's `param_names` (present when the optimizer was built from
    `model.named_parameters()`); otherwise states are matched in `model.named_parameters()` order (trainable ones),
    and every shape must agree.
    """
    path = Path(path)
    if not path.is_file():
        raise ModelError(f"--optimizer-state: file not found: {path}")
    try:
        state_dict = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # unpickling errors come in many types; none is safe to continue from
        raise ModelError(f"--optimizer-state {path}: cannot load with weights_only=True ({exc})".split("\n")[0]) from None
    if isinstance(state_dict, dict) and "optimizer" in state_dict and "state" not in state_dict:
        state_dict = state_dict["optimizer"]
    if not isinstance(state_dict, dict) or not {"state", "param_groups"} <= set(state_dict):
        raise ModelError(f"--optimizer-state {path}: not an optimizer state_dict (needs 'state' and 'param_groups')")
    named = dict(model.named_parameters())
    fallback_names = [name for name, p in named.items() if p.requires_grad]
    states: dict[str, AdamParamState] = {}
    for group in state_dict["param_groups"]:
        _check_group(group, path)
        names = group.get("param_names") or [fallback_names[i] if i < len(fallback_names) else None for i in group["params"]]
        for index, name in zip(group["params"], names):
            entry = state_dict["state"].get(index)
            if entry is None:  # a parameter that never received a gradient has no state
                continue
            if name not in named:
                raise ModelError(f"--optimizer-state {path}: state for parameter {name!r} that the model does not have")
            if entry["exp_avg"].shape != named[name].shape:
                raise ModelError(
                    f"--optimizer-state {path}: state {index} has shape {tuple(entry['exp_avg'].shape)} but "
                    f"parameter {name} has {tuple(named[name].shape)}; save the state of an optimizer built with "
                    "torch.optim.AdamW(model.named_parameters()) so parameter names are recorded"
                )
            states[name] = AdamParamState(
                exp_avg=entry["exp_avg"], exp_avg_sq=entry["exp_avg_sq"], step=int(entry["step"]),
                lr=float(group["lr"]), beta1=float(group["betas"][0]), beta2=float(group["betas"][1]),
                eps=float(group["eps"]), weight_decay=float(group["weight_decay"]),
            )
    return states


def _check_group(group: dict, path: Path) -> None:
    missing = {"params", "lr", "betas", "eps", "weight_decay"} - set(group)
    if missing:
        raise ModelError(f"--optimizer-state {path}: not an Adam(W) state (param group lacks {sorted(missing)})")
    if group.get("amsgrad") or group.get("maximize"):
        raise ModelError(f"--optimizer-state {path}: amsgrad/maximize AdamW states are not supported")


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
    missing = [name for name in names if name not in states]
    if missing:
        raise ModelError(
            f"--optimizer-state has no Adam state for {len(missing)} gradient parameter(s), e.g. {missing[0]}; "
            "the warm-up must train every parameter selected by --grad-params"
        )
    return torch.cat([adam_coefficients(states[name])[0].reshape(-1).float() for name in names])
