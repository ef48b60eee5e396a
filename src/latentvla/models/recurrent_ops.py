"""Small ops of the recurrent-depth head (models/recurrent_head.py): the truncated-normal draws of its state and
scratchpad init (Huginn §3: TruncNormal(0, std, ±3 std)) and the rotary embedding over its K scratchpad tokens,
with the cos/sin tables built once per shape."""

from __future__ import annotations

import functools
import math

import torch
from torch import Tensor, nn

from latentvla.models.row_rng import draw_per_row


def trunc_normal(shape: tuple[int, ...], std: float, generator: torch.Generator | None, like: Tensor) -> Tensor:
    device = generator.device if generator is not None else like.device
    x = torch.empty(shape, device=device)
    if device.type == "cpu":  # torch's sampler: a rejection loop whose `mask.any()` is free on the host
        nn.init.trunc_normal_(x, 0.0, std, -3 * std, 3 * std, generator=generator)
    else:  # off the CPU that loop reads the device every round: the inverse CDF instead (same distribution)
        trunc_normal_icdf_(x, std, generator)
    return x.to(device=like.device, dtype=like.dtype)


def trunc_normal_rows(shape: tuple[int, ...], std: float, generator, like: Tensor) -> Tensor:
    """`trunc_normal`, or with a list of generators one per row (models/row_rng.py)."""
    return draw_per_row(shape, generator, lambda shape, g: trunc_normal(shape, std, g, like))


def trunc_normal_icdf_(x: Tensor, std: float, generator: torch.Generator | None = None) -> Tensor:
    """x <- TruncNormal(0, std, ±3 std) in place by the inverse CDF (no rejection loop, so no host read):
    u ~ U(2 Phi(-3) - 1, 1 - 2 Phi(-3)), x = std sqrt(2) erfinv(u)."""
    lo = (1.0 + math.erf(-3.0 / math.sqrt(2.0))) / 2.0  # Phi(-3)
    x.uniform_(2 * lo - 1, 1 - 2 * lo, generator=generator).erfinv_()
    return x.mul_(std * math.sqrt(2.0)).clamp_(-3 * std, 3 * std)


@functools.lru_cache(maxsize=32)
def rope_tables(K: int, d: int, base: float, device: torch.device, dtype: torch.dtype) -> tuple[Tensor, Tensor]:
    """cos and signed sin (K, d) of the rotate-half RoPE, built once per shape instead of at every block call
    (26 calls per step at depth 12: ~10 small ops each). The sin table carries the rotate-half sign, so
    x * cos + [x2, x1] * sin_signed equals x * cos + [-x2, x1] * sin bit for bit (a sign flip is exact).
    Built outside inference mode: an inference tensor could not be saved for a later training backward."""
    with torch.inference_mode(False), torch.no_grad():
        inv = 1.0 / base ** (torch.arange(0, d, 2, device=device, dtype=torch.float32) / d)
        ang = torch.arange(K, device=device, dtype=torch.float32)[:, None] * inv[None]  # (K, d/2)
        cos, sin = torch.cat([ang, ang], -1).cos().to(dtype), torch.cat([ang, ang], -1).sin().to(dtype)
        sin[:, : d // 2].neg_()
        return cos, sin


def rope(x: Tensor, base: float) -> Tensor:
    """Rotary embedding over the token axis of x (B, heads, K, d) (rotate-half convention)."""
    K, d = x.shape[-2], x.shape[-1]
    cos, sin = rope_tables(K, d, float(base), x.device, x.dtype)
    return x * cos + torch.cat([x[..., d // 2 :], x[..., : d // 2]], dim=-1) * sin
