"""What lets a pool larger than memory through a run: tokens in files, scores on disk, outputs written in chunks."""

import json
import os

import numpy as np
import pyarrow.parquet as pq
import torch
from conftest import select_args

from influence_distillation.cli import main
from influence_distillation.data.packed import PackedExamples
from influence_distillation.data.tokenization import TokenizedSet
from influence_distillation.method.weights import WeightSolution
from influence_distillation.run.outputs import SelectionResult, write_outputs


def test_outputs_written_in_chunks_equal_the_whole_arrays(tmp_path):
    rng = np.random.default_rng(0)
    ids = [f"s{i}" for i in range(23)]
    scores, selected, landmarks = rng.standard_normal((23, 3)), np.array([7, 2, 19, 11]), np.array([0, 5, 19])
    weights = WeightSolution(weights=torch.from_numpy(rng.random(23)), lam=0.1, num_nonzero=4, exact_k=True,
                             message="", iterations=1)
    result = SelectionResult(ids, None, landmarks, torch.zeros(3, 3), scores, selected, weights)
    records = {ids[row]: {"text": f"record {row}"} for row in selected}
    empty = TokenizedSet(PackedExamples())
    for chunk in (4, 1000):
        write_outputs(tmp_path / str(chunk), result, records, empty, empty, chunk_rows=chunk)
    small, whole = (pq.read_table(tmp_path / str(chunk) / "scores.parquet") for chunk in (4, 1000))
    assert small.equals(whole) and small.num_rows == 23
    assert pq.ParquetFile(tmp_path / "4" / "scores.parquet").num_row_groups == 6  # written a chunk at a time
    table = small.to_pydict()
    assert table["id"] == ids and np.allclose(table["score"], scores.mean(axis=1))
    assert [table["rank"][row] for row in selected] == [0, 1, 2, 3] and sum(table["selected"]) == 4
    assert [row for row, flag in enumerate(table["landmark"]) if flag] == landmarks.tolist()
    assert np.array_equal(table["weight"], weights.weights.numpy())
    assert np.array_equal(np.load(tmp_path / "4" / "target_scores.npy"), scores.astype(np.float32))
    lines = [json.loads(line) for line in (tmp_path / "4" / "selected.jsonl").read_text().splitlines()]
    assert [line["id"] for line in lines] == [ids[row] for row in selected]
    assert np.allclose([line["score"] for line in lines], scores[selected].mean(axis=1))


def test_a_rerun_reads_the_pool_tokens_back_and_selects_the_same(model_dir, data_files, tmp_path):
    pool, target = data_files
    cache = tmp_path / "cache"
    for out in ("first", "second"):
        assert main(select_args(pool, target, model_dir("llama"), tmp_path / out, 6, "--cache-dir", str(cache))) == 0
    manifests = [json.loads((tmp_path / out / "manifest.json").read_text()) for out in ("first", "second")]
    assert "tokens" not in manifests[0]["cache"]["reused"] and "tokens" in manifests[1]["cache"]["reused"]
    assert manifests[0]["counts"] == manifests[1]["counts"]
    for name in ("selected.jsonl", "excluded.jsonl"):
        assert (tmp_path / "first" / name).read_text() == (tmp_path / "second" / name).read_text()
    assert np.array_equal(np.load(tmp_path / "first" / "target_scores.npy"),
                          np.load(tmp_path / "second" / "target_scores.npy"))
    folders = sorted(p.name for p in cache.iterdir())
    assert sum(name.startswith("tokens-") for name in folders) == 1
    assert not [name for name in folders if name.startswith(".")]  # no staging folder, no scratch scores left
    umask = os.umask(0)
    os.umask(umask)  # outputs and cache folders are ordinary files and folders, not private temporaries
    assert {(tmp_path / "first" / name).stat().st_mode & 0o777 for name in ("selected.jsonl", "scores.parquet",
                                                                          "manifest.json")} == {0o666 & ~umask}
    assert {p.stat().st_mode & 0o777 for p in cache.iterdir()} == {0o777 & ~umask}
