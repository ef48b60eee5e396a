"""The training schedules (train/schedule.py): the step schedule and the wall-clock budget schedule give each
optimizer step its position, stage, Adam reset and LR exactly as the inline loop did before the schedule objects (the
formulas are restated here), stop where they should, and `state()` round-trips through a checkpoint so that a
resumed schedule continues exactly. End-to-end equality (weights, metrics) is in test_budget.py / test_faults.py."""

from __future__ import annotations

import io
import math

import pytest
import torch

from latentvla.config import apply_overrides, get_preset
from latentvla.train.curriculum import stage_at, stage_boundaries, training_stage
from latentvla.train.optim import build_optimizer, set_lrs
from latentvla.train.schedule import BudgetSchedule, StepSchedule, build_schedule

CFG = apply_overrides(get_preset("lara", "micro"), ["steps=20", "warmup_frac=0.2"])
CUR = CFG.policy.curriculum


def _no_stop(values: list[float]) -> tuple[bool, list[float]]:
    return False, values


def _run(schedule, steps: range, clock_ticks: list[float] | None = None) -> list[tuple]:
    """(position, stage, stage_changed at the step's start, trained stage, finished) of each step until done."""
    out = []
    for step in steps:
        start = (
            schedule.position,
            schedule.stage().name,
            schedule.stage_changed(),
            schedule.trained_stage(step, CFG.seed).name,
        )
        end = schedule.after_step(step + 1, _no_stop, lambda n: None)
        out.append((*start, end.finished))
        if end.finished:
            break
    return out


class Clock:
    def __init__(self, *ticks: float, start: float = 0.0) -> None:
        self.t, self.ticks, self.calls = start, list(ticks), 0

    def __call__(self) -> float:
        if self.calls:
            self.t += self.ticks[min(self.calls - 1, len(self.ticks) - 1)]
        self.calls += 1
        return self.t


def test_step_schedule_matches_the_step_counter():
    total = 20
    bounds = [s for s, _ in stage_boundaries(CUR, total)]
    assert len(bounds) > 2  # several stages: the boundaries are exercised
    got = _run(StepSchedule(CUR, total, 0, total, total), range(total))
    want = [
        (
            s,
            stage_at(s, CUR, total).name,
            s in bounds[1:],
            training_stage(s, CUR, total, CFG.seed).name,
            s == total - 1,
        )
        for s in range(total)
    ]
    assert got == want


def test_step_schedule_extension_stays_in_the_last_stage():
    """Steps past the original total: position = step (unclamped, for the constant tail LR), last stage, no reset."""
    s = StepSchedule(CUR, 8, 8, 12, 12)
    got = _run(s, range(8, 12))
    last = stage_at(7, CUR, 8).name
    assert [g[0] for g in got] == [8, 9, 10, 11] and {g[1] for g in got} == {last}
    assert not any(g[2] for g in got) and [g[4] for g in got] == [False, False, False, True]
    assert s.summary() == {"schedule_steps": 8, "schedule_position": 11}


def test_budget_schedule_positions_follow_the_clock():
    total, minutes = 20, 10 / 60  # 10 s laid out over 20 positions
    ticks = [0.3, 0.3, 1.7, 0.2, 2.9, 0.05, 0.05, 1.0, 0.6, 3.0]
    s = BudgetSchedule(CUR, total, 20, 20, minutes, clock=Clock(*ticks))
    s.start()
    got = _run(s, range(20))
    elapsed = [sum(ticks[:i]) for i in range(len(got))]
    positions = [min(total - 1, math.floor(total * e / 10.0)) for e in elapsed]
    bounds = [b for b, _ in stage_boundaries(CUR, total)]
    prev = [-1, *positions[:-1]]
    want = [
        (
            p,
            stage_at(p, CUR, total).name,
            any(q < b <= p for b in bounds[1:]),
            training_stage(p, CUR, total, CFG.seed, draw_step=i).name,
        )
        for i, (p, q) in enumerate(zip(positions, prev))
    ]
    assert [g[:4] for g in got] == want
    assert got[-1][4] and sum(ticks[: len(got)]) >= 10.0 > sum(ticks[: len(got) - 1])  # stops at the budget
    assert s.summary()["train_elapsed_s"] == pytest.approx(sum(ticks[: len(got)]))


def test_budget_schedule_takes_the_polled_maximum_and_moves_the_progress_bar_to_the_end():
    """Under DDP `poll` returns the slowest rank's clock; the progress bar ends at `total` when the budget ends."""
    s = BudgetSchedule(CUR, 10, 10, 10, 1.0, clock=Clock(1.0))
    s.start()
    moved = []
    end = s.after_step(1, lambda v: (True, [v[0] + 30.0]), moved.append)  # another rank is 30 s ahead
    assert end.stopping and not end.finished and s.elapsed == 31.0 and s.position == 5 and moved == [5]
    end = s.after_step(2, lambda v: (False, [v[0] + 60.0]), moved.append)
    assert end.finished and sum(moved) == 10


def test_budget_state_round_trip_continues_exactly():
    """Stopped after 6 steps, saved (through torch.save / weights_only load, as training_state.pt) and resumed
    with a clock reading something else entirely: the same positions, stages, resets and draws as one run."""
    total, minutes, ticks = 20, 10 / 60, [0.25, 1.25, 0.5, 0.75, 0.5]  # dyadic: the sums are exact
    whole = BudgetSchedule(CUR, total, 20, 20, minutes, clock=Clock(*ticks))
    whole.start()
    ref = _run(whole, range(20))
    first = BudgetSchedule(CUR, total, 6, 20, minutes, clock=Clock(*ticks))
    first.start()
    head = _run(first, range(6))
    assert head[-1][4] and not ref[5][4]  # the first process stopped at its end_step, the run goes on
    buf = io.BytesIO()
    torch.save(first.state(), buf)
    state = torch.load(io.BytesIO(buf.getvalue()), weights_only=True)
    assert set(state) == {"schedule_steps", "elapsed_s", "schedule_position"}  # training_state.pt keys (unchanged)
    resumed = build_schedule(CUR, state["schedule_steps"], 6, 20, 20, minutes, state, Clock(ticks[-1], start=5e4))
    resumed.start()
    tail = _run(resumed, range(6, 20))
    assert [g[:4] for g in head + tail] == [g[:4] for g in ref] and tail[-1][4] and ref[len(head + tail) - 1][4]
    assert len(head + tail) == len(ref) and resumed.summary() == whole.summary()


def test_step_state_round_trip_and_factory():
    s = build_schedule(CUR, 20, 0, 20, 20, None)
    assert isinstance(s, StepSchedule) and s.state() == {"schedule_steps": 20} and s.row() == {}
    head = _run(s, range(7))
    resumed = build_schedule(CUR, s.state()["schedule_steps"], 7, 20, 20, None, s.state())
    assert (resumed.position, resumed.prev_position) == (s.position, s.prev_position) == (7, 6)
    assert head + _run(resumed, range(7, 20)) == _run(build_schedule(CUR, 20, 0, 20, 20, None), range(20))


def test_step_schedule_never_reads_the_clock_and_polls_after_the_progress_bar():
    order = []
    s = build_schedule(CUR, 4, 0, 4, 4, None, clock=lambda: order.append("clock"))
    s.start()
    s.after_step(1, lambda v: (order.append(("poll", v)), (False, v))[1], lambda n: order.append(("bar", n)))
    assert order == [("bar", 1), ("poll", [])]  # a signal arriving while the bar moves stops this step


def test_spent_budget_is_refused():
    with pytest.raises(ValueError, match="already used its 1-minute budget"):
        build_schedule(CUR, 20, 5, 20, 20, 1.0, {"elapsed_s": 60.0, "schedule_position": 19})


def test_lrs_follow_the_position():
    """The LR of each step is set_lrs at the schedule's (unclamped) position with its boundaries."""
    groups = {"backbone": [torch.nn.Parameter(torch.zeros(2, 2))], "head": [torch.nn.Parameter(torch.zeros(2))]}
    opt = build_optimizer(groups, 1e-3, 2e-3, 0.0, set())
    s = StepSchedule(CUR, 20, 0, 20, 20)
    bounds = [b for b, _ in stage_boundaries(CUR, 20)]
    assert s.boundaries == bounds and s.total == 20
    for step in range(20):
        got = set_lrs(opt, s.position, s.stage(), CFG, s.boundaries, s.total)
        assert got == set_lrs(opt, step, stage_at(step, CUR, 20), CFG, bounds, 20)
        s.after_step(step + 1, _no_stop, lambda n: None)
