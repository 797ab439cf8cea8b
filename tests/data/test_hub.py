"""Hub names for models and datasets, resolved offline from a Hugging Face cache laid out in the test."""

import json

import pytest
from conftest import synthetic_pool, synthetic_target, write_jsonl

from influence_distillation.cli import main
from influence_distillation.data.hub import is_hub_name
from influence_distillation.data.records import load_samples
from influence_distillation.errors import DataError
from influence_distillation.model.loading import resolve_model_path

COMMIT = "0123456789abcdef0123456789abcdef01234567"


def _cached_repo(cache, kind: str, name: str):
    """The Hub cache's layout: <kind>s--org--name/{refs/main, snapshots/<commit>/...}."""
    repo = cache / f"{kind}s--{name.replace('/', '--')}"
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / "main").write_text(COMMIT)
    snapshot = repo / "snapshots" / COMMIT
    snapshot.mkdir(parents=True)
    return snapshot


@pytest.fixture
def hub_cache(tmp_path, monkeypatch, model_dir):
    cache = tmp_path / "hub"
    model = _cached_repo(cache, "model", "org/tiny-llama")
    for file in model_dir("llama").iterdir():
        (model / file.name).symlink_to(file)
    data = _cached_repo(cache, "dataset", "org/mixed")
    (data / "data").mkdir()
    write_jsonl(data / "data" / "train-00000-of-00002.jsonl", synthetic_pool(20, seed=0))
    write_jsonl(data / "data" / "train-00001-of-00002.jsonl", synthetic_pool(16, seed=5))
    write_jsonl(data / "data" / "validation-00000-of-00001.jsonl", synthetic_target(4))
    monkeypatch.setenv("HF_HUB_CACHE", str(cache))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    return cache


def test_hub_names_resolve_to_the_cached_snapshot(hub_cache):
    assert resolve_model_path("org/tiny-llama") == hub_cache / "models--org--tiny-llama" / "snapshots" / COMMIT
    train = load_samples("org/mixed", "pool", split="train")
    expected = synthetic_pool(20, seed=0) + synthetic_pool(16, seed=5)  # both shards, in order
    assert [s.record for s in train] == expected
    assert [s.record for s in load_samples("org/mixed", "target", split="validation")] == synthetic_target(4)
    with pytest.raises(DataError, match="has splits train, validation; choose one with DataConfig.split"):
        load_samples("org/mixed", "pool")
    with pytest.raises(DataError, match="no split 'test' \\(found: train, validation\\)"):
        load_samples("org/mixed", "pool", split="test")
    assert not is_hub_name(str(hub_cache))  # an existing local path is never a Hub name


def test_select_with_hub_model_and_dataset_offline(hub_cache, tmp_path, capsys):
    out = tmp_path / "run"
    args = ["select", "--model", "org/tiny-llama", "--pool", "org/mixed", "--target", "org/mixed", "--out", str(out),
            "--budget", "5", "--landmarks", "12", "--num-blocks", "2", "--grad-dim", "256", "--quiet"]
    assert main([*args, "--split", "train"]) == 0  # the target is read from the same split here
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["config"]["model"]["path"] == "org/tiny-llama" and manifest["config"]["data"]["split"] == "train"
    selected = [json.loads(line) for line in (out / "selected.jsonl").read_text().splitlines()]
    pool = synthetic_pool(20, seed=0) + synthetic_pool(16, seed=5)
    assert len(selected) == 5 and all(pool[int(r["id"])]["prompt"] == r["prompt"] for r in selected)


@pytest.mark.parametrize("flag, name, message", [
    ("--model", "org/absent-model", "--model org/absent-model: not in the Hugging Face cache"),
    ("--pool", "org/absent-data", "--pool org/absent-data: not in the Hugging Face cache"),
])
def test_an_uncached_hub_name_offline_is_a_one_line_error(hub_cache, tmp_path, capsys, flag, name, message):
    values = {"--model": "org/tiny-llama", "--pool": "org/mixed", "--target": "org/mixed"}
    values[flag] = name
    args = ["select", *[x for pair in values.items() for x in pair], "--split", "train", "--out",
            str(tmp_path / "run"), "--budget", "5", "--quiet"]
    assert main(args) == 2
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert err.startswith("influence-distill: error: ") and message in err and "HF_HUB_OFFLINE=0" in err
    assert not (tmp_path / "run" / "manifest.json").exists()
