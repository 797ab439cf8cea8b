"""The embedding stage against its floor: forward-mode JVP (ours), central differences, and the plain forward pass
of the same K blocks, on the same real samples, side by side, with achieved FLOP/s against this CPU's matmul peak.
The plain forward runs in eager attention (what forward-mode AD needs) and in sdpa (the fused kernel RDS+'s forward
uses: the fair floor). The JVP runs twice: with the last block computed at the last token only, but for its keys and
values (`model.last_token`), and at every position (as before 2026-11-28); both give the same embeddings. Central
differences run as `make_embedder` builds them (issue 40): sdpa attention, float32 K blocks, the calibrated step.

Usage (ShareGPT from sharegpt_pool.py by default; `--data runs/suite/data` for the suite's pool, as in the diary):

    .venv/bin/python benchmarks/sharegpt_pool.py --out runs/scale-sharegpt --sizes 2500
    .venv/bin/python benchmarks/bench_embeddings.py --samples 512 [--threads 2] [--data DIR]

Each way is the library's own embedder (`method.JvpEmbedder`, as `select` builds it: tangents drawn once, m = 1,
batches of similar length) over a backbone from `truncated_backbone`; the plain forward calls that backbone on the
same batches. FLOPs are analytic: 2 per weight per token for the K blocks' matrices plus 4·T·d per token per block for
attention scores and values; one tangent (m = 1) costs the primal plus the tangent pass for the JVP (the tangent pass
applies each linear map to both the primal and the tangent, so m = 1 is ≈ 3 forwards), and two forwards for central
differences; the trimmed ways count the last block at one token per sample but for its keys and values.
"""

from __future__ import annotations

import time
from pathlib import Path

import torch
from common import by_length, forward_flops, load_suite, matmul_peak, suite_arguments, write_json

from influence_distillation import collate, truncated_backbone
from influence_distillation.method import JvpEmbedder

# name, last block trimmed, attention, embedding method (None: the plain forward), forwards of arithmetic
WAYS = (("forward, eager", False, "eager", None, 1), ("forward, sdpa", False, "sdpa", None, 1),
        ("jvp, all positions", False, "eager", "jvp", 3), ("jvp", True, "eager", "jvp", 3),
        ("difference", True, "sdpa", "difference", 2))


def plain_forward(backbone, batches) -> None:
    with torch.no_grad():
        for rows in batches:
            batch = collate(rows, 0)
            backbone(input_ids=batch.input_ids, attention_mask=batch.attention_mask,
                     position_ids=batch.position_ids, use_cache=False)


def main() -> None:
    parser = suite_arguments(__doc__, samples=512)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--out", default="runs/bench_embeddings.json")
    args = parser.parse_args()
    model, tokenizer, examples = load_suite(args)
    peak = matmul_peak()
    tokens = sum(len(e) for e in examples)
    print(f"{len(examples)} samples, {tokens} tokens; float32 matmul peak {peak / 1e9:.0f} GFLOP/s, "
          f"{args.threads} threads", flush=True)
    batches = by_length(examples, args.batch_size)
    rows = []
    for blocks in (2, 4):
        for kind, trimmed, attention, method, passes in WAYS:
            backbone = truncated_backbone(model, blocks, last_token=trimmed, attention=attention)
            if method is None:
                plain_forward(backbone, by_length(examples[:16], args.batch_size))  # warm-up
                start = time.perf_counter()
                plain_forward(backbone, batches)
            else:
                embedder = JvpEmbedder(backbone, 1, 4096, seed=7, batch_size=args.batch_size, method=method)
                embedder(examples[:16])  # warm-up
                start = time.perf_counter()
                embedder(examples)
            seconds = time.perf_counter() - start
            flops = passes * forward_flops(model, blocks, examples, trimmed=trimmed)
            rows.append({"blocks": blocks, "kind": kind, "seconds": seconds, "ms_per_sample": 1e3 * seconds /
                         len(examples), "gflops": flops / seconds / 1e9, "peak_share": flops / seconds / peak})
            print(rows[-1], flush=True)
    print("\n| K | way | s | ms / sample | × forward, sdpa | × forward, eager | GFLOP/s (analytic) | share of matmul "
          "peak |")
    print("|---|---|---|---|---|---|---|---|")
    for row in rows:
        forward = {r["kind"]: r["seconds"] for r in rows if r["blocks"] == row["blocks"]}
        print(f"| {row['blocks']} | {row['kind']} | {row['seconds']:.1f} | {row['ms_per_sample']:.1f} | "
              f"{row['seconds'] / forward['forward, sdpa']:.2f} | {row['seconds'] / forward['forward, eager']:.2f} | "
              f"{row['gflops']:.0f} | {row['peak_share']:.0%} |")
    write_json(Path(args.out), {"args": vars(args), "peak": peak, "rows": rows})


if __name__ == "__main__":
    main()
