"""Which curriculum stage a training step is in. The stage types live in `models/curriculum.py`."""

from __future__ import annotations

import numpy as np

from latentvla.models.curriculum import CurriculumConfig, StageSpec, final_stage

__all__ = ["CurriculumConfig", "StageSpec", "final_stage", "stage_at", "stage_boundaries", "training_stage"]


def stage_boundaries(cfg: CurriculumConfig, total_steps: int) -> list[tuple[int, StageSpec]]:
    """(first step, stage) for every stage that gets at least one step; the last stage runs to the end."""
    if total_steps < 1:
        raise ValueError(f"total_steps must be >= 1, got {total_steps}")
    starts, acc = [], 0.0
    for stage, frac in zip(cfg.stages(), cfg.stage_fractions()):
        starts.append((round(acc * total_steps), stage))
        acc += frac
    # drop stages that round to zero length (tiny runs), keeping order
    out: list[tuple[int, StageSpec]] = []
    for i, (start, stage) in enumerate(starts):
        end = starts[i + 1][0] if i + 1 < len(starts) else total_steps
        if end > start:
            out.append((start, stage))
    return out


def stage_at(step: int, cfg: CurriculumConfig, total_steps: int) -> StageSpec:
    """The stage in force at 0-based `step` of a `total_steps` run."""
    current = None
    for start, stage in stage_boundaries(cfg, total_steps):
        if step >= start:
            current = stage
    assert current is not None
    return current


def training_stage(
    step: int, cfg: CurriculumConfig, total_steps: int, seed: int, draw_step: int | None = None
) -> StageSpec:
    """The stage step `step` trains: the scheduled one, or with probability `cfg.mix_prob` an earlier stage drawn
    uniformly (Coconut's `uniform_prob`). A pure function of (seed, draw_step): every DDP rank gets the same stage.

    `draw_step` (default `step`) seeds the draw: a wall-clock-budgeted run (train/budget.py) schedules by its
    position `step` but draws by its real optimizer step, since consecutive steps may share a position."""
    scheduled = stage_at(step, cfg, total_steps)
    earlier = []
    for _, stage in stage_boundaries(cfg, total_steps):
        if stage.name == scheduled.name:
            break
        earlier.append(stage)
    if not earlier or cfg.mix_prob <= 0:
        return scheduled
    rng = np.random.default_rng([seed, step if draw_step is None else draw_step, 0x3C0C])
    if rng.random() >= cfg.mix_prob:
        return scheduled
    return earlier[int(rng.integers(len(earlier)))]
