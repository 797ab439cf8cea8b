"""How many landmark gradients the default needs: the suite's selection simulated from exact influence at several
counts of first landmarks and verification landmarks (the rule behind `--landmarks -1`).

Reads the suite's exact runs (`influence-distill benchmark --out runs/suite --methods exact`: the exact first-order
influence of every pool sample on every target sample) and the default run's JVP embeddings
(`select-<target>-influence/embeddings.npy`); the target samples' embeddings are computed here with that run's
tangents. For each (first landmarks l, verification landmarks v) and landmark draw, the library's own
`verify_landmarks` places the verification landmarks (half at the target samples' neighbours, as the default) with
the exact values standing in for the gradients, and the final propagation is selected round-robin. Reported: the
share of the exact selection it recovers (overlap) and the exact mean influence it captures relative to exact's
(as bench_fidelity.py), mean over draws and targets. Usage (a few minutes once the exact runs exist):

    .venv/bin/python benchmarks/bench_landmark_counts.py --bench runs/suite [--draws 5]
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import torch
from bench_fidelity import load_exact, selection_agreement

from influence_distillation import ModelConfig, load_model, load_samples, tokenize_samples
from influence_distillation.config import EmbeddingConfig, PropagationConfig
from influence_distillation.method import propagate, verify_landmarks
from influence_distillation.method.landmarks import choose_landmarks
from influence_distillation.model.loading import pad_token_id
from influence_distillation.run.policy import run_embedder

SETTINGS = [(32, 32), (64, 64), (96, 96), (128, 120), (141, 120), (256, 120), (64, 120), (128, 64), (128, 0),
            (256, 0), (512, 0)]


def target_embeddings(bench: Path, target: str, run: dict) -> torch.Tensor:
    """The target samples' JVP embeddings with the default run's tangents (what `select` computes for them)."""
    config = run["config"]
    model, tokenizer = load_model(ModelConfig(path=config["model"]["path"]))
    samples = load_samples(bench / "data" / "targets" / target / "target.jsonl")
    examples = tokenize_samples(samples, tokenizer, config["data"]["max_length"], progress=False).examples
    embedder = run_embedder(model, EmbeddingConfig(**{k: v for k, v in config["embedding"].items()}),
                             run["seeds"]["tangents"], pad_token_id(tokenizer))
    return embedder([examples[i] for i in range(len(examples))])


def simulate(points: torch.Tensor, exact: np.ndarray, queries: torch.Tensor, first: int, verify: int, budget: int,
             draws: int) -> tuple[float, float]:
    values = torch.from_numpy(exact)
    overlap, captured = [], []
    for draw in range(draws):
        landmarks = choose_landmarks(len(points), first, seed=draw)
        known, known_values = landmarks, values[torch.as_tensor(landmarks)]
        if verify:
            known, known_values, _ = verify_landmarks(points, landmarks, known_values, verify, 1, PropagationConfig(),
                                                      0, lambda rows, _: values[torch.as_tensor(rows)],
                                                      queries=queries, neighbour_share=0.5)
        scores, _ = propagate(points, known, known_values, PropagationConfig(), 0)
        agreement = selection_agreement(exact, scores, budget)
        overlap.append(agreement[0])
        captured.append(agreement[1])
    return float(np.mean(overlap)), float(np.mean(captured))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--bench", default="runs/suite")
    parser.add_argument("--draws", type=int, default=5)
    parser.add_argument("--out", default="runs/landmark_counts.json")
    args = parser.parse_args()
    bench = Path(args.bench)
    exact, ids, manifest = load_exact(bench)
    budget = manifest["config"]["selection"]["budget"]
    results = {}
    for target, values in exact.items():
        run_folder = bench / f"select-{target}-influence"
        run = json.loads((run_folder / "manifest.json").read_text())
        points = torch.from_numpy(np.load(run_folder / "embeddings.npy")).double()
        queries = target_embeddings(bench, target, run).double()
        results[target] = {f"{first}+{verify}": simulate(points, values, queries, first, verify, budget, args.draws)
                           for first, verify in SETTINGS}
        print(target, results[target], flush=True)
    Path(args.out).write_text(json.dumps(results, indent=2))
    targets = list(results)
    print("\n| first + verification landmarks | gradients | " + " | ".join(targets) + " | mean overlap / captured |")
    print("|---|---|" + "---|" * (len(targets) + 1))
    for first, verify in SETTINGS:
        key = f"{first}+{verify}"
        cells = [f"{results[t][key][0]:.2f} / {results[t][key][1]:.3f}" for t in targets]
        mean = np.mean([results[t][key] for t in targets], axis=0)
        print(f"| {first} + {verify} | {first + verify} | " + " | ".join(cells) + f" | {mean[0]:.3f} / {mean[1]:.3f} |")


if __name__ == "__main__":
    main()
