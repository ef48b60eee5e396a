"""Optimizer and learning-rate schedule as pure functions.

- `build_optimizer`: AdamW with betas (0.9, 0.95) and one group per (backbone | head) x (decay | no decay).
  Norm gains, biases and embedding tables get no weight decay (nanoGPT / nanochat convention: decaying them
  only shrinks scales the normalisation layers re-learn).
- `lr_multiplier`: linear warm-up then cosine decay to `min_lr_frac`, **restarted at every curriculum stage
  boundary**. LaRA-VLA trains each stage as its own run starting from the previous stage's weights, each with its
  own warm-up + cosine (LaRA-VLA Table 5 and its code); a single run reproduces that by restarting the schedule.
- `set_lrs`: base LR x stage multiplier (`StageSpec.lr_backbone` / `lr_head`) x schedule, written into the groups.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import torch
from torch import nn

from latentvla.models.curriculum import StageSpec

GROUPS = ("backbone", "vision", "head")
ADAM_BETAS = (0.9, 0.95)
# Parameter names containing one of these are embedding-like (token tables, learned query / thinking tokens,
# positional tables) and get no weight decay, like nn.Embedding weights.
_NO_DECAY_NAME_HINTS = ("embed", "token", "pos_emb")


def no_decay_param_ids(module: nn.Module) -> set[int]:
    """ids of parameters that must not be weight-decayed: 1-D tensors (biases, norm gains), nn.Embedding and
    norm-layer weights, and embedding-like parameters recognised by name."""
    ids: set[int] = set()
    for mod_name, mod in module.named_modules():
        norm_like = isinstance(mod, nn.Embedding | nn.LayerNorm | nn.GroupNorm | nn.BatchNorm2d | nn.RMSNorm)
        for p_name, p in mod.named_parameters(recurse=False):
            full = f"{mod_name}.{p_name}".lower()
            if norm_like or p.ndim < 2 or any(h in full for h in _NO_DECAY_NAME_HINTS):
                ids.add(id(p))
    return ids


def build_optimizer(
    param_groups: Mapping[str, Iterable[nn.Parameter]],
    lr_backbone: float,
    lr_head: float,
    weight_decay: float,
    no_decay_ids: set[int] | None = None,
    lr_vision: float | None = None,
) -> torch.optim.AdamW:
    """AdamW over `{"backbone": params, "head": params}` with per-group base LRs.

    `no_decay_ids` (from `no_decay_param_ids(model)`) marks embedding tables found by type/name; 1-D parameters
    are never decayed regardless. Each torch param group carries `group` ("backbone"/"head") and `base_lr`, which
    `set_lrs` reads. Groups are created in a fixed order so optimizer state dicts line up on resume.
    """
    unknown = set(param_groups) - set(GROUPS)
    if unknown:
        raise ValueError(f"unknown parameter group(s) {sorted(unknown)}; expected keys {GROUPS}")
    if lr_backbone < 0 or lr_head < 0 or weight_decay < 0:
        raise ValueError("learning rates and weight decay must be >= 0")
    no_decay_ids = no_decay_ids or set()
    base = {"backbone": lr_backbone, "vision": lr_backbone if lr_vision is None else lr_vision, "head": lr_head}
    groups: list[dict[str, Any]] = []
    seen: set[int] = set()
    for name in GROUPS:
        params = [p for p in param_groups.get(name, ()) if p.requires_grad]
        if any(id(p) in seen for p in params):
            raise ValueError(f"a parameter appears in more than one group (second time in {name!r})")
        seen.update(id(p) for p in params)
        decay = [p for p in params if p.ndim >= 2 and id(p) not in no_decay_ids]
        no_decay = [p for p in params if p.ndim < 2 or id(p) in no_decay_ids]
        for suffix, ps, wd in (("decay", decay, weight_decay), ("no_decay", no_decay, 0.0)):
            if ps:
                groups.append(
                    {
                        "params": ps,
                        "weight_decay": wd,
                        "lr": base[name],
                        "base_lr": base[name],
                        "group": name,
                        "name": f"{name}/{suffix}",
                    }
                )
    if not groups:
        raise ValueError("build_optimizer: no trainable parameters were given")
    # The fused kernel updates every tensor of a group in one call: on CPU the default per-tensor loop costs ~100
    # small ops per step (docs/profile.md). Same update rule; results agree to float rounding.
    devices = {p.device.type for g in groups for p in g["params"]}
    fused = devices <= {"cpu", "cuda"} and all(p.is_floating_point() for g in groups for p in g["params"])
    return torch.optim.AdamW(groups, lr=lr_head, betas=ADAM_BETAS, weight_decay=weight_decay, fused=fused)


def stage_index(step: int, boundaries: Sequence[int]) -> int:
    """Index of the stage containing `step`, given the sorted first steps of each stage."""
    idx = 0
    for i, start in enumerate(boundaries):
        if step >= start:
            idx = i
    return idx


def lr_multiplier(
    step: int, boundaries: Sequence[int], total_steps: int, warmup_frac: float, min_lr_frac: float
) -> float:
    """Schedule factor in (0, 1] at 0-based `step`: warm-up + cosine within the stage that contains `step`.

    Each stage of length L warms up linearly over `max(1, round(warmup_frac * L))` steps (none when warmup_frac
    is 0), reaching 1.0 at the end of the warm-up, then follows a half cosine down to `min_lr_frac` at the
    stage's last step. `boundaries` are the stages' first steps (`[0]` for a single-stage run).
    """
    if not boundaries or boundaries[0] != 0:
        raise ValueError(f"boundaries must start at step 0, got {list(boundaries)}")
    if not 0 <= warmup_frac < 1 or not 0 <= min_lr_frac <= 1:
        raise ValueError(f"need 0 <= warmup_frac < 1 and 0 <= min_lr_frac <= 1, got {warmup_frac}, {min_lr_frac}")
    if not 0 <= step < total_steps:
        raise ValueError(f"step {step} outside [0, {total_steps})")
    i = stage_index(step, boundaries)
    start = boundaries[i]
    end = boundaries[i + 1] if i + 1 < len(boundaries) else total_steps
    length, k = end - start, step - start
    warmup = max(1, round(warmup_frac * length)) if warmup_frac > 0 else 0
    if k < warmup:
        return (k + 1) / warmup
    decay_len = length - warmup
    progress = (k - warmup) / max(1, decay_len - 1)  # 0 at the first decay step, 1 at the stage's last step
    return min_lr_frac + (1.0 - min_lr_frac) * 0.5 * (1.0 + math.cos(math.pi * progress))


def set_lrs(
    optimizer: torch.optim.Optimizer,
    step: int,
    stage: StageSpec,
    cfg: Any,
    boundaries: Sequence[int],
    schedule_steps: int | None = None,
) -> dict:
    """Write this step's LR into every param group; returns `{"lr_backbone": .., "lr_head": ..}` for logging.

    `cfg` is a TrainConfig (reads steps, warmup_frac, min_lr_frac); the group's `base_lr` came from it too.
    `schedule_steps` (default `cfg.steps`) is the total the schedule was laid out for. A run extended past it
    (`--resume --steps N`, N larger) keeps the last stage at a constant `min_lr_frac`: the LR the cosine
    ended with, so the original part of the run stays exactly as it was and the extension is a gentle tail.
    """
    total = cfg.steps if schedule_steps is None else schedule_steps
    if step >= total:
        mult = cfg.min_lr_frac
    else:
        mult = lr_multiplier(step, boundaries, total, cfg.warmup_frac, cfg.min_lr_frac)
    stage_mult = {"backbone": stage.lr_backbone, "vision": stage.lr_backbone, "head": stage.lr_head}
    lrs = {"lr_backbone": 0.0, "lr_head": 0.0}
    for group in optimizer.param_groups:
        group["lr"] = group["base_lr"] * stage_mult[group["group"]] * mult
        lrs[f"lr_{group['group']}"] = group["lr"]
    return lrs
