"""Training throughput (samples/s) per preset and per curriculum stage.

For every preset the model is built exactly as `train/loop.py` builds it (same dataset fitting, optimizer
groups and gradient step, via `accumulate_gradients`), then each of its curriculum stages is timed on its own:
`warmup` untimed optimizer steps, then `steps` timed ones. A preset's overall rate is the rate of its curriculum
mix: total time = sum over stages of (fraction / stage rate), so rate = 1 / sum(fraction_i / rate_i).

`flops=True` also counts the FLOPs of one optimizer step per stage (`torch.utils.flop_counter`: matmuls,
convolutions and attention, forward + backward; element-wise ops are not counted) and measures this machine's
fp32 GEMM peak at the same thread count. achieved = FLOPs x steps/s; `utilization` = achieved / peak; and
`speedup_bound` = peak / achieved is the most any implementation that performs the same arithmetic can gain here:
a step cannot run its matmuls faster than the machine's best matmul.
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


def step_flops(loss_module, batches, stage, cfg, device) -> int:
    """FLOPs of one optimizer step's forward + backward (all micro-batches) on the next batch(es)."""
    from torch.utils.flop_counter import FlopCounterMode

    from latentvla.train.loop import accumulate_gradients

    autocast = torch.autocast("cuda", torch.bfloat16, enabled=cfg.bf16 and device.type == "cuda")
    counter = FlopCounterMode(display=False)
    with counter:
        accumulate_gradients(
            loss_module, batches, stage, cfg.grad_accum, device, autocast, defaultdict(list), step=0
        )
    loss_module.zero_grad(set_to_none=True)
    return int(counter.get_total_flops())


def gemm_peak_gflops(device: torch.device | str = "cpu", sizes: tuple[int, ...] = (512, 1024, 2048)) -> float:
    """The best fp32 matmul rate (GFLOP/s) of square GEMMs at the current thread count: the roof a training
    step's matmuls cannot beat. Best of a few repeats per size (the first call of each size is a warm-up)."""
    device = torch.device(device)
    best = 0.0
    for n in sizes:
        a, b = torch.randn(n, n, device=device), torch.randn(n, n, device=device)
        reps = max(2, int(2e9 // (2 * n**3)))  # ~2 GFLOP per timing
        for trial in range(4):
            if device.type == "cuda":
                torch.cuda.synchronize()
            t0 = time.perf_counter()
            for _ in range(reps):
                torch.mm(a, b)
            if device.type == "cuda":
                torch.cuda.synchronize()
            if trial:
                best = max(best, 2 * n**3 * reps / (time.perf_counter() - t0) / 1e9)
    return best


def bench_config(preset: str, batch_size: int, overrides: list[str], **fields: Any):
    """The preset at the tiny size with the bench's batch, no augmentation and `fields` (TrainConfig fields), then
    the user's key=value `overrides`, which win."""
    from dataclasses import replace

    from latentvla.config import apply_overrides, get_preset

    cfg = replace(get_preset(preset, "tiny"), batch_size=batch_size, augment=False, **fields)
    return apply_overrides(cfg, list(overrides))


def bench_preset(
    preset: str,
    dataset_dir: str | Path,
    *,
    steps: int,
    batch_size: int,
    warmup: int,
    overrides: list[str],
    flops: bool = False,
    peak_gflops: float | None = None,
    fields: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """samples/s of one preset at the tiny size, per stage and for its curriculum mix (`bench_config`)."""
    cfg, device, policy, loss_module, optimizer, batches = _build_run(
        preset, dataset_dir, batch_size, overrides, fields or {}
    )
    stages = cfg.policy.curriculum.stages()
    fractions = cfg.policy.curriculum.stage_fractions()
    per_stage, gflop = {}, {}
    for stage in stages:
        sec = _time_stage(loss_module, optimizer, batches, stage, cfg, device, steps, warmup)
        per_stage[stage.name] = cfg.batch_size * cfg.grad_accum / sec
        if flops:
            gflop[stage.name] = step_flops(loss_module, batches, stage, cfg, device) / 1e9
    mix = 1.0 / sum(f / per_stage[s.name] for s, f in zip(stages, fractions))
    n_params = sum(p.numel() for p in policy.model.parameters())
    out = {
        "preset": preset,
        "samples_per_s": mix,
        "stages": per_stage,
        "batch_size": cfg.batch_size,
        "steps": steps,
        "params_m": n_params / 1e6,
        "device": str(device),
    }
    if flops:
        peak = peak_gflops if peak_gflops is not None else gemm_peak_gflops(device)
        out |= _flop_report(per_stage, gflop, stages, fractions, cfg.batch_size * cfg.grad_accum, peak)
    return out


def _build_run(
    preset: str, dataset_dir: str | Path, batch_size: int, overrides: list[str], fields: dict[str, Any]
) -> tuple:
    """(config, device, policy, loss module, optimizer, batch iterator), built exactly as `train/loop.py` builds
    them."""
    from latentvla.data.dataset import VLADataset, make_normalizer
    from latentvla.data.lerobot import LeRobotDatasetReader
    from latentvla.policy import Policy
    from latentvla.train.loop import (
        LossModule,
        fit_policy_to_dataset,
        make_loader,
        seed_everything,
        setup_distributed,
    )
    from latentvla.train.optim import build_optimizer, no_decay_param_ids

    cfg = bench_config(preset, batch_size, overrides, **fields)
    reader = LeRobotDatasetReader(dataset_dir)
    cfg = fit_policy_to_dataset(cfg, reader)
    dist_info = setup_distributed(cfg.device)
    normalizer = make_normalizer(reader)
    dataset = VLADataset(
        reader, chunk_size=cfg.policy.horizon, cameras=list(cfg.policy.cameras), normalizer=normalizer
    )
    seed_everything(cfg.seed)
    policy = Policy(cfg.policy, normalizer).to(dist_info.device)
    loss_module = LossModule(policy.model).train()
    optimizer = build_optimizer(
        policy.model.param_groups(),
        cfg.lr_backbone,
        cfg.lr_head,
        cfg.weight_decay,
        no_decay_param_ids(policy.model),
    )
    batches = iter(make_loader(dataset, cfg, 0, dist_info))
    return cfg, dist_info.device, policy, loss_module, optimizer, batches


def _flop_report(
    per_stage: dict[str, float],
    gflop: dict[str, float],
    stages: list,
    fractions: list,
    samples_per_step: int,
    peak: float,
) -> dict[str, Any]:
    """Achieved GFLOP/s per stage and the curriculum mix's utilization of the GEMM peak."""
    step_rate = {k: v / samples_per_step for k, v in per_stage.items()}  # steps/s
    achieved = {k: gflop[k] * step_rate[k] for k in gflop}
    # the mix: total FLOPs over total time of the curriculum's stage fractions
    mix_achieved = sum(f * gflop[s.name] for s, f in zip(stages, fractions)) / sum(
        f / step_rate[s.name] for s, f in zip(stages, fractions)
    )
    return {
        "gemm_peak_gflops": peak,
        "gflop_per_step": gflop,
        "achieved_gflops": achieved,
        "utilization": mix_achieved / peak,
        "speedup_bound": peak / mix_achieved,
    }


def run_train_bench(
    presets: list[str] | tuple[str, ...] = DEFAULT_PRESETS,
    dataset_dir: str | Path | None = None,
    *,
    steps: int = 5,
    batch_size: int = 8,
    warmup: int = 1,
    overrides: list[str] | None = None,
    flops: bool = False,
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
        results: list[dict[str, Any]] = []
        peak = None  # measured once, by the first preset, on its device
        for p in presets:
            results.append(
                bench_preset(
                    p,
                    dataset_dir,
                    steps=steps,
                    batch_size=batch_size,
                    warmup=warmup,
                    overrides=overrides or [],
                    flops=flops,
                    peak_gflops=peak,
                )
            )
            peak = results[-1].get("gemm_peak_gflops")
        return results


def format_table(results: list[dict[str, Any]]) -> str:
    """Markdown table: one row per preset, per-stage rates in the last column."""
    with_flops = all("utilization" in r for r in results)
    head = "| preset | samples/s | params (M) | per stage (samples/s) |"
    rule = "|---|---:|---:|---|"
    if with_flops:
        head += " GFLOP/step per stage | achieved GFLOP/s | GEMM peak | utilization | speedup bound |"
        rule += "---|---:|---:|---:|---:|"
    lines = [head, rule]
    for r in results:
        stages = ", ".join(f"{k} {v:.1f}" for k, v in r["stages"].items())
        row = f"| {r['preset']} | {r['samples_per_s']:.1f} | {r['params_m']:.2f} | {stages} |"
        if with_flops:
            gf = ", ".join(f"{k} {v:.2f}" for k, v in r["gflop_per_step"].items())
            achieved = r["utilization"] * r["gemm_peak_gflops"]
            row += (
                f" {gf} | {achieved:.1f} | {r['gemm_peak_gflops']:.1f} | {r['utilization']:.0%} |"
                f" {r['speedup_bound']:.2f}x |"
            )
        lines.append(row)
    return "\n".join(lines)
