"""Recurrent-depth schedule maths (Huginn Eq. 1-2; RD-VLA Eq. 6, §III-B), pure functions.

Training depth r is drawn once per optimizer step (whole batch, every micro-batch, every DDP rank):
    tau ~ N(ln(mean) - sigma^2 / 2, sigma^2),   r ~ Poisson(exp(tau)) + 1,   clamped to [min_depth, max_depth]
`step_depth` seeds that draw from the step number alone, as Huginn's sampler does ("all workers draw the same
r per step", Huginn §3 / Fig. 3): ranks whose global RNG streams differ (per-rank seeds for noise and
augmentation) and the micro-batches of one accumulated step all run the same depth, and a resumed run redraws
the same sequence.
With mean 32 and sigma 0.5 this has mean ~33, median ~29 (Huginn Fig. 3). Truncated BPTT then runs the first
r - d iterations without gradient and the last min(d, r) with it (d = 8 in both papers).
"""

from __future__ import annotations

import math

import torch

MAX_POISSON_RATE = (
    100.0  # RD code clamps lambda = exp(tau) <= 100 before the Poisson draw (RD-VLA's code, sample_iterations)
)


def sample_depth(
    generator: torch.Generator | None = None,
    mean: float = 32.0,
    sigma: float = 0.5,
    min_depth: int = 1,
    max_depth: int = 64,
) -> int:
    """One log-normal-Poisson depth r in [min_depth, max_depth]; reproducible through `generator`."""
    if mean <= 0 or sigma < 0:
        raise ValueError(f"sample_depth needs mean > 0 and sigma >= 0, got mean={mean}, sigma={sigma}.")
    if not 1 <= min_depth <= max_depth:
        raise ValueError(f"need 1 <= min_depth <= max_depth, got {min_depth}, {max_depth}.")
    device = generator.device if generator is not None else None
    tau = torch.randn(1, generator=generator, device=device) * sigma + (math.log(mean) - sigma**2 / 2)
    rate = tau.exp().clamp(max=MAX_POISSON_RATE)
    r = int(torch.poisson(rate, generator=generator).item()) + 1
    return max(min_depth, min(max_depth, r))


DEPTH_SEED = 514229  # fixed offset of the step-seeded depth stream (any constant: only step-equality matters)


def step_depth(step: int, mean: float = 32.0, sigma: float = 0.5, min_depth: int = 1, max_depth: int = 64) -> int:
    """The training depth of optimizer step `step`: `sample_depth` on a generator seeded by the step alone."""
    if step < 0:
        raise ValueError(f"step must be >= 0, got {step}.")
    return sample_depth(torch.Generator().manual_seed(DEPTH_SEED + step), mean, sigma, min_depth, max_depth)


def split_depth(r: int, backprop_depth: int = 8) -> tuple[int, int]:
    """(n_no_grad, n_grad) = (max(r - d, 0), min(d, r)) for truncated backprop through the last d iterations."""
    if r < 1 or backprop_depth < 1:
        raise ValueError(f"need depth r >= 1 and backprop_depth >= 1, got r={r}, backprop_depth={backprop_depth}.")
    n_grad = min(backprop_depth, r)
    return r - n_grad, n_grad
