import numpy as np
import pytest
import torch

from influence_distillation.config import SelectConfig
from influence_distillation.errors import ConfigError
from influence_distillation.method.landmarks import AUTO_CAP, AUTO_FLOOR, choose_landmarks, landmark_count
from influence_distillation.run.policy import verification_count


def test_counts_fractions_and_caps():
    assert landmark_count(10, 100) == 10 and landmark_count(0.05, 1000) == 50
    assert landmark_count(5000, 100) == 100 and landmark_count(0.0001, 100) == 1


@pytest.mark.parametrize("pool, landmarks", [(10, 10), (100, 32), (640, 32), (1000, 50), (2000, 100), (2560, 128),
                                             (2820, 128), (10_000, 128), (200_000, 128), (10**7, 128)])
def test_the_default_rule_is_five_percent_between_a_floor_and_a_cap(pool, landmarks):
    assert (AUTO_FLOOR, AUTO_CAP) == (32, 128)
    assert landmark_count(-1, pool) == landmarks
    assert SelectConfig().landmarks.count == -1 and SelectConfig().landmarks.verify == -1


@pytest.mark.parametrize("pool, budget, gradients", [(2820, 120, 128 + 120), (10_000, 500, 256), (20_000, 1000, 256),
                                                     (200_000, 10_000, 256), (1000, 500, 50 + 50), (40, 4, 32 + 4)])
def test_past_the_cap_a_run_takes_a_fixed_number_of_gradients_whatever_the_pool_and_budget(pool, budget, gradients):
    """Landmarks plus verification landmarks at the defaults: a fixed cost once the pool passes 2,560 samples."""
    first = landmark_count(-1, pool)
    assert first + verification_count(-1, budget, first, pool) == gradients


@pytest.mark.parametrize("strategy", ["random", "kmeans++", "k-center"])
def test_strategies_return_distinct_sorted_seeded_indices(strategy):
    points = torch.randn(200, 3, generator=torch.Generator().manual_seed(0))
    chosen = choose_landmarks(200, 20, seed=3, strategy=strategy, embeddings=points)
    assert len(set(chosen.tolist())) == 20 and list(chosen) == sorted(chosen)
    again = choose_landmarks(200, 20, seed=3, strategy=strategy, embeddings=points)
    assert np.array_equal(chosen, again)


def test_kcenter_covers_clusters_that_random_choice_can_miss():
    # 5 tight, far-apart clusters of very different sizes: k-center puts a landmark in each.
    generator = torch.Generator().manual_seed(0)
    sizes, centers = [400, 50, 20, 10, 5], torch.tensor([[0.0, 0], [50, 0], [0, 50], [50, 50], [-50, -50]])
    points = torch.cat([c + 0.1 * torch.randn(n, 2, generator=generator) for c, n in zip(centers, sizes)])
    cluster = np.repeat(np.arange(5), sizes)
    for strategy in ("k-center", "kmeans++"):
        chosen = choose_landmarks(len(points), 5, seed=0, strategy=strategy, embeddings=points)
        assert set(cluster[chosen]) == set(range(5)), strategy
    with pytest.raises(ConfigError, match="needs embeddings"):
        choose_landmarks(100, 5, seed=0, strategy="k-center", embeddings=None)


@pytest.mark.parametrize("strategy", ["kmeans++", "k-center"])
def test_duplicate_embeddings_are_never_both_landmarks(strategy):
    # Distances come from ‖x‖² − 2x·y + ‖y‖² (no N × d temporary); rounding must not make a copy of a landmark look
    # like a new point. Embeddings with a large common offset make the cancellation hard.
    points = torch.randn(300, 48) + 1000.0
    doubled = torch.cat([points, points])
    chosen = choose_landmarks(600, 300, seed=3, strategy=strategy, embeddings=doubled)
    assert len(set((chosen % 300).tolist())) == 300


def test_squared_distances_match_direct_differences_far_from_the_origin():
    from influence_distillation.method.landmarks import _squared_distances

    generator = torch.Generator().manual_seed(0)
    points = torch.randn(300, 48, generator=generator) + 1000.0
    doubled = torch.cat([points, points])
    distance = _squared_distances(doubled)
    for i in (0, 7, 123, 299):
        direct = (doubled - doubled[i]).double().square().sum(1)
        assert torch.allclose(distance(i), direct, rtol=1e-3, atol=1e-2)
        assert distance(i)[i] == 0 and distance(i)[i + 300] == 0
