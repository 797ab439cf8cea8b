"""How many blocks K should the JVP embeddings use? Propagation fidelity and cost for each K on the demo data.

Usage:
    .venv/bin/python benchmarks/bench_embedding_blocks.py [--blocks 1 2 4] [--landmarks 120] [--out runs/bench-k]

For each target of the demo and each K, runs the selection (same landmarks, same landmark gradients: they are
computed once and reused from a stage cache) and reports the held-out Spearman correlation of propagated against
exact influence (5-fold over the landmarks; see `propagation.heldout_fidelity`) and the embedding time. Builds the
BIG-bench demo data under OUT/data first if needed (it needs BIG-bench 1.0.0's sdist in the user cache: the package
index no longer serves it).
"""

from __future__ import annotations

import argparse
import json
import logging
from pathlib import Path

from influence_distillation import SelectConfig, run_selection
from influence_distillation.artifacts import user_cache_dir
from influence_distillation.evaluation.bigbench_data import TARGET_TASKS, DemoSizes, build_demo_data, fetch_bigbench
from influence_distillation.evaluation.demo import FULL
from influence_distillation.model.loading import SMOLLM2, resolve_model_path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--blocks", type=int, nargs="+", default=[1, 2, 4])
    parser.add_argument("--landmarks", type=int, default=120)
    parser.add_argument("--out", default="runs/bench-k")
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    out = Path(args.out)
    data = out / "data"
    if not (data / "data.json").is_file():
        build_demo_data(fetch_bigbench(user_cache_dir()), data, DemoSizes())
    model = str(resolve_model_path(SMOLLM2))
    rows = []
    for target in TARGET_TASKS:
        for blocks in args.blocks:
            config = SelectConfig(pool=str(data / "pool.jsonl"), target=str(data / "targets" / target / "target.jsonl"),
                                  out=str(out / f"{target}-K{blocks}"))
            config.model.path = model
            config.data.max_length = FULL["max_length"]
            config.embedding.num_blocks = blocks
            config.landmarks.count = args.landmarks
            config.selection.budget = FULL["budget"]
            result = run_selection(config, overwrite=True, progress=False, cache_dir=out / "cache")
            manifest = result.manifest
            selected = [json.loads(line)["task"] for line in (Path(config.out) / "selected.jsonl").open()]
            same_task = sum(task == TARGET_TASKS[target] for task in selected) / len(selected)
            seconds = "cached" if "embeddings" in manifest["cache"]["reused"] else f"{manifest['stages']['embeddings']:.0f}"
            rows.append((target, blocks, manifest["propagation"]["heldout_spearman"], seconds, same_task))
            print(rows[-1], flush=True)
    print("\n| target | K | held-out Spearman | embedding seconds | selected from the target's own task |")
    print("|---|---|---|---|---|")
    for target, blocks, fidelity, seconds, share in rows:
        print(f"| {target} | {blocks} | {fidelity:.3f} | {seconds} | {share:.0%} |")


if __name__ == "__main__":
    main()
