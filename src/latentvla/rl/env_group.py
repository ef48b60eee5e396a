"""The environments of some rollout slots, stepped in this process: the local backend of rl/rollout.py and what
each Ray actor of rl/ray_workers.py holds. `run_chunk` runs one action chunk and says how it ended."""

from __future__ import annotations

import importlib
from dataclasses import dataclass
from typing import Any

import numpy as np


@dataclass
class ChunkResult:
    """What running one chunk in one environment returns (also across a Ray worker boundary)."""

    obs: dict
    dense: float  # sum of the simulator's rewards over the steps run
    success: bool  # the task succeeded during this chunk
    terminated: bool  # ended by success / the simulator (no bootstrap)
    done: bool  # the episode is over (terminated, or cut by the step limit)
    steps: int


class EnvGroup:
    """The environments of some slots, stepped in this process (a Ray worker holds one, rl/ray_workers.py).

    `sim`: a `Simulator`, or its registry entry "module:attribute" (`envs/registry.py`), which a worker process
    imports itself."""

    def __init__(
        self,
        sim: Any,
        specs: dict[int, tuple[str, int]],
        cameras: tuple[str, ...],
        image_size: int,
        warmup_steps: int,
        warmup_action: np.ndarray,
    ) -> None:
        if isinstance(sim, str):
            module, _, attr = sim.partition(":")
            sim = getattr(importlib.import_module(module), attr)
        self.warmup_steps, self.warmup_action = warmup_steps, warmup_action
        self.max_steps = {s: m for s, (_, m) in specs.items()}
        self.envs = {
            s: sim.make(t, cameras=cameras, image_size=image_size, max_steps=m + warmup_steps)
            for s, (t, m) in specs.items()
        }

    def reset(self, slot: int, episode: int, split: str, seed: int) -> dict:
        """Reset, then the protocol's no-op warm-up (what `latentvla eval` does after every reset)."""
        obs, _ = self.envs[slot].reset(episode=episode, split=split, seed=seed)
        for _ in range(self.warmup_steps):
            obs, *_ = self.envs[slot].step(self.warmup_action)
        return obs

    def run_chunk(self, slot: int, actions: np.ndarray, steps_before: int) -> ChunkResult:
        """Run the (execute, A) actions until the chunk ends or the episode does (success, simulator, step cap)."""
        env, dense, n = self.envs[slot], 0.0, 0
        for a in actions:
            obs, rew, term, trunc, info = env.step(a)
            n, dense = n + 1, dense + float(rew)
            success = bool(info.get("success", False))
            if success or term or trunc or steps_before + n >= self.max_steps[slot]:
                return ChunkResult(obs, dense, success, bool(term or success), True, n)
        return ChunkResult(obs, dense, False, False, False, n)

    def close(self) -> None:
        for env in self.envs.values():
            env.close()
