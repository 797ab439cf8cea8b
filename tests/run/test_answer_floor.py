"""The answer-length floor (`SelectionConfig.answer_floor`): pool samples whose trained answer is far shorter than the
target's are neither selected nor verified."""

import json
import random

import numpy as np
import pyarrow.parquet as pq
import pytest
from conftest import CAPITALS, COUNTRIES, write_jsonl

from influence_distillation.config import ModelConfig, SelectConfig
from influence_distillation.data.records import load_samples
from influence_distillation.data.tokenization import IGNORE_INDEX, tokenize_samples
from influence_distillation.errors import ConfigError
from influence_distillation.method.landmarks import choose_landmarks
from influence_distillation.model.loading import load_model
from influence_distillation.run.pipeline import run_selection


def _sums(count: int, seed: int, worked: bool) -> list[dict]:
    """Sums to work out: worked out at length, or only the bare number."""
    rng, rows = random.Random(seed), []
    for i in range(count):
        a, b = rng.randint(2, 60), rng.randint(2, 60)
        answer = f"First {a}, then add {b}: {a} plus {b} is {a + b}. So the answer is {a + b}." if worked else f"{a + b}."
        rows.append({"id": f"sum-{seed}-{i}", "prompt": f"What is {a} plus {b}?", "completion": answer})
    return rows


def _capitals(count: int) -> list[dict]:
    """Long answers of another kind."""
    return [{"id": f"capital-{i}", "prompt": f"Name the capital of {COUNTRIES[i % 10]}.",
             "completion": f"The capital of {COUNTRIES[i % 10]} is {CAPITALS[i % 10]}. " * 3} for i in range(count)]


def _run(model_path, pool, target, out, floor):
    config = SelectConfig(pool=str(pool), target=str(target), out=str(out), seed=1)
    config.model.path, config.selection.budget, config.selection.answer_floor = str(model_path), 8, floor
    config.landmarks.count, config.embedding.num_blocks, config.gradients.proj_dim = 10, 2, 256
    run_selection(config, progress=False)
    return [json.loads(line)["id"] for line in (out / "selected.jsonl").read_text().splitlines()]


def test_no_sample_below_the_floor_is_selected_or_verified(model_dir, tmp_path):
    model_path = model_dir("llama")
    pool = write_jsonl(tmp_path / "pool.jsonl", _sums(20, 0, worked=False) + _capitals(20))
    target = write_jsonl(tmp_path / "target.jsonl", _sums(4, 1, worked=True))
    _, tokenizer = load_model(ModelConfig(path=str(model_path)))

    def answers(path):
        examples = tokenize_samples(load_samples(str(path), "x"), tokenizer, 512, True, "x").examples
        return {e.id: int((e.labels[1:] != IGNORE_INDEX).sum()) for e in examples}

    pool_answers, floor = answers(pool), 0.5 * float(np.median(list(answers(target).values())))
    short = {sample for sample, tokens in pool_answers.items() if tokens < floor}
    assert {sample for sample in pool_answers if sample.startswith("sum")} == short

    without = _run(model_path, pool, target, tmp_path / "off", 0.0)
    assert short & set(without)  # the bare answers are picked when nothing stops it: the floor has work to do
    selected = _run(model_path, pool, target, tmp_path / "on", 0.5)
    assert not short & set(selected) and len(selected) == 8
    manifest = json.loads((tmp_path / "on" / "manifest.json").read_text())
    assert manifest["selection"]["below_answer_floor"] == len(short)
    assert manifest["selection"]["answer_floor_tokens"] == floor
    table = pq.read_table(tmp_path / "on" / "scores.parquet").to_pandas()
    first = choose_landmarks(len(table), 10, manifest["seeds"]["landmarks"], "random")  # the run's own draw
    verified = set(table["id"][table["landmark"]]) - set(table["id"].iloc[first])
    assert len(verified) == manifest["landmarks"]["verified"] > 0
    assert not short & verified  # verification is spent on samples the selection may take


def test_a_floor_above_the_targets_median_is_refused():
    config = SelectConfig(pool="p", target="t", out="o")
    config.model.path, config.selection.budget, config.selection.answer_floor = "m", 4, 1.5
    with pytest.raises(ConfigError, match="SelectionConfig.answer_floor"):
        config.validate()
    config.selection.answer_floor = 1.0
    config.validate()
