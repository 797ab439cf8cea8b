"""Exploration harness (issue 12): which embedding / KRR / landmark choice propagates exact influence best."""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import torch
from tqdm.auto import tqdm

from influence_distillation import (
    ModelConfig,
    load_model,
    load_samples,
    tokenize_samples,
)
from influence_distillation.baselines import minilm_embeddings, rds_embeddings
from influence_distillation.method.embeddings import POOLINGS, jvp_outputs, sample_tangents
from influence_distillation.method.landmarks import choose_landmarks
from influence_distillation.method.propagation import (
    fit_kernel_ridge,
    spearman,
    tune_kernel_ridge,
)
from influence_distillation.method.selection import select
from influence_distillation.runtime.models import truncated_backbone
from influence_distillation.runtime.tokenization import collate, length_batches

BENCH = Path("runs/suite")
CACHE = Path("runs/fidelity/cache")
LONG = ("multirc", "quoref")


def load_exact(bench: Path):
    targets = json.loads((bench / "data" / "data.json").read_text())["targets"]
    exact, ids = {}, None
    for t in targets:
        folder = bench / f"select-{t}-exact"
        if (folder / "target_scores.npy").is_file():
            exact[t] = np.load(folder / "target_scores.npy").astype(np.float64)
            ids = pq.read_table(folder / "scores.parquet").to_pydict()["id"]
    return exact, ids


def jvp_variants(model, examples, blocks, seed=7, batch_size=8):
    backbone = truncated_backbone(model, blocks)
    tangents = sample_tangents(dict(backbone.named_parameters()), 1, seed)
    d = backbone.config.hidden_size
    tan = torch.empty(len(examples), len(POOLINGS), d)
    hid = torch.empty(len(examples), len(POOLINGS), d)
    for indices in tqdm(length_batches([len(e) for e in examples], batch_size), desc=f"JVP K={blocks}"):
        batch = collate([examples[i] for i in indices], 0)
        with torch.no_grad():
            u, h = jvp_outputs(backbone, tangents, batch, POOLINGS, with_primal=True)
        tan[indices] = u[:, 0].reshape(len(indices), len(POOLINGS), d).float()
        hid[indices] = h.reshape(len(indices), len(POOLINGS), d).float()
    out = {}
    for i, p in enumerate(POOLINGS):
        out[f"jvp{blocks}-{p}"] = tan[:, i].clone()
        out[f"hid{blocks}-{p}"] = hid[:, i].clone()
    return out


def embeddings(ids, which):
    CACHE.mkdir(parents=True, exist_ok=True)
    have = {p.stem: p for p in CACHE.glob("*.npy")}
    if all(w in have for w in which):
        return {w: torch.from_numpy(np.load(have[w])) for w in which}
    model, tokenizer = load_model(ModelConfig(path="smollm2-135m"))
    samples = load_samples(BENCH / "data" / "pool.jsonl")
    pool = tokenize_samples(samples, tokenizer, 512)
    assert pool.ids == ids
    for blocks in sorted({int(w[3]) for w in which if w[:3] in ("jvp", "hid") and w not in have}):
        start = time.perf_counter()
        for name, value in jvp_variants(model, pool.examples, blocks).items():
            np.save(CACHE / f"{name}.npy", value.numpy())
        print(f"K={blocks}: {time.perf_counter() - start:.0f} s", flush=True)
    if "rds" in which and "rds" not in have:
        np.save(CACHE / "rds.npy", rds_embeddings(model, pool.examples).numpy())
    if "minilm" in which and "minilm" not in have:
        kept = {s.id: s for s in samples}
        np.save(CACHE / "minilm.npy", minilm_embeddings([kept[i] for i in pool.ids]).numpy())
    return embeddings(ids, which)


def combine(parts: list[torch.Tensor]) -> torch.Tensor:
    """Concatenate feature blocks, each centred-RMS scaled so every block weighs the same in distances."""
    scaled = []
    for part in parts:
        part = part.double()
        rms = (part - part.mean(0)).square().sum(1).mean().sqrt()
        scaled.append(part / rms)
    return torch.cat(scaled, 1) / np.sqrt(len(parts))


def finish(krr, points, landmarks, values, mode, delta):
    """Predictions for all rows with the landmark rows treated per `mode`."""
    from influence_distillation.method.propagation import leave_one_out, rbf_kernel
    predicted = krr.predict(points)
    if mode == "krr":
        return predicted
    if mode in ("loo", "calibrate"):
        L = points[landmarks]
        loo = leave_one_out(rbf_kernel(L, L, krr.bandwidth), values[landmarks], [krr.ridge])[0]
        if mode == "loo":
            predicted[landmarks] = loo
            return predicted
        y = values[landmarks]
        lc, yc = loo - loo.mean(0), y - y.mean(0)
        slope = (lc * yc).sum(0) / lc.square().sum(0).clamp_min(1e-300)
        intercept = y.mean(0) - slope * loo.mean(0)
        predicted = intercept + slope * predicted
    predicted[landmarks] = values[landmarks]
    return predicted


def evaluate(points, exact, fraction, seeds, budget=120, strategy="random", tune=False, adaptive=0.0, ridge=0.01,
             bw=1.0, mode="exact", extra=0.0, rounds=1, pick="round-robin"):
    n = points.shape[0]
    rows = {t: {"spearman": [], "recall": [], "rr": []} for t in exact}
    for seed in range(seeds):
        for t, values_np in exact.items():
            values = torch.from_numpy(values_np)
            count = round((fraction + extra) * n)
            first = round(fraction * n * (1 - adaptive))
            landmarks = choose_landmarks(n, first, seed=seed, strategy=strategy, embeddings=points)
            if tune:
                sigma, delta, _ = tune_kernel_ridge(points[landmarks], values[landmarks], seed=seed)
            else:
                sigma, delta = None, ridge
            if bw != 1.0:
                from influence_distillation.method.propagation import median_bandwidth
                sigma = median_bandwidth(points[landmarks], seed=seed) * bw
            krr = fit_kernel_ridge(points[landmarks], values[landmarks], ridge=delta, bandwidth=sigma)
            predicted = finish(krr, points, landmarks, values, mode, delta)
            for r in range(rounds if count > first else 0):  # verification rounds
                size = round((count - first) * (r + 1) / rounds) - round((count - first) * r / rounds)
                masked = predicted.numpy().copy()
                masked[landmarks] = masked.min() - 1.0
                picks = select(masked, size, pick, seed)
                landmarks = np.union1d(landmarks, picks)
                krr = fit_kernel_ridge(points[landmarks], values[landmarks], ridge=delta, bandwidth=sigma)
                predicted = finish(krr, points, landmarks, values, mode, delta)
            others = np.setdiff1d(np.arange(n), landmarks)
            rows[t]["spearman"].append(np.mean([spearman(predicted[others, j], values[others, j])
                                                for j in range(values.shape[1])]))
            true_top = set(np.argsort(-values_np.mean(1))[:budget].tolist())
            pred_top = set(np.argsort(-predicted.mean(1).numpy())[:budget].tolist())
            rows[t]["recall"].append(len(true_top & pred_top) / budget)
            true_rr = set(select(values_np, budget, "round-robin", 0).tolist())
            pred_rr = set(select(predicted.numpy(), budget, "round-robin", 0).tolist())
            rows[t]["rr"].append(len(true_rr & pred_rr) / budget)
            rows[t].setdefault("lm", []).append(len(pred_rr & set(landmarks.tolist())) / budget)
            mean_exact = values_np.mean(1)
            rows[t].setdefault("cap", []).append(mean_exact[list(pred_rr)].sum() / mean_exact[list(true_rr)].sum())
    return {t: {k: (float(np.mean(v)), float(np.std(v))) for k, v in r.items()} for t, r in rows.items()}


def show(name, result):
    long = [t for t in result if t in LONG]
    short = [t for t in result if t not in LONG]
    cells = []
    for group in (long, short):
        for metric in ("spearman", "recall", "rr"):
            cells.append(f"{np.mean([result[t][metric][0] for t in group]):.3f}")
    per = " ".join(f"{t[:4]}={result[t]['spearman'][0]:.2f}/{result[t]['recall'][0]:.2f}/{result[t]['rr'][0]:.2f}"
                   for t in result) + f" lm={np.mean([result[t]['lm'][0] for t in result]):.2f}" + \
        f" cap long={np.mean([result[t]['cap'][0] for t in long]):.2f} demo={np.mean([result[t]['cap'][0] for t in short]):.2f}"
    print(f"{name:42s} long S/rec/rr {cells[0]} {cells[1]} {cells[2]} | demo {cells[3]} {cells[4]} {cells[5]} | {per}",
          flush=True)


if __name__ == "__main__":
    exact, ids = load_exact(BENCH)
    print("targets", list(exact))
    mode = sys.argv[1]
    if mode == "embed":
        embeddings(ids, sys.argv[2].split(","))
        sys.exit()
    names = sys.argv[2].split(";")
    seeds = int(sys.argv[3]) if len(sys.argv) > 3 else 3
    opts = json.loads(sys.argv[4]) if len(sys.argv) > 4 else {}
    for name in names:
        parts = name.split("+")
        emb = embeddings(ids, parts)
        points = combine([emb[p] for p in parts]) if len(parts) > 1 else emb[parts[0]].double()
        fraction = opts.pop("fraction", 0.05)
        show(name + (" " + json.dumps(opts) if opts else "") + f" {fraction:.0%}", evaluate(points, exact, fraction, seeds, **opts))
