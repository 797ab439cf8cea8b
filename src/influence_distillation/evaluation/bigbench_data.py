"""The earlier demo's data, an option now (`demo --data bigbench`): a pool and three targets from BIG-bench 1.0.0.

The package index stopped serving bigbench 1.0.0 on 2026-12-05, so this builds only where its sdist is already in the
user cache (or is put there by hand; its SHA-256 is checked). The default data comes from `demo_data`.

BIG-bench's source distribution is fetched once with `pip download --no-deps bigbench==1.0.0` into the user cache
(it is never installed, and its data never enters this repository: every task carries a do-not-train canary) and
its `task.json` files are streamed out of the tarball. With a fixed seed we build, in the project's input format:

* `pool.jsonl`: a few thousand prompt/completion pairs: many Natural-Instructions subtasks plus smaller slices of
  arithmetic, word-problem, reading-comprehension, trivia, yes/no and reasoning tasks, so that every target has
  related and unrelated data in the pool;
* `targets/<name>/target.jsonl` (the few examples the selection sees) and `targets/<name>/test.jsonl` (held out)
  for three targets: `math` (elementary_math_qa, multiple choice), `reading` (disfl_qa, generative) and
  `knowledge` (strategyqa, yes/no multiple choice);
* with `DemoSizes.long_per_task` (the benchmark suite), a long-context block: two more targets, `multirc` and
  `quoref` (passages of 300-450 tokens, short generated answers), and sibling tasks over the same kinds of passages
  in the pool.

Target and test examples never appear in the pool (split by example, then deduplicated by prompt text).
Multiple-choice records carry `options` (the correct one is the `completion`); every record carries `task`.
"""

from __future__ import annotations

import hashlib
import json
import logging
import re
import subprocess
import sys
import tarfile
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from influence_distillation.artifacts import staging_directory, write_json, write_jsonl
from influence_distillation.errors import DataError
from influence_distillation.evaluation.configs import BIGBENCH_TARGET_TASKS as TARGET_TASKS

log = logging.getLogger(__name__)

BUILDER = "bigbench-1"
BIGBENCH = "bigbench==1.0.0"
BIGBENCH_FILE = "bigbench-1.0.0.tar.gz"
BIGBENCH_SHA256 = "1bb398a5512c6d798cdebe0dfa0ac03f67f6033fa6b39c6ef71df978c7cbc5c2"

# Natural-Instructions subtasks whose examples are short enough for a 320-token budget.
NI_SUBTASKS = (
    "003_mctaco_question_generation_event_duration", "004_mctaco_answer_generation_event_duration",
    "005_mctaco_wrong_answer_generation_event_duration", "009_mctaco_question_generation_event_ordering",
    "010_mctaco_answer_generation_event_ordering", "012_mctaco_question_generation_absolute_timepoint",
    "013_mctaco_answer_generation_absolute_timepoint", "016_mctaco_answer_generation_frequency",
    "020_mctaco_span_based_question", "021_mctaco_grammatical_logical", "022_cosmosqa_passage_inappropriate_binary",
    "024_cosmosqa_answer_generation", "025_cosmosqa_incorrect_answer_generation", "033_winogrande_answer_generation",
    "036_qasc_topic_word_to_generate_related_fact", "037_qasc_generate_related_fact", "038_qasc_combined_fact",
    "039_qasc_find_overlapping_words", "040_qasc_question_generation", "041_qasc_answer_generation",
    "042_qasc_incorrect_option_generation", "043_essential_terms_answering_incomplete_questions",
    "044_essential_terms_identifying_essential_words", "047_misc_answering_science_questions",
    "050_multirc_answerability", "051_multirc_correct_answer_single_sentence",
    "027_drop_answer_type_generation", "028_drop_answer_generation", "061_ropes_answer_generation",
    "030_winogrande_full_person",
)

# Other BIG-bench tasks in the pool (besides the unused examples of the three target tasks).
POOL_EXTRAS = (
    "arithmetic/2_digit_addition", "arithmetic/2_digit_multiplication", "arithmetic/3_digit_subtraction",
    "qa_wikidata", "object_counting", "date_understanding", "navigate", "logical_deduction/three_objects",
    "misconceptions", "general_knowledge", "hindu_knowledge", "physics",
)

MAX_CHARS = 1200  # about 300 tokens: keeps every rendered sample within the demo's max_length

# The benchmark suite's long-context block: reading comprehension over passages of 300-450 tokens with short answers,
# where propagation from last-token embeddings failed (issue 12). Two targets, and in the pool a few unused examples
# of each plus sibling tasks over the same kinds of passages (other questions, wrong answers, question generation).
LONG_TARGET_TASKS = {"multirc": "natural_instructions/subtask054_multirc_write_correct_answer",
                     "quoref": "natural_instructions/subtask002_quoref_answer_generation"}
LONG_POOL_TASKS = tuple(f"natural_instructions/subtask{s}" for s in (
    "058_multirc_question_answering", "055_multirc_write_incorrect_answer", "049_multirc_questions_needed_to_answer",
    "001_quoref_question_generation", "026_drop_question_generation"))
LONG_MAX_CHARS = 1900  # about 480 tokens: within the suite's max_length of 512


@dataclass(frozen=True)
class DemoSizes:
    ni_per_subtask: int = 50
    extra_per_task: int = 45
    target_task_in_pool: int = 150  # unused examples of each target task that go into the pool
    target: int = 32
    test: int = 200
    long_per_task: int = 0  # examples of each long-context pool task; 0 leaves the long-context block out
    long_target_in_pool: int = 40  # unused examples of each long-context target task that go into the pool

    @classmethod
    def quick(cls) -> DemoSizes:
        return cls(ni_per_subtask=5, extra_per_task=6, target_task_in_pool=20, target=8, test=40)

    def targets(self) -> dict[str, str]:
        return {**TARGET_TASKS, **(LONG_TARGET_TASKS if self.long_per_task else {})}


def fetch_bigbench(cache: Path) -> Path:
    """The BIG-bench 1.0.0 sdist in `cache`, downloaded once with pip (no install) and checked by SHA-256."""
    path = cache / BIGBENCH_FILE
    if path.is_file():
        log.info("BIG-bench: using cached %s", path)
        return path
    cache.mkdir(parents=True, exist_ok=True)
    log.info("BIG-bench: downloading %s (358 MB, once) into %s", BIGBENCH, cache)
    with staging_directory(path) as staging:
        result = subprocess.run(
            [sys.executable, "-m", "pip", "download", "--no-deps", "--quiet", "-d", str(staging), BIGBENCH],
            capture_output=True, text=True,
        )
        downloaded = staging / BIGBENCH_FILE
        if result.returncode != 0 or not downloaded.is_file():
            message = (result.stderr or result.stdout).strip().splitlines()[-1:] or ["no file"]
            raise DataError(f"could not download {BIGBENCH} with pip ({message[0]}); check that your package index "
                            f"serves it, or put {BIGBENCH_FILE} (SHA-256 {BIGBENCH_SHA256[:12]}...) at {path}")
        digest = hashlib.sha256(downloaded.read_bytes()).hexdigest()
        if digest != BIGBENCH_SHA256:
            raise DataError(f"{BIGBENCH_FILE} has SHA-256 {digest}, expected {BIGBENCH_SHA256}; refusing to use it")
        downloaded.replace(path)
    return path


def read_tasks(tarball: Path, names: set[str]) -> dict[str, dict]:
    """Stream the `task.json` of each named task (path under benchmark_tasks/) out of the tarball."""
    tasks = {}
    with tarfile.open(tarball, "r:gz") as archive:
        for member in archive:
            if member.name.endswith("/task.json") and "benchmark_tasks/" in member.name:
                name = member.name.split("benchmark_tasks/", 1)[1][: -len("/task.json")]
                if name in names:
                    tasks[name] = json.load(archive.extractfile(member))
    missing = names - set(tasks)
    if missing:
        raise DataError(f"{tarball}: tasks not found: {', '.join(sorted(missing))}")
    return tasks


def _first_sentences(text: str, limit: int = 300) -> str:
    """The opening of an NI definition: whole sentences up to `limit` characters."""
    text = re.sub(r"\s+", " ", text.replace("Definition:", "").strip())
    sentences = re.split(r"(?<=[.!?])\s", text)
    kept = sentences[0]
    for sentence in sentences[1:]:
        if len(kept) + len(sentence) + 1 > limit:
            break
        kept += " " + sentence
    return kept[:limit]


def _answer(example: dict) -> tuple[str, list[str] | None]:
    """(completion, options or None) of a BIG-bench example."""
    if "target_scores" in example:
        scores = {_clean_option(option): score for option, score in example["target_scores"].items()}
        if len(scores) != len(example["target_scores"]) or not all(scores):
            return "", None  # options that collide or vanish once cleaned: skip the example
        best = max(scores.values())
        return next(o for o, score in scores.items() if score == best), list(scores)
    target = example["target"]
    return (target[0] if isinstance(target, list) else target), None


def _clean_option(option: str) -> str:
    """Some BIG-bench options keep list syntax ("[' 22 metres'"); strip it."""
    return option.strip().strip("[]").strip().strip("'\"").strip()


def to_record(task_name: str, task: dict, example: dict, index: int, max_chars: int = MAX_CHARS) -> dict | None:
    """A prompt/completion record for one example, or None when it is empty, unanswerable or too long."""
    completion, options = _answer(example)
    text = example["input"].strip()
    if task_name == "elementary_math_qa/question_only":
        prompt = f"Solve the math word problem and give the answer.\n\n{text}\nChoices: {'; '.join(options)}"
    elif task_name == "disfl_qa":
        question, _, context = text.partition("context:")
        prompt = f"Read the passage and answer the question.\n\nPassage: {context.strip()}\n\nQuestion: {question.strip()}"
    elif task_name == "strategyqa":
        prompt = f"Answer the question with Yes or No.\n\n{text}"
    elif task_name.startswith("natural_instructions/"):
        prompt = f"{_first_sentences(task.get('task_prefix', ''))}\n\n{text}"
    else:
        prefix = (task.get("task_prefix") or "").strip()
        choices = f"\nChoices: {'; '.join(options)}" if options else ""
        prompt = f"{prefix}\n\n{text}{choices}".strip()
    if not completion or not str(completion).strip() or len(prompt) + len(str(completion)) > max_chars:
        return None
    record = {"id": f"{task_name}#{index}", "prompt": prompt, "completion": str(completion).strip(), "task": task_name}
    if options and task_name in TARGET_TASKS.values():
        record["options"] = options
    return record


def _records(task_name: str, task: dict, rng: np.random.Generator, limit: int, exclude: set[str]) -> list[dict]:
    """Up to `limit` usable records in seeded random order, skipping prompts in `exclude`."""
    out = []
    long_context = task_name in LONG_TARGET_TASKS.values() or task_name in LONG_POOL_TASKS
    for index in rng.permutation(len(task["examples"])):
        record = to_record(task_name, task, task["examples"][index], int(index),
                           LONG_MAX_CHARS if long_context else MAX_CHARS)
        if record is not None and record["prompt"] not in exclude:
            exclude.add(record["prompt"])
            out.append(record)
            if len(out) == limit:
                break
    return out


def build_demo_data(tarball: Path, out: Path, sizes: DemoSizes, seed: int = 0) -> dict:
    """Write pool.jsonl and targets/*/{target,test}.jsonl into `out`; returns the summary also saved as data.json."""
    targets = sizes.targets()
    long_pool = LONG_POOL_TASKS if sizes.long_per_task else ()
    names = ({f"natural_instructions/subtask{s}" for s in NI_SUBTASKS} | set(POOL_EXTRAS) | set(targets.values())
             | set(long_pool))
    tasks = read_tasks(tarball, names)
    rng = np.random.default_rng(seed)
    seen: set[str] = set()
    summary: dict = {"builder": BUILDER, "seed": seed, "sizes": asdict(sizes), "source": BIGBENCH, "targets": {}}
    pool: list[dict] = []
    for target, task_name in targets.items():  # held-out examples first, so the pool can never contain them
        in_pool = sizes.target_task_in_pool if target in TARGET_TASKS else sizes.long_target_in_pool
        records = _records(task_name, tasks[task_name], rng, sizes.target + sizes.test + in_pool, seen)
        held_out = sizes.target + sizes.test
        if len(records) < held_out:
            raise DataError(f"{task_name}: only {len(records)} usable examples, need {held_out}")
        write_jsonl(out / "targets" / target / "target.jsonl", records[: sizes.target])
        write_jsonl(out / "targets" / target / "test.jsonl", records[sizes.target : held_out])
        pool += records[held_out:]
        summary["targets"][target] = {"task": task_name, "target": sizes.target, "test": sizes.test,
                                      "multiple_choice": "options" in records[0]}
    for task_name in sorted(names - set(targets.values())):
        limit = (sizes.long_per_task if task_name in long_pool else sizes.ni_per_subtask
                 if task_name.startswith("natural_instructions/") else sizes.extra_per_task)
        pool += _records(task_name, tasks[task_name], rng, limit, seen)
    pool = [pool[i] for i in rng.permutation(len(pool))]
    write_jsonl(out / "pool.jsonl", pool)
    summary["pool"] = {"size": len(pool), "tasks": _task_counts(pool)}
    write_json(out / "data.json", summary)
    return summary


def _task_counts(records: list[dict]) -> dict[str, int]:
    counts: dict[str, int] = {}
    for record in records:
        counts[record["task"]] = counts.get(record["task"], 0) + 1
    return dict(sorted(counts.items(), key=lambda item: -item[1]))
