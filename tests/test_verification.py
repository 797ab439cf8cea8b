"""Verification landmarks (`--verify`): a second round of exact gradients where the propagated selection lies."""

import json

import numpy as np
import pyarrow.parquet as pq
import pytest
from test_cli import select_args
from test_distributed import assert_same_selection, torchrun
from test_second_order_cli import read_selected

from influence_distillation.cli import main
from influence_distillation.method.stages import (
    round_sizes,
    verification_count,
    verification_rows,
)


def landmark_rows(out):
    return np.flatnonzero(pq.read_table(out / "scores.parquet").to_pydict()["landmark"])


def test_round_sizes_and_counts():
    assert round_sizes(10, 3) == [3, 4, 3] and round_sizes(2, 3) == [1, 1] and round_sizes(0, 3) == []
    assert verification_count(-1, budget=8, landmarks=12, pool=36) == 8
    assert verification_count(-1, budget=20, landmarks=12, pool=36) == 12
    assert verification_count(50, budget=8, landmarks=12, pool=36) == 24  # never more than the non-landmarks


def test_verification_rows_are_the_best_mean_scores_among_non_landmarks():
    rng = np.random.default_rng(0)
    scores = rng.normal(size=(50, 3))
    landmarks = np.array([3, 7, 11, 20])
    scores[landmarks] += 10  # landmarks would win if they were not excluded
    picks = verification_rows(scores, landmarks, 9)
    kept = np.setdiff1d(np.arange(50), landmarks)
    assert picks.tolist() == kept[np.argsort(-scores[kept].mean(1), kind="stable")[:9]].tolist()
    assert sorted(verification_rows(scores, landmarks, 46).tolist()) == kept.tolist()


@pytest.mark.parametrize("mode", ["all landmarks", "verification covers the rest"])
@pytest.mark.parametrize("extra", [[], ["--order", "2", "--learning-rate", "0.5"]])
def test_an_exact_gradient_for_every_sample_reproduces_exact_mode(mode, extra, model_dir, data_files, tmp_path):
    """When every pool sample gets an exact gradient — all 36 as first landmarks, or 12 landmarks plus 24 verified —
    every value is exact and the run must equal --exact (scores, and therefore the selection)."""
    pool, target = data_files
    model = model_dir("llama")
    flags = ["--landmarks", "36"] if mode == "all landmarks" else ["--verify", "24"]
    assert main(select_args(pool, target, model, tmp_path / "exact", 6, "--exact", *extra)) == 0
    assert main(select_args(pool, target, model, tmp_path / "run", 6, *flags, *extra)) == 0
    # float32 sums in another order (KRR fit, verification merge): relative 1e-4 holds on any CPU and thread count
    np.testing.assert_allclose(np.load(tmp_path / "run" / "target_scores.npy"),
                               np.load(tmp_path / "exact" / "target_scores.npy"), rtol=1e-4, atol=1e-6)
    assert [r["id"] for r in read_selected(tmp_path / "run")] == [r["id"] for r in read_selected(tmp_path / "exact")]
    manifest = json.loads((tmp_path / "run" / "manifest.json").read_text())
    first, verified = (36, 0) if mode == "all landmarks" else (12, 24)
    assert manifest["landmarks"] == {"first": first, "verified": verified, "strategy": "random"}
    assert len(landmark_rows(tmp_path / "run")) == 36


def test_verified_landmarks_are_where_the_first_propagation_selects(model_dir, data_files, tmp_path):
    """One round: the verified samples are what the selection would have taken from the run without verification."""
    pool, target = data_files
    model = model_dir("llama")
    assert main(select_args(pool, target, model, tmp_path / "plain", 8, "--verify", "0")) == 0
    assert main(select_args(pool, target, model, tmp_path / "verified", 8, "--verify", "5", "--verify-rounds",
                            "1")) == 0
    first = landmark_rows(tmp_path / "plain")
    scores = np.load(tmp_path / "plain" / "target_scores.npy")
    expected = verification_rows(scores, first, 5)
    assert sorted(np.setdiff1d(landmark_rows(tmp_path / "verified"), first).tolist()) == sorted(expected.tolist())
    manifest = json.loads((tmp_path / "verified" / "manifest.json").read_text())
    plain = json.loads((tmp_path / "plain" / "manifest.json").read_text())
    # The held-out fidelity is measured on the random landmarks alone, so verification leaves it unchanged.
    assert manifest["propagation"]["heldout_spearman"] == plain["propagation"]["heldout_spearman"]


def test_verification_under_torchrun_selects_as_one_process(model_dir, data_files, tmp_path):
    pool, target = data_files
    outputs = []
    for ranks in (1, 2):
        out = tmp_path / f"ranks{ranks}"
        result = torchrun(ranks, select_args(pool, target, model_dir("llama"), out, 8, "--verify", "-1",
                                             "--shard-rows", "3"))
        assert result.returncode == 0, result.stderr[-2000:]
        outputs.append((out / "selected.jsonl").read_text())
    assert_same_selection(outputs[0], outputs[1])
