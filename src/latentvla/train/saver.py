"""Writing a training run's checkpoints (train/checkpoint.py holds the format and the atomic publish).

One checkpoint = the policy (weights, config, stats) + training_state.pt: the optimizer (or "shards"), the
sampler position, the dataset fingerprint, the schedule's state (train/schedule.py) and the extensions, and every
rank's RNG states. With `--fsdp` each rank writes its own shard (train/sharded_checkpoint.py), in the background
with `async_save` except for the final checkpoint and the one written on a stop signal; the final checkpoint also
gets the single-file weights that eval / serve load.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
import torch.distributed as dist
from torch import nn

from latentvla.checkpoint_shards import SHARDS
from latentvla.config import TrainConfig
from latentvla.train import checkpoint as ckpt_lib
from latentvla.train import parallel, sharded_checkpoint
from latentvla.train.schedule import Schedule

if TYPE_CHECKING:
    from latentvla.train.loop import DistInfo


class Saver:
    """Checkpoints of one run; `save` is collective (every rank calls it at the same step)."""

    def __init__(
        self,
        run_dir: Path,
        cfg: TrainConfig,
        policy: Any,
        loss_module: nn.Module,
        optimizer: torch.optim.Optimizer,
        dist_info: DistInfo,
        fingerprint: dict,
        extensions: list[dict[str, int]],
        schedule: Schedule,
    ) -> None:
        self.run_dir, self.cfg, self.policy, self.dist_info = run_dir, cfg, policy, dist_info
        self.loss_module, self.optimizer, self.fingerprint = loss_module, optimizer, fingerprint
        self.extensions, self.schedule = extensions, schedule
        self.use_shards = cfg.parallel == "fsdp"  # DCP checkpoints, whatever the world size
        self.sharded = parallel.is_sharded(loss_module)
        self.writer = sharded_checkpoint.AsyncShardWriter() if self.use_shards and cfg.async_save else None

    def poll(self) -> Path | None:
        """A background checkpoint whose shards are all written, now published; else None."""
        return self.writer.poll() if self.writer is not None else None

    def save(self, done: int, final: bool, stopping: bool) -> Path | None:
        """Checkpoint `done` steps; its path (rank 0, written now), or None (another rank, or in the background)."""
        cfg, run_dir, info = self.cfg, self.run_dir, self.dist_info
        rng_states = _gather_rng(info)  # collective: every rank takes part
        weights, optim_state, tmp = None, SHARDS, None
        in_background = self.writer is not None and not (final or stopping)
        # each rank writes its own shard; the final checkpoint also gets the single-file weights
        if self.use_shards:
            if self.writer is not None:
                self.writer.wait()  # the previous background checkpoint is published first
            tmp = ckpt_lib.prepare_tmp(run_dir, done) if info.is_main else None
            if info.world_size > 1:
                dist.barrier()  # the directory exists before anyone writes into it
            if not in_background:
                sharded_checkpoint.save_shards(ckpt_lib.tmp_dir(run_dir, done), self.loss_module, self.optimizer)
            weights = parallel.full_weights(self.loss_module) if final and self.sharded else None  # collective
        else:
            optim_state = self.optimizer.state_dict()
        if not info.is_main:
            if in_background:
                self.writer.save(ckpt_lib.tmp_dir(run_dir, done), self.loss_module, self.optimizer, None)
            return None
        training_state = {
            "optimizer": optim_state,
            "sampler": {"micro_batches": done * cfg.grad_accum},
            "dataset": self.fingerprint,
            **self.schedule.state(),  # schedule_steps (+ a budget's clock and position: they continue on resume)
            "extensions": self.extensions,
        }
        publish = lambda: ckpt_lib.save_checkpoint(  # noqa: E731
            run_dir,
            done,
            self.policy,
            cfg,
            training_state,
            cfg.keep_last,
            rng_states,
            extra_config={"extensions": self.extensions} if self.extensions else None,
            weights=weights,
            shards_in=tmp,
            write_weights=final or not self.use_shards,
        )
        if in_background:  # published by `writer` once every rank's shard is written
            self.writer.save(tmp, self.loss_module, self.optimizer, publish)
            return None
        path = publish()
        if cfg.save_merged and self.policy.is_lora and final:  # LoRA folded in, next to the adapter
            from latentvla.policy import Policy

            Policy.from_pretrained(path).save_merged(path / "merged")
        return path


def _gather_rng(dist_info: DistInfo) -> list[dict]:
    state = ckpt_lib.get_rng_state()
    if dist_info.world_size == 1:
        return [state]
    out: list[Any] = [None] * dist_info.world_size
    dist.all_gather_object(out, state)
    return out
