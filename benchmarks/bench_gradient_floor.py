"""Where a landmark gradient's time goes, against its floor: the plain forward of the whole model, the forward and
backward that the MLP down-projection gradient needs, and its projection, one sample at a time on the same real
samples, with analytic FLOPs and achieved FLOP/s against this CPU's matmul peak. Issue 40 starts from this and
bench_embeddings.py.

A gradient of the down-projections of all blocks needs the whole forward and the activation backward through every
block above the first (weight gradients of the other parameters are skipped: they do not require grad), so its
arithmetic is about twice a forward's. Issue 13 asked for a 3x cheaper landmark gradient; this says how far below
today's cost any implementation of the same gradient can go on this machine.

Usage (ShareGPT from sharegpt_pool.py by default, `--data runs/suite/data` for the suite's pool as in the diary; the
first N kept pool samples in file order, as bench_gradients.py):

    .venv/bin/python benchmarks/bench_gradient_floor.py --samples 48 [--threads 2] [--data DIR]

The projection is the run's (`method.gradient_space`): CountSketch by default since 2026-12-03, `--projection srht`
for the paper's SRHT, which the diary's table of 2026-11-27 timed.
"""

from __future__ import annotations

import time

import torch
from common import IGNORE_INDEX, by_length, forward_flops, load_suite, matmul_peak, suite_arguments

from influence_distillation import GradientConfig, collate
from influence_distillation.method import batch_losses, flat_gradient, gradient_space, only_requires_grad


def per_sample(work, examples) -> float:
    """Seconds per sample of `work(example)` over the examples, after one warm-up call."""
    work(examples[0])
    start = time.perf_counter()
    for example in examples:
        work(example)
    return (time.perf_counter() - start) / len(examples)


def main() -> None:
    parser = suite_arguments(__doc__, samples=48)
    parser.add_argument("--dim", type=int, default=32768)
    parser.add_argument("--projection", default="countsketch", choices=("countsketch", "srht"))
    args = parser.parse_args()
    model, _, pool = load_suite(args)
    space = gradient_space(model, GradientConfig(params="mlp-down", proj_dim=args.dim, projection=args.projection), 1)
    params, projector = space.params, space.projector
    size = sum(p.numel() for p in params.values())
    name = {"countsketch": "CountSketch", "srht": "SRHT"}[args.projection]
    peak = matmul_peak()
    depth = model.config.num_hidden_layers
    completion = sum(int((torch.as_tensor(e.labels)[1:] != IGNORE_INDEX).sum()) for e in pool)
    head = 2 * model.config.vocab_size * model.config.hidden_size * completion  # logits of completion tokens only
    tokens = sum(len(e) for e in pool)
    forward = (forward_flops(model, depth, pool) + head) / len(pool)
    # Backward: activation gradients cost a forward of the blocks again (attention twice); the down-projection
    # weight gradients 2·D per token; the head's input gradient as much as the head.
    backward = (forward_flops(model, depth, pool) + head + 2 * size * tokens) / len(pool)

    with torch.no_grad():
        seconds_forward = per_sample(lambda e: batch_losses(model, collate([e], 0))[0], pool)  # one sample's loss
        batches = by_length(pool, 8)
        seconds_batched = per_sample(lambda rows: batch_losses(model, collate(rows, 0)), batches) \
            * len(batches) / len(pool)
    with only_requires_grad(model, params):
        seconds_gradient = per_sample(lambda e: flat_gradient(model, params, e), pool)
        gradient = flat_gradient(model, params, pool[0])
    seconds_projection = per_sample(lambda _: projector(gradient[None], normalize=True), pool[:8])

    today = seconds_gradient + seconds_projection
    best_rate = forward / min(seconds_forward, seconds_batched)
    rows = [("forward (loss, no grad)", seconds_forward, forward),
            ("forward in length-sorted batches of 8 (no grad)", seconds_batched, forward),
            ("forward + backward to the down-projections", seconds_gradient, forward + backward),
            (f"{name} of the {size / 1e6:.1f}M-point gradient", seconds_projection, None),
            (f"landmark gradient today (gradient + {name})", today, None)]
    print(f"{len(pool)} samples, {tokens / len(pool):.0f} tokens each on average ({completion / len(pool):.0f} "
          f"completion), D = {size:,}, k = {args.dim}, {args.threads} threads, matmul peak {peak / 1e9:.0f} GFLOP/s\n")
    print("| step | s / sample | GFLOP / sample | GFLOP/s | share of matmul peak |")
    print("|---|---|---|---|---|")
    for name, seconds, flops in rows:
        work = f"{flops / 1e9:.1f} | {flops / seconds / 1e9:.0f} | {flops / seconds / peak:.0%}" if flops else "— | — | —"
        print(f"| {name} | {seconds:.3f} | {work} |")
    print()
    for name, rate in (("the best forward's FLOP/s", best_rate), ("the matmul peak", peak)):
        floor = (forward + backward) / rate
        print(f"floor of the same gradient at {name}, projection free: {floor:.3f} s per sample; today / floor = "
              f"{today / floor:.2f}x (issue 13 asks for 3x)")


if __name__ == "__main__":
    main()
