"""Continuing a training run from its newest intact checkpoint (`latentvla train --resume`).

`resume` checks that the run is the same (config, dataset), loads the weights into the model being trained and
restores this rank's RNG states; `load_optimizer` restores AdamW once the model is wrapped (FSDP2 swaps the
parameters, so the optimizer is built after it). What a step-based run continues from: the step, the sampler
position (step * grad_accum micro-batches), the schedule's total and the extensions; a budgeted run also its clock
and schedule position (train/schedule.py `state()`).

Resuming with a larger `steps` extends the run: steps past the original total stay in the last stage at the
constant LR the cosine ended with (optim.set_lrs); each extension is recorded in the checkpoint's config.json
under "extensions".
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from latentvla.checkpoint_shards import SHARDS
from latentvla.config import TrainConfig, config_to_dict
from latentvla.train import checkpoint as ckpt_lib
from latentvla.train import parallel, sharded_checkpoint

# Fields that may change between a run and its resumption without changing the maths.
_RESUME_FREE_FIELDS = {"num_workers", "log_every", "save_every", "keep_last", "device", "wandb", "bf16"}
_RESUME_FREE_FIELDS |= {"async_save"}  # how shards are written, not what they hold


@dataclass(frozen=True)
class ResumeState:
    """Where this process starts: step 0 of a fresh run, or a checkpoint's step."""

    schedule_steps: int  # the total the schedule is laid out over (the original one after an extension)
    start_step: int = 0
    extensions: tuple[dict[str, int], ...] = ()
    checkpoint: Path | None = None
    training_state: dict[str, Any] | None = None  # the checkpoint's training_state.pt (optimizer, schedule state)

    @classmethod
    def fresh(cls, cfg: TrainConfig) -> ResumeState:
        return cls(schedule_steps=cfg.steps)


def resume(
    run_dir: Path,
    cfg: TrainConfig,
    model: nn.Module,
    fingerprint: dict,
    dataset_dir: Any,
    rank: int,
    world_size: int,
) -> ResumeState:
    """Check the newest intact checkpoint of `run_dir` against `cfg` and the dataset, load its weights into
    `model` (unless sharded: each rank reads its own shards in `load_optimizer`) and set this rank's RNG states."""
    from latentvla.policy import load_weights

    # the newest checkpoint that is intact and has its own training state; warns about each newer one it skips
    last, state = ckpt_lib.resume_point(run_dir)
    if last is None:
        raise FileNotFoundError(
            f"--resume: no intact checkpoint under {run_dir / ckpt_lib.CHECKPOINTS} (stopped before its first "
            "save?); start the run again with --overwrite"
        )
    saved_cfg = ckpt_lib.load_train_config_dict(last)
    _check_resume_config(saved_cfg, cfg)
    _check_resume_dataset(state.get("dataset"), fingerprint, dataset_dir)
    if state["optimizer"] != SHARDS:
        load_weights(model, last)  # into the model being trained: never a second copy
    start_step = int(state["step"])
    extensions = list(state.get("extensions", []))
    if cfg.steps > int(saved_cfg["steps"]):  # extending the run: recorded, the original part unchanged
        extensions.append({"at_step": start_step, "from_steps": int(saved_cfg["steps"]), "to_steps": cfg.steps})
    rngs = state["rng"]
    ckpt_lib.set_rng_state(rngs[rank] if len(rngs) == world_size else rngs[0])
    return ResumeState(
        schedule_steps=int(state.get("schedule_steps", saved_cfg["steps"])),
        start_step=start_step,
        extensions=tuple(extensions),
        checkpoint=last,
        training_state=state,
    )


def load_optimizer(resumed: ResumeState, loss_module: nn.Module, optimizer: torch.optim.Optimizer) -> None:
    """Restore AdamW (and, for sharded checkpoints, every rank's weight shards) from the resumed checkpoint."""
    state, last = resumed.training_state, resumed.checkpoint
    if state is None:
        return
    if state["optimizer"] == SHARDS:
        sharded_checkpoint.load_shards(last, loss_module, optimizer)
    elif parallel.is_sharded(loss_module):
        raise ValueError(
            f"--resume: {last} holds a full optimizer state (written before sharded FSDP checkpoints); "
            "resume it without --fsdp or start a new --out"
        )
    else:
        try:
            optimizer.load_state_dict(state["optimizer"])
        except (ValueError, KeyError, RuntimeError) as e:  # e.g. another run's training_state.pt
            raise ValueError(
                f"--resume: {last / ckpt_lib.TRAINING_STATE} does not fit this model's optimizer ({e}): it is "
                f"another run's; put this run's file back, delete {last} to resume from the checkpoint before "
                "it, or start again with --overwrite"
            ) from None


def _check_resume_config(saved: dict, cfg: TrainConfig) -> None:
    now = config_to_dict(cfg)
    free = _RESUME_FREE_FIELDS | ({"steps"} if cfg.steps >= int(saved.get("steps", 0)) else set())  # extension
    diff = [k for k in now if k not in free and saved.get(k) != now[k]]
    if diff:
        raise ValueError(
            f"--resume: the config differs from the checkpoint's in {diff} (saved: "
            f"{ {k: saved.get(k) for k in diff} }); resume with the same settings or start a new --out"
        )


def _check_resume_dataset(saved: dict | None, now: dict, dataset_dir: Any) -> None:
    from latentvla.data.validate import fingerprint_diff

    if saved is None:  # checkpoints written before fingerprints existed
        return
    diff = fingerprint_diff(saved, now)
    if diff:
        raise ValueError(
            f"--resume: dataset {dataset_dir} differs from the one this run was trained on: {'; '.join(diff)}; "
            "resume with the original --dataset, or start a new --out"
        )
