"""What a selection run returns and writes: `SelectionResult`, the output files and the manifest's common part.

Every output is written atomically (temporary name, then rename) and `manifest.json` last, after the old one was
removed: a run directory is finished if and only if its manifest says `"status": "complete"`.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from influence_distillation import artifacts
from influence_distillation.data.export import llama_factory_info
from influence_distillation.data.tokenization import TokenizedSet
from influence_distillation.errors import DataError
from influence_distillation.method import WeightSolution, row_means
from influence_distillation.options import to_dict


@dataclass(frozen=True)
class SelectionResult:
    """Everything a run computed; row i of every pool-sized array is pool sample `pool_ids[i]`. Frozen: each stage
    returns its own (`dataclasses.replace` for a changed copy), so what a result holds is what its stage found."""

    pool_ids: Sequence[str]  # a list, or the pool's ids read from its token cache on access
    embeddings: Any  # (N, d_e): a tensor, or `ShardRows` read from the stage cache on access; None in exact mode
    landmarks: np.ndarray  # (l,) row indices (every row in exact mode)
    landmark_influence: torch.Tensor  # (l, t)
    scores: Any  # (N, t) first-order influence on each target sample: an array, or `artifacts.NpyRows` on disk
    selected: np.ndarray  # (k,) row indices in selection order
    weights: WeightSolution | None = None
    details: dict[str, Any] = field(default_factory=dict)  # the method's own manifest entries (dimensions, cost...)
    manifest: dict[str, Any] = field(default_factory=dict)


def manifest_base(config, seeds: dict, model: nn.Module, pool: TokenizedSet, target: TokenizedSet,
                  result: SelectionResult) -> dict[str, Any]:
    """The manifest entries every method shares: config, seeds, versions, device, counts."""
    return {
        "tool": "influence-distillation",
        "version": _version(),
        "command": "select",
        "method": config.method,
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "config": to_dict(config),
        "seeds": seeds,
        "environment": _environment(model),
        "model": {"class": type(model).__name__, "parameters": sum(p.numel() for p in model.parameters())},
        "counts": {"pool": pool.counts(), "target": target.counts(), "landmarks": len(result.landmarks),
                   "selected": len(result.selected)},
    }


def output_files(result: SelectionResult) -> list[str]:
    files = [artifacts.SELECTED, artifacts.DATASET_INFO, artifacts.SCORES, artifacts.TARGET_SCORES, artifacts.EXCLUDED]
    files += [artifacts.EMBEDDINGS] if result.embeddings is not None else []
    files += [artifacts.WEIGHTS] if result.weights is not None else []
    return files + [artifacts.MANIFEST]


def selected_records(samples, result: SelectionResult, pool: TokenizedSet, tokenize, source: str) -> dict[str, Any]:
    """The selected samples' records from `samples` (the pool read again, streaming), each checked to `tokenize` as
    it did when it was scored: a file edited during the run (rows moved, ids shifted) is refused, not written."""
    rows = {result.pool_ids[row]: row for row in result.selected}
    found = [sample for sample in samples if sample.id in rows and not sample.excluded]
    by_id = {example.id: example for example in tokenize(found).examples}
    for sample_id, row in rows.items():
        scored, now = pool.examples[row], by_id.get(sample_id)
        if now is None or not (torch.equal(now.input_ids, scored.input_ids) and torch.equal(now.labels, scored.labels)):
            raise DataError(f"pool sample {sample_id!r} is not in {source} as it was when it was scored: the file "
                            "changed during the run; re-run on a file that stays put (the finished stages are kept)")
    return {sample.id: sample.record for sample in found}


def write_outputs(out: Path, result: SelectionResult, records: dict[str, dict[str, Any]], pool: TokenizedSet,
                  target: TokenizedSet, chunk_rows: int = 1 << 14) -> None:
    """Every output except the manifest, each written atomically; `records` holds the selected samples' records.
    The pool-sized outputs are written `chunk_rows` rows at a time from `result`'s arrays (which may be on disk)."""
    artifacts.begin_writing(out)
    num_rows, selected = len(result.pool_ids), np.asarray(result.selected, dtype=np.int64)
    weights = result.weights.weights.numpy() if result.weights is not None else None
    selected_scores = np.asarray(result.scores[selected], dtype=np.float64).reshape(len(selected), -1).mean(axis=1)
    selected_rows = []
    for row, score in zip(selected.tolist(), selected_scores.tolist()):
        sample_id = result.pool_ids[row]
        extra = {"weight": float(weights[row])} if weights is not None else {}
        selected_rows.append({**records[sample_id], "id": records[sample_id].get("id", sample_id), "score": score,
                              **extra})
    artifacts.write_jsonl(out / artifacts.SELECTED, selected_rows)
    artifacts.write_json(out / artifacts.DATASET_INFO, llama_factory_info(selected_rows, artifacts.SELECTED))
    landmarks = np.asarray(result.landmarks, dtype=np.int64)

    def score_columns():
        for start in range(0, num_rows, chunk_rows):
            stop = min(start + chunk_rows, num_rows)
            rank, inside = np.full(stop - start, -1, dtype=np.int64), (selected >= start) & (selected < stop)
            rank[selected[inside] - start] = np.flatnonzero(inside)
            yield {"id": result.pool_ids[start:stop], "score": row_means(result.scores[start:stop]),
                   "selected": rank >= 0, "rank": rank, "landmark": np.isin(np.arange(start, stop), landmarks)} | (
                {"weight": weights[start:stop]} if weights is not None else {})

    artifacts.write_parquet(out / artifacts.SCORES, score_columns(),
                            metadata={"method": "influence-distillation",
                                      "score": "mean first-order influence over target samples"})
    if weights is not None:
        artifacts.write_parquet(out / artifacts.WEIGHTS, {"id": list(result.pool_ids), "weight": weights})
    artifacts.write_npy_rows(out / artifacts.TARGET_SCORES, result.scores, chunk_rows, np.float32)
    if result.embeddings is not None:
        artifacts.write_npy_rows(out / artifacts.EMBEDDINGS, result.embeddings)
    excluded = [{"id": i, "set": "pool", "reason": r} for i, r in pool.excluded]
    excluded += [{"id": i, "set": "target", "reason": r} for i, r in target.excluded]
    artifacts.write_jsonl(out / artifacts.EXCLUDED, excluded)


def _version() -> str:
    from influence_distillation.version import __version__

    return __version__


def _environment(model: nn.Module) -> dict[str, str]:
    import platform
    import sys

    import transformers

    from influence_distillation.run.distributed import backend_name

    device, group = next(model.parameters()).device, backend_name()
    return {
        "python": sys.version.split()[0],
        "platform": platform.platform(),
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "numpy": np.__version__,
        "device": str(device),
        **({"gpu": torch.cuda.get_device_name(device)} if device.type == "cuda" else {}),
        "dtype": str(next(model.parameters()).dtype).removeprefix("torch."),
        "threads": str(torch.get_num_threads()),
        **({"process_group": f"{group} x {torch.distributed.get_world_size()}"} if group else {}),
    }
