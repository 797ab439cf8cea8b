"""The paper's setting predicted from measurements: Influence Distillation, RDS+ and LESS at 200k samples of ~1k
tokens on the paper's models (Qwen2.5-1.5B, Llama-2-7B), in FLOPs and in time on this machine.

Those models do not fit this CPU's memory and time whole, so each stage's per-sample cost is measured on
random-weight copies of their layout cut to a few decoder blocks (the full width, vocabulary and LM head) and
extrapolated in depth: a stage that runs every block costs c(n) = c(2) + (n − 2)·(c(4) − c(2))/2 for n blocks (what
grows with depth is one block at a time; the head and embeddings are paid once). The JVP embedding runs the first K
blocks only, so it is measured as it is. The projections are timed on the cut model's gradient and scaled to the
full one's coordinates (CountSketch and LESS's Adam direction are linear in them; SRHT's n·log n). `--check` does
the same for SmolLM2-135M's layout and also times the whole 30-block model, to show what the depth extrapolation
misses. The rates go into the dry run's cost model (`influence_distillation.run`: `Rates`, `Workload`, `Sizes`,
`for_method`) with N = 200,000 pool samples, budget 10,000, 100 target samples, `--tokens` tokens a sample (half of
them completion), and the FLOPs into the method's counts (`influence_parts`, `baseline_parts`). Usage (about 20
minutes on a 2-core CPU, up to ~14 GiB of memory for the 7B layout; `--layouts smollm2-135m --tokens 64 --repeats 1`
checks the script in a minute):

    .venv/bin/python benchmarks/bench_paper_setting.py [--layouts qwen2.5-1.5b,llama-2-7b] [--check] [--out FILE]
"""

from __future__ import annotations

import argparse
import math
import time
from pathlib import Path

import torch
from common import LAYOUTS, random_example, random_model, timed, write_json

from influence_distillation import EmbeddingConfig, GradientConfig
from influence_distillation.method import (
    AdamParamState,
    HadamardProjector,
    Layout,
    Projection,
    Tokens,
    baseline_parts,
    flat_gradient,
    gradient_space,
    influence_parts,
    landmark_count,
    less_transform,
    make_embedder,
    only_requires_grad,
    rds_embeddings,
)
from influence_distillation.run import Rates, Sizes, Workload, for_method, verification_count

# The paper's reported selection cost for Llama-2-7B (spec §8; its units are uncertain, the ratios are not).
PAPER = {"influence (paper)": 872, "rds+": 2800, "less": 8400}
POOL, BUDGET, TARGETS = 200_000, 10_000, 100


def build(name: str, layers: int | None, device: str = "cpu"):
    """(model, depth): a random-weight model of the layout with `layers` decoder blocks (None: all)."""
    return random_model(name, layers, device)


def blank_adam_states(params) -> dict[str, AdamParamState]:
    """Moments of the right shapes for timing LESS's Adam direction: its cost does not depend on their values."""
    return {name: AdamParamState(torch.zeros_like(p, dtype=torch.float32), torch.ones_like(p, dtype=torch.float32),
                                 1, 1e-5, 0.9, 0.999, 1e-8, 0.0) for name, p in params.items()}


def measure(model, examples: list, repeats: int) -> dict[str, float]:
    """Seconds per sample of each stage's own work on this (cut) model, and its gradient coordinates: the fastest of
    `repeats` timings after a warm-up, as the dry run calibrates."""
    space = gradient_space(model, GradientConfig(params="mlp-down", proj_dim=32768, projection="countsketch"), 0)
    params, sketch = space.params, space.projector
    one = examples[:1]
    with only_requires_grad(model, params):
        gradient = timed(lambda: flat_gradient(model, params, one[0]), repeats)
    forward = timed(lambda: rds_embeddings(model, one, progress=False), repeats)
    size = sum(p.numel() for p in params.values())
    zero = torch.zeros(1, size)
    countsketch = timed(lambda: sketch(zero), repeats)
    transform = less_transform(blank_adam_states(params), params)
    adam = timed(lambda: transform(zero[0]), repeats)
    return {"gradient": gradient, "forward": forward, "countsketch": countsketch, "adam": adam, "coordinates": size}


def jvp_seconds(model, examples: list, blocks: int, tangents: int, repeats: int) -> float:
    embedder = make_embedder(model, EmbeddingConfig(num_blocks=blocks, num_tangents=tangents), 0)
    return timed(lambda: embedder(examples[:1]), repeats)


def srht_seconds(points: int, repeats: int) -> float:
    """An SRHT of `points` coordinates, timed at up to 2^26 and scaled by n·log n beyond."""
    measured = min(points, 1 << 26)
    projector = HadamardProjector(measured, 32768, 0)
    zero = torch.zeros(1, measured)
    seconds = timed(lambda: projector(zero), repeats)
    padded, measured_padded = 1 << (points - 1).bit_length(), projector.padded_dim
    return seconds * padded * math.log2(padded) / (measured_padded * math.log2(measured_padded))


def per_sample_costs(name: str, tokens: int, repeats: int, whole: bool) -> dict:
    """Measured on the cut models, extrapolated to the full depth."""
    cut = {}
    for layers in (2, 4):
        model, depth = build(name, layers)
        examples = [random_example(model.config.vocab_size, tokens, seed) for seed in range(2)]
        cut[layers] = measure(model, examples, repeats)
        if layers == 4:  # the JVP runs the first K blocks only: measured as it is
            jvp = {"ours (K=2, m=1)": jvp_seconds(model, examples, 2, 1, repeats),
                   "paper (K=4, m=2)": jvp_seconds(model, examples, 4, 2, repeats)}
        print(f"  {name}, {layers} blocks: " + ", ".join(f"{k} {v:.3g}" for k, v in cut[layers].items()), flush=True)
        del model
    per_block = {k: (cut[4][k] - cut[2][k]) / 2 for k in ("gradient", "forward", "coordinates")}
    full = {k: cut[2][k] + (depth - 2) * per_block[k] for k in per_block}
    scale = full["coordinates"] / cut[4]["coordinates"]
    full.update(countsketch=cut[4]["countsketch"] * scale, adam=cut[4]["adam"] * scale,
                srht=srht_seconds(int(full["coordinates"]), repeats), jvp=jvp, depth=depth, tokens=tokens)
    if whole:  # the whole model measured too (only for a layout this machine can hold)
        model, _ = build(name, None)
        examples = [random_example(model.config.vocab_size, tokens, seed) for seed in range(2)]
        full["measured whole"] = measure(model, examples, repeats)
        print(f"  {name}, whole: " + ", ".join(f"{k} {v:.3g}" for k, v in full["measured whole"].items()), flush=True)
    return full


def predict(name: str, costs: dict, matmul: float) -> dict:
    """Time (this machine) and FLOPs at the paper's setting for ours (defaults, and the paper's settings), RDS+
    and LESS."""
    with torch.device("meta"):  # shapes only: the full model's layout without its weights
        layout = Layout.of(build(name, None, "meta")[0])
    tokens, depth = costs["tokens"], costs["depth"]
    pool = Tokens(POOL, POOL * tokens, POOL * tokens // 2)
    targets = Tokens(TARGETS, TARGETS * tokens, TARGETS * tokens // 2)
    coordinates = int(costs["coordinates"])
    settings = {"ours (defaults)": (EmbeddingConfig(num_blocks=2, num_tangents=1), -1, -1, "countsketch",
                                    "ours (K=2, m=1)"),
                "influence (paper)": (EmbeddingConfig(num_blocks=4, num_tangents=2), 4096, 0, "srht",
                                      "paper (K=4, m=2)")}
    rows = {}
    for label, (embedding, count, verify, kind, jvp_key) in settings.items():
        first = landmark_count(count, POOL)
        work = Workload(pool, targets, first, verification_count(verify, BUDGET, first, POOL), BUDGET)
        rates = Rates(load=0.0, tokenize_token=0.0, embed_token=costs["jvp"][jvp_key] / tokens,
                      gradient_sample=costs[kind], gradient_token=costs["gradient"] / tokens, less_sample=0.0,
                      forward_token=costs["forward"] / tokens, flops_per_second=matmul)
        stages = for_method("influence", work, rates, _sizes(layout, coordinates, depth, tokens))
        landmarks = pool.scaled(work.landmarks + work.verify)
        flops = influence_parts(layout, pool, landmarks, targets, embedding, Projection(kind, coordinates, 32768))
        rows[label] = {"seconds": sum(e.seconds for e in stages), "flops": sum(flops.values()),
                       "stages": {e.stage: e.seconds for e in stages}, "flops_parts": flops,
                       "landmarks": work.landmarks + work.verify}
    rates = Rates(load=0.0, tokenize_token=0.0, embed_token=0.0, gradient_sample=costs["countsketch"],
                  gradient_token=costs["gradient"] / tokens, less_sample=costs["countsketch"] + costs["adam"],
                  forward_token=costs["forward"] / tokens, flops_per_second=matmul)
    work = Workload(pool, targets, 0, 0, BUDGET)
    projection = Projection("countsketch", coordinates, 32768)
    for method in ("rds+", "less"):
        stages = for_method(method, work, rates, _sizes(layout, coordinates, depth, tokens))
        flops = baseline_parts(method, layout, pool, targets, projection)
        rows[method] = {"seconds": sum(e.seconds for e in stages), "flops": sum(flops.values()),
                        "stages": {e.stage: e.seconds for e in stages}, "flops_parts": flops}
    return rows


def _sizes(layout: Layout, coordinates: int, depth: int, tokens: int) -> Sizes:
    hidden = int(math.sqrt(layout.head)) if layout.head else 0  # for memory only, which is not reported here
    return Sizes(model=4 * (layout.block_weights() + layout.head), bytes_per=4, hidden=hidden, layers=depth,
                 longest=tokens, coordinates=coordinates, padded=coordinates, projected=32768, embedding=4096,
                 embedding_working=0.0)


def duration(seconds: float) -> str:
    """As the dry run prints a time."""
    if seconds < 120:
        return f"{seconds:.0f} s"
    return f"{seconds / 60:.1f} min" if seconds < 7200 else f"{seconds / 3600:.1f} h"


def matmul_rate() -> float:
    """float32 FLOP/s of this machine from a few timed matmuls, as the dry run calibrates its propagation and scoring
    (a smaller product than `common.matmul_peak`'s roofline)."""
    a, b = torch.randn(512, 512), torch.randn(512, 1024)
    return 2 * 512 * 512 * 1024 / timed(lambda: a @ b, 5, pick=lambda times: sum(times) / len(times))


def report(results: dict) -> str:
    lines = []
    for name, result in results.items():
        costs, rows = result["costs"], result["rows"]
        lines += [f"\n### {name}: per sample of {costs['tokens']} tokens (measured, extrapolated to "
                  f"{costs['depth']} blocks)\n",
                  "| stage | seconds |", "|---|---|",
                  f"| RDS+ forward (no grad, sdpa) | {costs['forward']:.3g} |",
                  f"| gradient: forward + backward to the MLP down-projections | {costs['gradient']:.3g} |",
                  f"| CountSketch of the {costs['coordinates']:.3g} coordinates | {costs['countsketch']:.3g} |",
                  f"| SRHT of them (the paper's) | {costs['srht']:.3g} |",
                  f"| LESS's Adam direction over them | {costs['adam']:.3g} |",
                  *(f"| JVP embedding, {k} | {v:.3g} |" for k, v in costs["jvp"].items())]
        if "measured whole" in costs:
            whole = costs["measured whole"]
            lines += [f"| (whole model measured: forward {whole['forward']:.3g}, gradient {whole['gradient']:.3g}) | |"]
        lines += [f"\nAt N = {POOL:,}, budget {BUDGET:,}, {TARGETS} target samples:\n",
                  "| method | landmark gradients | time on this CPU | FLOPs | RDS+ / method (time) | RDS+ / method "
                  "(FLOPs) | paper's figure |", "|---|---|---|---|---|---|---|"]
        base = rows["rds+"]
        for method, row in rows.items():
            lines.append(f"| {method} | {row.get('landmarks', '—')} | {duration(row['seconds'])} | "
                         f"{row['flops']:.3g} | {base['seconds'] / row['seconds']:.2f} | "
                         f"{base['flops'] / row['flops']:.2f} | {PAPER.get(method, '—')} |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--layouts", default="qwen2.5-1.5b,llama-2-7b", help=f"any of {', '.join(LAYOUTS)}")
    parser.add_argument("--tokens", type=int, default=1024)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--check", action="store_true", help="also SmolLM2-135M's layout, its whole model timed too")
    parser.add_argument("--out", default="runs/paper_setting.json")
    args = parser.parse_args()
    torch.manual_seed(0)
    matmul = matmul_rate()
    names = list(dict.fromkeys([n for n in args.layouts.split(",") if n] + (["smollm2-135m"] if args.check else [])))
    if unknown := [n for n in names if n not in LAYOUTS]:
        parser.error(f"--layouts: no layout {', '.join(unknown)} (known: {', '.join(LAYOUTS)})")
    results = {}
    for name in names:
        start = time.perf_counter()
        costs = per_sample_costs(name, args.tokens, args.repeats, whole=name == "smollm2-135m")
        results[name] = {"costs": costs, "rows": predict(name, costs, matmul),
                         "seconds_measuring": time.perf_counter() - start}
        write_json(Path(args.out), {"args": vars(args), "matmul_flops": matmul, "results": results})
    print(report(results))


if __name__ == "__main__":
    main()
