"""Run machinery: the selection pipeline, its resumable shards, run directories and manifests, torchrun, the dry
run's cost model and the warm-up.

Its public names, for users and for `benchmarks/`: the run and its result, the dry run, the cost model the dry run
fills with rates timed on this machine (`Rates` × `Workload` → each stage's `Estimate`, by `for_method`), and the
rule for how many verification landmarks a run places. They import on first use (PEP 562), as the method's face; the
layers above `run/` (report, evaluation, CLI) still import its modules directly.
"""

from __future__ import annotations

import importlib
from typing import Any

# Public name → the module that defines it.
_EXPORTS = {
    "estimates": ("Estimate", "Rates", "Sizes", "Workload", "for_method"),
    "outputs": ("SelectionResult",),
    "pipeline": ("run_selection",),
    "policy": ("verification_count",),
    "preflight": ("DryRun", "dry_run"),
}
_MODULE_OF = {name: f"{__name__}.{module}" for module, names in _EXPORTS.items() for name in names}

__all__ = sorted(_MODULE_OF)


def __getattr__(name: str) -> Any:
    module = _MODULE_OF.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value  # the next lookup is a plain attribute
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
