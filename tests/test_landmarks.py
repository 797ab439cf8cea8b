import numpy as np
import pytest
import torch

from influence_distillation.errors import ConfigError
from influence_distillation.method.landmarks import choose_landmarks, landmark_count


def test_counts_fractions_and_caps():
    assert landmark_count(10, 100) == 10 and landmark_count(0.05, 1000) == 50
    assert landmark_count(5000, 100) == 100 and landmark_count(0.0001, 100) == 1


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
