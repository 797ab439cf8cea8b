"""The whole selection run: `run_selection` loads the data and model, runs the method's stages (`distillation.py`,
or a baseline's from `baselines.py`) in a `RunContext` that times them and caches the pool-wide ones in resumable
shards, and writes the outputs (see `write_outputs`) with `manifest.json` last.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
from collections import Counter
from pathlib import Path
from typing import Any

from influence_distillation import artifacts
from influence_distillation.config import SelectConfig
from influence_distillation.data.records import load_samples
from influence_distillation.data.tokenization import TokenizedSet, tokenize_samples
from influence_distillation.errors import DataError
from influence_distillation.method import BASELINES
from influence_distillation.model.loading import load_model
from influence_distillation.options import same_config
from influence_distillation.run.baselines import select_baseline
from influence_distillation.run.context import OtherRankDone, RunContext
from influence_distillation.run.distillation import select_influence
from influence_distillation.run.distributed import DistInfo
from influence_distillation.run.guards import output_lock
from influence_distillation.run.outputs import (
    SelectionResult,
    manifest_base,
    output_files,
    selected_records,
    write_outputs,
)
from influence_distillation.run.policy import derive_seed
from influence_distillation.run.timing import StageTimer

log = logging.getLogger(__name__)


def run_selection(config: SelectConfig, overwrite: bool = False, progress: bool = True,
                  cache_dir: str | Path | None = None, dist: DistInfo | None = None,
                  shard_rows: int | None = None) -> SelectionResult | None:
    """Run the selection method `config.method` and write the run directory `config.out`.

    Pool-wide stages (JVP embeddings, first-order landmark and exact gradients, baseline passes) are written in
    resumable shards under `cache_dir` (default `<out>/stages`) with a fingerprint of everything they depend on:
    a re-run, a killed run, or a run for another target on the same pool reuses them. Under torchrun (`dist`) the
    ranks share those stages; rank 0 returns the result, the others None.
    """
    config.validate()
    out = Path(config.out)
    info = dist or DistInfo()
    with output_lock(out) if info.is_main else contextlib.nullcontext():  # one run at a time on --out
        if info.is_main:
            artifacts.check_output_dir(out, lambda stored: isinstance(stored, dict) and same_config(
                {**stored, "out": config.out}, config), overwrite)  # the same run, wherever --out was spelled
        return _run(config, out, info, progress, cache_dir, shard_rows)


def _run(config: SelectConfig, out: Path, info: DistInfo, progress: bool, cache_dir, shard_rows):
    run = _loaded(config, info, progress, cache_dir, shard_rows)
    check_usable(run.pool, run.target, config)
    try:
        result = select_baseline(run) if config.method in BASELINES else select_influence(run)
        return _finish(run, result, out)
    except OtherRankDone:
        return None
    finally:
        for path in run.scratch:
            path.unlink(missing_ok=True)


def _loaded(config: SelectConfig, info: DistInfo, progress: bool, cache_dir, shard_rows) -> RunContext:
    """The run's context: target samples and model loaded, pool and target tokenized, each step timed."""
    timer = StageTimer()
    with timer("load"):
        target_samples = load_samples(config.target, "target", config.data.split, config.data.subset,
                                      "SelectConfig.target")
        model, tokenizer = load_model(config.model)
        timer.watch(next(model.parameters()).device)
    seeds = {stage: derive_seed(config.seed, stage)
             for stage in ("tangents", "landmarks", "projection", "kernel", "selection")}
    run = RunContext(config, progress and info.is_main, Path(cache_dir) if cache_dir else None, timer=timer,
                     seeds=seeds, model=model, tokenizer=tokenizer, target_samples=target_samples, dist=info,
                     shard_rows=shard_rows)
    with timer("tokenize"):  # the pool streams from its file into token files
        run.tokenize()
    return run


def check_usable(pool: TokenizedSet, target: TokenizedSet, config: SelectConfig) -> None:
    """Refuse a pool or target with nothing to train on, or a budget larger than the pool; log the counts."""
    for name, tokenized, path in (("target", target, config.target), ("pool", pool, config.pool)):
        if not tokenized.examples:
            reasons = ", ".join(f"{reason}: {n}" for reason, n in Counter(r for _, r in tokenized.excluded).items())
            raise DataError(
                f"{name} {path}: none of its {len(tokenized.excluded)} samples has a trainable token within "
                f"DataConfig.max_length={config.data.max_length} ({reasons})"
            )
    if config.selection.budget > len(pool.examples):
        raise DataError(
            f"SelectionConfig.budget={config.selection.budget} exceeds the {len(pool.examples)} selectable pool "
            f"samples ({len(pool.excluded)} excluded for having no trainable token)"
        )
    for name, tokenized in (("pool", pool), ("target", target)):
        counts = tokenized.counts()
        log.info("%s: %d samples kept, %d truncated, %d excluded %s", name, counts["kept"], counts["truncated"],
                 counts["excluded"], counts["excluded_by_reason"] or "")


def _finish(run: RunContext, result: SelectionResult, out: Path) -> SelectionResult:
    """Write the outputs and, last, the manifest."""
    config = run.config
    manifest = _manifest(run, result)
    if run.reused:
        log.info("reused cached %s from %s", " and ".join(run.reused), run.cache_root)
    with run.timer("write"):
        records = selected_records(run.pool_records(), result, run.pool, lambda samples: tokenize_samples(
            samples, run.tokenizer, config.data.max_length, config.data.template_fallback, progress=False), config.pool)
        write_outputs(out, result, records, run.pool, run.target)
    manifest.update(stages=run.timer.seconds, peak_memory_gib=run.timer.peak_gib,
                    **({"gpu_peak_memory_gib": run.timer.gpu_peak_gib} if run.timer.gpu_peak_gib else {}))
    artifacts.write_json(out / artifacts.MANIFEST, {**manifest, "outputs": output_files(result),
                                                    "status": "complete"})
    scores = result.scores
    if isinstance(scores, artifacts.NpyRows):  # the scratch file goes; the run's own copy stays
        scores = artifacts.NpyRows(out / artifacts.TARGET_SCORES)
    return dataclasses.replace(result, scores=scores, manifest=manifest)


def _manifest(run: RunContext, result: SelectionResult) -> dict[str, Any]:
    return {**manifest_base(run.config, run.seeds, run.model, run.pool, run.target, result), **result.details,
            "cache": {"dir": str(run.cache_dir) if run.cache_dir else None, "reused": run.reused,
                      "stages": run.stage_keys}}

