"""Two ideas for the long-context targets, simulated on the fidelity benchmark's exact values (issue 12; neither
adopted): the target samples as extra KRR anchors, and verification candidates taken round-robin per target sample.

* Anchors: a target sample's JVP embedding costs nothing, and its exact influence on every target sample is the
  target gradients' Gram matrix, which a run already has. The diagonal (a sample's influence on itself) is replaced,
  since a pool sample is another instance of a target's task, not the sample itself: by the column's largest
  off-diagonal value (`max`), its mean (`mean`), or kept (`self`).
* Round-robin verification: the verification landmarks are the round-robin selection of the propagated scores
  instead of the top by mean influence (`stages.verification_rows`).

Metrics as in bench_fidelity.py (K = 2 last-token JVP, 5% random landmarks, verification ×1, 5 draws): overlap with
the exact round-robin selection and the exact influence it captures. Usage (after bench_fidelity.py, whose cache it
reads; computes the target samples' embeddings and gradients once, a few minutes):

    .venv/bin/python benchmarks/bench_verification_ideas.py --bench runs/suite --fidelity runs/fidelity
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import torch
from bench_fidelity import LONG, jvp_pass, load_exact, selection_agreement

from influence_distillation import ModelConfig, load_model, load_samples, tokenize_samples
from influence_distillation.method.gradients import flat_gradient, only_requires_grad, select_parameters
from influence_distillation.method.landmarks import choose_landmarks
from influence_distillation.method.propagation import fit_propagation
from influence_distillation.method.selection import select
from influence_distillation.method.stages import verification_rows


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


def simulate(points, exact, anchors, budget, seeds, round_robin=False) -> tuple[float, float]:
    """Mean (overlap, captured) over landmark draws of one setting; `anchors` = (points, values) or None."""
    n, overlap, captured = points.shape[0], [], []
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
        if round_robin:
            masked = scores.copy()
            masked[landmarks] = masked.min() - 1.0  # taken only if nothing else is left
            picks = select(masked, budget, "round-robin", 0)
        else:
            picks = verification_rows(scores, landmarks, budget)
        agreement = selection_agreement(exact, propagated(np.sort(np.concatenate([landmarks, picks]))), budget)
        overlap.append(agreement[0])
        captured.append(agreement[1])
    return float(np.mean(overlap)), float(np.mean(captured))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--bench", default="runs/suite")
    parser.add_argument("--fidelity", default="runs/fidelity", help="bench_fidelity.py's --out (its cache is read)")
    parser.add_argument("--seeds", type=int, default=5)
    args = parser.parse_args()
    bench, cache = Path(args.bench), Path(args.fidelity) / "cache"
    exact, _, manifest = load_exact(bench)
    budget = manifest["config"]["selection"]["budget"]
    points = torch.from_numpy(np.load(next(cache.glob("jvp2-last-*.npy")))).double()
    inputs = target_inputs(bench, cache, list(exact), manifest)
    settings = {"verification by the mean (the default)": {},
                "verification round-robin per target sample": {"round_robin": True},
                **{f"target samples as anchors, diagonal {d}": {"diagonal": d} for d in ("max", "mean", "self")}}
    groups = {"long context": [t for t in exact if t in LONG], "demo targets": [t for t in exact if t not in LONG]}
    print("| setting | " + " | ".join(f"{g}: overlap / captured" for g in groups) + " | multirc |")
    print("|---|" + "---|" * (len(groups) + 1))
    for label, setting in settings.items():
        result = {}
        for target, values in exact.items():
            anchors = None
            if "diagonal" in setting:
                embedded, gram = inputs[target]
                anchors = (embedded, anchor_values(gram, setting["diagonal"]))
            result[target] = simulate(points, values, anchors, budget, args.seeds, setting.get("round_robin", False))
        cells = [" / ".join(f"{np.mean([result[t][i] for t in group]):.3f}" for i in (0, 1)) for group in
                 groups.values()]
        print(f"| {label} | " + " | ".join(cells) + f" | {result['multirc'][0]:.2f} / {result['multirc'][1]:.2f} |",
              flush=True)


if __name__ == "__main__":
    main()
