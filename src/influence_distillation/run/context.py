"""What every selection method's run shares: its config, loaded data and model, stage timer, seeds, and the cache of
resumable pool-wide stages (`RunContext.sharded`)."""

from __future__ import annotations

import functools
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from influence_distillation import artifacts
from influence_distillation.config import SelectConfig
from influence_distillation.data.records import data_fingerprint, iter_samples
from influence_distillation.data.tokenization import TokenizedSet, tokenize_samples
from influence_distillation.model.loading import resolve_model_path
from influence_distillation.options import key_dict
from influence_distillation.run.distributed import DistInfo
from influence_distillation.run.guards import FORMAT
from influence_distillation.run.shards import RowCache, ShardedStage, tokenized_in
from influence_distillation.run.timing import StageTimer
from influence_distillation.version import __version__


@dataclass
class RunContext:
    """What every selection method shares: config, loaded data and model, timer, seeds and the stage cache."""

    config: SelectConfig
    progress: bool
    cache_dir: Path | None
    timer: StageTimer = field(default_factory=StageTimer)
    seeds: dict[str, int] = field(default_factory=dict)
    reused: list[str] = field(default_factory=list)
    stage_keys: dict[str, str] = field(default_factory=dict)  # pool-wide stage → its cache fingerprint
    model: Any = None
    tokenizer: Any = None
    target_samples: list = field(default_factory=list)
    pool: TokenizedSet | None = None
    target: TokenizedSet | None = None
    dist: DistInfo = field(default_factory=DistInfo)

    shard_rows: int | None = None  # overrides the per-stage shard sizes
    scratch: list[Path] = field(default_factory=list)  # files removed when the run ends

    def pool_records(self):
        """The pool's samples, read again one at a time (the run does not keep them: a large pool's records would
        be most of its memory)."""
        data = self.config.data
        return iter_samples(self.config.pool, "pool", data.split, data.subset, "SelectConfig.pool")

    @functools.cached_property
    def cache_basis(self) -> dict[str, Any]:
        """Fingerprinted once per run: it reads the pool file and the model's small files."""
        return cache_basis(self.config)

    @property
    def cache_root(self) -> Path:
        return self.cache_dir or Path(self.config.out) / artifacts.STAGES

    def tokenize(self) -> None:
        """Tokenize the pool (`tokenized_pool`) and the target samples."""
        data = self.config.data
        self.pool = self.tokenized_pool()
        self.target = tokenize_samples(self.target_samples, self.tokenizer, data.max_length, data.template_fallback,
                                       "target", self.progress)

    def tokenized_pool(self) -> TokenizedSet:
        """The pool, streamed from its file into token files in the stage cache (or read back from there): a run
        keeps 33 bytes a sample in memory, and a re-run on the same pool, model and data settings does not
        tokenize again."""
        data = self.config.data
        folder = self.cache_root / f"tokens-{artifacts.fingerprint(**self.cache_basis, stage='tokens')[:16]}"
        pool, reused = tokenized_in(folder, lambda staging: tokenize_samples(
            self.pool_records(), self.tokenizer, data.max_length, data.template_fallback, "pool", self.progress,
            folder=staging))
        if reused:
            self.reused.append("tokens")
        return pool

    def scores_file(self, rows: int, columns: int) -> artifacts.NpyRows:
        """A scratch (rows, columns) float64 file for propagated scores, removed when the run ends."""
        self.cache_root.mkdir(parents=True, exist_ok=True)
        path = artifacts.fresh_sibling(self.cache_root / "scores.npy")
        self.scratch.append(path)
        return artifacts.NpyRows.create(path, (rows, columns), np.float64)

    def sharded(self, stage: str, rows: int, compute_rows, shard_rows: int, last: bool = False,
                by_content: tuple[str, list[bytes]] | None = None, lazy: bool = False, **key_parts):
        """A pool-wide stage's (rows, width) array: computed in resumable shards shared by the ranks, or reused.

        `last` marks the final sharded stage of a method: after it, ranks other than 0 are done. `lazy` returns the
        rows as a `ShardRows` (read from the shard files on access) instead of one tensor in memory. `by_content`
        (a row cache's name, each row's content digest) also keeps rows by their sample's content, across pools:
        its key is the stage's without the pool and the row choice, so a grown pool recomputes only new samples.
        """
        root = self.cache_root
        shard_rows = self.shard_rows or shard_rows
        basis = self.cache_basis
        key = artifacts.fingerprint(**basis, stage=stage, shard_rows=shard_rows, **key_parts)
        if by_content:
            name, digests = by_content
            parts = {k: v for k, v in {**basis, **key_parts}.items() if k not in ("pool", "landmarks")}
            cache = RowCache(root / f"{name}-rows-{artifacts.fingerprint(stage=name, **parts)[:16]}")
            compute_rows = cache.through(compute_rows, digests)
        store = ShardedStage(root / f"{stage}-{key[:16]}", rows, shard_rows, {"stage": stage, "key": key})
        self.stage_keys[stage] = key
        if len(store.finished()) == store.count:
            self.reused.append(stage)
        store.compute(self.dist, compute_rows, stage, self.progress)
        if last and not self.dist.is_main:
            raise OtherRankDone
        return store.reader() if lazy else store.load()


class OtherRankDone(Exception):
    """Raised on ranks other than 0 once the pool-wide stages they share are written."""


def cache_basis(config: SelectConfig) -> dict[str, Any]:
    """What every pool-wide stage depends on: the model and pool files, tokenisation, dtype and device, and the
    versions that could change its values or layout (this package's, its cache layout's, torch's): a cache written
    by another of them is never mixed into this run's."""
    optimizer = config.gradients.optimizer_state
    return {"model": artifacts.content_fingerprint(resolve_model_path(config.model.path)),
            "pool": data_fingerprint(config.pool, config.data.split, config.data.subset, "SelectConfig.pool"),
            "data": key_dict(config.data),
            "dtype": config.model.dtype, "device": config.model.device, "version": __version__, "format": FORMAT,
            "torch": torch.__version__, "optimizer": artifacts.content_fingerprint(optimizer) if optimizer else None}
