"""Gymnasium-style Meta-World v3 adapter: LeRobot observation keys, fast rendering, deterministic seeding.

Observations (LeRobot naming, see `constants.py`):
    observation.images.<camera>  uint8 (H, W, 3), upright
    observation.state            float32 (4,): hand xyz (world frame, metres) + gripper opening in [0, 1]
    task                         the instruction of `metaworld_tasks.TASKS`
Actions are 4-D (dx, dy, dz in cm-scaled units, gripper effort; +1 closes), clipped to [-1, 1].

Rendering. `env.render()` costs ~80 ms/frame on CPU because of 4096² shadow maps, 4x MSAA and a 640x480
offscreen buffer (measured on this CPU). We own one `mujoco.Renderer` with the offscreen buffer equal to
the image size, `offsamples=0`, shadows and reflections off: ~10 ms/step at 128 px.

Upright images. MuJoCo renders the fixed corner cameras (corner, corner2, corner3, corner4) upside down:
their camera "up" axis points *down* in the world (world-z of the up axis is -0.96 / -0.87 / -0.53 / -0.87).
Those frames are rotated by 180° (`np.flip(img, (0, 1))`, as LeRobot does for corner2), so the table is at the
bottom of the image. topview, behindGripper and gripperPOV are already upright and are left alone.
`project_points` applies the same rotation, so projected boxes match the stored images.

Seeding (deterministic, train/eval disjoint by construction). `reset(episode=i, split=s, seed=k)` seeds the
Meta-World env's own generator with
    np.random.SeedSequence([k, task_id, SPLIT_IDS[s], i]).generate_state(1)[0]
and lets the env draw its object/goal random vector from it (`seeded_rand_vec=True`, the mechanism LeRobot
uses). Episode i of task T under seed k therefore always starts from the same state, in any process and in
any order. Train and eval episodes come from SeedSequences with different entropy (split id 0 vs 1), i.e.
independent streams; the same configuration can recur across splits only with probability zero.
`reset(seed=...)` of the underlying env is ignored by Meta-World, which is why we go through `env.seed`.

Privileged information (`privileged()`, never given to a policy) feeds the CoT annotator: end-effector
position, gripper opening, object and goal positions, the 8 world-frame corners of the target's geometry box
(target = the body whose visible geom is nearest the task's object position, or a 4 cm cube around the goal
for reach-style tasks), a gripper-target contact flag, and per camera pos(3) + xmat(9) + fovy(1).
"""

from __future__ import annotations

import os
import warnings
from dataclasses import dataclass
from typing import Any

import numpy as np

from latentvla import constants as K
from latentvla.envs.base import EvalProtocol, Simulator, TaskSpec
from latentvla.envs.camera import box_corners, camera_params
from latentvla.envs.camera import project_points as _project
from latentvla.envs.metaworld_tasks import SUITES, TASK_IDS, TASKS, canonical_task, resolve_tasks

# Headless rendering: MuJoCo picks its GL backend at import time, so this must precede any `import mujoco`.
os.environ.setdefault("MUJOCO_GL", "egl")

CAMERAS = ("topview", "corner", "corner2", "corner3", "corner4", "behindGripper", "gripperPOV")
FLIPPED_CAMERAS = frozenset({"corner", "corner2", "corner3", "corner4"})
SPLIT_IDS = {"train": 0, "eval": 1}
FPS = 80  # control rate: frame_skip 5 x MuJoCo timestep 2.5 ms = 12.5 ms per step (LeRobot uses 80 too)
MAX_PATH_LENGTH = 500  # Meta-World raises if stepped past this without a reset
GOAL_BOX_HALF = 0.02  # metres: half-size of the box drawn around a goal point (reach-style tasks)
# Bodies of the Sawyer arm and gripper: excluded when looking for the target, used for the contact flag.
_ROBOT_PREFIXES = (
    "right_",
    "hand",
    "leftclaw",
    "rightclaw",
    "leftpad",
    "rightpad",
    "mocap",
    "base",
    "pedestal",
    "torso",
    "head",
    "screen",
)
_GRIPPER_BODIES = ("hand", "leftclaw", "rightclaw", "leftpad", "rightpad")
_STATIC_BODIES = ("tablelink", "RetainingWall")


def require_sim() -> tuple[Any, Any]:
    """Import (mujoco, metaworld) or fail with the install command."""
    os.environ.setdefault("MUJOCO_GL", "egl")
    try:
        import metaworld
        import mujoco
    except ImportError as e:
        raise ImportError(f'Meta-World needs the simulation extra: pip install -e ".[sim]" ({e})') from e
    return mujoco, metaworld


@dataclass(frozen=True)
class MetaWorldConfig:
    task: str
    cameras: tuple[str, ...] = (K.DEFAULT_CAMERA,)
    image_size: int = 64
    max_steps: int = MAX_PATH_LENGTH
    render: bool = True  # False: state-only rollouts (no images), e.g. to measure expert success quickly

    def __post_init__(self) -> None:
        object.__setattr__(self, "task", canonical_task(self.task))
        object.__setattr__(self, "cameras", tuple(self.cameras))
        for cam in self.cameras:
            if cam not in CAMERAS:
                from latentvla.registry import did_you_mean

                raise ValueError(did_you_mean(cam, CAMERAS, "Meta-World camera"))
        if not self.cameras:
            raise ValueError("MetaWorldConfig.cameras is empty: give at least one of " + ", ".join(CAMERAS))
        if not 64 <= self.image_size <= 224:
            raise ValueError(f"image_size must be in [64, 224], got {self.image_size}")
        if not 1 <= self.max_steps <= MAX_PATH_LENGTH:
            raise ValueError(f"max_steps must be in [1, {MAX_PATH_LENGTH}], got {self.max_steps}")


def episode_seed(task: str, split: str, episode: int, seed: int = 0) -> int:
    """The integer that seeds the env's random vector for (task, split, episode, seed); see module docstring."""
    if split not in SPLIT_IDS:
        raise ValueError(f"split must be one of {tuple(SPLIT_IDS)}, got {split!r}")
    if episode < 0 or seed < 0:
        raise ValueError(f"episode and seed must be >= 0, got episode={episode}, seed={seed}")
    ss = np.random.SeedSequence([seed, TASK_IDS[canonical_task(task)], SPLIT_IDS[split], episode])
    return int(ss.generate_state(1)[0])


def project_points(points: np.ndarray, params: np.ndarray, camera: str) -> tuple[np.ndarray, np.ndarray]:
    """`envs.camera.project_points` for a Meta-World camera (the corner cameras' images are stored rotated)."""
    return _project(points, params, flipped=camera in FLIPPED_CAMERAS)


class MetaWorldEnv:
    """One Meta-World v3 task with LeRobot observations; see the module docstring for the conventions."""

    def __init__(self, cfg: MetaWorldConfig) -> None:
        mujoco, _ = require_sim()
        from metaworld.env_dict import ALL_V3_ENVIRONMENTS
        from metaworld.policies import ENV_POLICY_MAP

        self.cfg, self.spec, self._mj, self.fps = cfg, TASKS[cfg.task], mujoco, FPS
        self.instruction = self.spec.instruction
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            env = ALL_V3_ENVIRONMENTS[cfg.task]()
        # Goal-observable (the scripted experts read the goal from obs[-3:]) with a seeded random vector.
        env._partially_observable = False
        env.__dict__.pop("sawyer_observation_space", None)  # cached_property: recompute with the goal bounds
        env._freeze_rand_vec, env.seeded_rand_vec, env._set_task_called = False, True, True
        env.max_path_length = MAX_PATH_LENGTH
        self.env, self.model, self.data = env, env.model, env.data
        self.policy = ENV_POLICY_MAP[cfg.task]()
        self._cam_ids = {c: mujoco.mj_name2id(self.model, mujoco.mjtObj.mjOBJ_CAMERA, c) for c in cfg.cameras}
        self.renderer = None
        if cfg.render:
            self.model.vis.quality.offsamples = 0
            self.model.vis.global_.offwidth = cfg.image_size
            self.model.vis.global_.offheight = cfg.image_size
            self.renderer = mujoco.Renderer(self.model, cfg.image_size, cfg.image_size)
        self._raw_obs: np.ndarray | None = None
        self._steps = 0
        self._gripper_geoms = self._geoms_of(lambda chain: chain[0] in _GRIPPER_BODIES)

    # ------------------------------------------------------------------ gymnasium API
    def reset(self, *, episode: int, split: str = "train", seed: int = 0) -> tuple[dict, dict]:
        env_seed = episode_seed(self.cfg.task, split, episode, seed)
        self.env.seed(env_seed)
        self._raw_obs, _ = self.env.reset()
        self._steps = 0
        self._select_target()
        info = {"episode": episode, "split": split, "seed": seed, "episode_seed": env_seed, "success": False}
        return self._observation(), info

    def step(self, action: np.ndarray) -> tuple[dict, float, bool, bool, dict]:
        if self._raw_obs is None:
            raise RuntimeError("MetaWorldEnv.step() called before reset(episode=...)")
        action = np.clip(np.asarray(action, dtype=np.float32).reshape(4), -1.0, 1.0)
        raw, reward, _, _, info = self.env.step(action)
        self._raw_obs, self._steps = raw, self._steps + 1
        info = dict(info, success=bool(info.get("success", 0.0)))
        terminated = info["success"]
        truncated = self._steps >= self.cfg.max_steps
        return self._observation(), float(reward), terminated, truncated, info

    def expert_action(self, obs: dict | None = None) -> np.ndarray:
        """Meta-World's scripted expert action for the current state, clipped to [-1, 1].

        The experts read the full 39-d simulator state, which the LeRobot observation does not carry, so the
        env's latest raw observation is used (`obs` is accepted for gymnasium-style call sites).
        """
        if self._raw_obs is None:
            raise RuntimeError("MetaWorldEnv.expert_action() called before reset(episode=...)")
        with warnings.catch_warnings():  # "Constant(s) may be too high": we clip, as the warning asks
            warnings.simplefilter("ignore")
            action = self.policy.get_action(self._raw_obs)
        return np.clip(action, -1.0, 1.0).astype(np.float32)

    def close(self) -> None:
        if self.renderer is not None:
            self.renderer.close()
            self.renderer = None
        self.env.close()

    # ------------------------------------------------------------------ observations
    def render(self, camera: str) -> np.ndarray:
        """uint8 (H, W, 3) upright image from `camera` (any of CAMERAS)."""
        if self.renderer is None:
            raise RuntimeError("This MetaWorldEnv was built with render=False")
        flags = self._mj.mjtRndFlag
        self.renderer.update_scene(self.data, camera=camera)
        self.renderer.scene.flags[flags.mjRND_SHADOW] = 0
        self.renderer.scene.flags[flags.mjRND_REFLECTION] = 0
        img = self.renderer.render()
        return np.ascontiguousarray(np.flip(img, (0, 1)) if camera in FLIPPED_CAMERAS else img)

    def _observation(self) -> dict:
        obs = {
            K.OBS_STATE: self._raw_obs[:4].astype(np.float32),
            K.TASK: self.spec.instruction,
        }
        if self.renderer is not None:
            for cam in self.cfg.cameras:
                obs[f"{K.OBS_IMAGES}.{cam}"] = self.render(cam)
        return obs

    # ------------------------------------------------------------------ privileged information
    def privileged(self) -> dict[str, np.ndarray]:
        """Simulator ground truth of the current frame (constants.PRIV_*), float32 arrays."""
        d, raw = self.data, self._raw_obs
        out = {
            K.PRIV_EE_POS: raw[0:3],
            K.PRIV_GRIPPER: raw[3:4],
            K.PRIV_OBJECT_POS: raw[4:7],
            K.PRIV_GOAL_POS: raw[36:39],
            K.PRIV_TARGET_CORNERS: self.target_corners().reshape(24),
            K.PRIV_CONTACT: np.array([float(self.in_contact())]),
        }
        for cam, cid in self._cam_ids.items():
            out[f"{K.PRIV_CAMERA}{cam}"] = camera_params(d, self.model, cid)
        return {k: np.asarray(v, dtype=np.float32) for k, v in out.items()}

    def target_corners(self) -> np.ndarray:
        """(8, 3) world corners of the target's box in the current frame."""
        if self._target_body is None:  # reach-style: a small cube around the goal point
            goal = self._raw_obs[36:39]
            return box_corners(goal - GOAL_BOX_HALF, goal + GOAL_BOX_HALF)
        b = self._target_body
        return self.data.xpos[b] + self._target_local @ self.data.xmat[b].reshape(3, 3).T

    def in_contact(self) -> bool:
        """True when any gripper geom (hand, claws, pads) touches a geom of the target body."""
        if self._target_body is None:
            return False
        n = self.data.ncon
        g1, g2 = self.data.contact.geom1[:n], self.data.contact.geom2[:n]
        tg, gg = self._target_geoms, self._gripper_geoms
        return bool(np.any((np.isin(g1, tg) & np.isin(g2, gg)) | (np.isin(g2, tg) & np.isin(g1, gg))))

    def _body_chain(self, body: int) -> list[str]:
        """Names of `body` and its ancestors up to (excluding) the world body."""
        mj, chain = self._mj, []
        while body != 0:
            chain.append(mj.mj_id2name(self.model, mj.mjtObj.mjOBJ_BODY, body) or f"#{body}")
            body = self.model.body_parentid[body]
        return chain

    def _geoms_of(self, keep) -> np.ndarray:
        m = self.model
        return np.array(
            [g for g in range(m.ngeom) if m.geom_bodyid[g] != 0 and keep(self._body_chain(m.geom_bodyid[g]))],
            dtype=np.int64,
        )

    def _visible(self, g: int) -> bool:
        return self.model.geom_rgba[g, 3] > 0 and self.model.geom_group[g] <= 2

    def _select_target(self) -> None:
        """Pick the target body (nearest visible non-robot geom to the object position) and its local box."""
        self._target_body, self._target_geoms = None, np.zeros(0, dtype=np.int64)
        if self.spec.box_anchor == "goal":
            return
        m, d, point = self.model, self.data, self._raw_obs[4:7]

        def movable(chain: list[str]) -> bool:
            return not any(c.startswith(_ROBOT_PREFIXES) or c in _STATIC_BODIES for c in chain)

        best = None
        for g in self._geoms_of(movable):
            if not self._visible(g):
                continue
            rot = d.geom_xmat[g].reshape(3, 3)
            local = rot.T @ (point - d.geom_xpos[g]) - m.geom_aabb[g, :3]
            gap = np.linalg.norm(np.maximum(np.abs(local) - m.geom_aabb[g, 3:], 0.0))
            key = (round(float(gap), 4), float(np.linalg.norm(point - d.geom_xpos[g])))  # ties: nearest centre
            if best is None or key < best[0]:
                best = (key, g)
        if best is None:
            raise RuntimeError(f"No target geometry found for {self.cfg.task}")
        body = int(m.geom_bodyid[best[1]])
        geoms = np.flatnonzero(m.geom_bodyid == body)
        bpos, brot = d.xpos[body], d.xmat[body].reshape(3, 3)
        pts = []
        for g in geoms:
            if not self._visible(g):
                continue
            c, h = m.geom_aabb[g, :3], m.geom_aabb[g, 3:]
            world = d.geom_xpos[g] + box_corners(c - h, c + h) @ d.geom_xmat[g].reshape(3, 3).T
            pts.append((world - bpos) @ brot)  # world -> body frame
        pts = np.concatenate(pts)
        self._target_body, self._target_geoms = body, geoms.astype(np.int64)
        self._target_local = box_corners(pts.min(0), pts.max(0))


# ---------------------------------------------------------------------------------------------- simulator
DIFFICULTY_GROUPS = ("easy", "medium", "hard", "very_hard")  # LeRobot's Meta-World task groups


class MetaWorldSimulator(Simulator):
    """Meta-World v3 behind the simulator protocol (envs/base.py)."""

    name = "metaworld"
    robot_type = "sawyer"
    fps = FPS
    state_dim, action_dim = 4, 4
    # hand xyz + gripper opening; action: hand displacement + gripper effort (Meta-World's 4-D spaces)
    feature_names = {
        K.OBS_STATE: ("hand_x", "hand_y", "hand_z", "gripper"),
        K.ACTION: ("dx", "dy", "dz", "gripper"),
    }
    cameras = CAMERAS
    flipped_cameras = FLIPPED_CAMERAS
    default_cameras = (K.DEFAULT_CAMERA,)
    has_expert = True
    install_hint = 'pip install -e ".[sim]"'
    # openpi's LIBERO-style keys are mapped onto the policy's cameras by position (serve/obs.py); none extra.
    client_keys: dict[str, str] = {}

    @property
    def protocols(self) -> dict[str, EvalProtocol]:
        return {
            "default": EvalProtocol(
                name="default",
                episodes=10,
                seed=0,
                max_steps=MAX_PATH_LENGTH,
                init="episode i resets from SeedSequence([seed, task_id, 1 (eval split), i]): disjoint from "
                "the training episodes of `collect` (split 0)",
                source="latentvla (LeRobot's Meta-World wrapper: 500-step limit, success = info['success'])",
            )
        }

    def resolve_tasks(self, spec: str | list[str] | tuple[str, ...]) -> list[str]:
        return resolve_tasks(spec)

    def task_id(self, task: str) -> int:
        return TASK_IDS[canonical_task(task)]

    def instruction(self, task: str) -> str:
        return TASKS[canonical_task(task)].instruction

    def task_group(self, task: str) -> str:
        task = canonical_task(task)
        return next((g for g in DIFFICULTY_GROUPS if task in SUITES[g]), "other")

    def task_spec(self, task: str) -> TaskSpec | None:
        return TASKS[canonical_task(task)]

    def require(self) -> None:
        require_sim()

    def validate(self, *, cameras: tuple[str, ...], image_size: int, max_steps: int | None = None) -> None:
        MetaWorldConfig(
            next(iter(TASKS)),
            cameras=tuple(cameras),
            image_size=image_size,
            max_steps=max_steps or MAX_PATH_LENGTH,
        )

    def make(
        self,
        task: str,
        *,
        cameras: tuple[str, ...] | None = None,
        image_size: int = 64,
        max_steps: int | None = None,
        render: bool = True,
    ) -> MetaWorldEnv:
        cfg = MetaWorldConfig(
            task,
            cameras=tuple(cameras or self.default_cameras),
            image_size=image_size,
            max_steps=max_steps or MAX_PATH_LENGTH,
            render=render,
        )
        return MetaWorldEnv(cfg)


SIMULATOR = MetaWorldSimulator()
