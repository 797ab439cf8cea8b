"""The sections of a run's report: what was selected (scores, composition, per-target picks, weights), whether the
propagation held, what it cost, and how the selection trained. Each function reads a `RunData` and returns a
`Section`; `report.py` puts them on a page, the demo reuses them under its evaluation section.
"""

from __future__ import annotations

import json
from collections import Counter

import numpy as np

from influence_distillation.report.page import Code, Figure, Note, Section, Table, clip, figure_png
from influence_distillation.report.run_data import RunData, pool_groups, record_text, selection_groups

SELECTED_COLOR, POOL_COLOR, OTHER_COLOR = "#4e79a7", "#bbbbbb", "#f28e2b"
SCORE_MEANING = {
    "influence": "mean first-order influence over the target samples (propagated from landmarks)",
    "exact": "mean first-order influence over the target samples (exact, every pool sample)",
    "random": "a seeded random number",
    "mid-ppl": "the pool sample's loss (the selection is a band around the 33rd percentile)",
    "rds+": "cosine similarity of hidden states to the target samples (RDS+)",
    "embed-sim": "cosine similarity of MiniLM sentence embeddings to the target samples",
    "less": "LESS: cosine similarity of Adam-transformed gradients to the target gradients",
}
TOP_GROUPS = 12


def _fmt(value: float) -> str:
    return f"{value:.4g}"


def score_meaning(run: RunData) -> str:
    method = run.manifest.get("method", "influence")
    if method == "influence" and (run.manifest.get("influence") or {}).get("exact"):
        method = "exact"
    return SCORE_MEANING.get(method, "the method's score")


def overview(run: RunData, anchor: str = "overview") -> Section:
    manifest, counts = run.manifest, run.manifest.get("counts", {})
    pool, target = counts.get("pool", {}), counts.get("target", {})
    landmarks = manifest.get("landmarks") or {}
    config = run.config
    rows = [["method", run.method], ["created", str(manifest.get("created"))],
            ["model", f"{config.get('model', {}).get('path')} ({(manifest.get('model') or {}).get('class')}, "
                      f"{(manifest.get('model') or {}).get('parameters', 0) / 1e6:.0f}M parameters)"],
            ["pool", f"{config.get('pool')}: {pool.get('kept')} scored, {pool.get('excluded', 0)} excluded, "
                     f"{pool.get('truncated', 0)} truncated"],
            ["target", f"{config.get('target')}: {target.get('kept')} samples"],
            ["selected", f"{counts.get('selected')} ({(manifest.get('selection') or {}).get('strategy')})"]]
    if landmarks:
        rows.append(["landmarks", f"{landmarks.get('first')} first ({landmarks.get('strategy')}) + "
                                  f"{landmarks.get('verified', 0)} verification"])
    environment = manifest.get("environment", {})
    rows.append(["machine", f"{environment.get('device')}, {environment.get('dtype')}, "
                            f"{environment.get('threads')} threads, torch {environment.get('torch')}"])
    section = Section(anchor, "Run").add(Table(["", ""], rows))
    section.add(*(Note(note) for note in run.notes))
    return section


def cost(run: RunData, anchor: str = "cost") -> Section:
    stages, memory = run.manifest.get("stages", {}), run.manifest.get("peak_memory_gib", {})
    rows = [[name, f"{seconds:.1f}", f"{memory[name]:.2f}" if name in memory else "–"]
            for name, seconds in stages.items()]
    rows.append(["total", f"{sum(stages.values()):.1f}", f"{max(memory.values()):.2f}" if memory else "–"])
    section = Section(anchor, "Cost per stage").add(Table(["stage", "seconds", "peak memory (GiB)"], rows))
    flops = (run.manifest.get("cost") or {}).get("flops")
    if flops:
        section.add(f"Analytic compute: {flops / 1e12:.1f} TFLOP.")
    reused = (run.manifest.get("cache") or {}).get("reused") or []
    if reused:
        section.add(f"Reused from the stage cache (their seconds are reading, not computing): {', '.join(reused)}.")
    return section


def scores(run: RunData, anchor: str = "scores") -> Section:
    chosen = run.selected
    section = Section(anchor, "Scores: pool and selection")
    section.add(f"Score: {score_meaning(run)}. Higher ranks first.")
    quantiles = (0, 0.25, 0.5, 0.75, 1)
    rows = [[label, str(int(mask.sum())), *(_fmt(q) for q in np.quantile(run.scores[mask], quantiles))]
            for label, mask in (("pool", np.ones_like(chosen)), ("selection", chosen)) if mask.any()]
    section.add(Table(["", "samples", "min", "25%", "median", "75%", "max"], rows))
    if chosen.any() and not chosen.all():
        lowest = run.scores[chosen].min()
        above = float((run.scores >= lowest).mean())
        spread = run.scores.std()
        lift = (run.scores[chosen].mean() - run.scores.mean()) / spread if spread > 0 else 0.0
        section.add(f"The selection's mean score is {lift:.1f} pool standard deviations above the pool's mean; "
                    f"{above:.1%} of the pool scores at least the lowest selected score"
                    + (" (round-robin picks each target sample's best, so some picks sit low on the mean)."
                       if (run.manifest.get("selection") or {}).get("strategy") == "round-robin" else "."))
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(8, 3.2))
    draw_scores(ax, run, SELECTED_COLOR, bins=50)
    ax.set_xlabel("score")
    ax.set_ylabel("pool samples")
    ax.legend(fontsize=8)
    section.add(Figure(f"{anchor}-histogram", figure_png(fig), "score distribution of the pool and the selection"))
    return section


def draw_scores(ax, run: RunData, color: str, bins: int) -> None:
    """The run's score histogram on a log scale: the rest of the pool in grey, the selection in `color`."""
    low, high = float(run.scores.min()), float(run.scores.max())
    edges = np.linspace(low, high if high > low else low + 1, bins)
    ax.hist(run.scores[~run.selected], bins=edges, color=POOL_COLOR, label="not selected")
    ax.hist(run.scores[run.selected], bins=edges, color=color, label="selected")
    ax.set_yscale("log")


def composition(run: RunData, field: str | None, anchor: str = "composition") -> Section:
    by = f"record field '{field}'" if field else "id prefix"
    section = Section(anchor, f"Composition by {by}")
    chosen = Counter(selection_groups(run, field))
    groups = pool_groups(run, field)
    pool = Counter(groups) if groups is not None else None
    if pool is None:
        section.add(Note("the pool's records cannot be read from here: only the selection's composition is shown"))
    total_chosen, total_pool = sum(chosen.values()), sum(pool.values()) if pool else 0
    names = [name for name, _ in chosen.most_common()]
    rows = []
    for name in names[:TOP_GROUPS]:
        row = [name, str(chosen[name]), f"{chosen[name] / total_chosen:.1%}"]
        if pool:
            share = pool[name] / total_pool
            row += [str(pool[name]), f"{share:.1%}", f"{chosen[name] / total_chosen / share:.1f}×" if share else "–"]
        rows.append(row)
    if len(names) > TOP_GROUPS:
        rest = sum(chosen[name] for name in names[TOP_GROUPS:])
        rows.append([f"{len(names) - TOP_GROUPS} more groups", str(rest), f"{rest / total_chosen:.1%}"]
                    + (["", "", ""] if pool else []))
    header = ["group", "selected", "share"] + (["in pool", "pool share", "over-representation"] if pool else [])
    section.add(f"{len(names)} groups in the selection" + (f", {len(pool)} in the pool." if pool else "."),
                Table(header, rows))
    if pool:
        unpicked = [name for name, _ in pool.most_common() if name not in chosen][:5]
        if unpicked:
            section.add("Largest pool groups with no selected sample: " + ", ".join(unpicked) + ".")
    section.add(Figure(f"{anchor}-shares", share_bars([name for name in names[:TOP_GROUPS]],
                                                    {"selection": chosen, "pool": pool} if pool else
                                                    {"selection": chosen}), "selection and pool share per group"))
    return section


def share_bars(names: list[str], counters: dict[str, Counter | None]) -> bytes:
    import matplotlib.pyplot as plt

    colors = [SELECTED_COLOR, POOL_COLOR, OTHER_COLOR]
    fig, ax = plt.subplots(figsize=(8, 0.32 * max(len(names), 4) + 1))
    height = 0.8 / len(counters)
    y = np.arange(len(names))
    for i, (label, counter) in enumerate(counters.items()):
        total = sum(counter.values())
        ax.barh(y + (i - (len(counters) - 1) / 2) * height, [counter[n] / total for n in names], height,
                color=colors[i], label=label)
    ax.set_yticks(y, [clip(name, 40) for name in names], fontsize=7)
    ax.invert_yaxis()
    ax.set_xlabel("share of samples")
    ax.legend(fontsize=8)
    return figure_png(fig)


def fidelity(run: RunData, anchor: str = "fidelity") -> Section:
    section = Section(anchor, "Did the propagation hold?")
    propagation = run.manifest.get("propagation") or {}
    method, exact = run.manifest.get("method"), (run.manifest.get("influence") or {}).get("exact")
    if method != "influence":
        return section.add(f"Not applicable: `{method}` scores every pool sample directly, nothing is propagated.")
    if exact:
        return section.add("Not applicable: exact mode computed every pool sample's gradient; nothing is propagated.")
    value = propagation.get("heldout_spearman")
    if value is None:
        return section.add("No held-out fidelity was measured (too few landmarks to hold some out).")
    if value >= 0.8:
        reading = "good: propagation puts held-out landmarks in nearly their exact order."
    elif value >= 0.6:
        reading = ("fair: the broad order holds, the fine order near the top is uncertain; verification landmarks "
                   "(--verify) check the top of the ranking with exact gradients.")
    else:
        reading = "poor: the propagated order of held-out landmarks is far from their exact order."
    section.add(f"Held-out Spearman {value:.2f} — {reading}",
                "It is the rank correlation between the exact influence of landmarks left out of the fit and what "
                "the kernel ridge regression predicts for them from the others (1 = the same order, 0 = unrelated).")
    if propagation.get("warning"):
        section.add(Note(propagation["warning"]))
    landmarks = run.manifest.get("landmarks") or {}
    if landmarks.get("verified"):
        near = landmarks.get("near_targets", 0)
        where = f"{near} of them the pool samples nearest the target samples, the rest" if near else "the"
        section.add(f"{landmarks['verified']} verification landmarks ({where} top-ranked samples after a first "
                    "propagation) have exact values, so the head of the ranking does not rest on propagation alone.")
    return section


def target_picks(run: RunData, examples: int, per_target: int = 5, anchor: str = "targets") -> Section:
    section = Section(anchor, "What each target sample pulls in")
    if run.target_scores is None:
        return section.add("Per-target-sample scores are not available for this run.")
    count = min(examples, run.target_scores.shape[1])
    section.add(f"For the first {count} of {run.target_scores.shape[1]} target samples: the pool samples with the "
                f"highest score for that target sample alone ({score_meaning(run)}).")
    for column in range(count):
        values = np.asarray(run.target_scores[:, column], dtype=np.float64)
        top = np.argsort(-values, kind="stable")[:per_target]
        target = run.targets[column] if run.targets is not None else None
        caption = f"target sample {target.id if target else column}: " + (
            clip(record_text(target), 300) if target else "(target file not readable)")
        rows = [[str(rank + 1), run.ids[row], _fmt(values[row]), "yes" if run.selected[row] else "no",
                 clip(record_text(run.pool[run.ids[row]]), 220) if run.pool and run.ids[row] in run.pool else "–"]
                for rank, row in enumerate(top)]
        section.add(Table(["#", "pool sample", "score", "selected", "text"], rows, caption))
    return section


def weights(run: RunData, anchor: str = "weights") -> Section | None:
    if run.weights is None:
        return None
    details = run.manifest.get("weights") or {}
    positive = run.weights[run.weights > 0]
    section = Section(anchor, "Optimal weights")
    section.add(f"{len(positive)} non-zero weights (sum {run.weights.sum():.4g}); λ = {_fmt(details.get('lambda', 0))}"
                + ("" if details.get("exact_k", True) else f"; {details.get('message')}") + ".")
    if len(positive):
        import matplotlib.pyplot as plt

        fig, ax = plt.subplots(figsize=(8, 3))
        ax.hist(positive, bins=40, color=SELECTED_COLOR)
        ax.set_xlabel("weight (non-zero only)")
        ax.set_ylabel("samples")
        section.add(Figure(f"{anchor}-histogram", figure_png(fig), "histogram of the non-zero weights"))
    return section


def evaluation(run: RunData, anchor: str = "evaluation") -> Section | None:
    if run.evaluation is None:
        return None
    return evaluation_section(run.evaluation, anchor)


def evaluation_section(summary: dict, anchor: str = "evaluation", title: str = "Fine-tuning on the selection") -> Section:
    results = summary["results"]
    metrics = [m for m in results["selection"] if not m.endswith("_std")]
    rows = [[name] + [_fmt(values[m]) + (f" ± {_fmt(values[m + '_std'])}" if values.get(m + "_std") else "")
                      for m in metrics] for name, values in results.items()]
    seeds = (summary.get("config") or {}).get("seeds", 1)
    chosen, random = results["selection"]["test_loss"], results["random"]["test_loss"]
    verdict = (f"Test loss after LoRA fine-tuning on the selection: {chosen:.4f}, against {random:.4f} for a random "
               f"subset of the same size ({(chosen - random) / random:+.1%}; mean over {seeds} seed(s)).")
    return Section(anchor, title).add(verdict, Table(["model"] + metrics, rows))


def settings(run: RunData, anchor: str = "settings") -> Section:
    return Section(anchor, "Settings").add("Replay this run with `influence-distill select --config "
                                           f"{run.folder / 'manifest.json'}`.",
                                           Code(json.dumps(run.config, indent=2)))
