"""Training throughput (samples/s) per preset and per curriculum stage (SPEC C16).

For every preset the model is built exactly as `train/loop.py` builds it (same dataset fitting, optimizer
groups and gradient step, via `accumulate_gradients`), then each of its curriculum stages is timed on its own:
`warmup` untimed optimizer steps, then `steps` timed ones. A preset's overall rate is the rate of its curriculum
mix: total time = sum over stages of (fraction / stage rate), so rate = 1 / sum(fraction_i / rate_i).
"""

from __future__ import annotations

import contextlib
import tempfile
import time
from collections import defaultdict
from pathlib import Path
from typing import Any

import torch

DEFAULT_PRESETS = ("lara", "lara-explicit", "lara-latent-text", "lara-no-cot", "rdvla", "lara-rd")


def _time_stage(loss_module, optimizer, batches, stage, cfg, device, steps: int, warmup: int) -> float:
    """Seconds per optimizer step for one stage (after `warmup` untimed steps)."""
    from latentvla.train.loop import accumulate_gradients

    params = [p for g in optimizer.param_groups for p in g["params"]]
    autocast = torch.autocast("cuda", torch.bfloat16, enabled=cfg.bf16 and device.type == "cuda")
    history: dict[str, list[float]] = defaultdict(list)
    for i in range(warmup + steps):
        if i == warmup:
            if device.type == "cuda":
                torch.cuda.synchronize()
            t0 = time.perf_counter()
        optimizer.zero_grad(set_to_none=True)
        accumulate_gradients(loss_module, batches, stage, cfg.grad_accum, device, autocast, history, step=i)
        torch.nn.utils.clip_grad_norm_(params, cfg.grad_clip)
        optimizer.step()
        loss_module.model.on_optimizer_step(i)
    if device.type == "cuda":
        torch.cuda.synchronize()
    return (time.perf_counter() - t0) / steps


def bench_preset(
    preset: str, dataset_dir: str | Path, *, steps: int, batch_size: int, warmup: int, overrides: list[str]
) -> dict[str, Any]:
    """samples/s of one preset at the tiny size, per stage and for its curriculum mix."""
    from latentvla.config import apply_overrides, get_preset
    from latentvla.data.dataset import VLADataset, make_normalizer
    from latentvla.data.lerobot_format import LeRobotDatasetReader
    from latentvla.policy import Policy
    from latentvla.train.loop import (
        LossModule,
        fit_policy_to_dataset,
        make_loader,
        seed_everything,
        setup_distributed,
    )
    from latentvla.train.optim import build_optimizer, no_decay_param_ids

    cfg = apply_overrides(get_preset(preset, "tiny"), [f"batch_size={batch_size}", "augment=false", *overrides])
    reader = LeRobotDatasetReader(dataset_dir)
    cfg = fit_policy_to_dataset(cfg, reader)
    dist_info = setup_distributed(cfg.device)
    normalizer = make_normalizer(reader)
    dataset = VLADataset(
        reader, chunk_size=cfg.policy.horizon, cameras=list(cfg.policy.cameras), normalizer=normalizer
    )
    seed_everything(cfg.seed)
    policy = Policy.from_config(cfg.policy, normalizer).to(dist_info.device)
    loss_module = LossModule(policy.model).train()
    optimizer = build_optimizer(
        policy.model.param_groups(),
        cfg.lr_backbone,
        cfg.lr_head,
        cfg.weight_decay,
        no_decay_param_ids(policy.model),
    )
    batches = iter(make_loader(dataset, cfg, 0, dist_info))
    stages = cfg.policy.curriculum.stages()
    fractions = cfg.policy.curriculum.stage_fractions()
    per_stage = {}
    for stage in stages:
        sec = _time_stage(loss_module, optimizer, batches, stage, cfg, dist_info.device, steps, warmup)
        per_stage[stage.name] = cfg.batch_size * cfg.grad_accum / sec
    mix = 1.0 / sum(f / per_stage[s.name] for s, f in zip(stages, fractions))
    n_params = sum(p.numel() for p in policy.model.parameters())
    return {
        "preset": preset,
        "samples_per_s": mix,
        "stages": per_stage,
        "batch_size": cfg.batch_size,
        "steps": steps,
        "params_m": n_params / 1e6,
        "device": str(dist_info.device),
    }


def run_train_bench(
    presets: list[str] | tuple[str, ...] = DEFAULT_PRESETS,
    dataset_dir: str | Path | None = None,
    *,
    steps: int = 5,
    batch_size: int = 8,
    warmup: int = 1,
    overrides: list[str] | None = None,
) -> list[dict[str, Any]]:
    """Benchmark each preset; `dataset_dir=None` writes a small synthetic dataset to a temp dir first."""
    from latentvla.config import get_preset
    from latentvla.data.synthetic import write_synthetic_dataset

    for name in presets:  # did-you-mean before any work
        get_preset(name, "tiny")
    if steps < 1 or warmup < 0:
        raise ValueError(f"need steps >= 1 and warmup >= 0, got {steps}, {warmup}")
    with contextlib.ExitStack() as stack:
        if dataset_dir is None:
            tmp = stack.enter_context(tempfile.TemporaryDirectory(prefix="latentvla-bench-"))
            dataset_dir = write_synthetic_dataset(
                Path(tmp) / "synthetic", num_episodes=4, length=24, image_size=64
            )
        return [
            bench_preset(
                p, dataset_dir, steps=steps, batch_size=batch_size, warmup=warmup, overrides=overrides or []
            )
            for p in presets
        ]


def format_table(results: list[dict[str, Any]]) -> str:
    """Markdown table: one row per preset, per-stage rates in the last column."""
    lines = ["| preset | samples/s | params (M) | per stage (samples/s) |", "|---|---:|---:|---|"]
    for r in results:
        stages = ", ".join(f"{k} {v:.1f}" for k, v in r["stages"].items())
        lines.append(f"| {r['preset']} | {r['samples_per_s']:.1f} | {r['params_m']:.2f} | {stages} |")
    return "\n".join(lines)
