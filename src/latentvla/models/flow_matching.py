"""Flow-matching maths for the action expert, written once as pure functions.

Time convention (the LaRA-VLA paper's, Eq. 4; used everywhere in this package):

    t = 0 is pure noise, t = 1 is data.
    x_t = (1 - t) * eps + t * a,        eps ~ N(0, I)
    u   = d x_t / d t = a - eps         (the regression target of the velocity field)
    sampling: Euler from t = 0 to t = 1 in `num_steps` equal steps, x <- x + dt * v(x, t)

(openpi's pi0 uses the opposite direction; do not mix the two.) Training times come from either the paper's
U(0, 1) or the released LaRA code's Beta-biased schedule t = (s - u) / s, u ~ Beta(1.5, 1), s = 0.999, which
puts more mass near t = 0, i.e. on noisy inputs (the GR00T action head in LaRA-VLA's code).
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor

from latentvla.models.masking import mean_over_valid_steps

TIME_SAMPLERS = ("beta", "uniform")


def _rand(shape: tuple[int, ...], generator: torch.Generator | None, device: torch.device | None) -> Tensor:
    """U(0,1) drawn on the generator's device (so a CPU generator seeds CUDA runs too), then moved."""
    gen_device = generator.device if generator is not None else device
    return torch.rand(shape, generator=generator, device=gen_device).to(device or gen_device)


def sample_time(
    batch: int,
    generator: torch.Generator | None = None,
    kind: str = "beta",
    alpha: float = 1.5,
    beta: float = 1.0,
    s: float = 0.999,
    device: torch.device | str | None = None,
) -> Tensor:
    """Training times t in [0, 1], shape (B,).

    kind="uniform": t ~ U(0, 1) (paper). kind="beta": t = (s - u) / s with u ~ Beta(alpha, beta) (LaRA code);
    values below 0 (probability 1 - s**alpha ~ 0.15 % at the defaults) are clamped to 0 so t stays in range.
    Beta draws use inverse transforms of uniforms so a `torch.Generator` makes them reproducible.
    """
    if batch < 1:
        raise ValueError(f"sample_time needs batch >= 1, got {batch}.")
    device = torch.device(device) if device is not None else None
    if kind == "uniform":
        return _rand((batch,), generator, device)
    if kind != "beta":
        raise ValueError(f"Unknown time sampler {kind!r}; use one of {TIME_SAMPLERS}.")
    if alpha <= 0 or beta <= 0 or not 0 < s <= 1:
        raise ValueError(f"Beta time sampler needs alpha, beta > 0 and 0 < s <= 1, got {alpha}, {beta}, {s}.")
    u = _beta(batch, alpha, beta, generator, device)
    return ((s - u) / s).clamp(0.0, 1.0)


def _beta(batch: int, alpha: float, beta: float, generator: torch.Generator | None, device) -> Tensor:
    """Beta(alpha, beta) samples. Closed-form inverse CDF when one parameter is 1 (the LaRA case);
    otherwise the ratio of two Gamma draws, each via Marsaglia-Tsang with generator-driven uniforms/normals."""
    if beta == 1.0:  # CDF x^alpha
        return _rand((batch,), generator, device).pow(1.0 / alpha)
    if alpha == 1.0:  # CDF 1 - (1 - x)^beta
        return 1.0 - _rand((batch,), generator, device).pow(1.0 / beta)
    x = _gamma(batch, alpha, generator, device)
    y = _gamma(batch, beta, generator, device)
    return x / (x + y)


def _gamma(batch: int, shape: float, generator: torch.Generator | None, device) -> Tensor:
    """Gamma(shape, 1) by Marsaglia & Tsang (2000), vectorised with rejection rounds; shape < 1 is boosted."""
    boost = shape < 1.0
    k = shape + 1.0 if boost else shape
    d = k - 1.0 / 3.0
    c = 1.0 / (9.0 * d) ** 0.5
    gen_device = generator.device if generator is not None else device
    out = torch.empty(batch, device=gen_device)
    todo = torch.ones(batch, dtype=torch.bool, device=gen_device)
    while bool(todo.any()):
        n = int(todo.sum())
        z = torch.randn(n, generator=generator, device=gen_device)
        u = torch.rand(n, generator=generator, device=gen_device)
        v = (1.0 + c * z) ** 3
        ok = (v > 0) & (torch.log(u) < 0.5 * z**2 + d - d * v + d * torch.log(v.clamp_min(1e-12)))
        idx = todo.nonzero().squeeze(1)
        out[idx[ok]] = (d * v)[ok]
        todo[idx[ok]] = False
    if boost:
        out = out * torch.rand(batch, generator=generator, device=gen_device).pow(1.0 / shape)
    return out.to(device or gen_device)


def _expand_time(t: Tensor, like: Tensor) -> Tensor:
    """(B,) -> (B, 1, ..., 1) broadcastable against `like`."""
    if t.dim() != 1 or t.shape[0] != like.shape[0]:
        raise ValueError(f"time must have shape (B,) = ({like.shape[0]},), got {tuple(t.shape)}.")
    return t.to(like.dtype).view(-1, *([1] * (like.dim() - 1)))


def interpolate(noise: Tensor, actions: Tensor, t: Tensor) -> Tensor:
    """x_t = (1 - t) * noise + t * actions; noise/actions (B, ...), t (B,)."""
    if noise.shape != actions.shape:
        raise ValueError(f"noise {tuple(noise.shape)} and actions {tuple(actions.shape)} must match.")
    tt = _expand_time(t, actions)
    return (1.0 - tt) * noise + tt * actions


def target_velocity(noise: Tensor, actions: Tensor) -> Tensor:
    """u = actions - noise: the constant velocity of the straight path from noise to data."""
    if noise.shape != actions.shape:
        raise ValueError(f"noise {tuple(noise.shape)} and actions {tuple(actions.shape)} must match.")
    return actions - noise


def euler_integrate(velocity_fn: Callable[[Tensor, Tensor], Tensor], noise: Tensor, num_steps: int) -> Tensor:
    """Integrate dx/dt = velocity_fn(x, t) from t = 0 (x = noise) to t = 1 with `num_steps` Euler steps.

    `velocity_fn(x, t)` gets x (B, ...) and t (B,) and returns a tensor shaped like x.
    """
    if num_steps < 1:
        raise ValueError(f"num_steps must be >= 1, got {num_steps}.")
    dt = 1.0 / num_steps
    x = noise
    for i in range(num_steps):
        t = torch.full((x.shape[0],), i * dt, device=x.device, dtype=x.dtype)
        x = x + dt * velocity_fn(x, t)
    return x


def flow_matching_loss(pred_v: Tensor, target_v: Tensor, is_pad: Tensor | None = None) -> Tensor:
    """Per-sample MSE between velocities, (B, H, A) -> (B,), averaged over the non-padded chunk steps.

    `is_pad` (B, H) bool marks steps past the episode end; they carry no loss (the dataset repeats the last
    action there, LeRobot convention). A sample whose steps are all padded gets loss 0.
    """
    if pred_v.shape != target_v.shape or pred_v.dim() != 3:
        raise ValueError(
            f"pred_v and target_v must both be (B,H,A); got {tuple(pred_v.shape)}, {tuple(target_v.shape)}."
        )
    return mean_over_valid_steps((pred_v - target_v).pow(2).mean(dim=-1), is_pad)  # (B, H) -> (B,)
