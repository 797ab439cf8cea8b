"""Issue 39's gap to `exact`: which of the default's knobs — first landmarks, verification landmarks, their rounds,
the share given to the target samples' neighbours — brings its selection closest to exact first-order influence.
For every target of a benchmark folder with both a `select-TARGET-influence` and a `select-TARGET-exact` run, the
default's selection is replayed offline with the library's own `verify_landmarks`, `propagate` and `select`, each
landmark's exact influence looked up in the exact run's scores instead of computed: a variant costs a KRR, not a
gradient. Replaying the run's own settings at its own seed must give back its picks (printed; exit 1 if not).

Reported per variant, mean ± std over landmark draws: how many of exact's picks it shares, and the mean exact
influence (over the target samples) of its picks as a share of exact's picks' — a proxy for the fine-tuned loss,
which is what decides (docs/BENCHMARKS.md, "What closes the gap to exact").

    influence-distill benchmark --out runs/suite --methods influence,exact --select-only
    .venv/bin/python benchmarks/bench_verification.py --runs runs/suite
"""

from __future__ import annotations

import argparse
import functools
import json
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import torch
from common import write_json

from influence_distillation import (
    EmbeddingConfig,
    ModelConfig,
    PropagationConfig,
    choose_landmarks,
    load_model,
    load_samples,
    propagate,
    select,
    tokenize_samples,
)
from influence_distillation.method import make_embedder, verify_landmarks
from influence_distillation.run import derive_seed

DEFAULT_VARIANTS = ("128x120x1x0.5,128x240x1x0.5,128x240x2x0.5,128x240x2x0.25,128x240x2x0.75,128x360x3x0.5,"
                    "256x120x1x0.5,256x240x1x0.5,512x120x1x0.5,512x240x1x0.5,1024x120x1x0.5")


def replay(embeddings, exact, queries, skipped, budget, strategy: str, kernel: PropagationConfig, seeds: dict,
           landmarks: int, verify: int, rounds: int, near: float) -> np.ndarray:
    """The default's selection with these counts, every landmark's influence read from `exact` (N, t)."""
    first = choose_landmarks(len(exact), landmarks, seeds["landmarks"], "random")
    measure = lambda rows, _round: torch.from_numpy(exact[rows]).double()
    rows, values = first, measure(first, 0)
    if verify:
        rows, values, _ = verify_landmarks(embeddings, first, values, verify, rounds, kernel, seeds["kernel"],
                                           measure, None, queries, near, None, skipped)
    scores, _ = propagate(embeddings, rows, values.float(), kernel, seeds["kernel"], None)
    eligible = np.ones(len(exact), dtype=bool)
    eligible[skipped] = False
    return select(scores, budget, strategy, seeds["selection"], eligible)


@functools.cache
def pool_answer_lengths(path: str, max_length: int, tokenizer) -> dict[str, int]:
    """Pool id → its trained answer's tokens, for the answer floor: tokenized once, the targets share the pool."""
    pool = tokenize_samples(load_samples(path, "pool"), tokenizer, max_length, True, "pool", progress=False)
    return dict(zip(pool.ids, pool.examples.answer_lengths().tolist()))


def target_rows(run: Path, exact_run: Path, model, tokenizer, variants, draws: int) -> dict:
    manifest = json.loads((run / "manifest.json").read_text())
    config, seeds = manifest["config"], manifest["seeds"]
    ids = pq.read_table(run / "scores.parquet").column("id").to_pylist()
    if ids != pq.read_table(exact_run / "scores.parquet").column("id").to_pylist():
        raise SystemExit(f"{run} and {exact_run} rank different pools; rerun them on the same data")
    max_length = config["data"]["max_length"]
    answer_lengths = pool_answer_lengths(config["pool"], max_length, tokenizer)
    target_set = tokenize_samples(load_samples(config["target"], "target"), tokenizer, max_length, True, "target",
                                  progress=False)
    floor = manifest["selection"].get("answer_floor_tokens")
    lengths = np.array([answer_lengths[i] for i in ids])
    skipped = np.flatnonzero(lengths < floor) if floor else np.zeros(0, dtype=np.int64)
    if len(skipped) != manifest["selection"].get("below_answer_floor", 0):
        raise SystemExit(f"{run}: the answer floor leaves out {len(skipped)} samples here, the run "
                         f"{manifest['selection'].get('below_answer_floor', 0)}; was the pool changed?")
    embedder = make_embedder(model, EmbeddingConfig(**config["embedding"]), seeds["tangents"])
    queries = embedder([target_set.examples[i] for i in range(len(target_set.examples))])
    embeddings = torch.from_numpy(np.load(run / "embeddings.npy"))
    exact = np.load(exact_run / "target_scores.npy")
    exact_picks = np.flatnonzero(pq.read_table(exact_run / "scores.parquet").column("selected").to_numpy())
    own_picks = np.flatnonzero(pq.read_table(run / "scores.parquet").column("selected").to_numpy())
    budget, kernel = config["selection"]["budget"], PropagationConfig(**config["propagation"])
    strategy = manifest["selection"]["strategy"]
    mean_exact = exact.mean(1)
    best = mean_exact[exact_picks].mean()

    def measured(picks) -> tuple[int, float]:
        return len(np.intersect1d(picks, exact_picks)), float(mean_exact[picks].mean() / best)

    landmarks = config["landmarks"]
    own = replay(embeddings, exact, queries, skipped, budget, strategy, kernel, seeds, manifest["landmarks"]["first"],
                 manifest["landmarks"]["verified"], landmarks["verify_rounds"], landmarks["verify_neighbours"])
    out = {"target": run.name.removeprefix("select-").removesuffix("-influence"),
           "budget": budget, "replayed_own_picks": len(np.intersect1d(own, own_picks)), "own": measured(own_picks),
           "variants": {}}
    for variant in variants:
        count, verify, rounds, near = variant
        found = [measured(replay(embeddings, exact, queries, skipped, budget, strategy, kernel,
                                 {k: derive_seed(draw, k) for k in ("landmarks", "kernel", "selection")},
                                 int(count), int(verify), int(rounds), near)) for draw in range(draws)]
        out["variants"]["x".join(f"{v:g}" for v in variant)] = np.array(found).tolist()
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", default="runs/suite", help="a benchmark folder with select-TARGET-influence and "
                        "select-TARGET-exact runs")
    parser.add_argument("--variants", default=DEFAULT_VARIANTS,
                        help="comma-separated LANDMARKSxVERIFYxROUNDSxNEAR (NEAR: the neighbours' share)")
    parser.add_argument("--draws", type=int, default=3, help="landmark draws (select seeds 0, 1, …) per variant")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--out", default="runs/bench_verification.json")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    variants = [tuple(float(x) for x in v.split("x")) for v in args.variants.split(",")]
    pairs = [(run, run.with_name(run.name.removesuffix("-influence") + "-exact"))
             for run in sorted(Path(args.runs).glob("select-*-influence"))]
    pairs = [(run, exact) for run, exact in pairs if (exact / "target_scores.npy").exists()]
    if not pairs:
        parser.error(f"no select-TARGET-influence with a select-TARGET-exact beside it under {args.runs}; run "
                     f"`influence-distill benchmark --out {args.runs} --methods influence,exact --select-only` first")
    model_config = ModelConfig(**json.loads((pairs[0][0] / "manifest.json").read_text())["config"]["model"])
    model, tokenizer = load_model(model_config)
    rows = []
    for run, exact in pairs:
        row = target_rows(run, exact, model, tokenizer, variants, args.draws)
        print(f"{row['target']}: replaying the run gives back {row['replayed_own_picks']} of its {row['budget']} "
              "picks", flush=True)
        rows.append(row)
    names = list(rows[0]["variants"])
    print("\nshared with exact's picks / their mean exact influence as a share of exact's picks' (mean ± std over "
          f"{args.draws} draws); LANDMARKSxVERIFYxROUNDSxNEAR")
    print("| variant | " + " | ".join(r["target"] for r in rows) + " |\n|---|" + "---|" * len(rows))
    for name in names:
        cells = []
        for r in rows:
            found = np.array(r["variants"][name])
            cells.append(f"{found[:, 0].mean():.0f} / {found[:, 1].mean():.3f} ± {found[:, 1].std():.3f}")
        print(f"| {name} | " + " | ".join(cells) + " |")
    write_json(Path(args.out), {"args": vars(args), "rows": rows})
    if any(row["replayed_own_picks"] != row["budget"] for row in rows):
        raise SystemExit("a replay did not give back its run's own selection: the variants above are not comparable")


if __name__ == "__main__":
    main()
