"""Issue 40's dtype rule: how much of the embedding, and of propagation's held-out Spearman, survives a bfloat16
model, for each way of embedding. For every `select-TARGET-influence` run of a benchmark folder (the suite's, after
`influence-distill benchmark --select-only`), its first random landmarks are embedded again five ways — float32 by
central differences (the run's own, as a check) and by forward-mode AD, and under a bf16 copy of the model: central
differences with the K blocks in float32 (the library's rule), the JVP in bf16, and central differences left in bf16
(what the rule prevents) — and propagation's held-out Spearman is computed from each with the run's exact landmark
influence, kernel and ridge. Only the landmarks are embedded, so this takes minutes, not a pool's worth.

    influence-distill benchmark --out runs/suite --methods influence --select-only
    .venv/bin/python benchmarks/bench_embedding_dtype.py --runs runs/suite [--threads 2]
"""

from __future__ import annotations

import argparse
import dataclasses
import json
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import torch
from common import write_json

from influence_distillation import (
    EmbeddingConfig,
    ModelConfig,
    choose_landmarks,
    load_model,
    load_samples,
    tokenize_samples,
    truncated_backbone,
)
from influence_distillation.method import JvpEmbedder, heldout_fidelity, make_embedder


def ways(model, bf16, config: EmbeddingConfig, seed: int) -> dict:
    """Way → its embedder; the float32 run's own first."""
    with_method = lambda method: dataclasses.replace(config, method=method)
    return {"float32, central differences (the default)": lambda: make_embedder(model, with_method("difference"), seed),
            "float32, JVP": lambda: make_embedder(model, with_method("jvp"), seed),
            "bf16 model, central differences, K blocks in float32 (the rule)":
                lambda: make_embedder(bf16, with_method("difference"), seed),
            "bf16 model, JVP in bf16": lambda: make_embedder(bf16, with_method("jvp"), seed),
            "bf16 model, central differences in bf16": lambda: JvpEmbedder(
                truncated_backbone(bf16, config.num_blocks, attention="sdpa"), config.num_tangents, config.dim, seed,
                poolings=config.poolings(), method="difference")}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", default="runs/suite", help="a benchmark folder with select-TARGET-influence runs")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--out", default="runs/bench_embedding_dtype.json")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    runs = sorted(Path(args.runs).glob("select-*-influence"))
    if not runs:
        parser.error(f"no select-TARGET-influence run under {args.runs}; run `influence-distill benchmark --out "
                     f"{args.runs} --methods influence --select-only` first")
    first_manifest = json.loads((runs[0] / "manifest.json").read_text())
    model_config = ModelConfig(**{**first_manifest["config"]["model"], "dtype": "float32"})
    model, tokenizer = load_model(model_config)
    bf16 = load_model(ModelConfig(**{**model_config.__dict__, "dtype": "bfloat16"}))[0]
    pool = {s.id: s for s in load_samples(first_manifest["config"]["pool"], "pool")}
    rows = []
    for run in runs:
        manifest = json.loads((run / "manifest.json").read_text())
        config, seeds = manifest["config"], manifest["seeds"]
        ids = pq.read_table(run / "scores.parquet").column("id").to_pylist()
        first = choose_landmarks(len(ids), config["landmarks"]["count"], seeds["landmarks"], "random")
        examples = tokenize_samples([pool[ids[i]] for i in first], tokenizer, config["data"]["max_length"], True,
                                    "landmarks", progress=False).examples
        examples = [examples[i] for i in range(len(examples))]
        stored = torch.from_numpy(np.load(run / "embeddings.npy"))[torch.as_tensor(first)]
        values = torch.from_numpy(np.load(run / "target_scores.npy")[first])
        kernel = config["propagation"]
        embedding = EmbeddingConfig(**config["embedding"])
        row = {"target": run.name.removeprefix("select-").removesuffix("-influence")}
        for name, embedder in ways(model, bf16, embedding, seeds["tangents"]).items():
            rows_ = embedder()(examples)
            row[name] = {"spearman": heldout_fidelity(rows_, values, kernel["ridge"], kernel["bandwidth"], 0,
                                                      tune=kernel["tune"]),
                         "relative_error": float(((rows_ - stored).norm(dim=1) / stored.norm(dim=1)).median())}
        print(json.dumps(row), flush=True)
        rows.append(row)
    names = [k for k in rows[0] if k != "target"]
    print("\n| target | " + " | ".join(names) + " |\n|---|" + "---|" * len(names))
    for row in rows:
        print(f"| {row['target']} | " + " | ".join(f"{row[n]['spearman']:.3f}" for n in names) + " |")
    print("| median relative error | " + " | ".join(f"{rows[0][n]['relative_error']:.1e}" for n in names) + " |")
    write_json(Path(args.out), {"args": vars(args), "rows": rows})


if __name__ == "__main__":
    main()
