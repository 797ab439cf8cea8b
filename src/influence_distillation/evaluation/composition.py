"""What a selection holds: how much of the target's own task and its family, how long its samples are, how many
tasks it spreads over, and how much two methods' selections share. Losses say which selector wins; these say what
it picked to win, so a difference between methods can be traced to the samples behind it."""

from __future__ import annotations

import re
from collections import Counter
from typing import Any

UNKNOWN = "?"


def family(task: str) -> str:
    """The source dataset a task is a view of, so sibling tasks count together: Natural-Instructions subtasks by the
    dataset in their name (subtask054_multirc_write_correct_answer and subtask058_multirc_question_answering are
    both multirc), other tasks by their first path component (elementary_math_qa/question_only)."""
    name = task.split("/")[-1] if task.startswith("natural_instructions/") else task.split("/")[0]
    match = re.match(r"subtask\d+_([a-z0-9]+)", name)
    return match.group(1) if match else name


def text_chars(record: dict) -> int:
    """Characters of the sample's text, for prompt/completion and chat records alike."""
    if isinstance(record.get("messages"), list):
        return sum(len(str(m.get("content", ""))) for m in record["messages"] if isinstance(m, dict))
    return sum(len(str(record.get(field, ""))) for field in ("prompt", "completion", "text"))


def target_task(target: list[dict]) -> str | None:
    """The task the target samples come from (the most common one), or None when they do not say."""
    tasks = Counter(r["task"] for r in target if isinstance(r.get("task"), str))
    return tasks.most_common(1)[0][0] if tasks else None


def describe(selected: list[dict], own_task: str | None, top: int = 3) -> dict[str, Any]:
    """Shares are fractions of the selection; `top` lists its most frequent tasks with their counts."""
    tasks = Counter(r.get("task", UNKNOWN) for r in selected)
    size = max(len(selected), 1)
    result: dict[str, Any] = {
        "size": len(selected),
        "tasks": len(tasks),
        "mean_chars": sum(map(text_chars, selected)) / size,
        "top_tasks": tasks.most_common(top),
        "own_task": None,
        "own_family": None,
    }
    if own_task is not None:
        result["own_task"] = tasks.get(own_task, 0) / size
        result["own_family"] = sum(n for t, n in tasks.items() if family(t) == family(own_task)) / size
    return result


def shared(a: list[dict], b: list[dict]) -> float:
    """Fraction of the smaller selection that the other also holds."""
    ids_a, ids_b = {r["id"] for r in a}, {r["id"] for r in b}
    return len(ids_a & ids_b) / max(min(len(ids_a), len(ids_b)), 1)


def format_composition(per_target: dict[str, dict[str, dict[str, Any]]], reference: str) -> str:
    """One markdown table: a row per (target, method)."""
    lines = [f"| target | method | own task | own family | tasks | mean chars | shared with {reference} | "
             "most picked |", "|---|---|---|---|---|---|---|---|"]
    for target, methods in per_target.items():
        for method, d in methods.items():
            own = "n/a" if d["own_task"] is None else f"{d['own_task']:.0%}"
            fam = "n/a" if d["own_family"] is None else f"{d['own_family']:.0%}"
            common = "n/a" if d.get("shared") is None else f"{d['shared']:.0%}"
            picked = ", ".join(f"{t.split('/')[-1]} {n}" for t, n in d["top_tasks"])
            lines.append(f"| {target} | {method} | {own} | {fam} | {d['tasks']} | {d['mean_chars']:.0f} | {common} | "
                         f"{picked} |")
    return "\n".join(lines)
