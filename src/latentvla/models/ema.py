"""Exponential moving average of a module's weights (the EMA target image encoder of LaRA's visual latents, C4).

target <- decay * target + (1 - decay) * online, in place and without autograd; buffers (e.g. BatchNorm
running stats) are copied verbatim. Paper/code: decay 0.999, updated every 2 optimizer steps ([LC]); the
update interval is the caller's business (train/loop.py).
"""

from __future__ import annotations

import copy
import math

import torch
from torch import nn


def make_ema(module: nn.Module) -> nn.Module:
    """A frozen deep copy of `module`: requires_grad False on every parameter, eval mode."""
    target = copy.deepcopy(module)
    target.requires_grad_(False)
    return target.eval()


def horizon_decay(time_constant: float, every: int) -> float:
    """The per-update decay whose EMA forgets a factor e every `time_constant` optimizer steps, updating every
    `every` steps: decay ** (time_constant / every) = 1/e. (The code's 0.999 every 2 steps is 1,999 steps.)"""
    if time_constant <= 0 or every < 1:
        raise ValueError(f"time_constant must be > 0 and every >= 1, got {time_constant}, {every}.")
    return math.exp(-every / time_constant)


@torch.no_grad()
def ema_update(target: nn.Module, online: nn.Module, decay: float) -> None:
    """In place: every target parameter becomes decay * target + (1 - decay) * online; buffers are copied."""
    if not 0.0 <= decay <= 1.0:
        raise ValueError(f"EMA decay must be in [0, 1], got {decay}.")
    t_params, o_params = dict(target.named_parameters()), dict(online.named_parameters())
    if t_params.keys() != o_params.keys():
        missing = sorted(t_params.keys() ^ o_params.keys())[:5]
        raise ValueError(
            f"EMA target and online module differ in parameters, e.g. {missing}; use make_ema(online)."
        )
    names = list(t_params)
    # one foreach call instead of a Python loop of lerps (same per-element maths)
    torch._foreach_lerp_(
        [t_params[n] for n in names],
        [_full(o_params[n]).detach().to(t_params[n].dtype) for n in names],
        1.0 - decay,
    )
    o_buffers = dict(online.named_buffers())
    for name, b in target.named_buffers():
        b.copy_(_full(o_buffers[name]))


def _full(t: torch.Tensor) -> torch.Tensor:
    """The whole tensor of an FSDP2-sharded DTensor (an all-gather: every rank must call), else `t`."""
    return t.full_tensor() if hasattr(t, "full_tensor") else t
