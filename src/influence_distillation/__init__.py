"""Influence Distillation: select the fine-tuning samples that most reduce a target loss (arXiv 2505.19051).

One call runs everything (`run_selection`); the stage functions below can also be called one by one:
load → tokenize → embed → choose landmarks → gradients → influence → propagate → select.
"""

__version__ = "0.1.0"

from .config import (
    DataConfig,
    EmbeddingConfig,
    GradientConfig,
    LandmarkConfig,
    ModelConfig,
    PropagationConfig,
    SelectConfig,
    SelectionConfig,
)
from .data import Sample, load_samples
from .embeddings import jvp_embeddings
from .errors import ConfigError, DataError, InfDistError, ModelError, OutputError
from .gradients import projected_gradients, select_parameters
from .influence import first_order_influence
from .landmarks import choose_landmarks
from .models import load_model, truncated_backbone
from .outputs import SelectionResult
from .pipeline import run_selection
from .preconditioning import adam_preconditioner, load_adamw_state
from .projection import HadamardProjector, make_projector
from .propagation import KernelRidge, fit_kernel_ridge
from .selection import round_robin, select, top_k
from .stages import compute_embeddings, compute_gradients, gradient_space, propagate
from .tokenization import tokenize_samples

__all__ = [
    "ConfigError", "DataConfig", "DataError", "EmbeddingConfig", "GradientConfig", "HadamardProjector",
    "InfDistError", "KernelRidge", "LandmarkConfig", "ModelConfig", "ModelError", "OutputError",
    "PropagationConfig", "Sample", "SelectConfig", "SelectionConfig", "SelectionResult",
    "adam_preconditioner", "choose_landmarks", "compute_embeddings", "compute_gradients",
    "first_order_influence", "fit_kernel_ridge", "gradient_space", "jvp_embeddings", "load_adamw_state",
    "load_model", "load_samples", "make_projector", "projected_gradients", "propagate", "round_robin",
    "run_selection", "select", "select_parameters", "tokenize_samples", "top_k", "truncated_backbone",
]
