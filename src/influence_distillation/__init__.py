"""Influence Distillation: select the fine-tuning samples that most reduce a target loss (arXiv 2505.19051).

One call runs everything (`run_selection`); the stage functions below can also be called one by one:
load → tokenize → embed → choose landmarks → gradients → influence → propagate → select. `tokenize_samples` gives
`Example`s; `collate` pads a list of them into the `Batch` that the method's batch functions take.

Every name is imported on first use (PEP 562), so `import influence_distillation` and `influence-distill --help`
do not load torch; the first function that needs it does.
"""

from __future__ import annotations

from influence_distillation.lazy import lazy_exports

# Module → the public names it defines (imported on first use).
_EXPORTS = {
    "influence_distillation.config": (
        "DataConfig", "EmbeddingConfig", "GradientConfig", "LandmarkConfig", "ModelConfig", "PropagationConfig",
        "SelectConfig", "SelectionConfig"),
    "influence_distillation.data.packed": ("Example",),
    "influence_distillation.data.records": ("Sample", "load_samples"),
    "influence_distillation.data.tokenization": ("Batch", "collate", "tokenize_samples"),
    "influence_distillation.errors": ("ConfigError", "DataError", "InfDistError", "ModelError", "OutputError"),
    "influence_distillation.method": (
        "HadamardProjector", "KernelRidge", "adam_preconditioner", "choose_landmarks", "compute_embeddings",
        "compute_gradients", "first_order_influence", "fit_kernel_ridge", "gradient_space", "jvp_embeddings",
        "load_adamw_state", "make_projector", "projected_gradients", "propagate", "round_robin", "select",
        "select_parameters", "top_k"),
    "influence_distillation.model.blocks": ("truncated_backbone",),
    "influence_distillation.model.loading": ("load_model",),
    "influence_distillation.run.outputs": ("SelectionResult",),
    "influence_distillation.run.pipeline": ("run_selection",),
}

__all__, __getattr__, __dir__ = lazy_exports(globals(), _EXPORTS)
