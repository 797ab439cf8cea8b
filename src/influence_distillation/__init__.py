"""Influence Distillation: select the fine-tuning samples that most reduce a target loss (arXiv 2505.19051).

One call runs everything (`run_selection`); the stage functions below can also be called one by one:
load → tokenize → embed → choose landmarks → gradients → influence → propagate → select.
"""

from influence_distillation.config import (
    DataConfig,
    EmbeddingConfig,
    GradientConfig,
    LandmarkConfig,
    ModelConfig,
    PropagationConfig,
    SelectConfig,
    SelectionConfig,
)
from influence_distillation.data.records import Sample, load_samples
from influence_distillation.data.tokenization import tokenize_samples
from influence_distillation.errors import ConfigError, DataError, InfDistError, ModelError, OutputError
from influence_distillation.method.embeddings import jvp_embeddings
from influence_distillation.method.gradients import projected_gradients, select_parameters
from influence_distillation.method.influence import first_order_influence
from influence_distillation.method.landmarks import choose_landmarks
from influence_distillation.method.preconditioning import adam_preconditioner, load_adamw_state
from influence_distillation.method.projection import HadamardProjector, make_projector
from influence_distillation.method.propagation import KernelRidge, fit_kernel_ridge
from influence_distillation.method.selection import round_robin, select, top_k
from influence_distillation.method.stages import compute_embeddings, compute_gradients, gradient_space, propagate
from influence_distillation.model.blocks import truncated_backbone
from influence_distillation.model.loading import load_model
from influence_distillation.run.outputs import SelectionResult
from influence_distillation.run.pipeline import run_selection

__all__ = [
    "ConfigError", "DataConfig", "DataError", "EmbeddingConfig", "GradientConfig", "HadamardProjector",
    "InfDistError", "KernelRidge", "LandmarkConfig", "ModelConfig", "ModelError", "OutputError",
    "PropagationConfig", "Sample", "SelectConfig", "SelectionConfig", "SelectionResult",
    "adam_preconditioner", "choose_landmarks", "compute_embeddings", "compute_gradients",
    "first_order_influence", "fit_kernel_ridge", "gradient_space", "jvp_embeddings", "load_adamw_state",
    "load_model", "load_samples", "make_projector", "projected_gradients", "propagate", "round_robin",
    "run_selection", "select", "select_parameters", "tokenize_samples", "top_k", "truncated_backbone",
]
