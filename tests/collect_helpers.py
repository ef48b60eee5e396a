"""A tiny deterministic episode in the Meta-World layout, standing in for an expert rollout in collect tests."""

from __future__ import annotations

import numpy as np

from latentvla import constants as K


def fake_episode(task: str, episode: int, *key: int) -> dict:
    """3 or 4 frames of random state, action and an 8x8 corner4 image, seeded by (task, episode, *key)."""
    rng = np.random.default_rng([len(task), episode, *key])
    length = 3 + episode % 2
    return {
        K.OBS_STATE: rng.normal(size=(length, 4)).astype(np.float32),
        K.ACTION: rng.uniform(-1, 1, size=(length, 4)).astype(np.float32),
        f"{K.OBS_IMAGES}.corner4": rng.integers(0, 255, size=(length, 8, 8, 3), dtype=np.uint8),
        K.TASK: f"do {task}",
    }
