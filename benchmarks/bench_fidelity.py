"""Fidelity of landmark propagation against exact influence (the paper's Table 3 / Figure 3 analogue).

Usage (after `influence-distill benchmark --out runs/benchmark`, whose `exact` runs hold the exact first-order
influence of every pool sample on every target sample):

    .venv/bin/python benchmarks/bench_fidelity.py --bench runs/benchmark [--out runs/fidelity]

Because the exact influence of every pool sample is known, any landmark set's values are rows of it, so each
(embedding, landmark strategy, landmark count) costs one KRR fit and no gradients. For each combination it reports
the Spearman correlation between propagated and exact influence over the non-landmark pool samples (per target
sample, averaged, then averaged over `--seeds` landmark draws) and the recall of the exact top-k by mean influence
(k = the benchmark's budget). Embeddings: JVP with K ∈ {1, 2, 4} blocks and m ∈ {1, 2} tangents, and m = 4 at
K = 2, RDS+ hidden states, MiniLM; the benchmark's own JVP setting, RDS+ and MiniLM embeddings are read from its runs
(with their cold times) instead of recomputed.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import torch

from influence_distillation import (
    EmbeddingConfig,
    ModelConfig,
    load_model,
    load_samples,
    tokenize_samples,
)
from influence_distillation.artifacts import fingerprint, write_npy
from influence_distillation.baselines import minilm_embeddings, rds_embeddings
from influence_distillation.demo import FULL
from influence_distillation.landmarks import choose_landmarks
from influence_distillation.propagation import fit_kernel_ridge, spearman
from influence_distillation.stages import compute_embeddings

FRACTIONS = (0.01, 0.02, 0.05, 0.1, 0.2)
STRATEGIES = ("random", "kmeans++", "k-center")
JVP = ((1, 2), (2, 2), (4, 2), (2, 1), (2, 4), (1, 1), (4, 1))  # (K blocks, m tangents)


def embeddings_of(name, model, examples, samples, cache: Path, key: str):
    """The embedding `name` of the pool, from the cache if computed before; with its cold time in seconds."""
    path = cache / f"{name}-{fingerprint(name=name, key=key)}.npy"
    timing = path.with_suffix(".seconds.json")
    if path.is_file():
        return torch.from_numpy(np.load(path)), json.loads(timing.read_text()) if timing.is_file() else None
    start = time.perf_counter()
    if name.startswith("jvp"):
        blocks, tangents = (int(x) for x in name[4:].split("m"))
        value = compute_embeddings(model, examples, EmbeddingConfig(num_blocks=blocks, num_tangents=tangents), 7)
    elif name == "rds+":
        value = rds_embeddings(model, examples)
    else:
        value = minilm_embeddings(samples)
    seconds = time.perf_counter() - start
    write_npy(path, value.numpy())
    timing.write_text(json.dumps(seconds))
    return value, seconds


# Embeddings the benchmark's own runs already wrote (same pool and model): the method and the manifest stage
# whose time is the embedding time (for the baselines it includes embedding the 32 target samples). Ours is reused
# for whichever JVP setting the benchmark ran.
FROM_BENCHMARK = {"jvp": ("influence", "embeddings"), "rds+": ("rds+", "scores"), "minilm": ("embed-sim", "scores")}


def from_benchmark(bench: Path, target: str, name: str, rows: int):
    method, stage = FROM_BENCHMARK.get(name.split("-")[0], (None, None))
    folder = bench / f"select-{target}-{method}"
    if method is None or not (folder / "embeddings.npy").is_file():
        return None
    manifest = json.loads((folder / "manifest.json").read_text())
    embedding = manifest["config"]["embedding"]
    if name.startswith("jvp") and name != f"jvp-{embedding['num_blocks']}m{embedding['num_tangents']}":
        return None
    value = torch.from_numpy(np.load(folder / "embeddings.npy"))
    if value.shape[0] != rows:
        return None
    return value, None if manifest["cache"]["reused"] else manifest["stages"][stage]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--bench", default="runs/benchmark")
    parser.add_argument("--out", default="runs/fidelity")
    parser.add_argument("--seeds", type=int, default=5,
                        help="landmark draws per (embedding, strategy, count); the tables report the mean")
    parser.add_argument("--embeddings-only", action="store_true",
                        help="only compute and cache the embeddings (needs one finished exact run, not the whole "
                             "benchmark), e.g. while the benchmark's fine-tunes run")
    args = parser.parse_args()
    bench, out = Path(args.bench), Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    if args.embeddings_only:
        settings = FULL
        targets = sorted(p.name[len("select-"):-len("-exact")] for p in bench.glob("select-*-exact")
                         if (p / "scores.parquet").is_file())
    else:
        settings = json.loads((bench / "benchmark.json").read_text())["settings"]
        targets = json.loads((bench / "benchmark.json").read_text())["targets"]
        exact = {t: np.load(bench / f"select-{t}-exact" / "target_scores.npy").astype(np.float64) for t in targets}
    budget = settings["budget"]
    ids = pq.read_table(bench / f"select-{targets[0]}-exact" / "scores.parquet").to_pydict()["id"]

    model, tokenizer = load_model(ModelConfig(path=json.loads((bench / f"select-{targets[0]}-exact" /
                                                               "manifest.json").read_text())["config"]["model"]["path"]))
    samples = load_samples(bench / "data" / "pool.jsonl")
    pool = tokenize_samples(samples, tokenizer, settings["max_length"])
    assert pool.ids == ids, "the pool must be tokenised exactly as in the benchmark's exact runs"
    kept = {s.id: s for s in samples}
    kept_samples = [kept[i] for i in pool.ids]
    cache, key = out / "cache", fingerprint(ids=ids, max_length=settings["max_length"])

    names = [f"jvp-{k}m{m}" for k, m in JVP] + ["rds+", "minilm"]
    embeddings, seconds = {}, {}
    for name in names:
        reused = from_benchmark(bench, targets[0], name, len(ids))
        if reused is not None:
            embeddings[name], seconds[name] = reused
        else:
            embeddings[name], seconds[name] = embeddings_of(name, model, pool.examples, kept_samples, cache, key)
        print(name, tuple(embeddings[name].shape), seconds[name], flush=True)
    if args.embeddings_only:
        return

    rows = []
    n = len(ids)
    top_true = {t: set(np.argsort(-exact[t].mean(1))[:budget].tolist()) for t in targets}
    for name, points in embeddings.items():
        for strategy in STRATEGIES:
            for fraction in FRACTIONS:
                spearmans, recalls = [], []  # one entry per (seed, target)
                for seed in range(args.seeds):
                    landmarks = choose_landmarks(n, fraction, seed=seed, strategy=strategy, embeddings=points)
                    others = np.setdiff1d(np.arange(n), landmarks)
                    for target in targets:
                        values = torch.from_numpy(exact[target])
                        krr = fit_kernel_ridge(points[landmarks], values[landmarks], ridge=0.01)
                        predicted = krr.predict(points)
                        predicted[landmarks] = values[landmarks]
                        spearmans.append(np.mean([spearman(predicted[others, j], values[others, j])
                                                  for j in range(values.shape[1])]))
                        top_pred = set(np.argsort(-predicted.mean(1).numpy())[:budget].tolist())
                        recalls.append(len(top_true[target] & top_pred) / budget)
                per_target = np.array(spearmans).reshape(args.seeds, len(targets))
                rows.append({"embedding": name, "strategy": strategy, "fraction": fraction,
                             "landmarks": len(landmarks), "seeds": args.seeds,
                             "spearman": float(np.mean(spearmans)),
                             "spearman_seed_std": float(per_target.mean(1).std()),
                             "recall": float(np.mean(recalls)),
                             "recall_seed_std": float(np.array(recalls).reshape(args.seeds, -1).mean(1).std()),
                             "per_target_spearman": dict(zip(targets, map(float, per_target.mean(0))))})
                print({k: v for k, v in rows[-1].items() if k != "per_target_spearman"}, flush=True)
    (out / "fidelity.json").write_text(json.dumps({"rows": rows, "embedding_seconds": seconds}, indent=2))
    report(rows, seconds, out)


def report(rows, seconds, out: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    print("\nRandom landmarks (Spearman ± std over landmark draws / top-k recall):\n")
    print("| embedding | embedding seconds | " + " | ".join(f"{f:.0%} landmarks" for f in FRACTIONS) + " |")
    print("|---|---|" + "---|" * len(FRACTIONS))
    for name in dict.fromkeys(r["embedding"] for r in rows):
        cells = [next(f"{r['spearman']:.3f}±{r['spearman_seed_std']:.3f} / {r['recall']:.2f}" for r in rows
                      if r["embedding"] == name and r["strategy"] == "random" and r["fraction"] == f)
                 for f in FRACTIONS]
        spent = "cached" if seconds.get(name) is None else f"{seconds[name]:.0f}"
        print(f"| {name} | {spent} | " + " | ".join(cells) + " |")
    print("\nLandmark strategies (Spearman / top-k recall, mean over landmark draws):\n")
    print("| embedding | strategy | " + " | ".join(f"{f:.0%}" for f in FRACTIONS) + " |")
    print("|---|---|" + "---|" * len(FRACTIONS))
    for name in dict.fromkeys(r["embedding"] for r in rows):
        for strategy in STRATEGIES:
            cells = [f"{r['spearman']:.3f} / {r['recall']:.2f}" for r in rows
                     if r["embedding"] == name and r["strategy"] == strategy]
            print(f"| {name} | {strategy} | " + " | ".join(cells) + " |")
    fig, axes = plt.subplots(1, 2, figsize=(11, 4))
    for name in dict.fromkeys(r["embedding"] for r in rows):
        mine = [r for r in rows if r["embedding"] == name and r["strategy"] == "random"]
        for ax, metric in zip(axes, ("spearman", "recall")):
            ax.plot([r["landmarks"] for r in mine], [r[metric] for r in mine], marker="o", label=name)
    counts = sorted({r["landmarks"] for r in rows})
    for ax, title in zip(axes, ("Spearman vs exact influence", "recall of the exact top-k")):
        ax.set_xscale("log")
        ax.set_xticks(counts, [str(c) for c in counts])
        ax.minorticks_off()
        ax.grid(alpha=0.3)
        ax.set_xlabel("landmarks (random; mean over landmark draws)")
        ax.set_title(title)
    axes[0].legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(out / "fidelity.png", dpi=110)


if __name__ == "__main__":
    main()
