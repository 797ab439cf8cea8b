import json

import numpy as np
import pyarrow.parquet as pq
import pytest
import torch
from conftest import adam_state_file, make_model, select_args

from influence_distillation.cli import main
from influence_distillation.data.records import Sample
from influence_distillation.data.tokenization import tokenize_samples
from influence_distillation.method import baselines
from influence_distillation.method.preconditioning import AdamParamState


def test_mid_ppl_takes_the_band_from_the_33rd_percentile():
    losses = np.arange(100, dtype=float)  # descending order is 99, 98, …
    chosen = baselines.mid_ppl_selection(losses, 10)
    assert chosen.tolist() == list(range(99 - 33, 99 - 43, -1))
    assert len(baselines.mid_ppl_selection(losses, 90)) == 90  # the band never runs off the end


def test_rds_pooling_is_position_weighted_mean_of_final_hidden_states(tokenizer):
    model = make_model("llama", len(tokenizer))
    samples = [Sample(str(i), {}, (("user", "Hi there"), ("assistant", "Hello " * (i + 1))), None) for i in range(3)]
    examples = tokenize_samples(samples, tokenizer, 512).examples
    pooled = baselines.rds_embeddings(model, examples, batch_size=2, progress=False)
    for row, example in enumerate(examples):
        with torch.no_grad():
            hidden = model.model(input_ids=example.input_ids[None]).last_hidden_state[0]
        weights = torch.arange(1, len(example) + 1, dtype=torch.float32)
        expected = torch.nn.functional.normalize((hidden * weights[:, None]).sum(0) / weights.sum(), dim=0)
        torch.testing.assert_close(pooled[row], expected, rtol=1e-4, atol=1e-5)


def test_less_transform_is_the_adam_update_direction():
    m, v, g = torch.randn(6), torch.rand(6), torch.randn(6)
    state = AdamParamState(m, v, step=10, lr=1e-3, beta1=0.9, beta2=0.999, eps=1e-8, weight_decay=0.0)
    transform = baselines.less_transform({"w": state}, {"w": torch.zeros(6)})
    expected = (0.9 * m + 0.1 * g) / torch.sqrt(0.999 * v + 0.001 * g**2 + 1e-8)
    torch.testing.assert_close(transform(g), expected)


@pytest.mark.parametrize("method", ["random", "mid-ppl", "rds+", "embed-sim", "less", "exact"])
def test_every_method_writes_the_same_outputs(method, model_dir, data_files, tmp_path):
    pool, target = data_files
    model = model_dir("llama")
    extra = ["--method", method]
    if method == "less":
        extra += ["--optimizer-state", str(adam_state_file(model, tmp_path / "optimizer.pt"))]
    out = tmp_path / method
    assert main(select_args(pool, target, model, out, 7, *extra)) == 0
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["method"] == method and manifest["status"] == "complete"
    assert manifest["cost"]["flops"] >= 0 and manifest["counts"]["selected"] == 7
    selected = [json.loads(line) for line in (out / "selected.jsonl").read_text().splitlines()]
    assert len({row["id"] for row in selected}) == 7
    scores = pq.read_table(out / "scores.parquet").to_pydict()
    assert sum(scores["selected"]) == 7 and len(scores["id"]) == 36
    if method == "random":  # a uniformly random subset: differs across seeds, same for the same seed
        assert main(select_args(pool, target, model, tmp_path / "again", 7, *extra)) == 0
        assert (tmp_path / "again" / "selected.jsonl").read_text() == (out / "selected.jsonl").read_text()
        assert main(select_args(pool, target, model, tmp_path / "other", 7, *extra, "--seed", "1")) == 0
        assert (tmp_path / "other" / "selected.jsonl").read_text() != (out / "selected.jsonl").read_text()


def test_baseline_flag_combinations_are_checked(model_dir, data_files, tmp_path, capsys):
    pool, target = data_files
    assert main(select_args(pool, target, model_dir("llama"), tmp_path / "a", 5, "--method", "random",
                            "--selection", "top-k")) == 2
    assert "makes its own selection" in capsys.readouterr().err
    assert main(select_args(pool, target, model_dir("llama"), tmp_path / "b", 5, "--method", "less")) == 2
    assert "needs --optimizer-state" in capsys.readouterr().err
