"""Running a baseline (`select --method random|mid-ppl|rds+|embed-sim|less`) inside the selection pipeline."""

from __future__ import annotations

import numpy as np
import torch

from influence_distillation.data.tokenization import TokenizedSet
from influence_distillation.method import baselines
from influence_distillation.method.flops import baseline_flops
from influence_distillation.method.influence import first_order_influence
from influence_distillation.method.selection import select
from influence_distillation.method.stages import compute_gradients, gradient_space
from influence_distillation.model.loading import pad_token_id
from influence_distillation.options import key_dict
from influence_distillation.run.outputs import SelectionResult
from influence_distillation.run.shards import EMBEDDING_SHARD, GRADIENT_SHARD


def select_baseline(run) -> SelectionResult:
    """One of the baselines of `baselines.py` for a `pipeline` run, with the same outputs (scores, selection,
    manifest) as Influence Distillation."""
    config, timer, model, pool, target = run.config, run.timer, run.model, run.pool, run.target
    method, budget, pad_id = config.method, config.selection.budget, pad_token_id(run.tokenizer)
    strategy = config.selection.resolved(config.influence.order, method)
    embeddings, selected, projector = None, None, None
    with timer("scores"):
        if method == "random":
            scores = baselines.random_scores(len(pool.examples), run.seeds["selection"])
        elif method == "mid-ppl":
            losses = run.sharded("pool_losses", len(pool.examples), lambda rows: torch.from_numpy(
                baselines.pool_losses(model, [pool.examples[i] for i in rows], pad_id, progress=False))[:, None],
                EMBEDDING_SHARD, last=True)[:, 0]
            scores = losses.numpy()[:, None]
            selected = baselines.mid_ppl_selection(losses.numpy(), budget)
        elif method in ("rds+", "embed-sim"):
            if method == "rds+":
                embed = lambda examples: baselines.rds_embeddings(model, examples, pad_id, progress=False)
                embeddings = run.sharded("rds_embeddings", len(pool.examples),
                                         lambda rows: embed([pool.examples[i] for i in rows]), EMBEDDING_SHARD,
                                         last=True)
                targets = embed(target.examples)
            else:
                kept = _kept(list(run.pool_records()), pool)
                embeddings = run.sharded("minilm_embeddings", len(kept), lambda rows: baselines.minilm_embeddings(
                    [kept[i] for i in rows], progress=False), len(kept), last=True)
                targets = baselines.minilm_embeddings(_kept(run.target_samples, target), progress=False)
            scores = (embeddings.double() @ targets.double().T).numpy()
        else:  # less
            space = gradient_space(model, config.gradients, run.seeds["projection"])
            projector = space.projector
            pool_rows = run.sharded("less_gradients", len(pool.examples), lambda rows: baselines.less_rows(
                model, [pool.examples[i] for i in rows], space.params, space.projector, space.adam_states, False,
                space.batch_size),
                GRADIENT_SHARD, last=True, lazy=True, gradients=key_dict(config.gradients),
                seed=run.seeds["projection"])
            target_rows = compute_gradients(model, target.examples, space, precondition=False,
                                            desc="target gradients", progress=run.progress)
            scores = first_order_influence(pool_rows, target_rows).numpy()  # the rows stream from their shards
    with timer("selection"):
        if selected is None:
            selected = select(scores, budget, strategy, run.seeds["selection"])
    run.details = {"selection": {"strategy": strategy},
                   "dimensions": {"embedding": None if embeddings is None else int(embeddings.shape[1])},
                   "cost": baseline_flops(method, model, pool.examples, target.examples, projector)}
    return SelectionResult(pool.ids, embeddings, np.zeros(0, dtype=np.int64), torch.zeros(0, scores.shape[1]),
                           scores, np.asarray(selected))


def _kept(samples: list, tokenized: TokenizedSet) -> list:
    """The samples that survived tokenisation, in the order of `tokenized.examples`."""
    by_id = {sample.id: sample for sample in samples}
    return [by_id[i] for i in tokenized.ids]
