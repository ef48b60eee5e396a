"""Log-likelihoods of the stochastic policies RL trains, as pure functions.

Gaussian chunk (the recurrent head `rdvla` and `bc`): a ~ N(mu_theta(o), diag sigma^2) around the predicted
normalised chunk, sigma a learned per-(step, dim) std (PPO's usual state-independent log-std).

Flow-Noise (pi-RL, Chen et al. 2025, arXiv 2510.25889, §4.1): the Euler denoising chain of the flow expert
(models/flow_matching.py: t = 0 noise -> t = 1 data, x <- x + dt v(x, t)) becomes a discrete-time Markov chain by
injecting Gaussian noise at every step,

    x_0 ~ N(0, I),   x_{k+1} ~ N(x_k + dt v_theta(x_k, t_k), sigma_k^2),   k = 0..K-1,   action = x_K,

so the log-probability of the sampled chain is exact: sum_k log N(x_{k+1}; x_k + dt v_theta(x_k, t_k), sigma_k^2).
The x_0 term is the same N(0, I) for every theta and cancels in every ratio, so it is left out. pi-RL conditions
sigma on (x_k, observation) with a small network; here sigma_k is one learned value per denoising step and action
dimension (state-independent, as PPO's Gaussian log-std), which keeps the start of RL identical to the trained
flow at sigma -> 0. Evaluation and serving drop the noise (sigma = 0: the ordinary Euler sampler).
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
from torch import Tensor

LOG_SQRT_2PI = 0.5 * math.log(2.0 * math.pi)


def gaussian_log_prob(x: Tensor, mean: Tensor, log_std: Tensor) -> Tensor:
    """Per-element log N(x; mean, exp(log_std)^2) (broadcasting), same shape as x."""
    return -0.5 * ((x - mean) * torch.exp(-log_std)).pow(2) - log_std - LOG_SQRT_2PI


def gaussian_entropy(log_std: Tensor) -> Tensor:
    """Per-element entropy of N(., exp(log_std)^2)."""
    return log_std + 0.5 + LOG_SQRT_2PI


def flow_times(num_steps: int) -> list[float]:
    """The Euler grid t_k = k / K of `flow_matching.euler_integrate`."""
    if num_steps < 1:
        raise ValueError(f"num_steps must be >= 1, got {num_steps}")
    return [k / num_steps for k in range(num_steps)]


VelocityFn = Callable[[Tensor, Tensor], Tensor]  # (x (B,H,A), t (B,)) -> v (B,H,A)


def flow_noise_sample(
    velocity: VelocityFn,
    x0: Tensor,
    log_std: Tensor | None,
    num_steps: int,
    generator: torch.Generator | None = None,
) -> Tensor:
    """The noisy Euler chain (B, K+1, H, A) from x0 (B, H, A); `log_std` (K, A) per step and dimension, or None
    for the deterministic Euler sampler (evaluation)."""
    dt, x, chain = 1.0 / num_steps, x0, [x0]
    for k, tk in enumerate(flow_times(num_steps)):
        t = torch.full((x.shape[0],), tk, dtype=x.dtype, device=x.device)
        x = x + dt * velocity(x, t)
        if log_std is not None:
            dev = generator.device if generator is not None else x.device
            eps = torch.randn(x.shape, generator=generator, device=dev).to(x)
            x = x + torch.exp(log_std[k]).to(x) * eps
        chain.append(x)
    return torch.stack(chain, dim=1)


def flow_step_means(velocity: VelocityFn, chain: Tensor) -> Tensor:
    """The Gaussian means x_k + dt v(x_k, t_k) (B, K, H, A) of every transition of a `chain` (B, K+1, H, A)."""
    num_steps = chain.shape[1] - 1
    dt, means = 1.0 / num_steps, []
    for k, tk in enumerate(flow_times(num_steps)):
        x = chain[:, k]
        t = torch.full((x.shape[0],), tk, dtype=x.dtype, device=x.device)
        means.append(x + dt * velocity(x, t))
    return torch.stack(means, dim=1)


def flow_noise_log_prob(velocity: VelocityFn, chain: Tensor, log_std: Tensor) -> Tensor:
    """Per-element log-density (B, K, H, A) of each transition x_k -> x_{k+1} of a sampled `chain` (B, K+1, H, A)
    under the current velocity field, `log_std` (K, A); summing over (K, H, A) gives the chain's log-probability."""
    return gaussian_log_prob(chain[:, 1:], flow_step_means(velocity, chain), log_std[:, None, :])
