"""Reading pool and target files into samples with stable ids.

Accepted files: JSONL (one JSON object per line), parquet, a folder written by `datasets.Dataset.save_to_disk`, or
the `org/name` of a Hugging Face dataset in the Hub cache (its JSONL/parquet files of one split).
Accepted record formats (one per file):

* ``messages``: a list of ``{"role", "content"}`` turns (``content`` a string, or a list of OpenAI-style text parts);
  the loss covers the assistant turns that follow a user turn;
* ``conversations``: ShareGPT's shape, as FastChat, Axolotl and LLaMA-Factory read it: ``{"from", "value"}`` turns,
  ``from`` one of human/user, gpt/assistant (and chatgpt, bing, bard, model), system;
* ``prompt`` + ``completion``: a user turn and an assistant turn;
* ``instruction`` [+ ``input``] + ``output``: the user turn is the instruction, a blank line, then the input;
* ``text``: plain text with no template; the loss covers every token.

Malformed input (bad JSON, a field of the wrong type) is an error naming the file and line. A record that reads but
cannot be trained on (no assistant turn after a user turn, an empty assistant turn, empty text, a non-text content
part) becomes a sample with an `excluded` reason: the run lists it in `excluded.jsonl` and counts it in the log, as
LLaMA-Factory and Axolotl skip such rows, instead of refusing the whole pool.

A record's id is its ``id`` field when the file has one (every record must then have it), else its 0-based row.
The original record is kept untouched so the selection can be written back verbatim.
"""

from __future__ import annotations

import hashlib
import json
from array import array
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from influence_distillation.artifacts import content_fingerprint
from influence_distillation.data.hub import resolve_data
from influence_distillation.errors import DataError

FORMATS = ("messages", "conversations", "prompt-completion", "instruction-output", "text")
# ShareGPT speakers as the chat template's roles; any other speaker keeps its own name.
SHAREGPT_ROLES = {"human": "user", "user": "user", "gpt": "assistant", "assistant": "assistant", "chatgpt": "assistant",
                  "bing": "assistant", "bard": "assistant", "model": "assistant", "system": "system"}


@dataclass(frozen=True)
class Sample:
    """One record: its id, the untouched original, and either chat turns or plain text."""

    id: str
    record: dict[str, Any]
    messages: tuple[tuple[str, str], ...] | None  # (role, content) turns
    text: str | None  # plain-text records only
    excluded: str | None = None  # why a record that reads cannot be trained on (it goes to excluded.jsonl)


def load_samples(path: str | Path, what: str = "pool", split: str | None = None,
                 subset: str | None = None, field: str = "path") -> list[Sample]:
    """Every record of `path` (JSONL, parquet, a save_to_disk folder, or `org/name` of a cached Hugging Face
    dataset, whose `split`/`subset` files are read in order) as samples; `iter_samples` reads them one at a time.
    `field` is how errors about a Hub name refer to `path` (a run passes its config field, `SelectConfig.pool`).

    Raises:
        DataError: naming the file and line/row for a missing or empty file, bad JSON, an unknown, mixed or
            malformed record, or duplicate ids.
    """
    return list(iter_samples(path, what, split, subset, field))


def iter_samples(path: str | Path, what: str = "pool", split: str | None = None,
                 subset: str | None = None, field: str = "path") -> Iterator[Sample]:
    """`load_samples` one sample at a time, checked as it goes (duplicate ids when the stream ends, from an 8-byte
    hash of each id): a pool is never all in memory as records."""
    files = resolve_data(path, split, subset, field)
    path = Path(path)
    if not files[0].exists():
        raise DataError(f"{what} file not found: {path}")
    file_format: str | None = None
    has_ids: bool | None = None
    count, id_hashes = 0, array("q")  # 8 bytes an id, not a dict of every id: pools have millions of rows
    for where, record in (item for file in files for item in _read_records(file)):
        if not isinstance(record, dict):
            raise DataError(f"{where}: expected a JSON object, got {type(record).__name__}")
        fmt = detect_format(record, where)
        if file_format is None:
            file_format, has_ids = fmt, "id" in record
        elif fmt != file_format:
            raise DataError(
                f"{where}: record is in '{fmt}' format but earlier records are '{file_format}'; "
                "use one record format per file"
            )
        if has_ids != ("id" in record):
            raise DataError(f"{where}: some records have an 'id' field and some do not; give every record an id")
        sample_id = _record_id(record, where) if has_ids else str(count)
        sample = _to_sample(sample_id, record, fmt, where)
        if has_ids and not sample.excluded:  # a copy that cannot be trained on may repeat an id (see _raise_duplicate)
            id_hashes.append(_id_hash(sample_id))
        count += 1
        yield sample
    if not count:
        raise DataError(f"{what} file {path} holds no records")
    repeated = _repeated(np.frombuffer(id_hashes, dtype=np.int64))
    if repeated.size:
        _raise_duplicate(files, set(repeated.tolist()))


def _id_hash(sample_id: str) -> int:
    return int.from_bytes(hashlib.blake2b(sample_id.encode(), digest_size=8).digest(), "little", signed=True)


def _repeated(values: np.ndarray) -> np.ndarray:
    ordered = np.sort(values)
    return ordered[1:][ordered[1:] == ordered[:-1]]


def _raise_duplicate(files: list[Path], suspects: set[int]) -> None:
    """Read the files again for the ids whose hash repeats: the first real duplicate is an error naming both
    places (a hash collision of two different ids is not). Only records that can be trained on count: ShareGPT's
    cleaned file repeats 123 ids, each once on an empty copy, and that copy is excluded, not ambiguous."""
    first_seen: dict[str, str] = {}
    for where, record in (item for file in files for item in _read_records(file)):
        sample_id = _record_id(record, where)
        if _id_hash(sample_id) in suspects and not _to_sample(sample_id, record, detect_format(record, where),
                                                              where).excluded:
            if sample_id in first_seen:
                raise DataError(f"{where}: duplicate id {sample_id!r} (first seen at {first_seen[sample_id]})")
            first_seen[sample_id] = where


def detect_format(record: dict[str, Any], where: str) -> str:
    if "messages" in record:
        return "messages"
    if "conversations" in record:
        return "conversations"
    if "prompt" in record and "completion" in record:
        return "prompt-completion"
    if "instruction" in record and "output" in record:
        return "instruction-output"
    if "text" in record:
        return "text"
    fields = ", ".join(sorted(record)) or "none"
    raise DataError(
        f"{where}: unknown record format (fields: {fields}); expected 'messages', 'conversations' (ShareGPT), "
        "'prompt'+'completion', 'instruction'+'output' or 'text'"
    )


def _read_records(path: Path) -> Iterator[tuple[str, Any]]:
    """Yield (location, record) pairs; the location names the file and line or row for error messages."""
    if path.is_dir():
        yield from _read_saved_dataset(path)
    elif path.suffix == ".parquet":
        import pyarrow.parquet as pq

        try:
            batches = pq.ParquetFile(path).iter_batches(batch_size=4096)  # streamed, a batch at a time
            row = 0
            for batch in batches:
                for record in batch.to_pylist():
                    yield f"{path} row {row}", record
                    row += 1
        except Exception as exc:  # pyarrow raises several types for unreadable files
            raise DataError(f"{path}: cannot read parquet ({exc})") from None
    else:
        try:
            handle = path.open(encoding="utf-8")
        except OSError as exc:
            raise DataError(f"{path}: cannot open ({exc.strerror})") from None
        with handle:
            try:
                for number, line in enumerate(handle, start=1):
                    if not line.strip():
                        continue
                    try:
                        record = json.loads(line)
                    except json.JSONDecodeError as exc:
                        raise DataError(f"{path}:{number}: invalid JSON ({exc.msg} at column {exc.colno})") from None
                    yield f"{path}:{number}", record
            except UnicodeDecodeError:
                raise DataError(f"{path}: not UTF-8 text; expected JSONL, parquet or a save_to_disk folder") from None


def _read_saved_dataset(path: Path) -> Iterator[tuple[str, Any]]:
    try:
        import datasets
    except ImportError:
        raise DataError(
            f"{path} is a folder; reading datasets.save_to_disk folders needs `pip install datasets`"
        ) from None
    try:
        loaded = datasets.load_from_disk(str(path))
    except Exception as exc:  # datasets raises FileNotFoundError or its own errors for non-dataset folders
        raise DataError(f"{path}: not a datasets.save_to_disk folder ({exc})") from None
    if isinstance(loaded, datasets.DatasetDict):
        splits = ", ".join(loaded)
        raise DataError(f"{path} holds several splits ({splits}); pass one split's folder, e.g. {path}/train")
    for row, record in enumerate(loaded):
        yield f"{path} row {row}", record


def _record_id(record: dict[str, Any], where: str) -> str:
    value = record["id"]
    if isinstance(value, bool) or not isinstance(value, (str, int)) or value == "":
        raise DataError(f"{where}: field 'id' must be a non-empty string or an integer, got {value!r}")
    return str(value)


def _text_field(record: dict[str, Any], name: str, where: str) -> str:
    value = record[name]
    if not isinstance(value, str):
        raise DataError(f"{where}: field '{name}' must be a string, got {type(value).__name__}")
    return value


def _to_sample(sample_id: str, record: dict[str, Any], fmt: str, where: str) -> Sample:
    if fmt == "text":
        text = _text_field(record, "text", where)
        return Sample(sample_id, record, None, text, None if text.strip() else "empty text")
    if fmt == "prompt-completion":
        trained = _text_field(record, "completion", where)
        turns = (("user", _text_field(record, "prompt", where)), ("assistant", trained))
    elif fmt == "instruction-output":
        instruction = _text_field(record, "instruction", where)
        extra = _text_field(record, "input", where) if record.get("input") is not None else ""
        user = f"{instruction}\n\n{extra}" if extra.strip() else instruction
        trained = _text_field(record, "output", where)
        turns = (("user", user), ("assistant", trained))
    else:
        turns, reason = _turns(record, fmt, where)
        return Sample(sample_id, record, turns, None, reason)
    return Sample(sample_id, record, turns, None, None if trained.strip() else f"empty {fmt.split('-')[-1]}")


def _turns(record: dict[str, Any], fmt: str, where: str) -> tuple[tuple[tuple[str, str], ...], str | None]:
    """The (role, text) turns of a `messages` or ShareGPT `conversations` record, and why it cannot be trained on
    (None when it can)."""
    sharegpt = fmt == "conversations"
    field_name, role_key, content_key = ("conversations", "from", "value") if sharegpt else ("messages", "role",
                                                                                             "content")
    turns_in = record[field_name]
    if not isinstance(turns_in, list):
        raise DataError(f"{where}: field '{field_name}' must be a list of {{{role_key}, {content_key}}} objects")
    turns, reason = [], None
    for i, turn in enumerate(turns_in):
        if not isinstance(turn, dict) or not isinstance(turn.get(role_key), str):
            raise DataError(f"{where}: {field_name}[{i}] must be an object with a string '{role_key}'")
        role = SHAREGPT_ROLES.get(turn[role_key].lower(), turn[role_key]) if sharegpt else turn[role_key]
        content, part_reason = _content(turn.get(content_key), f"{where}: {field_name}[{i}].{content_key}")
        if role == "assistant" and not content.strip():
            part_reason = part_reason or "empty assistant turn"
        reason = reason or part_reason
        turns.append((role, content))
    if reason is None and trained_turns(turns) == []:
        reason = "no assistant turn after a user turn"
    return tuple(turns), reason


def _content(value: Any, where: str) -> tuple[str, str | None]:
    """A turn's text: a string, null (an assistant turn that only calls tools), or a list of content parts whose text
    parts are joined by newlines. A non-text part (an image, audio) cannot be trained on by a text model: the reason
    excludes the record rather than training on a turn that refers to what it cannot see."""
    if value is None:
        return "", None
    if isinstance(value, str):
        return value, None
    if not isinstance(value, list):
        raise DataError(f"{where} must be a string or a list of content parts, got {type(value).__name__}")
    texts, reason = [], None
    for j, part in enumerate(value):
        if isinstance(part, str):
            texts.append(part)
        elif isinstance(part, dict) and part.get("type", "text") == "text":
            if not isinstance(part.get("text"), str):
                raise DataError(f"{where}[{j}] is a text part without a string 'text'")
            texts.append(part["text"])
        elif isinstance(part, dict) and isinstance(part.get("type"), str):
            reason = reason or f"non-text content part ({part['type']})"
        else:
            raise DataError(f"{where}[{j}] must be a string or an object with a 'type'")
    return "\n".join(texts), reason


def trained_turns(turns) -> list[int]:
    """Indices of the assistant turns that carry loss: those after a user turn. An opening assistant turn (common in
    ShareGPT, whose long conversations were split into parts) is context: there is no request it answers."""
    seen_user, trained = False, []
    for i, (role, _) in enumerate(turns):
        seen_user = seen_user or role == "user"
        if role == "assistant" and seen_user:
            trained.append(i)
    return trained


def data_fingerprint(path: str, split: str | None = None, subset: str | None = None,
                     field: str = "path") -> str | list[str]:
    """The pool file's content digest (one per file for a Hub dataset's split): what the pool-wide stages key on."""
    files = resolve_data(path, split, subset, field)
    if not files[0].exists():
        raise DataError(f"pool file not found: {path}")
    digests = [content_fingerprint(file) for file in files]
    return digests[0] if len(digests) == 1 else digests
