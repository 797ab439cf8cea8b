"""The whole first-order selection, stage by stage, and the run directory it writes.

Each `compute_*` function is one stage that a notebook user can call on their own; `run_selection` chains them,
times them, and writes `selected.jsonl`, `scores.parquet`, `target_scores.npy`, `embeddings.npy`, `excluded.jsonl`
and, last, `manifest.json`.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import platform
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from . import artifacts
from .config import EmbeddingConfig, GradientConfig, PropagationConfig, SelectConfig, to_dict
from .data import load_samples
from .embeddings import jvp_embeddings
from .errors import DataError
from .gradients import projected_gradients, select_parameters
from .influence import first_order_influence
from .landmarks import choose_landmarks
from .models import load_model, pad_token_id, truncated_backbone
from .preconditioning import adam_preconditioner, load_adamw_state
from .projection import make_projector
from .propagation import fit_kernel_ridge
from .selection import select
from .tokenization import Example, TokenizedSet, tokenize_samples

log = logging.getLogger(__name__)


def derive_seed(master: int, stage: str) -> int:
    """An independent, reproducible seed per stage, so changing one stage's randomness leaves the others alone."""
    return int.from_bytes(hashlib.sha256(f"{master}:{stage}".encode()).digest()[:4], "little")


def compute_embeddings(
    model: nn.Module, examples: list[Example], config: EmbeddingConfig, seed: int, pad_id: int = 0,
    progress: bool = True,
) -> torch.Tensor:
    """Stage 1: JVP embeddings of every example, (N, d_e) float32."""
    backbone = truncated_backbone(model, config.num_blocks)
    return jvp_embeddings(backbone, examples, config.num_tangents, config.dim, seed, config.batch_size, pad_id,
                          progress=progress)


@dataclass
class GradientSpace:
    """The parameters, projection and (optional) Adam preconditioner shared by landmark and target gradients."""

    params: dict[str, nn.Parameter]
    projector: Any
    preconditioner: torch.Tensor | None

    @property
    def num_coordinates(self) -> int:
        return sum(p.numel() for p in self.params.values())


def gradient_space(model: nn.Module, config: GradientConfig, seed: int) -> GradientSpace:
    params = select_parameters(model, config.params)
    size = sum(p.numel() for p in params.values())
    preconditioner = None
    if config.optimizer_state:
        preconditioner = adam_preconditioner(load_adamw_state(config.optimizer_state, model), list(params))
    return GradientSpace(params, make_projector(size, config.proj_dim, seed), preconditioner)


def compute_gradients(
    model: nn.Module, examples: list[Example], space: GradientSpace, precondition: bool, desc: str = "gradients",
    progress: bool = True,
) -> torch.Tensor:
    """Stages 2–3: unit-normalised, projected per-sample gradients, (n, k_p); Adam-preconditioned if asked."""
    return projected_gradients(
        model, examples, space.params, space.projector,
        preconditioner=space.preconditioner if precondition else None, desc=desc, progress=progress,
    )


def propagate(
    embeddings: torch.Tensor, landmark_rows: np.ndarray, landmark_values: torch.Tensor, config: PropagationConfig,
    seed: int,
) -> tuple[np.ndarray, float]:
    """Stage 4: KRR from the landmarks' values (l, t) to every row of `embeddings`; returns ((N, t), bandwidth)."""
    rows = torch.as_tensor(landmark_rows)
    krr = fit_kernel_ridge(embeddings[rows], landmark_values, config.ridge, config.bandwidth, seed)
    return krr.predict(embeddings, config.chunk_size).numpy(), krr.bandwidth


@dataclass
class SelectionResult:
    """Everything a run computed; row i of every pool-sized array is pool sample `pool_ids[i]`."""

    pool_ids: list[str]
    embeddings: torch.Tensor  # (N, d_e)
    landmarks: np.ndarray  # (l,) row indices
    landmark_influence: torch.Tensor  # (l, t)
    scores: np.ndarray  # (N, t)
    selected: np.ndarray  # (k,) row indices in selection order
    manifest: dict[str, Any] = field(default_factory=dict)


class StageTimer:
    def __init__(self) -> None:
        self.seconds: dict[str, float] = {}

    @contextlib.contextmanager
    def __call__(self, stage: str) -> Iterator[None]:
        log.info("stage %s: started", stage)
        start = time.perf_counter()
        yield
        self.seconds[stage] = round(time.perf_counter() - start, 3)
        log.info("stage %s: %.1f s", stage, self.seconds[stage])


def run_selection(config: SelectConfig, overwrite: bool = False, progress: bool = True) -> SelectionResult:
    """Run every stage of first-order Influence Distillation and write the run directory `config.out`."""
    config.validate()
    out = Path(config.out)
    artifacts.check_output_dir(out, to_dict(config), overwrite)
    timer = StageTimer()
    seeds = {stage: derive_seed(config.seed, stage) for stage in ("tangents", "landmarks", "projection", "kernel", "selection")}

    with timer("load"):
        pool_samples = load_samples(config.pool, "pool")
        target_samples = load_samples(config.target, "target")
        model, tokenizer = load_model(config.model)
    with timer("tokenize"):
        pool = tokenize_samples(pool_samples, tokenizer, config.data.max_length, config.data.template_fallback, "pool")
        target = tokenize_samples(
            target_samples, tokenizer, config.data.max_length, config.data.template_fallback, "target"
        )
    _check_usable(pool, target, config)
    _log_counts("pool", pool)
    _log_counts("target", target)

    with timer("embeddings"):
        embeddings = compute_embeddings(model, pool.examples, config.embedding, seeds["tangents"],
                                        pad_token_id(tokenizer), progress=progress)
    with timer("landmarks"):
        landmarks = choose_landmarks(
            len(pool.examples), config.landmarks.count, seeds["landmarks"], config.landmarks.strategy, embeddings
        )
    space = gradient_space(model, config.gradients, seeds["projection"])
    with timer("landmark_gradients"):
        landmark_grads = compute_gradients(
            model, [pool.examples[i] for i in landmarks], space, precondition=True, desc="landmark gradients",
            progress=progress,
        )
    with timer("target_gradients"):
        target_grads = compute_gradients(model, target.examples, space, precondition=False, desc="target gradients",
                                         progress=progress)
    with timer("influence"):
        landmark_influence = first_order_influence(landmark_grads, target_grads)
    with timer("propagation"):
        scores, bandwidth = propagate(embeddings, landmarks, landmark_influence, config.propagation, seeds["kernel"])
    with timer("selection"):
        selected = select(scores, config.selection.budget, config.selection.strategy, seeds["selection"])

    result = SelectionResult(pool.ids, embeddings, landmarks, landmark_influence, scores, selected)
    manifest = {
        "tool": "influence-distillation",
        "version": _version(),
        "command": "select",
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "config": to_dict(config),
        "seeds": seeds,
        "environment": _environment(model),
        "model": {"class": type(model).__name__, "parameters": sum(p.numel() for p in model.parameters())},
        "counts": {
            "pool": pool.counts(),
            "target": target.counts(),
            "landmarks": len(landmarks),
            "selected": len(selected),
        },
        "dimensions": {
            "embedding": int(embeddings.shape[1]),
            "gradient_parameters": len(space.params),
            "gradient_coordinates": space.num_coordinates,
            "gradient_projected": space.projector.out_dim,
        },
        "propagation": {"bandwidth": bandwidth},
        "preconditioner": "adamw" if space.preconditioner is not None else "identity",
        "order": 1,
        "stages": timer.seconds,
    }
    with timer("write"):
        write_outputs(out, result, pool_samples, pool, target, manifest)
    manifest["stages"] = timer.seconds
    artifacts.write_json(out / artifacts.MANIFEST, {**manifest, "outputs": list(artifacts.OUTPUT_FILES),
                                                    "status": "complete"})
    result.manifest = manifest
    return result


def write_outputs(out: Path, result: SelectionResult, samples, pool: TokenizedSet, target: TokenizedSet,
                  manifest: dict[str, Any]) -> None:
    """Every output except the manifest, each written atomically."""
    artifacts.begin_writing(out)
    mean_score = result.scores.mean(axis=1)
    rank = np.full(len(result.pool_ids), -1, dtype=np.int64)
    rank[result.selected] = np.arange(len(result.selected))
    is_landmark = np.zeros(len(result.pool_ids), dtype=bool)
    is_landmark[result.landmarks] = True
    records = {sample.id: sample.record for sample in samples}
    selected_rows = []
    for row in result.selected:
        sample_id = result.pool_ids[row]
        selected_rows.append({**records[sample_id], "id": records[sample_id].get("id", sample_id),
                              "score": float(mean_score[row])})
    artifacts.write_jsonl(out / artifacts.SELECTED, selected_rows)
    artifacts.write_parquet(
        out / artifacts.SCORES,
        {
            "id": result.pool_ids,
            "score": mean_score,
            "selected": rank >= 0,
            "rank": rank,
            "landmark": is_landmark,
        },
        metadata={"method": "influence-distillation", "score": "mean first-order influence over target samples"},
    )
    artifacts.write_npy(out / artifacts.TARGET_SCORES, result.scores.astype(np.float32))
    artifacts.write_npy(out / artifacts.EMBEDDINGS, result.embeddings.numpy())
    excluded = [{"id": i, "set": "pool", "reason": r} for i, r in pool.excluded]
    excluded += [{"id": i, "set": "target", "reason": r} for i, r in target.excluded]
    artifacts.write_jsonl(out / artifacts.EXCLUDED, excluded)


def _check_usable(pool: TokenizedSet, target: TokenizedSet, config: SelectConfig) -> None:
    if not target.examples:
        raise DataError(
            f"target {config.target}: none of its {len(target.excluded)} samples has a trainable token within "
            f"--max-length {config.data.max_length}"
        )
    if not pool.examples:
        raise DataError(
            f"pool {config.pool}: none of its {len(pool.excluded)} samples has a trainable token within "
            f"--max-length {config.data.max_length}"
        )
    if config.selection.budget > len(pool.examples):
        raise DataError(
            f"--budget {config.selection.budget} exceeds the {len(pool.examples)} selectable pool samples "
            f"({len(pool.excluded)} excluded for having no trainable token)"
        )


def _log_counts(name: str, tokenized: TokenizedSet) -> None:
    counts = tokenized.counts()
    log.info("%s: %d samples kept, %d truncated, %d excluded %s", name, counts["kept"], counts["truncated"],
             counts["excluded"], counts["excluded_by_reason"] or "")


def _version() -> str:
    from . import __version__

    return __version__


def _environment(model: nn.Module) -> dict[str, str]:
    import transformers

    return {
        "python": sys.version.split()[0],
        "platform": platform.platform(),
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "numpy": np.__version__,
        "device": str(next(model.parameters()).device),
        "dtype": str(next(model.parameters()).dtype).removeprefix("torch."),
        "threads": str(torch.get_num_threads()),
    }
