"""`influence-distill report RUN [RUN_B]`: one page that answers what a run selected and why, or how two runs differ."""

from __future__ import annotations

import dataclasses
from pathlib import Path

from influence_distillation.errors import ConfigError
from influence_distillation.report import compare, sections
from influence_distillation.report.page import Page, Section, write_page
from influence_distillation.report.run_data import RunData, group_field, load_run

RUN_SECTIONS = ("overview", "scores", "composition", "fidelity", "targets", "weights", "evaluation", "cost",
                "settings")
COMPARE_SECTIONS = ("overlap", "composition-difference", "score-distributions", "cost-comparison",
                    "settings-difference")


def run_sections(run: RunData, field: str | None, examples: int, prefix: str = "") -> list[Section]:
    """A run's sections in reading order; `prefix` keeps anchors unique when several runs share a page."""
    built = [sections.overview(run, f"{prefix}overview"), sections.scores(run, f"{prefix}scores"),
             sections.composition(run, field, f"{prefix}composition"), sections.fidelity(run, f"{prefix}fidelity"),
             sections.target_picks(run, examples, anchor=f"{prefix}targets"),
             sections.weights(run, f"{prefix}weights"), sections.evaluation(run, f"{prefix}evaluation"),
             sections.cost(run, f"{prefix}cost"), sections.settings(run, f"{prefix}settings")]
    return [section for section in built if section is not None]


def grouping(run: RunData, requested: str | None) -> str | None:
    records = [s.record for s in run.pool.values()] if run.pool is not None else run.selection
    return group_field(records, requested)


def build_report(runs: list[Path], group_by: str | None = None, evaluation: Path | None = None,
                 examples: int = 3) -> Page:
    if not 1 <= len(runs) <= 2:
        raise ConfigError(f"report: give one run directory, or two to compare (got {len(runs)})")
    if examples < 0:
        raise ConfigError(f"--examples must be >= 0, got {examples}")
    loaded = [load_run(path, evaluation if i == 0 else None) for i, path in enumerate(runs)]
    field = grouping(loaded[0], group_by)
    if len(loaded) == 1:
        run = loaded[0]
        method = run.method
        counts = run.manifest.get("counts", {})
        subtitle = (f"{run.folder}: {method} selected {counts.get('selected')} of "
                    f"{(counts.get('pool') or {}).get('kept')} pool samples for {Path(str(run.config.get('target'))).name}.")
        return Page(f"Selection report: {run.name}", subtitle, run_sections(run, field, examples))
    a, b = loaded
    subtitle = f"A = {a.folder} ({a.method}), B = {b.folder} ({b.method})."
    page_sections = [compare.overlap(a, b), compare.composition_difference(a, b, field),
                     compare.score_histograms(a, b), compare.cost_side_by_side(a, b), compare.settings_difference(a, b)]
    for label, run in (("A", a), ("B", b)):
        fidelity = sections.fidelity(run, f"{label.lower()}-fidelity")
        page_sections.append(dataclasses.replace(fidelity, title=f"{label}: {fidelity.title}"))
    return Page(f"Selections compared: {a.name} and {b.name}", subtitle, page_sections)


def default_output(runs: list[Path]) -> Path:
    """RUN/report.html; RUN_A/compare-<RUN_B's name>.html for a comparison."""
    return runs[0] / ("report.html" if len(runs) == 1 else f"compare-{runs[1].resolve().name}.html")


def write_run_report(runs: list[str | Path], out: str | Path | None = None, group_by: str | None = None,
                     evaluation: str | Path | None = None, examples: int = 3) -> dict[str, Path]:
    """Build and write the report (HTML plus its Markdown twin); returns their paths."""
    paths = [Path(p) for p in runs]
    page = build_report(paths, group_by, Path(evaluation) if evaluation else None, examples)
    target = Path(out) if out else default_output(paths)
    if target.suffix.lower() not in (".html", ".htm"):
        raise ConfigError(f"--out {target}: give an .html path (the Markdown twin is written beside it as .md)")
    return write_page(page, target)
