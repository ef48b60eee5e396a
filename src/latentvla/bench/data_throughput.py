"""Data-pipeline throughput and memory: is data or compute the bottleneck, and does RAM stay bounded?

`bench_data` measures, on one dataset:

- `open_s`, `open_rss_mb`: time and memory to open `VLADataset` (metadata only; images stay on disk);
- `decode_frames_per_s`: frames read + decoded per second inside the frame store (caches off, random samples);
- `samples_per_s_1proc`: whole samples (decode + augmentation + tensors) in one process at 1 torch thread;
- `loader_samples_per_s`: the training `DataLoader` (random rank-sharded batches, `workers` persistent workers
  with prefetch), after its first batch (worker start-up is reported as `first_batch_s`);
- `peak_rss_mb` / `peak_pss_mb`: the largest total RSS / PSS of this process plus its workers, sampled every
  20 ms. RSS counts pages shared between the forked workers once per process (an upper bound); PSS splits them.

With `train_preset`, the same dataset also feeds `bench train`'s measurement of that preset (`train_samples_per_s`,
what one optimizer step consumes) and, with `train_steps`, a real `train()` run whose peak RSS is recorded
(`train_peak_rss_mb`): the issue's "20 steps on a 60k-frame dataset under 3 GB".
"""

from __future__ import annotations

import os
import tempfile
import threading
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import torch

_PAGE_MB = 1 / 1024  # /proc reports kB


def _children(pid: int) -> list[int]:
    out = []
    try:
        for tid in os.listdir(f"/proc/{pid}/task"):
            text = Path(f"/proc/{pid}/task/{tid}/children").read_text().split()
            out += [int(c) for c in text]
    except OSError:
        pass
    return out


def _tree(pid: int) -> list[int]:
    pids, todo = [], [pid]
    while todo:
        p = todo.pop()
        pids.append(p)
        todo += _children(p)
    return pids


def _field_kb(path: str, name: str) -> float:
    try:
        for line in Path(path).read_text().splitlines():
            if line.startswith(name + ":"):
                return float(line.split()[1])
    except OSError:
        pass
    return 0.0


def tree_memory_mb(pid: int | None = None) -> tuple[float, float]:
    """(sum of RSS, sum of PSS) in MB over process `pid` (default: this one) and all its descendants."""
    pids = _tree(os.getpid() if pid is None else pid)
    rss = sum(_field_kb(f"/proc/{p}/status", "VmRSS") for p in pids)
    pss = sum(_field_kb(f"/proc/{p}/smaps_rollup", "Pss") for p in pids)
    return rss * _PAGE_MB, pss * _PAGE_MB


class PeakMemory:
    """Samples `tree_memory_mb` in a background thread; `peak_rss_mb` / `peak_pss_mb` after `stop()`."""

    def __init__(self, interval_s: float = 0.02) -> None:
        self.interval_s, self.peak_rss_mb, self.peak_pss_mb = interval_s, 0.0, 0.0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            self.sample()
            self._stop.wait(self.interval_s)

    def sample(self) -> None:
        rss, pss = tree_memory_mb()
        self.peak_rss_mb, self.peak_pss_mb = max(self.peak_rss_mb, rss), max(self.peak_pss_mb, pss)

    def __enter__(self) -> PeakMemory:
        self._thread.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self._stop.set()
        self._thread.join()
        self.sample()


def _open(root: str | Path, cameras: list[str] | None, chunk_size: int, **kwargs: Any) -> Any:
    from latentvla.data.dataset import VLADataset

    return VLADataset(root, chunk_size=chunk_size, cameras=cameras, augment=True, **kwargs)


def _time_frame_reads(store: Any) -> list[float]:
    """Wraps `store.frames` so the seconds spent reading + decoding frames accumulate in the returned cell."""
    spent = [0.0]
    frames = store.frames

    def timed(*args: Any, **kwargs: Any) -> Any:
        t0 = time.perf_counter()
        try:
            return frames(*args, **kwargs)
        finally:
            spent[0] += time.perf_counter() - t0

    store.frames = timed
    return spent


def bench_data(
    root: str | Path,
    *,
    workers: int = 2,
    batch_size: int = 32,
    batches: int = 30,
    decode_samples: int = 200,
    chunk_size: int = 10,
    cameras: list[str] | None = None,
    train_preset: str | None = None,
    train_steps: int = 0,
    train_overrides: list[str] | None = None,
) -> dict[str, Any]:
    """The measurements listed in the module docstring, as one flat dict."""
    from torch.utils.data import DataLoader

    from latentvla.data.decoding import DECODE_COUNTS
    from latentvla.train.sampler import ResumableBatchSampler

    report: dict[str, Any] = {"dataset": str(root), "workers": workers, "batch_size": batch_size}
    with PeakMemory() as peak:
        rss0, _ = tree_memory_mb()
        t0 = time.perf_counter()
        dataset = _open(root, cameras, chunk_size)
        report["open_s"] = time.perf_counter() - t0
        report["open_rss_mb"] = tree_memory_mb()[0] - rss0
        report |= {"frames": len(dataset), "cameras": dataset.cameras, "image_size": list(dataset.image_size)}
        report["storage"] = sorted(set(dataset.frames.kinds.values()))

        uncached = _open(root, cameras, chunk_size, decoded_cache_mb=0)
        picks = np.random.default_rng(0).integers(0, len(uncached), min(decode_samples, len(uncached)))
        decode_s = _time_frame_reads(uncached.frames)
        DECODE_COUNTS.clear()
        threads = torch.get_num_threads()
        torch.set_num_threads(1)  # as in a DataLoader worker (torch sets 1 thread there)
        t0 = time.perf_counter()
        for i in picks:
            uncached[int(i)]
        elapsed = time.perf_counter() - t0
        torch.set_num_threads(threads)
        report["decode_frames_per_s"] = sum(DECODE_COUNTS.values()) / decode_s[0]
        report["decoded_frames_per_sample"] = sum(DECODE_COUNTS.values()) / len(picks)
        report["samples_per_s_1proc"] = len(picks) / elapsed
        del uncached

        sampler = ResumableBatchSampler(len(dataset), batch_size, seed=0)
        loader = DataLoader(
            dataset,
            batch_sampler=sampler,
            num_workers=workers,
            persistent_workers=workers > 0,
            prefetch_factor=2 if workers > 0 else None,
        )
        it = iter(loader)
        t0 = time.perf_counter()
        next(it)
        report["first_batch_s"] = time.perf_counter() - t0
        t0 = time.perf_counter()
        for _ in range(batches):
            next(it)
        report["loader_samples_per_s"] = batches * batch_size / (time.perf_counter() - t0)
        del it, loader
    report["peak_rss_mb"], report["peak_pss_mb"] = peak.peak_rss_mb, peak.peak_pss_mb
    if train_preset:
        report |= _bench_train(root, train_preset, train_steps, batch_size, workers, list(train_overrides or []))
    return report


def _bench_train(
    root: str | Path, preset: str, steps: int, batch_size: int, workers: int, overrides: list[str]
) -> dict[str, Any]:
    from latentvla.bench.train_throughput import bench_preset
    from latentvla.config import apply_overrides, get_preset
    from latentvla.train.loop import train

    out: dict[str, Any] = {"train_preset": preset}
    rate = bench_preset(
        preset,
        root,
        steps=3,
        batch_size=batch_size,
        warmup=1,
        overrides=overrides,
        fields={"num_workers": workers},
    )
    out["train_samples_per_s"] = rate["samples_per_s"]
    if steps > 0:
        cfg = replace(
            get_preset(preset, "tiny"),
            steps=steps,
            batch_size=batch_size,
            save_every=steps,
            log_every=10,
            num_workers=workers,
        )
        cfg = apply_overrides(cfg, overrides)  # the user's key=value items win
        with tempfile.TemporaryDirectory() as run, PeakMemory() as peak:
            t0 = time.perf_counter()
            train(cfg, root, run, show_progress=False)
            out["train_wall_s"] = time.perf_counter() - t0
        out["train_steps"] = steps
        out["train_peak_rss_mb"], out["train_peak_pss_mb"] = peak.peak_rss_mb, peak.peak_pss_mb
    return out


def format_report(r: dict[str, Any]) -> str:
    lines = [
        f"dataset {r['dataset']}: {r['frames']} frames, cameras {r['cameras']} {r['image_size']}, {r['storage']}",
        f"open              {r['open_s']:.2f} s, +{r['open_rss_mb']:.0f} MB RSS",
        f"decode (1 proc)   {r['decode_frames_per_s']:.0f} frames/s, {r['decoded_frames_per_sample']:.2f} frames "
        f"per sample, {r['samples_per_s_1proc']:.0f} samples/s",
        f"DataLoader        {r['loader_samples_per_s']:.0f} samples/s ({r['workers']} workers, batch "
        f"{r['batch_size']}; first batch {r['first_batch_s']:.2f} s)",
        f"peak memory       {r['peak_rss_mb']:.0f} MB RSS (sum over processes), {r['peak_pss_mb']:.0f} MB PSS",
    ]
    if "train_samples_per_s" in r:
        ratio = r["loader_samples_per_s"] / r["train_samples_per_s"]
        verdict = "compute" if ratio > 1 else "data"
        lines.append(
            f"training          {r['train_preset']} consumes {r['train_samples_per_s']:.0f} samples/s: the data "
            f"pipeline delivers {ratio:.1f}x that -> the bottleneck is {verdict}"
        )
    if "train_peak_rss_mb" in r:
        lines.append(
            f"train() {r['train_steps']} steps  {r['train_wall_s']:.1f} s wall, peak {r['train_peak_rss_mb']:.0f} MB "
            f"RSS / {r['train_peak_pss_mb']:.0f} MB PSS (process + workers)"
        )
    return "\n".join(lines)
