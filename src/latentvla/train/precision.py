"""Precision rules of a training run, checked once before the first step.

- Trainable parameters must be fp32. AdamW updates a parameter in its own dtype: at lr 1e-5 (LaRA's VLM rate,
  Table 5) an update is ~1e-5 x |w|, below bf16's relative resolution of 2^-8 ~ 4e-3, so a bf16 weight
  never moves. Half-precision weights are fine only when frozen (RD-VLA's bf16 base under fp32 LoRA adapters,
  its released configs); compute still runs in bf16 under CUDA autocast over fp32 weights (train/loop.py).
- float16 weights are refused for training: the loop's autocast is bf16 and there is no GradScaler, so fp16
  gradients would underflow silently. They remain accepted for inference (eval / serve).
"""

from __future__ import annotations

import torch
from torch import nn

HALF = (torch.bfloat16, torch.float16)


def check_training_dtype(dtype: str) -> None:
    """Refuse a load dtype the training loop cannot train in (one line: what is wrong and how to fix it)."""
    if dtype == "float16":
        raise ValueError(
            "policy.backbone.dtype=float16 cannot train: the loop autocasts to bf16 and has no GradScaler; use "
            "policy.backbone.dtype=bfloat16 with LoRA (a frozen base) or float32."
        )


def half_precision_trainable(model: nn.Module) -> list[str]:
    """Names of trainable parameters stored in bf16 / fp16."""
    return [n for n, p in model.named_parameters() if p.requires_grad and p.dtype in HALF]


def check_trainable_precision(model: nn.Module, dtype: str) -> None:
    """Refuse trainable half-precision parameters: AdamW would run without fp32 master weights."""
    names = half_precision_trainable(model)
    if names:
        raise ValueError(
            f"policy.backbone.dtype={dtype} leaves {len(names)} trainable parameters in half precision (e.g. "
            f"{names[0]}): AdamW has no fp32 master weights and small updates vanish; train a full fine-tune "
            "with policy.backbone.dtype=float32 (CUDA autocast still computes in bf16), or freeze the base with "
            "LoRA (policy.backbone.lora.rank > 0)."
        )
