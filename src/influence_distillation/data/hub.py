"""Hugging Face Hub names (`org/name`) for models and datasets, resolved through the Hub's own cache.

Offline unless the user sets HF_HUB_OFFLINE=0: a name that is not cached is a one-line error saying how to fetch it,
never a silent download. Cache location and offline mode are read from the environment at call time (HF_HUB_CACHE,
else HF_HOME/hub), so they follow what the user exported, not what was set when huggingface_hub was imported.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

from influence_distillation.errors import DataError, InfDistError, ModelError

HUB_NAME = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")
DATA_SUFFIXES = (".parquet", ".jsonl", ".json")


def is_hub_name(spec: str | Path) -> bool:
    """`org/name` that is not an existing local path."""
    return bool(HUB_NAME.match(str(spec))) and not Path(spec).exists()


def _cache_dir() -> str | None:
    if os.environ.get("HF_HUB_CACHE"):
        return os.environ["HF_HUB_CACHE"]
    return str(Path(os.environ["HF_HOME"]) / "hub") if os.environ.get("HF_HOME") else None


def _offline() -> bool:
    return os.environ.get("HF_HUB_OFFLINE", "1").strip().lower() in ("1", "true", "yes", "on")


def snapshot(name: str, repo_type: str, field: str) -> Path:
    """The cached snapshot folder of a Hub repository (downloaded first only when HF_HUB_OFFLINE=0). `field` names
    where `name` came from in errors (`SelectConfig.pool`, or the argument's name)."""
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import LocalEntryNotFoundError

    error: type[InfDistError] = ModelError if repo_type == "model" else DataError
    cache = _cache_dir() or "~/.cache/huggingface/hub"
    try:
        return Path(snapshot_download(name, repo_type=repo_type, cache_dir=_cache_dir(), local_files_only=_offline()))
    except LocalEntryNotFoundError:
        kind = "--repo-type dataset " if repo_type == "dataset" else ""
        raise error(f"{field}={name!r}: not in the Hugging Face cache ({cache}) and offline; fetch it once with "
                    f"`hf download {kind}{name}` or rerun with HF_HUB_OFFLINE=0") from None
    except Exception as exc:  # repository not found, HTTP and file-system errors from the hub client
        raise error(f"{field}={name!r}: {type(exc).__name__}: {exc}".replace("\n", " ")) from None


def dataset_files(name: str, split: str | None, subset: str | None, field: str) -> list[Path]:
    """The data files of one split (and subset) of a cached Hub dataset, by the Hub's layout conventions: a split is
    a file name starting with it (`train-00000-of-00002.parquet`, `train.jsonl`), a subset a folder named after it.
    Without a split, the dataset must have only one."""
    root = snapshot(name, "dataset", field)
    files = sorted(p for p in root.rglob("*") if p.is_file() and p.suffix in DATA_SUFFIXES)
    if subset:
        files = [p for p in files if subset in p.relative_to(root).parts[:-1]]
    splits = {p: re.split(r"[-_.]", p.name, maxsplit=1)[0] for p in files}
    where = f"{field}={name!r}{f' (subset {subset})' if subset else ''}"
    if not files:
        raise DataError(f"{where}: no JSONL or parquet files in the cached snapshot {root}")
    if split is None and len(set(splits.values())) > 1:
        raise DataError(f"{where} has splits {', '.join(sorted(set(splits.values())))}; choose one with "
                        "DataConfig.split")
    chosen = [p for p in files if split is None or splits[p] == split]
    if not chosen:
        raise DataError(f"{where}: no split {split!r} (found: {', '.join(sorted(set(splits.values())))})")
    return chosen


def resolve_data(spec: str | Path, split: str | None = None, subset: str | None = None,
                 field: str = "path") -> list[Path]:
    """The files behind a data argument: itself when local, else the split's files of the cached Hub dataset."""
    return dataset_files(str(spec), split, subset, field) if is_hub_name(spec) else [Path(spec)]
