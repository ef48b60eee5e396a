"""The loop's non-finite guard and metric read-back, with no host sync in a training step.

A step's metrics are detached device tensors (models' `compute_loss`); reading one on the host (`.item()`,
`float()`) waits until the device has run everything queued so far, and the device then idles while the host
prepares the next step. So, as in nanoGPT, metrics are read once per log row (`host_floats`), and the guard that
stops a run on a NaN/inf loss or gradient (README "Failure behaviour") reads its verdict one step late: each
step's verdict is copied to pinned host memory without blocking (`FiniteGuard.push`) and read at the next step
boundary (`FiniteGuard.pop`) — by then the device is past it and the read does not wait — or at once before that
step's log row or checkpoint. Nothing of a non-finite step is ever published (row, checkpoint, `last`); the
weights in memory have taken its update, but the run raises before anything reads them.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor


@dataclass
class _Pending:
    step: int  # 0-based optimizer step
    bad: Tensor  # () bool, on the host (pinned) once `event` has completed
    event: torch.cuda.Event | None
    loss: Tensor
    grad_norm: Tensor


@dataclass(frozen=True)
class Verdict:
    step: int  # 0-based optimizer step
    finite: bool
    loss: float  # the step's summed micro-batch "loss" (read only when it is not finite)
    grad_norm: float


class FiniteGuard:
    """One pending verdict at a time: `push` after the gradient clip, `pop` at the next boundary."""

    def __init__(self) -> None:
        self._pending: _Pending | None = None

    def push(self, step: int, loss: Tensor, grad_norm: Tensor) -> None:
        """Record step `step`'s verdict without waiting for it (a non-blocking copy to pinned memory on CUDA)."""
        bad = ~(torch.isfinite(loss) & torch.isfinite(grad_norm))
        event = None
        if bad.device.type == "cuda":
            host = torch.empty((), dtype=torch.bool, pin_memory=True)
            host.copy_(bad, non_blocking=True)
            event = torch.cuda.Event()
            event.record()
            bad = host
        self._pending = _Pending(step, bad, event, loss, grad_norm)

    def pop(self) -> Verdict | None:
        """The pending verdict (None when there is none), read on the host: waits only for its own event."""
        p, self._pending = self._pending, None
        if p is None:
            return None
        if p.event is not None:
            p.event.synchronize()
        if not bool(p.bad):  # a host tensor here: its copy has completed
            return Verdict(p.step, True, 0.0, 0.0)
        return Verdict(p.step, False, float(p.loss), float(p.grad_norm))


def step_loss(values: list[Tensor | float]) -> Tensor:
    """The sum of one step's micro-batch losses as a float64 tensor on their device (no host read)."""
    dev = next((v.device for v in values if isinstance(v, Tensor)), torch.device("cpu"))
    parts = [
        v.detach().reshape(()).double() if isinstance(v, Tensor) else torch.tensor(float(v), dtype=torch.float64)
        for v in values
    ]
    return torch.stack([p.to(dev) for p in parts]).sum()


def local_tensor(x: Tensor) -> Tensor:
    """A DTensor's full value (FSDP2's gradient norm), else `x`; stays on the device."""
    from torch.distributed.tensor import DTensor

    return x.full_tensor() if isinstance(x, DTensor) else x


def host_floats(values: list[Tensor | float]) -> list[float]:
    """Python floats of metric values (0-dim tensors or floats) with ONE device-to-host read for all the tensors;
    each value is exactly `float(value)` (float32 -> float64 is exact)."""
    idx = [i for i, v in enumerate(values) if isinstance(v, Tensor)]
    out = [0.0 if isinstance(v, Tensor) else float(v) for v in values]
    if idx:
        fetched = torch.stack([values[i].detach().reshape(()).double() for i in idx]).tolist()
        for i, f in zip(idx, fetched):
            out[i] = f
    return out
