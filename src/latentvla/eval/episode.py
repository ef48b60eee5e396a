"""One evaluation episode in a simulator, shared by the in-process runner (eval/evaluate.py) and the env worker
processes (eval/pool.py): its torch seed, the episode wrapper that runs the protocol's no-op warm-up and the
gripper post-processing, and the GIF / MP4 writer for its frames."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from latentvla.envs.base import postprocess_gripper

VIDEO_FPS = 20
MAX_ENVS_PER_WORKER = 1  # jobs arrive task by task; a LIBERO env holds ~1 GB


def episode_torch_seed(seed: int, task_id: int, episode: int) -> int:
    """The torch seed of one episode: independent of worker and order (see module docstring)."""
    return int(np.random.SeedSequence([seed, task_id, episode, 0x5EED]).generate_state(1)[0])


class SimEpisode:
    """`runtime.Environment` over a `SimEnv`: one fixed evaluation episode under a protocol.

    After `reset`, the protocol's `warmup_steps` no-op actions run (LIBERO: 10 x [0,0,0,0,0,0,-1], so objects
    settle before the policy acts; not counted in the policy's steps). Every policy action passes through the
    gripper post-processing before it reaches the simulator.
    """

    def __init__(self, env: Any, episode: int, seed: int, protocol: Any, gripper: str) -> None:
        self.env, self.episode, self.seed, self.protocol, self.gripper = env, episode, seed, protocol, gripper
        self.success, self._done, self._obs = False, False, None

    def reset(self) -> None:
        self._obs, _ = self.env.reset(episode=self.episode, split="eval", seed=self.seed)
        self.success, self._done = False, False
        for _ in range(self.protocol.warmup_steps):
            self._obs, _, _, _, _ = self.env.step(np.asarray(self.protocol.warmup_action, dtype=np.float32))

    def observe(self) -> dict:
        return self._obs

    def apply_action(self, action: dict) -> None:
        act = postprocess_gripper(action["action"], self.gripper)
        self._obs, _, terminated, truncated, info = self.env.step(act)
        self.success = self.success or bool(info["success"])
        self._done = bool(terminated or truncated)

    def is_done(self) -> bool:
        return self._done


def write_video(frames: list[np.ndarray], stem: str | Path, fps: int = VIDEO_FPS) -> list[str]:
    """GIF via Pillow (always) and MP4 via PyAV when `av` is importable; returns the written paths."""
    from PIL import Image

    stem = Path(stem)
    stem.parent.mkdir(parents=True, exist_ok=True)
    images = [Image.fromarray(np.asarray(f, dtype=np.uint8)) for f in frames]
    gif = stem.with_suffix(".gif")
    images[0].save(gif, save_all=True, append_images=images[1:], duration=int(1000 / fps), loop=0)
    paths = [str(gif)]
    try:
        import av
    except ImportError:
        return paths
    mp4 = stem.with_suffix(".mp4")
    with av.open(str(mp4), "w") as container:
        stream = container.add_stream("libx264", rate=fps)
        stream.height, stream.width = frames[0].shape[:2]
        stream.pix_fmt = "yuv420p"
        for f in frames:
            container.mux(stream.encode(av.VideoFrame.from_ndarray(np.ascontiguousarray(f), format="rgb24")))
        container.mux(stream.encode())
    return paths + [str(mp4)]


# --------------------------------------------------------------------------------------------- reporting
