"""The simulator protocol: what collection, annotation, evaluation, the demo, the server and the robot loop know
about a simulator. Each simulator is one adapter file in `envs/` plus one line in `envs/registry.py`.

Two objects per simulator:

- a `Simulator` (one instance, importable without the simulator package): task names and suites, instruction
  and annotation table per task, cameras, state/action sizes, control rate, the named evaluation protocols
  and the client key map of the policy server; `make(...)` builds an environment (and is the only place the
  simulator package is imported);
- a `SimEnv` per (task, cameras, image size): gymnasium-style `reset(episode=i, split=s, seed=k)` and
  `step(action)`, observations under LeRobot keys (`observation.images.<camera>`, `observation.state`,
  `task`), `info["success"]`, and optionally `privileged()` (simulator ground truth for the CoT annotator,
  constants.PRIV_*) and `expert_action()` (a scripted expert for `collect`). An observation may be a
  `envs.lazy.LazyObservation` (LIBERO): a read-only mapping whose images render when first read, so a policy
  that executes a chunk open-loop costs one render per chunk; read it before the next `step`.

`reset(episode=i, ...)` is deterministic: episode i of a task always starts from the same state (Meta-World: a
seeded random vector per split; LIBERO: the benchmark's init state i for "eval", a fresh seeded placement for
"train").

An `EvalProtocol` fixes everything that makes two evaluations comparable (episodes per task, seed, max steps
per task group, no-op warm-up, gripper post-processing, how much of each chunk runs before re-querying) and is
written into `eval_info.json`, so a number always says how it was measured.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from typing import Any, Protocol, runtime_checkable

import numpy as np

from latentvla.registry import did_you_mean, lookup

GRIPPER_MODES = ("none", "binarize", "openvla")
SPLITS = ("train", "eval")


@runtime_checkable
class SimEnv(Protocol):
    """One task of a simulator with LeRobot observations (see the module docstring)."""

    instruction: str  # the natural-language command (the dataset's `task` column)
    fps: int  # control rate, frames per second of a recorded dataset

    def reset(self, *, episode: int, split: str = "train", seed: int = 0) -> tuple[dict, dict]: ...
    def step(self, action: np.ndarray) -> tuple[dict, float, bool, bool, dict]: ...
    def close(self) -> None: ...


@dataclass(frozen=True)
class TaskSpec:
    """Annotation table entry of a task: LaRA-VLA's semantic anchor (§3.2) and the segment vocabulary.

    `target`: the object the subtask text names and the box frames; `motion`: "grasp" (approach / grasp /
    transport / release / retract) or "push" (approach / contact / push / retract); `box_anchor`: "object" or
    "goal" (reach-style tasks, where the thing to localise is the goal point).
    """

    instruction: str
    target: str
    motion: str
    box_anchor: str = "object"
    goal: str = "goal"  # what the target is carried to ("basket", "plate"), named by the subtask text

    def __post_init__(self) -> None:
        if self.motion not in ("grasp", "push"):
            raise ValueError(f"motion must be one of ('grasp', 'push'), got {self.motion!r}")
        if self.box_anchor not in ("object", "goal"):
            raise ValueError(f"box_anchor must be one of ('object', 'goal'), got {self.box_anchor!r}")


@dataclass(frozen=True)
class StateLayout:
    """Where the end effector and the gripper sit in `observation.state` (what the CoT annotator reads).

    opening = clip(sum(sign_i * state[gripper_i]) * gripper_scale, 0, 1): 1 = fully open, 0 = closed.
    Meta-World: state[3] is already the opening in [0, 1]. LIBERO: the two Panda finger joints (+q, -q), whose
    difference is the finger gap in metres (0.08 m fully open).

    `rfu` says how the world frame maps onto the annotator's motion words (right, forward = away from the robot
    base, up): one (world axis, sign) per word. Meta-World: +x right, +y forward, +z up. LIBERO (robosuite):
    the robot faces +x, so +x forward, -y right, +z up.
    """

    ee: tuple[int, int] = (0, 3)  # [start, stop) of the world-frame end-effector xyz (metres)
    gripper: tuple[int, ...] = (3,)
    gripper_signs: tuple[float, ...] = (1.0,)
    gripper_scale: float = 1.0
    rfu: tuple[tuple[int, float], ...] = ((0, 1.0), (1, 1.0), (2, 1.0))

    def to_rfu(self, xyz: np.ndarray) -> np.ndarray:
        """World-frame positions (..., 3) -> (right, forward, up) coordinates for the motion words."""
        xyz = np.asarray(xyz, dtype=np.float64)
        return np.stack([sign * xyz[..., axis] for axis, sign in self.rfu], axis=-1)

    def __post_init__(self) -> None:
        if self.ee[1] - self.ee[0] != 3 or len(self.gripper) != len(self.gripper_signs) or not self.gripper:
            raise ValueError(f"bad StateLayout {self}: ee must span 3 dims, one sign per gripper dim")

    @property
    def min_dim(self) -> int:
        return max(self.ee[1], max(self.gripper) + 1)

    def split(self, state: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(T, S) state -> end effector (T, 3) float64, gripper opening (T,) in [0, 1]."""
        state = np.asarray(state, dtype=np.float64)
        if state.ndim != 2 or state.shape[1] < self.min_dim:
            raise ValueError(
                f"state of shape {state.shape} is too small for {self} (needs >= {self.min_dim} dims)"
            )
        opening = sum(s * state[:, g] for g, s in zip(self.gripper, self.gripper_signs)) * self.gripper_scale
        return state[:, self.ee[0] : self.ee[1]], np.clip(opening, 0.0, 1.0)


@dataclass(frozen=True)
class EvalProtocol:
    """How an evaluation is run; recorded verbatim in eval_info.json (`config.protocol`)."""

    name: str
    episodes: int  # default episodes per task
    seed: int  # default evaluation seed
    max_steps: Mapping[str, int] | int  # policy steps per episode, per task group or one number
    init: str  # how episode i starts, in words
    warmup_steps: int = 0  # no-op steps after reset before the policy acts (not counted in max_steps)
    warmup_action: tuple[float, ...] = ()
    gripper: str = "none"  # default gripper post-processing (GRIPPER_MODES)
    execute_full_chunk: bool = False  # True: run the whole chunk before re-querying (unless --execution)
    source: str = ""  # where the protocol comes from
    notes: tuple[str, ...] = field(default_factory=tuple)

    def __post_init__(self) -> None:
        if self.gripper not in GRIPPER_MODES:
            raise ValueError(did_you_mean(self.gripper, GRIPPER_MODES, "gripper post-processing"))
        if self.warmup_steps and not self.warmup_action:
            raise ValueError("EvalProtocol.warmup_steps needs a warmup_action")

    def steps_for(self, group: str) -> int:
        if isinstance(self.max_steps, int):
            return self.max_steps
        if group not in self.max_steps:
            raise ValueError(f"protocol {self.name!r} has no max steps for task group {group!r}")
        return int(self.max_steps[group])

    def to_dict(self) -> dict:
        d = asdict(self)
        d["max_steps"] = self.max_steps if isinstance(self.max_steps, int) else dict(self.max_steps)
        d["warmup_action"], d["notes"] = list(self.warmup_action), list(self.notes)
        return d


def postprocess_gripper(action: np.ndarray, mode: str) -> np.ndarray:
    """Gripper post-processing on the last action dimension (LIBERO / Meta-World: +1 closes, -1 opens).

    none      the policy's value, unchanged
    binarize  +1 if > 0 else -1: a hard open/close for policies trained on LIBERO's +-1 gripper labels
              (LaRA-VLA's evaluator thresholds its [0, 1] gripper output at 0.5 the same way)
    openvla   OpenVLA's `normalize_gripper_action(binarize=True)` then `invert_gripper_action`: the policy
              outputs the gripper in [0, 1] with 1 = open; -sign(2a - 1), so -1 open / +1 close (0 at 0.5)
    """
    if mode not in GRIPPER_MODES:
        raise ValueError(did_you_mean(mode, GRIPPER_MODES, "gripper post-processing"))
    a = np.array(action, dtype=np.float32, copy=True)
    if mode == "binarize":
        a[..., -1] = np.where(a[..., -1] > 0, 1.0, -1.0)
    elif mode == "openvla":
        a[..., -1] = -np.sign(2.0 * a[..., -1] - 1.0)
    return a


class Simulator(ABC):
    """Everything latentvla knows about one simulator; importing it must not import the simulator package."""

    name: str
    robot_type: str  # LeRobot `robot_type` of collected datasets
    fps: int
    state_dim: int
    action_dim: int
    cameras: tuple[str, ...]  # camera names accepted by `make`
    default_cameras: tuple[str, ...]
    flipped_cameras: frozenset[str] = frozenset()  # cameras whose frames are stored rotated by 180°
    bottom_up_cameras: frozenset[str] = frozenset()  # cameras rendered with rows bottom-up (before any flip)
    has_expert: bool = False  # a scripted expert exists (`collect` needs one)
    train_init: str = ""  # how `reset(split="train")` episodes start, in words (recorded by `collect`)
    default_protocol: str = "default"
    # Client key map of the policy server: openpi-style key -> LeRobot key (openpi's LIBERO example).
    client_keys: Mapping[str, str] = {}
    state_layout: StateLayout = StateLayout()
    # Per-dimension names of vector features ({"observation.state": (...), "action": (...)}), written into the
    # `names` of a collected dataset's meta/info.json; empty: the dataset's `names` are null.
    feature_names: Mapping[str, tuple[str, ...]] = {}
    install_hint: str = ""

    @property
    @abstractmethod
    def protocols(self) -> Mapping[str, EvalProtocol]: ...

    @abstractmethod
    def resolve_tasks(self, spec: str | list[str] | tuple[str, ...]) -> list[str]:
        """Comma-separated task names and/or suites -> canonical task names (did-you-mean on error)."""

    @abstractmethod
    def task_id(self, task: str) -> int:
        """A stable integer per task (seeding)."""

    @abstractmethod
    def instruction(self, task: str) -> str: ...

    def task_group(self, task: str) -> str:
        """The group results are aggregated over (and the protocol's max steps are looked up by)."""
        return "default"

    def task_spec(self, task: str) -> TaskSpec | None:
        """The annotation table entry, or None (the annotator then takes the target from the instruction)."""
        return None

    def protocol(self, name: str | None = None) -> EvalProtocol:
        return lookup(self.protocols, name or self.default_protocol, f"{self.name} evaluation protocol")

    @abstractmethod
    def require(self) -> None:
        """Import the simulator package or raise ImportError with the install command (one line)."""

    def validate(self, *, cameras: tuple[str, ...], image_size: int, max_steps: int | None = None) -> None:
        """Raise ValueError (one line) for cameras, an image size or a step limit `make` would reject."""
        if max_steps is not None and max_steps < 1:
            raise ValueError(f"max_steps must be >= 1, got {max_steps}")
        for cam in cameras:
            if cam not in self.cameras:
                raise ValueError(did_you_mean(cam, self.cameras, f"{self.name} camera"))
        if not cameras:
            raise ValueError(f"no camera given; choose from {', '.join(self.cameras)}")
        if not 32 <= image_size <= 512:
            raise ValueError(f"image_size must be in [32, 512], got {image_size}")

    @abstractmethod
    def make(
        self,
        task: str,
        *,
        cameras: tuple[str, ...] | None = None,
        image_size: int = 64,
        max_steps: int | None = None,
        render: bool = True,
    ) -> SimEnv:
        """Build one environment; `max_steps` truncates episodes (None: the simulator's limit)."""

    def describe(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "robot_type": self.robot_type,
            "fps": self.fps,
            "state_dim": self.state_dim,
            "action_dim": self.action_dim,
            "cameras": list(self.cameras),
        }
