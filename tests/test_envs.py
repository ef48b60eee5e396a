"""The simulator protocol (envs/base.py) and registry: a toy simulator added as one adapter + one registry line
runs collection, annotation and evaluation (warm-up, gripper post-processing, whole-chunk execution, protocol
in eval_info.json) without touching any other file."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from latentvla import constants as K
from latentvla.envs import registry
from latentvla.envs.base import EvalProtocol, Simulator, StateLayout, postprocess_gripper

torch.set_num_threads(1)

# ------------------------------------------------------------------------------ a toy adapter (pure numpy)
RECEIVED: list[np.ndarray] = []  # every action the toy env was stepped with (in-process runs only)
EVENTS: list[tuple[str, str]] = []  # ("make" | "close", task)


class ToyEnv:
    """A hand moving in 3-D towards a goal; the gripper closes when its action is > 0. Solved at the goal."""

    def __init__(self, task: str, cameras: tuple[str, ...], image_size: int, max_steps: int) -> None:
        self.instruction, self.fps = f"move the cube to goal {task}", 10
        self.cameras, self.size, self.max_steps, self.task = cameras, image_size, max_steps, task
        EVENTS.append(("make", task))
        self.goal = np.array([0.1, 0.0, 0.0]) * (1 + int(task[-1]))

    def reset(self, *, episode: int, split: str = "train", seed: int = 0) -> tuple[dict, dict]:
        self.pos, self.grip, self.t = np.zeros(3), 1.0, 0
        return self._obs(), {"episode_seed": 1000 * seed + episode}

    def step(self, action):
        a = np.asarray(action, np.float32)
        RECEIVED.append(a.copy())
        self.pos = self.pos + 0.02 * np.clip(a[:3], -1, 1)
        self.grip = 0.0 if a[3] > 0 else 1.0
        self.t += 1
        success = bool(np.linalg.norm(self.pos - self.goal) < 0.015)
        return self._obs(), 0.0, success, self.t >= self.max_steps, {"success": success}

    def expert_action(self, obs=None) -> np.ndarray:
        d = (self.goal - self.pos) / 0.02
        return np.append(np.clip(d, -1, 1), 1.0 if self.t >= 3 else -1.0).astype(np.float32)

    def privileged(self) -> dict:
        return {K.PRIV_EE_POS: self.pos.astype(np.float32), K.PRIV_GRIPPER: np.array([self.grip], np.float32)}

    def _obs(self) -> dict:
        img = np.zeros((self.size, self.size, 3), np.uint8)
        img[0, 0] = int(255 * self.grip)
        state = np.append(self.pos, self.grip).astype(np.float32)
        return {K.OBS_STATE: state, K.TASK: self.instruction} | {f"{K.OBS_IMAGES}.{c}": img for c in self.cameras}

    def close(self) -> None:
        EVENTS.append(("close", self.task))


class ToySimulator(Simulator):
    name, robot_type, fps, state_dim, action_dim = "toy", "toybot", 10, 4, 4
    cameras, default_cameras, has_expert = ("corner4",), ("corner4",), True
    client_keys = {"toy/cam": f"{K.OBS_IMAGES}.corner4"}

    @property
    def protocols(self) -> dict[str, EvalProtocol]:
        return {
            "default": EvalProtocol(
                "default",
                episodes=2,
                seed=5,
                max_steps={"near": 8, "far": 16},
                init="origin",
                warmup_steps=2,
                warmup_action=(0, 0, 0, -0.5),
                gripper="binarize",
                execute_full_chunk=True,
            )
        }

    def resolve_tasks(self, spec):
        names = [p.strip() for p in (spec.split(",") if isinstance(spec, str) else spec) if p.strip()]
        if not names or any(n not in ("goal1", "goal2", "goal3") for n in names):
            raise ValueError(f"unknown toy task in {spec!r}")
        return names

    def task_id(self, task):
        return int(task[-1])

    def instruction(self, task):
        return f"move the cube to goal {task}"

    def task_group(self, task):
        return "near" if task == "goal1" else "far"

    def require(self):
        pass

    def make(self, task, *, cameras=None, image_size=64, max_steps=None, render=True):
        return ToyEnv(task, tuple(cameras or self.default_cameras), image_size, max_steps or 50)


SIMULATOR = ToySimulator()


@pytest.fixture
def toy(monkeypatch):
    """The one registry line."""
    monkeypatch.setitem(registry.SIMULATORS, "toy", f"{__name__}:SIMULATOR")
    registry.get_simulator.cache_clear()
    RECEIVED.clear()
    EVENTS.clear()
    yield SIMULATOR
    registry.get_simulator.cache_clear()


# ---------------------------------------------------------------------------------------- pure functions
def test_gripper_postprocessing_modes():
    a = np.array([[0.3, -0.2, 0.1, 0.0, 0.0, 0.0, 0.4], [0, 0, 0, 0, 0, 0, -0.7], [0, 0, 0, 0, 0, 0, 0.0]])
    np.testing.assert_array_equal(postprocess_gripper(a, "none"), a.astype(np.float32))
    assert postprocess_gripper(a, "binarize")[:, -1].tolist() == [1.0, -1.0, -1.0]
    # OpenVLA: [0, 1] with 1 = open -> -1 open / +1 close at 0.5 (normalize, binarize, invert)
    assert postprocess_gripper(np.array([0.0, 0.9, 0.5]).reshape(3, 1), "openvla")[:, -1].tolist() == [
        1.0,
        -1.0,
        0.0,
    ]
    np.testing.assert_array_equal(
        postprocess_gripper(a, "binarize")[:, :-1], a[:, :-1].astype(np.float32)
    )  # arm untouched
    with pytest.raises(ValueError, match="Did you mean 'binarize'"):
        postprocess_gripper(a, "binarise")


def test_state_layouts_of_metaworld_and_libero():
    mw, lib = registry.get_simulator("metaworld"), registry.get_simulator("libero")
    state = np.array([[0.1, 0.2, 0.3, 0.7], [0.0, 0.0, 0.5, 1.3]])
    ee, g = mw.state_layout.split(state)
    np.testing.assert_allclose(ee, state[:, :3])
    np.testing.assert_allclose(g, [0.7, 1.0])  # clipped to [0, 1]
    libero_state = np.array(
        [[0.5, 0.1, 1.0, 3.1, 0.0, 0.1, 0.04, -0.04], [0.5, 0.1, 0.9, 3.1, 0.0, 0.1, 0.01, -0.01]]
    )
    ee, g = lib.state_layout.split(libero_state)
    np.testing.assert_allclose(ee, libero_state[:, :3])
    np.testing.assert_allclose(g, [1.0, 0.25])  # finger gap / 8 cm
    with pytest.raises(ValueError, match="too small"):
        StateLayout(ee=(0, 3), gripper=(6, 7), gripper_signs=(1.0, -1.0)).split(state)


def test_registry_lists_simulators_without_importing_them():
    assert set(registry.SIMULATORS) >= {"metaworld", "libero"}
    for name in registry.SIMULATORS:
        sim = registry.get_simulator(name)
        assert isinstance(sim, Simulator) and sim.name == name
        assert set(sim.default_cameras) <= set(sim.cameras)
        assert sim.protocol().name == sim.default_protocol
    with pytest.raises(ValueError, match="Did you mean 'libero'"):
        registry.get_simulator("lebero")
    lib = registry.get_simulator("libero")
    papers, lerobot = lib.protocol(), lib.protocol("lerobot")
    assert (papers.name, papers.seed, papers.episodes, papers.warmup_steps) == ("papers", 7, 50, 10)
    assert [
        papers.steps_for(s) for s in ("libero_spatial", "libero_object", "libero_goal", "libero_10", "libero_90")
    ] == [220, 280, 300, 520, 400]
    assert lerobot.steps_for("libero_spatial") == 280 and lerobot.seed == 1000
    assert papers.execute_full_chunk and not lerobot.execute_full_chunk
    assert papers.warmup_action == (0, 0, 0, 0, 0, 0, -1)
    with pytest.raises(ValueError, match="Did you mean 'papers'"):
        lib.protocol("paper")
    assert registry.get_simulator("metaworld").resolve_tasks("reach") == ["reach-v3"]
    flipped = registry.flipped_cameras()  # what ProjectedGeometryBoxes un-rotates, declared by each adapter
    assert {"corner4", "image", "image2"} <= flipped and "topview" not in flipped
    with pytest.raises(ValueError, match="LIBERO task or suite"):
        lib.resolve_tasks("reach-v3")  # fails fast, before importing LIBERO


# ------------------------------------------------------------------------ one adapter runs the whole loop
def _toy_checkpoint(path) -> str:
    from latentvla.config import apply_overrides, get_preset
    from latentvla.data.stats import Normalizer
    from latentvla.policy import Policy

    one = np.ones(4)
    stats = {"mean": 0 * one, "std": one, "min": -one, "max": one, "q01": -one, "q99": one, "count": np.array([9])}
    torch.manual_seed(0)
    cfg = apply_overrides(get_preset("rdvla"), ["policy.horizon=4", "policy.execution=fixed:1"])
    Policy(cfg.policy, Normalizer({K.OBS_STATE: stats, K.ACTION: stats})).save_pretrained(path)
    return str(path)


def test_toy_simulator_evaluates_under_its_protocol(toy, tmp_path):
    from latentvla.cli import main as cli
    from latentvla.eval.evaluate import evaluate

    ckpt = _toy_checkpoint(tmp_path / "ckpt")
    info = evaluate(ckpt, "goal1,goal2", None, env="toy", workers=1, progress=False, out_dir=tmp_path / "e")
    # protocol defaults: 2 episodes per task, seed 5, 8 / 16 steps per group, 2 warm-up steps per episode
    assert [t["metrics"]["n_episodes"] for t in info["per_task"]] == [2, 2]
    assert [t["metrics"]["lengths"] for t in info["per_task"]] == [[8, 8], [16, 16]]
    assert [t["task_group"] for t in info["per_task"]] == ["near", "far"]
    assert len(RECEIVED) == 2 * (2 + 8) + 2 * (2 + 16)
    warm = [a for a in RECEIVED if a[-1] == -0.5]  # the warm-up action is not post-processed
    assert len(warm) == 8 and all(np.all(a[:3] == 0) for a in warm)
    assert all(a[-1] in (-1.0, 1.0) for a in RECEIVED if a[-1] != -0.5)  # binarized gripper
    # whole chunk (H=4) before re-querying, although the checkpoint says fixed:1
    assert info["per_task"][0]["metrics"]["n_calls"] == 2 * 8 // 4
    saved = json.loads((tmp_path / "e" / "eval_info.json").read_text())["config"]
    assert saved["env"] == "toy" and saved["seed"] == 5
    p = saved["protocol"]
    assert (p["name"], p["warmup_steps"], p["gripper_applied"], p["execution_applied"]) == (
        "default",
        2,
        "binarize",
        "fixed:4",
    )
    # explicit options win over the protocol
    RECEIVED.clear()
    info = evaluate(
        ckpt, "goal1", 1, env="toy", workers=1, progress=False, gripper="none", execution="fixed:1", max_steps=3
    )
    assert (
        info["per_task"][0]["metrics"]["n_calls"] == 3 and info["config"]["protocol"]["gripper_applied"] == "none"
    )
    # the CLI: unknown env / a checkpoint that does not fit are one line and exit code 2
    assert cli(["eval", ckpt, "--env", "toi", "--tasks", "goal1", "--out", str(tmp_path / "x")]) == 2
    assert (
        cli(["eval", ckpt, "--env", "toy", "--tasks", "goal1", "--execution", "sometimes", "--out", str(tmp_path)])
        == 2
    )
    assert cli(["eval", ckpt, "--env", "libero", "--tasks", "libero_object", "--out", str(tmp_path / "y")]) == 2


def test_eval_workers_keep_few_envs_alive(toy, tmp_path):
    from latentvla.eval.episode import MAX_ENVS_PER_WORKER
    from latentvla.eval.evaluate import evaluate

    ckpt = _toy_checkpoint(tmp_path / "ckpt")
    evaluate(ckpt, "goal1,goal2,goal3", 2, env="toy", workers=1, progress=False, max_steps=2)
    assert MAX_ENVS_PER_WORKER == 1  # one env per task, closed before the next task's env is made
    assert [(e, f"goal{i}") for i in (1, 2, 3) for e in ("make", "close")] == EVENTS


def test_toy_simulator_collects_annotated_demonstrations(toy, tmp_path, capsys, monkeypatch):
    from latentvla.cli import main as cli
    from latentvla.data.lerobot import LeRobotDatasetReader

    out = tmp_path / "toy_data"
    assert (
        cli(
            [
                "collect",
                "--env",
                "toy",
                "--tasks",
                "goal1",
                "--episodes-per-task",
                "2",
                "--max-steps",
                "40",
                "--stop-after-success",
                "2",
                "--out",
                str(out),
            ]
        )
        == 0
    )
    reader = LeRobotDatasetReader(out)
    assert reader.num_episodes == 2 and reader.info["robot_type"] == "toybot" and reader.fps == 10
    ep = reader.episode(0)
    assert ep[K.TASK] == "move the cube to goal goal1"
    assert ep[K.COT_SEGMENT][0] == "approach" and "grasp" in ep[K.COT_SEGMENT]  # the gripper closes at t=3
    assert not np.asarray(ep[K.COT_BBOX_VISIBLE]).any()  # no privileged box geometry: flagged, not invented
    monkeypatch.setattr(toy, "has_expert", False)  # a simulator without a scripted expert (LIBERO has one now)
    assert cli(["collect", "--env", "toy", "--tasks", "goal1", "--out", str(tmp_path / "l")]) == 2
    assert "no scripted expert" in capsys.readouterr().err


def test_server_accepts_the_client_keys_an_adapter_declares(toy):
    from latentvla.serve.obs import ObservationSpec, prepare_observation

    spec = ObservationSpec(("corner4",), 8, 4)
    img = np.full((16, 16, 3), 7, np.uint8)
    obs = prepare_observation({"toy/cam": img, "observation/state": np.zeros(4), "prompt": "go"}, spec)
    assert obs[f"{K.OBS_IMAGES}.corner4"].shape == (8, 8, 3) and obs[K.TASK] == "go"
    libero_spec = ObservationSpec(("image", "image2"), 8, 8)
    assert libero_spec.camera_aliases(1) == (f"{K.OBS_IMAGES}.image2", "observation/wrist_image")
