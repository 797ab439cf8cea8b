"""The selection as fine-tuning tools read it: LLaMA-Factory's `dataset_info.json` entry for `selected.jsonl`.

LLaMA-Factory (its data/README.md) reads a local file only through an entry in `dataset_info.json` in its
`dataset_dir`, which names the file, its formatting (alpaca or sharegpt) and which record fields hold what. A run
writes that entry beside `selected.jsonl`, so `dataset_dir: runs/first` and `dataset: selected` train on the
selection as it is, with no conversion step that could drift from the records the scores were computed on.
"""

from __future__ import annotations

from collections import Counter
from typing import Any

from influence_distillation.data.records import SHAREGPT_ROLES, detect_format

DATASET_NAME = "selected"  # the name LLaMA-Factory's `dataset:` takes


def llama_factory_info(records: list[dict[str, Any]], file_name: str) -> dict[str, Any]:
    """`{DATASET_NAME: entry}` describing `records` (of one record format, as every pool is) stored in `file_name`,
    relative to the folder of `dataset_info.json`. Only the fields the selection was scored on are mapped."""
    if not records:
        return {}
    fmt = detect_format(records[0], file_name)
    entry: dict[str, Any] = {"file_name": file_name}
    if fmt == "messages":  # LLaMA-Factory's "OpenAI format": sharegpt with role/content tags
        entry |= {"formatting": "sharegpt", "columns": {"messages": "messages"},
                  "tags": {"role_tag": "role", "content_tag": "content", "user_tag": "user",
                           "assistant_tag": "assistant", "system_tag": "system"}}
    elif fmt == "conversations":
        entry |= {"formatting": "sharegpt", "columns": {"messages": "conversations"},
                  "tags": {"role_tag": "from", "content_tag": "value", **_sharegpt_speakers(records)}}
    elif fmt == "prompt-completion":
        entry |= {"formatting": "alpaca", "columns": {"prompt": "prompt", "response": "completion"}}
    elif fmt == "instruction-output":
        query = {"query": "input"} if any("input" in record for record in records) else {}
        entry |= {"formatting": "alpaca", "columns": {"prompt": "instruction", **query, "response": "output"}}
    else:  # text: LLaMA-Factory's pre-training dataset (`stage: pt`), whose text is all trained on, as here
        entry |= {"formatting": "alpaca", "columns": {"prompt": "text"}}
    return {DATASET_NAME: entry}


def _sharegpt_speakers(records: list[dict[str, Any]]) -> dict[str, str]:
    """The user, assistant and system tags as the records spell them (LLaMA-Factory compares them exactly; this
    package reads `human`, `Human` and `user` alike): the commonest spelling of each role, else LLaMA-Factory's
    default."""
    spellings: dict[str, Counter] = {"user": Counter(), "assistant": Counter(), "system": Counter()}
    for record in records:
        for turn in record["conversations"]:
            role = SHAREGPT_ROLES.get(str(turn.get("from", "")).lower())
            if role in spellings:
                spellings[role][turn["from"]] += 1
    defaults = {"user": "human", "assistant": "gpt", "system": "system"}
    return {f"{role}_tag": (counts.most_common(1)[0][0] if counts else defaults[role])
            for role, counts in spellings.items()}
