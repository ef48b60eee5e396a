"""`latentvla ablations` (CoT ladder x seeds -> mean ± std table) and runs/rd_depth.sh (RD depth / halting sweeps):
the aggregation maths, bad input, and tiny end-to-end smoke runs of both scripts."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from latentvla.cli import main
from latentvla.data.synthetic import write_synthetic_dataset
from latentvla.scripts.ablations import aggregate, format_table, mean_std

ROOT = Path(__file__).resolve().parents[1]


def test_mean_and_sample_std_over_seeds():
    per_run = {
        "lara": {0: {"a": 100.0, "b": 0.0}, 1: {"a": 80.0, "b": 40.0}, 2: {"a": 60.0, "b": 20.0}},
        "lara-no-cot": {0: {"a": 50.0, "b": 50.0}},
    }
    agg = aggregate(per_run)
    assert agg["lara"]["a"] == pytest.approx((80.0, 20.0))  # sample std (ddof 1) of 100, 80, 60
    assert agg["lara"]["b"] == pytest.approx((20.0, 20.0))
    # the average is per seed first (50, 60, 40), then over seeds
    assert agg["lara"]["average"] == pytest.approx((50.0, 10.0))
    assert agg["lara-no-cot"]["average"] == (50.0, 0.0)  # one seed: no spread
    assert mean_std([3.0]) == (3.0, 0.0)
    table = format_table(agg, 3)
    assert "| lara | 80.0 ± 20.0 | 20.0 ± 20.0 | **50.0 ± 10.0** | 68.8 |" in table
    assert "| lara-no-cot | 50.0 ± 0.0 | 50.0 ± 0.0 | **50.0 ± 0.0** | 55.2 |" in table


def test_bad_input_is_one_line_exit_2(tmp_path, capsys):
    assert main(["ablations", "--dataset", str(tmp_path / "nope"), "--out", str(tmp_path / "o")]) == 2
    assert "not a LeRobot dataset" in capsys.readouterr().err
    assert (
        main(["ablations", "--dataset", str(tmp_path), "--out", str(tmp_path / "o"), "--presets", "lara-no-co"])
        == 2
    )
    assert "lara-no-cot" in capsys.readouterr().err  # did-you-mean


@pytest.mark.sim
@pytest.mark.slow
def test_ablations_smoke_two_presets_two_seeds(tmp_path):
    data = write_synthetic_dataset(tmp_path / "data", num_episodes=2, length=8, image_size=64)
    out = tmp_path / "abl"
    args = [
        "ablations",
        "--dataset",
        str(data),
        "--out",
        str(out),
        "--presets",
        "lara-no-cot,lara-explicit",
        "--seeds",
        "0,1",
        "--steps",
        "2",
        "--tasks",
        "drawer-close",
        "--episodes",
        "1",
        "--max-steps",
        "4",
        "--workers",
        "1",
        "batch_size=2",
        "log_every=1",
    ]
    assert main(args) == 0
    res = json.loads((out / "ablations.json").read_text())
    assert set(res["per_run"]) == {"lara-no-cot", "lara-explicit"}
    for preset in res["per_run"]:
        assert set(res["per_run"][preset]) == {"0", "1"}
        for seed in (0, 1):
            cfg = json.loads(
                next((out / "runs" / preset / f"seed{seed}" / "checkpoints").glob("0*/config.json")).read_text()
            )
            assert cfg["train"]["seed"] == seed and cfg["train"]["steps"] == 2
            info = json.loads((out / "eval" / preset / f"seed{seed}" / "eval_info.json").read_text())
            assert res["per_run"][preset][str(seed)] == {
                t["task"]: t["metrics"]["pc_success"] for t in info["per_task"]
            }
    md = (out / "ablations.md").read_text()
    assert "lara-explicit" in md and "± " in md and (out / "ablations.png").read_bytes()[:4] == b"\x89PNG"
    # a re-run reuses every checkpoint and evaluation
    stamp = (out / "eval" / "lara-explicit" / "seed1" / "eval_info.json").stat().st_mtime_ns
    assert main(args) == 0
    assert (out / "eval" / "lara-explicit" / "seed1" / "eval_info.json").stat().st_mtime_ns == stamp


@pytest.mark.sim
@pytest.mark.slow
def test_rd_depth_script_smoke(tmp_path):
    data = write_synthetic_dataset(tmp_path / "data", num_episodes=2, length=8, image_size=64)
    out = tmp_path / "rd"
    bindir = str(Path(sys.executable).parent)
    env = {
        **os.environ,
        "OUT": str(out),
        "EPISODES": "1",
        "MAX_STEPS": "4",
        "TASKS": "drawer-close",
        "ITERS": "1,2",
        "DELTAS": "1e-3,1e-2",
        "MAX_ITERS": "4",
        "EXTRA": "batch_size=2 log_every=1",
        "PATH": bindir + os.pathsep + os.environ.get("PATH", ""),
        "PYTHONPATH": str(ROOT / "src"),
    }
    assert shutil.which("latentvla", path=env["PATH"])
    subprocess.run(["bash", str(ROOT / "runs" / "rd_depth.sh"), str(data), "2"], env=env, check=True, timeout=900)
    cfg = json.loads(next((out / "rdvla32" / "checkpoints").glob("0*/config.json")).read_text())
    assert cfg["policy"]["recurrent"]["mean_recurrence"] == 32
    assert any((out / "sweep_iterations").glob("*.png")) and any((out / "sweep_delta").glob("*.png"))


def _toy_dataset(path: Path) -> Path:
    """Four episodes of the toy 1-D reach (tests/rl_toy_sim.py) driven straight at the goal, in the LeRobot layout."""
    import numpy as np

    from latentvla.constants import ACTION, OBS_IMAGES, OBS_STATE, TASK
    from latentvla.data.lerobot import DatasetWriter
    from rl_toy_sim import SIMULATOR

    writer = DatasetWriter(path, fps=SIMULATOR.fps, robot_type=SIMULATOR.robot_type)
    for i in range(4):
        env = SIMULATOR.make("reach1d", image_size=32, max_steps=30)
        obs, _ = env.reset(episode=i, split="train")
        frames = []
        for _ in range(12):
            a = np.array([np.clip((env.goal - env.x) / 0.1, -1, 1)], np.float32)
            frames.append((obs, a))
            obs, *_ = env.step(a)
        writer.add_episode(
            {
                f"{OBS_IMAGES}.corner4": np.stack([o[f"{OBS_IMAGES}.corner4"] for o, _ in frames]),
                OBS_STATE: np.stack([o[OBS_STATE] for o, _ in frames]),
                ACTION: np.stack([a for _, a in frames]),
                TASK: obs[TASK],
            },
            key=f"reach1d/{i}",
        )
    writer.finalize()
    return path


@pytest.mark.slow  # trains and evaluates two policies
def test_ablations_on_another_simulator_with_a_wall_clock_budget(tmp_path, monkeypatch):
    """`--env` evaluates under that simulator's protocol (its own step cap when --max-steps is not given),
    `--minutes` gives every run the same wall clock, and both are recorded; --tasks is required off Meta-World."""
    from rl_toy_sim import register

    register(monkeypatch)
    data = _toy_dataset(tmp_path / "data")
    out = tmp_path / "abl"
    base = ["ablations", "--dataset", str(data), "--out", str(out), "--env", "reach1d", "--seeds", "0"]
    assert main([*base, "--presets", "bc"]) == 2  # no --tasks off Meta-World: one line, exit 2
    args = [*base, "--tasks", "reach1d", "--presets", "bc,rdvla", "--steps", "50", "--minutes", "0.02"]
    assert main([*args, "--episodes", "2", "--workers", "1", "batch_size=4", "policy.image_size=32"]) == 0
    res = json.loads((out / "ablations.json").read_text())
    assert (res["env"], res["minutes"], set(res["per_run"])) == ("reach1d", 0.02, {"bc", "rdvla"})
    for preset in ("bc", "rdvla"):
        cfg = json.loads(
            next((out / "runs" / preset / "seed0" / "checkpoints").glob("0*/config.json")).read_text()
        )
        assert cfg["train"]["minutes"] == 0.02 and cfg["train"]["steps"] == 50
        info = json.loads((out / "eval" / preset / "seed0" / "eval_info.json").read_text())
        assert info["config"]["env"] == "reach1d" and info["config"]["protocol"]["max_steps"] == 30
        assert [t["task"] for t in info["per_task"]] == ["reach1d"]
