"""First-order influence of landmarks on target samples (paper §2.2, §5.5).

With unit-normalised, projected gradients, p_L[j, i] = ⟨P(a ⊙ g_Lj)/‖·‖, P(g_Ti)/‖·‖⟩ ≈ cos(a ⊙ g_Lj, g_Ti): how much one
(preconditioned) step on landmark j lowers the loss of target sample i, up to the step size.
"""

from __future__ import annotations

import torch


def first_order_influence(landmark_grads: torch.Tensor, target_grads: torch.Tensor) -> torch.Tensor:
    """p_L = G_L G_Tᵀ: (l, k_p) × (t, k_p) → (l, t), one column per target sample."""
    return landmark_grads.double() @ target_grads.double().T
