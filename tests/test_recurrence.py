"""Depth sampler (log-normal Poisson, Huginn/RD-VLA) and the TBPTT split."""

import pytest
import torch

from latentvla.models.recurrence import sample_depth, split_depth


def test_sample_depth_is_deterministic_in_range_with_mean_near_33():
    a = [sample_depth(torch.Generator().manual_seed(s)) for s in range(50)]
    b = [sample_depth(torch.Generator().manual_seed(s)) for s in range(50)]
    assert a == b
    g = torch.Generator().manual_seed(0)
    draws = torch.tensor([sample_depth(g) for _ in range(4000)], dtype=torch.float32)
    assert int(draws.min()) >= 1 and int(draws.max()) <= 64
    # E[r] = 1 + E[exp(tau)] = 1 + 32 before the clamp at 64, which trims the upper tail slightly (Huginn: ~33).
    assert 31.0 < float(draws.mean()) < 34.0
    assert 26 <= float(draws.median()) <= 31  # median ~29
    assert len(set(draws.tolist())) > 20


def test_sample_depth_clamps_and_validates():
    g = torch.Generator().manual_seed(1)
    assert all(4 <= sample_depth(g, mean=32, min_depth=4, max_depth=6) <= 6 for _ in range(50))
    assert sample_depth(g, mean=1e-6, sigma=0.0) == 1  # Poisson(~0) + 1
    with pytest.raises(ValueError, match="min_depth"):
        sample_depth(g, min_depth=5, max_depth=4)


def test_split_depth():
    assert split_depth(20, 8) == (12, 8)
    assert split_depth(5, 8) == (0, 5)
    assert split_depth(8, 8) == (0, 8)
    with pytest.raises(ValueError, match="r >= 1"):
        split_depth(0)
