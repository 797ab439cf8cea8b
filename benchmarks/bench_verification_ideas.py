"""Ideas for the long-context targets, simulated on the fidelity benchmark's exact values (issue 12): the target
samples as extra KRR anchors, verification candidates taken round-robin per target sample (neither adopted), and
verification landmarks shared with the pool samples nearest the target samples (`--verify-neighbours`, adopted).

* Anchors: a target sample's JVP embedding costs nothing, and its exact influence on every target sample is the
  target gradients' Gram matrix, which a run already has. The diagonal (a sample's influence on itself) is replaced,
  since a pool sample is another instance of a target's task, not the sample itself: by the column's largest
  off-diagonal value (`max`), its mean (`mean`), or kept (`self`).
* Round-robin verification: the verification landmarks are the round-robin selection of the propagated scores
  instead of the top by mean influence (`stages.verification_rows`).
* Neighbours: a share of the verification landmarks goes to the pool samples nearest each target sample in the JVP
  embedding space (`landmarks.target_neighbours`, through the library's own `method.verify_landmarks`).

Metrics as in bench_fidelity.py (K = 2 last-token JVP, 5% random landmarks, verification ×1, 5 draws): overlap with
the exact round-robin selection and the exact influence it captures; for the neighbour rows also how many of the
selection's samples come from the target's own task family (multirc: the four multirc tasks; exact influence's
selection has 52). Usage (after bench_fidelity.py, whose cache it reads; computes the target samples' embeddings
and gradients once, a few minutes):

    .venv/bin/python benchmarks/bench_verification_ideas.py --bench runs/suite --fidelity runs/fidelity
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import torch
from bench_fidelity import LONG, jvp_pass, load_exact, selection_agreement

from influence_distillation import ModelConfig, load_model, load_samples, tokenize_samples
from influence_distillation.config import PropagationConfig
from influence_distillation.method import verification_rows, verify_landmarks
from influence_distillation.method.gradients import flat_gradient, select_parameters
from influence_distillation.method.landmarks import choose_landmarks
from influence_distillation.method.losses import only_requires_grad
from influence_distillation.method.propagation import fit_propagation
from influence_distillation.method.selection import select
from influence_distillation.stats import spearman


def target_inputs(bench: Path, cache: Path, targets: list[str], manifest: dict) -> dict[str, tuple]:
    """target → (JVP K=2 last-token embeddings of its target samples, their gradients' cosine Gram matrix)."""
    model = params = tokenizer = None
    found = {}
    for target in targets:
        paths = cache / f"anchors-{target}-embeddings.npy", cache / f"anchors-{target}-gram.npy"
        if not all(p.is_file() for p in paths):
            if model is None:
                model, tokenizer = load_model(ModelConfig(path=manifest["config"]["model"]["path"]))
                params = select_parameters(model, "mlp-down")
            samples = load_samples(bench / "data" / "targets" / target / "target.jsonl")
            tokenized = tokenize_samples(samples, tokenizer, manifest["config"]["data"]["max_length"], progress=False)
            examples = [tokenized.examples[i] for i in range(len(tokenized.examples))]
            np.save(paths[0], jvp_pass(model, examples, 2)["jvp2-last"].numpy())
            with only_requires_grad(model, params):
                gradients = torch.stack([flat_gradient(model, params, e) for e in examples])
            gradients /= gradients.norm(dim=1, keepdim=True)
            np.save(paths[1], (gradients @ gradients.T).double().numpy())
        found[target] = tuple(np.load(p).astype(np.float64) for p in paths)
    return found


def anchor_values(gram: np.ndarray, diagonal: str) -> np.ndarray:
    values = gram.copy()
    if diagonal != "self":
        off = np.where(np.eye(len(gram), dtype=bool), np.nan, gram)
        np.fill_diagonal(values, np.nanmax(off, 0) if diagonal == "max" else np.nanmean(off, 0))
    return values


def simulate(points, exact, anchors, budget, seeds, round_robin=False, queries=None, share=0.0,
             family=None) -> tuple[float, ...]:
    """Mean (overlap, captured, family count, Spearman, recall as in bench_fidelity.py) over landmark draws of one setting; `anchors` = (points, values) or
    None; `queries` (the target samples' embeddings) with `share` gives that share of the verification landmarks to
    their nearest pool samples; `family` marks the pool samples of the target's task family."""
    n, overlap, captured, members, ranks, recall = points.shape[0], [], [], [], [], []
    extra_points, extra_values = (None, None) if anchors is None else (torch.from_numpy(anchors[0]),
                                                                       torch.from_numpy(anchors[1]))
    values = torch.from_numpy(exact)

    def propagated(landmarks):
        fit_points, fit_values = points[landmarks], values[landmarks]
        if extra_points is not None:
            fit_points, fit_values = torch.cat([fit_points, extra_points]), torch.cat([fit_values, extra_values])
        scores = fit_propagation(fit_points, fit_values, 0.01, None, False, 0).predict(points).numpy()
        scores[landmarks] = exact[landmarks]
        return scores

    for seed in range(seeds):
        landmarks = choose_landmarks(n, 0.05, seed=seed)
        scores = propagated(landmarks)
        if queries is not None:
            landmarks_after, _, _ = verify_landmarks(
                points, landmarks, values[torch.as_tensor(landmarks)], budget, 1, PropagationConfig(), 0,
                lambda rows, _: values[torch.as_tensor(rows)], queries=torch.from_numpy(queries), neighbour_share=share)
            picks = np.setdiff1d(landmarks_after, landmarks)
        elif round_robin:
            masked = scores.copy()
            masked[landmarks] = masked.min() - 1.0  # taken only if nothing else is left
            picks = select(masked, budget, "round-robin", 0)
        else:
            picks = verification_rows(scores, landmarks, budget)
        known = np.sort(np.concatenate([landmarks, picks]))
        final = propagated(known)
        others = np.setdiff1d(np.arange(n), known)
        ranks.append(np.mean([spearman(torch.from_numpy(final[others, j]), values[others, j])
                              for j in range(exact.shape[1])]))
        top = [np.argsort(-matrix.mean(1))[:budget] for matrix in (exact, final)]
        recall.append(len(np.intersect1d(*top)) / budget)
        agreement = selection_agreement(exact, final, budget)
        overlap.append(agreement[0])
        captured.append(agreement[1])
        members.append(0 if family is None else int(family[select(final, budget, "round-robin", 0)].sum()))
    return tuple(float(np.mean(metric)) for metric in (overlap, captured, members, ranks, recall))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--bench", default="runs/suite")
    parser.add_argument("--fidelity", default="runs/fidelity", help="bench_fidelity.py's --out (its cache is read)")
    parser.add_argument("--seeds", type=int, default=5)
    args = parser.parse_args()
    bench, cache = Path(args.bench), Path(args.fidelity) / "cache"
    exact, ids, manifest = load_exact(bench)
    family = np.array(["multirc" in i for i in ids])
    budget = manifest["config"]["selection"]["budget"]
    points = torch.from_numpy(np.load(next(cache.glob("jvp2-last-*.npy")))).double()
    inputs = target_inputs(bench, cache, list(exact), manifest)
    settings = {"verification by the mean (the default before --verify-neighbours)": {},
                "verification round-robin per target sample": {"round_robin": True},
                **{f"target samples as anchors, diagonal {d}": {"diagonal": d} for d in ("max", "mean", "self")},
                **{f"verification: {share:.0%} nearest the target samples{' (the default)' if share == 0.5 else ''}":
                   {"share": share} for share in (0.25, 0.5, 0.75, 1.0)}}
    groups = {"long context": [t for t in exact if t in LONG], "demo targets": [t for t in exact if t not in LONG]}
    print("| setting | " + " | ".join(f"{g}: overlap / captured" for g in groups) + " | multirc | multirc family | "
          + " | ".join(f"{g}: Spearman / recall" for g in groups) + " |")
    print("|---|" + "---|" * (2 * len(groups) + 2))
    for label, setting in settings.items():
        result = {}
        for target, values in exact.items():
            anchors = None
            if "diagonal" in setting:
                embedded, gram = inputs[target]
                anchors = (embedded, anchor_values(gram, setting["diagonal"]))
            queries = inputs[target][0] if "share" in setting else None
            result[target] = simulate(points, values, anchors, budget, args.seeds, setting.get("round_robin", False),
                                      queries, setting.get("share", 0.0), family if target == "multirc" else None)
        cells = [" / ".join(f"{np.mean([result[t][i] for t in group]):.3f}" for i in (0, 1)) for group in
                 groups.values()]
        ranking = [" / ".join(f"{np.mean([result[t][i] for t in group]):.3f}" for i in (3, 4)) for group in
                   groups.values()]
        print(f"| {label} | " + " | ".join(cells) + f" | {result['multirc'][0]:.2f} / {result['multirc'][1]:.2f} | "
              f"{result['multirc'][2]:.1f} | " + " | ".join(ranking) + " |", flush=True)


if __name__ == "__main__":
    main()
