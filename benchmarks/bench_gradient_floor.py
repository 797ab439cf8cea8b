"""Where a landmark gradient's time goes, against its floor: the plain forward of the whole model, the forward and
backward that the MLP down-projection gradient needs, and the SRHT projection, one sample at a time on the same real
samples, with analytic FLOPs and achieved FLOP/s against this CPU's matmul peak.

A gradient of the down-projections of all blocks needs the whole forward and the activation backward through every
block above the first (weight gradients of the other parameters are skipped: they do not require grad), so its
arithmetic is about twice a forward's. Issue 13 asked for a 3x cheaper landmark gradient; this says how far below
today's cost any implementation of the same gradient can go on this machine.

Usage (the suite's data; the first N pool samples in file order, as bench_gradients.py):

    .venv/bin/python benchmarks/bench_gradient_floor.py --data runs/suite/data --samples 48 [--threads 2]
"""

from __future__ import annotations

import time

import torch
from bench_embeddings import forward_flops, matmul_peak
from suite_data import load_suite, suite_arguments

from influence_distillation.data.tokenization import IGNORE_INDEX, collate, length_batches
from influence_distillation.method.gradients import flat_gradient, select_parameters
from influence_distillation.method.losses import batch_losses, only_requires_grad, sample_loss
from influence_distillation.method.projection import HadamardProjector


def timed(work, examples) -> float:
    """Seconds per sample of `work(example)` over the examples, after one warm-up call."""
    work(examples[0])
    start = time.perf_counter()
    for example in examples:
        work(example)
    return (time.perf_counter() - start) / len(examples)


def main() -> None:
    parser = suite_arguments(__doc__, samples=48)
    parser.add_argument("--dim", type=int, default=32768)
    args = parser.parse_args()
    model, _, pool = load_suite(args)
    params = select_parameters(model, "mlp-down")
    size = sum(p.numel() for p in params.values())
    projector = HadamardProjector(size, args.dim, 1)
    peak = matmul_peak()
    backbone = model.model
    completion = sum(int((torch.as_tensor(e.labels)[1:] != IGNORE_INDEX).sum()) for e in pool)
    head = 2 * model.config.vocab_size * model.config.hidden_size * completion  # logits of completion tokens only
    tokens = sum(len(e) for e in pool)
    forward = (forward_flops(backbone, pool) + head) / len(pool)
    # Backward: activation gradients cost a forward of the blocks again (attention twice); the down-projection
    # weight gradients 2·D per token; the head's input gradient as much as the head.
    backward = (forward_flops(backbone, pool) + head + 2 * size * tokens) / len(pool)

    with torch.no_grad():
        seconds_forward = timed(lambda e: sample_loss(model, e), pool)
        batches = [[pool[i] for i in rows] for rows in length_batches([len(e) for e in pool], 8)]
        seconds_batched = timed(lambda rows: batch_losses(model, collate(rows, 0)), batches) * len(batches) / len(pool)
    with only_requires_grad(model, params):
        seconds_gradient = timed(lambda e: flat_gradient(model, params, e), pool)
        gradient = flat_gradient(model, params, pool[0])
    seconds_projection = timed(lambda _: projector(gradient[None], normalize=True), pool[:8])

    today = seconds_gradient + seconds_projection
    best_rate = forward / min(seconds_forward, seconds_batched)
    rows = [("forward (loss, no grad)", seconds_forward, forward),
            ("forward in length-sorted batches of 8 (no grad)", seconds_batched, forward),
            ("forward + backward to the down-projections", seconds_gradient, forward + backward),
            ("SRHT of the 26.5M-point gradient", seconds_projection, None),
            ("landmark gradient today (gradient + SRHT)", today, None)]
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
