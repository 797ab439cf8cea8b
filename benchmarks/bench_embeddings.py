"""The embedding stage against its floor: forward-mode JVP (ours), central differences, and the plain forward pass
of the same K blocks, on the same real samples, side by side, with achieved FLOP/s against this CPU's matmul peak.
The JVP runs twice: with the last block computed at the last token only, but for its keys and values (the default,
`model.last_token`), and at every position (as before 2026-11-28); both give the same embeddings.

Usage:

    .venv/bin/python benchmarks/bench_embeddings.py --data runs/suite/data --samples 512 [--threads 2]

FLOPs are analytic: 2 per weight per token for the K blocks' matrices plus 4·T·d per token per block for attention
scores and values; one tangent (m = 1) costs the primal plus the tangent pass for the JVP (the
tangent pass applies each linear map to both the primal and the tangent, so m = 1 is ≈ 3 forwards), and two forwards
for central differences; the trimmed ways count the last block at one token per sample but for its keys and
values.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import torch
from suite_data import load_suite, suite_arguments

from influence_distillation.data.tokenization import collate, length_batches
from influence_distillation.method.embeddings import difference_outputs, jvp_outputs, sample_tangents
from influence_distillation.model.blocks import truncated_backbone
from influence_distillation.model.last_token import every_position_weights


def matmul_peak(seconds: float = 3.0) -> float:
    """FLOP/s of a large float32 matmul on this machine (the roofline the stages are compared against)."""
    a, b = torch.randn(2048, 2048), torch.randn(2048, 2048)
    a @ b
    start, count = time.perf_counter(), 0
    while time.perf_counter() - start < seconds:
        a @ b
        count += 1
    return 2 * 2048**3 * count / (time.perf_counter() - start)


def forward_flops(backbone, examples, trimmed: bool = False) -> float:
    """Analytic FLOPs of one forward pass of the K blocks over `examples` (embedding lookup and norms excluded);
    `trimmed`: the last block at the last token only, but for its keys and values (`model.last_token`)."""
    blocks = backbone.layers if hasattr(backbone, "layers") else backbone.h
    weights = sum(p.numel() for block in blocks for name, p in block.named_parameters() if p.dim() == 2)
    hidden = backbone.config.hidden_size
    full = sum(2 * weights * len(e) + 4 * len(e) ** 2 * hidden * len(blocks) / 2 for e in examples)
    if not trimmed:
        return full
    skipped = sum(p.numel() for p in blocks[-1].parameters() if p.dim() == 2) - every_position_weights(blocks[-1])
    return full - sum(2 * skipped * (len(e) - 1) + 4 * len(e) ** 2 * hidden / 2 - 4 * len(e) * hidden
                      for e in examples)


def run(kind: str, backbone, tangents, examples, batch_size: int) -> float:
    start = time.perf_counter()
    with torch.no_grad():
        for rows in length_batches([len(e) for e in examples], batch_size):
            batch = collate([examples[i] for i in rows], 0)
            if kind.startswith("jvp"):
                jvp_outputs(backbone, tangents, batch)
            elif kind == "difference":
                difference_outputs(backbone, tangents, batch)
            else:
                backbone(input_ids=batch.input_ids, attention_mask=batch.attention_mask,
                         position_ids=batch.position_ids, use_cache=False)
    return time.perf_counter() - start


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
    rows = []
    for blocks in (2, 4):
        trimmed, full = truncated_backbone(model, blocks), truncated_backbone(model, blocks, last_token=False)
        tangents = sample_tangents(dict(trimmed.named_parameters()), 1, seed=7)
        run("jvp", trimmed, tangents, examples[:16], args.batch_size)  # warm-up
        for kind, backbone, passes in (("forward", full, 1), ("jvp, all positions", full, 3),
                                       ("jvp (the default)", trimmed, 3), ("difference", trimmed, 2)):
            flops = passes * forward_flops(backbone, examples, trimmed=backbone is trimmed)
            seconds = run(kind, backbone, tangents, examples, args.batch_size)
            rows.append({"blocks": blocks, "kind": kind, "seconds": seconds, "ms_per_sample": 1e3 * seconds /
                         len(examples), "gflops": flops / seconds / 1e9, "peak_share": flops / seconds / peak})
            print(rows[-1], flush=True)
    print("\n| K | way | s | ms / sample | × plain forward | GFLOP/s (analytic) | share of matmul peak |")
    print("|---|---|---|---|---|---|---|")
    for row in rows:
        forward = next(r for r in rows if r["blocks"] == row["blocks"] and r["kind"] == "forward")["seconds"]
        print(f"| {row['blocks']} | {row['kind']} | {row['seconds']:.1f} | {row['ms_per_sample']:.1f} | "
              f"{row['seconds'] / forward:.2f} | {row['gflops']:.0f} | {row['peak_share']:.0%} |")
    Path(args.out).write_text(json.dumps({"args": vars(args), "peak": peak, "rows": rows}, indent=2))


if __name__ == "__main__":
    main()
