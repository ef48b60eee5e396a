"""The main job end to end at toy scale: collect -> train (reasoning + no-reasoning models) -> eval -> latency ->
report; its defaults (bc-baseline.md's six tasks, four models) and the planning / verdict logic."""

from __future__ import annotations

import argparse
import json

import pytest

from latentvla.cli import main
from latentvla.scripts import demo


def test_defaults_are_the_six_baseline_tasks_and_four_models():
    parser = argparse.ArgumentParser()
    demo.register(parser.add_subparsers())
    args = parser.parse_args(["demo"])
    assert args.tasks.split(",") == ["button-press-topdown", "drawer-close", "window-open", "reach", "push",
                                     "pick-place"]  # fmt: skip
    assert args.models.split(",") == ["lara", "rdvla", "lara-no-cot", "bc"]
    assert (args.camera, args.image_size, args.minutes) == ("corner4", 64, 30.0)
    assert args.eval_episodes >= 10
    assert args.loader_workers == 1  # lazy PNG decoding runs beside the training process


def test_equal_wall_clock_per_model():
    rates = {"lara": 4.0, "bc": 16.0, "rdvla": 2.0}  # optimizer steps per second
    steps = demo.plan_steps(rates, budget_s=300.0)
    seconds = {m: steps[m] / rates[m] for m in rates}
    assert max(seconds.values()) - min(seconds.values()) < 0.5  # same minutes each, not the same steps
    assert steps["bc"] == 8 * steps["rdvla"] > 0
    assert sum(seconds.values()) <= 300.0


def test_reasoning_verdict():
    win = demo.reasoning_verdict({"lara": 81.0, "rdvla": 70.0, "bc": 70.0, "lara-no-cot": 60.0})
    assert win.startswith("Reasoning paid") and "lara (81.0 %)" in win
    lose = demo.reasoning_verdict({"lara": 65.0, "rdvla": 70.0, "bc": 72.5, "lara-no-cot": 60.0})
    assert lose.startswith("Reasoning did not pay") and "rdvla (70.0 %)" in lose and "lost to bc" in lose
    tie = demo.reasoning_verdict({"rdvla": 70.0, "lara-no-cot": 70.0})
    assert "tied" in tie
    assert "not compared" in demo.reasoning_verdict({"lara": 50.0, "rdvla": 40.0})


@pytest.mark.sim
@pytest.mark.slow
def test_demo_writes_report_and_summary(tmp_path, capsys):
    out = tmp_path / "demo"
    models = ["lara", "rdvla", "lara-no-cot", "bc"]
    args = ["demo", "--out", str(out), "--tasks", "drawer-close,reach", "--models", ",".join(models),
            "--episodes-per-task", "2", "--eval-episodes", "1", "--steps", "3", "--batch-size", "4", "--max-steps",
            "8", "--workers", "1", "--latency-repeats", "1"]  # fmt: skip
    assert main(args) == 0
    summary = json.loads((out / "summary.json").read_text())
    assert list(summary["models"]) == models
    assert summary["tasks"] == ["drawer-close", "reach"]
    assert set(summary["per_task"]) == {"drawer-close-v3", "reach-v3", "average"}
    for task, row in summary["per_task"].items():
        assert list(row) == models
        for m in models:
            ev = summary["models"][m]["eval"]
            expect = (ev["overall"] if task == "average" else
                      next(t for t in ev["per_task"] if t["task"] == task)["metrics"])["pc_success"]  # fmt: skip
            assert row[m] == expect
    assert summary["best_pc_success"] == max(summary["per_task"]["average"].values())
    assert summary["best_model"] in models
    assert summary["verdict"] == demo.reasoning_verdict(summary["per_task"]["average"])
    assert summary["elapsed_s"] > 0 and summary["elapsed_min"] == pytest.approx(
        summary["elapsed_s"] / 60, abs=0.01
    )
    for m in models:
        assert (out / "runs" / m / "loss.png").is_file()
        assert (out / "eval" / m / "eval_info.json").is_file()
        assert summary["models"][m]["latency"]["latent_ms"] > 0
        assert summary["models"][m]["steps"] == 3
        cfg = json.loads(next((out / "runs" / m / "checkpoints").glob("0*/config.json")).read_text())
        assert cfg["train"]["num_workers"] == 1 and cfg["policy"]["cameras"] == ["corner4"]
    stages = {
        json.loads(line).get("stage")
        for line in (out / "runs" / "lara" / "metrics.jsonl").read_text().splitlines()
    }
    assert "III" in stages  # the lara run went through its whole curriculum
    report = (out / "report.md").read_text()
    assert summary["verdict"] in report and "| drawer-close |" in report and "explicit / latent" in report
    assert "best_pc_success" in capsys.readouterr().out
    # a second run reuses data and checkpoints instead of redoing them
    assert main(args) == 0
