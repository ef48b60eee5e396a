"""Where a training step's time goes (docs/profile.md): `latentvla bench profile`.

One optimizer step = data loading -> forward (vision, EMA target, sequence layout, backbone, head) -> backward ->
clip + AdamW + EMA update. Each part runs under a `torch.profiler.record_function` label (module forward hooks for
the model parts), so the breakdown comes from one `torch.profiler` trace per curriculum stage:

    data          next(batch iterator): dataset __getitem__ + collate (num_workers=0: in the training process)
    vision        the online image encoder (forward)            ema_target   EMA encoder on frame t+1 (forward)
    backbone      transformer passes (forward, K+1 with thinking tokens)
    head          flow expert / recurrent head (forward)        rest_forward forward time in none of those
                  (sequence layout and masks, token losses, glue)
    backward      all of autograd's backward                    optimizer    clip + AdamW + EMA update
    item_syncs    `.item()` / `float(tensor)` calls (count and time; on CPU they wait for nothing)
    python        wall time of the step not spent inside any ATen op (interpreter and dispatch overhead)
    gemm_alone    the step's own matmuls (every aten::mm / addmm / bmm shape the trace recorded, forward and
                  backward), each shape timed alone on fresh operands at the same thread count and summed: the
                  floor of any implementation that performs these GEMMs, however well the rest is fused
"""

from __future__ import annotations

import time
from collections import Counter, defaultdict
from dataclasses import replace
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.profiler import ProfilerActivity, profile, record_function

PARTS = ("data", "vision", "ema_target", "backbone", "head", "rest_forward", "backward", "optimizer")
GEMM_OPS = ("aten::mm", "aten::addmm", "aten::bmm")


def gemm_shapes(prof: Any) -> Counter:
    """(op, input shapes) -> number of calls, for every matmul in a trace recorded with `record_shapes=True`."""
    out: Counter = Counter()
    for evt in prof.events():
        if evt.name in GEMM_OPS:
            out[(evt.name, tuple(tuple(s) for s in evt.input_shapes if s))] += 1
    return out


def gemm_alone_ms(shapes: Counter, repeats: int = 5) -> float:
    """Milliseconds the matmuls `shapes` take when each shape runs alone (best of `repeats` after one warm-up call,
    contiguous random fp32 operands): a step that performs them cannot be faster than their sum."""
    ops = {"aten::mm": torch.mm, "aten::addmm": torch.addmm, "aten::bmm": torch.bmm}
    total = 0.0
    for (name, shapes_in), calls in shapes.items():
        args = [torch.randn(*shape) for shape in shapes_in]
        fn = ops[name]
        fn(*args)
        best = float("inf")
        for _ in range(repeats):
            t0 = time.perf_counter()
            fn(*args)
            best = min(best, time.perf_counter() - t0)
        total += best * calls
    return total * 1e3


def _label(module: nn.Module, name: str) -> list[Any]:
    """Wrap every forward call of `module` in record_function(name)."""
    stack: list[Any] = []

    def pre(*_: Any) -> None:
        rf = record_function(name)
        rf.__enter__()
        stack.append(rf)

    def post(*_: Any) -> None:
        stack.pop().__exit__(None, None, None)

    return [module.register_forward_pre_hook(pre), module.register_forward_hook(post)]


class _Restore:
    def __init__(self, obj: Any, name: str) -> None:
        self.obj, self.name = obj, name

    def remove(self) -> None:
        delattr(self.obj, self.name)


def _label_method(obj: Any, method: str, name: str) -> _Restore:
    """Shadow `obj.method` with a version that runs under record_function(name); `.remove()` undoes it."""
    original = getattr(obj, method)

    def wrapped(*args: Any, **kwargs: Any) -> Any:
        with record_function(name):
            return original(*args, **kwargs)

    setattr(obj, method, wrapped)
    return _Restore(obj, method)


def _label_model_parts(model: nn.Module) -> list[Any]:
    """Label the vision encoder, EMA target, head and backbone blocks of `model`; returns the hooks to remove."""
    hooks = []
    for attr, name in (("ema_vision", "ema_target"), ("encoder", "vision")):
        if isinstance(getattr(model, attr, None), nn.Module):
            hooks += _label(getattr(model, attr), name)
    head = getattr(model, "head", None)
    if head is not None:  # the flow expert's loss calls `velocity`, not forward: label the whole `loss` call
        hooks.append(_label_method(head, "loss", "head"))
    backbone = getattr(model, "backbone", None)
    if backbone is not None:
        hooks += _label(backbone.vision, "vision")
        hooks += [h for block in backbone.transformer_blocks() for h in _label(block, "backbone")]
    return hooks


def _breakdown(prof: Any, wall_s: float, steps: int) -> dict[str, float]:
    """ms per step of each part from a trace (labelled regions, ATen self time, item calls)."""
    region: dict[str, float] = defaultdict(float)
    aten_self = item_ms = item_n = 0.0
    for evt in prof.key_averages():
        if evt.key in PARTS or evt.key == "forward":
            region[evt.key] += evt.cpu_time_total / 1e3
        elif evt.key.startswith("aten::"):
            aten_self += evt.self_cpu_time_total / 1e3
            if evt.key == "aten::item":
                item_ms += evt.cpu_time_total / 1e3
                item_n += evt.count
    out = {k: region[k] / steps for k in PARTS if k != "rest_forward"}
    model_parts = sum(region[k] for k in ("vision", "ema_target", "backbone", "head"))
    out["rest_forward"] = max(0.0, region["forward"] - model_parts) / steps
    out["item_syncs_ms"] = item_ms / steps
    out["item_syncs_per_step"] = item_n / steps
    out["python"] = max(0.0, wall_s * 1e3 - aten_self) / steps
    out["step"] = wall_s * 1e3 / steps
    return out


def profile_preset(
    preset: str,
    dataset_dir: str | Path,
    *,
    steps: int = 3,
    warmup: int = 2,
    batch_size: int = 32,
    overrides: list[str] | None = None,
    trace_dir: str | Path | None = None,
) -> dict[str, Any]:
    """Per-stage breakdown (ms per optimizer step) of one preset, built exactly as `train/loop.py` builds it."""
    from latentvla.config import apply_overrides, get_preset
    from latentvla.data.dataset import VLADataset, make_normalizer
    from latentvla.data.lerobot import LeRobotDatasetReader
    from latentvla.policy import Policy
    from latentvla.train.loop import fit_policy_to_dataset, make_loader, seed_everything, setup_distributed
    from latentvla.train.optim import build_optimizer, no_decay_param_ids

    cfg = apply_overrides(replace(get_preset(preset, "tiny"), batch_size=batch_size), list(overrides or []))
    reader = LeRobotDatasetReader(dataset_dir)
    cfg = fit_policy_to_dataset(cfg, reader)
    dist_info = setup_distributed("cpu")
    normalizer = make_normalizer(reader)
    dataset = VLADataset(
        reader,
        chunk_size=cfg.policy.horizon,
        cameras=list(cfg.policy.cameras),
        normalizer=normalizer,
        augment=cfg.augment,
    )
    seed_everything(cfg.seed)
    policy = Policy(cfg.policy, normalizer)
    model = policy.model.train()
    optimizer = build_optimizer(
        model.param_groups(),
        cfg.lr_backbone,
        cfg.lr_head,
        cfg.weight_decay,
        no_decay_param_ids(model),
        lr_vision=cfg.lr_vision,
    )
    params = [p for g in optimizer.param_groups for p in g["params"]]
    hooks = _label_model_parts(model)
    batches = iter(make_loader(dataset, cfg, 0, dist_info))

    def step(stage: Any, i: int) -> None:
        with record_function("data"):
            batch = next(batches)
        with record_function("forward"):
            loss, _ = model.compute_loss(batch, stage)
        with record_function("backward"):
            loss.float().mean().backward()
        with record_function("optimizer"):
            torch.nn.utils.clip_grad_norm_(params, cfg.grad_clip)
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            model.on_optimizer_step(i)

    stages: dict[str, Any] = {}
    try:
        for stage in cfg.policy.curriculum.stages():
            trace = Path(trace_dir) / f"{preset}_{stage.name}.json" if trace_dir is not None else None
            stages[stage.name] = _profile_stage(lambda i, stage=stage: step(stage, i), steps, warmup, trace)
    finally:
        for h in hooks:
            h.remove()
    return {"preset": preset, "batch_size": cfg.batch_size, "threads": torch.get_num_threads(), "stages": stages}


def _profile_stage(step: Any, steps: int, warmup: int, trace: Path | None) -> dict[str, float]:
    """`warmup` untimed steps, then the breakdown of `steps` profiled ones (and their Chrome trace to `trace`)."""
    for i in range(warmup):
        step(i)
    with profile(activities=[ProfilerActivity.CPU], record_shapes=True) as prof:
        t0 = time.perf_counter()
        for i in range(steps):
            step(i)
        wall = time.perf_counter() - t0
    out = _breakdown(prof, wall, steps)
    out["gemm_alone"] = gemm_alone_ms(gemm_shapes(prof)) / steps
    if trace is not None:
        trace.parent.mkdir(parents=True, exist_ok=True)
        prof.export_chrome_trace(str(trace))
    return out


def format_profile(results: list[dict[str, Any]]) -> str:
    """Markdown: one row per (preset, stage), ms per step and the share of each part."""
    cols = [*PARTS, "python", "item_syncs_ms", "gemm_alone"]
    lines = [
        "| preset | stage | ms/step | " + " | ".join(cols) + " | .item()/step |",
        "|---|---|---:|" + "---:|" * (len(cols) + 1),
    ]
    for r in results:
        for name, b in r["stages"].items():
            cells = [f"{b[c]:.0f} ({100 * b[c] / b['step']:.0f}%)" for c in cols]
            lines.append(
                f"| {r['preset']} | {name} | {b['step']:.0f} | "
                + " | ".join(cells)
                + f" | {b['item_syncs_per_step']:.0f} |"
            )
    return "\n".join(lines)
