"""Fidelity of landmark propagation against exact influence, on the benchmark suite (the paper's Table 3 / Figure 3
analogue, extended to the long-context reading targets where propagation from last-token embeddings failed).

Usage (after the suite's exact runs: `influence-distill benchmark --out runs/suite --methods exact`):

    .venv/bin/python benchmarks/bench_fidelity.py --bench runs/suite [--out runs/fidelity] [--seeds 5]

The exact first-order influence of every pool sample on every target sample is read from the `exact` runs, so any
landmark set's values are rows of it and each configuration costs KRR fits, no gradients; verification landmarks are
simulated the way `select --verify` places them (`method.verify_landmarks`). Metrics, each the mean over `--seeds`
landmark draws (± the std over draws) and over the targets of a group (long context: multirc, quoref; the demo's:
math, reading, knowledge):

* Spearman: rank correlation of propagated and exact influence over the non-landmark pool samples, per target
  sample, averaged;
* recall: the share of the exact top-k (by mean influence over target samples) in the propagated top-k;
* overlap: the share of the exact round-robin selection in the propagated one (what `select` trains on);
* captured: the exact mean influence summed over the propagated round-robin selection, relative to the exact
  selection's (1 = as good as exact influence by its own measure).

Embeddings: JVP with K in {1, 2, 4} blocks (m = 1) read by every pooling of `embeddings.POOLINGS` (`jvp<K>-<pooling>`)
and the K-block hidden states under the same poolings (`hid<K>-<pooling>`, free with the JVP pass); RDS+ and MiniLM;
the loss gradient of the last block's MLP down-projection (`grad-last`, `--embedding-method gradient`); and, as a
ceiling, the exact projected gradients themselves (`gradients`).
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import torch
from tqdm.auto import tqdm

from influence_distillation import ModelConfig, load_model, load_samples, tokenize_samples
from influence_distillation.artifacts import fingerprint, write_json, write_npy
from influence_distillation.config import PropagationConfig
from influence_distillation.data.tokenization import collate, length_batches
from influence_distillation.method import propagate, verify_landmarks
from influence_distillation.method.baselines import minilm_embeddings, rds_embeddings
from influence_distillation.method.embeddings import (
    POOLINGS,
    GradientEmbedder,
    difference_outputs,
    jvp_outputs,
    sample_tangents,
)
from influence_distillation.method.landmarks import choose_landmarks
from influence_distillation.method.selection import select
from influence_distillation.model.blocks import truncated_backbone
from influence_distillation.stats import spearman

LONG = ("multirc", "quoref")
FRACTIONS = (0.01, 0.02, 0.05, 0.1, 0.2)
BLOCKS = (1, 2, 4)


def load_exact(bench: Path) -> tuple[dict[str, np.ndarray], list[str], dict]:
    """target → exact influence (N, t), the pool ids in row order, and one exact run's manifest."""
    exact, ids, manifest = {}, None, None
    for folder in sorted(bench.glob("select-*-exact")):
        if (folder / "target_scores.npy").is_file():
            target = folder.name[len("select-"):-len("-exact")]
            exact[target] = np.load(folder / "target_scores.npy").astype(np.float64)
            ids = pq.read_table(folder / "scores.parquet").to_pydict()["id"]
            manifest = json.loads((folder / "manifest.json").read_text())
    if not exact:
        raise SystemExit(f"{bench}: no finished select-*-exact runs; run the benchmark with --methods exact first")
    return exact, ids, manifest


def jvp_pass(model, examples, blocks: int, seed: int = 7, batch_size: int = 8) -> dict[str, torch.Tensor]:
    """One forward-mode pass over the pool: the tangent and the primal K-block outputs under every pooling."""
    backbone = truncated_backbone(model, blocks)
    tangents = sample_tangents(dict(backbone.named_parameters()), 1, seed)
    width, parts = backbone.config.hidden_size, len(POOLINGS)
    tangent, primal = torch.empty(len(examples), parts, width), torch.empty(len(examples), parts, width)
    for rows in tqdm(length_batches([len(e) for e in examples], batch_size), desc=f"JVP K={blocks}", unit="batch"):
        with torch.no_grad():
            u, h = jvp_outputs(backbone, tangents, collate([examples[i] for i in rows], 0), POOLINGS,
                               with_primal=True)
        tangent[rows] = u[:, 0].reshape(len(rows), parts, width).float()
        primal[rows] = h.reshape(len(rows), parts, width).float()
    return {**{f"jvp{blocks}-{p}": tangent[:, i].clone() for i, p in enumerate(POOLINGS)},
            **{f"hid{blocks}-{p}": primal[:, i].clone() for i, p in enumerate(POOLINGS)}}


def difference_pass(model, examples, blocks: int, seed: int = 7, batch_size: int = 8) -> torch.Tensor:
    """`jvp_pass`'s last-token tangent outputs by central differences (`--embedding-method difference`)."""
    backbone = truncated_backbone(model, blocks)
    tangents = sample_tangents(dict(backbone.named_parameters()), 1, seed)
    out = torch.empty(len(examples), backbone.config.hidden_size)
    for rows in tqdm(length_batches([len(e) for e in examples], batch_size), desc=f"differences K={blocks}"):
        with torch.no_grad():
            out[rows] = difference_outputs(backbone, tangents, collate([examples[i] for i in rows], 0)).float()[:, 0]
    return out


def gradient_sketch(bench: Path, manifest: dict, rows: int, dim: int = 576) -> torch.Tensor:
    """The exact runs' projected pool gradients, Gaussian-projected to `dim`: the embedding no cheap one can beat."""
    key = manifest["cache"]["stages"]["landmark_gradients"][:16]
    folder = bench / "cache" / f"landmark_gradients-{key}"
    shards = sorted(folder.glob("shard-*.npy"))
    gradients = torch.from_numpy(np.concatenate([np.load(p) for p in shards]))
    assert gradients.shape[0] == rows, f"{folder}: {gradients.shape[0]} rows, expected {rows}"
    projection = torch.randn(gradients.shape[1], dim, generator=torch.Generator().manual_seed(0)) / dim**0.5
    return gradients @ projection


def embeddings(bench: Path, out: Path, ids: list[str], manifest: dict) -> tuple[dict, dict]:
    """Every embedding of the pool (cached under OUT/cache) and the cold seconds of each pass."""
    cache = out / "cache"
    cache.mkdir(parents=True, exist_ok=True)
    key = fingerprint(ids=ids, max_length=manifest["config"]["data"]["max_length"], version=2)[:12]
    timing_path = cache / f"seconds-{key}.json"
    seconds = json.loads(timing_path.read_text()) if timing_path.is_file() else {}
    wanted = [f"{kind}{k}-{p}" for k in BLOCKS for kind in ("jvp", "hid") for p in POOLINGS] + [
        "dif2-last", "dif4-last", "rds", "minilm", "gradients", "grad-last"]
    path = lambda name: cache / f"{name}-{key}.npy"  # noqa: E731
    if not all(path(name).is_file() for name in wanted):
        model, tokenizer = load_model(ModelConfig(path=manifest["config"]["model"]["path"]))
        samples = load_samples(manifest["config"]["pool"])
        pool = tokenize_samples(samples, tokenizer, manifest["config"]["data"]["max_length"])
        assert pool.ids == ids, "the pool must be tokenised exactly as in the exact runs"
        for blocks in BLOCKS:
            if not path(f"jvp{blocks}-last").is_file():
                start = time.perf_counter()
                for name, value in jvp_pass(model, pool.examples, blocks).items():
                    write_npy(path(name), value.numpy())
                seconds[f"jvp{blocks}"] = time.perf_counter() - start
        for blocks in (2, 4):  # the same tangents as jvp<K>-last, by central differences
            if not path(f"dif{blocks}-last").is_file():
                start = time.perf_counter()
                write_npy(path(f"dif{blocks}-last"), difference_pass(model, pool.examples, blocks).numpy())
                seconds[f"dif{blocks}"] = time.perf_counter() - start
        by_id = {s.id: s for s in samples}
        for name, compute in (("rds", lambda: rds_embeddings(model, pool.examples)),
                              ("minilm", lambda: minilm_embeddings([by_id[i] for i in ids])),
                              ("gradients", lambda: gradient_sketch(bench, manifest, len(ids))),
                              ("grad-last", lambda: GradientEmbedder(model, 4096, seed=7)(pool.examples, True))):
            if not path(name).is_file():
                start = time.perf_counter()
                write_npy(path(name), compute().numpy())
                seconds[name] = time.perf_counter() - start
        write_json(timing_path, seconds)
    return {name: torch.from_numpy(np.load(path(name))) for name in wanted}, seconds


def features(table: dict[str, torch.Tensor], name: str) -> torch.Tensor:
    """An embedding, or several joined by '+', each block scaled to unit RMS distance to its mean."""
    parts = [table[part].double() for part in name.split("+")]
    if len(parts) == 1:
        return parts[0]
    scaled = [p / (p - p.mean(0)).square().sum(1).mean().sqrt() for p in parts]
    return torch.cat(scaled, 1) / len(parts) ** 0.5


def run_config(points, exact, budget, seeds, fraction=0.05, verify=0.0, strategy="random", tune=False,
               rounds=1) -> dict[str, dict[str, list[float]]]:
    """Metrics per target (lists over landmark draws) of one propagation setting; `verify` is a multiple of the
    budget, as `select --verify`."""
    n = points.shape[0]
    config = PropagationConfig(tune=tune)
    out = {t: {"spearman": [], "recall": [], "overlap": [], "captured": []} for t in exact}
    for seed in range(seeds):
        first = choose_landmarks(n, fraction, seed=seed, strategy=strategy, embeddings=points)
        for target, values_np in exact.items():
            values = torch.from_numpy(values_np)
            landmarks = first
            if verify:
                landmarks, _, _ = verify_landmarks(points, first, values[first], round(verify * budget), rounds,
                                                   config, seed, lambda rows, _: values[torch.as_tensor(rows)])
            predicted, _ = propagate(points, landmarks, values[torch.as_tensor(landmarks)], config, seed)
            others = np.setdiff1d(np.arange(n), landmarks)
            out[target]["spearman"].append(float(np.mean([
                spearman(torch.from_numpy(predicted[others, j]), values[others, j]) for j in range(values.shape[1])])))
            mean = values_np.mean(1)
            top_true, top_pred = np.argsort(-mean)[:budget], np.argsort(-predicted.mean(1))[:budget]
            out[target]["recall"].append(len(np.intersect1d(top_true, top_pred)) / budget)
            overlap, captured = selection_agreement(values_np, predicted, budget)
            out[target]["overlap"].append(overlap)
            out[target]["captured"].append(captured)
    return out


def selection_agreement(exact: np.ndarray, predicted: np.ndarray, budget: int) -> tuple[float, float]:
    """The share of the exact round-robin selection in the predicted one, and the exact mean influence the predicted
    selection captures relative to the exact selection's."""
    chosen_true, chosen = select(exact, budget, "round-robin", 0), select(predicted, budget, "round-robin", 0)
    mean = exact.mean(1)
    return len(np.intersect1d(chosen_true, chosen)) / budget, float(mean[chosen].sum() / mean[chosen_true].sum())


def summary(result, group) -> dict[str, float]:
    """Group means; the std over landmark draws of the group-mean Spearman."""
    per_draw = np.mean([result[t]["spearman"] for t in group], axis=0)
    return {"spearman": float(per_draw.mean()), "spearman_std": float(per_draw.std()),
            **{m: float(np.mean([result[t][m] for t in group])) for m in ("recall", "overlap", "captured")}}


# (label, embedding, settings): the paper's propagation, the changes tried for issue 12, and the new default.
CONFIGS = [
    ("paper: last token, K=2", "jvp2-last", {}),
    ("paper: last token, K=4", "jvp4-last", {}),
    ("mean pooling, K=2", "jvp2-mean", {}),
    ("position-weighted pooling, K=2", "jvp2-weighted", {}),
    ("completion pooling, K=2", "jvp2-completion", {}),
    ("last + mean, K=2", "jvp2-last+jvp2-mean", {}),
    ("last + mean, K=4", "jvp4-last+jvp4-mean", {}),
    ("last + completion, K=4", "jvp4-last+jvp4-completion", {}),
    ("last token + K-block hidden state, K=2", "jvp2-last+hid2-last", {}),
    ("K-block hidden state (no JVP), K=2", "hid2-last", {}),
    ("JVP K=1", "jvp1-last", {}),
    ("central differences instead of JVP, K=2", "dif2-last", {}),
    ("central differences instead of JVP, K=4", "dif4-last", {}),
    ("central differences + verification x1, K=2", "dif2-last", {"verify": 1.0}),
    ("RDS+ hidden states", "rds", {}),
    ("MiniLM", "minilm", {}),
    ("KRR tuned by leave-one-out, K=2", "jvp2-last", {"tune": True}),
    ("k-means++ landmarks, K=2", "jvp2-last", {"strategy": "kmeans++"}),
    ("random landmarks at the default's cost (5% + budget), K=2", "jvp2-last", {"fraction": "cost"}),
    ("verification x0.5 budget, K=2", "jvp2-last", {"verify": 0.5}),
    ("**verification x1 budget, K=2 (new default, demo K)**", "jvp2-last", {"verify": 1.0}),
    ("verification x1 budget, 3 rounds, K=2", "jvp2-last", {"verify": 1.0, "rounds": 3}),
    ("verification x2 budget, K=2", "jvp2-last", {"verify": 2.0}),
    ("**verification x1 budget, K=4 (new default, library K)**", "jvp4-last", {"verify": 1.0}),
    ("verification x1 budget, last + mean, K=4", "jvp4-last+jvp4-mean", {"verify": 1.0}),
    ("gradient embedding (last block's down-projection)", "grad-last", {}),
    ("gradient embedding + verification x1", "grad-last", {"verify": 1.0}),
    ("ceiling: exact gradients as the embedding", "gradients", {}),
    ("ceiling: exact gradients + verification x1", "gradients", {"verify": 1.0}),
]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--bench", default="runs/suite")
    parser.add_argument("--out", default="runs/fidelity")
    parser.add_argument("--seeds", type=int, default=5, help="landmark draws per configuration")
    parser.add_argument("--budget", type=int, default=0, help="k (default: the benchmark's)")
    parser.add_argument("--replot", action="store_true", help="only print the tables and draw the plot again from "
                        "OUT/fidelity.json")
    args = parser.parse_args()
    bench, out = Path(args.bench), Path(args.out)
    if args.replot:
        saved = json.loads((out / "fidelity.json").read_text())
        return report(saved["rows"], saved["sweep"], saved["groups"], out)
    exact, ids, manifest = load_exact(bench)
    budget = args.budget or manifest["config"]["selection"]["budget"]
    table, seconds = embeddings(bench, out, ids, manifest)
    groups = {"long context": [t for t in exact if t in LONG], "demo targets": [t for t in exact if t not in LONG]}
    rows = []
    for label, name, settings in CONFIGS:
        settings = dict(settings)
        if settings.get("fraction") == "cost":
            settings["fraction"] = 0.05 + budget / len(ids)
        result = run_config(features(table, name), exact, budget, args.seeds, **settings)
        rows.append({"label": label, "embedding": name, "settings": settings, "per_target": result,
                     **{group: summary(result, targets) for group, targets in groups.items() if targets}})
        print(format_row(rows[-1], groups), flush=True)
    sweep = []
    for label, name, settings in (("paper, K=2", "jvp2-last", {}), ("verification, K=2", "jvp2-last", {"verify": 1.0}),
                                  ("paper, K=4", "jvp4-last", {}), ("verification, K=4", "jvp4-last", {"verify": 1.0}),
                                  ("gradient embedding", "grad-last", {}),
                                  ("gradient embedding + verification", "grad-last", {"verify": 1.0})):
        for fraction in FRACTIONS:
            result = run_config(features(table, name), exact, budget, args.seeds, fraction=fraction, **settings)
            sweep.append({"label": label, "fraction": fraction, "landmarks": round(fraction * len(ids)),
                          **{group: summary(result, targets) for group, targets in groups.items() if targets}})
    write_json(out / "fidelity.json", {"budget": budget, "seeds": args.seeds, "pool": len(ids), "groups": groups,
                                       "embedding_seconds": seconds, "rows": rows, "sweep": sweep})
    report(rows, sweep, groups, out)


def format_row(row, groups) -> str:
    cells = []
    for group in groups:
        if group in row:
            g = row[group]
            cells.append(f"{g['spearman']:.3f}±{g['spearman_std']:.3f} | {g['recall']:.2f} | {g['overlap']:.2f} | "
                         f"{g['captured']:.2f}")
    return f"| {row['label']} | " + " | ".join(cells) + " |"


def report(rows, sweep, groups, out: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = [g for g in groups if groups[g]]
    print("\n| setting | " + " | ".join(f"{g}: Spearman | recall | overlap | captured" for g in names) + " |")
    print("|---|" + "---|---|---|---|" * len(names))
    for row in rows:
        print(format_row(row, groups))
    print("\n| setting | landmarks | " + " | ".join(f"{g}: Spearman / captured" for g in names) + " |")
    print("|---|---|" + "---|" * len(names))
    for row in sweep:
        cells = [f"{row[g]['spearman']:.3f} / {row[g]['captured']:.2f}" for g in names]
        print(f"| {row['label']} | {row['fraction']:.0%} ({row['landmarks']}) | " + " | ".join(cells) + " |")
    fig, axes = plt.subplots(1, len(names), figsize=(5.5 * len(names), 4), squeeze=False)
    for ax, group in zip(axes[0], names):
        for label in dict.fromkeys(r["label"] for r in sweep):
            mine = [r for r in sweep if r["label"] == label]
            ax.plot([r["landmarks"] for r in mine], [r[group]["captured"] for r in mine], marker="o", label=label)
        counts = sorted({r["landmarks"] for r in sweep})
        ax.set_xscale("log")
        ax.set_xticks(counts, [str(c) for c in counts])
        ax.minorticks_off()
        ax.set_xlabel("random landmarks (verification adds the budget on top)")
        ax.set_ylabel("exact influence captured by the selection")
        ax.set_title(group)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(out / "fidelity.png", dpi=110)


if __name__ == "__main__":
    main()
