"""THE training loop: one readable function for every preset. Read `train` top to bottom:

    setup       seed, (DDP), dataset + normalizer, Policy, `resume` -> ResumeState (train/resume.py), the
                Schedule (train/schedule.py: step counter or wall-clock budget), AdamW groups, sampler, logger
    loop        `train_step`: stage at the schedule's position  ->  Adam reset at a stage start  ->  LR (warm-up +
                cosine per stage)  ->  grad-accumulated micro-batches  ->  clip 1.0  ->  finite check  ->  AdamW step;
                then `schedule.after_step` (stop signal, clock)  ->  EMA target update  ->  log  ->  checkpoint
                (train/saver.py)
    finish      final checkpoint, loss plot, summary

Determinism (what makes resume exact and DDP equal to one process):
- the batch order is a pure function of (seed, micro-batch counter) (`train/sampler.py`); the counter is saved;
- torch / numpy / python RNG states are saved per rank and restored, so model noise (flow-matching times, sampled
  recurrence depth) and in-process augmentation continue exactly where they stopped;
- every rank builds the model from the same seed (identical init, identical EMA copy), then draws noise from
  `seed + rank`;
- DDP averages gradients over ranks and each rank takes the mean of its per-sample losses, so with equal shards
  the gradient is the mean over the global batch, exactly as with one process.
With `num_workers > 0`, augmentation runs in worker processes seeded from (seed, resume step), so a resumed run
is reproducible but not bit-identical to an uninterrupted one; use `num_workers=0` or `augment=false` when that
matters.

Faults (README "Failure behaviour"): the dataset is validated when opened (data/validate.py); an existing run
directory is refused without `resume` or `overwrite`; `resume` refuses another dataset or other stats, naming
what differs, and starts from the newest *intact* checkpoint; a non-finite loss or gradient stops the run at the
next step boundary, or before that step's log row or checkpoint, publishing nothing of it (`NonFiniteLossError`;
the verdict is read one step late so that a step costs no host sync, train/finite_guard.py); SIGTERM / SIGINT
finish the current step, write a checkpoint and raise `TrainingInterrupted` (also when the whole process group is
signalled: DataLoader workers leave the decision to this process, `_ignore_stop_signals_from_others`); a failed
checkpoint write raises `CheckpointError` with the previous
checkpoint still `last`. Resuming with a larger `steps` extends the run (train/resume.py).

Wall-clock budget (`cfg.minutes`): train/schedule.py `BudgetSchedule`; the clock's elapsed seconds are saved in each
checkpoint and continue on resume.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import os
import random
import shutil
import signal
import threading
import time
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
from torch import Tensor, nn
from torch.utils.data import DataLoader

from latentvla.config import TrainConfig, config_to_dict
from latentvla.constants import ACTION, OBS_IMAGES, OBS_STATE
from latentvla.train import checkpoint as ckpt_lib
from latentvla.train import parallel
from latentvla.train import resume as resume_lib
from latentvla.train.curriculum import StageSpec
from latentvla.train.finite_guard import FiniteGuard, host_floats, local_tensor, step_loss
from latentvla.train.logging import LOSS_PLOT, MetricsLogger, plot_losses
from latentvla.train.optim import build_optimizer, no_decay_param_ids, set_lrs
from latentvla.train.precision import check_trainable_precision, check_training_dtype
from latentvla.train.sampler import ResumableBatchSampler
from latentvla.train.saver import Saver
from latentvla.train.schedule import Schedule, StepEnd, build_schedule

_RUN_FILES = ("metrics.jsonl", LOSS_PLOT)  # with checkpoints/: what makes a directory "an existing run"


class NonFiniteLossError(RuntimeError):
    """The loss or the gradient became NaN/inf; nothing of that step was logged or saved."""


class TrainingInterrupted(RuntimeError):
    """SIGTERM/SIGINT arrived; a checkpoint of the last finished step was written. `signum` says which."""

    def __init__(self, message: str, signum: int) -> None:
        super().__init__(message)
        self.signum = signum


class _StopSignals:
    """SIGTERM / SIGINT set a flag that the loop reads at each step boundary; a second Ctrl-C at least
    `ABORT_AFTER_S` after the first aborts at once (closer ones are the same signal delivered twice: to the
    process group and forwarded by the launcher / torchrun).

    Installed only in the main thread (signal handlers cannot be set elsewhere); restored on exit.
    """

    ABORT_AFTER_S = 2.0

    def __init__(self) -> None:
        self.signum: int | None = None
        self._first_at = 0.0
        self._previous: dict[int, Any] = {}

    def _handle(self, signum: int, frame: Any) -> None:
        now = time.monotonic()
        if self.signum == signal.SIGINT == signum and now - self._first_at >= self.ABORT_AFTER_S:
            raise KeyboardInterrupt
        if self.signum is None:
            self.signum, self._first_at = signum, now

    def __enter__(self) -> _StopSignals:
        if threading.current_thread() is threading.main_thread():
            for sig in (signal.SIGTERM, signal.SIGINT):
                self._previous[sig] = signal.signal(sig, self._handle)
        return self

    def __exit__(self, *exc: Any) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)


def _prepare_run_dir(run_dir: Path, resume: bool, overwrite: bool, dist_info: DistInfo) -> None:
    """Refuse to train into an existing run unless resuming or told to overwrite it."""
    ckpts = run_dir / ckpt_lib.CHECKPOINTS
    existing = [f for f in _RUN_FILES if (run_dir / f).exists()] + (
        [ckpt_lib.CHECKPOINTS] if ckpts.is_dir() and any(ckpts.iterdir()) else []
    )
    if existing and not resume:
        if not overwrite:
            raise FileExistsError(
                f"{run_dir} already holds a training run ({', '.join(existing)}); continue it with --resume, "
                "replace it with --overwrite, or choose another --out"
            )
        if dist_info.is_main:
            shutil.rmtree(ckpts, ignore_errors=True)
            for f in _RUN_FILES:
                (run_dir / f).unlink(missing_ok=True)
    if dist_info.world_size > 1:
        dist.barrier()  # nobody writes before every rank has looked


@dataclass(frozen=True)
class DistInfo:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    device: torch.device = torch.device("cpu")
    initialized_here: bool = False

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def setup_distributed(device: str) -> DistInfo:
    """Init the process group when launched by torchrun (RANK / WORLD_SIZE set): gloo on CPU, nccl on CUDA."""
    from latentvla.device import check_device

    check_device(device)  # device=cuda on a CPU build: one line now, not an AssertionError after setup
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    if world_size <= 1:
        return DistInfo(device=torch.device(device))
    rank, local_rank = int(os.environ["RANK"]), int(os.environ.get("LOCAL_RANK", "0"))
    dev = torch.device(f"cuda:{local_rank}") if device.startswith("cuda") else torch.device(device)
    if dev.type == "cuda":
        torch.cuda.set_device(dev)
    created = not dist.is_initialized()
    if created:
        dist.init_process_group("nccl" if dev.type == "cuda" else "gloo", rank=rank, world_size=world_size)
    return DistInfo(rank, world_size, local_rank, dev, created)


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def fit_policy_to_dataset(cfg: TrainConfig, reader: Any) -> TrainConfig:
    """Fill state/action dims, cameras and image size from the dataset; refuse missing cameras or features, an
    image size other than the dataset's and a reasoning preset on a dataset without CoT (train/dataset_fit.py)."""
    from latentvla.train.dataset_fit import check_cot_columns, check_image_size, resolve_cameras

    feats = reader.features
    for key in (OBS_STATE, ACTION):
        if key not in feats:
            raise ValueError(f"dataset {reader.root} has no {key!r} feature (has {sorted(feats)})")
    cameras = resolve_cameras(cfg.policy, reader)
    height, width = feats[f"{OBS_IMAGES}.{cameras[0]}"]["shape"][:2]
    if height != width:
        raise ValueError(f"images must be square, dataset {reader.root} has {height}x{width}")
    check_image_size(cfg.policy, reader, f"{OBS_IMAGES}.{cameras[0]}", int(height))
    check_cot_columns(cfg.policy, reader)
    policy = dataclasses.replace(
        cfg.policy,
        cameras=cameras,
        state_dim=int(feats[OBS_STATE]["shape"][0]),
        action_dim=int(feats[ACTION]["shape"][0]),
        image_size=int(height),
    )
    return dataclasses.replace(cfg, policy=policy)


class LossModule(nn.Module):
    """`forward` = `model.compute_loss`, so DistributedDataParallel's hooks see the call."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, batch: dict, stage: StageSpec, step: int | None = None) -> tuple[Tensor, dict[str, Any]]:
        return self.model.compute_loss(batch, stage, step=step)


def to_device(batch: dict, device: torch.device) -> dict:
    return {k: v.to(device, non_blocking=True) if isinstance(v, Tensor) else v for k, v in batch.items()}


def _worker_init(worker_id: int, main_pid: int | None = None) -> None:
    # torch seeds each worker from the DataLoader's generator; derive numpy / python from it deterministically
    seed = torch.initial_seed() % 2**32
    np.random.seed(seed)
    random.seed(seed)
    if main_pid is not None:
        _ignore_stop_signals_from_others(main_pid)


def _ignore_stop_signals_from_others(main_pid: int) -> None:
    """In a DataLoader worker: ignore SIGTERM / SIGINT unless the training process itself sends them.

    SLURM's scancel, `kill -- -PGID` and Ctrl-C signal every process of the group; a worker dying of it made the
    main process fail with "DataLoader worker ... killed by signal" instead of saving. The main process decides
    (it saves and exits, which stops the workers). Plain SIG_IGN is not enough: the DataLoader and
    multiprocessing's exit handler stop a worker with SIGTERM, and an immune worker hangs the exit. So the
    signals are blocked and a thread reads each one with its sender (`sigwaitinfo`): from the main process it
    ends the worker, from anyone else (the terminal, scancel, a group kill) it is dropped.
    """
    if not hasattr(signal, "sigwaitinfo"):  # macOS / Windows: workers keep the default behaviour
        return
    stop = {signal.SIGTERM, signal.SIGINT}
    signal.pthread_sigmask(signal.SIG_BLOCK, stop)  # threads started from here on inherit the mask

    def wait() -> None:
        while True:
            info = signal.sigwaitinfo(stop)
            if info.si_pid == main_pid:
                os._exit(128 + info.si_signo)

    threading.Thread(target=wait, name="stop-signals", daemon=True).start()


def make_loader(dataset: Any, cfg: TrainConfig, start_micro: int, dist_info: DistInfo) -> DataLoader:
    sampler = ResumableBatchSampler(
        len(dataset),
        cfg.batch_size,
        seed=cfg.seed,
        start=start_micro,
        rank=dist_info.rank,
        world_size=dist_info.world_size,
    )
    gen = torch.Generator().manual_seed(cfg.seed * 1_000_003 + start_micro * 97 + dist_info.rank)
    workers = loader_workers(cfg.num_workers, dist_info.device)
    return DataLoader(
        dataset,
        batch_sampler=sampler,
        num_workers=workers,
        generator=gen,
        worker_init_fn=functools.partial(_worker_init, main_pid=os.getpid()),
        pin_memory=dist_info.device.type == "cuda",
        persistent_workers=workers > 0,
    )


def loader_workers(num_workers: int, device: torch.device, cores: int | None = None) -> int:
    """`TrainConfig.num_workers`, with -1 (auto) resolved: 0 on CPU (the workers would take cores from the training
    step: no gain measured on 2 cores), min(4, cores per rank on this node - 1) on an accelerator (the main
    process decodes ~200-300 samples/s of 64 px frames, bench data, and would stall the device)."""
    if num_workers >= 0:
        return num_workers
    if device.type == "cpu":
        return 0
    per_rank = (cores or os.cpu_count() or 1) // max(1, int(os.environ.get("LOCAL_WORLD_SIZE", "1")))
    return max(0, min(4, per_rank - 1))


def accumulate_gradients(
    loss_module: nn.Module,
    batches: Any,
    stage: StageSpec,
    grad_accum: int,
    device: torch.device,
    autocast: Any,
    history: dict[str, list[float]],
    step: int | None = None,
    suffix: str = "",
) -> None:
    """Forward + backward over `grad_accum` micro-batches of optimizer step `step`, appending their metrics to
    `history`. The step reaches the model, which seeds from it what all micro-batches and ranks must share.
    Metrics are appended as the model returns them (detached device tensors, or floats): no host read here.

    Each micro-batch contributes mean(per-sample loss) / grad_accum and DDP averages over ranks, so the gradient
    is the mean over every sample of the step. Only the last micro-batch all-reduces (`no_sync` before it).
    """
    ddp = isinstance(loss_module, nn.parallel.DistributedDataParallel)
    for micro in range(grad_accum):
        batch = to_device(next(batches), device)
        sync = contextlib.nullcontext() if not ddp or micro == grad_accum - 1 else loss_module.no_sync()
        parallel.gradient_sync(loss_module, micro == grad_accum - 1)  # FSDP2's no_sync
        with sync:
            with autocast:
                per_sample, metrics = loss_module(batch, stage, step)
            (per_sample.float().mean() / grad_accum).backward()
        for k, v in metrics.items():
            v = v.detach() if isinstance(v, Tensor) else float(v)
            history[k + suffix].append(v)
            if suffix and k == "loss":
                history[k].append(v)


def _max_over_ranks(values: list[float], dist_info: DistInfo) -> list[float]:
    """Element-wise maximum over ranks (one tiny all-reduce under DDP), so every rank takes the same branch."""
    if dist_info.world_size == 1:
        return values
    t = torch.tensor(values, dtype=torch.float64, device=dist_info.device)
    dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return t.tolist()


def _all_ranks_agree(flags: list[bool], dist_info: DistInfo) -> list[bool]:
    """Element-wise OR of per-rank flags."""
    return [v > 0 for v in _max_over_ranks([float(f) for f in flags], dist_info)]


def _reduce_metrics(history: dict[str, list[Any]], dist_info: DistInfo) -> dict[str, float]:
    """Mean of each metric over the micro-batches since the last row, then over ranks; the row's only host read
    of the metric tensors (one transfer for all of them)."""
    keys = sorted(history)
    flat = host_floats([v for k in keys for v in history[k]])
    per_key, at = {}, 0
    for k in keys:
        per_key[k], at = flat[at : at + len(history[k])], at + len(history[k])
    vals = torch.tensor([sum(per_key[k]) / len(per_key[k]) for k in keys], dtype=torch.float64)
    if dist_info.world_size > 1:
        vals = vals.to(dist_info.device)
        dist.all_reduce(vals)
        vals = vals.cpu() / dist_info.world_size
    return dict(zip(keys, vals.tolist()))


class _FiniteCheck:
    """The non-finite verdict of the step pushed last, read one step late (so a step costs no host sync) or before
    anything of that step is published (train/finite_guard.py)."""

    def __init__(self, dist_info: DistInfo, run_dir: Path) -> None:
        self.guard, self.dist_info, self.run_dir = FiniteGuard(), dist_info, run_dir

    def check(self) -> None:
        """Raise if the step whose verdict is pending had a non-finite loss or gradient (any rank)."""
        verdict = self.guard.pop()
        if verdict is None:
            return
        (bad,) = _all_ranks_agree([not verdict.finite], self.dist_info)
        if bad:  # its row and checkpoint were never written: `last` stays the previous good one
            good = ckpt_lib.latest_checkpoint(self.run_dir)
            raise NonFiniteLossError(
                f"step {verdict.step + 1}: the loss is {verdict.loss} and the gradient norm {verdict.grad_norm}; "
                f"stopped without saving ({good or 'no checkpoint'} is the last good one). Check the data with "
                "`latentvla dataset info` or train again with a lower learning rate (--overwrite or a new --out)"
            )


@dataclass(frozen=True)
class Trainee:
    """What a training step updates, fixed for the run: the model, its (DDP / FSDP2) loss module and AdamW."""

    cfg: TrainConfig
    model: nn.Module
    loss_module: nn.Module
    optimizer: torch.optim.Optimizer
    device: torch.device
    autocast: Any

    @functools.cached_property
    def params(self) -> list[nn.Parameter]:
        return [p for group in self.optimizer.param_groups for p in group["params"]]


def train_step(
    t: Trainee, step: int, schedule: Schedule, batches: Any, history: dict[str, list[Any]], finite: _FiniteCheck
) -> tuple[StageSpec, dict[str, float], Tensor]:
    """Optimizer step `step` at the schedule's position: (scheduled stage, LRs, gradient norm as a device tensor).

    stage -> Adam reset at a stage start -> LR (warm-up + cosine per stage) -> grad-accumulated micro-batches of
    the trained stage -> clip -> the previous step's finite verdict -> AdamW step. No host read of device values.
    """
    cfg, model, optimizer = t.cfg, t.model, t.optimizer
    stage = schedule.stage()
    model.set_stage(stage.name)  # recorded in checkpoints: a stage-I/II checkpoint acts as that stage
    if schedule.stage_changed():
        # LaRA-VLA trains each stage as a fresh run from the previous weights (Table 5): restart Adam's moments
        optimizer.state.clear()
    lrs = set_lrs(optimizer, schedule.position, stage, cfg, schedule.boundaries, schedule.total)
    optimizer.zero_grad(set_to_none=True)
    # Coconut stage mixing: maybe an earlier stage's loss this step (same on every rank); LR, Adam resets and the
    # row's stage follow the scheduled stage; "loss" is the optimized loss of every step in the row and a mixed
    # step's other metrics are logged as "<key>@<stage>".
    trained = schedule.trained_stage(step, cfg.seed)
    suffix = "" if trained is stage else f"@{trained.name}"
    accumulate_gradients(
        t.loss_module, batches, trained, cfg.grad_accum, t.device, t.autocast, history, step=step, suffix=suffix
    )
    if not trained.train_head:  # DDP zero-fills unused gradients; None (as in one process) keeps AdamW's
        for p in model.head.parameters():  # momentum from moving the head on a step that did not train it
            p.grad = None
    grad_norm = local_tensor(torch.nn.utils.clip_grad_norm_(t.params, cfg.grad_clip))
    finite.check()  # the previous step's verdict: the device is past it, so reading it does not wait
    finite.guard.push(step, step_loss(history["loss"][-cfg.grad_accum :]), grad_norm)
    optimizer.step()
    return stage, lrs, grad_norm


def _open_dataset(cfg: TrainConfig, dataset_dir: str | Path) -> tuple[TrainConfig, Any]:
    """The dataset's reader, validated, and `cfg` fitted to it (dims, cameras, image size)."""
    from latentvla.data.lerobot import LeRobotDatasetReader
    from latentvla.data.validate import validate_dataset

    reader = LeRobotDatasetReader(dataset_dir)
    cfg = fit_policy_to_dataset(cfg, reader)
    validate_dataset(reader, camera_keys=[f"{OBS_IMAGES}.{c}" for c in cfg.policy.cameras])
    check_training_dtype(cfg.policy.backbone.dtype)
    return cfg, reader


def _training_data(cfg: TrainConfig, dataset_dir: str | Path, reader: Any) -> tuple[dict, Any, Any]:
    """(the dataset's fingerprint, its normalizer, the training dataset)."""
    from latentvla.data.dataset import VLADataset, make_normalizer
    from latentvla.data.validate import dataset_fingerprint

    fingerprint, normalizer = dataset_fingerprint(reader), make_normalizer(reader)
    dataset = VLADataset(
        dataset_dir,
        chunk_size=cfg.policy.horizon,
        cameras=list(cfg.policy.cameras),
        normalizer=normalizer,
        augment=cfg.augment,
    )
    return fingerprint, normalizer, dataset


def _poll(stop: _StopSignals, dist_info: DistInfo, values: list[float]) -> tuple[bool, list[float]]:
    """(a stop signal arrived on any rank, `values` maximised over ranks): one reduction, every rank agrees."""
    signalled, *rest = _max_over_ranks([float(stop.signum is not None), *values], dist_info)
    return signalled > 0, rest


def _interrupted(stop: _StopSignals, saved: Path | None, done: int, schedule: Schedule) -> TrainingInterrupted:
    name = signal.Signals(stop.signum).name if stop.signum is not None else "a signal (another rank)"
    return TrainingInterrupted(
        f"interrupted by {name}: saved {saved or 'a checkpoint'} at step {done} of {schedule.of_total()}; "
        "continue with the same command plus --resume",
        stop.signum or signal.SIGTERM,
    )


def _publishes(done: int, every: int, end: StepEnd) -> bool:
    return done % every == 0 or end.finished or end.stopping


def _schedule(cfg: TrainConfig, rs: resume_lib.ResumeState, end_step: int, clock: Any) -> Schedule:
    """The step schedule, or the wall-clock budget schedule when `cfg.minutes` is set (train/schedule.py)."""
    return build_schedule(
        cfg.policy.curriculum,
        rs.schedule_steps,
        rs.start_step,
        end_step,
        cfg.steps,
        cfg.minutes,
        rs.training_state,
        clock,
    )


def _logger(
    run_dir: Path,
    cfg: TrainConfig,
    rs: resume_lib.ResumeState,
    end_step: int,
    dist_info: DistInfo,
    show_progress: bool,
    schedule: Schedule,
) -> MetricsLogger:
    """metrics.jsonl (+ TensorBoard / wandb) and the progress bar, on the main rank only."""
    return MetricsLogger(
        run_dir,
        end_step,
        start_step=rs.start_step,
        enabled=dist_info.is_main,
        show_progress=show_progress,
        use_wandb=cfg.wandb,
        config=config_to_dict(cfg),
        **schedule.progress(),
    )


def _span(
    cfg: TrainConfig,
    run_dir: Path,
    model: nn.Module,
    fingerprint: Any,
    dataset_dir: str | Path,
    dist_info: DistInfo,
    resume: bool,
    stop_at: int | None,
) -> tuple[resume_lib.ResumeState, int]:
    """Where this run starts (a fresh state, or the resumed checkpoint's, weights loaded) and the step it ends at."""
    rs = resume_lib.ResumeState.fresh(cfg)
    if resume:
        rs = resume_lib.resume(run_dir, cfg, model, fingerprint, dataset_dir, dist_info.rank, dist_info.world_size)
    end_step = cfg.steps if stop_at is None else min(stop_at, cfg.steps)
    if rs.start_step >= end_step:
        raise ValueError(f"nothing to do: the run is already at step {rs.start_step} (target {end_step})")
    return rs, end_step


def _row(history: dict, dist_info: DistInfo, lrs: dict, grad_norm: Tensor, schedule: Schedule) -> dict:
    """One metrics row: the losses averaged since the last row (over ranks), LRs, grad norm, schedule position."""
    return {**_reduce_metrics(history, dist_info), **lrs, "grad_norm": float(grad_norm), **schedule.row()}


def _optimizer(cfg: TrainConfig, model: nn.Module) -> torch.optim.Optimizer:
    """AdamW over the model's parameter groups (backbone / vision / head learning rates, no decay on norms)."""
    return build_optimizer(
        model.param_groups(),
        cfg.lr_backbone,
        cfg.lr_head,
        cfg.weight_decay,
        no_decay_param_ids(model),
        lr_vision=cfg.lr_vision,
    )


def train(
    cfg: TrainConfig,
    dataset_dir: str | Path,
    run_dir: str | Path,
    resume: bool = False,
    show_progress: bool = True,
    stop_at: int | None = None,
    overwrite: bool = False,
    clock: Any = time.monotonic,
) -> dict:
    """Train `cfg` on the LeRobot dataset at `dataset_dir`, writing to `run_dir`; returns a summary dict.

    `resume` continues from the newest intact checkpoint of `run_dir`; without it an existing run is refused
    unless `overwrite` (which deletes its checkpoints and metrics first). `stop_at` ends the run (with a
    checkpoint) after that many optimizer steps while keeping the schedule of the full `cfg.steps` — what a
    kill + `--resume` does. `clock` (seconds, monotone) times a `cfg.minutes` budget; tests pass a fake one.
    """
    from latentvla.policy import Policy

    # ---------------------------------------------------------------------------------------------- setup
    dist_info, run_dir = setup_distributed(cfg.device), Path(run_dir)
    cfg, reader = _open_dataset(cfg, dataset_dir)  # validated; cfg fitted to it
    _prepare_run_dir(run_dir, resume, overwrite, dist_info)
    fingerprint, normalizer, dataset = _training_data(cfg, dataset_dir, reader)
    seed_everything(cfg.seed)  # same on every rank: identical init (and EMA copy) everywhere
    policy = Policy(cfg.policy, normalizer).to(dist_info.device)
    model = policy.model
    check_trainable_precision(model, cfg.policy.backbone.dtype)
    seed_everything(cfg.seed + dist_info.rank)  # per-rank noise / augmentation streams
    rs, end_step = _span(cfg, run_dir, model, fingerprint, dataset_dir, dist_info, resume, stop_at)
    schedule = _schedule(cfg, rs, end_step, clock)
    # DDP or FSDP2 (train/parallel.py); FSDP2 swaps parameters for DTensors, so the optimizer comes after it
    on_cuda = dist_info.device.type == "cuda"
    loss_module = parallel.wrap(
        LossModule(model), model, cfg.parallel, dist_info.device, dist_info.world_size, cfg.bf16 and on_cuda
    )
    optimizer = _optimizer(cfg, model)
    resume_lib.load_optimizer(rs, loss_module, optimizer)
    batches = iter(make_loader(dataset, cfg, rs.start_step * cfg.grad_accum, dist_info))
    logger = _logger(run_dir, cfg, rs, end_step, dist_info, show_progress, schedule)
    autocast = torch.autocast("cuda", torch.bfloat16, enabled=cfg.bf16 and on_cuda)
    trainee = Trainee(cfg, model, loss_module, optimizer, dist_info.device, autocast)
    saver = Saver(
        run_dir, cfg, policy, loss_module, optimizer, dist_info, fingerprint, list(rs.extensions), schedule
    )
    finite, history, stage_losses = _FiniteCheck(dist_info, run_dir), defaultdict(list), defaultdict(list)
    t0, saved = time.perf_counter(), None
    model.train()

    # ------------------------------------------------------------------------------------------------ loop
    with _StopSignals() as stop, contextlib.closing(logger):
        schedule.start()  # a budgeted run's clock starts here, after setup
        poll = functools.partial(_poll, stop, dist_info)
        for step in range(rs.start_step, end_step):
            stage, lrs, grad_norm = train_step(trainee, step, schedule, batches, history, finite)
            done = step + 1
            end = schedule.after_step(done, poll, logger.advance)  # the stop flag, the clock, the progress bar
            model.on_optimizer_step(step, schedule.ema_steps(done))  # the EMA target update
            if _publishes(done, cfg.log_every, end) or schedule.stage_changed():  # one stage per row
                finite.check()  # this step's verdict before its row is written (a log step may read the host)
                row = _row(history, dist_info, lrs, grad_norm, schedule)
                logger.log(done, stage.name, row, cfg.batch_size * cfg.grad_accum)
                stage_losses[stage.name].append(row["loss"])
                history = defaultdict(list)
            saved = saver.poll() or saved
            if _publishes(done, cfg.save_every, end):
                finite.check()
                saved = saver.save(done, end.finished, end.stopping) or saved
            if end.finished:
                break
            if end.stopping:
                raise _interrupted(stop, saved, done, schedule)

    # ---------------------------------------------------------------------------------------------- finish
    return _finish(run_dir, saved, rs.start_step, done, schedule, t0, cfg, stage_losses, dist_info)


def _finish(
    run_dir: Path,
    saved: Path | None,
    start_step: int,
    done: int,
    schedule: Schedule,
    t0: float,
    cfg: TrainConfig,
    stage_losses: dict[str, list[float]],
    dist_info: DistInfo,
) -> dict:
    """The loss plot, the process group torn down, the run's summary."""
    seconds = time.perf_counter() - t0
    if dist_info.is_main:
        plot_losses(run_dir / "metrics.jsonl", run_dir / LOSS_PLOT)
    if dist_info.initialized_here:
        dist.barrier()
        dist.destroy_process_group()
    return {
        "run_dir": str(run_dir),
        "checkpoint": str(saved) if saved else None,
        "start_step": start_step,
        "end_step": done,  # the real last step (a budgeted run may stop before cfg.steps)
        **schedule.summary(),  # schedule_position: of the last step done (its 0-based index without a budget)
        "seconds": seconds,
        "samples_per_s": (done - start_step) * cfg.batch_size * cfg.grad_accum / max(seconds, 1e-9),
        "stage_losses": {k: {"first": v[0], "last": v[-1], "rows": len(v)} for k, v in stage_losses.items()},
        "world_size": dist_info.world_size,
    }
