"""A benchmark's finished work as small files to commit, so that a fresh checkout continues a long benchmark.

The suite with every baseline at three seeds takes longer than one working session, and its stage caches are
gigabytes that a checkout does not carry. The ledger keeps what the tables need and no data: for each selection the
selected ids (with the scores and weights the run wrote) and the run's manifest (settings, stage times, FLOPs,
machine); for each target every fine-tune's scores. Entries are keyed by portable fingerprints — the contents of
the pool, target and test files, the model's name, every setting — so an entry is reused only for the same work,
and anything else is computed and added. Times in a reused manifest are those of the run that made it, on its
machine (`manifest.environment`).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from influence_distillation import artifacts
from influence_distillation.data.export import llama_factory_info
from influence_distillation.options import key_dict, to_dict


class Ledger:
    def __init__(self, folder: str | Path, model: str):
        self.folder, self.model = Path(folder), model
        self._contents: dict[str, str] = {}
        self._pools: dict[str, dict[str, dict[str, Any]]] = {}

    def _content(self, path: str | Path) -> str:
        """A file's content fingerprint, once per file and run (the pool is hashed for every selection)."""
        key = str(path)
        if key not in self._contents:
            self._contents[key] = artifacts.content_fingerprint(path)
        return self._contents[key]

    def _pool(self, path: str) -> dict[str, dict[str, Any]]:
        """The pool's records by id, read once per run (every selection of every target shares it)."""
        if path not in self._pools:
            self._pools[path] = {record["id"]: record for record in artifacts.read_jsonl(Path(path))}
        return self._pools[path]

    def _portable(self, values: dict[str, Any], files: tuple[str, ...], model: str) -> dict[str, Any]:
        """`values` (a to_dict'ed config) with file paths replaced by their contents and the model by its name."""
        values = {**values, "out": None, **{name: self._content(values[name]) for name in files if values.get(name)}}
        values["model"] = {**values["model"], "path": model}
        return values

    def warm_key(self, warm: Path) -> str:
        """The warm-up by its recipe (pool contents, model, settings), not by its multi-MB optimizer file."""
        config = artifacts.read_json(warm / "warmup.json")["config"]
        return artifacts.fingerprint(warmup=self._portable(config, ("pool",), self.model))

    def selection_key(self, config, warm: Path | None) -> str:
        # key_dict: an option added later, at its default, leaves the key (and the recorded selection) as it was.
        values = self._portable(key_dict(config), ("pool", "target"), self.model if warm is None else
                                self.warm_key(warm))
        values["gradients"] = {**values["gradients"], "optimizer_state": None}  # the warm key above covers it
        return artifacts.fingerprint(selection=values)

    def restore_selection(self, folder: Path, key: str, config) -> bool:
        """Write `folder` as the selection run recorded under `key` would have (selected.jsonl from the pool's
        records, dataset_info.json, its manifest with this run's settings); False when the ledger holds no such
        selection."""
        entry = artifacts.read_json(self.folder / f"{folder.name}.json")
        if entry.get("key") != key:
            return False
        pool = self._pool(config.pool)
        manifest = {**entry["manifest"], "config": to_dict(config), "ledger": str(self.folder / f"{folder.name}.json")}
        with artifacts.atomic_directory(folder) as staging:
            rows = [{**pool[row["id"]], **row} for row in entry["rows"]]
            artifacts.write_jsonl(staging / artifacts.SELECTED, rows)
            artifacts.write_json(staging / artifacts.DATASET_INFO, llama_factory_info(rows, artifacts.SELECTED))
            artifacts.write_json(staging / "manifest.json", manifest)
        return True

    def record_selection(self, folder: Path, key: str, config) -> None:
        """Keep a finished selection: its ids with the fields the run added to the pool's records, and its manifest."""
        pool = self._pool(config.pool)
        rows = [{k: v for k, v in row.items() if k == "id" or k not in pool[row["id"]]}
                for row in artifacts.read_jsonl(folder / "selected.jsonl")]
        artifacts.write_json(self.folder / f"{folder.name}.json",
                             {"key": key, "rows": rows, "manifest": artifacts.read_manifest(folder)})

    def evaluation_recipe(self, evaluation) -> str:
        values = key_dict(evaluation)
        values = {**values, "test": self._content(values["test"]), "model": {**values["model"], "path": self.model}}
        return artifacts.fingerprint(evaluation=values)

    def evaluations(self, target: str, recipe: str) -> dict[str, Any]:
        """{"runs": {key: scores}, "untrained": scores} recorded for this target under `recipe` (empty if none)."""
        entry = artifacts.read_json(self.folder / f"eval-{target}.json")
        return entry if entry.get("recipe") == recipe else {"recipe": recipe, "runs": {}}

    def record_evaluations(self, target: str, entry: dict[str, Any]) -> None:
        artifacts.write_json(self.folder / f"eval-{target}.json", entry)
