"""Run machinery: the selection pipeline, its resumable shards, run directories and manifests, torchrun, the dry
run's cost model and the warm-up.

Its public names, for users and for `benchmarks/`: the run and its result, the dry run, the cost model the dry run
fills with rates timed on this machine (`Rates` × `Workload` → each stage's `Estimate`, by `for_method`), the rule
for how many verification landmarks a run places, and how `--seed` becomes each stage's seed. They import on first
use (PEP 562), as the method's face; the layers above `run/` (report, evaluation, CLI) still import its modules
directly.
"""

from __future__ import annotations

from influence_distillation.lazy import lazy_exports

# Module → the public names it defines (imported on first use).
_EXPORTS = {
    "estimates": ("Estimate", "Rates", "Sizes", "Workload", "for_method"),
    "outputs": ("SelectionResult",),
    "pipeline": ("run_selection",),
    "policy": ("derive_seed", "verification_count"),
    "preflight": ("DryRun", "dry_run"),
}

__all__, __getattr__, __dir__ = lazy_exports(globals(), _EXPORTS)
