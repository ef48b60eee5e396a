"""The episode loop, openpi-client style: an `Environment`, an `Agent` and `Subscriber`s.

    env.reset(); agent.reset()
    until env.is_done() or max_steps:  obs = env.observe(); out = agent.get_action(obs); env.apply_action(out)

Simulators and policies only meet through these two protocols, so the same loop runs Meta-World with a local
`Policy`, a scripted expert, or a websocket client. An agent returns a dict (openpi's convention): `"action"`
(A,), and `"chunk": True` on the steps where it ran inference (the rest are pops from its action queue), with
the recurrent depth used as `"iterations"` when it has one. Latency is timed here, around those calls only,
so it is the per-chunk inference cost the robot waits for (RD-VLA §IV-D reports the same quantity).
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any, Protocol

import numpy as np


class Environment(Protocol):
    success: bool  # True once the task has been solved in the current episode

    def reset(self) -> None: ...
    def observe(self) -> dict: ...
    def apply_action(self, action: dict) -> None: ...
    def is_done(self) -> bool: ...


class Agent(Protocol):
    def get_action(self, observation: dict) -> dict: ...  # {"action": (A,), "chunk": bool, "iterations": int}
    def reset(self) -> None: ...


class Subscriber(Protocol):
    def on_episode_start(self) -> None: ...
    def on_step(self, observation: dict, action: dict) -> None: ...
    def on_episode_end(self) -> None: ...


@dataclass
class EpisodeResult:
    """What one rollout produced; `iterations` and `latencies_ms` have one entry per inference call."""

    success: bool
    length: int
    iterations: list[int] = field(default_factory=list)
    latencies_ms: list[float] = field(default_factory=list)


class FrameRecorder:
    """Keeps the frames of one camera (uint8 HWC) for a video of the episode."""

    def __init__(self, image_key: str) -> None:
        self.image_key = image_key
        self.frames: list[np.ndarray] = []

    def on_episode_start(self) -> None:
        self.frames = []

    def on_step(self, observation: dict, action: dict) -> None:
        self.frames.append(np.asarray(observation[self.image_key]).copy())

    def on_episode_end(self) -> None:
        pass


class ActionRecorder:
    """Keeps every executed action (for determinism checks and debugging)."""

    def __init__(self) -> None:
        self.actions: list[np.ndarray] = []

    def on_episode_start(self) -> None:
        self.actions = []

    def on_step(self, observation: dict, action: dict) -> None:
        self.actions.append(np.asarray(action["action"], dtype=np.float32).copy())

    def on_episode_end(self) -> None:
        pass


def run_episode(
    env: Environment, agent: Agent, max_steps: int, subscribers: tuple[Any, ...] | list[Any] = ()
) -> EpisodeResult:
    """Roll out one episode of at most `max_steps` control steps; stops early when `env.is_done()`."""
    if max_steps < 1:
        raise ValueError(f"max_steps must be >= 1, got {max_steps}")
    env.reset()
    agent.reset()
    for sub in subscribers:
        sub.on_episode_start()
    result = EpisodeResult(success=False, length=0)
    while result.length < max_steps and not env.is_done():
        obs = env.observe()
        start = time.perf_counter()
        out = agent.get_action(obs)
        elapsed_ms = (time.perf_counter() - start) * 1e3
        # An agent whose inference ran elsewhere (eval/pool.py: a batched call in the policy process) reports
        # that call's own time, not the round trip it waited for.
        elapsed_ms = out.get("latency_ms", elapsed_ms)
        if out.get("chunk", False):
            result.latencies_ms.append(elapsed_ms)
            if out.get("iterations") is not None:
                result.iterations.append(int(out["iterations"]))
        for sub in subscribers:
            sub.on_step(obs, out)
        env.apply_action(out)
        result.length += 1
    result.success = bool(env.success)
    for sub in subscribers:
        sub.on_episode_end()
    return result
