"""Data parallelism for the training loop: DDP (replicated weights) or FSDP2 (`fully_shard`: weights, gradients
and optimizer state sharded over the ranks), selected by `TrainConfig.parallel` on the same torchrun path.

FSDP2 layout: one `fully_shard` unit (one all-gather before its forward, one reduce-scatter
after its backward) per:
- transformer block of the backbone's language model;
- vision tower (Qwen3-VL-4B: 0.42 B parameters) with its projector;
- token embedding of an HF backbone, grouped with its LM head (Qwen ties them: one tensor, so one unit; kept
  gathered from the first lookup to the logits, `reshard_after_forward=False`);
- action head (the DiT expert, ~0.34 B at paper scale), called through `compute_loss`
  (`register_fsdp_forward_method`);
- the root: what is left (norms, camera embeddings, learned tokens).
The EMA target encoder is not sharded (`ignored_params`): every rank keeps a full copy and updates it from the
online tower, gathered in one collective (`models/ema.py`), identically on every rank.
`fully_shard` replaces the parameters by DTensors, so the optimizer is built AFTER `wrap` (train/loop.py).

Precision under `bf16`: parameters are all-gathered and computed in bf16 and gradients reduced in fp32 over fp32
master weights. Only the LM blocks cast their inputs (hidden states) to bf16; the root and the other units keep
`cast_forward_inputs=False`, so the batch (actions, state, images), the flow time t, the noise and the losses stay
fp32 exactly as under DDP + autocast (the default would cast the whole batch at the root: t quantised to 2^-8).

Gradient accumulation: `gradient_sync(loss_module, last)` turns reduce-scatters off on all but the last
micro-batch (FSDP2's `no_sync`). Checkpoints: train/sharded_checkpoint.py (every rank writes its shard);
`full_weights` gathers the whole model once for the final, single-file `model.safetensors`.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from latentvla.models.backbones import Backbone

PARALLEL_MODES = ("ddp", "fsdp")


def transformer_blocks(backbone: Backbone) -> list[nn.Module]:
    """The backbone's language-model blocks (one FSDP unit each)."""
    return backbone.transformer_blocks()


def mixed_precision(bf16: bool, cast_inputs: bool):
    """FSDP2's policy: bf16 parameters / fp32 gradient reduction, or plain fp32 (the caller decides where bf16
    applies: train/loop.py asks for it on CUDA only, where autocast runs too)."""
    from torch.distributed.fsdp import MixedPrecisionPolicy

    if not bf16:
        return MixedPrecisionPolicy(cast_forward_inputs=cast_inputs)
    return MixedPrecisionPolicy(
        param_dtype=torch.bfloat16, reduce_dtype=torch.float32, cast_forward_inputs=cast_inputs
    )


def vision_units(backbone: Backbone) -> list[nn.Module]:
    """The registered modules of the vision tower (+ projector): the tower itself when the backbone registers it,
    else (HF VLMs, whose `vision` is an unregistered view) the VLM's own modules it runs."""
    return backbone.vision_modules()


def embedding_units(backbone: Backbone) -> list[nn.Module]:
    """An HF backbone's input embedding and LM head (one unit: tied models share the tensor). The scratch backbone
    multiplies by its embedding table directly in `logits` (no module call), so its table stays in the root."""
    return backbone.embedding_modules()


def wrap(
    loss_module: nn.Module, model: nn.Module, mode: str, device: torch.device, world_size: int, bf16: bool
) -> nn.Module:
    """`loss_module` made data-parallel over `world_size` ranks (unchanged for one process). `bf16`: FSDP2 keeps
    bf16 parameter copies for compute (pass it only where autocast runs as well, see `mixed_precision`)."""
    if world_size <= 1:
        return loss_module
    if mode == "ddp":
        ids = [device.index] if device.type == "cuda" else None
        # stages leave whole modules unused (the head in stage I, action tokens in III)
        return nn.parallel.DistributedDataParallel(loss_module, device_ids=ids, find_unused_parameters=True)
    if mode != "fsdp":
        raise ValueError(f"parallel must be one of {PARALLEL_MODES}, got {mode!r}")
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.fsdp import fully_shard, register_fsdp_forward_method

    mesh = init_device_mesh(device.type, (world_size,))
    blocks_mp, keep_fp32_inputs = mixed_precision(bf16, True), mixed_precision(bf16, False)
    ema = getattr(model, "ema_vision", None)
    ignored = set(ema.parameters()) if ema is not None else None
    for block in transformer_blocks(model.backbone):
        fully_shard(block, mesh=mesh, mp_policy=blocks_mp)
    vision = [m for m in vision_units(model.backbone) if any(True for _ in m.parameters())]
    if vision:
        fully_shard(vision if len(vision) > 1 else vision[0], mesh=mesh, mp_policy=keep_fp32_inputs)
    embeddings = embedding_units(model.backbone)
    if embeddings:
        fully_shard(embeddings, mesh=mesh, mp_policy=keep_fp32_inputs, reshard_after_forward=False)
    head = getattr(model, "head", None)
    if isinstance(head, nn.Module) and any(True for _ in head.parameters()):
        fully_shard(head, mesh=mesh, mp_policy=keep_fp32_inputs)
        register_fsdp_forward_method(head, "compute_loss")  # the loop calls compute_loss, not forward
    fully_shard(loss_module, mesh=mesh, mp_policy=keep_fp32_inputs, ignored_params=ignored)
    return loss_module


def gradient_sync(loss_module: nn.Module, sync: bool) -> None:
    """FSDP2: reduce-scatter gradients on this backward (`sync`) or keep accumulating them unsharded (the
    accumulation micro-batches before the last); a no-op for other modules (DDP uses `no_sync`)."""
    if hasattr(loss_module, "set_requires_gradient_sync"):
        loss_module.set_requires_gradient_sync(sync)


def is_sharded(module: nn.Module) -> bool:
    from torch.distributed.tensor import DTensor

    return any(isinstance(p, DTensor) for p in module.parameters())


def to_local_scalar(x: Any) -> float:
    """A (possibly DTensor) scalar as a float (clip_grad_norm_ returns a DTensor under FSDP2)."""
    from torch.distributed.tensor import DTensor

    return float(x.full_tensor() if isinstance(x, DTensor) else x)


def full_weights(loss_module: nn.Module, prefix: str = "model.") -> dict:
    """The full model state dict without `prefix`, gathered onto rank 0's CPU (other ranks get an empty dict); a
    collective on all ranks. Used once, for the final checkpoint's single-file `model.safetensors`."""
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

    opts = StateDictOptions(full_state_dict=True, cpu_offload=True)
    model_sd = get_model_state_dict(loss_module, options=opts)
    return {k.removeprefix(prefix): v for k, v in model_sd.items()}
