"""Reading pool and target files into samples with stable ids.

Accepted files: JSONL (one JSON object per line), parquet, a folder written by `datasets.Dataset.save_to_disk`, or
the `org/name` of a Hugging Face dataset in the Hub cache (its JSONL/parquet files of one split).
Accepted record formats (one per file):

* ``messages``: a list of ``{"role", "content"}`` turns; the loss covers assistant turns;
* ``prompt`` + ``completion``: a user turn and an assistant turn;
* ``instruction`` [+ ``input``] + ``output``: the user turn is the instruction, a blank line, then the input;
* ``text``: plain text with no template; the loss covers every token.

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

FORMATS = ("messages", "prompt-completion", "instruction-output", "text")


@dataclass(frozen=True)
class Sample:
    """One record: its id, the untouched original, and either chat turns or plain text."""

    id: str
    record: dict[str, Any]
    messages: tuple[tuple[str, str], ...] | None  # (role, content) turns
    text: str | None  # plain-text records only


def load_samples(path: str | Path, what: str = "pool", split: str | None = None,
                 subset: str | None = None) -> list[Sample]:
    """Every record of `path` (JSONL, parquet, a save_to_disk folder, or `org/name` of a cached Hugging Face
    dataset, whose `split`/`subset` files are read in order) as samples; `iter_samples` reads them one at a time.

    Raises:
        DataError: naming the file and line/row for a missing or empty file, bad JSON, an unknown, mixed or
            malformed record, or duplicate ids.
    """
    return list(iter_samples(path, what, split, subset))


def iter_samples(path: str | Path, what: str = "pool", split: str | None = None,
                 subset: str | None = None) -> Iterator[Sample]:
    """`load_samples` one sample at a time, checked as it goes (duplicate ids when the stream ends, from an 8-byte
    hash of each id): a pool is never all in memory as records."""
    files = resolve_data(path, split, subset, f"--{what}")
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
        if has_ids:
            id_hashes.append(_id_hash(sample_id))
        count += 1
        yield _to_sample(sample_id, record, fmt, where)
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
    places (a hash collision of two different ids is not)."""
    first_seen: dict[str, str] = {}
    for where, record in (item for file in files for item in _read_records(file)):
        sample_id = _record_id(record, where)
        if _id_hash(sample_id) in suspects:
            if sample_id in first_seen:
                raise DataError(f"{where}: duplicate id {sample_id!r} (first seen at {first_seen[sample_id]})")
            first_seen[sample_id] = where


def detect_format(record: dict[str, Any], where: str) -> str:
    if "messages" in record:
        return "messages"
    if "prompt" in record and "completion" in record:
        return "prompt-completion"
    if "instruction" in record and "output" in record:
        return "instruction-output"
    if "text" in record:
        return "text"
    fields = ", ".join(sorted(record)) or "none"
    raise DataError(
        f"{where}: unknown record format (fields: {fields}); expected 'messages', 'prompt'+'completion', "
        "'instruction'+'output' or 'text'"
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


def _text_field(record: dict[str, Any], name: str, where: str, allow_empty: bool = False) -> str:
    value = record[name]
    if not isinstance(value, str):
        raise DataError(f"{where}: field '{name}' must be a string, got {type(value).__name__}")
    if not allow_empty and not value.strip():
        raise DataError(f"{where}: field '{name}' is empty")
    return value


def _to_sample(sample_id: str, record: dict[str, Any], fmt: str, where: str) -> Sample:
    if fmt == "text":
        return Sample(sample_id, record, None, _text_field(record, "text", where))
    if fmt == "prompt-completion":
        turns = (("user", _text_field(record, "prompt", where)), ("assistant", _text_field(record, "completion", where)))
    elif fmt == "instruction-output":
        instruction = _text_field(record, "instruction", where)
        extra = _text_field(record, "input", where, allow_empty=True) if record.get("input") is not None else ""
        user = f"{instruction}\n\n{extra}" if extra.strip() else instruction
        turns = (("user", user), ("assistant", _text_field(record, "output", where)))
    else:
        turns = _messages(record["messages"], where)
    return Sample(sample_id, record, turns, None)


def _messages(messages: Any, where: str) -> tuple[tuple[str, str], ...]:
    if not isinstance(messages, list) or not messages:
        raise DataError(f"{where}: field 'messages' must be a non-empty list of {{role, content}} objects")
    turns = []
    for i, message in enumerate(messages):
        if not isinstance(message, dict) or not isinstance(message.get("role"), str):
            raise DataError(f"{where}: messages[{i}] must be an object with a string 'role'")
        content = message.get("content")
        if not isinstance(content, str):
            raise DataError(f"{where}: messages[{i}].content must be a string, got {type(content).__name__}")
        if message["role"] == "assistant" and not content.strip():
            raise DataError(f"{where}: messages[{i}] is an empty assistant turn")
        turns.append((message["role"], content))
    return tuple(turns)


def data_fingerprint(path: str, split: str | None = None, subset: str | None = None) -> str | list[str]:
    """The pool file's content digest (one per file for a Hub dataset's split): what the pool-wide stages key on."""
    files = resolve_data(path, split, subset, "--pool")
    if not files[0].exists():
        raise DataError(f"pool file not found: {path}")
    digests = [content_fingerprint(file) for file in files]
    return digests[0] if len(digests) == 1 else digests
