"""Does a selection help? LoRA fine-tuning, the demo, the side-by-side benchmark and reports.

Its public names are the real data every install gets from the package index, as the demo and the benchmark build
on it (`benchmarks/sharegpt_pool.py` times selection on the first two): ShareGPT's whole conversations in their own
record shape, and HumanEval's problems as chat records. They import on first use (PEP 562); everything else here is
reached through the CLI (`influence-distill evaluate`, `demo`, `benchmark`).
"""

from __future__ import annotations

from influence_distillation.lazy import lazy_exports

# Module → the public names it defines (imported on first use).
_EXPORTS = {
    "demo_data": ("humaneval_records",),
    "sources": ("sharegpt_conversations",),
}

__all__, __getattr__, __dir__ = lazy_exports(globals(), _EXPORTS)
