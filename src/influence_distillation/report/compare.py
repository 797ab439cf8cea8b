"""Two runs side by side: how much their selections overlap, how their composition differs, what they cost, and which
settings differ (e.g. Influence Distillation against `--method rds+` on the same pool and target)."""

from __future__ import annotations

from collections import Counter

import numpy as np

from influence_distillation.report.page import Figure, Note, Section, Table, clip, figure_png
from influence_distillation.report.run_data import RunData, pool_groups, selection_groups
from influence_distillation.report.sections import OTHER_COLOR, SELECTED_COLOR, TOP_GROUPS, draw_scores, share_bars
from influence_distillation.stats import spearman


def overlap(a: RunData, b: RunData) -> Section:
    chosen_a = [str(r.get("id")) for r in a.selection]
    chosen_b = [str(r.get("id")) for r in b.selection]
    both = set(chosen_a) & set(chosen_b)
    union = set(chosen_a) | set(chosen_b)
    section = Section("overlap", "Overlap of the selections")
    rows = [["A", a.name, a.method, str(len(chosen_a))],
            ["B", b.name, b.method, str(len(chosen_b))]]
    section.add(Table(["", "run", "method", "selected"], rows))
    section.add(f"{len(both)} samples are in both selections: {len(both) / max(len(chosen_a), 1):.1%} of A's, "
                f"{len(both) / max(len(chosen_b), 1):.1%} of B's (Jaccard {len(both) / max(len(union), 1):.2f}).")
    if a.config.get("pool") != b.config.get("pool") or a.config.get("target") != b.config.get("target"):
        section.add(Note("the two runs did not read the same pool and target files; the overlap compares "
                         "selections from different inputs"))
    common = sorted(set(a.ids) & set(b.ids))
    if len(common) > 2:
        index_a, index_b = {i: n for n, i in enumerate(a.ids)}, {i: n for n, i in enumerate(b.ids)}
        rho = spearman(np.array([a.scores[index_a[i]] for i in common], dtype=np.float64),
                       np.array([b.scores[index_b[i]] for i in common], dtype=np.float64))
        section.add(f"Rank correlation of their scores over the {len(common)} pool samples both scored: "
                    f"Spearman {rho:.2f}.")
    return section


def composition_difference(a: RunData, b: RunData, field: str | None) -> Section:
    by = f"record field '{field}'" if field else "id prefix"
    shares = {"A": Counter(selection_groups(a, field)), "B": Counter(selection_groups(b, field))}
    groups = pool_groups(a, field)
    pool = Counter(groups) if groups is not None else None
    totals = {key: sum(counter.values()) for key, counter in shares.items()}
    names = sorted(set(shares["A"]) | set(shares["B"]),
                   key=lambda n: -abs(shares["B"][n] / totals["B"] - shares["A"][n] / totals["A"]))
    rows = []
    for name in names[:TOP_GROUPS]:
        share_a, share_b = shares["A"][name] / totals["A"], shares["B"][name] / totals["B"]
        row = [name, f"{share_a:.1%}", f"{share_b:.1%}", f"{(share_b - share_a) * 100:+.1f}"]
        rows.append(row + ([f"{pool[name] / sum(pool.values()):.1%}"] if pool else []))
    section = Section("composition-difference", f"Composition difference by {by}")
    section.add(f"The {min(len(names), TOP_GROUPS)} groups whose share differs most between the selections "
                f"({len(names)} groups in either).",
                Table(["group", "A share", "B share", "B − A (points)"] + (["pool share"] if pool else []), rows))
    counters = {f"A: {clip(a.name, 30)}": shares["A"], f"B: {clip(b.name, 30)}": shares["B"]}
    section.add(Figure("composition-difference", share_bars(names[:TOP_GROUPS], counters), "share per group in A and B"))
    return section


def cost_side_by_side(a: RunData, b: RunData) -> Section:
    stages = list(dict.fromkeys([*a.manifest.get("stages", {}), *b.manifest.get("stages", {})]))
    rows = [[name] + [f"{run.manifest.get('stages', {}).get(name, 0.0):.1f}" if name in run.manifest.get(
        "stages", {}) else "–" for run in (a, b)] for name in stages]
    total_a, total_b = (sum(run.manifest.get("stages", {}).values()) for run in (a, b))
    rows.append(["total", f"{total_a:.1f}", f"{total_b:.1f}"])
    section = Section("cost-comparison", "Cost side by side (seconds)").add(Table(["stage", "A", "B"], rows))
    if total_a > 0 and total_b > 0:
        section.add(f"B took {total_b / total_a:.2f}× A's time. Stages read from a cache count as reading, not "
                    "computing: compare cold runs.")
    return section


def settings_difference(a: RunData, b: RunData) -> Section:
    flat_a, flat_b = _flatten(a.config), _flatten(b.config)
    keys = [k for k in dict.fromkeys([*flat_a, *flat_b]) if flat_a.get(k) != flat_b.get(k) and k != "out"]
    section = Section("settings-difference", "Settings that differ")
    if not keys:
        return section.add("None besides the output folder.")
    return section.add(Table(["setting", "A", "B"], [[k, str(flat_a.get(k, "–")), str(flat_b.get(k, "–"))]
                                                      for k in keys]))


def _flatten(config: dict, prefix: str = "") -> dict:
    flat = {}
    for key, value in config.items():
        if isinstance(value, dict):
            flat.update(_flatten(value, f"{prefix}{key}."))
        else:
            flat[f"{prefix}{key}"] = value
    return flat


def score_histograms(a: RunData, b: RunData) -> Section:
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(10, 3))
    for ax, run, label, color in ((axes[0], a, "A", SELECTED_COLOR), (axes[1], b, "B", OTHER_COLOR)):
        draw_scores(ax, run, color, bins=40)
        ax.set_title(f"{label}: {clip(run.name, 40)} ({run.method})", fontsize=9)
    return Section("score-distributions", "Score distributions").add(
        "Each run's own score (their scales differ between methods); the selection in colour.",
        Figure("score-distributions", figure_png(fig), "score distributions of A and B"))
