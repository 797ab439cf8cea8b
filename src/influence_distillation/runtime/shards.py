"""Disk-backed, resumable, rank-shared stage outputs.

A pool-wide stage (JVP embeddings, landmark / exact / LESS gradients, baseline passes) produces one row per sample.
Its rows are cut into fixed shards written to `<root>/<stage>-<key>/shard-NNNNNN.npy`, where the key fingerprints
everything the stage depends on (model files, pool, settings, seeds, code version). Each shard is written to a
temporary name and renamed when complete, so:

* re-running with the same inputs reuses every finished shard (a finished stage costs nothing);
* a run killed at any moment, even by SIGKILL, continues from the shards it finished, and because a shard's rows and
  batches depend only on the shard, the result is the same as an uninterrupted run;
* under torchrun each rank computes every world_size-th shard and rank 0 reads them all after a barrier.
"""

from __future__ import annotations

import errno
import json
import logging
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
from tqdm.auto import tqdm

from influence_distillation.errors import OutputError
from influence_distillation.runtime.artifacts import atomic_file, write_npy
from influence_distillation.runtime.distributed import DistInfo, barrier

log = logging.getLogger(__name__)

EMBEDDING_SHARD = 256  # rows per shard of cheap per-sample stages (embeddings, forward passes)
GRADIENT_SHARD = 32  # rows per shard of per-sample gradients (about 30 s each for a 135M model on a CPU)


class ShardedStage:
    """`rows` rows of a stage, computed `shard_rows` at a time into `folder`."""

    def __init__(self, folder: Path, rows: int, shard_rows: int, description: dict):
        self.folder, self.rows, self.shard_rows = folder, rows, shard_rows
        self.count = max(1, -(-rows // shard_rows))
        self.description = {**description, "rows": rows, "shard_rows": shard_rows}

    def path(self, shard: int) -> Path:
        return self.folder / f"shard-{shard:06d}.npy"

    def rows_of(self, shard: int) -> list[int]:
        return list(range(shard * self.shard_rows, min((shard + 1) * self.shard_rows, self.rows)))

    def finished(self) -> list[int]:
        return [s for s in range(self.count) if self.path(s).is_file()]

    def compute(self, info: DistInfo, compute_rows: Callable[[list[int]], torch.Tensor], label: str,
                progress: bool = True) -> None:
        """Compute this rank's missing shards (then wait for the other ranks)."""
        self.folder.mkdir(parents=True, exist_ok=True)
        if info.is_main:
            with atomic_file(self.folder / "stage.json") as handle:
                json.dump(self.description, handle, indent=2, default=str)
        mine = info.shards(self.count)
        todo = [s for s in mine if not self.path(s).is_file()]
        if todo and len(todo) < len(mine):
            log.info("%s: resuming, %d of this rank's %d shards already done", label, len(mine) - len(todo),
                     len(mine))
        with tqdm(total=sum(len(self.rows_of(s)) for s in todo), desc=label, unit="sample",
                  disable=not progress or not todo) as bar:
            for shard in todo:
                values = compute_rows(self.rows_of(shard))
                try:
                    write_npy(self.path(shard), values.numpy())
                except OSError as exc:
                    reason = "the disk is full" if exc.errno == errno.ENOSPC else exc.strerror or str(exc)
                    raise OutputError(f"cannot write {self.path(shard)}: {reason}; free space and re-run (the "
                                      f"{len(self.finished())} finished shards are kept)") from None
                bar.update(len(self.rows_of(shard)))
        barrier(info)

    def load(self) -> torch.Tensor:
        missing = [s for s in range(self.count) if not self.path(s).is_file()]
        if missing:
            raise OutputError(f"{self.folder}: shards {missing[:5]} are missing; re-run to complete the stage")
        return torch.from_numpy(np.concatenate([np.load(self.path(s)) for s in range(self.count)]))
