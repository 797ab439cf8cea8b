"""Writing a run directory safely.

Files are written to a temporary name in the same directory and renamed into place, so a reader never sees half a
file. `manifest.json` is removed before any output is replaced and written last: a directory is a finished run if
and only if it holds a manifest with `"status": "complete"`.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import uuid
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import IO, Any

import numpy as np

from influence_distillation.errors import OutputError

MANIFEST = "manifest.json"
SELECTED = "selected.jsonl"
DATASET_INFO = "dataset_info.json"  # LLaMA-Factory's entry for selected.jsonl (`data.export`)
SCORES = "scores.parquet"
TARGET_SCORES = "target_scores.npy"
EMBEDDINGS = "embeddings.npy"
EXCLUDED = "excluded.jsonl"
WEIGHTS = "weights.parquet"
STAGES = "stages"  # resumable pool-wide stage shards, unless a shared --cache-dir is given
REPORT_FILES = ("report.html", "report.md", "report_files", "eval.json")  # what `report`/`evaluate` add to a run
OUTPUT_FILES = (SELECTED, DATASET_INFO, SCORES, TARGET_SCORES, EMBEDDINGS, EXCLUDED, WEIGHTS, MANIFEST, STAGES, *REPORT_FILES)


def fresh_sibling(path: Path) -> Path:
    """An unused hidden name beside `path`, chosen before anything is created there: cleanup after a signal that
    lands mid-creation then knows what to remove (tempfile's mkstemp and mkdtemp name it only once it exists)."""
    return path.parent / f".{path.name}.{uuid.uuid4().hex[:16]}.tmp"


@contextlib.contextmanager
def atomic_file(path: Path, mode: str = "w") -> Iterator[IO[Any]]:
    """Open a temporary sibling of `path` for writing; rename it over `path` only if the block succeeds."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = fresh_sibling(path)
    try:
        with open(tmp, mode.replace("w", "x"), **({"encoding": "utf-8"} if "b" not in mode else {})) as handle:
            yield handle
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException as exc:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        if isinstance(exc, OSError) and exc.filename is None:  # a failed write() names no file; say which one
            raise OSError(exc.errno, exc.strerror, str(path)) from exc
        raise


@contextlib.contextmanager
def atomic_directory(path: Path) -> Iterator[Path]:
    """Yield an empty temporary sibling folder; if the block succeeds it replaces `path` (an existing folder there
    is removed first), otherwise it is deleted. A folder named `path` is therefore always complete."""
    with staging_directory(path) as staging:
        yield staging
        if path.exists():
            shutil.rmtree(path)
        os.replace(staging, path)


@contextlib.contextmanager
def staging_directory(path: Path) -> Iterator[Path]:
    """A new empty hidden sibling of `path` for the block to fill and rename to `path`; whatever of it is still
    there when the block ends (it failed, or lost a race to rename) is removed."""
    path.parent.mkdir(parents=True, exist_ok=True)
    staging = fresh_sibling(path)
    try:
        staging.mkdir()
        yield staging
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def write_json(path: Path, value: Any) -> None:
    with atomic_file(path) as handle:
        json.dump(value, handle, indent=2, sort_keys=False)
        handle.write("\n")


def read_json(path: Path) -> dict[str, Any]:
    """A JSON object, or {} where there is no file yet."""
    return json.loads(path.read_text(encoding="utf-8")) if path.is_file() else {}


def read_jsonl(path: Path) -> list[dict[str, Any]]:
    """One JSON object a line, blank lines skipped; [] where there is no file."""
    if not path.is_file():
        return []
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


def write_jsonl(path: Path, rows: list[dict[str, Any]]) -> None:
    with atomic_file(path) as handle:
        for row in rows:
            handle.write(json.dumps(row, ensure_ascii=False, default=str) + "\n")


def write_npy(path: Path, array: np.ndarray) -> None:
    with atomic_file(path, "wb") as handle:
        np.save(handle, array)


def write_npy_rows(path: Path, rows, chunk_rows: int = 8192, dtype=None) -> None:
    """A 2-D `.npy` (of `dtype`, else the rows' own) written `chunk_rows` rows at a time from anything with `.shape`
    and row slices (a tensor, an array, `ShardRows`, `NpyRows`), so writing an output never needs it whole in memory."""
    first = np.asarray(rows[0:1], dtype=dtype)
    header = {"descr": np.lib.format.dtype_to_descr(first.dtype), "fortran_order": False,
              "shape": (int(rows.shape[0]), int(rows.shape[1]))}
    with atomic_file(path, "wb") as handle:
        np.lib.format.write_array_header_1_0(handle, header)
        for start in range(0, header["shape"][0], chunk_rows):
            handle.write(np.ascontiguousarray(np.asarray(rows[start : start + chunk_rows]), first.dtype).tobytes())


def write_parquet(path: Path, columns: dict[str, Any] | Iterable[dict[str, Any]],
                  metadata: dict[str, str] | None = None) -> None:
    """A parquet file from one dict of columns, or from an iterable of them (each a row group written as it comes,
    so a table larger than memory streams through)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    writer = None
    with atomic_file(path, "wb") as handle:
        for part in [columns] if isinstance(columns, dict) else columns:
            table = pa.table(part)
            if writer is None:
                schema = table.schema.with_metadata({**(table.schema.metadata or {}), **(metadata or {})})
                writer = pq.ParquetWriter(handle, schema)
            writer.write_table(table.cast(writer.schema))
        if writer is None:
            raise ValueError(f"{path}: no rows to write")
        writer.close()


def read_manifest(out: Path) -> dict[str, Any] | None:
    path = out / MANIFEST
    if not path.is_file():
        return None
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError):
        return None


def check_output_dir(out: Path, same_run: Callable[[dict[str, Any]], bool], overwrite: bool) -> None:
    """Refuse an output directory that holds something other than an earlier run of the same configuration
    (`same_run` says whether a saved manifest's config is this run's)."""
    if out.exists() and not out.is_dir():
        raise OutputError(f"SelectConfig.out={str(out)!r} is a file; give a directory")
    if not out.exists() or overwrite or not any(out.iterdir()):
        return
    manifest = read_manifest(out)
    if manifest is None:
        foreign = sorted(p.name for p in out.iterdir() if p.name not in OUTPUT_FILES and not p.name.startswith("."))
        if foreign:
            raise OutputError(
                f"SelectConfig.out={str(out)!r} is not empty and is not an influence-distill run (holds "
                f"{', '.join(foreign[:3])}); choose another directory or pass overwrite=True"
            )
        return
    if not same_run(manifest.get("config", {})):
        raise OutputError(
            f"SelectConfig.out={str(out)!r} holds a run with a different configuration; choose another directory or "
            "pass overwrite=True"
        )


def begin_writing(out: Path) -> None:
    """Mark the directory as unfinished before replacing any output."""
    out.mkdir(parents=True, exist_ok=True)
    with contextlib.suppress(FileNotFoundError):
        (out / MANIFEST).unlink()


def user_cache_dir() -> Path:
    """$INFLUENCE_DISTILLATION_CACHE, else $XDG_CACHE_HOME/influence-distillation, else ~/.cache/influence-distillation."""
    explicit = os.environ.get("INFLUENCE_DISTILLATION_CACHE")
    if explicit:
        return Path(explicit)
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "influence-distillation"


def content_fingerprint(path: str | Path, hash_limit: int = 64 << 20) -> str:
    """A digest of a file or folder: contents of files up to `hash_limit` bytes, size and mtime of larger ones
    (model weights), so that fingerprinting a multi-GB model does not cost a full read."""
    path = Path(path)
    digest = hashlib.sha256()
    files = sorted(p for p in path.rglob("*") if p.is_file()) if path.is_dir() else [path]
    for file in files:
        stat = file.stat()
        digest.update(str(file.relative_to(path) if path.is_dir() else file.name).encode())
        if stat.st_size <= hash_limit:
            digest.update(file.read_bytes())
        else:
            digest.update(f"{stat.st_size}:{stat.st_mtime_ns}".encode())
    return digest.hexdigest()


def fingerprint(**parts: Any) -> str:
    return hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()[:32]


class NpyRows:
    """Row access to a 2-D `.npy` file by plain reads and writes: unlike a memmap, rows already read or written do
    not stay resident, so streaming over a file larger than memory keeps the footprint at one chunk. Row slices and
    row-index arrays can be read, and written too when the file was made by `create`."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        with self.path.open("rb") as handle:
            version = np.lib.format.read_magic(handle)
            read_header = (np.lib.format.read_array_header_1_0 if version == (1, 0)
                           else np.lib.format.read_array_header_2_0)
            self.shape, fortran, self.dtype = read_header(handle)
            self.offset = handle.tell()
        if fortran or len(self.shape) != 2:
            raise ValueError(f"{self.path}: expected a C-ordered 2-D array")

    @classmethod
    def create(cls, path: str | Path, shape: tuple[int, int], dtype) -> NpyRows:
        """A new `.npy` of `shape` (zeros until written), to be filled by row slices."""
        header = {"descr": np.lib.format.dtype_to_descr(np.dtype(dtype)), "fortran_order": False,
                  "shape": tuple(int(n) for n in shape)}
        with Path(path).open("wb") as handle:
            np.lib.format.write_array_header_1_0(handle, header)
            handle.truncate(handle.tell() + shape[0] * shape[1] * np.dtype(dtype).itemsize)
        return cls(path)

    def __len__(self) -> int:
        return self.shape[0]

    @property
    def ndim(self) -> int:
        return 2

    def __array__(self, dtype=None, copy=None) -> np.ndarray:
        return self[:] if dtype is None else self[:].astype(dtype)

    def _extent(self, row: int) -> int:
        return self.offset + row * self.shape[1] * self.dtype.itemsize

    def _row_list(self, rows) -> list[int]:
        rows = np.asarray(rows, dtype=np.int64).reshape(-1)
        if rows.size and (rows.min() < -self.shape[0] or rows.max() >= self.shape[0]):
            raise IndexError(f"row index out of range for {self.shape[0]} rows")
        return (rows % max(self.shape[0], 1)).tolist()

    def __getitem__(self, rows) -> np.ndarray:
        width = self.shape[1] * self.dtype.itemsize
        with self.path.open("rb") as handle:
            if isinstance(rows, slice):
                start, stop, step = rows.indices(self.shape[0])
                if step != 1:
                    raise ValueError("only contiguous row slices are supported")
                data = os.pread(handle.fileno(), max(0, stop - start) * width, self._extent(start))
            else:
                data = b"".join(os.pread(handle.fileno(), width, self._extent(row)) for row in self._row_list(rows))
        return np.frombuffer(data, dtype=self.dtype).reshape(-1, self.shape[1]).copy()

    def __setitem__(self, rows, values) -> None:
        values = np.ascontiguousarray(values, dtype=self.dtype).reshape(-1, self.shape[1])
        with self.path.open("r+b") as handle:
            if isinstance(rows, slice):
                start, stop, step = rows.indices(self.shape[0])
                if step != 1 or stop - start != len(values):
                    raise ValueError("write a contiguous row slice of the values' length")
                os.pwrite(handle.fileno(), values.tobytes(), self._extent(start))
                return
            for row, value in zip(self._row_list(rows), values, strict=True):
                os.pwrite(handle.fileno(), value.tobytes(), self._extent(row))
