"""The main job end to end at toy scale: collect -> train (reasoning + no-reasoning models) -> eval -> latency ->
report; its defaults (the BC baseline's six Meta-World tasks, four models) and the planning / verdict logic."""

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
    assert args.tasks.split(",") == [
        "button-press-topdown",
        "drawer-close",
        "window-open",
        "reach",
        "push",
        "pick-place",
    ]
    assert args.models.split(",") == ["lara", "rdvla", "lara-no-cot", "bc"]
    assert (args.camera, args.image_size, args.minutes) == ("corner4", 64, 30.0)
    assert args.eval_episodes >= 10
    assert args.loader_workers == 1  # lazy PNG decoding runs beside the training process


def test_minutes_per_model_splits_what_is_left_evenly():
    assert demo.minutes_per_model(1000.0, 4) == pytest.approx((250 - demo.SETUP_S) / 60)
    assert demo.minutes_per_model(1000.0, 1) == pytest.approx((1000 - demo.SETUP_S) / 60)
    assert demo.minutes_per_model(-50.0, 4) == demo.minutes_per_model(30.0, 4) == 1.0  # floor: 1 min each


class _StopAfterTraining(Exception):
    pass


def _planned_configs(monkeypatch, tmp_path, *extra: str) -> dict:
    """Run `latentvla demo` up to its evaluation with training replaced by a recorder: {model: TrainConfig}."""
    import latentvla.eval.evaluate
    import latentvla.train.loop

    out = tmp_path / "demo"
    (out / "data" / "meta").mkdir(parents=True)  # collection already done: reused
    (out / "data" / "meta" / "info.json").write_text(json.dumps({"latentvla_collect": {"tasks": ["reach"]}}))
    seen = {}

    def fake_train(cfg, data, run, **kw):
        seen[run.name] = cfg
        return {"end_step": 7, "seconds": 60.0, "samples_per_s": 10.0, "train_elapsed_s": 59.0}

    def stop(*a, **kw):
        raise _StopAfterTraining

    monkeypatch.setattr(latentvla.train.loop, "train", fake_train)
    monkeypatch.setattr(latentvla.eval.evaluate, "evaluate", stop)
    with pytest.raises(_StopAfterTraining):
        main(
            [
                "demo",
                "--out",
                str(out),
                "--models",
                "lara,bc,rdvla",
                "--minutes",
                "30",
                "--eval-episodes",
                "10",
                "--max-steps",
                "200",
                "--workers",
                "2",
                *extra,
            ]
        )
    return seen


def test_default_demo_gives_every_model_the_same_minutes(monkeypatch, tmp_path):
    cfgs = _planned_configs(monkeypatch, tmp_path)
    assert list(cfgs) == ["lara", "bc", "rdvla"]
    # 30 min, less evaluation (3 x (30 s + 1 task x 10 episodes x 200 steps x 12 ms / 2 workers)) and latency (40 s)
    left = 30 * 60 - 3 * (30 + 10 * 200 * 0.012 / 2) - 3 * 40
    minutes = [c.minutes for c in cfgs.values()]
    assert minutes == [minutes[0]] * 3 and minutes[0] == pytest.approx(demo.minutes_per_model(left, 3), abs=0.01)
    assert all(c.steps == demo.SCHEDULE_STEPS for c in cfgs.values())  # the schedule's resolution, not a plan


def test_demo_steps_flag_keeps_fixed_steps(monkeypatch, tmp_path):
    cfgs = _planned_configs(monkeypatch, tmp_path, "--steps", "40")
    assert all(c.steps == 40 and c.minutes is None for c in cfgs.values())


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
    args = [
        "demo",
        "--out",
        str(out),
        "--tasks",
        "drawer-close,reach",
        "--models",
        ",".join(models),
        "--episodes-per-task",
        "2",
        "--eval-episodes",
        "1",
        "--steps",
        "3",
        "--batch-size",
        "4",
        "--max-steps",
        "8",
        "--workers",
        "1",
        "--latency-repeats",
        "1",
    ]
    assert main(args) == 0
    summary = json.loads((out / "summary.json").read_text())
    assert list(summary["models"]) == models
    assert summary["tasks"] == ["drawer-close", "reach"]
    assert set(summary["per_task"]) == {"drawer-close-v3", "reach-v3", "average"}
    for task, row in summary["per_task"].items():
        assert list(row) == models
        for m in models:
            ev = summary["models"][m]["eval"]
            expect = (
                ev["overall"]
                if task == "average"
                else next(t for t in ev["per_task"] if t["task"] == task)["metrics"]
            )["pc_success"]
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
        record = summary["models"][m]
        assert record["steps"] == 3 and record["minutes_budget"] is None  # --steps: the fixed-steps path
        assert record["minutes_used"] > 0 and record["samples_per_s"] > 0
        cfg = json.loads(next((out / "runs" / m / "checkpoints").glob("0*/config.json")).read_text())
        assert cfg["train"]["num_workers"] == 1 and cfg["policy"]["cameras"] == ["corner4"]
    stages = {
        json.loads(line).get("stage")
        for line in (out / "runs" / "lara" / "metrics.jsonl").read_text().splitlines()
    }
    assert "III" in stages  # the lara run went through its whole curriculum
    report = (out / "report.md").read_text()
    assert summary["verdict"] in report and "| drawer-close |" in report and "explicit / latent" in report
    assert "| minutes budgeted | minutes used | samples/s |" in report
    assert "best_pc_success" in capsys.readouterr().out
    # a second run reuses data and checkpoints instead of redoing them
    assert main(args) == 0
