"""Per-sample gradient cost and agreement: one sample at a time + SRHT (the original path) against batched hooks
and the CountSketch and Kronecker projections (the latter straight from activations, or exactly through the full
gradient as with an Adam preconditioner), on the same real samples, side by side in one process.

Usage (SmolLM2-135M-Instruct; ShareGPT from sharegpt_pool.py by default, `--data runs/suite/data --target NAME` for
the suite's pool; the first N kept pool samples in file order, and `--target-samples` of the target):

    .venv/bin/python benchmarks/bench_gradients.py --samples 96 [--threads 2] [--data DIR --target NAME]

Each projector is the run's own (`method.gradient_space` with `--grad-projection` srht, countsketch or kronecker), and
each way's gradients come from `method.projected_gradients`, as a run computes them. The table of 2026-11-27 (the
diary's "Per-sample gradients: batching and projections") is behind the reference's choice of CountSketch
(docs/BENCHMARKS.md, "Defaults for scale": the same agreement with exact inner products as SRHT).

Agreement: every way's rows give an influence matrix against the same target samples (cosine of the projected,
normalised gradients, as `select`); reported is its Spearman correlation with the one-at-a-time SRHT rows, per target
sample, averaged, and with exact (unprojected) inner products, computed in the same loop.
"""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import torch
from common import load_suite, suite_arguments, tokenize_examples, write_json

from influence_distillation import GradientConfig
from influence_distillation.method import flat_gradient, gradient_space, only_requires_grad, projected_gradients
from influence_distillation.stats import spearman


def influence(rows: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    return rows.double() @ targets.double().T


def mean_spearman(a: torch.Tensor, b: torch.Tensor) -> float:
    return float(np.mean([spearman(a[:, j], b[:, j]) for j in range(a.shape[1])]))


def main() -> None:
    parser = suite_arguments(__doc__, samples=96)
    parser.add_argument("--target", default="humaneval", help="DATA/targets/TARGET/target.jsonl")
    parser.add_argument("--target-samples", type=int, default=16)
    parser.add_argument("--dim", type=int, default=32768)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--out", default="runs/bench_gradients.json")
    args = parser.parse_args()
    model, tokenizer, pool = load_suite(args)
    targets = tokenize_examples(args, tokenizer, f"targets/{args.target}/target.jsonl", args.target_samples)
    srht, sketch, kron = (gradient_space(model, GradientConfig(params="mlp-down", proj_dim=args.dim, projection=kind),
                                         1).projector for kind in ("srht", "countsketch", "kronecker"))
    params = gradient_space(model, GradientConfig(params="mlp-down"), 1).params
    size = sum(p.numel() for p in params.values())
    tokens = sum(len(e) for e in pool)
    print(f"{len(pool)} pool samples ({tokens} tokens, mean {tokens / len(pool):.0f}), {len(targets)} targets, "
          f"D = {size:,}, k = {args.dim} (SRHT) / {kron.out_dim} (Kronecker), {args.threads} threads", flush=True)

    with only_requires_grad(model, params):  # exact inner products, the reference for both projections
        full_targets = torch.stack([flat_gradient(model, params, e) for e in targets])
        full_targets /= full_targets.norm(dim=1, keepdim=True)
        exact = torch.empty(len(pool), len(targets), dtype=torch.float64)
        start = time.perf_counter()
        for row, example in enumerate(pool):  # streamed: the pool's full gradients would not fit in memory
            gradient = flat_gradient(model, params, example)
            exact[row] = (full_targets @ (gradient / gradient.norm())).double()
        plain = (time.perf_counter() - start) / len(pool)
    del full_targets
    adam = torch.rand(size) + 0.5  # a stand-in preconditioner: the cost of applying one, not its values

    ways = {
        "one at a time + SRHT (original)": (srht, 1, None),
        "batched hooks + SRHT": (srht, args.batch, None),
        "one at a time + CountSketch": (sketch, 1, None),
        "batched hooks + CountSketch": (sketch, args.batch, None),
        "batched hooks + Kronecker, from activations": (kron, args.batch, None),
        "one at a time + Kronecker": (kron, 1, None),
        "one at a time + SRHT, Adam preconditioner": (srht, 1, adam),
        "batched hooks + CountSketch, Adam preconditioner": (sketch, args.batch, adam),
        "batched hooks + Kronecker, Adam preconditioner (full gradient)": (kron, args.batch, adam),
    }
    results, reference = [], None
    for name, (projector, batch, preconditioner) in ways.items():
        target_rows, _ = projected_gradients(model, targets, params, projector, None, progress=False, batch_size=batch)
        start = time.perf_counter()
        rows, _ = projected_gradients(model, pool, params, projector, preconditioner, progress=False,
                                      batch_size=batch)
        seconds = (time.perf_counter() - start) / len(pool)
        scores = influence(rows, target_rows)
        reference = scores if reference is None else reference
        results.append({"way": name, "seconds_per_sample": seconds,
                        "spearman_vs_original": mean_spearman(scores, reference),
                        "spearman_vs_exact": mean_spearman(scores, exact) if preconditioner is None else None})
        print(results[-1], flush=True)
    original = results[0]["seconds_per_sample"]
    print(f"\nplain backward + exact inner products, no projection: {plain:.3f} s/sample\n")
    print("| way | s / sample | × original | Spearman vs original | Spearman vs exact |")
    print("|---|---|---|---|---|")
    for row in results:
        exact_cell = "—" if row["spearman_vs_exact"] is None else f"{row['spearman_vs_exact']:.3f}"
        print(f"| {row['way']} | {row['seconds_per_sample']:.3f} | {original / row['seconds_per_sample']:.2f} | "
              f"{row['spearman_vs_original']:.3f} | {exact_cell} |")
    write_json(Path(args.out), {"args": vars(args), "plain_backward": plain, "rows": results})


if __name__ == "__main__":
    main()
