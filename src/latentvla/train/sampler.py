"""A deterministic, resumable, rank-sharded batch sampler (exact resume, DDP).

The sample order is an endless stream of epochs, epoch `e` being `randperm(n)` drawn from a
`torch.Generator` seeded with `seed + e`. Global micro-batch `c` is the slice `[c*B, (c+1)*B)` of that stream
(it may straddle two epochs), and rank `r` of `W` takes the `r`-th contiguous part of size `B/W` of it.

So the whole sampler state is one integer — the number of global micro-batches already consumed — which the
checkpoint stores. Resuming at micro-batch `c` reproduces exactly the batches an uninterrupted run would have
seen, and the union of the ranks' batches at any `c` is the single-process batch (what makes DDP with W
processes at B/W per process equal to one process at B). This is DistributedSampler's idea, with an explicit
position instead of `set_epoch`, so DataLoader prefetching never desynchronises what is saved.
"""

from __future__ import annotations

from collections.abc import Iterator

import torch
from torch.utils.data import Sampler


class ResumableBatchSampler(Sampler[list[int]]):
    """Yields this rank's index lists for global micro-batches `start, start+1, ...` (endless)."""

    def __init__(
        self, num_samples: int, batch_size: int, *, seed: int, start: int = 0, rank: int = 0, world_size: int = 1
    ) -> None:
        if num_samples < 1:
            raise ValueError("the dataset is empty: nothing to sample")
        if batch_size < 1 or batch_size % world_size != 0:
            raise ValueError(
                f"batch_size {batch_size} must be >= 1 and divisible by the number of processes ({world_size}); "
                "pick a batch size that is a multiple of --nproc"
            )
        if not 0 <= rank < world_size:
            raise ValueError(f"rank {rank} outside [0, {world_size})")
        self.num_samples, self.batch_size, self.seed = num_samples, batch_size, seed
        self.start, self.rank, self.world_size = start, rank, world_size
        self._cache: tuple[int, torch.Tensor] | None = None

    def _epoch(self, epoch: int) -> torch.Tensor:
        if self._cache is None or self._cache[0] != epoch:
            gen = torch.Generator().manual_seed(self.seed + epoch)
            self._cache = (epoch, torch.randperm(self.num_samples, generator=gen))
        return self._cache[1]

    def global_batch(self, counter: int) -> list[int]:
        """All indices of global micro-batch `counter` (every rank's part, in rank order)."""
        out = []
        for pos in range(counter * self.batch_size, (counter + 1) * self.batch_size):
            epoch, offset = divmod(pos, self.num_samples)
            out.append(int(self._epoch(epoch)[offset]))
        return out

    def batch(self, counter: int) -> list[int]:
        """This rank's share of global micro-batch `counter`."""
        per_rank = self.batch_size // self.world_size
        return self.global_batch(counter)[self.rank * per_rank : (self.rank + 1) * per_rank]

    def __iter__(self) -> Iterator[list[int]]:
        counter = self.start
        while True:
            yield self.batch(counter)
            counter += 1

    def __len__(self) -> int:
        # endless by design; DataLoader only needs len() for progress estimates, which the loop does not use
        return 2**62
