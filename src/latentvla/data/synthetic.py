"""Synthetic episodes in the docs/design.md "episode" format, for tests and smoke runs (no simulator needed).

A colored square (the "block", held by an invisible hand) slides from a random start to a random goal (a green
cross) in image coordinates. Two tasks differ by block color and instruction, so a policy must read the
instruction or the image. Everything is consistent the way collected data is:

- `observation.state` = (x, y, z, gripper): x, y in [0, 1] image coordinates (x right, y down), z constant 0.5
  (a constant dimension on purpose: normalizers must handle it), gripper opening 1 open / 0 closed.
- `action` = (dx, dy, dz, grip) with xyz displacement / MAX_STEP in [-1, 1] so that
  state[t+1, :3] = state[t, :3] + MAX_STEP * action[t, :3], and grip -1 open / +1 close (Meta-World's sign).
- CoT columns follow LaRA's Stage-I annotation: segment approach -> transport -> release, a subtask naming the
  block, the block's normalized xyxy box, and a "globally ..., locally ..." motion sentence.

`layout="libero"` writes the same motion in the layout of LeRobot's LIBERO datasets (HuggingFaceVLA/libero):
cameras `image` + `image2`, 8-D `observation.state` (end-effector xyz, axis-angle 3, two finger joints
+gap/2 and -gap/2 with an 8 cm open gap), 7-D `action` (xyz, rotation 3 = 0, gripper -1 open / +1 close),
robot_type "panda", 20 fps, LIBERO-object instructions, no privileged columns (the released datasets have
none). It is what the LIBERO train -> eval test path trains on, since LIBERO demonstrations cannot be
downloaded here.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from latentvla.constants import (
    ACTION,
    COT_BBOX,
    COT_BBOX_VISIBLE,
    COT_REASONING,
    COT_SEGMENT,
    COT_SUBTASK,
    COT_TEXT,
    DEFAULT_CAMERA,
    OBS_IMAGES,
    OBS_STATE,
    PRIV_CONTACT,
    PRIV_EE_POS,
    PRIV_GOAL_POS,
    PRIV_GRIPPER,
    PRIV_OBJECT_POS,
    TASK,
)
from latentvla.data.cot import format_cot

FPS = 10
MAX_STEP = 0.05  # largest per-frame displacement (image fraction) = action 1.0
HALF_SIZE = 0.08  # block half side, image fraction
Z = 0.5
# (instruction, object noun, RGB, task name): two tasks so conditioning on language matters.
TASKS = (
    ("push the red block to the goal", "red block", (220, 40, 40), "synthetic-red"),
    ("move the blue block to the goal", "blue block", (40, 90, 230), "synthetic-blue"),
)
_DEAD_ZONE = 0.01
# info.json `names` of the default layout's 4-D state and action (the libero layout's have none, like LeRobot's
# LIBERO sets without per-dimension names in our writer)
FEATURE_NAMES = {OBS_STATE: ("hand_x", "hand_y", "hand_z", "gripper"), ACTION: ("dx", "dy", "dz", "gripper")}
LIBERO_TASKS = (
    (
        "pick up the alphabet soup and place it in the basket",
        "libero_object/pick_up_the_alphabet_soup_and_place_it_in_the_basket",
    ),
    (
        "pick up the cream cheese and place it in the basket",
        "libero_object/pick_up_the_cream_cheese_and_place_it_in_the_basket",
    ),
)
LIBERO_FPS = 20
LAYOUTS = ("default", "libero")


def _direction(delta: np.ndarray) -> str:
    """A motion phrase for an image-plane displacement (x right, y down), with a dead zone."""
    words = []
    if abs(delta[1]) > _DEAD_ZONE:
        words.append("down" if delta[1] > 0 else "up")
    if abs(delta[0]) > _DEAD_ZONE:
        words.append("right" if delta[0] > 0 else "left")
    return f"move {' and '.join(words)}" if words else "hold still"


def _trajectory(rng: np.random.Generator, length: int) -> tuple[np.ndarray, np.ndarray]:
    """Block centers (T, 2) moving start -> goal over the first ~3/4 of the episode, then resting."""
    start = rng.uniform(0.2, 0.8, size=2)
    goal = rng.uniform(0.2, 0.8, size=2)
    while np.linalg.norm(goal - start) < 0.25:
        goal = rng.uniform(0.2, 0.8, size=2)
    moving = max(1, (3 * length) // 4)
    pos = np.empty((length, 2))
    pos[0] = start
    for t in range(length - 1):
        step = (goal - pos[t]) / max(1, moving - t) if t < moving else np.zeros(2)
        pos[t + 1] = pos[t] + np.clip(step, -MAX_STEP, MAX_STEP)
    return pos, goal


def _render(
    pos: np.ndarray, goal: np.ndarray, color: tuple[int, int, int], size: int
) -> tuple[np.ndarray, np.ndarray]:
    """Images (T, size, size, 3) uint8 and the block's normalized xyxy boxes (T, 4)."""
    frames = np.empty((len(pos), size, size, 3), dtype=np.uint8)
    background = np.linspace(25, 60, size, dtype=np.float32)[:, None, None] * np.ones((1, size, 3), np.float32)
    frames[:] = background.astype(np.uint8)
    gx, gy = (goal * size).astype(int).clip(1, size - 2)
    frames[:, gy - 1 : gy + 2, gx] = (40, 200, 40)
    frames[:, gy, gx - 1 : gx + 2] = (40, 200, 40)
    half = max(1, round(HALF_SIZE * size))
    boxes = np.empty((len(pos), 4), dtype=np.float32)
    for t, (x, y) in enumerate(pos):
        cx, cy = int(round(x * size)), int(round(y * size))
        x1, y1, x2, y2 = max(cx - half, 0), max(cy - half, 0), min(cx + half, size), min(cy + half, size)
        frames[t, y1:y2, x1:x2] = color
        boxes[t] = np.round(np.array([x1, y1, x2, y2], dtype=np.float32) / size, 4)
    return frames, boxes


def _cot(pos, goal, boxes, gripper, noun) -> dict:
    """Per-frame CoT columns (LaRA §3.2 Stage-I format, data/cot.py)."""
    length = len(pos)
    grasp, moving = max(1, length // 4), max(1, (3 * length) // 4)
    columns = {COT_SEGMENT: [], COT_SUBTASK: [], COT_REASONING: [], COT_TEXT: []}
    for t in range(length):
        segment = "approach" if t < grasp else "transport" if t < moving else "release"
        subtask = {
            "approach": f"move toward the {noun}",
            "transport": f"carry the {noun} to the goal",
            "release": f"release the {noun}",
        }[segment]
        local = pos[min(t + 1, length - 1)] - pos[t]
        hand = "open" if gripper[t] > 0.5 else "closed"
        reasoning = f"globally {_direction(goal - pos[t])}, locally {_direction(local)}, gripper {hand}"
        columns[COT_SEGMENT].append(segment)
        columns[COT_SUBTASK].append(subtask)
        columns[COT_REASONING].append(reasoning)
        columns[COT_TEXT].append(format_cot(subtask, boxes[t], True, reasoning))
    columns[COT_BBOX] = boxes
    columns[COT_BBOX_VISIBLE] = np.ones(length, dtype=bool)
    return columns


def synthetic_episode(
    index: int, length: int, image_size: int = 32, seed: int = 0, with_cot: bool = True, cameras=(DEFAULT_CAMERA,)
) -> tuple[dict, dict]:
    """One synthetic episode and its writer meta (`success`, `task_name`, `episode_seed`)."""
    rng = np.random.default_rng([seed, index])
    instruction, noun, color, task_name = TASKS[index % len(TASKS)]
    pos, goal = _trajectory(rng, length)
    grasp, moving = max(1, length // 4), max(1, (3 * length) // 4)
    t = np.arange(length)
    gripper = np.where((t > grasp) & (t <= moving), 0.0, 1.0)
    grip_cmd = np.where((t >= grasp) & (t < moving), 1.0, -1.0)
    delta = np.diff(pos, axis=0, append=pos[-1:])  # last frame: no motion
    z = np.full((length, 1), Z)
    action = np.concatenate([delta / MAX_STEP, np.zeros((length, 1)), grip_cmd[:, None]], axis=1)
    frames, boxes = _render(pos, goal, color, image_size)
    episode = {
        OBS_STATE: np.concatenate([pos, z, gripper[:, None]], axis=1).astype(np.float32),
        ACTION: np.clip(action, -1, 1).astype(np.float32),
        "timestamp": (t / FPS).astype(np.float32),
        TASK: instruction,
        PRIV_EE_POS: np.concatenate([pos, z], axis=1).astype(np.float32),
        PRIV_GRIPPER: gripper[:, None].astype(np.float32),
        PRIV_OBJECT_POS: np.concatenate([pos, z], axis=1).astype(np.float32),
        PRIV_GOAL_POS: np.tile(np.array([*goal, Z], dtype=np.float32), (length, 1)),
        PRIV_CONTACT: (1.0 - gripper[:, None]).astype(np.float32),
    }
    for i, cam in enumerate(cameras):  # extra cameras: a mirrored view, so they differ from the primary
        episode[f"{OBS_IMAGES}.{cam}"] = frames if i == 0 else np.ascontiguousarray(frames[:, :, ::-1])
    if with_cot:
        episode |= _cot(pos, goal, boxes, gripper, noun)
    meta = {"success": True, "task_name": task_name, "episode_seed": int(seed * 100_003 + index)}
    return episode, meta


def to_libero_layout(episode: dict, meta: dict, index: int) -> tuple[dict, dict]:
    """The same episode in LeRobot's LIBERO layout (see the module docstring)."""
    length = len(episode[ACTION])
    state, action = episode[OBS_STATE], episode[ACTION]
    half_gap = 0.04 * state[:, 3:4]
    rotation = np.tile(np.array([np.pi, 0.0, 0.0], np.float32), (length, 1))  # gripper pointing down
    instruction, task_name = LIBERO_TASKS[index % len(LIBERO_TASKS)]
    out = {
        OBS_STATE: np.concatenate([state[:, :3], rotation, half_gap, -half_gap], axis=1).astype(np.float32),
        ACTION: np.concatenate([action[:, :3], np.zeros((length, 3)), action[:, 3:]], axis=1).astype(np.float32),
        "timestamp": (np.arange(length) / LIBERO_FPS).astype(np.float32),
        TASK: instruction,
    }
    cams = sorted(k for k in episode if k.startswith(f"{OBS_IMAGES}."))
    out[f"{OBS_IMAGES}.image"] = episode[cams[0]]
    out[f"{OBS_IMAGES}.image2"] = np.ascontiguousarray(episode[cams[0]][:, ::-1])  # a second, different view
    return out, {**meta, "task_name": task_name}


def synthetic_episodes(
    num_episodes: int,
    length: int,
    image_size: int = 32,
    seed: int = 0,
    with_cot: bool = True,
    cameras: tuple[str, ...] = (DEFAULT_CAMERA,),
) -> list[dict]:
    """`num_episodes` episodes of `length` frames (tasks alternate), deterministic in `seed`."""
    if num_episodes < 1 or length < 2 or image_size < 8:
        raise ValueError(
            f"Need num_episodes >= 1, length >= 2, image_size >= 8; got {num_episodes}, {length}, {image_size}."
        )
    return [synthetic_episode(i, length, image_size, seed, with_cot, cameras)[0] for i in range(num_episodes)]


def write_synthetic_dataset(
    root: str | Path,
    num_episodes: int = 4,
    length: int = 20,
    image_size: int = 32,
    seed: int = 0,
    with_cot: bool = True,
    cameras: tuple[str, ...] = (DEFAULT_CAMERA,),
    overwrite: bool = True,
    layout: str = "default",
    video: bool = False,
) -> Path:
    """Write a synthetic LeRobot v3.0 dataset to `root` and return its path (`layout`: "default" or "libero";
    cameras as AV1 video with `video=True`)."""
    from latentvla.data.lerobot import DatasetWriter

    if layout not in LAYOUTS:
        raise ValueError(f"layout must be one of {LAYOUTS}, got {layout!r}")
    synthetic_episodes(1, length, image_size)  # validates the arguments before touching the disk
    libero = layout == "libero"
    writer = DatasetWriter(
        root,
        fps=LIBERO_FPS if libero else FPS,
        robot_type="panda" if libero else "synthetic",
        names=None if libero else FEATURE_NAMES,
        overwrite=overwrite,
        video=video,
    )
    for i in range(num_episodes):
        episode, meta = synthetic_episode(i, length, image_size, seed, with_cot and not libero, cameras)
        if libero:
            episode, meta = to_libero_layout(episode, meta, i)
        writer.add_episode(episode, key=f"synthetic/{i:04d}", meta=meta)
    return writer.finalize({"expert_success_rate": 1.0, "source": "synthetic"})
