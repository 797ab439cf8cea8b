"""Incremental pools: rows of unchanged samples are read back by content, wherever they sit in the new pool."""

import json
import random

import numpy as np
from conftest import assert_same_selection, select_args, synthetic_pool, write_jsonl

from influence_distillation.cli import main
from influence_distillation.method.embeddings import JvpEmbedder
from influence_distillation.run import distillation
from influence_distillation.run.shards import RowCache


def _counting(monkeypatch):
    """Count the pool rows the run actually embeds and differentiates."""
    counts = {"embedded": 0, "differentiated": 0}
    embed, gradients = JvpEmbedder.__call__, distillation.compute_gradients

    def counted_embed(self, examples):
        counts["embedded"] += len(examples)
        return embed(self, examples)

    def counted_gradients(model, examples, *args, **kwargs):
        counts["differentiated"] += len(examples)
        return gradients(model, examples, *args, **kwargs)

    monkeypatch.setattr(JvpEmbedder, "__call__", counted_embed)
    monkeypatch.setattr(distillation, "compute_gradients", counted_gradients)
    return counts


def test_a_grown_and_reordered_pool_computes_only_its_new_samples(model_dir, data_files, tmp_path, monkeypatch):
    _, target = data_files
    model, cache = model_dir("llama"), tmp_path / "cache"
    unique = list({json.dumps(r, sort_keys=True): r for r in synthetic_pool(80)}.values())  # no repeated content
    records, grown = unique[:36], unique[:40]
    random.Random(3).shuffle(grown)
    old_pool = write_jsonl(tmp_path / "old.jsonl", records)
    new_pool = write_jsonl(tmp_path / "grown.jsonl", [{**r, "id": f"r{i}"} for i, r in enumerate(grown)])
    counts = _counting(monkeypatch)

    # every sample a landmark, so every gradient is needed and the scores are exact (comparable across runs)
    assert main([*select_args(old_pool, target, model, tmp_path / "old", 6, "--landmarks", "36"),
                 "--cache-dir", str(cache)]) == 0
    assert counts == {"embedded": 36, "differentiated": 36}
    counts.update(embedded=0, differentiated=0)
    assert main([*select_args(new_pool, target, model, tmp_path / "new", 6, "--landmarks", "40"),
                 "--cache-dir", str(cache)]) == 0
    assert counts == {"embedded": 4, "differentiated": 4}

    # the same as computing the grown pool from scratch, up to float32 rounding of other batch compositions (which
    # the central differences' 1/2ε amplifies to ~1e-5 of a row's length, so embeddings compare row by row)
    assert main(select_args(new_pool, target, model, tmp_path / "fresh", 6, "--landmarks", "40")) == 0
    grown, fresh = np.load(tmp_path / "new" / "embeddings.npy"), np.load(tmp_path / "fresh" / "embeddings.npy")
    assert (np.linalg.norm(grown - fresh, axis=1) / np.linalg.norm(fresh, axis=1)).max() < 1e-4
    np.testing.assert_allclose(np.load(tmp_path / "new" / "target_scores.npy"),
                               np.load(tmp_path / "fresh" / "target_scores.npy"), rtol=1e-4, atol=1e-6)
    assert_same_selection((tmp_path / "new" / "selected.jsonl").read_text(),
                          (tmp_path / "fresh" / "selected.jsonl").read_text())


def test_row_cache_reads_only_completed_writes(tmp_path):
    cache = RowCache(tmp_path)
    cache.add([b"a" * 16, b"b" * 16], np.array([[1.0, 2.0], [3.0, 4.0]], dtype=np.float32))
    (tmp_path / "orphan.values.npy").write_bytes(b"cut short")  # a write killed before its digests file
    again = RowCache(tmp_path)
    known = again.known([b"b" * 16, b"c" * 16, b"a" * 16])
    assert sorted(known) == [0, 2] and known[0].tolist() == [3.0, 4.0] and known[2].tolist() == [1.0, 2.0]


def test_shard_rows_read_lazily_equal_the_concatenated_stage(tmp_path):
    import torch

    from influence_distillation.artifacts import write_npy_rows
    from influence_distillation.run.distributed import DistInfo
    from influence_distillation.run.shards import ShardedStage

    full = np.random.default_rng(0).standard_normal((23, 5)).astype(np.float32)
    store = ShardedStage(tmp_path / "stage", 23, 4, {"stage": "test"})
    store.compute(DistInfo(), lambda rows: torch.from_numpy(full[rows]), "test", progress=False)
    rows = store.reader()
    assert rows.shape == (23, 5) and len(rows) == 23
    for part in (slice(None), slice(0, 4), slice(3, 9), slice(7, 23), slice(22, 30), slice(5, 5), slice(1, 20, 3),
                 slice(-6, None)):
        assert np.array_equal(rows[part].numpy(), full[part]), part
    for index in ([17, 0, 17, 5], np.array([22, 3]), torch.tensor([4, 8, 12]), [-1], []):
        assert np.array_equal(rows[index].numpy(), full[np.asarray(index, dtype=np.int64)]), index
    try:
        rows[[23]]
    except IndexError:
        pass
    else:
        raise AssertionError("an out-of-range row must raise")
    for source in (rows, torch.from_numpy(full), full):  # the streamed writer, against np.save's file
        write_npy_rows(tmp_path / "streamed.npy", source, chunk_rows=6)
        np.save(tmp_path / "saved.npy", full)
        assert np.array_equal(np.load(tmp_path / "streamed.npy"), np.load(tmp_path / "saved.npy"))


def test_row_cache_finds_every_row_added_before_among_many_writes(tmp_path):
    rng = np.random.default_rng(0)
    cache, rows = RowCache(tmp_path), {}
    for write in range(40):  # sizes vary so that the sorted runs merge unevenly
        size = int(rng.integers(1, 30))
        digests = [rng.bytes(16) for _ in range(size)] + ([b"\x00" * 15 + bytes([write])] if write % 3 == 0 else [])
        values = rng.standard_normal((len(digests), 2)).astype(np.float32)
        cache.add(digests, values)
        rows.update(zip(digests, values))
        assert len(cache.runs) <= 2 * np.log2(len(rows)) + 2
    unknown = [rng.bytes(16) for _ in range(50)]
    for current in (cache, RowCache(tmp_path)):  # this process's index, and a later run's read from disk
        queries = [*rows, *unknown]
        found = current.known(queries)
        assert sorted(found) == list(range(len(rows)))
        assert all(np.array_equal(found[i], rows[digest]) for i, digest in enumerate(queries[: len(rows)]))
