"""Exponential moving average of a module's weights (EMA target image encoder of LaRA-VLA's visual latents, Eq. 3).

target <- decay * target + (1 - decay) * online, in place and without autograd; buffers (e.g. BatchNorm
running stats) are copied verbatim. LaRA-VLA's code: decay 0.999, updated every 2 optimizer steps; the
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
    online_full = full_tensors([o_params[n].detach() for n in names])  # FSDP2: one all-gather for them all
    # one foreach call instead of a Python loop of lerps (same per-element maths)
    torch._foreach_lerp_(
        [t_params[n] for n in names],
        [o.to(t_params[n].dtype) for n, o in zip(names, online_full)],
        1.0 - decay,
    )
    o_buffers = dict(online.named_buffers())
    for name, b in target.named_buffers():
        b.copy_(_full(o_buffers[name]))


def _full(t: torch.Tensor) -> torch.Tensor:
    """The whole tensor of an FSDP2-sharded DTensor (an all-gather: every rank must call), else `t`."""
    return t.full_tensor() if hasattr(t, "full_tensor") else t


def full_tensors(tensors: list[torch.Tensor]) -> list[torch.Tensor]:
    """`_full` of each tensor, with every FSDP2 shard (a DTensor sharded on dim 0 over one 1-D mesh, as
    `fully_shard` makes them) gathered in ONE all-gather instead of one per tensor (a vision tower has hundreds).

    Rank r holds rows [r c, (r + 1) c) of each tensor, c = ceil(rows / world) (torch.chunk, possibly empty); each
    local shard is padded to c rows, all are flattened into one buffer per rank, and the gathered buffers are cut
    back into whole tensors. Anything else (plain tensors, other layouts, mixed dtypes) goes through `_full`."""
    from torch.distributed.tensor import DTensor, Shard

    sharded = [i for i, t in enumerate(tensors) if isinstance(t, DTensor)]
    if not sharded:
        return list(tensors)
    dts = [tensors[i] for i in sharded]
    mesh = dts[0].device_mesh
    uniform = all(
        t.device_mesh is mesh and t.placements == (Shard(0),) and t.dim() > 0 and t.dtype == dts[0].dtype
        for t in dts
    )
    if mesh.ndim != 1 or not uniform:
        return [_full(t) for t in tensors]
    import torch.distributed as dist

    world = mesh.size()
    rows = [math.ceil(t.shape[0] / world) for t in dts]  # padded rows per rank
    row_numel = [math.prod(t.shape[1:]) for t in dts]
    sizes = [r * n for r, n in zip(rows, row_numel)]
    local = [t.to_local().reshape(-1) for t in dts]
    flat = torch.cat([torch.nn.functional.pad(x, (0, n - x.numel())) for x, n in zip(local, sizes)])
    out = flat.new_empty(world * flat.numel())
    dist.all_gather_single(out, flat, group=mesh.get_group())
    per_rank = out.view(world, -1)
    result = list(tensors)
    offset = 0
    for i, t, r, n in zip(sharded, dts, rows, row_numel):
        pieces = []
        for k in range(world):  # rank k's real rows: min(r, rows left after the ranks before it)
            real = max(0, min(r, t.shape[0] - k * r))
            pieces.append(per_rank[k, offset : offset + real * n])
        result[i] = torch.cat(pieces).view(t.shape)
        offset += r * n
    return result
