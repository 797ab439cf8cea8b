"""The benchmark's tables, files and plot, from its summary (`benchmark.run_benchmark`)."""

from __future__ import annotations

import csv
from pathlib import Path
from typing import Any

from influence_distillation import artifacts
from influence_distillation.evaluation.composition import format_composition
from influence_distillation.evaluation.task_metrics import METRIC_LABELS

OURS = "influence"


def composition_text(summary: dict[str, Any]) -> str:
    reference = OURS if OURS in summary["composition"][summary["targets"][0]] else next(
        iter(summary["composition"][summary["targets"][0]]))
    return "What each selection holds (its first fine-tuning seed's subset):\n\n" + format_composition(
        summary["composition"], reference)


def write_outputs(out: Path, rows, summary, settings, config: dict) -> None:
    fields = ["target", "method", "test_loss", "test_loss_std",
              *(name for metric in METRIC_LABELS for name in (metric, f"{metric}_std", f"untrained_{metric}")),
              "untrained_test_loss", "selection_seconds", "flops"]
    with artifacts.atomic_file(out / "benchmark.csv") as handle:
        writer = csv.DictWriter(handle, fieldnames=fields, extrasaction="ignore")
        writer.writeheader()
        writer.writerows(rows)
    artifacts.write_json(out / "benchmark.json", {**summary, "settings": settings, "config": config})
    with artifacts.atomic_file(out / "benchmark.md") as handle:
        handle.write(format_tables(summary) + "\n")
        if summary.get("composition"):
            handle.write("\n" + composition_text(summary) + "\n")
    plot_quality_vs_cost(out / "quality_vs_cost.png", summary)


def format_tables(summary: dict[str, Any]) -> str:
    if summary.get("select_only"):
        return composition_text(summary)
    lines = ["| method | " + " | ".join(f"{t} test loss" for t in summary["targets"]) + " | mean loss / random | "
             "mean rank | selection s (cold) | × ours | TFLOPs |", "|---|" + "---|" * (len(summary["targets"]) + 5)]
    for method, values in summary["methods"].items():
        cells = []
        for target in summary["targets"]:
            row = next(r for r in summary["rows"] if r["target"] == target and r["method"] == method)
            spread = f" ± {row['test_loss_std']:.3f}" if row.get("test_loss_std") else ""
            task = "".join(f" ({label} {row[m]:.2f})" for m, label in METRIC_LABELS.items() if m in row)
            cells.append(f"{row['test_loss']:.3f}{spread}{task}")
        ratio = "n/a" if values["loss_vs_random"] is None else f"{values['loss_vs_random']:.3f}"
        seconds = "n/a" if values["selection_seconds"] is None else f"{values['selection_seconds']:.0f}"
        times = "n/a" if values["time_vs_ours"] is None else f"{values['time_vs_ours']:.2f}"
        rank = "n/a" if values.get("mean_rank") is None else f"{values['mean_rank']:.1f}"
        lines.append(f"| {method} | " + " | ".join(cells) + f" | {ratio} | {rank} | {seconds} | {times} | "
                     f"{values['flops'] / 1e12:.1f} |")
    return "\n".join(lines)


def plot_quality_vs_cost(path: Path, summary) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.5, 4.2))
    for method, values in summary["methods"].items():
        if values["loss_vs_random"] is None:
            continue
        x = max(values["flops"], 1e9)
        ax.scatter(x, values["loss_vs_random"], s=60, color="#4e79a7" if method == OURS else "#f28e2b")
        ax.annotate(method, (x, values["loss_vs_random"]), textcoords="offset points", xytext=(5, 4), fontsize=9)
    ax.set_xscale("log")
    ax.set_xlabel("selection cost (FLOPs, analytic; random drawn at 1e9)")
    ax.set_ylabel("test loss / random's (mean over targets)")
    ax.set_title("quality vs selection cost (lower-left is better)")
    ax.axhline(1.0, color="#999999", lw=0.8, ls="--")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
