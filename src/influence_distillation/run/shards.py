"""Disk-backed, resumable, rank-shared stage outputs.

A pool-wide stage (JVP embeddings, landmark / exact / LESS gradients, baseline passes) produces one row per sample.
Its rows are cut into fixed shards written to `<root>/<stage>-<key>/shard-NNNNNN.npy`, where the key fingerprints
everything the stage depends on (model files, pool, settings, seeds, code version). Each shard is written to a
temporary name and renamed when complete, so:

* re-running with the same inputs reuses every finished shard (a finished stage costs nothing);
* a run killed at any moment, even by SIGKILL, continues from the shards it finished, and because a shard's rows and
  batches depend only on the shard, the result is the same as an uninterrupted run;
* under torchrun each rank computes every world_size-th shard and rank 0 reads them all after a barrier.

Rows can also be kept by content (`RowCache`): a row depends only on its own sample's tokens, so when the pool
grows or changes, the rows of unchanged samples are read back instead of recomputed, wherever they now sit.
"""

from __future__ import annotations

import json
import logging
import os
import uuid
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
from tqdm.auto import tqdm

from influence_distillation.artifacts import NpyRows, atomic_file, staging_directory, write_json, write_npy
from influence_distillation.data.tokenization import TokenizedSet
from influence_distillation.errors import OutputError
from influence_distillation.run.distributed import DistInfo, barrier
from influence_distillation.run.guards import (
    FORMAT,
    check_format,
    disk_error,
    disk_problem,
    note_stage,
    raise_if_interrupted,
    shard_claim,
)

log = logging.getLogger(__name__)

EMBEDDING_SHARD = 256  # rows per shard of cheap per-sample stages (embeddings, forward passes)
GRADIENT_SHARD = 32  # rows per shard of per-sample gradients (about 30 s each for a 135M model on a CPU)
FORMAT_FILE = "format.json"  # in token folders and row caches: the layout they were written in


def _format_record(folder: Path) -> dict:
    """A cache folder's recorded layout; folders from before the record existed are layout 1."""
    found = folder / FORMAT_FILE
    return json.loads(found.read_text()) if found.is_file() else {"format": 1}


class ShardedStage:
    """`rows` rows of a stage, computed `shard_rows` at a time into `folder`."""

    def __init__(self, folder: Path, rows: int, shard_rows: int, description: dict):
        self.folder, self.rows, self.shard_rows = folder, rows, shard_rows
        self.count = max(1, -(-rows // shard_rows))
        self.description = {**description, "rows": rows, "shard_rows": shard_rows, "format": FORMAT}

    def path(self, shard: int) -> Path:
        return self.folder / f"shard-{shard:06d}.npy"

    def rows_of(self, shard: int) -> list[int]:
        return list(range(shard * self.shard_rows, min((shard + 1) * self.shard_rows, self.rows)))

    def finished(self) -> list[int]:
        return [s for s in range(self.count) if self.path(s).is_file()]

    def compute(self, info: DistInfo, compute_rows: Callable[[list[int]], torch.Tensor], label: str,
                progress: bool = True) -> None:
        """Compute this rank's missing shards (then wait for the other ranks). A shard another run is writing into
        the same folder (a shared `--cache-dir`) is left to it and waited for at the end."""
        self._open(info)
        mine = info.shards(self.count)
        todo = [s for s in mine if not self.path(s).is_file()]
        if todo and len(todo) < len(mine):
            log.info("%s: resuming, %d of this rank's %d shards already done", label, len(mine) - len(todo),
                     len(mine))
        try:
            with tqdm(total=sum(len(self.rows_of(s)) for s in todo), desc=label, unit="sample",
                      disable=not progress or not todo) as bar:
                deferred = [s for s in todo if not self._compute_shard(s, compute_rows, wait=False, bar=bar)]
                for shard in deferred:  # another run had them; now wait for it and compute what it left undone
                    self._compute_shard(shard, compute_rows, wait=True, bar=bar)
        except BaseException as exc:
            note_stage(exc, label, (len(self.finished()), self.count))
            raise
        barrier(info)

    def _open(self, info: DistInfo) -> None:
        """Create the folder, or check that an existing one has this version's layout; record what it holds."""
        self.folder.mkdir(parents=True, exist_ok=True)
        found = self.folder / "stage.json"
        if found.is_file():
            check_format(self.folder, json.loads(found.read_text()), "the stage cache")
        if info.is_main:
            with atomic_file(found) as handle:
                json.dump(self.description, handle, indent=2, default=str)

    def _compute_shard(self, shard: int, compute_rows, wait: bool, bar) -> bool:
        """Compute and write one shard unless it exists; False if another process holds it and `wait` is False."""
        raise_if_interrupted()
        path = self.path(shard)
        with shard_claim(path, wait) as claimed:
            if not claimed:
                return False
            if not path.is_file():
                values = compute_rows(self.rows_of(shard)).numpy()
                try:
                    write_npy(path, values)
                except OSError as exc:
                    if disk_problem(exc) is None:
                        raise
                    remaining = self.count - len(self.finished())
                    raise disk_error(path, exc, remaining * values.nbytes,
                                     f" (the {len(self.finished())} finished shards are kept)") from None
            bar.update(len(self.rows_of(shard)))
        return True

    def load(self) -> torch.Tensor:
        self._check_complete()
        return torch.from_numpy(np.concatenate([np.load(self.path(s)) for s in range(self.count)]))

    def reader(self) -> ShardRows:
        """The finished stage as a lazy (rows, width) array: nothing is read until rows are asked for."""
        self._check_complete()
        return ShardRows([self.path(s) for s in range(self.count)], self.shard_rows, self.rows)

    def _check_complete(self) -> None:
        missing = [s for s in range(self.count) if not self.path(s).is_file()]
        if missing:
            raise OutputError(f"{self.folder}: shards {missing[:5]} are missing; re-run to complete the stage")


class ShardRows:
    """A finished stage's rows, read from its shard files on access: row slices and row gathers return tensors.

    Streaming consumers (propagation, writing embeddings.npy) then hold one chunk at a time instead of the whole
    (N, width) stage, which for JVP embeddings of a large pool is the largest thing a run would otherwise keep.
    """

    def __init__(self, paths: list[Path], shard_rows: int, rows: int):
        self.paths, self.shard_rows = paths, shard_rows
        first = NpyRows(paths[0])  # reads the header only
        self.shape, self.dtype = (rows, first.shape[1]), first.dtype

    def __len__(self) -> int:
        return self.shape[0]

    def __getitem__(self, index) -> torch.Tensor:
        if isinstance(index, slice):
            start, stop, step = index.indices(self.shape[0])
            if step == 1:
                parts = [np.load(self.paths[s])[max(start - s * self.shard_rows, 0):stop - s * self.shard_rows]
                         for s in range(start // self.shard_rows, -(-stop // self.shard_rows))] if stop > start else []
                return torch.from_numpy(np.concatenate(parts) if parts else np.empty((0, self.shape[1]), self.dtype))
            index = np.arange(start, stop, step)
        rows = np.asarray(index, dtype=np.int64).reshape(-1)
        if rows.size and (rows.min() < -self.shape[0] or rows.max() >= self.shape[0]):
            raise IndexError(f"row index out of range for {self.shape[0]} rows")
        rows = rows % max(self.shape[0], 1)
        out = np.empty((rows.size, self.shape[1]), dtype=self.dtype)
        shards = rows // self.shard_rows
        for shard in np.unique(shards):
            mask = shards == shard
            out[mask] = np.load(self.paths[shard])[rows[mask] - shard * self.shard_rows]
        return torch.from_numpy(out)


def tokenized_in(folder: Path, tokenize: Callable[[Path], TokenizedSet]) -> tuple[TokenizedSet, bool]:
    """The tokenized set kept in `folder` and whether it was there already; otherwise `tokenize(staging)` writes it
    into a staging sibling that is renamed into place once saved, so a folder that exists is complete (ranks that
    race keep whichever finished first)."""
    if folder.is_dir():
        check_format(folder, _format_record(folder), "the token cache")
        return TokenizedSet.open(folder), True
    with staging_directory(folder) as staging:
        tokenize(staging).save()
        write_json(staging / FORMAT_FILE, {"format": FORMAT})
        try:
            os.rename(staging, folder)
        except OSError:
            if not folder.is_dir():
                raise
    return TokenizedSet.open(folder), False


class RowCache:
    """Finished rows of a stage by the content digest of their sample, independent of the pool they came from.

    Each write is a `<id>.values.npy` and then its `<id>.digests.npy`, both renamed into place when complete; only
    rows listed in a digests file are ever read, so a write cut short is never mistaken for a finished one. Ranks
    write under distinct ids, so sharing a folder needs no locking.
    """

    def __init__(self, folder: Path):
        self.folder = folder
        if any(folder.glob("*.digests.npy")):
            check_format(folder, _format_record(folder), "the row cache")
        elif not (folder / FORMAT_FILE).is_file():
            write_json(folder / FORMAT_FILE, {"format": FORMAT})
        self.paths: list[Path] = []
        # Sorted runs of (digest, file, row) arrays, merged like a binary counter so there are O(log n) of them:
        # 24 bytes a cached row, where a dict of digests took about 200.
        self.runs: list[tuple[np.ndarray, np.ndarray, np.ndarray]] = []
        for digests in sorted(folder.glob("*.digests.npy")) if folder.is_dir() else []:
            self._index(np.load(digests), digests.with_name(digests.name.replace(".digests.", ".values.")))

    def _index(self, digests: np.ndarray, values: Path) -> None:
        keys = np.ascontiguousarray(digests, dtype=np.uint8).view("S16").reshape(-1)
        order = np.argsort(keys, kind="stable")
        self.runs.append((keys[order], np.full(len(keys), len(self.paths), dtype=np.int32),
                          np.arange(len(keys), dtype=np.int32)[order]))
        self.paths.append(values)
        while len(self.runs) > 1 and len(self.runs[-2][0]) <= 2 * len(self.runs[-1][0]):
            newer, older = self.runs.pop(), self.runs.pop()
            merged = [np.concatenate(pair) for pair in zip(older, newer)]
            order = np.argsort(merged[0], kind="stable")
            self.runs.append(tuple(column[order] for column in merged))

    def known(self, digests: list[bytes]) -> dict[int, np.ndarray]:
        """Position in `digests` → the cached row, for the positions whose content has been computed before."""
        found, files = {}, {}
        queries = np.array(digests, dtype="S16")
        for keys, file_of, row_of in self.runs:
            at = np.minimum(np.searchsorted(keys, queries), len(keys) - 1)
            for position in np.flatnonzero(keys[at] == queries).tolist():
                if position in found:
                    continue
                file, row = int(file_of[at[position]]), int(row_of[at[position]])
                if file not in files:
                    files[file] = np.load(self.paths[file], mmap_mode="r")
                found[position] = np.array(files[file][row])
        return found

    def add(self, digests: list[bytes], values: np.ndarray) -> None:
        """Keep rows for later runs; a failed write (a full disk) only loses that, so the stage goes on."""
        name = uuid.uuid4().hex
        stored = np.frombuffer(b"".join(digests), np.uint8).reshape(len(digests), -1)
        try:
            write_npy(self.folder / f"{name}.values.npy", values)
            write_npy(self.folder / f"{name}.digests.npy", stored)
        except OSError as exc:
            log.info("could not keep %d rows in %s for later runs (%s)", len(digests), self.folder, exc.strerror)
            return
        self._index(stored, self.folder / f"{name}.values.npy")

    def through(self, compute_rows: Callable[[list[int]], torch.Tensor], digests: list[bytes]):
        """`compute_rows` that reads rows of known content from the cache and computes (and caches) the rest."""

        def compute(rows: list[int]) -> torch.Tensor:
            rows = list(rows)
            known = self.known([digests[r] for r in rows])
            missing = [r for position, r in enumerate(rows) if position not in known]
            if missing:
                computed = compute_rows(missing).numpy()
                self.add([digests[r] for r in missing], computed)
                known.update(zip([p for p in range(len(rows)) if p not in known], computed, strict=True))
            return torch.from_numpy(np.stack([known[position] for position in range(len(rows))]))

        return compute
