"""Rollout workers on Ray (the optional [ray] extra): the environments of `latentvla rl --ray-workers N`.

Each of the N Ray actors holds an `EnvGroup` (rl/rollout.py) for a share of the slots and runs whole chunks, so
the learner process makes one batched policy call per decision and the simulators step in parallel. Nothing here
is cluster code: `ray.init()` starts a local Ray, or joins the cluster named by RAY_ADDRESS (`ray start --head` on
one node, `ray start --address=HEAD:6379` on the others; every node needs latentvla and the simulator installed).
Results are identical to the in-process backend (tests/test_rl.py), since every episode's environment is seeded
by its reset.
"""

from __future__ import annotations

import os
from typing import Any

import numpy as np

from latentvla.rl.env_group import ChunkResult, EnvGroup

INSTALL = 'Ray is not installed: pip install -e ".[ray]" (or drop --ray-workers)'


def _ray():
    try:
        import ray
    except ImportError as e:
        raise ImportError(INSTALL) from e
    if not ray.is_initialized():
        # one CPU per worker for a local Ray; RAY_ADDRESS (if set) joins an existing cluster instead
        ray.init(address=os.environ.get("RAY_ADDRESS"), include_dashboard=False, log_to_driver=False)
    return ray


class RayEnvs:
    """The slots spread round-robin over `workers` Ray actors, each an `EnvGroup`."""

    def __init__(self, sim_ref: str, specs: dict[int, tuple[str, int]], workers: int, **env_kw: Any) -> None:
        ray = _ray()
        self._ray = ray
        workers = min(workers, len(specs))
        actor_cls = ray.remote(num_cpus=1)(EnvGroup)
        self.owner = {slot: slot % workers for slot in specs}
        shares = [{s: specs[s] for s in specs if self.owner[s] == w} for w in range(workers)]
        self.workers = [actor_cls.remote(sim_ref, share, **env_kw) for share in shares]

    def reset_many(self, jobs: list[tuple[int, int, str, int]]) -> list[dict]:
        return self._ray.get([self.workers[self.owner[j[0]]].reset.remote(*j) for j in jobs])

    def run_chunks(self, calls: list[tuple[int, np.ndarray, int]]) -> list[ChunkResult]:
        return self._ray.get([self.workers[self.owner[c[0]]].run_chunk.remote(*c) for c in calls])

    def close(self) -> None:
        try:
            self._ray.get([w.close.remote() for w in self.workers])
        finally:
            for w in self.workers:
                self._ray.kill(w)
