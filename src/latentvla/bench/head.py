"""The recurrent-depth head alone, with and without its per-call context cache, in one process.

    latentvla bench head --width 896 --heads 8 --context 577 --batch 1 --json head.json   # RD-VLA's head
    latentvla bench head --width 128 --heads 4 --context 81                               # the tiny preset's
    latentvla bench head --train --iterations 8,32 --batch 8     # a training step: TBPTT forward + backward

What is timed: one inference call of `RecurrentDepthHead` at fixed depth r (no halting, no grad) on random
contexts shaped like RD-VLA's: `context` key tokens = latent tokens + 1 proprio token + vision tokens (8/9 of
the rest, RD-VLA: 64 + 1 + 512 = 577), context width = head width. Both paths run interleaved, same seed:

    cached     every block projects its context into keys/values once per call (this repo)
    uncached   every block re-projects the context at every iteration (the official head's structure, [RF])

Per-iteration cost = least-squares slope of the median call time over the depths; the fixed part (prelude,
coda, projections of the cached path) is the intercept. `max_abs_diff` compares the two paths' actions at every
depth. `--train` times a training step instead (forward with truncated BPTT through the last 8 iterations,
L1 loss, backward). Peak memory: live tensor bytes of one call at the largest depth (bench/latency.py's tracker; CUDA's
allocator on a GPU). `head_flops` is the matmul FLOP model that explains the ratio.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import numpy as np
import torch

from latentvla.bench.latency import peak_mb
from latentvla.models.recurrent_head import RecurrentDepthHead, RecurrentHeadConfig

DEFAULT_ITERATIONS = (1, 4, 8, 12, 32)
CHUNK, ACTION_DIM, STATE_DIM = 8, 7, 8  # RD-VLA LIBERO: 8 x 7 chunk, 8-d proprio


def split_context(tokens: int) -> tuple[int, int]:
    """(latent, vision) key tokens for `tokens` = latent + 1 proprio + vision, vision = 8/9 of the rest."""
    if tokens < 3:
        raise ValueError(f"--context must be >= 3 (latent + proprio + vision tokens), got {tokens}")
    vision = max(1, round((tokens - 1) * 8 / 9))
    return tokens - 1 - vision, vision


def head_flops(
    width: int, context: int, *, chunk: int = CHUNK, ffn_mult: int = 4, core_layers: int = 2
) -> dict[str, float]:
    """Matmul FLOPs (2 per multiply-add) and fp32 weight bytes read by one core iteration, batch 1, context width
    = head width.

    Per block: self-attn qkv/out (4 K D^2), attention over K and over T keys, cross q/out (2 K D^2), SwiGLU
    (3 K D F), and the context projection 2 T D (2 D) — the part the cache moves out of the loop. Every iteration
    also streams the core's weights; with K = 8 query rows per batch element those reads, not the FLOPs, bound
    the cached iteration at small batch on a CPU (roofline: time ~ max(FLOPs / peak, bytes / bandwidth))."""
    K, D, T, F = chunk, width, context, ffn_mult * width
    per_block = 2 * (3 * K * D * D + K * D * D + 2 * K * K * D + 2 * K * D * D + 2 * K * T * D + 3 * K * D * F)
    projection = 2 * T * D * 2 * D
    adapter = 2 * K * 2 * D * D
    cached = adapter + core_layers * per_block
    uncached = cached + core_layers * projection
    block_params = 4 * D * D + 2 * D * D + 3 * D * F  # qkv_self, o_self, q_cross, o_cross, ffn_in, ffn_down
    bytes_cached = 4 * (2 * D * D + core_layers * block_params)
    bytes_uncached = bytes_cached + 4 * core_layers * 2 * (D * 2 * D)  # + kv_latent, kv_vision
    return {
        "per_iteration_uncached": float(uncached),
        "per_iteration_cached": float(cached),
        "projection_share": core_layers * projection / uncached,
        "ratio": cached / uncached,
        "weight_bytes_cached": float(bytes_cached),
        "weight_bytes_uncached": float(bytes_uncached),
    }


def _slope(xs: list[int], ys: list[float]) -> float:
    return float(np.polyfit(np.asarray(xs, dtype=float), np.asarray(ys, dtype=float), 1)[0])


def bench_head(
    *,
    width: int = 896,
    heads: int = 8,
    context: int = 577,
    batch: int = 1,
    iterations=DEFAULT_ITERATIONS,
    repeats: int = 3,
    warmup: int = 1,
    modes=("cached", "uncached"),
    train: bool = False,
    device: str = "cpu",
    progress=None,
) -> dict[str, Any]:
    """The report (see the module docstring); raises ValueError on bad sizes."""
    if batch < 1 or repeats < 1 or warmup < 0 or not iterations or min(iterations) < 1:
        raise ValueError("--batch, --repeats and every --iterations value must be >= 1 (--warmup >= 0)")
    n_lat, n_vis = split_context(context)
    dev = torch.device(device)
    head = _build_head(width, heads, max(iterations), dev)
    call = _head_call(head, width, batch, n_lat, n_vis, dev, train)
    times, actions = _time_interleaved(call, iterations, modes, warmup, repeats, progress)
    report: dict[str, Any] = {
        "benchmark": "head",
        "width": width,
        "heads": heads,
        "context": context,
        "latent_tokens": n_lat,
        "vision_tokens": n_vis,
        "batch": batch,
        "train": train,
        "chunk": CHUNK,
        "iterations": list(iterations),
        "params_m": sum(p.numel() for p in head.parameters()) / 1e6,
        "device": str(dev),
        "flops": head_flops(width, context),
    }
    for mode in modes:
        ms = {r: float(np.median(v)) for r, v in times[mode].items()}
        report[mode] = {
            "ms": {str(r): v for r, v in ms.items()},
            "per_iteration_ms": _slope(list(ms), list(ms.values())) if len(ms) > 1 else None,
            "peak_mem_mb": peak_mb(lambda mode=mode: call(max(iterations), mode)),
        }
    if len(modes) == 2:
        report |= _compare_paths(report, actions, iterations)
    return report


def _build_head(width: int, heads: int, max_depth: int, dev: torch.device) -> RecurrentDepthHead:
    """RD-VLA's head at seed 0, its vision gates opened (tanh(0) = 0 zeroes the vision logits) so the vision
    keys matter."""
    torch.manual_seed(0)
    cfg = RecurrentHeadConfig(width=width, heads=heads, chunk=CHUNK, max_depth=max_depth)
    head = RecurrentDepthHead(cfg, context_dim=width, action_dim=ACTION_DIM, state_dim=STATE_DIM).to(dev).eval()
    with torch.no_grad():
        for blk in [head.prelude, *head.core, head.coda]:
            blk.vision_gate.fill_(0.5)
    return head


def _head_call(
    head: RecurrentDepthHead, width: int, batch: int, n_lat: int, n_vis: int, dev: torch.device, train: bool
) -> Callable[[int, str], torch.Tensor]:
    """`call(r, mode)`: one inference call (or, with `train`, one TBPTT training step) at depth r on fixed random
    contexts, the cached or uncached path; returns the actions."""
    g = torch.Generator().manual_seed(1)
    ctx = {
        k: torch.randn(batch, n, width, generator=g).to(dev)
        for k, n in (("pl", n_lat), ("pv", n_vis), ("cl", n_lat), ("cv", n_vis))
    }
    state = torch.randn(batch, STATE_DIM, generator=g).to(dev)

    target = torch.randn(batch, CHUNK, ACTION_DIM, generator=g).to(dev)

    def call(r: int, mode: str) -> torch.Tensor:
        if train:
            return train_step(r, mode)
        with torch.no_grad():
            out = head(
                ctx["pl"],
                ctx["cl"],
                ctx["cv"],
                state,
                prelude_vision_context=ctx["pv"],
                num_iterations=r,
                generator=torch.Generator(device=dev).manual_seed(2),
                cache_context=mode == "cached",
            )
        if dev.type == "cuda":
            torch.cuda.synchronize()
        return out.actions

    def train_step(r: int, mode: str) -> torch.Tensor:
        head.zero_grad(set_to_none=True)
        loss, out = head.loss(
            target,
            ctx["pl"],
            ctx["cl"],
            ctx["cv"],
            state,
            None,
            prelude_vision_context=ctx["pv"],
            num_iterations=r,
            generator=torch.Generator(device=dev).manual_seed(2),
            cache_context=mode == "cached",
        )
        loss.mean().backward()
        if dev.type == "cuda":
            torch.cuda.synchronize()
        return out.actions.detach()

    return call


def _time_interleaved(
    call: Callable[[int, str], torch.Tensor], iterations, modes, warmup: int, repeats: int, progress
) -> tuple[dict[str, dict[int, list[float]]], dict[tuple[str, int], torch.Tensor]]:
    """ms per call of every (mode, depth), the modes interleaved so both paths see the same machine state; and
    the last actions of each."""
    times: dict[str, dict[int, list[float]]] = {m: {r: [] for r in iterations} for m in modes}
    actions: dict[tuple[str, int], torch.Tensor] = {}
    for rep in range(warmup + repeats):
        for r in iterations:
            if progress and rep == warmup:
                progress(f"r={r}")
            for mode in modes:
                t0 = time.perf_counter()
                actions[mode, r] = call(r, mode)
                if rep >= warmup:
                    times[mode][r].append((time.perf_counter() - t0) * 1000.0)
    return times, actions


def _compare_paths(report: dict, actions: dict, iterations) -> dict[str, Any]:
    """Cached vs uncached: per-iteration and per-call ratios, and the largest action difference at any depth."""
    c, u = report["cached"]["per_iteration_ms"], report["uncached"]["per_iteration_ms"]
    top = str(max(iterations))
    diffs = [(actions["cached", r] - actions["uncached", r]).abs().max() for r in iterations]
    return {
        "per_iteration_ratio": c / u if c is not None and u else None,
        "call_ratio_at_max_depth": report["cached"]["ms"][top] / report["uncached"]["ms"][top],
        "max_abs_diff": float(max(diffs)),
    }


def format_table(report: dict) -> str:
    """A markdown table of the report."""
    modes = [m for m in ("cached", "uncached") if m in report]
    lines = [
        f"recurrent head: width {report['width']}, {report['heads']} heads, {report['context']} context tokens "
        f"({report['latent_tokens']} latent + 1 proprio + {report['vision_tokens']} vision), batch "
        f"{report['batch']}, {report['params_m']:.2f} M params, {report['device']}"
        + (", training step (TBPTT forward + backward)" if report.get("train") else ", inference"),
        "",
        "| iterations | " + " | ".join(f"{m} ms/call" for m in modes) + " |",
        "|---:|" + "---:|" * len(modes),
    ]
    for r in report["iterations"]:
        lines.append(f"| {r} | " + " | ".join(f"{report[m]['ms'][str(r)]:.2f}" for m in modes) + " |")
    for m in modes:
        per = report[m]["per_iteration_ms"]
        per_s = "n/a" if per is None else f"{per:.2f}"
        lines.append(f"\n{m}: {per_s} ms per iteration, peak {report[m]['peak_mem_mb']:.1f} MB")
    f = report["flops"]
    lines.append(
        f"\nFLOP model per iteration: cached {f['per_iteration_cached'] / 1e9:.3f} G, uncached "
        f"{f['per_iteration_uncached'] / 1e9:.3f} G (context projection {100 * f['projection_share']:.1f} %); "
        f"weights read {f['weight_bytes_cached'] / 2**20:.0f} MB vs {f['weight_bytes_uncached'] / 2**20:.0f} MB"
    )
    if report.get("per_iteration_ratio") is not None:
        lines.append(
            f"per-iteration cost cached / uncached = {report['per_iteration_ratio']:.3f}x; per call at "
            f"{max(report['iterations'])} iterations {report['call_ratio_at_max_depth']:.3f}x; "
            f"max_abs_diff = {report['max_abs_diff']:.2e}"
        )
    return "\n".join(lines)
