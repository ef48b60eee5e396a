"""Where inference runs and in which precision (`eval --device/--precision`, `serve --device/--precision`).

    resolve_device("auto")  -> "cuda" when CUDA is available, else "cpu"
    resolve_device("cuda")  -> "cuda", or one line saying this torch build / machine has no CUDA
    autocast_dtype("cuda", "auto") -> torch.bfloat16 where the GPU supports it; on CPU None (fp32, unchanged)

Precision "auto" runs bf16 autocast and TF32 matmuls on a CUDA device that supports them (the papers' GPUs:
H100 / A100) and plain fp32 on CPU, so CPU results stay identical to an fp32 run. "fp32" never autocasts; "bf16"
forces bf16 autocast on any device (CPU included; slower there, for checking what a GPU run would see).
"""

from __future__ import annotations

import os

import torch

PRECISIONS = ("auto", "fp32", "bf16")


def resolve_device(spec: str | None) -> str:
    """'auto' -> cuda if available else cpu; 'cuda[:N]' / 'mps' checked against this machine (one-line error)."""
    spec = (spec or "cpu").strip()
    if spec == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    kind = spec.split(":")[0]
    if kind == "mps":
        if not torch.backends.mps.is_available():
            raise ValueError(f"--device {spec}: MPS is not available on this machine; use --device cpu.")
        return spec
    if kind not in ("cpu", "cuda"):
        raise ValueError(f"--device {spec!r}: use cpu, cuda, cuda:N, mps or auto.")
    check_device(spec, "--device ")
    return spec


def check_device(device: str, flag: str = "device=") -> None:
    """Raise ValueError naming `device` and what to use instead, unless this machine can run it ("auto" always).
    Without it `device=cuda` on a CPU-only build failed deep in `.to(device)` after the dataset was opened."""
    if device == "auto":
        return
    try:
        dev = torch.device(device)
    except (RuntimeError, ValueError):
        raise ValueError(f"{flag}{device!r} is not a torch device: use cpu, cuda, cuda:N or auto") from None
    if dev.type != "cuda":
        return
    if torch.version.cuda is None:
        raise ValueError(
            f"{flag}{device}: this torch {torch.__version__} is a CPU-only build; use {flag}cpu (or auto), or "
            "install a CUDA build of torch (README 'GPU recipes')"
        )
    count = torch.cuda.device_count()
    if count == 0:
        visible = os.environ.get("CUDA_VISIBLE_DEVICES")
        raise ValueError(
            f"{flag}{device}: no CUDA GPU is visible"
            + (f" (CUDA_VISIBLE_DEVICES={visible!r})" if visible is not None else "")
            + f"; use {flag}cpu (or auto)"
        )
    if dev.index is not None and dev.index >= count:
        raise ValueError(f"{flag}{device}: this machine has {count} GPU(s) (cuda:0..cuda:{count - 1})")


def autocast_dtype(device: str | torch.device, precision: str = "auto") -> torch.dtype | None:
    """The autocast dtype of inference on `device` at `precision` (None: plain fp32)."""
    if precision not in PRECISIONS:
        raise ValueError(f"--precision {precision!r}: use one of {PRECISIONS}.")
    kind = torch.device(device).type
    if precision == "fp32":
        return None
    if precision == "bf16":
        return torch.bfloat16
    if kind == "cuda" and torch.cuda.is_bf16_supported():
        return torch.bfloat16
    return None


def enable_tf32(device: str | torch.device, precision: str = "auto") -> bool:
    """TF32 tensor-core matmuls / convolutions for the fp32 ops left outside autocast (CUDA, precision != fp32)."""
    if torch.device(device).type != "cuda" or precision == "fp32":
        return False
    torch.backends.cuda.matmul.allow_tf32 = True
    torch.backends.cudnn.allow_tf32 = True
    return True
