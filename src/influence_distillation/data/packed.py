"""Tokenized samples packed into flat arrays, in memory or in files: `PackedExamples` and the `Example` it hands out.

A pool of millions of samples cannot be held as a dataclass and two tensors per sample (about 2 KB each on top of
their tokens); packed, a sample costs 33 bytes of memory when its tokens live in files.
"""

from __future__ import annotations

import hashlib
import json
import os
from array import array
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

IGNORE_INDEX = -100


@dataclass(frozen=True)
class Example:
    """A tokenized sample. `labels[j]` is the target of position j (HF convention: shifted inside the loss)."""

    id: str
    input_ids: torch.Tensor  # (T,) int64
    labels: torch.Tensor  # (T,) int64, IGNORE_INDEX where no loss
    truncated: bool

    def __len__(self) -> int:
        return self.input_ids.numel()


def content_digest(input_ids, labels) -> bytes:
    """A 16-byte digest of a tokenized sample's tokens and labels: what every stage row of it depends on."""
    as_bytes = lambda values: np.asarray(values, dtype=np.int32).tobytes()
    return hashlib.blake2b(as_bytes(input_ids) + as_bytes(labels), digest_size=16).digest()


class _Column:
    """Variable-length rows of bytes, appended in order and read back by byte range: in memory, or in a file (read
    with `os.pread`, so nothing read stays resident: the page cache holds it, not the process)."""

    def __init__(self, path: Path | None = None, writable: bool = True):
        self.path, self._buffer, self._handle = path, bytearray(), None
        if path is not None:
            self._handle = path.open("w+b" if writable else "rb")
        self._dirty = False

    def append(self, data: bytes) -> None:
        if self._handle is None:
            self._buffer += data
        else:
            self._handle.write(data)
            self._dirty = True

    def read(self, start: int, stop: int) -> bytes:
        if self._handle is None:
            return bytes(self._buffer[start:stop])
        if self._dirty:
            self._handle.flush()
            self._dirty = False
        return os.pread(self._handle.fileno(), stop - start, start)

    def close(self) -> None:
        if self._handle is not None:
            self._handle.flush()
            os.fsync(self._handle.fileno())


class PackedExamples(Sequence):
    """Tokenized samples packed into flat int32 columns, with no Python object per sample; `examples[i]` builds the
    `Example` when asked. Given a `folder`, the tokens, labels and ids are written there and read back from disk,
    so what stays in memory is 33 bytes a sample (two offsets, a flag and the content digest), whatever the length
    of the samples: a pool of millions does not have to fit in memory.
    """

    _INDEX = ("offsets", "id_offsets", "truncated", "digests")

    def __init__(self, folder: Path | None = None, _existing: bool = False):
        self.folder = folder
        columns = ("tokens", "labels", "ids")
        self._columns = {name: _Column(folder / f"{name}.bin" if folder else None, not _existing)
                         for name in columns}
        self._offsets, self._id_offsets = array("q", [0]), array("q", [0])
        self._truncated, self._digests = bytearray(), bytearray()
        self.total_tokens, self.completion_tokens = 0, 0  # for cost estimates without reading every sample

    def append(self, sample_id: str, input_ids: list[int], labels: list[int], truncated: bool) -> None:
        tokens, marks = array("i", input_ids), array("i", labels)
        encoded = sample_id.encode()
        self._columns["tokens"].append(tokens.tobytes())
        self._columns["labels"].append(marks.tobytes())
        self._columns["ids"].append(encoded)
        self._offsets.append(self._offsets[-1] + len(tokens))
        self._id_offsets.append(self._id_offsets[-1] + len(encoded))
        self._truncated.append(truncated)
        self._digests += content_digest(tokens, marks)
        self.total_tokens += len(tokens)
        self.completion_tokens += sum(label != IGNORE_INDEX for label in labels[1:])

    def save(self) -> None:
        """Flush the columns and write the index next to them (a folder-backed set only)."""
        for column in self._columns.values():
            column.close()
        for name in self._INDEX:
            np.save(self.folder / f"{name}.npy", np.frombuffer(getattr(self, f"_{name}"), dtype=np.uint8 if name in (
                "truncated", "digests") else np.int64))
        (self.folder / "totals.json").write_text(json.dumps({"tokens": self.total_tokens,
                                                             "completion_tokens": self.completion_tokens}))

    @classmethod
    def open(cls, folder: Path) -> PackedExamples:
        """A set written by `save`, read from its folder."""
        packed = cls(folder, _existing=True)
        for name in cls._INDEX:
            setattr(packed, f"_{name}", np.load(folder / f"{name}.npy"))
        totals = json.loads((folder / "totals.json").read_text())
        packed.total_tokens, packed.completion_tokens = totals["tokens"], totals["completion_tokens"]
        return packed

    def __len__(self) -> int:
        return len(self._offsets) - 1

    def lengths(self) -> np.ndarray:
        """Each sample's token count."""
        return np.diff(np.asarray(self._offsets, dtype=np.int64))

    def answer_lengths(self, chunk_rows: int = 4096) -> np.ndarray:
        """Each sample's trained-token count (labels past the first position that are not IGNORE_INDEX), reading
        the labels a chunk of rows at a time."""
        counts = np.zeros(len(self), dtype=np.int64)
        offsets = np.asarray(self._offsets, dtype=np.int64)
        for start in range(0, len(self), chunk_rows):
            stop = min(start + chunk_rows, len(self))
            low, high = int(offsets[start]), int(offsets[stop])
            trained = np.frombuffer(self._columns["labels"].read(4 * low, 4 * high), dtype=np.int32) != IGNORE_INDEX
            firsts = offsets[start:stop] - low
            trained[firsts[firsts < len(trained)]] = False  # a sequence's first token is never predicted
            running = np.concatenate([[0], np.cumsum(trained)])
            counts[start:stop] = running[offsets[start + 1:stop + 1] - low] - running[firsts]
        return counts

    @property
    def ids(self) -> _Ids:
        return _Ids(self)

    @property
    def digests(self) -> _Digests:
        """Each sample's `content_digest`."""
        return _Digests(self._digests)

    def _row(self, index: int) -> int:
        index = int(index)
        if index < 0:
            index += len(self)
        if not 0 <= index < len(self):
            raise IndexError(f"example {index} of {len(self)}")
        return index

    def sample_id(self, index: int) -> str:
        index = self._row(index)
        return self._columns["ids"].read(int(self._id_offsets[index]), int(self._id_offsets[index + 1])).decode()

    def __getitem__(self, index):
        if isinstance(index, slice):
            return [self[i] for i in range(*index.indices(len(self)))]
        index = self._row(index)
        start, stop = 4 * int(self._offsets[index]), 4 * int(self._offsets[index + 1])

        def column(name: str) -> torch.Tensor:
            return torch.from_numpy(np.frombuffer(self._columns[name].read(start, stop), dtype=np.int32).astype(
                np.int64))

        return Example(self.sample_id(index), column("tokens"), column("labels"), bool(self._truncated[index]))


class _Ids(Sequence):
    """The ids of a `PackedExamples`, decoded when asked; a slice reads its ids in one go."""

    def __init__(self, packed: PackedExamples):
        self.packed = packed

    def __len__(self) -> int:
        return len(self.packed)

    def __eq__(self, other) -> bool:
        return isinstance(other, Sequence) and len(other) == len(self) and list(self) == list(other)

    __hash__ = None

    def __getitem__(self, index):
        if not isinstance(index, slice):
            return self.packed.sample_id(index)
        start, stop, step = index.indices(len(self))
        if step != 1 or stop <= start:
            return [self.packed.sample_id(i) for i in range(start, stop, step)]
        offsets = np.array(self.packed._id_offsets[start : stop + 1], dtype=np.int64)  # a copy: shifted below
        data = self.packed._columns["ids"].read(int(offsets[0]), int(offsets[-1]))
        offsets -= offsets[0]
        return [data[a:b].decode() for a, b in zip(offsets[:-1].tolist(), offsets[1:].tolist())]

    def __iter__(self):
        for start in range(0, len(self), 65536):
            yield from self[start : start + 65536]


class _Digests(Sequence):
    def __init__(self, packed: bytes):
        self.packed = packed

    def __len__(self) -> int:
        return len(self.packed) // 16

    def __getitem__(self, index):
        if isinstance(index, slice):
            return [self[i] for i in range(*index.indices(len(self)))]
        index = int(index) + (len(self) if int(index) < 0 else 0)
        if not 0 <= index < len(self):
            raise IndexError(f"digest {index} of {len(self)}")
        return bytes(self.packed[16 * index : 16 * index + 16])
