"""Counts the tensor calls that make the host wait for the device, for tests.

`SyncCounter` is a TorchFunctionMode that records every call that reads a tensor's value on the host or gives a
data-dependent shape: `.item()`, `.tolist()`, `bool()` / `float()` / `int()` / `__index__` on a tensor, `.cpu()`,
`.numpy()`, `nonzero`, `masked_select`, `unique`, and indexing with a boolean tensor (`x[mask]`, `x[mask] = v`,
`index_put`). On a CPU-only machine these cost nothing, but each is a full stall on an accelerator; the CPU run
finds them all (a GPU run with `torch.cuda.set_sync_debug_mode("error")` would also find pageable copies).

Each event is attributed to the innermost frame outside torch's tensor wrappers. `HOST_SITES` lists the places
where such a call is host work by construction, each with the reason; everything else must be zero.
"""

from __future__ import annotations

import sys
from collections import Counter
from dataclasses import dataclass, field

import torch
from torch.overrides import TorchFunctionMode

_T = torch.Tensor
_READS = {
    _T.item,
    _T.tolist,
    _T.__bool__,
    _T.__float__,
    _T.__int__,
    _T.__index__,
    _T.cpu,
    _T.numpy,
    _T.nonzero,
    torch.nonzero,
    _T.masked_select,
    torch.masked_select,
    _T.unique,
    torch.unique,
    torch.argwhere,
    _T.argwhere,
}
_INDEXING = {_T.__getitem__, _T.__setitem__, _T.index_put, _T.index_put_, torch.index_put}
_WRAPPERS = ("torch/overrides.py", "torch/_tensor.py", "torch/utils/_device.py", "sync_counter.py")

# (path fragment, function or None for the whole file) -> why a read there is host work, not a device sync
HOST_SITES = {
    ("latentvla/data/", None): "the data loader: host tensors, before the batch is copied to the device",
    ("torch/utils/data/", None): "the data loader's collate: host tensors",
    ("latentvla/train/sampler.py", None): "the batch sampler's host indices",
    ("latentvla/models/sequence.py", "build_sequence"): "the host layout, built from strings in numpy "
    "(action ids on a device are written there, never read back)",
    ("latentvla/models/sequence.py", "shifted_targets"): "called by build_sequence on its host tensors",
    ("torch/optim/", None): "AdamW's step counters live on the CPU (non-capturable): reading them is host work",
    ("latentvla/models/device_checks.py", "check"): "CPU branch only; on an accelerator it is _assert_async",
    ("latentvla/train/finite_guard.py", "pop"): "reads the pinned host copy of the previous step's verdict",
    ("latentvla/models/recurrence.py", "sample_depth"): "a CPU generator's draw (the step-seeded depth)",
    ("latentvla/models/recurrent_ops.py", "trunc_normal"): "CPU branch only (torch's rejection sampler); on "
    "an accelerator the inverse-CDF draw has no host loop",
}


@dataclass(eq=False)
class SyncCounter(TorchFunctionMode):
    events: list[tuple[str, str, int]] = field(default_factory=list)  # (call, "file:function", bucket)
    bucket: int = -1  # set by the test (e.g. the optimizer step); -1 = not counted

    def __post_init__(self) -> None:
        super().__init__()

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if self.bucket >= 0 and (func in _READS or (func in _INDEXING and _bool_index(args))):
            self.events.append((getattr(func, "__name__", str(func)), _site(), self.bucket))
        return func(*args, **kwargs)

    def device_syncs(self, bucket: int | None = None) -> list[tuple[str, str, int]]:
        """Events outside `HOST_SITES` (in `bucket`, or all)."""
        return [e for e in self.events if (bucket is None or e[2] == bucket) and not _host_site(e[1])]

    def summary(self, buckets) -> dict[str, int]:
        """{"call at file:function:line": count} of the device syncs in `buckets`."""
        return dict(Counter(f"{c} at {site}" for b in buckets for c, site, _ in self.device_syncs(b)))


def _bool_index(args) -> bool:
    idx = args[1] if len(args) > 1 else None
    items = idx if isinstance(idx, tuple | list) else (idx,)
    return any(isinstance(i, torch.Tensor) and i.dtype in (torch.bool, torch.uint8) for i in items)


def _site() -> str:
    """The innermost frame outside torch's tensor wrappers, and (when that is inside torch) the innermost
    latentvla frame that led there: "file:function:line[ <- file:function:line]"."""
    frame = sys._getframe(2)
    while frame is not None and _path(frame).endswith(_WRAPPERS):
        frame = frame.f_back
    if frame is None:
        return "?"
    site = _where(frame)
    if "/latentvla/" not in _path(frame):
        outer = frame.f_back
        while outer is not None and "/latentvla/" not in _path(outer):
            outer = outer.f_back
        if outer is not None:
            site += " <- " + _where(outer)
    return site


def _path(frame) -> str:
    return frame.f_code.co_filename.replace("\\", "/")


def _where(frame) -> str:
    return f"{_path(frame)}:{frame.f_code.co_name}:{frame.f_lineno}"


def _host_site(site: str) -> bool:
    for part in site.split(" <- "):
        path, func, _ = part.rsplit(":", 2)
        if any(frag in path and (fn is None or fn == func) for frag, fn in HOST_SITES):
            return True
    return False
