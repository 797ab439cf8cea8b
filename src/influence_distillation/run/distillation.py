"""Influence Distillation inside a run: `select_influence` is the method's stages in order, each timed, the pool-wide
ones cached in resumable shards (exact mode: a gradient of every pool sample instead of embeddings and landmarks).

    embeddings → first landmarks → target gradients → landmark gradients → verification landmarks
    → influence terms → propagation → selection
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from influence_distillation.method import (
    DenseQuadraticForm,
    FactoredQuadraticForm,
    GradientSpace,
    WeightSolution,
    adam_terms,
    choose_landmarks,
    compute_gradients,
    first_order_influence,
    gd_terms,
    gradient_and_hessian_rows,
    heldout_fidelity,
    influence_flops,
    kkt_residual,
    landmark_count,
    near_target_count,
    projected_gradients,
    propagate,
    propagation_matrix,
    round_sizes,
    select,
    solve_weights,
    target_hvp,
    verify_landmarks,
)
from influence_distillation.model.loading import pad_token_id
from influence_distillation.options import key_dict
from influence_distillation.run import distributed
from influence_distillation.run.baselines import minilm_rows
from influence_distillation.run.context import RunContext
from influence_distillation.run.outputs import SelectionResult
from influence_distillation.run.policy import (
    check_coefficient_memory,
    embedding_batch_size,
    fidelity_warning,
    hessian_sample,
    learning_rate,
    run_embedder,
    run_gradient_space,
    verification_count,
)
from influence_distillation.run.shards import EMBEDDING_SHARD, GRADIENT_SHARD

VERIFIED_STAGE = "verified_gradients"  # each round's stage: VERIFIED_STAGE_1, _2…; cached per target

log = logging.getLogger(__name__)


@dataclass
class _Plan:
    """What the stages share: the variant, the gradient space and the lazily built embedder."""

    run: RunContext
    exact: bool
    order: int
    strategy: str
    verify: int  # verification landmarks
    space: GradientSpace
    eta: float
    floor: dict[str, Any] | None = None  # the answer-length floor: its token count and ineligible rows, when on
    embedder: Any = None

    def embed(self, examples):
        if self.embedder is None:  # tangents and projection drawn once per process
            run = self.run
            self.embedder = run_embedder(run.model, run.config.embedding, run.seeds["tangents"],
                                          pad_token_id(run.tokenizer))
        return self.embedder(examples)

    def gradients(self, stage: str, rows: np.ndarray, last: bool) -> torch.Tensor:
        """Landmark gradients of pool `rows`, a resumable sharded stage (exact mode's stay on disk, read lazily)."""
        run, pool = self.run, self.run.pool.examples
        return run.sharded(stage, len(rows), lambda part: compute_gradients(
            run.model, [pool[rows[i]] for i in part], self.space, precondition=True, progress=False), GRADIENT_SHARD,
            last=last, by_content=("gradients", [pool.digests[r] for r in rows]), lazy=self.exact,
            landmarks=rows.tolist(), gradients=key_dict(run.config.gradients), seed=run.seeds["projection"])

    def with_hessian(self, landmarks: np.ndarray, targets: _Targets):
        """Second order: landmark gradient rows and their target Hessian-vector products, (l, k_p) each."""
        run, space = self.run, self.space
        return gradient_and_hessian_rows(run.model, [run.pool.examples[i] for i in landmarks], space.params,
                                         space.projector, targets.hessian_samples, targets.hessian_weights,
                                         space.preconditioner, space.normalize, progress=run.progress)


@dataclass
class _Targets:
    rows: torch.Tensor  # (t, k_p) projected, normalised target gradients
    hessian_samples: list  # the target samples the Hessian is taken over, and their weights
    hessian_weights: torch.Tensor


def select_influence(run: RunContext) -> SelectionResult:
    """Influence Distillation (landmarks + propagation), or exact mode; first or second order; GD or AdamW."""
    plan = _plan(run)
    embeddings = _embeddings(plan)
    with run.timer("landmarks"):
        first = _first_landmarks(plan, embeddings)
    with run.timer("target_gradients"):
        targets = _target_gradients(plan)
    with run.timer("landmark_gradients"):
        rows, hessian_rows = _landmark_gradients(plan, first, targets)
    first_values = first_order_influence(rows, targets.rows)  # (l, t)
    landmarks, values = first, first_values
    if plan.verify:
        minilm = None
        if run.config.landmarks.verify_neighbours and run.config.landmarks.verify_space == "minilm":
            with run.timer("minilm_embeddings"):
                minilm = minilm_rows(run)
        with run.timer("verification"):
            landmarks, rows = _verification(plan, embeddings, first, rows, targets, minilm)
            values = first_order_influence(rows, targets.rows)
        if plan.order == 2:
            with run.timer("landmark_hessian"):
                rows, hessian_rows = plan.with_hessian(landmarks, targets)
    with run.timer("influence"):
        mean_influence, curvature = _influence_terms(plan, rows, hessian_rows, targets)
    with run.timer("propagation"):
        propagated = _propagation(plan, embeddings, landmarks, values, mean_influence, first, first_values)
    with run.timer("selection"):
        selected, solution, form = _selection(plan, propagated, curvature)
    details = _details(plan, embeddings, first, landmarks, propagated)
    if solution is not None:
        details["weights"] = _weight_details(plan, solution, propagated["mean_scores"], form)
    return SelectionResult(run.pool.ids, embeddings, landmarks, values, propagated["scores"], selected, solution,
                           details)


def _plan(run: RunContext) -> _Plan:
    config, pool = run.config, len(run.pool.examples)
    order, exact = config.influence.order, config.influence.exact or config.method == "exact"
    verify = 0 if exact else verification_count(config.landmarks.verify, config.selection.budget,
                                                  landmark_count(config.landmarks.count, pool), pool)
    space = run_gradient_space(run.model, config.gradients, run.seeds["projection"])
    strategy = config.selection.resolved(order, config.method)
    return _Plan(run, exact, order, strategy, verify, space, learning_rate(config.influence.learning_rate, space),
                 _answer_floor(run, strategy))


def _answer_floor(run: RunContext, strategy: str) -> dict[str, Any] | None:
    """Which pool rows the answer-length floor (`SelectionConfig.answer_floor`) leaves out: those whose trained
    answer is shorter than the floor times the target's median answer. Off (None) for the weights, and with a
    warning when fewer rows than the budget would be left."""
    share = run.config.selection.answer_floor
    if not share or strategy == "weights":
        return None
    tokens = share * float(np.median(run.target.examples.answer_lengths()))
    skipped = np.flatnonzero(run.pool.examples.answer_lengths() < tokens)
    kept = len(run.pool.examples) - len(skipped)
    if kept < run.config.selection.budget:
        log.warning("answer floor: only %d pool samples have answers of %.0f tokens or more, fewer than the budget; "
                    "selecting without the floor", kept, tokens)
        return None
    log.info("answer floor: %d of %d pool samples have answers shorter than %.0f tokens and are not selected",
             len(skipped), len(run.pool.examples), tokens)
    return {"tokens": tokens, "skipped": skipped}


def _embeddings(plan: _Plan):
    """The pool's JVP embeddings, lazily read from their shards: propagation streams them, so the (N, d_e) array is
    never all in memory (k-means++ / k-center landmarks are the exception: they read every row at once)."""
    if plan.exact:
        return None
    run, pool = plan.run, plan.run.pool.examples
    with run.timer("embeddings"):
        return run.sharded("embeddings", len(pool), lambda rows: plan.embed([pool[i] for i in rows]), EMBEDDING_SHARD,
                           last=plan.order == 2 and not plan.verify, by_content=("embeddings", pool.digests),
                           lazy=True, embedding=key_dict(run.config.embedding), seed=run.seeds["tangents"])


def _first_landmarks(plan: _Plan, embeddings) -> np.ndarray:
    run, landmarks = plan.run, plan.run.config.landmarks
    count = len(run.pool.examples)
    if plan.exact:
        return np.arange(count)
    return choose_landmarks(count, landmarks.count, run.seeds["landmarks"], landmarks.strategy,
                            embeddings[:] if landmarks.strategy != "random" else None)


def _target_gradients(plan: _Plan) -> _Targets:
    run, space = plan.run, plan.space
    rows, norms = projected_gradients(run.model, run.target.examples, space.params, space.projector, None,
                                      space.normalize, desc="target gradients", progress=run.progress,
                                      batch_size=space.batch_size)
    # The target loss whose gradient the mean target row is: Σ ω_i ℓ_i (ω_i = 1/(t‖g_i‖) when normalising).
    weights = (1 / norms if space.normalize else torch.ones_like(norms)) / len(norms)
    samples, hessian_weights = hessian_sample(run.target.examples, weights, run.config.influence.hessian_samples,
                                              run.seeds["landmarks"])
    return _Targets(rows, samples, hessian_weights)


def _landmark_gradients(plan: _Plan, landmarks: np.ndarray, targets: _Targets):
    """The first landmarks' gradient rows (and, second order without verification, their Hessian rows)."""
    if plan.order == 2 and not plan.verify:
        return plan.with_hessian(landmarks, targets)
    return plan.gradients("landmark_gradients", landmarks, last=plan.order == 1 and not plan.verify), None


def _verification(plan: _Plan, embeddings, landmarks: np.ndarray, rows: torch.Tensor, targets: _Targets,
                  minilm: tuple | None = None):
    """Verification rounds (`method.verify_landmarks`), each round's gradients a resumable sharded stage; returns all
    landmarks (sorted) and their gradient rows. With `minilm` (pool rows, target rows), the target samples'
    neighbours are found in that space instead of the JVP embeddings'."""
    run, config, pieces = plan.run, plan.run.config, [rows]
    rounds = len(round_sizes(plan.verify, config.landmarks.verify_rounds))
    neighbour_rows, queries = minilm or (None, None)
    if config.landmarks.verify_neighbours and minilm is None:
        queries = plan.embed(run.target.examples)

    def measure(picks, number):
        picks = distributed.broadcast(run.dist, picks)  # every rank computes shards of the same rows
        pieces.append(plan.gradients(f"{VERIFIED_STAGE}_{number}", picks, plan.order == 1 and number == rounds))
        return first_order_influence(pieces[-1], targets.rows)

    landmarks, _, order = verify_landmarks(embeddings, landmarks, first_order_influence(rows, targets.rows),
                                           plan.verify, config.landmarks.verify_rounds, config.propagation,
                                           run.seeds["kernel"], measure,
                                           run.scores_file(len(embeddings), targets.rows.shape[0]), queries,
                                           config.landmarks.verify_neighbours, neighbour_rows,
                                           None if plan.floor is None else plan.floor["skipped"])
    return landmarks, torch.cat(pieces)[torch.as_tensor(order)]


def _influence_terms(plan: _Plan, rows, hessian_rows, targets: _Targets):
    """(p, Q) of the one-step model for the mean target (`method.influence`): Q only for second order; with an AdamW
    state and second order, p uses the target direction corrected by the momentum and weight-decay step."""
    run, space, pool = plan.run, plan.space, len(plan.run.pool.examples)
    target = targets.rows.double().mean(0)
    if space.adam_states is None:
        return gd_terms(rows, target, hessian_rows, pool)
    hessian_b = None
    if plan.order == 2:
        offset = target_hvp(run.model, space.params, targets.hessian_samples, space.offset()[None],
                            targets.hessian_weights)
        hessian_b = space.projector(offset)[0].double().cpu()
    return adam_terms(rows, target, hessian_rows, hessian_b, plan.eta, pool)


def _propagation(plan: _Plan, embeddings, landmarks, values, mean_influence, first, first_values) -> dict[str, Any]:
    """Every pool sample's scores (N, t) by KRR from the landmarks, and the held-out fidelity of the first ones;
    for weights also the mean scores and the propagation matrix."""
    run, config = plan.run, plan.run.config
    found = {"scores": values.numpy() if plan.exact else None, "mean_scores": mean_influence, "coefficients": None,
             "bandwidth": None, "ridge": None, "fidelity": None, "warning": None}
    if plan.exact:
        return found
    scores, krr = propagate(embeddings, landmarks, values, config.propagation, run.seeds["kernel"],
                            run.scores_file(len(embeddings), values.shape[1]))
    # On the first, random landmarks only: the verified ones are not a sample of the pool.
    fidelity = heldout_fidelity(embeddings[torch.as_tensor(first)], first_values, config.propagation.ridge,
                                config.propagation.bandwidth, run.seeds["kernel"], tune=config.propagation.tune)
    warning = fidelity_warning(fidelity, len(first), len(embeddings), plan.verify)
    if warning:
        log.warning(warning)
    found.update(scores=scores, bandwidth=krr.bandwidth, ridge=krr.ridge, fidelity=fidelity, warning=warning)
    if plan.strategy == "weights":
        check_coefficient_memory(embeddings.shape[0], len(landmarks))
        found["coefficients"] = propagation_matrix(krr, embeddings, landmarks, config.propagation.chunk_size)
        found["mean_scores"] = found["coefficients"] @ mean_influence
    return found


def _selection(plan: _Plan, propagated: dict[str, Any], curvature):
    """The selected rows, and for weights the solution and its quadratic form."""
    run, budget = plan.run, plan.run.config.selection.budget
    if plan.strategy != "weights":
        eligible = None
        if plan.floor is not None:
            eligible = np.ones(len(run.pool.examples), dtype=bool)
            eligible[plan.floor["skipped"]] = False
        return select(propagated["scores"], budget, plan.strategy, run.seeds["selection"], eligible), None, None
    form = None
    if curvature is not None:
        form = DenseQuadraticForm(curvature) if plan.exact else FactoredQuadraticForm(propagated["coefficients"],
                                                                                      curvature)
    solution = solve_weights(propagated["mean_scores"], budget, plan.eta if plan.order == 2 else 0.0, form)
    if not solution.exact_k:
        log.warning("%s; taking the %d largest weights", solution.message, budget)
    return _largest_weights(solution, propagated["mean_scores"], budget), solution, form


def _largest_weights(solution: WeightSolution, scores: torch.Tensor, budget: int) -> np.ndarray:
    """The support by decreasing weight; if no λ gave exactly k, the k largest weights (ties by score, index)."""
    if solution.exact_k:
        return solution.support()
    w, p = solution.weights.numpy(), np.asarray(scores)
    return np.lexsort((np.arange(len(w)), -p, -w))[:budget]


def _details(plan: _Plan, embeddings, first, landmarks, propagated) -> dict[str, Any]:
    """The method's manifest entries."""
    run, config, space = plan.run, plan.run.config, plan.space
    pool = run.pool.examples
    landmark_examples = pool if plan.exact else [pool[i] for i in landmarks]
    return {
        "dimensions": {"embedding": None if embeddings is None else int(embeddings.shape[1]),
                       "gradient_parameters": len(space.params), "gradient_coordinates": space.num_coordinates,
                       "gradient_projected": space.projector.out_dim},
        "influence": {"order": plan.order, "exact": plan.exact,
                      "variant": "adamw" if space.adam_states is not None else "gd", "learning_rate": plan.eta,
                      "normalized_gradients": space.normalize},
        "selection": {"strategy": plan.strategy} | ({} if plan.floor is None else {
            "answer_floor_tokens": plan.floor["tokens"], "below_answer_floor": int(len(plan.floor["skipped"]))}),
        "batch_sizes": {"gradients": space.batch_size,
                        **({} if plan.exact else {"embeddings": embedding_batch_size(run.model, config.embedding)})},
        "propagation": {k: propagated[k] for k in ("bandwidth", "ridge")}
        | {"heldout_spearman": propagated["fidelity"], "warning": propagated["warning"]},
        "landmarks": {"first": int(len(first)), "verified": int(len(landmarks) - len(first)),
                      "near_targets": near_target_count(plan.verify, config.landmarks),
                      "strategy": config.landmarks.strategy},
        "cost": influence_flops(run.model, pool, landmark_examples, run.target.examples, config, plan.exact,
                                space.projector, plan.order),
    }


def _weight_details(plan: _Plan, solution: WeightSolution, mean_scores, form) -> dict[str, Any]:
    return {"lambda": solution.lam, "nonzero": solution.num_nonzero, "exact_k": solution.exact_k,
            "message": solution.message, "solver_iterations": solution.iterations,
            "kkt_residual": kkt_residual(mean_scores, form, plan.eta if plan.order == 2 else 0.0, solution.lam,
                                         solution.weights)}
