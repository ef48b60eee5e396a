"""Helpers shared by the training fault and resume tests: a quiet `train`, a checkpoint's weights, bitwise
equality of two state dicts."""

from __future__ import annotations

from pathlib import Path

import torch
from safetensors.torch import load_file


def train_quiet(cfg, dataset, run, **kw):
    from latentvla.train.loop import train

    return train(cfg, dataset, run, show_progress=False, **kw)


def checkpoint_weights(ckpt: Path) -> dict[str, torch.Tensor]:
    return load_file(str(ckpt / "model.safetensors"))


def same_weights(a: dict, b: dict) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
