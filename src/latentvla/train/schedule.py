"""Where a training run is in its schedule: the step counter, or the share of a wall-clock budget spent.

The curriculum, warm-up + cosine LR and Coconut stage mixing are laid out over `total` *schedule positions*
(`cfg.steps`, or the original total of a run extended on resume). A `StepSchedule` puts optimizer step `s` at
position `s`; a `BudgetSchedule` (`cfg.minutes`, train/budget.py) puts it at `floor(total * elapsed / budget)`,
the share of the budget spent when it starts, so every run ends its curriculum when its minutes end. Everything
the position feeds is the same for both: the stage, the Adam reset at a stage start, the LR. The step counter
still seeds the budgeted run's per-step draws (mixing, recurrence depth) and the EMA cadence.

`after_step` is the one place the loop learns whether to stop: it reads the stop flag (SIGTERM / SIGINT) and,
for a budget, the clock, reduced over ranks in one call (`poll`), so every DDP rank takes the same branch.
`state()` is what a checkpoint keeps so that a resumed run continues exactly (training_state.pt keys
"schedule_steps", and for a budget "elapsed_s" and "schedule_position").
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, NamedTuple, Protocol

from latentvla.train.budget import projected_steps, schedule_position
from latentvla.train.curriculum import CurriculumConfig, StageSpec, stage_at, stage_boundaries, training_stage

# poll(values) -> (stop requested on any rank, `values` maximised over ranks); read when called
Poll = Callable[[list[float]], tuple[bool, list[float]]]


class StepEnd(NamedTuple):
    stopping: bool  # a stop signal arrived (on any rank) during the step
    finished: bool  # the run is complete: its last step, or its budget spent


class Schedule(Protocol):
    """What the loop asks of a schedule (implementations: `StepSchedule`, `BudgetSchedule`)."""

    total: int  # positions the curriculum and LR are laid out over
    boundaries: list[int]  # the first position of each stage
    end_step: int  # the last optimizer step this process may run (exclusive)
    position: int  # of the step about to run
    prev_position: int  # of the last step done; -1 before any

    def start(self) -> None: ...  # the loop begins (a budget's clock starts)
    def stage(self) -> StageSpec: ...  # the scheduled stage at `position`
    def trained_stage(self, step: int, seed: int) -> StageSpec: ...  # Coconut mixing may pick an earlier one
    def stage_changed(self) -> bool: ...  # a stage starts between prev_position and position
    def after_step(self, done: int, poll: Poll, advance: Callable[[int], Any]) -> StepEnd: ...  # move on
    def ema_steps(self, done: int) -> int: ...  # the run length the EMA horizon is a fraction of
    def state(self) -> dict[str, Any]: ...  # kept in training_state.pt; resume continues from it
    def row(self) -> dict[str, Any]: ...  # extra fields of a log row
    def summary(self) -> dict[str, Any]: ...  # the run summary's schedule fields
    def progress(self) -> dict[str, Any]: ...  # MetricsLogger's progress-bar arguments
    def of_total(self) -> str: ...  # "N" or "N (m of M min)", for the interrupt message


class _Positions:
    """What both schedules share: the stage boundaries of `total` positions and the stage at a position."""

    def __init__(self, curriculum: CurriculumConfig, total: int, end_step: int, cap: int) -> None:
        self.curriculum, self.total, self.end_step, self.cap = curriculum, total, end_step, cap
        self.boundaries = [s for s, _ in stage_boundaries(curriculum, total)]
        self.position, self.prev_position = 0, -1

    def _scheduled(self) -> int:
        # past the original total (an extension) the last stage continues at a constant LR (optim.set_lrs)
        return min(self.position, self.total - 1)

    def stage(self) -> StageSpec:
        return stage_at(self._scheduled(), self.curriculum, self.total)

    def stage_changed(self) -> bool:
        """A stage starts between the last step done and the next one: Adam restarts (LaRA-VLA Table 5 trains each
        stage as a fresh run from the previous weights) and a log row never spans two stages."""
        return any(self.prev_position < b <= self.position for b in self.boundaries[1:])

    def start(self) -> None:
        pass


class StepSchedule(_Positions):
    """Position = the optimizer step. `cap` is cfg.steps (for messages)."""

    def __init__(self, curriculum: CurriculumConfig, total: int, start_step: int, end_step: int, cap: int) -> None:
        super().__init__(curriculum, total, end_step, cap)
        self.position, self.prev_position = start_step, start_step - 1

    def trained_stage(self, step: int, seed: int) -> StageSpec:
        # the mixing draw is seeded by the (clamped) position, which is the step here
        return training_stage(self._scheduled(), self.curriculum, self.total, seed)

    def after_step(self, done: int, poll: Poll, advance: Callable[[int], Any]) -> StepEnd:
        advance(1)
        stopping, _ = poll([])  # a signal during this step (the progress bar has moved)
        self.prev_position, self.position = self.position, done
        return StepEnd(stopping, done == self.end_step)

    def ema_steps(self, done: int) -> int:
        return self.total

    def state(self) -> dict[str, Any]:
        return {"schedule_steps": self.total}

    def row(self) -> dict[str, Any]:
        return {}

    def summary(self) -> dict[str, Any]:
        return {"schedule_steps": self.total, "schedule_position": self.prev_position}

    def progress(self) -> dict[str, Any]:
        return {}

    def of_total(self) -> str:
        return f"{self.cap}"


class BudgetSchedule(_Positions):
    """Position = floor(total * elapsed / budget). The clock (one reading per step) starts at `start()`; `elapsed`
    holds the seconds spent before it (a resumed run's), and the run stops when they reach the budget or at
    `end_step`. Under DDP every rank takes the maximum over ranks."""

    def __init__(
        self,
        curriculum: CurriculumConfig,
        total: int,
        end_step: int,
        cap: int,
        minutes: float,
        elapsed_s: float = 0.0,
        prev_position: int = -1,
        clock: Callable[[], float] | None = None,
    ) -> None:
        super().__init__(curriculum, total, end_step, cap)
        self.minutes, self.budget_s, self.elapsed, self.clock = minutes, 60.0 * minutes, elapsed_s, clock
        if self.elapsed >= self.budget_s:
            raise ValueError(
                f"nothing to do: the run already used its {minutes:g}-minute budget ({self.elapsed / 60:.2f} min)"
            )
        self.position = schedule_position(self.elapsed, self.budget_s, total)
        self.prev_position = prev_position
        self._before, self._t0 = self.elapsed, 0.0

    def start(self) -> None:
        # the clock starts at the loop, after setup
        assert self.clock is not None, "a budgeted schedule needs a clock"
        self._before, self._t0 = self.elapsed, self.clock()

    def trained_stage(self, step: int, seed: int) -> StageSpec:
        # consecutive steps may share a position: the draw is seeded by the real step
        return training_stage(self._scheduled(), self.curriculum, self.total, seed, draw_step=step)

    def after_step(self, done: int, poll: Poll, advance: Callable[[int], Any]) -> StepEnd:
        assert self.clock is not None, "a budgeted schedule needs a clock"
        stopping, (self.elapsed,) = poll([self._before + self.clock() - self._t0])  # the slowest rank's clock
        position = schedule_position(self.elapsed, self.budget_s, self.total)
        finished = done == self.end_step or self.elapsed >= self.budget_s
        advance(self.total - self.position if finished else position - self.position)
        self.prev_position, self.position = self.position, position
        return StepEnd(stopping, finished)

    def ema_steps(self, done: int) -> int:
        """The run's real length, projected from the pace so far (the EMA horizon is a fraction of it)."""
        return projected_steps(done, self.elapsed, self.budget_s, self.cap)

    def state(self) -> dict[str, Any]:
        return {"schedule_steps": self.total, "elapsed_s": self.elapsed, "schedule_position": self.prev_position}

    def row(self) -> dict[str, Any]:
        # the position of the row's last step, and the clock after it
        return {"position": self.prev_position, "elapsed_s": self.elapsed}

    def summary(self) -> dict[str, Any]:
        return {
            "schedule_steps": self.total,
            "schedule_position": self.prev_position,
            "minutes": self.minutes,
            "train_elapsed_s": self.elapsed,
        }

    def progress(self) -> dict[str, Any]:
        return {"progress_total": self.total, "progress_start": self.position}

    def of_total(self) -> str:
        return f"{self.cap} ({self.elapsed / 60:.2f} of {self.minutes:g} min)"


def build_schedule(
    curriculum: CurriculumConfig,
    total: int,
    start_step: int,
    end_step: int,
    steps: int,
    minutes: float | None,
    saved: dict[str, Any] | None = None,
    clock: Callable[[], float] | None = None,
) -> Schedule:
    """The step schedule, or with `minutes` the budget schedule continuing `saved` (a checkpoint's `state()`)."""
    if minutes is None:
        return StepSchedule(curriculum, total, start_step, end_step, steps)
    saved = saved or {}
    return BudgetSchedule(
        curriculum,
        total,
        end_step,
        steps,
        minutes,
        float(saved.get("elapsed_s", 0.0)),
        int(saved.get("schedule_position", -1)),
        clock,
    )
