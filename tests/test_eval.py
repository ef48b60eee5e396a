"""Evaluation runtime, Meta-World eval (determinism, LeRobot schema), depth sweeps and latent analysis."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from latentvla.eval.runtime import ActionRecorder, run_episode

torch.set_num_threads(1)


def _stats(n: int) -> dict:
    one = np.ones(n)
    return {
        "mean": 0 * one,
        "std": one,
        "min": -one,
        "max": one,
        "q01": -one,
        "q99": one,
        "count": np.array([100]),
    }


def _checkpoint(preset: str, path) -> str:
    from latentvla.config import get_preset
    from latentvla.data.stats import Normalizer
    from latentvla.policy import Policy

    torch.manual_seed(0)
    cfg = get_preset(preset)
    normalizer = Normalizer({"observation.state": _stats(4), "action": _stats(4)})
    Policy(cfg.policy, normalizer).save_pretrained(path)
    return str(path)


@pytest.fixture(scope="module")
def rd_ckpt(tmp_path_factory):
    return _checkpoint("rdvla", tmp_path_factory.mktemp("rdvla"))


@pytest.fixture(scope="module")
def lara_ckpt(tmp_path_factory):
    return _checkpoint("lara", tmp_path_factory.mktemp("lara"))


# ------------------------------------------------------------------------------------- runtime (no sim)


class _CountdownEnv:
    def __init__(self, solve_at: int) -> None:
        self.solve_at, self.success, self.t = solve_at, False, 0

    def reset(self) -> None:
        self.t, self.success = 0, False

    def observe(self) -> dict:
        return {"t": self.t}

    def apply_action(self, action: dict) -> None:
        self.t += 1
        self.success = self.t >= self.solve_at

    def is_done(self) -> bool:
        return self.success


class _ChunkAgent:
    """Infers a chunk every 3 steps (like a policy with an action queue), reporting depth 5."""

    def reset(self) -> None:
        self.n = 0

    def get_action(self, observation: dict) -> dict:
        chunk, self.n = self.n % 3 == 0, self.n + 1
        return {"action": np.full(4, observation["t"], np.float32), "chunk": chunk, "iterations": 5}


def test_run_episode_stops_on_success_and_times_only_inference_calls():
    rec = ActionRecorder()
    res = run_episode(_CountdownEnv(solve_at=7), _ChunkAgent(), max_steps=50, subscribers=[rec])
    assert res.success and res.length == 7
    assert len(res.latencies_ms) == 3 and res.iterations == [5, 5, 5]  # steps 0, 3, 6
    assert [a[0] for a in rec.actions] == list(range(7))
    res = run_episode(_CountdownEnv(solve_at=100), _ChunkAgent(), max_steps=4)
    assert not res.success and res.length == 4
    with pytest.raises(ValueError, match="max_steps"):
        run_episode(_CountdownEnv(1), _ChunkAgent(), max_steps=0)


def test_parse_halting_specs():
    from latentvla.eval.evaluate import parse_halting

    assert parse_halting(None) is None
    assert parse_halting("mse:5e-4").delta == pytest.approx(5e-4)
    assert parse_halting("cosine:0.99").threshold == pytest.approx(0.99)
    for bad, msg in (("mse", "needs a threshold"), ("mse:abc", "not a number"), ("fixed:1", "takes no")):
        with pytest.raises(ValueError, match=msg):
            parse_halting(bad)


def test_sweep_rejects_checkpoint_without_recurrent_head(lara_ckpt, tmp_path):
    from latentvla.eval.sweeps import sweep_iterations

    with pytest.raises(ValueError, match="recurrent-depth checkpoint"):
        sweep_iterations(lara_ckpt, "reach", 1, [1, 2], out_dir=tmp_path)


# ------------------------------------------------------------------------------------------ Meta-World


@pytest.mark.sim
def test_eval_is_deterministic_and_writes_lerobot_schema(rd_ckpt, tmp_path):
    from latentvla.cli import main as cli
    from latentvla.eval.evaluate import evaluate

    kw = dict(episodes=1, seed=3, max_steps=12, workers=1, progress=False)
    a = evaluate(rd_ckpt, "reach", out_dir=tmp_path / "a", **kw)
    b = evaluate(rd_ckpt, "reach", out_dir=tmp_path / "b", **kw)
    key = ("reach-v3", 0)
    np.testing.assert_array_equal(a["actions"][key], b["actions"][key])
    assert a["episodes"][0]["length"] == b["episodes"][0]["length"] == 12
    other = evaluate(rd_ckpt, "reach", **{**kw, "seed": 4})
    assert not np.array_equal(a["actions"][key], other["actions"][key])  # the seed reaches the rollout

    assert (
        cli(
            [
                "eval",
                rd_ckpt,
                "--tasks",
                "reach",
                "--episodes",
                "1",
                "--seed",
                "3",
                "--max-steps",
                "12",
                "--workers",
                "1",
                "--quiet",
                "--out",
                str(tmp_path / "c"),
            ]
        )
        == 0
    )
    info = json.loads((tmp_path / "c" / "eval_info.json").read_text())
    assert info["overall"]["pc_success"] == a["overall"]["pc_success"]
    assert info["overall"]["n_episodes"] == 1 and info["overall"]["eval_s"] > 0
    (task,) = info["per_task"]
    assert task["task"] == "reach-v3" and task["task_group"] == "easy"
    m = task["metrics"]
    assert m["n_episodes"] == 1 and m["avg_length"] == 12
    assert m["pc_success"] == 100.0 * sum(bool(e["success"]) for e in a["episodes"]) / len(a["episodes"])
    assert m["n_calls"] == 3  # 12 steps / execution horizon 4 (rdvla default "fixed:4")
    assert m["avg_iterations"] == 8 and m["latency_ms_median"] > 0  # rdvla's default test-time depth
    assert "| reach-v3 | easy |" in (tmp_path / "c" / "eval_table.md").read_text()


@pytest.mark.sim
def test_sweep_iterations_writes_table_and_plot(rd_ckpt, tmp_path):
    from latentvla.eval.sweeps import sweep_iterations

    res = sweep_iterations(rd_ckpt, "reach", 1, [1, 2], out_dir=tmp_path, max_steps=4, workers=1, progress=False)
    assert [p["iterations"] for p in res["points"]] == [1, 2]
    assert [p["avg_iterations"] for p in res["points"]] == [1.0, 2.0]  # fixed depth is what ran
    for name in ("sweep_iterations.png", "sweep_iterations.md", "iterations_1/eval_info.json"):
        assert (tmp_path / name).is_file()
    assert (tmp_path / "sweep_iterations.png").read_bytes()[:4] == b"\x89PNG"


# ---------------------------------------------------------------------------------------- latent analysis


def test_analyze_latents_plots_components_and_scores(lara_ckpt, tmp_path):
    from latentvla.cli import main as cli
    from latentvla.data.synthetic import write_synthetic_dataset
    from latentvla.policy import Policy

    size = Policy.from_pretrained(lara_ckpt).config.image_size
    data = write_synthetic_dataset(tmp_path / "data", num_episodes=2, length=6, image_size=size)
    out = tmp_path / "latents.png"
    assert (
        cli(["analyze", "latents", lara_ckpt, "--dataset", str(data), "--out", str(out), "--max-samples", "6"])
        == 0
    )
    assert out.read_bytes()[:4] == b"\x89PNG"
    res = json.loads(out.with_suffix(".json").read_text())
    assert res["components"] == ["subtask", "bbox", "reasoning"] and res["n_samples"] == 6
    # even untrained, each thinking token sits at its own position after a different prefix (eval/latents.py):
    # clearly separated; a collapse of the three latents would score ~0
    assert res["silhouette"] > 0.2 and res["centroid_accuracy"] > 0.9, res


def test_analyze_latents_rejects_checkpoint_without_thinking_tokens(rd_ckpt, tmp_path):
    from latentvla.data.synthetic import write_synthetic_dataset
    from latentvla.eval.latents import analyze_latents
    from latentvla.policy import Policy

    size = Policy.from_pretrained(rd_ckpt).config.image_size
    data = write_synthetic_dataset(tmp_path / "data", num_episodes=1, length=4, image_size=size)
    with pytest.raises(ValueError, match="no thinking tokens"):
        analyze_latents(rd_ckpt, data, tmp_path / "x.png")


def test_latent_separation_scores_on_known_clusters():
    from latentvla.eval.latents import centroid_accuracy, silhouette

    rng = np.random.default_rng(0)
    labels = np.repeat(np.array(["subtask", "bbox"]), 20)
    apart = np.concatenate([rng.normal(0, 1, (20, 6)), rng.normal(10, 1, (20, 6))])
    mixed = rng.normal(0, 1, (40, 6))
    assert silhouette(apart, labels) > 0.7 and centroid_accuracy(apart, labels) == 1.0
    assert abs(silhouette(mixed, labels)) < 0.1 and silhouette(apart, labels) > silhouette(mixed, labels)


def test_sweep_iterations_plot_draws_rd_vla_fig4_beside_the_run(tmp_path, monkeypatch):
    import matplotlib.pyplot as plt

    from latentvla.eval import sweeps

    drawn = []
    monkeypatch.setattr(plt, "close", lambda fig: drawn.append(fig))  # keep the figure to inspect its lines
    points = [{"iterations": k, "pc_success": s} for k, s in ((1, 10.0), (4, 30.0), (12, 35.0))]
    sweeps.plot_sweep_iterations(points, tmp_path / "s.png")
    lines = drawn[0].axes[0].get_lines()
    assert [list(line.get_xdata()) for line in lines] == [[1, 4, 12], list(sweeps.PAPER_FIG4)]
    assert list(lines[1].get_ydata()) == [8.4, 40.5, 84.1, 92.6, 93.0]
    assert (tmp_path / "s.png").read_bytes()[:4] == b"\x89PNG"
