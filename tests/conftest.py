"""Shared test setup: one torch thread (tiny ops on a shared 2-core machine are fastest single-threaded)."""

import os

os.environ.setdefault("MUJOCO_GL", "egl")

try:
    import torch

    torch.set_num_threads(1)
except ImportError:  # the client tests run without torch
    pass
