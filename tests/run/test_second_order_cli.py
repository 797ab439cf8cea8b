"""Exact mode, the second-order/weights path and the warm-up command, end to end through the CLI."""

import json

import numpy as np
import pyarrow.parquet as pq
import pytest
import torch
from conftest import read_selected, select_args

from influence_distillation.cli import main


def test_warmup_then_second_order_adam_selection(model_dir, data_files, tmp_path):
    pool, target = data_files
    warm = tmp_path / "warm"
    assert main(["warmup", "--pool", str(pool), "--model", str(model_dir("llama")), "--out", str(warm), "--size",
                 "16", "--steps", "4", "--batch-size", "4", "--quiet"]) == 0
    summary = json.loads((warm / "warmup.json").read_text())
    assert summary["status"] == "complete" and len(summary["losses"]) == 4
    state = torch.load(warm / "optimizer.pt", weights_only=True)
    assert "param_names" in state["param_groups"][0]
    assert (warm / "model.safetensors").is_file() and (warm / "tokenizer.json").is_file()

    out = tmp_path / "run"
    args = select_args(pool, target, warm, out, 6, "--order", "2", "--optimizer-state", str(warm / "optimizer.pt"))
    assert main(args) == 0
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["influence"] == {"order": 2, "exact": False, "variant": "adamw", "learning_rate": 1e-4,
                                     "normalized_gradients": True}
    assert manifest["selection"]["strategy"] == "weights" and "weights.parquet" in manifest["outputs"]
    weights = np.asarray(pq.read_table(out / "weights.parquet").to_pydict()["weight"])
    assert weights.shape == (36,) and (weights >= 0).all() and weights.sum() == pytest.approx(36)
    assert manifest["weights"]["exact_k"] and (weights > 0).sum() == 6
    assert manifest["weights"]["kkt_residual"] < 1e-6
    selected = read_selected(out)
    ids = pq.read_table(out / "weights.parquet").to_pydict()["id"]
    assert {r["id"] for r in selected} == {i for i, w in zip(ids, weights) if w > 0}
    assert all(r["weight"] > 0 for r in selected)
    assert [r["weight"] for r in selected] == sorted((r["weight"] for r in selected), reverse=True)


def test_first_order_weights_select_the_top_k_of_the_mean_score(model_dir, data_files, tmp_path):
    pool, target = data_files
    model = model_dir("llama")
    assert main(select_args(pool, target, model, tmp_path / "w", 7, "--selection", "weights")) == 0
    assert main(select_args(pool, target, model, tmp_path / "k", 7, "--selection", "top-k")) == 0
    assert {r["id"] for r in read_selected(tmp_path / "w")} == {r["id"] for r in read_selected(tmp_path / "k")}


def test_second_order_needs_weight_selection(model_dir, data_files, tmp_path, capsys):
    pool, target = data_files
    code = main(select_args(pool, target, model_dir("llama"), tmp_path / "x", 5, "--order", "2", "--selection",
                            "round-robin"))
    assert code == 2 and "--order 2 acts through the optimal weights" in capsys.readouterr().err


def test_hessian_subset_is_a_reweighted_sum_of_per_sample_hessians(tokenizer, tmp_path):
    from conftest import make_model, synthetic_target, write_jsonl

    from influence_distillation.data.records import load_samples
    from influence_distillation.data.tokenization import tokenize_samples
    from influence_distillation.method.gradients import select_parameters
    from influence_distillation.method.hessian import target_hvp
    from influence_distillation.run.policy import hessian_sample

    model = make_model("llama", len(tokenizer)).double()
    write_jsonl(tmp_path / "t.jsonl", synthetic_target(6))
    targets = tokenize_samples(load_samples(tmp_path / "t.jsonl"), tokenizer, 64).examples
    weights = torch.tensor([1.0, 2.0, 3.0, 1.0, 2.0, 3.0], dtype=torch.float64) / 12
    assert hessian_sample(targets, weights, 0, seed=1)[0] is targets and hessian_sample(targets, weights, 6, 1)[0] is targets
    subset, sub_weights = hessian_sample(targets, weights, 3, seed=1)
    assert len(subset) == 3 and sub_weights.sum().item() == pytest.approx(weights.sum().item())
    params = select_parameters(model, "mlp-down")
    vectors = torch.randn(2, sum(p.numel() for p in params.values()), generator=torch.Generator().manual_seed(0),
                          dtype=torch.float64)
    rows = [[t.id for t in targets].index(e.id) for e in subset]
    per_sample = [target_hvp(model, params, [targets[i]], vectors, torch.ones(1, dtype=torch.float64)) for i in rows]
    expected = sum(w * h for w, h in zip(weights[rows] * (weights.sum() / weights[rows].sum()), per_sample))
    torch.testing.assert_close(target_hvp(model, params, subset, vectors, sub_weights), expected)
