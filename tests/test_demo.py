"""The main job end to end at toy scale: collect -> train two presets -> eval -> latency -> report."""

from __future__ import annotations

import json

import pytest

from latentvla.cli import main

pytestmark = [pytest.mark.sim, pytest.mark.slow]


def test_demo_writes_report_and_summary(tmp_path, capsys):
    out = tmp_path / "demo"
    args = ["demo", "--out", str(out), "--tasks", "drawer-close", "--models", "lara,rdvla", "--episodes-per-task",
            "2", "--eval-episodes", "1", "--steps", "3", "--batch-size", "4", "--max-steps", "8", "--workers", "1",
            "--latency-repeats", "1"]  # fmt: skip
    assert main(args) == 0
    summary = json.loads((out / "summary.json").read_text())
    assert set(summary["models"]) == {"lara", "rdvla"}
    assert 0.0 <= summary["best_pc_success"] <= 100.0
    for m in ("lara", "rdvla"):
        assert (out / "runs" / m / "loss.png").is_file()
        assert (out / "eval" / m / "eval_info.json").is_file()
        assert summary["models"][m]["latency"]["latent_ms"] > 0
    stages = {
        json.loads(line).get("stage")
        for line in (out / "runs" / "lara" / "metrics.jsonl").read_text().splitlines()
    }
    assert "III" in stages  # the lara run went through its whole curriculum
    report = (out / "report.md").read_text()
    assert "Success rate" in report and "explicit / latent" in report
    assert "best_pc_success" in capsys.readouterr().out
    # a second run reuses data and checkpoints instead of redoing them
    assert main(args) == 0
