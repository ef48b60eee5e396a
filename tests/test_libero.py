"""LIBERO adapter (envs/libero.py) and the LIBERO train -> eval path. LIBERO has no scripted expert and its
demonstrations cannot be downloaded here, so the adapter is tested with short rollouts of an untrained
LIBERO-shaped policy, and training uses a synthetic dataset in LeRobot's LIBERO layout. Env creation takes
seconds, so there are few tests and they share work."""

from __future__ import annotations

import json
import sys

import numpy as np
import pytest

from latentvla import constants as K
from latentvla.envs import libero as L

pytestmark = pytest.mark.libero


def test_quat2axisangle_matches_rotation_vectors():
    assert np.allclose(L.quat2axisangle(np.array([0.0, 0.0, 0.0, 1.0])), 0.0)
    # 180 degrees about x (LIBERO's gripper pointing down): axis-angle (pi, 0, 0)
    np.testing.assert_allclose(L.quat2axisangle(np.array([1.0, 0.0, 0.0, 0.0])), [np.pi, 0, 0], atol=1e-7)
    half = np.pi / 4  # 90 degrees about z
    np.testing.assert_allclose(L.quat2axisangle(np.array([0, 0, np.sin(half), np.cos(half)])), [0, 0, np.pi / 2])


def test_missing_install_is_one_line_naming_the_command(monkeypatch, tmp_path, capsys):
    from latentvla.cli import main as cli

    for name in ("libero", "libero.libero", "libero.libero.benchmark"):  # even if imported earlier
        monkeypatch.setitem(sys.modules, name, None)  # import -> ImportError
    monkeypatch.setattr(L, "_BENCH", L._Benchmark())
    with pytest.raises(ImportError, match=r'pip install -e "\.\[sim,libero\]"'):
        L.resolve_tasks("libero_object")
    assert cli(["eval", str(tmp_path), "--env", "libero", "--tasks", "libero_object", "--out", str(tmp_path)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error:")


def test_tasks_by_suite_index_range_and_name():
    pytest.importorskip("libero")
    obj = L.resolve_tasks("libero_object")
    assert len(obj) == 10 and all(t.startswith("libero_object/") for t in obj)
    assert L.resolve_tasks("libero_object:3") == [obj[3]]
    assert L.resolve_tasks("libero_object:0-2,libero_object:1") == obj[:3]
    name = obj[0].split("/")[1]
    assert L.resolve_tasks(name) == [obj[0]] and L.resolve_tasks(obj[0]) == [obj[0]]
    assert [len(L.resolve_tasks(s)) for s in L.SUITES] == [10, 10, 10, 10, 90]
    sim = L.SIMULATOR
    assert sim.task_group(obj[0]) == "libero_object" and sim.task_id(obj[3]) == 103
    assert sim.instruction(obj[0]) == "pick up the alphabet soup and place it in the basket"
    with pytest.raises(ValueError, match="libero_object has tasks 0..9"):
        L.resolve_tasks("libero_object:10")
    with pytest.raises(ValueError, match="Did you mean 'libero_goal'"):
        L.resolve_tasks("libero_gaol")


@pytest.mark.slow
def test_rollout_init_states_flip_warmup_and_truncation():
    pytest.importorskip("libero")
    from latentvla.eval.episode import SimEpisode

    sim = L.SIMULATOR
    env = sim.make(L.resolve_tasks("libero_object:0")[0], image_size=64, max_steps=14)
    try:
        obs, info = env.reset(episode=1, seed=7)
        assert info["init_state"] == 1
        assert set(obs) == {K.OBS_STATE, K.TASK, f"{K.OBS_IMAGES}.image", f"{K.OBS_IMAGES}.image2"}
        assert obs[K.OBS_STATE].shape == (8,) and obs[K.OBS_STATE].dtype == np.float32
        raw = env._raw
        rs = env.env.env  # images render on first read; robosuite's own camera sensor gives the same pixels
        for cam, key in L.CAMERA_NAMES.items():
            rs.modify_observable(f"{key}_image", "enabled", True)
            expected = rs._get_observations(force_update=True)[f"{key}_image"][::-1, ::-1]
            rs.modify_observable(f"{key}_image", "enabled", False)
            np.testing.assert_array_equal(obs[f"{K.OBS_IMAGES}.{cam}"], expected)
        np.testing.assert_allclose(obs[K.OBS_STATE][:3], raw["robot0_eef_pos"], rtol=1e-6)
        np.testing.assert_allclose(obs[K.OBS_STATE][6:], raw["robot0_gripper_qpos"], rtol=1e-6)
        again, _ = env.reset(episode=1, seed=7)
        np.testing.assert_array_equal(again[K.OBS_STATE], obs[K.OBS_STATE])  # episode i = init state i
        other, _ = env.reset(episode=0, seed=7)
        assert not np.allclose(other[K.OBS_STATE], obs[K.OBS_STATE])
        # the papers' protocol: 10 no-op warm-up steps, then the policy's actions, binarized gripper
        episode = SimEpisode(env, 1, 7, sim.protocol("papers"), "binarize")
        episode.reset()
        assert env._steps == 10 and not episode.success and not episode.is_done()
        for _ in range(4):
            episode.apply_action({"action": np.array([0, 0, 0.5, 0, 0, 0, 0.3], np.float32)})
        assert episode.is_done() and not episode.success  # 10 + 4 = max_steps 14: truncated, not solved
        assert env.privileged()[K.PRIV_GRIPPER].shape == (1,)
        # success is LIBERO's check_success(): it ends the episode as solved
        episode.reset()
        env.env.check_success = lambda: True
        episode.apply_action({"action": np.zeros(7, np.float32)})
        assert episode.success and episode.is_done() and env._steps == 11
    finally:
        env.close()


@pytest.mark.slow
def test_synthetic_libero_dataset_annotate_train_eval(tmp_path):
    """The full path on LeRobot's LIBERO layout: annotate (8-D state) -> train -> eval --env libero."""
    pytest.importorskip("libero")
    from latentvla.cli import main as cli
    from latentvla.data.lerobot import LeRobotDatasetReader
    from latentvla.data.synthetic import write_synthetic_dataset

    data = write_synthetic_dataset(tmp_path / "data", num_episodes=2, length=16, image_size=64, layout="libero")
    assert cli(["annotate", str(data)]) == 0
    ep = LeRobotDatasetReader(data).episode(0)
    assert "carry the alphabet soup to the basket" in ep[K.COT_SUBTASK]  # object and goal from the instruction
    run = tmp_path / "run"
    assert (
        cli(
            [
                "train",
                "--preset",
                "rdvla",
                "--dataset",
                str(data),
                "--out",
                str(run),
                "--steps",
                "2",
                "policy.cameras=image,image2",
                "batch_size=2",
                "save_every=2",
                "log_every=1",
            ]
        )
        == 0
    )
    out = tmp_path / "eval"
    assert (
        cli(
            [
                "eval",
                str(run),
                "--env",
                "libero",
                "--tasks",
                "libero_object:0",
                "--episodes",
                "1",
                "--max-steps",
                "6",
                "--workers",
                "1",
                "--video",
                "--quiet",
                "--out",
                str(out),
            ]
        )
        == 0
    )
    info = json.loads((out / "eval_info.json").read_text())
    (task,) = info["per_task"]
    assert task["task_group"] == "libero_object" and task["metrics"]["lengths"] == [6]
    assert task["metrics"]["n_calls"] == 1  # whole chunk (H=8 >= 6 steps) before re-querying
    p = info["config"]["protocol"]
    assert (p["name"], p["seed"], p["warmup_steps"], info["config"]["seed"]) == ("papers", 7, 10, 7)
    assert p["max_steps"]["libero_object"] == 280 and p["execution_applied"] == "fixed:8"
    assert any(v.endswith(".gif") for v in info["video_paths"])
    # the pool: env processes send their (lazily rendered) observations to the one policy process at query steps
    pooled = tmp_path / "eval_pool"
    assert (
        cli(
            [
                "eval",
                str(run),
                "--env",
                "libero",
                "--tasks",
                "libero_object:0",
                "--episodes",
                "2",
                "--max-steps",
                "6",
                "--workers",
                "2",
                "--quiet",
                "--out",
                str(pooled),
            ]
        )
        == 0
    )
    (task,) = json.loads((pooled / "eval_info.json").read_text())["per_task"]
    assert task["metrics"]["lengths"] == [6, 6] and task["metrics"]["n_calls"] == 2
