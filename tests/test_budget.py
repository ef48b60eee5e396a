"""Wall-clock-budgeted training (`minutes`, train/budget.py): the schedule follows elapsed time, the run stops at
the budget (or at `steps`), resume continues the clock. A fake clock drives the loop; nothing here reads time."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from latentvla.config import apply_overrides, get_preset
from latentvla.train.budget import projected_steps, schedule_position
from latentvla.train.checkpoint import latest_checkpoint, load_training_state
from latentvla.train.curriculum import stage_at, stage_boundaries
from latentvla.train.logging import read_metrics
from latentvla.train.optim import lr_multiplier

COMMON = ["batch_size=2", "log_every=1", "save_every=1000", "num_workers=0", "warmup_frac=0.2", "policy.horizon=4"]


class FakeClock:
    """Returns 0 on its first call (the loop's start), then advances by the next increment on every call
    (the loop reads it once per step); the last increment repeats."""

    def __init__(self, *increments: float, start: float = 0.0) -> None:
        self.t, self.increments, self.calls = start, list(increments), 0

    def __call__(self) -> float:
        if self.calls:
            self.t += self.increments[min(self.calls - 1, len(self.increments) - 1)]
        self.calls += 1
        return self.t


@pytest.fixture(scope="module")
def dataset(tmp_path_factory) -> Path:
    from latentvla.data.synthetic import write_synthetic_dataset

    return write_synthetic_dataset(tmp_path_factory.mktemp("data") / "ds", num_episodes=2, length=8, image_size=32)


def _cfg(steps: int, *extra: str, preset: str = "lara"):
    return apply_overrides(get_preset(preset, "micro"), [f"steps={steps}", *COMMON, *extra])


def _train(cfg, dataset, run, clock=None, **kw):
    from latentvla.train.loop import train

    return train(cfg, dataset, run, show_progress=False, **({"clock": clock} if clock else {}), **kw)


def _weights(run: Path) -> dict[str, torch.Tensor]:
    return load_file(str(latest_checkpoint(run) / "model.safetensors"))


def _max_diff(a: dict, b: dict) -> float:
    assert a.keys() == b.keys()
    return max((a[k].float() - b[k].float()).abs().max().item() for k in a)


def test_schedule_position_known_values():
    assert [schedule_position(e, 10.0, 20) for e in (0, 0.49, 0.5, 1, 5, 9.99)] == [0, 0, 1, 2, 10, 19]
    assert schedule_position(10.0, 10.0, 20) == schedule_position(1e6, 10.0, 20) == 19  # clamped to the last
    assert schedule_position(-3.0, 10.0, 20) == 0
    assert schedule_position(7.0, 7.0, 1) == 0
    grid = [schedule_position(e / 10, 30.0, 1000) for e in range(400)]
    assert grid == sorted(grid) and grid[0] == 0 and grid[-1] == 999  # monotone, covers the schedule
    for bad in ((1.0, 0.0, 10), (1.0, 10.0, 0)):
        with pytest.raises(ValueError):
            schedule_position(*bad)


def test_projected_steps_known_values():
    assert projected_steps(10, 5.0, 20.0, 1000) == 40  # 2 steps/s for 20 s
    assert projected_steps(3, 3.0, 10.0, 1000) == 10
    assert projected_steps(10, 0.0, 20.0, 1000) == projected_steps(0, 5.0, 20.0, 1000) == 1000  # no pace yet
    assert projected_steps(10, 100.0, 20.0, 1000) == 10  # past the budget: never fewer than done
    assert projected_steps(10, 0.01, 20.0, 50) == 50  # never more than the cap
    with pytest.raises(ValueError):
        projected_steps(1, 1.0, 0.0, 10)


def test_budget_with_one_position_per_second_equals_the_step_run(dataset, tmp_path):
    """Budget = steps seconds and 1 s per step: position == step, the projected run length == steps, so the
    budgeted path must reproduce the step-based run exactly (stages, LRs, mixing, EMA, weights)."""
    steps = 10  # lara: all five stages, stage mixing on
    by_steps = _train(_cfg(steps), dataset, tmp_path / "steps", clock=_no_clock)
    by_time = _train(_cfg(steps, f"minutes={steps / 60}"), dataset, tmp_path / "time", clock=FakeClock(1.0))
    assert by_time["end_step"] == by_steps["end_step"] == steps and by_time["train_elapsed_s"] == steps
    assert _max_diff(_weights(tmp_path / "steps"), _weights(tmp_path / "time")) == 0.0
    a, b = read_metrics(tmp_path / "steps" / "metrics.jsonl"), read_metrics(tmp_path / "time" / "metrics.jsonl")
    assert [r["position"] for r in b] == list(range(steps)) and [r["elapsed_s"] for r in b] == list(range(1, 11))
    skip = {"position", "elapsed_s", "time", "steps_per_s", "samples_per_s"}
    assert [{k: v for k, v in r.items() if k not in skip} for r in b] == [
        {k: v for k, v in r.items() if k not in skip} for r in a
    ]
    assert "position" not in a[0] and "elapsed_s" not in a[0]  # the step-based rows are as before


def _no_clock() -> float:
    raise AssertionError("a step-based run must not read the clock")


def test_stops_at_the_budget_and_the_schedule_follows_elapsed_time(dataset, tmp_path):
    cfg = _cfg(20, "minutes=0.5")  # 30 s over 20 positions: position = floor(2/3 * elapsed)
    summary = _train(cfg, dataset, tmp_path / "run", clock=FakeClock(3.0))
    assert summary["end_step"] == 10 and summary["train_elapsed_s"] == 30.0 and summary["minutes"] == 0.5
    rows = read_metrics(tmp_path / "run" / "metrics.jsonl")
    assert [r["step"] for r in rows] == list(range(1, 11))
    assert [r["position"] for r in rows] == [0, 2, 4, 6, 8, 10, 12, 14, 16, 18]

    # uneven pace: four fast steps, then slow ones; the schedule follows the seconds, not the step count
    clock = FakeClock(0.75, 0.75, 0.75, 0.75, 6.0)
    summary = _train(cfg, dataset, tmp_path / "uneven", clock=clock)
    rows = read_metrics(tmp_path / "uneven" / "metrics.jsonl")
    elapsed = [0.0, 0.75, 1.5, 2.25, 3.0, 9.0, 15.0, 21.0, 27.0]  # at each step's start; 33 s ends the run
    assert summary["end_step"] == len(rows) == len(elapsed) and summary["train_elapsed_s"] == 33.0
    positions = [int(20 * e / 30) for e in elapsed]
    assert [r["position"] for r in rows] == positions == [0, 0, 1, 1, 2, 6, 10, 14, 18]
    cur = cfg.policy.curriculum
    bounds = [s for s, _ in stage_boundaries(cur, 20)]
    for row, p in zip(rows, positions):
        stage = stage_at(p, cur, 20)
        assert row["stage"] == stage.name
        expect = cfg.lr_head * stage.lr_head * lr_multiplier(p, bounds, 20, cfg.warmup_frac, cfg.min_lr_frac)
        assert row["lr_head"] == pytest.approx(expect, rel=1e-12)
    # stage starts at positions 4, 6, 8, 10 of 20: the slow steps jump over II-1 and II-3, as the minutes say
    assert [r["stage"] for r in rows] == ["I"] * 5 + ["II-2", "III", "III", "III"]
    state = load_training_state(latest_checkpoint(tmp_path / "uneven"))
    assert state["elapsed_s"] == 33.0 and state["schedule_position"] == 18
    assert latest_checkpoint(tmp_path / "uneven").name == f"{len(rows):06d}"  # saved at the real step count


def test_slow_clock_stops_at_the_step_cap(dataset, tmp_path):
    summary = _train(_cfg(6, "minutes=0.5", preset="rdvla"), dataset, tmp_path / "run", clock=FakeClock(0.01))
    assert summary["end_step"] == 6 and summary["train_elapsed_s"] == pytest.approx(0.06)
    rows = read_metrics(tmp_path / "run" / "metrics.jsonl")
    assert [r["position"] for r in rows] == [0] * 6  # 0.06 s of 30 s: still at the schedule's start


@pytest.mark.slow  # ~6 s: two trainings; keeps the quick loop under 2 minutes
def test_resume_continues_the_clock(dataset, tmp_path):
    cfg = _cfg(20, "minutes=0.5", "augment=true")
    _train(cfg, dataset, tmp_path / "full", clock=FakeClock(3.0))
    first = _train(cfg, dataset, tmp_path / "split", clock=FakeClock(3.0), stop_at=4)
    assert first["end_step"] == 4 and first["train_elapsed_s"] == 12.0
    # a fresh process: its clock reads something else entirely; the saved 12 s continue
    second = _train(cfg, dataset, tmp_path / "split", clock=FakeClock(3.0, start=5e4), resume=True)
    assert second["start_step"] == 4 and second["end_step"] == 10 and second["train_elapsed_s"] == 30.0
    full, split = (read_metrics(tmp_path / r / "metrics.jsonl") for r in ("full", "split"))
    assert [(r["step"], r["position"], r["stage"]) for r in split] == [
        (r["step"], r["position"], r["stage"]) for r in full
    ]
    assert [r["loss"] for r in split] == pytest.approx([r["loss"] for r in full], abs=1e-5)
    assert _max_diff(_weights(tmp_path / "full"), _weights(tmp_path / "split")) <= 1e-5
    with pytest.raises(ValueError, match="already used its 0.5-minute budget"):
        _train(cfg, dataset, tmp_path / "split", clock=FakeClock(3.0), resume=True)
    with pytest.raises(ValueError, match="differs from the checkpoint"):  # another budget would jump the schedule
        _train(_cfg(20, "minutes=1"), dataset, tmp_path / "split", clock=FakeClock(3.0), resume=True)


def test_cli_minutes_flag(dataset, tmp_path, capsys):
    from latentvla.cli import main
    from latentvla.scripts import train as train_cli

    parser = argparse.ArgumentParser()
    train_cli.register(parser.add_subparsers())
    args = parser.parse_args(["train", "--preset", "bc", "--dataset", "d", "--out", "o", "--minutes", "2.5"])
    assert train_cli.build_config(args).minutes == 2.5
    assert train_cli.build_config(parser.parse_args(["train", "--preset", "bc", "--dataset", "d", "--out", "o"]))
    argv = ["train", "--preset", "bc", "--dataset", str(dataset), "--out", str(tmp_path / "r"), "--minutes", "0"]
    assert main(argv) == 2
    assert "minutes is a training budget > 0" in capsys.readouterr().err
    # a real (tiny) budgeted run through the CLI: it ends by the cap or the budget, and says which step it reached
    argv[-1] = "5"
    assert main([*argv, "--steps", "3", "--batch-size", "2", "--no-progress", "policy.horizon=4"]) == 0
    out = json.loads(capsys.readouterr().out.strip().splitlines()[-2])
    assert out["end_step"] == 3 and out["minutes"] == 5.0 and out["train_elapsed_s"] > 0


def _ddp_worker(rank: int, world: int, port: int, cfg, dataset: str, run: str) -> None:
    import os

    os.environ.update(
        MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), WORLD_SIZE=str(world), LOCAL_RANK=str(rank)
    )
    torch.set_num_threads(1)
    _train(cfg, dataset, run, clock=FakeClock(3.0 if rank == 0 else 2.0))  # rank 1's clock runs slower


@pytest.mark.slow
def test_ddp_ranks_agree_on_the_clock(dataset, tmp_path):
    """Ranks whose clocks disagree take the maximum: same positions, same stop, same weights as one process."""
    import socket

    import torch.multiprocessing as mp

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    cfg = _cfg(20, "minutes=0.5", "batch_size=4", "augment=false", preset="ecot")  # no per-rank noise
    _train(cfg, dataset, tmp_path / "single", clock=FakeClock(3.0))
    mp.spawn(_ddp_worker, args=(2, port, cfg, str(dataset), str(tmp_path / "ddp")), nprocs=2, join=True)
    single, ddp = (read_metrics(tmp_path / r / "metrics.jsonl") for r in ("single", "ddp"))
    assert [(r["step"], r["position"], r["lr_head"]) for r in ddp] == [
        (r["step"], r["position"], r["lr_head"]) for r in single
    ]
    assert len(ddp) == 10 and latest_checkpoint(tmp_path / "ddp").name == "000010"
    assert _max_diff(_weights(tmp_path / "single"), _weights(tmp_path / "ddp")) <= 2e-5
