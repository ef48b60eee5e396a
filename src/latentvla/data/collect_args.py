"""The arguments of a `collect` run that decide what its dataset contains, and the check that a `--resume` uses
the same ones.

A resumed collection keeps the episodes already written and fills in the rest, so every argument that changes an
episode's content or which episodes are kept must be the interrupted run's: a different `--seed` gives other
initial states, fewer `--episodes-per-task` another "first N successes", other `--tasks` other episodes — mixing
them produced a dataset matching neither run (434 frames where a clean run has 440). The record is written to
`<out>.collect.json` before the first episode and into `meta/info.json` (`latentvla_collect.args`) at publish, so
the seed of a published dataset is on record too. Worker count and progress display do not change the content.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any


def collect_args(
    *,
    env: str,
    tasks: Sequence[str],
    episodes_per_task: int,
    image_size: int,
    seed: int,
    cameras: Sequence[str],
    max_steps: int,
    stop_after_success: int,
    video: bool,
) -> dict[str, Any]:
    """The content-defining arguments as a JSON-able dict (tasks as resolved names, in collection order)."""
    return {
        "env": str(env),
        "tasks": [str(t) for t in tasks],
        "episodes_per_task": int(episodes_per_task),
        "image_size": int(image_size),
        "seed": int(seed),
        "cameras": [str(c) for c in cameras],
        "max_steps": int(max_steps),
        "stop_after_success": int(stop_after_success),
        "video": bool(video),
    }


_FLAGS = {
    "env": "--env",
    "tasks": "--tasks",
    "episodes_per_task": "--episodes-per-task",
    "seed": "--seed",
    "image_size": "--image-size",
    "cameras": "--camera",
    "max_steps": "--max-steps",
    "stop_after_success": "--stop-after-success",
    "video": "--video",
}


def _flag_value(key: str, value: Any) -> str:
    if isinstance(value, list):
        return ",".join(value)
    return str(value).lower() if isinstance(value, bool) else str(value)


def check_resume_args(saved: dict | None, now: dict, record: Path, started: bool, published: bool = False) -> None:
    """Refuse a resume whose content-defining arguments differ from the interrupted run's, naming each flag.

    `saved` is the interrupted run's record (None when there is none), `started` whether it already wrote or
    attempted episodes (a run killed before its first episode has nothing to mix, so it may resume with anything).
    More `--episodes-per-task` than the interrupted run extends it exactly (the kept episodes are the first N
    successes of a deterministic sequence, and the first fewer are a prefix of them), unless it was `published`.
    """
    if saved is None:
        if started:
            raise ValueError(
                f"--resume: {record} does not record the interrupted run's arguments (an older latentvla wrote it), "
                "so a resume could mix episodes of different settings; start over with --overwrite"
            )
        return
    grows = not published and isinstance(saved.get("episodes_per_task"), int)
    grows = grows and now["episodes_per_task"] > saved["episodes_per_task"]
    diff = [k for k in now if saved.get(k) != now[k] and not (k == "episodes_per_task" and grows)]
    if diff:
        parts = [
            f"{_FLAGS.get(k, k)} {_flag_value(k, saved.get(k))} (run) vs {_flag_value(k, now[k])} (now)"
            for k in diff
        ]
        raise ValueError(
            f"--resume: the interrupted collection used other arguments: {'; '.join(parts)}; resume with the "
            "run's arguments, or start over with --overwrite"
        )
