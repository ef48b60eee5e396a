"""Turn a chunk-predicting policy into a one-action-per-step policy (openpi `ActionChunkBroker`, no dm-tree).

The server returns `actions` of shape (H, A); a robot loop wants one (A,) action per control step. The broker
queries the policy once, then hands out rows 0, 1, ..., action_horizon - 1 of every array in the reply (other
fields, e.g. timings or `cot_text`, pass through) and queries again when the chunk is used up. Executing fewer
than H actions per query (`action_horizon < H`) is openpi's "replan_steps" (LIBERO uses 5 of 10).
"""

from __future__ import annotations

from typing import Any, Protocol

import numpy as np


class InferencePolicy(Protocol):
    def infer(self, obs: dict) -> dict: ...


class ActionChunkBroker:
    """`infer(obs)` returns the reply for the current step, with each array sliced to its step row."""

    def __init__(self, client: InferencePolicy, action_horizon: int):
        if action_horizon < 1:
            raise ValueError(f"action_horizon must be >= 1, got {action_horizon}.")
        self.client = client
        self.action_horizon = action_horizon
        self._chunk: dict | None = None
        self._step = 0
        self.num_queries = 0

    def infer(self, obs: dict) -> dict:
        if self._chunk is None:
            self._chunk = self.client.infer(obs)
            self.num_queries += 1
            self._step = 0
            rows = len(self._chunk["actions"])
            if rows < self.action_horizon:
                raise ValueError(f"The policy returned {rows} actions but action_horizon={self.action_horizon}.")
        out = {k: _row(v, self._step) for k, v in self._chunk.items()}
        self._step += 1
        if self._step >= self.action_horizon:
            self._chunk = None
        return out

    def action(self, obs: dict) -> np.ndarray:
        """Just this step's (A,) action."""
        return self.infer(obs)["actions"]

    def reset(self) -> None:
        """Drop the rest of the current chunk (call at episode start)."""
        self._chunk = None
        self._step = 0
        if hasattr(self.client, "reset"):
            self.client.reset()


def _row(value: Any, step: int) -> Any:
    if isinstance(value, np.ndarray) and value.ndim >= 1:
        return value[step]
    if isinstance(value, dict):
        return {k: _row(v, step) for k, v in value.items()}
    return value
