"""FSDP2 checkpoints with `torch.distributed.checkpoint` (DCP): each rank writes and reads only its own shards.

The format (keys, what "tied" and "not stepped yet" mean) is in `latentvla/checkpoint_shards.py`. Why not
`get_optimizer_state_dict` / `set_optimizer_state_dict` (torch.distributed.checkpoint.state_dict): they key the
moments by parameter name, so a tied embedding's state saved under `embed_tokens.weight` does not match the
param groups' `lm_head.weight` on a strict load, and a non-strict one drops those moments; and to load into an
optimizer with no state they first take a zero-gradient step on every parameter (`_init_optim_state`), which gives
parameters never stepped in the saved run (the action expert before LaRA stage III) a `step` of 1 and so a
different bias correction than the uninterrupted run. Here each parameter is named by its own identity
(`named_parameters` lists a tied tensor once) and only parameters with saved state get state back, so the
resumed optimizer is exactly the saved one.

`AsyncShardWriter` (TrainConfig.async_save): a periodic checkpoint's shards are copied to CPU memory at once and
written by a background thread (`dcp.async_save`, over a gloo group of its own so that its collectives never
interleave with training's); rank 0 publishes the checkpoint (config, training state, atomic rename) at the first
step boundary after DCP wrote `.metadata`, which DCP does only once every rank's shard is written.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from latentvla.checkpoint_shards import OPTIM, SHARDS, model_tensors

PREFIX = "model."  # the LossModule's attribute in front of every LatentVLA name


def _named_params(loss_module: nn.Module) -> dict[str, nn.Parameter]:
    return {n.removeprefix(PREFIX): p for n, p in loss_module.named_parameters()}  # a tied tensor once


def _optimizer_tensors(loss_module: nn.Module, optimizer: torch.optim.Optimizer) -> dict[str, Tensor]:
    names = {id(p): n for n, p in _named_params(loss_module).items()}
    out: dict[str, Tensor] = {}
    for group in optimizer.param_groups:
        for p in group["params"]:
            for key, value in optimizer.state.get(p, {}).items():
                if not isinstance(value, Tensor):
                    raise TypeError(
                        f"optimizer state {names[id(p)]}/{key} is a {type(value).__name__}, not a tensor"
                    )
                out[f"{OPTIM}{names[id(p)]}/{key}"] = value
    return out


def save_shards(ckpt_dir: str | Path, loss_module: nn.Module, optimizer: torch.optim.Optimizer) -> None:
    """Write weights and optimizer state to `ckpt_dir/shards/`; a collective: every rank calls it, each writes
    its own shard file and fsyncs it; DCP's coordinator writes `.metadata` last."""
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint import FileSystemWriter

    tensors = {**model_tensors(loss_module, PREFIX), **_optimizer_tensors(loss_module, optimizer)}
    dcp.save(tensors, storage_writer=FileSystemWriter(str(Path(ckpt_dir) / SHARDS), sync_files=True))


@torch.no_grad()
def load_shards(ckpt_dir: str | Path, loss_module: nn.Module, optimizer: torch.optim.Optimizer) -> None:
    """Inverse of `save_shards` (a collective): each rank reads only its shards of the weights and moments, in
    place; the optimizer ends with state for exactly the parameters that had state when it was saved."""
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint import FileSystemReader

    reader = FileSystemReader(str(Path(ckpt_dir) / SHARDS))
    saved = reader.read_metadata().state_dict_metadata
    tensors = model_tensors(loss_module, PREFIX)
    missing = sorted(k for k in tensors if k not in saved)
    if missing:
        raise RuntimeError(f"--resume: {ckpt_dir}/{SHARDS} lacks {missing[:5]}: it was written by another model")
    params = _named_params(loss_module)
    state: dict[nn.Parameter, dict[str, Tensor]] = {}
    for key, meta in saved.items():
        if not key.startswith(OPTIM):
            continue
        name, slot = key.removeprefix(OPTIM).rsplit("/", 1)
        if name not in params:
            raise RuntimeError(f"--resume: {ckpt_dir}/{SHARDS} has optimizer state for unknown parameter {name}")
        p, dtype = params[name], meta.properties.dtype
        # moments shaped like the parameter are sharded like it (DTensor); AdamW's `step` is a CPU scalar
        like = tuple(meta.size) == tuple(p.shape) and slot != "step"
        template = torch.zeros_like(p, dtype=dtype) if like else torch.zeros(tuple(meta.size), dtype=dtype)
        state.setdefault(p, {})[slot] = tensors[key] = template
    dcp.load(tensors, storage_reader=reader)
    optimizer.state.clear()
    for p, slots in state.items():
        optimizer.state[p] = slots


class AsyncShardWriter:
    """At most one checkpoint in flight: `save` waits for (and publishes) the previous one first; `poll` publishes
    a finished one at a step boundary; `wait` publishes whatever is pending (before a synchronous save and at the
    end of the run). Every rank constructs it (the gloo group is a collective) and calls `save` in step."""

    def __init__(self) -> None:
        import torch.distributed as dist

        self._group = dist.new_group(backend="gloo") if dist.is_initialized() else None
        self._pending: tuple[Any, Callable[[], Any] | None] | None = None

    def save(
        self,
        ckpt_dir: str | Path,
        loss_module: nn.Module,
        optimizer: torch.optim.Optimizer,
        publish: Callable[[], Any] | None,
    ) -> None:
        """Start writing this rank's shards; `publish` (rank 0: the rest of the checkpoint) runs once all are
        written."""
        import torch.distributed.checkpoint as dcp
        from torch.distributed.checkpoint import FileSystemWriter

        self.wait()
        tensors = {**model_tensors(loss_module, PREFIX), **_optimizer_tensors(loss_module, optimizer)}
        writer = FileSystemWriter(str(Path(ckpt_dir) / SHARDS), sync_files=True)
        future = dcp.async_save(tensors, storage_writer=writer, process_group=self._group)
        self._pending = (future, publish)

    def poll(self) -> Any:
        """Publish the pending checkpoint if its shards are all written (no waiting); its `publish` result."""
        if self._pending is not None and self._pending[0].done():
            return self.wait()
        return None

    def wait(self) -> Any:
        if self._pending is None:
            return None
        (future, publish), self._pending = self._pending, None
        future.result()  # re-raises a failed write
        return publish() if publish is not None else None
