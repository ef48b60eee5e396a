"""Evaluation with one policy and simulator workers, its device plumbing, and interrupted
evaluations that keep their finished episodes and resume."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from test_eval import _checkpoint

torch.set_num_threads(1)


@pytest.fixture(scope="module")
def rd_ckpt(tmp_path_factory):
    return _checkpoint("rdvla", tmp_path_factory.mktemp("rdvla"))


def _obs(policy, i: int) -> dict:
    c, rng = policy.config, np.random.default_rng(i)
    o = {
        f"observation.images.{cam}": rng.integers(0, 255, (c.image_size, c.image_size, 3), dtype=np.uint8)
        for cam in c.cameras
    }
    return o | {
        "observation.state": rng.standard_normal(c.state_dim).astype(np.float32),
        "task": ["reach the goal", "pick up the red block and place it in the bin"][i % 2],
    }


@pytest.mark.parametrize("preset", ["rdvla", "lara"])
def test_one_generator_per_row_draws_what_each_row_draws_alone(preset, tmp_path):
    """A batch of episodes, each with its own generator, gets the noise of unbatched calls: the chunks equal the
    one-by-one chunks up to batched-matmul rounding, and the draws themselves are identical."""
    from latentvla.models.row_rng import draw_per_row
    from latentvla.policy import Policy

    gens = lambda: [torch.Generator().manual_seed(10 + i) for i in range(3)]  # noqa: E731
    rows = draw_per_row((3, 4, 5), gens(), lambda s, g: torch.randn(s, generator=g))
    alone = torch.cat([torch.randn((1, 4, 5), generator=g) for g in gens()])
    assert torch.equal(rows, alone)
    with pytest.raises(ValueError, match="one per row"):
        draw_per_row((2, 4), gens(), lambda s, g: torch.randn(s, generator=g))

    policy = Policy.from_pretrained(_checkpoint(preset, tmp_path))
    obs = [_obs(policy, i) for i in range(3)]
    batched, _ = policy.sample(obs, generator=gens())
    single = np.concatenate([policy.sample([o], generator=g)[0] for o, g in zip(obs, gens())])
    np.testing.assert_allclose(batched, single, atol=1e-5)
    other, _ = policy.sample(obs, generator=[torch.Generator().manual_seed(99 + i) for i in range(3)])
    assert not np.allclose(batched, other, atol=1e-3)  # the generators do reach the draws


def test_device_and_precision_plumbing_on_cpu(rd_ckpt, monkeypatch):
    from latentvla.device import autocast_dtype, resolve_device
    from latentvla.policy import Policy

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert resolve_device("auto") == "cpu" and resolve_device(None) == "cpu"
    with pytest.raises(ValueError, match="--device cuda: .*use --device cpu") as e:
        resolve_device("cuda")
    assert "\n" not in str(e.value)
    with pytest.raises(ValueError, match="use cpu, cuda"):
        resolve_device("tpu")
    assert autocast_dtype("cpu", "auto") is None and autocast_dtype("cpu", "fp32") is None
    assert autocast_dtype("cpu", "bf16") is torch.bfloat16
    policy = Policy.from_pretrained(rd_ckpt)
    obs = [_obs(policy, 0)]
    gen = lambda: [torch.Generator().manual_seed(1)]  # noqa: E731
    assert policy.set_precision("auto") is None  # CPU: fp32, results exactly as before
    fp32, _ = policy.sample(obs, generator=gen())
    assert policy.set_precision("fp32") is None
    np.testing.assert_array_equal(policy.sample(obs, generator=gen())[0], fp32)
    assert policy.set_precision("bf16") is torch.bfloat16  # bf16 autocast really runs (different rounding)
    bf16, _ = policy.sample(obs, generator=gen())
    assert not np.array_equal(bf16, fp32) and np.abs(bf16 - fp32).max() < 0.2


def test_eval_and_serve_refuse_cuda_on_a_cpu_build_in_one_line(rd_ckpt, tmp_path, capsys, monkeypatch):
    from latentvla.cli import main

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    argv = [
        "eval",
        rd_ckpt,
        "--tasks",
        "reach",
        "--episodes",
        "1",
        "--max-steps",
        "2",
        "--workers",
        "1",
        "--quiet",
        "--device",
        "cuda",
        "--out",
        str(tmp_path / "e"),
    ]
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: --device cuda:") and "\n" not in err
    assert main(["serve", rd_ckpt, "--device", "cuda", "--port", "0"]) == 2
    assert "--device cuda:" in capsys.readouterr().err


def test_eval_out_onto_an_existing_file_is_refused_before_the_evaluation_runs(
    rd_ckpt, tmp_path, capsys, monkeypatch
):
    """It used to run every episode, then fail creating the directory."""
    from latentvla.cli import main
    from latentvla.policy import Policy

    def no_load(*a, **k):
        raise AssertionError("the evaluation started before --out was checked")

    monkeypatch.setattr(Policy, "from_pretrained", classmethod(lambda cls, *a, **k: no_load()))
    out = tmp_path / "results.json"
    out.write_text("{}")
    argv = [
        "eval",
        rd_ckpt,
        "--tasks",
        "reach",
        "--episodes",
        "1",
        "--max-steps",
        "2",
        "--workers",
        "1",
        "--quiet",
        "--out",
        str(out),
    ]
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert "is an existing file" in err and "\n" not in err and out.read_text() == "{}"


def test_episode_log_resumes_only_the_same_interrupted_evaluation(tmp_path):
    from latentvla.eval.episodes_log import EpisodeLog

    def ep(i: int) -> dict:
        return {
            "task": "reach-v3",
            "episode": i,
            "success": i == 1,
            "length": 5,
            "iterations": [8],
            "latencies_ms": [1.0],
            "video_paths": [],
            "actions": np.full((5, 4), 0.1 * i, np.float32),
        }

    fp = {"checkpoint": {"path": "x"}, "settings": {"seed": 0}, "tasks": ["reach-v3"], "episodes": 3}
    log = EpisodeLog(tmp_path, fp)
    log.append(ep(0))
    log.append(ep(1))
    log.close()
    with open(tmp_path / "episodes.jsonl", "a") as f:
        f.write('{"task": "reach-v3", "episo')  # killed mid-line
    again = EpisodeLog(tmp_path, fp)
    assert sorted(again.finished) == [("reach-v3", 0), ("reach-v3", 1)]
    np.testing.assert_array_equal(again.finished[("reach-v3", 1)]["actions"], ep(1)["actions"])
    again.close()
    other = EpisodeLog(tmp_path, {**fp, "settings": {"seed": 1}})  # a different evaluation: starts over
    assert not other.finished and other.discarded == 2
    other.append(ep(0))
    other.close()
    (tmp_path / "eval_info.json").write_text("{}")  # a completed evaluation is measured again, never resumed
    assert not EpisodeLog(tmp_path, {**fp, "settings": {"seed": 1}}).finished
    assert not EpisodeLog(tmp_path / "fresh", fp, resume=False).finished


def _reference_rollouts(ckpt: str, jobs: list[tuple[str, int]], seed: int, max_steps: int) -> dict:
    """The one-policy-per-process path evaluation used before (a `PolicyAgent` over `Policy.select_action`)."""
    from latentvla.envs.registry import get_simulator
    from latentvla.eval.episode import SimEpisode, episode_torch_seed
    from latentvla.eval.evaluate import EvalSettings, PolicyAgent
    from latentvla.eval.runtime import ActionRecorder, run_episode
    from latentvla.policy import Policy

    settings = EvalSettings(ckpt, seed=seed, max_steps=max_steps)
    policy = Policy.from_pretrained(ckpt)
    sim, out = get_simulator("metaworld"), {}
    for task, e in jobs:
        env = sim.make(
            task, cameras=tuple(policy.config.cameras), image_size=policy.config.image_size, max_steps=max_steps
        )
        agent = PolicyAgent(policy, settings, episode_torch_seed(seed, sim.task_id(task), e))
        rec = ActionRecorder()
        res = run_episode(
            SimEpisode(env, e, seed, settings.sim_protocol, settings.gripper_mode), agent, max_steps, [rec]
        )
        env.close()
        out[(task, e)] = (res.success, res.length, np.stack(rec.actions))
    return out


@pytest.mark.sim
@pytest.mark.slow
def test_workers_share_one_policy_and_match_the_per_worker_path(rd_ckpt, tmp_path, monkeypatch):
    """workers=1 and workers=2 (batched) against the old path on the same seeds: same successes and lengths;
    workers=1 bit for bit, the batched run to float rounding (max_batch=1 is bitwise: the Ctrl-C test). The env
    workers never load the policy (the checkpoint is moved away once the parent has loaded it)."""
    import shutil

    from latentvla.eval import evaluate as ev

    kw = dict(episodes=2, seed=5, max_steps=10, progress=False)
    jobs = [(t, e) for t in ("reach-v3", "push-v3") for e in range(2)]
    ref = _reference_rollouts(rd_ckpt, jobs, seed=5, max_steps=10)
    ckpt = tmp_path / "ckpt"
    shutil.copytree(rd_ckpt, ckpt)
    loads, load = [], ev.load_eval_policy

    def load_then_hide(settings):
        policy = load(settings)
        loads.append(settings.device)
        Path(settings.run_dir).rename(Path(settings.run_dir).with_name("moved"))  # workers cannot load it now
        return policy

    monkeypatch.setattr(ev, "load_eval_policy", load_then_hide)
    runs = {}
    for name, extra in (("w1", dict(workers=1)), ("w2", dict(workers=2))):
        runs[name] = ev.evaluate(str(ckpt), "reach,push", **kw, **extra)
        (tmp_path / "moved").rename(ckpt)
    assert loads == ["cpu"] * 2  # one policy per evaluation, in this process
    for name, info in runs.items():
        got = {(r["task"], r["episode"]): (r["success"], r["length"]) for r in info["episodes"]}
        assert got == {k: v[:2] for k, v in ref.items()}, name
        for key, (_, _, actions) in ref.items():
            if name == "w2":
                np.testing.assert_allclose(info["actions"][key], actions, atol=1e-4)
            else:
                np.testing.assert_array_equal(info["actions"][key], actions)
        m = info["per_task"][0]["metrics"]
        assert m["n_calls"] == 2 * 3 and m["latency_ms_median"] > 0  # 10 steps / horizon 4 -> 3 calls


@pytest.mark.sim
@pytest.mark.slow
def test_ctrl_c_during_eval_workers_2_exits_fast_keeps_episodes_and_resumes(rd_ckpt, tmp_path):
    """Ctrl-C used to take 21-69 s and lose every finished episode. Now: one line, exit 130 within seconds,
    the finished episodes in OUT/episodes.jsonl, and the same command resumes to the uninterrupted result."""
    from latentvla.eval.evaluate import evaluate

    out = tmp_path / "eval"
    args = ["--tasks", "reach", "--episodes", "5", "--seed", "2", "--max-steps", "32", "--max-batch", "1"]
    cmd = [
        sys.executable,
        "-m",
        "latentvla.cli",
        "eval",
        rd_ckpt,
        *args,
        "--workers",
        "2",
        "--quiet",
        "--out",
        str(out),
    ]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MUJOCO_GL": os.environ.get("MUJOCO_GL", "egl")}
    proc = subprocess.Popen(cmd, stderr=subprocess.PIPE, text=True, env=env, start_new_session=True)
    log = out / "episodes.jsonl"
    deadline = time.time() + 120
    while time.time() < deadline and proc.poll() is None:
        if log.is_file() and len(log.read_text().splitlines()) >= 2:  # header + one finished episode
            break
        time.sleep(0.05)
    assert proc.poll() is None, proc.stderr.read()
    t0 = time.time()
    os.killpg(proc.pid, signal.SIGINT)  # a terminal's Ctrl-C reaches the whole process group
    rc = proc.wait(timeout=30)
    took, err = time.time() - t0, proc.stderr.read().strip()
    assert rc == 130 and took < 10, (rc, took, err)
    assert err.splitlines()[-1].startswith("evaluation interrupted by SIGINT:") and "resume" in err
    kept = len(log.read_text().splitlines()) - 1
    assert 1 <= kept < 5 and not (out / "eval_info.json").exists()
    print(f"Ctrl-C -> exit in {took:.2f} s with {kept} episodes kept")

    # the same evaluation resumes (workers / max_batch are not part of it: any count continues it)
    resumed = evaluate(rd_ckpt, "reach", 5, seed=2, max_steps=32, workers=1, out_dir=out, progress=False)
    assert resumed["overall"]["resumed_episodes"] == kept
    whole = evaluate(rd_ckpt, "reach", 5, seed=2, max_steps=32, workers=1, progress=False)
    assert [(e["success"], e["length"]) for e in resumed["episodes"]] == [
        (e["success"], e["length"]) for e in whole["episodes"]
    ]
    for key, actions in whole["actions"].items():
        np.testing.assert_array_equal(resumed["actions"][key], actions)
    info = json.loads((out / "eval_info.json").read_text())
    assert info["overall"]["n_episodes"] == 5
