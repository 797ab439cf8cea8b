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
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import IO, Any

import numpy as np

from influence_distillation.errors import OutputError

MANIFEST = "manifest.json"
SELECTED = "selected.jsonl"
SCORES = "scores.parquet"
TARGET_SCORES = "target_scores.npy"
EMBEDDINGS = "embeddings.npy"
EXCLUDED = "excluded.jsonl"
WEIGHTS = "weights.parquet"
STAGES = "stages"  # resumable pool-wide stage shards, unless a shared --cache-dir is given
REPORT_FILES = ("report.html", "report.md", "report_files", "eval.json")  # what `report`/`evaluate` add to a run
OUTPUT_FILES = (SELECTED, SCORES, TARGET_SCORES, EMBEDDINGS, EXCLUDED, WEIGHTS, MANIFEST, STAGES, *REPORT_FILES)


@contextlib.contextmanager
def atomic_file(path: Path, mode: str = "w") -> Iterator[IO[Any]]:
    """Open a temporary sibling of `path` for writing; rename it over `path` only if the block succeeds."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, mode, **({"encoding": "utf-8"} if "b" not in mode else {})) as handle:
            yield handle
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


@contextlib.contextmanager
def atomic_directory(path: Path) -> Iterator[Path]:
    """Yield an empty temporary sibling folder; if the block succeeds it replaces `path` (an existing folder there
    is removed first), otherwise it is deleted. A folder named `path` is therefore always complete."""
    import shutil

    path.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp"))
    try:
        yield staging
        if path.exists():
            shutil.rmtree(path)
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(staging, 0o777 & ~umask)  # mkdtemp makes it private; the result is an ordinary folder
        os.replace(staging, path)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise


def write_json(path: Path, value: Any) -> None:
    with atomic_file(path) as handle:
        json.dump(value, handle, indent=2, sort_keys=False)
        handle.write("\n")


def write_jsonl(path: Path, rows: list[dict[str, Any]]) -> None:
    with atomic_file(path) as handle:
        for row in rows:
            handle.write(json.dumps(row, ensure_ascii=False, default=str) + "\n")


def write_npy(path: Path, array: np.ndarray) -> None:
    with atomic_file(path, "wb") as handle:
        np.save(handle, array)


def write_npy_rows(path: Path, rows, chunk_rows: int = 8192) -> None:
    """A 2-D `.npy` written `chunk_rows` rows at a time from anything with `.shape` and row slices (a tensor, an
    array, `ShardRows`), so writing an output never needs it whole in memory."""
    first = np.asarray(rows[0:1])
    header = {"descr": np.lib.format.dtype_to_descr(first.dtype), "fortran_order": False,
              "shape": (int(rows.shape[0]), int(rows.shape[1]))}
    with atomic_file(path, "wb") as handle:
        np.lib.format.write_array_header_1_0(handle, header)
        for start in range(0, header["shape"][0], chunk_rows):
            handle.write(np.ascontiguousarray(np.asarray(rows[start : start + chunk_rows]), first.dtype).tobytes())


def write_parquet(path: Path, columns: dict[str, Any], metadata: dict[str, str] | None = None) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    table = pa.table(columns)
    if metadata:
        table = table.replace_schema_metadata({**(table.schema.metadata or {}), **metadata})
    with atomic_file(path, "wb") as handle:
        pq.write_table(table, handle)


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
        raise OutputError(f"--out {out} is a file; give a directory")
    if not out.exists() or overwrite or not any(out.iterdir()):
        return
    manifest = read_manifest(out)
    if manifest is None:
        foreign = sorted(p.name for p in out.iterdir() if p.name not in OUTPUT_FILES and not p.name.startswith("."))
        if foreign:
            raise OutputError(
                f"--out {out} is not empty and is not an influence-distill run (holds {', '.join(foreign[:3])}); "
                "choose another directory or pass --overwrite"
            )
        return
    if not same_run(manifest.get("config", {})):
        raise OutputError(
            f"--out {out} holds a run with a different configuration; choose another directory or pass --overwrite"
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
    """Row-slice access to a 2-D `.npy` file by plain reads: unlike a memmap, rows already read do not stay
    resident, so streaming over a file larger than memory keeps the footprint at one chunk."""

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

    def __len__(self) -> int:
        return self.shape[0]

    def __getitem__(self, rows: slice) -> np.ndarray:
        start, stop, step = rows.indices(self.shape[0])
        if step != 1:
            raise ValueError("only contiguous row slices are supported")
        width = self.shape[1] * self.dtype.itemsize
        with self.path.open("rb") as handle:
            handle.seek(self.offset + start * width)
            data = np.fromfile(handle, dtype=self.dtype, count=max(0, stop - start) * self.shape[1])
        return data.reshape(-1, self.shape[1])
