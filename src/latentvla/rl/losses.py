"""PPO / GRPO policy losses, value loss and KL estimators, as pure functions."""

from __future__ import annotations

import torch
from torch import Tensor


def clipped_surrogate(logp: Tensor, old_logp: Tensor, adv: Tensor, clip: float, level: str = "element"):
    """PPO's clipped objective (Schulman et al. 2017, Eq. 7) as a loss to minimise, and its ratio.

    logp, old_logp: (B, E) per-element log-probabilities of the sampled chunk/chain; adv: (B,).
    level "chunk": one ratio per decision, exp(sum_E logp - sum_E old); "element": one ratio per element
    (per-token PPO as in the VLA-RL works; stays well-conditioned when E = K x H x A is large), averaged.
    GRPO (Shao et al. 2024, Eq. 3) uses the same surrogate with group-normalised advantages and no critic.
    Returns (loss scalar, ratio (B,) or (B, E), clip fraction).
    """
    if level == "chunk":
        ratio = torch.exp(logp.sum(-1) - old_logp.sum(-1))
        a = adv
    else:
        ratio = torch.exp(logp - old_logp)
        a = adv[:, None]
    unclipped, clipped = ratio * a, ratio.clamp(1.0 - clip, 1.0 + clip) * a
    loss = -torch.minimum(unclipped, clipped).mean()
    clipfrac = ((ratio - 1.0).abs() > clip).float().mean()
    return loss, ratio, clipfrac


def value_loss(values: Tensor, returns: Tensor) -> Tensor:
    """0.5 * MSE between the critic and the GAE returns."""
    return 0.5 * (values - returns).pow(2).mean()


def kl_k3(logp: Tensor, ref_logp: Tensor) -> Tensor:
    """Schulman's k3 estimator of KL(pi || ref) on samples of pi: exp(r) - r - 1, r = ref_logp - logp (>= 0,
    unbiased; the GRPO paper's KL term). Per element; mean it."""
    r = ref_logp - logp
    return torch.exp(r) - r - 1.0


def approx_kl(logp: Tensor, old_logp: Tensor) -> Tensor:
    """KL(old || new) estimate between the rollout policy and the updated one (k3 with the roles swapped)."""
    r = logp - old_logp
    return (torch.exp(r) - 1.0 - r).mean()
