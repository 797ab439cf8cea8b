"""The whole selection run: `run_selection` chains the stages of `stages.py` (or a baseline), times them, caches
the pool-wide ones in resumable shards, and writes the outputs (see `write_outputs`) with `manifest.json` last.
"""

from __future__ import annotations

import functools
import logging
import os
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from influence_distillation import artifacts
from influence_distillation.config import SelectConfig
from influence_distillation.data.records import data_fingerprint, iter_samples, load_samples
from influence_distillation.data.tokenization import TokenizedSet, check_usable, tokenize_samples
from influence_distillation.method.baselines import BASELINES
from influence_distillation.method.flops import influence_flops
from influence_distillation.method.gradients import projected_gradients
from influence_distillation.method.hessian import gradient_and_hessian_rows, target_hvp
from influence_distillation.method.influence import curvature, first_order_influence
from influence_distillation.method.landmarks import choose_landmarks, landmark_count
from influence_distillation.method.propagation import heldout_fidelity
from influence_distillation.method.selection import select
from influence_distillation.method.stages import (
    compute_gradients,
    derive_seed,
    embedding_batch_size,
    fidelity_warning,
    gradient_space,
    hessian_sample,
    make_embedder,
    near_target_count,
    propagate,
    propagation_matrix,
    round_sizes,
    verification_count,
    verify_landmarks,
)
from influence_distillation.method.weights import (
    DenseQuadraticForm,
    FactoredQuadraticForm,
    WeightSolution,
    kkt_residual,
    solve_weights,
)
from influence_distillation.model.loading import load_model, pad_token_id, resolve_model_path
from influence_distillation.options import key_dict, same_config
from influence_distillation.run import distributed
from influence_distillation.run.baselines import select_baseline
from influence_distillation.run.distributed import DistInfo
from influence_distillation.run.outputs import (
    SelectionResult,
    manifest_base,
    output_files,
    selected_records,
    write_outputs,
)
from influence_distillation.run.shards import EMBEDDING_SHARD, GRADIENT_SHARD, RowCache, ShardedStage, tokenized_in
from influence_distillation.run.timing import StageTimer
from influence_distillation.version import __version__

log = logging.getLogger(__name__)


@dataclass
class _Run:
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
    details: dict[str, Any] = field(default_factory=dict)  # method-specific manifest entries
    dist: DistInfo = field(default_factory=DistInfo)

    shard_rows: int | None = None  # overrides the per-stage shard sizes
    scratch: list[Path] = field(default_factory=list)  # files removed when the run ends

    def pool_records(self):
        """The pool's samples, read again one at a time (the run does not keep them: a large pool's records would
        be most of its memory)."""
        data = self.config.data
        return iter_samples(self.config.pool, "pool", data.split, data.subset)

    @functools.cached_property
    def cache_basis(self) -> dict[str, Any]:
        """Fingerprinted once per run: it reads the pool file and the model's small files."""
        return _cache_basis(self.config)

    @property
    def cache_root(self) -> Path:
        return self.cache_dir or Path(self.config.out) / artifacts.STAGES

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
        handle, path = tempfile.mkstemp(dir=self.cache_root, prefix=".scores-", suffix=".npy")
        os.close(handle)
        self.scratch.append(Path(path))
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
            raise _OtherRankDone
        return store.reader() if lazy else store.load()


class _OtherRankDone(Exception):
    """Raised on ranks other than 0 once the pool-wide stages they share are written."""


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
    if info.is_main:
        artifacts.check_output_dir(out, lambda stored: isinstance(stored, dict) and same_config(
            {**stored, "out": config.out}, config), overwrite)  # the same run, wherever --out was spelled
    run = _Run(config, progress and info.is_main, Path(cache_dir) if cache_dir else None, dist=info,
               shard_rows=shard_rows)
    run.seeds = {stage: derive_seed(config.seed, stage)
                 for stage in ("tangents", "landmarks", "projection", "kernel", "selection")}
    with run.timer("load"):
        run.target_samples = load_samples(config.target, "target", config.data.split, config.data.subset)
        run.model, run.tokenizer = load_model(config.model)
        run.timer.device = next(run.model.parameters()).device
    with run.timer("tokenize"):  # the pool streams from its file into token files
        run.pool = run.tokenized_pool()
        run.target = tokenize_samples(run.target_samples, run.tokenizer, config.data.max_length,
                                      config.data.template_fallback, "target", progress)
    check_usable(run.pool, run.target, config)
    try:
        result = select_baseline(run) if config.method in BASELINES else _select_influence(run)
        return _finish(run, result, out)
    except _OtherRankDone:
        return None
    finally:
        for path in run.scratch:
            path.unlink(missing_ok=True)


def _finish(run: _Run, result: SelectionResult, out: Path) -> SelectionResult:
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
    result.manifest = manifest
    if isinstance(result.scores, artifacts.NpyRows):  # the scratch file goes; the run's own copy stays
        result.scores = artifacts.NpyRows(out / artifacts.TARGET_SCORES)
    return result


def _select_influence(run: _Run) -> SelectionResult:
    """Influence Distillation (landmarks + propagation), or exact mode; first or second order; GD or AdamW."""
    config, timer, seeds, model, pool, target = run.config, run.timer, run.seeds, run.model, run.pool, run.target
    order, exact = config.influence.order, config.influence.exact or config.method == "exact"
    strategy = config.selection.resolved(order, config.method)
    num_pool, digests = len(pool.examples), pool.examples.digests  # the content digests the pool keeps
    embeddings, embedder = None, None

    def embed(examples):
        nonlocal embedder
        if embedder is None:  # tangents and projection drawn once per process
            embedder = make_embedder(model, config.embedding, seeds["tangents"], pad_token_id(run.tokenizer))
        return embedder(examples)

    verify = 0 if exact else verification_count(config.landmarks.verify, config.selection.budget,
                                                  landmark_count(config.landmarks.count, num_pool), num_pool)
    if not exact:
        with timer("embeddings"):
            # Lazy: propagation streams the rows from the shard files, so the (N, d_e) embeddings are never all in
            # memory (k-means++ / k-center landmarks are the exception: they read every row at once).
            embeddings = run.sharded("embeddings", num_pool, lambda rows: embed([pool.examples[i] for i in rows]),
                                     EMBEDDING_SHARD, last=order == 2 and not verify, by_content=("embeddings", digests),
                                     lazy=True, embedding=key_dict(config.embedding), seed=seeds["tangents"])
    with timer("landmarks"):
        landmarks = (np.arange(num_pool) if exact else choose_landmarks(
            num_pool, config.landmarks.count, seeds["landmarks"], config.landmarks.strategy,
            embeddings[:] if config.landmarks.strategy != "random" else None))
    space = gradient_space(model, config.gradients, seeds["projection"])
    eta = space.learning_rate(config.influence.learning_rate)

    def gradient_stage(stage: str, rows: np.ndarray, last: bool) -> torch.Tensor:  # exact mode's stay on disk
        return run.sharded(stage, len(rows), lambda part: compute_gradients(
            model, [pool.examples[rows[i]] for i in part], space, precondition=True, progress=False), GRADIENT_SHARD,
            last=last, by_content=("gradients", [digests[r] for r in rows]), lazy=exact, landmarks=rows.tolist(),
            gradients=key_dict(config.gradients), seed=seeds["projection"])

    with timer("target_gradients"):
        target_rows, target_norms = projected_gradients(
            model, target.examples, space.params, space.projector, None, space.normalize, desc="target gradients",
            progress=run.progress, batch_size=space.batch_size)
    # The target loss whose gradient the mean target row is: Σ ω_i ℓ_i (ω_i = 1/(t‖g_i‖) when normalising).
    target_weights = (1 / target_norms if space.normalize else torch.ones_like(target_norms)) / len(target_norms)
    hessian_targets, hessian_weights = hessian_sample(target.examples, target_weights,
                                                      config.influence.hessian_samples, seeds["landmarks"])
    hessian_rows = None
    with timer("landmark_gradients"):
        if order == 2 and not verify:
            landmark_rows, hessian_rows = gradient_and_hessian_rows(
                model, [pool.examples[i] for i in landmarks], space.params, space.projector, hessian_targets,
                hessian_weights, space.preconditioner, space.normalize, progress=run.progress)
        else:
            landmark_rows = gradient_stage("landmark_gradients", landmarks, last=order == 1 and not verify)
    random_landmarks, random_values = landmarks, first_order_influence(landmark_rows, target_rows)  # (l, t)
    if verify:
        with timer("verification"):
            queries = embed(target.examples) if config.landmarks.verify_neighbours else None
            landmarks, landmark_rows = _verify(run, embeddings, landmarks, landmark_rows, target_rows, verify,
                                               gradient_stage, queries, last=order == 1)
        if order == 2:
            with timer("landmark_hessian"):
                landmark_rows, hessian_rows = gradient_and_hessian_rows(
                    model, [pool.examples[i] for i in landmarks], space.params, space.projector, hessian_targets,
                    hessian_weights, space.preconditioner, space.normalize, progress=run.progress)
    landmark_examples = pool.examples if exact else [pool.examples[i] for i in landmarks]  # for the cost
    with timer("influence"):
        landmark_influence = first_order_influence(landmark_rows, target_rows) if verify else random_values
        target_direction = target_rows.double().mean(0)
        if order == 2 and space.adam_states is not None:  # p_Adam = U (g_T − η H b)
            target_direction -= eta * space.projector(target_hvp(model, space.params, hessian_targets,
                                                                 space.offset()[None], hessian_weights))[0].double().cpu()
        mean_influence = first_order_influence(landmark_rows, target_direction[None])[:, 0]  # (l,)
        landmark_q = curvature(landmark_rows, hessian_rows, num_pool) if order == 2 else None

    with timer("propagation"):
        bandwidth, ridge, coefficients, mean_scores, fidelity, warning = None, None, None, mean_influence, None, None
        if exact:
            scores = landmark_influence.numpy()
        else:
            scores, krr = propagate(embeddings, landmarks, landmark_influence, config.propagation, seeds["kernel"],
                                    run.scores_file(num_pool, landmark_influence.shape[1]))
            bandwidth, ridge = krr.bandwidth, krr.ridge
            # On the first, random landmarks only: the verified ones are not a sample of the pool.
            fidelity = heldout_fidelity(embeddings[torch.as_tensor(random_landmarks)], random_values,
                                        config.propagation.ridge, config.propagation.bandwidth, seeds["kernel"],
                                        tune=config.propagation.tune)
            warning = fidelity_warning(fidelity, len(random_landmarks), num_pool, verify)
            if warning:
                log.warning(warning)
            if strategy == "weights":
                coefficients = propagation_matrix(krr, embeddings, landmarks, config.propagation.chunk_size)
                mean_scores = coefficients @ mean_influence
    solution, form = None, None
    with timer("selection"):
        if strategy == "weights":
            if landmark_q is not None:
                form = DenseQuadraticForm(landmark_q) if exact else FactoredQuadraticForm(coefficients, landmark_q)
            solution = solve_weights(mean_scores, config.selection.budget, eta if order == 2 else 0.0, form)
            if not solution.exact_k:
                log.warning("%s; taking the %d largest weights", solution.message, config.selection.budget)
            selected = _largest_weights(solution, mean_scores, config.selection.budget)
        else:
            selected = select(scores, config.selection.budget, strategy, seeds["selection"])

    run.details = {
        "dimensions": {
            "embedding": None if embeddings is None else int(embeddings.shape[1]),
            "gradient_parameters": len(space.params),
            "gradient_coordinates": space.num_coordinates,
            "gradient_projected": space.projector.out_dim,
        },
        "influence": {"order": order, "exact": exact, "variant": "adamw" if space.adam_states is not None else "gd",
                      "learning_rate": eta, "normalized_gradients": space.normalize},
        "selection": {"strategy": strategy},
        "batch_sizes": {"gradients": space.batch_size,
                        **({} if exact else {"embeddings": embedding_batch_size(model, config.embedding)})},
        "propagation": {"bandwidth": bandwidth, "ridge": ridge, "heldout_spearman": fidelity, "warning": warning},
        "landmarks": {"first": int(len(random_landmarks)), "verified": int(len(landmarks) - len(random_landmarks)),
                      "near_targets": near_target_count(verify, config.landmarks), "strategy": config.landmarks.strategy},
        "cost": influence_flops(model, pool.examples, landmark_examples, target.examples, config, exact,
                                     space.projector, order),
    }
    if solution is not None:
        run.details["weights"] = {
            "lambda": solution.lam, "nonzero": solution.num_nonzero, "exact_k": solution.exact_k,
            "message": solution.message, "solver_iterations": solution.iterations,
            "kkt_residual": kkt_residual(mean_scores, form, eta if order == 2 else 0.0, solution.lam,
                                         solution.weights),
        }
    return SelectionResult(pool.ids, embeddings, landmarks, landmark_influence, scores, selected, solution)


def _verify(run: _Run, embeddings, landmarks, rows, target_rows, count, gradient_stage, queries, last):
    """Verification rounds (`stages.verify_landmarks`), each round's gradients a resumable sharded stage; returns all
    landmarks (sorted) and their gradient rows."""
    config, pieces = run.config, [rows]
    rounds = len(round_sizes(count, config.landmarks.verify_rounds))

    def measure(picks, number):
        picks = distributed.broadcast(run.dist, picks)  # every rank computes shards of the same rows
        pieces.append(gradient_stage(f"verified_gradients_{number}", picks, last and number == rounds))
        return first_order_influence(pieces[-1], target_rows)

    landmarks, _, order = verify_landmarks(embeddings, landmarks, first_order_influence(rows, target_rows), count,
                                           config.landmarks.verify_rounds, config.propagation, run.seeds["kernel"],
                                           measure, run.scores_file(len(embeddings), target_rows.shape[0]),
                                           queries, config.landmarks.verify_neighbours)
    return landmarks, torch.cat(pieces)[torch.as_tensor(order)]


def _cache_basis(config: SelectConfig) -> dict[str, Any]:
    """What every pool-wide stage depends on: the model and pool files, tokenisation, dtype and device."""
    optimizer = config.gradients.optimizer_state
    return {"model": artifacts.content_fingerprint(resolve_model_path(config.model.path)),
            "pool": data_fingerprint(config.pool, config.data.split, config.data.subset), "data": key_dict(config.data),
            "dtype": config.model.dtype, "device": config.model.device, "version": __version__,
            "optimizer": artifacts.content_fingerprint(optimizer) if optimizer else None}


def _largest_weights(solution: WeightSolution, scores: torch.Tensor, budget: int) -> np.ndarray:
    """The support by decreasing weight; if no λ gave exactly k, the k largest weights (ties by score, index)."""
    if solution.exact_k:
        return solution.support()
    w, p = solution.weights.numpy(), np.asarray(scores)
    return np.lexsort((np.arange(len(w)), -p, -w))[:budget]


def _manifest(run: _Run, result: SelectionResult) -> dict[str, Any]:
    return {**manifest_base(run.config, run.seeds, run.model, run.pool, run.target, result), **run.details,
            "cache": {"dir": str(run.cache_dir) if run.cache_dir else None, "reused": run.reused,
                      "stages": run.stage_keys}}

