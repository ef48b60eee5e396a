"""Sharded (FSDP2) checkpoint weights: the `torch.distributed.checkpoint` (DCP) directory `shards/`.

Under `--fsdp` a periodic checkpoint holds `shards/` instead of `model.safetensors`: every rank writes its own
shard of the weights and of AdamW's moments (train/sharded_checkpoint.py), so no rank gathers the full model and
no rank waits while another writes. The final checkpoint of a run holds both: the shards (to resume or extend it)
and the ordinary single-file `model.safetensors` that `eval`, `serve` and `Policy.from_pretrained` read.

Keys (flat; DCP stores each tensor's global shape, so any world size, or one process, can read them):

    model/<name>              each parameter and persistent buffer of `LatentVLA` once: a tied tensor (an HF LM's
                              `lm_head.weight` = its input embedding) under the first name `state_dict` lists
    optim/<name>/<state key>  AdamW state (`exp_avg`, `exp_avg_sq`, `step`) of each parameter that has any; a
                              parameter never stepped yet (the action expert before LaRA stage III) has no key,
                              and resumes with no state, exactly as in the uninterrupted run

This module is the format and the single-process reader (`Policy.from_pretrained` on a sharded checkpoint); the
collective writer / resumer is train/sharded_checkpoint.py.
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import Tensor, nn

SHARDS = "shards"
METADATA = ".metadata"  # written last by DCP's coordinator: its presence means every rank's shard is complete
MODEL, OPTIM = "model/", "optim/"


def has_shards(ckpt_dir: str | Path) -> bool:
    return (Path(ckpt_dir) / SHARDS / METADATA).is_file()


def shards_problem(ckpt_dir: str | Path) -> str | None:
    """None when `shards/` is readable (metadata parses, every shard file it names exists and is as long as the
    tensors it holds need), else one phrase. Cheap: no tensor is read."""
    from torch.distributed.checkpoint import FileSystemReader

    path = Path(ckpt_dir) / SHARDS
    try:
        meta = FileSystemReader(str(path)).read_metadata()
    except Exception as e:  # noqa: BLE001 - a truncated / foreign pickle raises anything
        return f"{SHARDS}/{METADATA} is unreadable ({type(e).__name__}: {e})"
    need: dict[str, int] = {}
    for info in (meta.storage_data or {}).values():
        need[info.relative_path] = max(need.get(info.relative_path, 0), info.offset + info.length)
    missing = sorted(f for f in need if not (path / f).is_file())
    if missing:
        return f"{SHARDS}/ is missing {', '.join(missing)}"
    short = sorted(f for f, n in need.items() if (path / f).stat().st_size < n)
    return f"{SHARDS}/{short[0]} is truncated" if short else None


def model_tensors(module: nn.Module, prefix: str = "") -> dict[str, Tensor]:
    """`module`'s parameters and persistent buffers as `model/<name>` (without `prefix`), each tensor ONCE:
    tied tensors keep the first name `state_dict` gives them. Values are detached views sharing storage (DTensor
    shards under FSDP2), so DCP can load into them in place."""
    out: dict[str, Tensor] = {}
    seen: set[int] = set()
    for name, value in module.state_dict(keep_vars=True).items():
        if id(value) in seen:
            continue
        seen.add(id(value))
        out[MODEL + name.removeprefix(prefix)] = value.detach()
    return out


@torch.no_grad()
def load_sharded_weights(model: nn.Module, ckpt_dir: str | Path) -> None:
    """Fill `model` (one process, unsharded) from a checkpoint's `shards/`; every tensor must be there."""
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint import FileSystemReader

    path = Path(ckpt_dir) / SHARDS
    reader = FileSystemReader(str(path))
    saved = reader.read_metadata().state_dict_metadata
    tensors = model_tensors(model)
    missing = sorted(k.removeprefix(MODEL) for k in tensors if k not in saved)
    if missing:
        raise RuntimeError(f"checkpoint {ckpt_dir} does not match its config: {SHARDS}/ lacks {missing[:5]}")
    dcp.load(tensors, storage_reader=reader, no_dist=True)
