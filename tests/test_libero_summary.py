"""docs/results/libero/summary.py: seeds of one model evaluated in different `ablations --out` directories (one
lane per seed) aggregate together instead of the last directory's replacing the others."""

import importlib.util
import json
import sys
from pathlib import Path

SCRIPT = Path(__file__).resolve().parents[1] / "docs" / "results" / "libero" / "summary.py"


def _load():
    spec = importlib.util.spec_from_file_location("libero_summary", SCRIPT)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def _fake_run(out: Path, model: str, seed: int, success: dict[str, float], step: int, seconds: float) -> None:
    ev = out / "eval" / model / f"seed{seed}"
    ev.mkdir(parents=True)
    per_task = [{"task": t, "metrics": {"pc_success": v, "n_episodes": 5}} for t, v in success.items()]
    (ev / "eval_info.json").write_text(json.dumps({"per_task": per_task}))
    run = out / "runs" / model / f"seed{seed}"
    (run / "checkpoints" / "last").mkdir(parents=True)
    (run / "checkpoints" / "last" / "config.json").write_text(json.dumps({"train": {"minutes": None}}))
    (run / "metrics.jsonl").write_text(json.dumps({"step": step, "time": seconds}) + "\n")


def test_seeds_in_separate_directories_aggregate(tmp_path, monkeypatch):
    tasks = ("libero_object/pick_up_the_milk_and_place_it_in_the_basket", "libero_object/pick_up_the_butter")
    _fake_run(tmp_path / "a", "rdvla", 0, dict(zip(tasks, (40.0, 60.0), strict=True)), 1500, 1800.0)
    _fake_run(tmp_path / "a", "bc", 0, dict(zip(tasks, (100.0, 80.0), strict=True)), 1500, 1440.0)
    _fake_run(tmp_path / "b", "rdvla", 1, dict(zip(tasks, (60.0, 80.0), strict=True)), 1500, 1740.0)
    out = tmp_path / "summary"
    argv = ["summary.py", str(tmp_path / "a"), str(tmp_path / "b"), "--suite", "libero_object", "--out", str(out)]
    monkeypatch.setattr(sys, "argv", argv)
    _load().main()
    s = json.loads((out / "summary.json").read_text())["libero_object"]
    assert s["rdvla"]["seed_ids"] == [0, 1]
    assert s["rdvla"]["seeds"] == [50.0, 70.0]
    assert s["rdvla"]["mean"] == 60.0 and abs(s["rdvla"]["std"] - 14.14) < 0.01
    assert s["rdvla"]["steps"] == [1500, 1500] and s["rdvla"]["minutes"] == [30.0, 29.0]
    assert s["rdvla"]["per_task"] == {"milk": 50.0, "butter": 70.0}
    assert s["bc"]["seed_ids"] == [0] and s["bc"]["std"] is None
