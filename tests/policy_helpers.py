"""One way for model tests to build a seeded policy and collated batches from a (reader, normalizer) pair."""

from __future__ import annotations

from dataclasses import replace

import torch

from latentvla.config import apply_overrides, get_preset
from latentvla.constants import OBS_STATE
from latentvla.data.dataset import VLADataset
from latentvla.policy import Policy


def policy_and_batches(
    reader,
    norm,
    preset: str,
    *overrides: str,
    size: str = "micro",
    indices: tuple[tuple[int, ...], ...] = ((0, 5, 13, 20),),
    cfg_fn=None,
):
    """A `preset` policy at 32 px (torch seed 0) sized to the dataset, and one collated batch per index tuple;
    `cfg_fn` edits the preset's config first (e.g. `use_backbone`)."""
    cfg = get_preset(preset, size)
    cfg = apply_overrides(cfg if cfg_fn is None else cfg_fn(cfg), ["policy.image_size=32", *overrides])
    pcfg = replace(cfg.policy, state_dim=norm.shape(OBS_STATE)[0], action_dim=norm.shape("action")[0])
    torch.manual_seed(0)
    policy = Policy(pcfg, norm)
    ds = VLADataset(reader, chunk_size=pcfg.horizon, cameras=list(pcfg.cameras), normalizer=norm)
    return policy, [torch.utils.data.default_collate([ds[i] for i in idx]) for idx in indices]
