"""`latentvla bench real-size`: the RD-VLA MiniVLA recipe at full size on this CPU, random weights.

    write      Qwen2.5-0.5B + DINOv2-L + SigLIP-so400m/14-224 at their public sizes (bench/memory.py
               `REFERENCE_CONFIGS`), random init, written by transformers' save_pretrained with the processors the
               public models ship (DINOv2: shortest edge 256, crop 224; SigLIP: 224) and a small BPE tokenizer
               (the 151,936-row embedding is padded past it, as Qwen's is)
    train      `latentvla train --preset rdvla-minivla` on a synthetic 2-camera 224 px dataset: N steps with a
               checkpoint each step, then `--resume` for one more step; the peak RSS of each process is read
               from /proc (VmHWM) and written to OUT/real_size.json (glibc's mmap threshold fixed at 1 MiB, see
               `train_measured`)
    check      exit 1 unless the prediction is within `--tolerance` (10 %) of the training run's measured peak

Everything runs offline; fp32 on CPU (no autocast), so `bench memory --device cpu --dtype float32` is the
prediction to compare.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

PRESET = "rdvla-minivla"
CAMERAS = ("corner4", "wrist")
MMAP_THRESHOLD = 1 << 20  # bytes: glibc mallopt M_MMAP_THRESHOLD for the measured runs (see train_measured)


def write_reference_models(out: str | Path) -> dict[str, Path]:
    """The three MiniVLA models at full size with random weights (skipped when already written)."""
    import torch
    import transformers as tf

    from latentvla.bench.memory import _DINOV2_L, _QWEN25_05B, _SIGLIP_SO400M, DINOV2_PROCESSOR
    from latentvla.testing.tiny_hf import tiny_tokenizer

    out = Path(out)
    paths = {"lm": out / "qwen2.5-0.5b", "dinov2": out / "dinov2-large", "siglip": out / "siglip-so400m-224"}
    if all((p / "config.json").is_file() for p in paths.values()):
        return paths
    torch.manual_seed(0)

    def cfg(d: dict) -> dict:
        return {k: v for k, v in d.items() if k != "model_type"}

    lm = tf.Qwen2ForCausalLM(tf.Qwen2Config(**cfg(_QWEN25_05B)))
    lm.save_pretrained(paths["lm"])
    tiny_tokenizer(["<|endoftext|>"]).save_pretrained(paths["lm"])
    del lm
    tf.Dinov2Model(tf.Dinov2Config(**cfg(_DINOV2_L))).save_pretrained(paths["dinov2"])
    tf.BitImageProcessorPil(**DINOV2_PROCESSOR).save_pretrained(paths["dinov2"])
    tf.SiglipVisionModel(tf.SiglipVisionConfig(**cfg(_SIGLIP_SO400M))).save_pretrained(paths["siglip"])
    tf.SiglipImageProcessorPil(size={"height": 224, "width": 224}).save_pretrained(paths["siglip"])
    return paths


def _run_measured(argv: list[str], env: dict[str, str]) -> tuple[int, float, float]:
    """Run `argv`; return (exit code, peak RSS in GB from /proc VmHWM, wall seconds)."""
    t0 = time.perf_counter()
    proc = subprocess.Popen(argv, env=env)
    peak_kb = 0
    status = Path(f"/proc/{proc.pid}/status")
    while proc.poll() is None:
        try:
            for line in status.read_text().splitlines():
                if line.startswith("VmHWM:"):
                    peak_kb = max(peak_kb, int(line.split()[1]))
        except (FileNotFoundError, ProcessLookupError):
            break
        time.sleep(0.2)
    return proc.wait(), peak_kb * 1024 / 1e9, time.perf_counter() - t0


def train_measured(out: str | Path, batch_size: int = 2, steps: int = 2) -> dict[str, Any]:
    """Write the models and dataset, train `steps` steps + a resumed one; peak RSS of each process (GB)."""
    from latentvla.data.synthetic import write_synthetic_dataset

    out = Path(out)
    paths = write_reference_models(out / "models")
    data = write_synthetic_dataset(out / "data", num_episodes=2, length=12, image_size=224, cameras=CAMERAS)
    run = out / "run"
    base = [
        sys.executable,
        "-m",
        "latentvla.cli",
        "train",
        "--preset",
        PRESET,
        "--backbone",
        str(paths["lm"]),
        "--vision",
        str(paths["dinov2"]),
        "--vision",
        str(paths["siglip"]),
        "--dataset",
        str(data),
        "--out",
        str(run),
        "--batch-size",
        str(batch_size),
        "--no-progress",
    ]
    overrides = [
        f"policy.cameras={','.join(CAMERAS)}",
        "policy.backbone.dtype=float32",
        "grad_accum=1",
        "save_every=1",
        "log_every=1",
    ]
    # glibc's dynamic mmap threshold rises to the size of the largest freed tensor (up to 32 MB), after which freed
    # activations and checkpoint buffers stay in the heap and RSS outgrows the live tensors (measured here: 12.4 /
    # 13.3 GB peaks instead of 10.4 / 12.1). A fixed threshold hands large buffers back on free, so RSS tracks
    # what is alive, which is what `bench memory` models. Set it yourself for long CPU runs.
    env = dict(os.environ, HF_HUB_OFFLINE="1")
    env.setdefault("MALLOC_MMAP_THRESHOLD_", str(MMAP_THRESHOLD))
    code, peak, wall = _run_measured([*base, "--steps", str(steps), "--overwrite", *overrides], env)
    if code != 0:
        raise RuntimeError(f"training exited with {code}")
    code_r, peak_r, wall_r = _run_measured([*base, "--steps", str(steps + 1), "--resume", *overrides], env)
    if code_r != 0:
        raise RuntimeError(f"resumed training exited with {code_r}")
    report = {
        "preset": PRESET,
        "batch_size": batch_size,
        "cameras": len(CAMERAS),
        "dtype": "float32",
        "steps": steps,
        "threads": os.environ.get("OMP_NUM_THREADS"),
        "models": {k: str(v) for k, v in paths.items()},
        "malloc_mmap_threshold": env["MALLOC_MMAP_THRESHOLD_"],
        "peak_rss_gb": round(peak, 3),
        "resume_peak_rss_gb": round(peak_r, 3),
        "train_wall_s": round(wall, 1),
        "resume_wall_s": round(wall_r, 1),
    }
    (out / "real_size.json").write_text(json.dumps(report, indent=2))
    return report


def predict(report: dict[str, Any]) -> Any:
    """`bench memory`'s CPU prediction (a `MemoryReport`) for the run described by `report`."""
    from latentvla.bench.memory import estimate

    m = report["models"]
    return estimate(
        PRESET,
        m["lm"],
        (m["dinov2"], m["siglip"]),
        batch_size=report["batch_size"],
        cameras=report["cameras"],
        device="cpu",
        dtype=report["dtype"],
    )


def check(report: dict[str, Any], tolerance: float = 0.10) -> tuple[bool, str]:
    """Whether `bench memory`'s CPU prediction is within `tolerance` of the training run's peak RSS (steps and
    checkpoint saves). The resumed process's peak is reported next to it, not checked: resuming builds a second
    full policy to read the checkpoint (train/loop.py, `Policy.from_pretrained(last)`), a transient copy of the
    weights made only on resume; `bench memory` models training, not that copy."""
    measured, resumed = report["peak_rss_gb"], report["resume_peak_rss_gb"]
    predicted = predict(report).total_gb
    err = (predicted - measured) / measured
    line = (
        f"bench memory predicts {predicted:.2f} GB, measured peak RSS {measured:.2f} GB ({err:+.1%}; tolerance "
        f"{tolerance:.0%}); the resumed run peaked at {resumed:.2f} GB (loading the checkpoint)"
    )
    return abs(err) <= tolerance, line
