"""Data parallelism for the training loop: DDP (replicated weights) or FSDP2 (`fully_shard`: weights, gradients
and optimizer state sharded over the ranks), selected by `TrainConfig.parallel` on the same torchrun path.

FSDP2 layout (scale-facts.md §3): one `fully_shard` group per transformer block of the backbone's language model
(what is all-gathered just in time for its forward and freed after), then the root group over everything else
(embeddings, vision, heads). The EMA target encoder is not sharded (`ignored_params`): every rank keeps a full
copy and updates it from the all-gathered online weights (`models/ema.py`), identically on every rank.
`fully_shard` replaces the parameters by DTensors, so the optimizer is built AFTER `wrap` (train/loop.py).

Checkpoints: `full_state_dict` gathers the full weights (and optimizer state, keyed by parameter name) onto CPU
on every rank (a collective), and rank 0 writes them as an ordinary checkpoint that loads with or without FSDP.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

PARALLEL_MODES = ("ddp", "fsdp")


def transformer_blocks(backbone: nn.Module) -> list[nn.Module]:
    """The backbone's language-model blocks (one FSDP unit each): tiny `blocks`, transformers `layers`."""
    text = getattr(backbone, "_text", None)
    if text is not None:
        return list(text.layers)
    return list(getattr(backbone, "blocks", []))


def wrap(loss_module: nn.Module, model: nn.Module, mode: str, device: torch.device, world_size: int,
         bf16: bool) -> nn.Module:  # fmt: skip
    """`loss_module` made data-parallel over `world_size` ranks (unchanged for one process)."""
    if world_size <= 1:
        return loss_module
    if mode == "ddp":
        ids = [device.index] if device.type == "cuda" else None
        # stages leave whole modules unused (the head in stage I, action tokens in III)
        return nn.parallel.DistributedDataParallel(loss_module, device_ids=ids, find_unused_parameters=True)
    if mode != "fsdp":
        raise ValueError(f"parallel must be one of {PARALLEL_MODES}, got {mode!r}")
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard

    mesh = init_device_mesh(device.type, (world_size,))
    # bf16 compute with fp32 reduction over fp32 master weights on CUDA; plain fp32 elsewhere (gloo on CPU)
    mp = MixedPrecisionPolicy(param_dtype=torch.bfloat16, reduce_dtype=torch.float32) if bf16 and device.type == "cuda" else MixedPrecisionPolicy()  # fmt: skip
    ema = getattr(model, "ema_vision", None)
    ignored = set(ema.parameters()) if ema is not None else None
    for block in transformer_blocks(model.backbone):
        fully_shard(block, mesh=mesh, mp_policy=mp)
    fully_shard(loss_module, mesh=mesh, mp_policy=mp, ignored_params=ignored)
    return loss_module


def is_sharded(module: nn.Module) -> bool:
    from torch.distributed.tensor import DTensor

    return any(isinstance(p, DTensor) for p in module.parameters())


def to_local_scalar(x: Any) -> float:
    """A (possibly DTensor) scalar as a float (clip_grad_norm_ returns a DTensor under FSDP2)."""
    from torch.distributed.tensor import DTensor

    return float(x.full_tensor() if isinstance(x, DTensor) else x)


def full_state_dict(loss_module: nn.Module, optimizer: torch.optim.Optimizer, prefix: str = "model.") -> tuple[dict, dict]:  # fmt: skip
    """(full model state dict without `prefix`, full optimizer state dict) on CPU; a collective on all ranks."""
    from torch.distributed.checkpoint.state_dict import (
        StateDictOptions,
        get_model_state_dict,
        get_optimizer_state_dict,
    )

    opts = StateDictOptions(full_state_dict=True, cpu_offload=True)
    model_sd = get_model_state_dict(loss_module, options=opts)
    optim_sd = get_optimizer_state_dict(loss_module, optimizer, options=opts)
    return {k.removeprefix(prefix): v for k, v in model_sd.items()}, optim_sd


def load_optimizer_state(loss_module: nn.Module, optimizer: torch.optim.Optimizer, state: dict) -> None:
    """Inverse of `full_state_dict`'s optimizer half (FSDP2 resume)."""
    from torch.distributed.checkpoint.state_dict import StateDictOptions, set_optimizer_state_dict

    set_optimizer_state_dict(loss_module, optimizer, state, options=StateDictOptions(full_state_dict=True))
