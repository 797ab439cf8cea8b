"""`influence-distill benchmark`: every method on the same pool, model, budget, fine-tuning recipe and seeds.

For each target, each method selects `budget` samples (`<out>/select-<target>-<method>`); LoRA adapters are then
fine-tuned from the same base model on each selection with the same seeds and scored on the target's test set. The
table reports test loss and the task metric where the target has one (accuracy, HumanEval pass@1, exact match; mean
± std over seeds), each method's selection wall time (its first, cold run: nothing from the stage cache), the
analytic FLOP count, and the ratio of each method's time to ours, all measured in the same run. Outputs: `benchmark.md`, `benchmark.csv`, `benchmark.json`, `quality_vs_cost.png`.

`less` needs an AdamW state: a short warm-up (`influence-distill warmup`, MLP down-projections) is run first and its
model and state are used for LESS's gradients; every fine-tune starts from the original model.

`--ledger DIR` keeps finished selections and fine-tunes as small files to commit (`evaluation/ledger.py`), so a
benchmark longer than one session continues from a fresh checkout.
"""

from __future__ import annotations

import dataclasses
import logging
from pathlib import Path
from typing import Any

import numpy as np
import torch

from influence_distillation import artifacts
from influence_distillation.config import METHODS, SelectConfig
from influence_distillation.data.records import load_samples
from influence_distillation.errors import ConfigError
from influence_distillation.evaluation.benchmark_outputs import OURS, composition_text, write_outputs
from influence_distillation.evaluation.composition import describe, shared, target_task
from influence_distillation.evaluation.configs import VARIANTS, BenchmarkConfig, EvalConfig, Variant
from influence_distillation.evaluation.demo import FULL, QUICK, apply_settings, prepare_demo_data
from influence_distillation.evaluation.ledger import Ledger
from influence_distillation.evaluation.lora import aggregate_runs, evaluate_subsets
from influence_distillation.model.loading import resolve_model_path
from influence_distillation.options import check_ranges, same_config, to_dict
from influence_distillation.run.distillation import VERIFIED_STAGE
from influence_distillation.run.pipeline import run_selection
from influence_distillation.run.warmup import WarmupConfig, run_warmup
from influence_distillation.stats import average_ranks

log = logging.getLogger(__name__)
# The suite: the demo's pool at a larger size and five targets (ShareGPT conversations are long: the default
# max_length); the library's default JVP depth and landmarks; the task metrics beside the loss.
SUITE = {**FULL, "max_length": 512, "eval": {**FULL["eval"], "task_metric": True}}
# Not part of a method's selection cost: the same for every method (the pool's tokens are cached for the next one).
SETUP_STAGES = ("load", "tokenize", "write")


def run_benchmark(config: BenchmarkConfig, progress: bool = True) -> dict[str, Any]:
    check_ranges(config)
    seeds = _parse_rows(config.methods, config.seeds)
    methods = list(seeds)
    settings = dict(QUICK if config.quick else SUITE)
    settings["budget"] = config.budget or settings["budget"]
    out = Path(config.out)
    out.mkdir(parents=True, exist_ok=True)
    data = Path(config.data) if config.data else prepare_demo_data(out, config.quick, config.seed,
                                                                   suite=not config.quick, source=config.source)
    targets = [t.strip() for t in config.targets.split(",") if t.strip()] or sorted(
        p.name for p in (data / "targets").iterdir() if p.is_dir())
    model = str(resolve_model_path(config.model))
    needs_warm = any(_variant(m)[0].warm for m in methods)
    warm = _warmup(out, data, model, settings, progress) if needs_warm else None
    ledger = Ledger(config.ledger, config.model) if config.ledger else None

    cold = {m: v for m, v in artifacts.read_json(out / "timings.json").items() if isinstance(v, dict)}  # method → cold time
    rows, composition = [], {}
    for target in targets:
        selections = {}
        for method in methods:
            folder, manifest = _select(out, data, target, method, model, warm, settings, config.seed, progress,
                                       ledger=ledger)
            selections[method] = _per_seed(load_samples(folder / "selected.jsonl", "selection"), method, seeds[method],
                                           out, data, target, model, settings, config, progress, ledger)
            seconds = sum(v for k, v in manifest["stages"].items() if k not in SETUP_STAGES)
            key, entry = _method_key(manifest), cold.get(method)
            if not set(manifest["cache"]["reused"]) - {"tokens"} and (entry is None or entry["key"] != key):
                # Cold: every pool-wide stage was computed in this run, with these settings.
                cold[method] = {"seconds": seconds, "key": key, "target": target}
            elif entry is not None and entry["key"] != key:
                log.warning("%s: its settings changed since its cold time was measured and this run reused cached "
                            "stages, so its time is left out (clear %s to measure it again)", method, out / "cache")
                cold.pop(method)
            rows.append({"target": target, "method": method, "flops": manifest["cost"]["flops"],
                         "selection_seconds": seconds})
        composition[target] = _composition(data, target, selections, config.seed)
        if config.select_only:
            continue
        evaluation = _evaluate(out, data, target, model, selections, seeds, settings, config, progress, ledger)
        for row in rows:
            if row["target"] == target:
                row.update({k: v for k, v in evaluation["results"][row["method"]].items()})
                row.update({f"untrained_{k}": v for k, v in evaluation["results"]["untrained"].items()})
    artifacts.write_json(out / "timings.json", cold)
    if config.select_only:
        summary = {"select_only": True, "targets": targets, "composition": composition}
        with artifacts.atomic_file(out / "composition.md") as handle:
            handle.write(composition_text(summary) + "\n")
        return summary
    summary = _summarize(rows, {m: v["seconds"] for m, v in cold.items()}, methods, targets)
    summary["composition"] = composition
    write_outputs(out, rows, summary, settings, to_dict(config))
    return summary


def _per_seed(selected, method, count, out, data, target, model, settings, config, progress, ledger):
    """seed → the samples to fine-tune on: the selection for every seed, except that `random` draws a new subset
    for each fine-tuning seed (so its ± covers the subset draw too)."""
    subsets = {config.seed: selected}
    if method == "random":
        for seed in range(config.seed + 1, config.seed + count):
            folder, _ = _select(out, data, target, method, model, None, settings, seed, progress, f"-s{seed}", ledger)
            subsets[seed] = load_samples(folder / "selected.jsonl", "selection")
    return lambda seed: subsets.get(seed, selected)


def _composition(data: Path, target: str, selections, seed: int) -> dict[str, dict[str, Any]]:
    """What each row picked for this target (its first fine-tuning seed's subset), and how much it shares with
    ours (or the first row, without ours)."""
    own = target_task([s.record for s in load_samples(data / "targets" / target / "target.jsonl", "target")])
    picked = {row: [s.record for s in per_seed(seed)] for row, per_seed in selections.items()}
    reference = OURS if OURS in picked else next(iter(picked))
    return {row: {**describe(records, own), "shared": None if row == reference else shared(records, picked[reference])}
            for row, records in picked.items()}


def _parse_rows(text: str, default_seeds: int) -> dict[str, int]:
    """`--methods` → {row: fine-tuning seeds}."""
    rows = {}
    for item in (part.strip() for part in text.split(",")):
        if not item:
            continue
        name, _, count = item.partition(":")
        base, at, draw = name.partition("@")
        if base not in METHODS and base not in VARIANTS:
            raise ConfigError(f"--methods: unknown {base!r}; choose from {', '.join(METHODS + tuple(VARIANTS))}")
        if count and not (count.isdigit() and int(count) > 0):
            raise ConfigError(f"--methods: {item!r}: the number after ':' must be a positive seed count")
        if at and not draw.isdigit():
            raise ConfigError(f"--methods: {item!r}: the number after '@' must be a selection seed (0 or more)")
        rows[name] = int(count) if count else default_seeds
    if not rows:
        raise ConfigError("--methods: name at least one method")
    return rows


def _warmup(out: Path, data: Path, model: str, settings, progress) -> Path:
    folder = out / "warmup"
    config = WarmupConfig(pool=str(data / "pool.jsonl"), out=str(folder), params="mlp-down",
                          size=64 if settings == QUICK else 256, steps=4 if settings == QUICK else 40)
    config.model.path, config.data.max_length = model, settings["max_length"]
    done = artifacts.read_json(folder / "warmup.json")
    if done.get("status") == "complete" and same_config(done.get("config"), config):
        log.info("warm-up: reusing %s", folder)
        return folder
    return run_warmup(config, overwrite=True, progress=progress)


def _variant(row: str) -> tuple[Variant, int | None]:
    """A row's settings and, for NAME@S, its own selection seed."""
    base, at, draw = row.partition("@")
    return VARIANTS.get(base, Variant(base, warm=base == "less")), int(draw) if at else None


def _select(out, data, target, row, model, warm, settings, seed, progress, suffix="", ledger=None):
    variant, draw = _variant(row)
    seed = seed if draw is None else draw
    name = row.replace("-weighted", "") if variant.weighted else row  # weighted rows train on their twin's selection
    name = name.replace("@", "-draw")
    config = SelectConfig(pool=str(data / "pool.jsonl"), target=str(data / "targets" / target / "target.jsonl"),
                          out=str(out / f"select-{target}-{name}{suffix}"), seed=seed, method=variant.method)
    config.model.path = str(warm) if variant.warm else model
    if variant.warm:
        config.gradients.optimizer_state = str(warm / "optimizer.pt")
    config.data.max_length = settings["max_length"]
    apply_settings(config, settings)
    config.selection.budget = settings["budget"]
    for path, value in variant.overrides:
        section, field_name = path.split(".")
        setattr(getattr(config, section), field_name, value(settings) if callable(value) else value)
    folder = Path(config.out)
    manifest = artifacts.read_manifest(folder)
    if manifest and manifest.get("status") == "complete" and same_config(manifest["config"], config):
        log.info("%s/%s: reusing the finished selection", target, row)
        return folder, manifest
    key = ledger.selection_key(config, warm if variant.warm else None) if ledger else None
    if ledger and ledger.restore_selection(folder, key, config):
        log.info("%s/%s: the selection recorded in %s", target, row, ledger.folder)
        return folder, artifacts.read_manifest(folder)
    manifest = run_selection(config, overwrite=True, progress=progress, cache_dir=out / "cache").manifest
    if ledger:
        ledger.record_selection(folder, key, config)
    return folder, manifest


def _evaluate(out, data, target, model, selections, seeds, settings, config: BenchmarkConfig, progress, ledger=None):
    """Fine-tune and score each row's selection for each of its seeds. Every (selection, seed, weighting) is
    evaluated once and cached under the recipe, so changing one method re-evaluates only that method, and a row
    asked for more seeds runs only the new ones."""
    evaluation = EvalConfig(train="-", test=str(data / "targets" / target / "test.jsonl"), pool="-", out="-",
                            seed=config.seed, seeds=1, max_length=settings["max_length"], **settings["eval"])
    evaluation.model.path = model
    path = out / f"eval-{target}.json"
    answers = out / "answers" / target  # each model's task-metric answers, {row}-seed{seed}.jsonl
    recipe = artifacts.fingerprint(config=to_dict(evaluation))
    cached = artifacts.read_json(path)
    if cached.get("recipe") != recipe:
        cached = {"recipe": recipe, "runs": {}}
    recorded = ledger.evaluations(target, ledger.evaluation_recipe(evaluation)) if ledger else {}
    for key, scores in recorded.get("runs", {}).items():
        cached["runs"].setdefault(key, scores)
    if "untrained" in recorded:
        cached.setdefault("untrained", recorded["untrained"])

    def keep():  # after every fine-tune: an interrupted benchmark resumes here, and a fresh checkout from the ledger
        artifacts.write_json(path, cached)
        if ledger:  # cached["runs"] holds the recorded runs too
            ledger.record_evaluations(target, {**recorded, "runs": cached["runs"], "untrained": cached["untrained"]})
    runs, missing, queued = {}, [], set()  # queued: rows that select alike share each seed's fine-tune
    for row, per_seed in selections.items():
        weighted = _variant(row)[0].weighted
        for seed in range(config.seed, config.seed + seeds[row]):
            key = artifacts.fingerprint(ids=[s.id for s in per_seed(seed)], seed=seed, weighted=weighted)
            runs.setdefault(row, []).append(key)
            if key not in cached["runs"] and key not in queued:
                queued.add(key)
                missing.append((row, seed, weighted, key))
    if missing or "untrained" not in cached:
        log.info("%s: evaluating %s", target, ", ".join(f"{r} (seed {s})" for r, s, _, _ in missing) or "untrained")
    if "untrained" not in cached:
        cached["untrained"] = evaluate_subsets(evaluation, {}, evaluation.test, progress,
                                               answers_dir=answers)["results"]["untrained"]
        keep()
    for row, seed, weighted, key in missing:
        single = dataclasses.replace(evaluation, seed=seed, weighted=weighted)
        result = evaluate_subsets(single, {row: selections[row](seed)}, evaluation.test, progress, untrained=False,
                                  answers_dir=answers)
        cached["runs"][key] = result["per_seed"][row][0]
        keep()
    results = {"untrained": cached["untrained"]}
    for row, keys in runs.items():
        results[row] = aggregate_runs([cached["runs"][key] for key in keys])
    return {"results": results}


def _method_key(manifest) -> str:
    """What a method's cold time depends on: the fingerprints of the pool-wide stages it computed (each covers the
    model, pool and that stage's settings) and, for ours, the per-run settings. Not the target: the pool-wide stages,
    which dominate, are the same for every target; the verification gradients, cached per target, are left out."""
    config = manifest["config"]
    per_run = {k: config[k] for k in ("landmarks", "gradients", "influence")} if manifest["method"] in (
        OURS, "exact") else {}
    stages = {k: v for k, v in manifest["cache"].get("stages", {}).items() if not k.startswith(VERIFIED_STAGE)}
    return artifacts.fingerprint(method=manifest["method"], stages=stages, **per_run)


def _summarize(rows, timings, methods, targets) -> dict[str, Any]:
    ours = timings.get(OURS)
    per_method = {}
    ranks = {method: [] for method in methods}  # per target, 1 = the lowest test loss; ties share their mean rank
    for target in targets:
        losses = {r["method"]: r["test_loss"] for r in rows if r["target"] == target}
        for method, rank in zip(losses, average_ranks(torch.tensor(list(losses.values()))).tolist()):
            ranks[method].append(rank + 1)
    for method in methods:
        mine = [r for r in rows if r["method"] == method]
        relative = [r["test_loss"] / next(x for x in rows if x["target"] == r["target"] and x["method"] == "random")[
            "test_loss"] for r in mine] if any(r["method"] == "random" for r in rows) else []
        per_method[method] = {
            "mean_test_loss": float(np.mean([r["test_loss"] for r in mine])),
            "loss_vs_random": float(np.mean(relative)) if relative else None,
            "mean_rank": float(np.mean(ranks[method])) if ranks[method] else None,
            "selection_seconds": timings.get(method),
            "flops": float(np.mean([r["flops"] for r in mine])),
            "time_vs_ours": (timings[method] / ours) if ours and timings.get(method) else None,
        }
    return {"rows": rows, "methods": per_method, "targets": targets}
