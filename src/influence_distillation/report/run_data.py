"""Everything a report reads from a finished run directory, and how its samples are grouped.

A report must work on any finished run, months later and from another directory: what it cannot find (the pool file
moved, no evaluation) becomes a note on the page, never an error. Only a directory that is not a finished run is
refused.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from influence_distillation import artifacts
from influence_distillation.data.records import Sample, load_samples
from influence_distillation.errors import ConfigError, InfDistError

GROUP_FIELDS = ("source", "task", "dataset")  # the default --group-by, first one the records have


@dataclass
class RunData:
    folder: Path
    manifest: dict[str, Any]
    ids: list[str]  # pool rows that were scored, in row order
    scores: np.ndarray  # (N,) the score selection ranked by (mean over target samples)
    selected: np.ndarray  # (N,) bool
    landmark: np.ndarray  # (N,) bool
    weights: np.ndarray | None  # (N,) when the run solved weights
    target_scores: np.ndarray | None  # (N, t)
    selection: list[dict[str, Any]]  # selected.jsonl, in selection order
    pool: dict[str, Sample] | None  # by id; None when the pool file cannot be read from here
    targets: list[Sample] | None  # the scored target samples, in column order
    evaluation: dict[str, Any] | None
    notes: list[str]  # what could not be read, in words

    @property
    def name(self) -> str:
        return self.folder.name

    @property
    def config(self) -> dict[str, Any]:
        return self.manifest.get("config", {})

    @property
    def method(self) -> str:
        """The method with the variant that tells two influence runs apart: 'influence (second order, AdamW)'."""
        method = str(self.manifest.get("method"))
        influence = self.manifest.get("influence") or {}
        variant = [name for name, on in (("exact", influence.get("exact") and method != "exact"),
                                         ("second order", influence.get("order") == 2),
                                         ("AdamW", influence.get("variant") == "adamw")) if on]
        return f"{method} ({', '.join(variant)})" if variant else method


def load_run(folder: str | Path, evaluation: str | Path | None = None) -> RunData:
    """Read a finished run; `evaluation` is an eval.json (default: the run's own, if `evaluate --out RUN` wrote one).

    Raises:
        ConfigError: `folder` is not a finished run (no manifest with status "complete", or its outputs are gone).
    """
    folder = Path(folder)
    manifest = artifacts.read_manifest(folder) if folder.is_dir() else None
    if manifest is None or manifest.get("status") != "complete":
        raise ConfigError(f"report: {folder} is not a finished run (no manifest.json with status \"complete\"); "
                          "give the --out directory of a select run that finished")
    missing = [name for name in (artifacts.SCORES, artifacts.SELECTED) if not (folder / name).is_file()]
    if missing:
        raise ConfigError(f"report: {folder} lacks {', '.join(missing)}; re-run select into it")
    import pyarrow.parquet as pq

    table = pq.read_table(folder / artifacts.SCORES).to_pydict()
    notes: list[str] = []
    target_scores = _target_scores(folder, len(table["id"]), notes)
    selection = [json.loads(line) for line in (folder / artifacts.SELECTED).read_text(encoding="utf-8").splitlines()
                 if line.strip()]
    config = manifest.get("config", {})
    data = config.get("data", {})
    pool = _samples(config.get("pool"), "pool", data, notes)
    targets = _samples(config.get("target"), "target", data, notes)
    if targets is not None:
        excluded = {row["id"] for row in artifacts.read_jsonl(folder / artifacts.EXCLUDED) if row.get("set") == "target"}
        targets = [sample for sample in targets if sample.id not in excluded]
        if target_scores is not None and len(targets) != target_scores.shape[1]:
            notes.append(f"the target file now holds {len(targets)} usable samples, the run scored "
                         f"{target_scores.shape[1]}: target texts are left out")
            targets = None
    return RunData(folder, manifest, list(table["id"]), np.asarray(table["score"], dtype=np.float64),
                   np.asarray(table["selected"], dtype=bool), np.asarray(table["landmark"], dtype=bool),
                   np.asarray(table["weight"], dtype=np.float64) if "weight" in table else None, target_scores,
                   selection, None if pool is None else {s.id: s for s in pool if not s.excluded}, targets,
                   _evaluation(folder, evaluation, notes), notes)


def _target_scores(folder: Path, rows: int, notes: list[str]) -> np.ndarray | None:
    path = folder / artifacts.TARGET_SCORES
    if not path.is_file():
        notes.append(f"{path.name} is missing: per-target-sample picks are left out")
        return None
    scores = np.load(path, mmap_mode="r")
    if scores.ndim != 2 or scores.shape[0] != rows:
        notes.append(f"{path.name} does not match scores.parquet: per-target-sample picks are left out")
        return None
    return scores


def _samples(path: str | None, what: str, data: dict[str, Any], notes: list[str]) -> list[Sample] | None:
    if not path:
        return None
    try:
        return load_samples(path, what, data.get("split"), data.get("subset"))
    except InfDistError as exc:
        notes.append(f"the {what} cannot be read from here ({exc}); what needs its records is left out — run the "
                     "report from the directory select ran in")
        return None


def _evaluation(folder: Path, given: str | Path | None, notes: list[str]) -> dict[str, Any] | None:
    path = Path(given) if given else folder / "eval.json"
    if not path.is_file():
        if given:
            raise ConfigError(f"report: --eval {path} not found; give the eval.json that `evaluate --out` wrote")
        return None
    try:
        summary = json.loads(path.read_text(encoding="utf-8"))
        results = summary["results"]
        assert {"random", "selection"} <= set(results)
    except (json.JSONDecodeError, KeyError, TypeError, AssertionError):
        raise ConfigError(f"report: {path} is not an `evaluate` summary (no results for random and selection)")
    trained = summary.get("config", {}).get("train")
    if trained and Path(trained).resolve() != (folder / artifacts.SELECTED).resolve():
        notes.append(f"the evaluation in {path} trained on {trained}, not on this run's selected.jsonl")
    return summary


def group_field(records: list[dict[str, Any]], requested: str | None) -> str | None:
    """The record field to group by: `requested` (which some record must have), else the first of GROUP_FIELDS the
    records carry as strings; None means grouping by id prefix."""
    if requested:
        if not any(requested in record for record in records):
            fields = sorted({name for record in records[:50] for name in record})
            raise ConfigError(f"--group-by: no record has a field {requested!r} (fields: {', '.join(fields)})")
        return requested
    for name in GROUP_FIELDS:
        if any(isinstance(record.get(name), str) for record in records[:200]):
            return name
    return None


def group_of(record: dict[str, Any], sample_id: str, field: str | None) -> str:
    if field is not None:
        value = record.get(field)
        return "(missing)" if value is None else str(value)
    return id_prefix(sample_id)


def id_prefix(sample_id: str) -> str:
    """'arith#12' → 'arith', 'gsm8k-00031' → 'gsm8k'; ids that are bare numbers have no prefix."""
    head = sample_id.split("#", 1)[0] if "#" in sample_id else re.sub(r"[\W_]*\d+$", "", sample_id)
    return head or "(no id prefix)"


def pool_groups(run: RunData, field: str | None) -> list[str] | None:
    """The group of every scored pool row, or None when the pool's records cannot be read (and grouping needs them)."""
    if run.pool is None:
        return [id_prefix(i) for i in run.ids] if field is None else None
    return [group_of(run.pool[i].record if i in run.pool else {}, i, field) for i in run.ids]


def selection_groups(run: RunData, field: str | None) -> list[str]:
    return [group_of(record, str(record.get("id", "")), field) for record in run.selection]


def record_text(sample: Sample) -> str:
    """A sample as one string for display: its turns with their roles, or its text."""
    if sample.messages is not None:
        return " ".join(f"[{role}] {content}" for role, content in sample.messages)
    return sample.text or ""
