"""Per-call latency and recurrent-depth memory of one policy, all in one process.

What is timed is exactly what a robot pays per chunk: `Policy.sample` on one observation (batch 1), after
warm-up, median and p90 over repeats:

    no_reasoning_ms   image + instruction -> action output (no thinking, no <img_next>)
    latent_ms         K thinking tokens (K+1 KV-cached passes) + 16 <img_next> + action output (LaRA inference)
    explicit_ms       greedy CoT text decoding with the KV cache, then act continuing that cache (ECoT-style);
                      `explicit_cot_tokens` is the number of CoT tokens that call decoded
    A path the model cannot run (latent on a model that writes its CoT as text, explicit on one that never
    learned text) is reported as None.
    rd_fixed_ms       recurrent head at fixed depths            (only when the checkpoint has a recurrent head)
    rd_adaptive_ms    recurrent head with MSE halting (delta), and its mean iterations
    rd_peak_mem_mb    peak live tensor memory of the recurrent head alone per depth (backbone output computed
                      before measuring): constant in depth is RD-VLA's claim. The whole call's peak
                      (`rd_call_peak_mem_mb`) is dominated by the backbone and would hide a per-iteration leak.
    expert_sample_ms  flow expert alone: its Euler steps on the context of one latent call, context keys/values
                      projected once (cached) and at every step (`expert_sample_uncached_ms`, the reference),
                      same fixed noise; `expert_actions_max_abs_diff` between the two (flow checkpoints only)

Peak memory: on CUDA `torch.cuda.max_memory_allocated`; on CPU a `TorchDispatchMode` that tracks the bytes of
every tensor storage created by an op and released when the last tensor using it dies. That counts what the
model allocates (activations, scratchpad, caches), not the allocator's slack — deterministic and comparable
across depths, which is the claim under test.
"""

from __future__ import annotations

import time
import weakref
from typing import Any

import numpy as np
import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten

from latentvla.constants import OBS_IMAGES, OBS_STATE, TASK
from latentvla.models.halting import MSEConvergence

DEFAULT_DEPTHS = (1, 4, 8, 12, 32)


class PeakTensorMemory(TorchDispatchMode):
    """Peak bytes of live tensor storages created inside the context (CPU-friendly, exact for op outputs)."""

    def __init__(self) -> None:
        super().__init__()
        self.live: dict[int, list[int]] = {}  # data_ptr -> [nbytes, number of live tensors sharing it]
        self.current = 0
        self.peak = 0

    def _release(self, ptr: int) -> None:
        entry = self.live.get(ptr)
        if entry is None:
            return
        entry[1] -= 1
        if entry[1] == 0:
            self.current -= entry[0]
            del self.live[ptr]

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        for t in tree_flatten(out)[0]:
            if not isinstance(t, torch.Tensor) or t.device.type == "meta":
                continue
            ptr = t.untyped_storage().data_ptr()
            if ptr == 0:
                continue
            if ptr in self.live:
                self.live[ptr][1] += 1
            else:
                nbytes = t.untyped_storage().nbytes()
                self.live[ptr] = [nbytes, 1]
                self.current += nbytes
                self.peak = max(self.peak, self.current)
            weakref.finalize(t, self._release, ptr)
        return out


def example_observation(policy, seed: int = 0, task: str = "pick up the puck and place it at the goal") -> dict:
    """A deterministic synthetic observation with the policy's cameras, image size and state size."""
    rng = np.random.default_rng(seed)
    c = policy.config
    obs: dict[str, Any] = {TASK: task, OBS_STATE: rng.normal(size=c.state_dim).astype(np.float32)}
    for cam in c.cameras:
        obs[f"{OBS_IMAGES}.{cam}"] = rng.integers(0, 256, size=(c.image_size, c.image_size, 3), dtype=np.uint8)
    return obs


def time_interleaved(fns: dict[str, Any], warmup: int, repeats: int) -> dict[str, dict[str, float]]:
    """Median / p90 ms per call of every function, timed round-robin: each round calls every function once, in
    an order rotated by one each round. Timing them one after another let drift and warm-up land on whichever
    path came first (a demo's 10-repeat bench once put the no-reasoning call, timed first, above the latent one:
    0.95x; interleaved the same checkpoint measures 1.4x, LOG.md 2026-12-02)."""
    names = list(fns)
    for _ in range(warmup):
        for name in names:
            fns[name]()
    times: dict[str, list[float]] = {name: [] for name in names}
    for r in range(repeats):
        k = r % len(names) if names else 0
        for name in names[k:] + names[:k]:
            t0 = time.perf_counter()
            fns[name]()
            times[name].append((time.perf_counter() - t0) * 1000.0)
    return {name: {"median": float(np.median(t)), "p90": float(np.percentile(t, 90))} for name, t in times.items()}


def peak_mb(fn) -> float:
    """Peak extra memory (MB) of `fn()`: CUDA's allocator peak, or the CPU live-tensor tracker."""
    if torch.cuda.is_available():
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        base = torch.cuda.memory_allocated()
        fn()
        torch.cuda.synchronize()
        return (torch.cuda.max_memory_allocated() - base) / 2**20
    tracker = PeakTensorMemory()
    with tracker:
        fn()
    return tracker.peak / 2**20


@torch.no_grad()
def head_peak_mb(policy, obs: dict, depths, seed: int = 0) -> dict[str, float]:
    """Peak live-tensor MB of the action head alone at each recurrent depth, on one latent backbone output."""
    from latentvla.models.sampling import SampleOptions
    from latentvla.models.vla import Layout

    model, batch = policy.model, policy.make_batch([obs])
    stage = model.stage
    layout = Layout(n_latent=stage.num_thinking, visual=stage.visual_latents, n_query=model.head.n_query)
    prefix = model.embed_prefix(batch, layout)
    out, _ = model._forward(prefix)
    gen = torch.Generator(device=policy.device)

    def head(k: int):
        gen.manual_seed(seed)
        return model.head.sample_actions(out, prefix.seq, batch, SampleOptions(iterations=k, generator=gen))

    return {str(k): peak_mb(lambda k=k: head(k)) for k in depths}


def bench_latency(
    policy,
    *,
    warmup: int = 2,
    repeats: int = 10,
    depths=DEFAULT_DEPTHS,
    delta: float = 1e-3,
    max_depth: int = 32,
    seed: int = 0,
    progress=None,
) -> dict:
    """The latency report (see module docstring for the keys)."""
    obs = example_observation(policy, seed)
    gen = torch.Generator(device=policy.device)

    def call(**kw):
        gen.manual_seed(seed)
        return policy.sample([obs], generator=gen, **kw)

    report: dict[str, Any] = {
        "device": str(policy.device),
        "preset": policy.config.preset,
        "head": policy.config.head,
    }
    modes = policy.model.modes
    jobs: list[tuple[str, dict]] = [
        (name, {"mode": mode})
        for name, mode in (("no_reasoning", "none"), ("latent", "latent"), ("explicit", "explicit"))
        if mode in modes
    ]
    recurrent = policy.config.head == "recurrent" and policy.config.model == "vla"
    if recurrent:
        jobs += [(f"rd_fixed_{k}", {"mode": "latent", "iterations": k}) for k in depths]
        jobs.append(("rd_adaptive", {"mode": "latent", "iterations": max_depth, "halting": MSEConvergence(delta)}))
    if progress:
        progress(", ".join(name for name, _ in jobs) + " (interleaved)")
    timings = time_interleaved({name: (lambda kw=kw: call(**kw)) for name, kw in jobs}, warmup, repeats)
    median = lambda name: timings[name]["median"] if name in timings else None  # noqa: E731
    report["no_reasoning_ms"] = median("no_reasoning")
    report["latent_ms"] = median("latent")
    report["explicit_ms"] = median("explicit")
    report["p90_ms"] = {k: v["p90"] for k, v in timings.items()}
    report["explicit_cot_tokens"] = None
    if "explicit" in timings:
        _, explicit_out = call(mode="explicit")
        report["explicit_cot_tokens"] = int(explicit_out.cot_tokens[0])  # decoded one by one (cap: 96)
    report["num_thinking_tokens"] = policy.model.stage.num_thinking
    if recurrent:
        report["rd_fixed_ms"] = {str(k): timings[f"rd_fixed_{k}"]["median"] for k in depths}
        report["rd_adaptive_ms"] = timings["rd_adaptive"]["median"]
        _, out = call(mode="latent", iterations=max_depth, halting=MSEConvergence(delta))
        report["rd_adaptive_mean_iterations"] = float(out.iterations.float().mean())
        report["rd_adaptive_delta"] = delta
        report["rd_peak_mem_mb"] = head_peak_mb(policy, obs, depths, seed)
        report["rd_call_peak_mem_mb"] = {
            str(k): peak_mb(lambda k=k: call(mode="latent", iterations=k)) for k in depths
        }
    model = policy.model
    if (
        policy.config.head == "flow"
        and policy.config.model == "vla"
        and "latent" in model.modes
        and model.stage.train_head
    ):  # the expert acts (the bc policy has no flow expert)
        report.update(_expert_sampling(policy, call, warmup, repeats, seed))
    ratio = lambda a, b: report[a] / report[b] if report[a] and report[b] else None  # noqa: E731
    report["ratio_explicit_over_latent"] = ratio("explicit_ms", "latent_ms")
    report["ratio_latent_over_no_reasoning"] = ratio("latent_ms", "no_reasoning_ms")
    return report


def _expert_sampling(policy, call, warmup: int, repeats: int, seed: int) -> dict[str, Any]:
    """Time the flow expert's `sample` alone on the inputs of one latent call, cached vs re-projecting."""
    head, seen = policy.model.head, {}
    original = head.sample

    def spy(*args, **kwargs):
        seen["args"], seen["kwargs"] = args, kwargs
        return original(*args, **kwargs)

    head.sample = spy  # instance attribute: shadows the method for one call
    try:
        call(mode="latent")
    finally:
        del head.sample
    if not seen:  # a stage-I/II checkpoint acts through action tokens: no expert call to time
        return {}
    context = seen["args"][0]
    g = torch.Generator().manual_seed(seed)
    noise = torch.randn(context.shape[0], head.horizon, head.action_dim, generator=g).to(context)
    kwargs = {**seen["kwargs"], "noise": noise, "generator": None}

    def sample(cache: bool):
        out = head.sample(*seen["args"], **kwargs, cache_context=cache)
        if out.is_cuda:
            torch.cuda.synchronize()
        return out

    both = time_interleaved({"cached": lambda: sample(True), "uncached": lambda: sample(False)}, warmup, repeats)
    cached, uncached = both["cached"], both["uncached"]
    return {
        "expert_steps": int(kwargs.get("num_steps") or head.cfg.num_steps),
        "expert_context_tokens": int(context.shape[1]),
        "expert_sample_ms": cached["median"],
        "expert_sample_uncached_ms": uncached["median"],
        "expert_actions_max_abs_diff": float((sample(True) - sample(False)).abs().max()),
    }


def format_table(report: dict) -> str:
    """A markdown table of the report."""
    rows = [
        ("no reasoning", report["no_reasoning_ms"]),
        ("latent reasoning", report["latent_ms"]),
        (f"explicit CoT ({report['explicit_cot_tokens']} tokens)", report["explicit_ms"]),
    ]
    rows = [(n, v) for n, v in rows if v is not None]
    for k, v in report.get("rd_fixed_ms", {}).items():
        rows.append((f"recurrent head, {k} iterations", v))
    if "rd_adaptive_ms" in report:
        rows.append(
            (
                f"recurrent head, adaptive (mean {report['rd_adaptive_mean_iterations']:.2f} it, "
                f"delta {report['rd_adaptive_delta']:g})",
                report["rd_adaptive_ms"],
            )
        )
    if "expert_sample_ms" in report:
        n, t = report["expert_steps"], report["expert_context_tokens"]
        rows.append(
            (
                f"flow expert alone, {n} Euler steps, {t} context tokens, context K/V once",
                report["expert_sample_ms"],
            )
        )
        rows.append(
            (f"flow expert alone, {n} Euler steps, context K/V every step", report["expert_sample_uncached_ms"])
        )
    lines = ["| path | median ms/call |", "|---|---:|", *[f"| {n} | {v:.2f} |" for n, v in rows]]
    ratios = [
        (k, report[f"ratio_{k.replace(' / ', '_over_').replace('-', '_')}"])
        for k in ("explicit / latent", "latent / no-reasoning")
    ]
    lines += ["", "; ".join(f"{k} = {v:.2f}x" for k, v in ratios if v is not None)]
    if "rd_peak_mem_mb" in report:
        mem = report["rd_peak_mem_mb"]
        lines += ["", "| iterations | peak MB |", "|---:|---:|", *[f"| {k} | {v:.2f} |" for k, v in mem.items()]]
        ks = list(mem)
        if "4" in mem and "32" in mem:
            lines.append(f"\npeak memory 32 vs 4 iterations: {mem['32'] / mem['4']:.3f}x")
        elif len(ks) > 1:
            lines.append(f"\npeak memory {ks[-1]} vs {ks[0]} iterations: {mem[ks[-1]] / mem[ks[0]]:.3f}x")
    return "\n".join(lines)
