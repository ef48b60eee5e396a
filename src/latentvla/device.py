"""`check_device`: a `device` setting that this machine cannot run is one line before any work (issue 26).

Without it `device=cuda` on a CPU-only torch build failed with "Torch not compiled with CUDA enabled" deep in
`.to(device)`, after the dataset was opened and the model built (train) or loaded (serve).
"""

from __future__ import annotations

import os


def check_device(device: str, flag: str = "device=") -> None:
    """Raise ValueError naming `device` and what to use instead, unless this machine can run it ("auto" always)."""
    import torch

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
            "install a CUDA build of torch"
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
