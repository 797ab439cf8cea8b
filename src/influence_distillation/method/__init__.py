"""The method's math: functions on tensors, one module per thing they produce (embeddings, landmarks, gradients,
influence, propagation, verification, selection, weights, FLOP counts, the baselines' scores).

This is its one face: the layers above (`run/`, `report/`, `evaluation/`) import these names from
`influence_distillation.method`, never from its modules (tests/test_imports.py checks), so a module can be split or
renamed without touching them. Names import on first use (PEP 562): importing this package loads no torch.
"""

from __future__ import annotations

from influence_distillation.lazy import lazy_exports

# Module → the public names it defines (imported on first use).
_EXPORTS = {
    "baselines": ("BASELINES", "less_rows", "less_transform", "mid_ppl_selection", "minilm_embeddings", "pool_losses",
                  "random_scores", "rds_embeddings"),
    "embeddings": ("JvpEmbedder", "compute_embeddings", "jvp_embeddings", "make_embedder"),
    "flops": ("Layout", "Projection", "Tokens", "baseline_flops", "baseline_parts", "influence_flops",
              "influence_parts"),
    "gradients": ("GradientSpace", "compute_gradients", "flat_gradient", "gradient_space", "projected_gradients",
                  "select_parameters"),
    "hessian": ("gradient_and_hessian_rows", "target_hvp"),
    "influence": ("adam_terms", "first_order_influence", "gd_terms"),
    "landmarks": ("choose_landmarks", "landmark_count"),
    "losses": ("backbone_and_head", "backward_mean_loss", "batch_losses", "only_requires_grad",
               "token_log_likelihoods"),
    "preconditioning": ("AdamParamState", "adam_preconditioner", "load_adamw_state", "state_learning_rate"),
    "projection": ("HadamardProjector", "make_projector"),
    "propagation": ("KernelRidge", "fit_kernel_ridge", "heldout_fidelity", "propagate", "propagation_matrix"),
    "selection": ("round_robin", "row_means", "select", "top_k"),
    "verification": ("near_target_count", "round_sizes", "verification_rows", "verify_landmarks"),
    "weights": ("DenseQuadraticForm", "FactoredQuadraticForm", "WeightSolution", "kkt_residual", "solve_weights"),
}

__all__, __getattr__, __dir__ = lazy_exports(globals(), _EXPORTS)
