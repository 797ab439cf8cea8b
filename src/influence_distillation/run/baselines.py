"""Running a baseline (`select --method random|mid-ppl|rds+|embed-sim|less`) inside the selection pipeline: each
method's scoring is one function of the run, looked up in `SCORERS`; selection and outputs are shared with
Influence Distillation."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from influence_distillation.data.tokenization import TokenizedSet
from influence_distillation.method import (
    BASELINES,
    baseline_flops,
    compute_gradients,
    first_order_influence,
    less_rows,
    mid_ppl_selection,
    minilm_embeddings,
    pool_losses,
    random_scores,
    rds_embeddings,
    select,
)
from influence_distillation.model.loading import pad_token_id
from influence_distillation.options import key_dict
from influence_distillation.run.context import RunContext
from influence_distillation.run.outputs import SelectionResult
from influence_distillation.run.policy import run_gradient_space
from influence_distillation.run.shards import EMBEDDING_SHARD, GRADIENT_SHARD


@dataclass
class Scored:
    """A baseline's (N, t) or (N, 1) scores, and what else it produced: embeddings (written as the run's), its own
    selection where that is not a function of the scores (Mid-PPL), the gradient projector (for the FLOP count)."""

    scores: np.ndarray
    embeddings: torch.Tensor | None = None
    selected: np.ndarray | None = None
    projector: Any = None


def _random(run: RunContext) -> Scored:
    return Scored(random_scores(len(run.pool.examples), run.seeds["selection"]))


def _mid_ppl(run: RunContext) -> Scored:
    pool, pad_id = run.pool.examples, pad_token_id(run.tokenizer)
    losses = run.sharded("pool_losses", len(pool), lambda rows: torch.from_numpy(
        pool_losses(run.model, [pool[i] for i in rows], pad_id, progress=False))[:, None],
        EMBEDDING_SHARD, last=True)[:, 0].numpy()
    return Scored(losses[:, None], selected=mid_ppl_selection(losses, run.config.selection.budget))


def _rds(run: RunContext) -> Scored:
    pool, pad_id = run.pool.examples, pad_token_id(run.tokenizer)

    def embed(examples):
        return rds_embeddings(run.model, examples, pad_id, progress=False)

    embeddings = run.sharded("rds_embeddings", len(pool), lambda rows: embed([pool[i] for i in rows]),
                             EMBEDDING_SHARD, last=True)
    return _cosines(embeddings, embed(run.target.examples))


def minilm_rows(run: RunContext) -> tuple[torch.Tensor, torch.Tensor]:
    """The MiniLM sentence embeddings of the kept pool samples (a cached stage) and of the target samples."""
    kept = _kept(list(run.pool_records()), run.pool)
    embeddings = run.sharded("minilm_embeddings", len(kept), lambda rows: minilm_embeddings(
        [kept[i] for i in rows], progress=False), len(kept), last=True)
    return embeddings, minilm_embeddings(_kept(run.target_samples, run.target), progress=False)


def _embed_sim(run: RunContext) -> Scored:
    return _cosines(*minilm_rows(run))


def _less(run: RunContext) -> Scored:
    config, model, pool = run.config, run.model, run.pool.examples
    space = run_gradient_space(model, config.gradients, run.seeds["projection"])
    pool_rows = run.sharded("less_gradients", len(pool), lambda rows: less_rows(
        model, [pool[i] for i in rows], space.params, space.projector, space.adam_states, False, space.batch_size),
        GRADIENT_SHARD, last=True, lazy=True, gradients=key_dict(config.gradients), seed=run.seeds["projection"])
    target_rows = compute_gradients(model, run.target.examples, space, precondition=False, desc="target gradients",
                                    progress=run.progress)
    # The rows stream from their shards.
    return Scored(first_order_influence(pool_rows, target_rows).numpy(), projector=space.projector)


SCORERS: dict[str, Callable[[RunContext], Scored]] = {
    "random": _random, "mid-ppl": _mid_ppl, "rds+": _rds, "embed-sim": _embed_sim, "less": _less}
assert set(SCORERS) == set(BASELINES)


def select_baseline(run: RunContext) -> SelectionResult:
    """One of the method's baselines (`method/baselines.py`) for a `pipeline` run, with the same outputs (scores,
    selection, manifest) as Influence Distillation."""
    config = run.config
    strategy = config.selection.resolved(config.influence.order, config.method)
    with run.timer("scores"):
        scored = SCORERS[config.method](run)
    with run.timer("selection"):
        selected = scored.selected if scored.selected is not None else select(
            scored.scores, config.selection.budget, strategy, run.seeds["selection"])
    embeddings = scored.embeddings
    details = {"selection": {"strategy": strategy},
               "dimensions": {"embedding": None if embeddings is None else int(embeddings.shape[1])},
               "cost": baseline_flops(config.method, run.model, run.pool.examples, run.target.examples,
                                      scored.projector)}
    return SelectionResult(run.pool.ids, embeddings, np.zeros(0, dtype=np.int64),
                           torch.zeros(0, scored.scores.shape[1]), scored.scores, np.asarray(selected),
                           details=details)


def _cosines(embeddings: torch.Tensor, targets: torch.Tensor) -> Scored:
    return Scored((embeddings.double() @ targets.double().T).numpy(), embeddings=embeddings)


def _kept(samples: list, tokenized: TokenizedSet) -> list:
    """The samples that survived tokenisation, in the order of `tokenized.examples`."""
    by_id = {sample.id: sample for sample in samples if not sample.excluded}  # an excluded copy may share an id
    return [by_id[i] for i in tokenized.ids]
