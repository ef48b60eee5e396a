"""Advantages over chunk-level decisions, as pure functions.

Why not torchrl's `GAE` / `ClipPPOLoss`: torchrl is not installed, it pins its own torch build and brings the
tensordict stack; the maths below is ~30 lines and is tested against direct sums (tests/test_rl.py).
"""

from __future__ import annotations

import torch
from torch import Tensor


def gae(
    rewards: Tensor, values: Tensor, bootstrap: float | Tensor, gamma: float, lam: float
) -> tuple[Tensor, Tensor]:
    """Generalised advantage estimation (Schulman et al. 2016, Eq. 11-16) over ONE trajectory of T decisions.

    rewards, values: (T,); `bootstrap` = V(s_T) after the last decision (0 when the episode terminated, the
    critic's value when it was only truncated by the time limit). Returns (advantages, returns = adv + values).
    """
    T = rewards.shape[0]
    adv = torch.zeros_like(rewards)
    nxt = torch.as_tensor(bootstrap, dtype=rewards.dtype)
    running = torch.zeros((), dtype=rewards.dtype)
    for t in reversed(range(T)):
        delta = rewards[t] + gamma * nxt - values[t]
        running = delta + gamma * lam * running
        adv[t] = running
        nxt = values[t]
    return adv, adv + values


def group_advantages(returns: Tensor, groups: Tensor, eps: float = 1e-6) -> Tensor:
    """GRPO (Shao et al. 2024, §4.1; SimpleVLA-RL): (R_i - mean_g) / (std_g + eps) within each group of rollouts
    from the same initial configuration. returns, groups: (N,). A group whose rollouts all got the same return
    gets advantage 0 (nothing to learn from it)."""
    adv = torch.zeros_like(returns, dtype=torch.float32)
    for g in torch.unique(groups):
        m = groups == g
        r = returns[m].float()
        adv[m] = (r - r.mean()) / (r.std(unbiased=False) + eps)
    return adv
