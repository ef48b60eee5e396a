"""Per-row random draws: one `torch.Generator` per batch row, so a batched call draws what each row would alone.

Evaluation batches the observations of several simulator episodes into one policy call (eval/pool.py); each
episode owns a generator seeded from (seed, task, episode). Drawing row i with generator i at batch shape 1
gives exactly the numbers an unbatched call would, so a result does not depend on which episodes shared a batch.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import torch
from torch import Tensor

Generators = torch.Generator | Sequence[torch.Generator] | None


def draw_per_row(shape: tuple[int, ...], generator: Any, draw: Callable[[tuple[int, ...], Any], Tensor]) -> Tensor:
    """`draw(shape, generator)`, or with a sequence of generators (one per row of `shape[0]`) each row drawn alone
    at shape (1, ...) with its own generator and concatenated."""
    if not isinstance(generator, list | tuple):
        return draw(shape, generator)
    if len(generator) != shape[0]:
        raise ValueError(f"{len(generator)} generators for a batch of {shape[0]}: pass one per row")
    return torch.cat([draw((1, *shape[1:]), g) for g in generator])
