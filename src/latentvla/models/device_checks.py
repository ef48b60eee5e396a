"""Input checks inside the training step that never make the host wait for the device.

`if tensor.any(): raise ...` reads the verdict back on the host: on an accelerator that waits until every queued
kernel has run, and the device then idles while the host prepares the next step. `check` raises the usual
ValueError for host (CPU) tensors, where there is nothing to wait for, and queues an asynchronous assertion on
an accelerator (`torch._assert_async`: the error surfaces at the next synchronisation, as a RuntimeError with the
same message).
"""

from __future__ import annotations

import torch
from torch import Tensor


def check(ok: Tensor, message: str) -> None:
    """Raise ValueError(message) unless the 0-dim bool `ok` is True (asynchronously off the CPU)."""
    if ok.device.type == "cpu":
        if not bool(ok):
            raise ValueError(message)
    else:
        torch._assert_async(ok, message)
