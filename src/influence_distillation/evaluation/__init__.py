"""Does a selection help? LoRA fine-tuning, the demo, the side-by-side benchmark and reports.

Its public names are the real data every install gets from the package index, as the demo and the benchmark build
on it (`benchmarks/sharegpt_pool.py` times selection on the first two): ShareGPT's whole conversations in their own
record shape, and HumanEval's problems as chat records. They import on first use (PEP 562); everything else here is
reached through the CLI (`influence-distill evaluate`, `demo`, `benchmark`).
"""

from __future__ import annotations

import importlib
from typing import Any

# Public name → the module that defines it.
_EXPORTS = {
    "demo_data": ("humaneval_records",),
    "sources": ("sharegpt_conversations",),
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
