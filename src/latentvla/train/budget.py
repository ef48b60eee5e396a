"""Wall-clock-budgeted training (`TrainConfig.minutes`): the schedule advances with elapsed time, not steps.

A budgeted run lays its curriculum, warm-up + cosine LR and stage mixing out over `cfg.steps` *schedule
positions*, exactly as a step-based run does, but the position of an optimizer step is the share of the budget
already spent, `p = floor(steps * elapsed / budget)`, instead of the step counter. So every run ends its
curriculum when its minutes end, whatever its throughput: `latentvla demo` gives each model the same minutes
without predicting how many steps fit (its old 3-step probe mispredicted by 25-50 %, LOG.md 2026-12-01).
`cfg.steps` stays the schedule's resolution and a hard cap on real steps.

The EMA target's horizon is a fraction of the run's real steps (PolicyConfig.ema_horizon); a budgeted run's
real length is unknown in advance, so it is projected from the pace so far (`projected_steps`).
"""

from __future__ import annotations

import math


def schedule_position(elapsed_s: float, budget_s: float, schedule_steps: int) -> int:
    """The schedule position after `elapsed_s` of a `budget_s` run laid out over `schedule_steps` positions:
    floor(schedule_steps * elapsed / budget), clamped to [0, schedule_steps - 1]. Monotone in `elapsed_s`."""
    if budget_s <= 0 or schedule_steps < 1:
        raise ValueError(f"need budget_s > 0 and schedule_steps >= 1, got {budget_s}, {schedule_steps}")
    p = math.floor(schedule_steps * max(0.0, elapsed_s) / budget_s)
    return min(schedule_steps - 1, p)


def projected_steps(done: int, elapsed_s: float, budget_s: float, cap: int) -> int:
    """Real optimizer steps a budgeted run will take at its pace so far (`done` steps in `elapsed_s`):
    done * budget / elapsed, within [max(done, 1), cap]; `cap` before any time has passed."""
    if budget_s <= 0 or cap < 1:
        raise ValueError(f"need budget_s > 0 and cap >= 1, got {budget_s}, {cap}")
    if elapsed_s <= 0 or done < 1:
        return cap
    return int(min(cap, max(done, round(done * budget_s / elapsed_s))))
