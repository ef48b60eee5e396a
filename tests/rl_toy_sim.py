"""A toy simulator registered through the simulator protocol (envs/base.py) for the RL tests: a 1-D reach.

The agent (a red column) moves along a line by x += 0.1 * clip(a, -1, 1); the goal (a green column) sits at
g ~ U(0.25, 0.75); success when |x - g| < 0.08 (the episode then terminates), else truncated at the protocol's
30 steps. The state is [x]; the goal is only visible in the 32 x 32 image. Episode i of a split starts from a
state seeded by (split, i, seed), as the protocol requires.
"""

from __future__ import annotations

import numpy as np

from latentvla.constants import OBS_IMAGES, OBS_STATE, TASK
from latentvla.envs.base import EvalProtocol, Simulator
from latentvla.registry import did_you_mean

NAME = "reach1d"
CAMERA = "corner4"
INSTRUCTION = "reach the green mark"


class ReachEnv:
    instruction = INSTRUCTION
    fps = 10

    def __init__(self, image_size: int, max_steps: int) -> None:
        self.size, self.max_steps = image_size, max_steps
        self.x = self.goal = 0.0
        self.steps = 0

    def _col(self, v: float) -> int:
        return int(round((v + 1.0) / 2.0 * (self.size - 1)))

    def _obs(self) -> dict:
        img = np.zeros((self.size, self.size, 3), np.uint8)
        img[: self.size // 2, self._col(self.goal), 1] = 255
        img[self.size // 2 :, self._col(self.x), 0] = 255
        return {f"{OBS_IMAGES}.{CAMERA}": img, OBS_STATE: np.array([self.x], np.float32), TASK: INSTRUCTION}

    def reset(self, *, episode: int, split: str = "train", seed: int = 0):
        rng = np.random.default_rng([0 if split == "train" else 1, episode, seed])
        self.goal, self.x, self.steps = float(rng.uniform(0.25, 0.75)), float(rng.uniform(-0.2, 0.0)), 0
        return self._obs(), {"episode": episode, "split": split, "success": False}

    def step(self, action):
        a = float(np.clip(np.asarray(action, np.float32).reshape(-1)[0], -1.0, 1.0))
        self.x = float(np.clip(self.x + 0.1 * a, -1.0, 1.0))
        self.steps += 1
        success = abs(self.x - self.goal) < 0.08
        info = {"success": success}
        return self._obs(), -abs(self.x - self.goal), success, self.steps >= self.max_steps, info

    def close(self) -> None:
        pass


class ReachSimulator(Simulator):
    name, robot_type, fps, state_dim, action_dim = NAME, "toy", 10, 1, 1
    cameras = default_cameras = (CAMERA,)

    @property
    def protocols(self):
        return {
            "default": EvalProtocol("default", episodes=10, seed=0, max_steps=30, init="seeded goal and start")
        }

    def resolve_tasks(self, spec):
        names = spec.split(",") if isinstance(spec, str) else list(spec)
        for n in names:
            if n != NAME:
                raise ValueError(did_you_mean(n, [NAME], f"{NAME} task"))
        return [NAME]

    def task_id(self, task: str) -> int:
        return 0

    def instruction(self, task: str) -> str:
        return INSTRUCTION

    def require(self) -> None:
        return None

    def make(self, task, *, cameras=None, image_size=64, max_steps=None, render=True):
        self.validate(cameras=tuple(cameras or self.default_cameras), image_size=image_size, max_steps=max_steps)
        return ReachEnv(image_size, max_steps or 30)


SIMULATOR = ReachSimulator()


def register(monkeypatch) -> None:
    """Register the toy simulator under `reach1d` for one test (what one line in envs/registry.py does)."""
    from latentvla.envs import registry

    monkeypatch.setitem(registry.SIMULATORS, NAME, "rl_toy_sim:SIMULATOR")
    registry.get_simulator.cache_clear()


def start_checkpoint(path, preset: str = "bc", *overrides: str, seed: int = 0):
    """An untrained (poor-init) `preset` policy sized for the toy simulator, saved as an ordinary checkpoint."""
    from dataclasses import replace

    import torch

    from latentvla.config import apply_overrides, get_preset
    from latentvla.constants import ACTION
    from latentvla.data.stats import Normalizer
    from latentvla.policy import Policy

    cfg = apply_overrides(get_preset(preset, "micro"), ["policy.image_size=32", *overrides])
    pcfg = replace(cfg.policy, state_dim=1, action_dim=1)
    one = lambda v: [float(v)]  # noqa: E731
    stats = {
        OBS_STATE: {"mean": one(0.2), "std": one(0.4), "min": one(-1), "max": one(1)},
        ACTION: {"mean": one(0), "std": one(1), "min": one(-1), "max": one(1)},
    }
    torch.manual_seed(seed)
    policy = Policy(pcfg, Normalizer(stats))
    policy.save_pretrained(path)
    return policy
