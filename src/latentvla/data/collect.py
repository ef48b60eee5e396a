"""Scripted-expert demonstration collection, annotated with CoT on the fly.

Any simulator of `envs.registry` with a scripted expert (`Simulator.has_expert`: Meta-World's own experts, and
LIBERO's pick-and-place expert of `envs.libero_expert`) works through
the simulator protocol of `envs.base`: `make`, `reset(episode=i, split="train")`, `step`, `expert_action`,
`privileged`. For every task, episodes 0, 1, 2, ... of the "train" split (see `envs.metaworld` for the
seeding scheme) are
rolled out with Meta-World's scripted expert until `episodes_per_task` succeed or `2 * episodes_per_task`
were attempted. Only successful episodes are kept; the per-task and overall expert success rates are
returned and stored in `meta/info.json` under "latentvla_collect", with the collection seed and how training
episodes start (`Simulator.train_init`; LIBERO: fresh placements, never the benchmark's evaluation init states).
After each reset the simulator's evaluation warm-up (LIBERO: 10 no-op steps) runs unrecorded.

Per frame we record the observation *before* the action (images, state), the action, the timestamp, the
instruction and the privileged simulator state (constants.PRIV_*), then annotate the episode with
`data.annotate.annotate_episode` (projected simulator boxes). An episode ends `stop_after_success` frames
after the first success (so the final frames show the finished task and the gripper moving away), or at
`max_steps`.

Episodes are rolled out by `workers` processes (envs/workers.py: spawned, each with its own envs and renderer, 1 BLAS/OMP
thread); the parent writes them with `DatasetWriter`, which keeps everything in `<out>.partial/` until
`finalize`, so an interrupted run never looks complete.

Resume is exact: the dataset is, per task, the first `episodes_per_task` successful episodes among 0 ..
2 * episodes_per_task - 1, whatever the worker count or the moments of interruption. Only *finished* attempts
are recorded (successes as written episodes, key "<task>/train/<episode:04d>"; failures in
`<out>.collect.json`, rewritten atomically after each result), each wave asks for the lowest episodes not yet
attempted, never more than are still missing, and `finalize` orders the episodes by (task, episode). A kill
inside the final publish is resumed too (`DatasetWriter.finalize` keeps the shards until the rename), and
`resume=True` on an already published dataset just cleans up and reports it.
"""

from __future__ import annotations

import json
import os
import shutil
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from latentvla import constants as K
from latentvla.data.collect_args import check_resume_args, collect_args

_ENVS: dict = {}  # per worker process: (simulator, task, cameras, size, max_steps) -> SimEnv


def _env(sim: str, task: str, cameras: tuple[str, ...], image_size: int, max_steps: int):
    from latentvla.envs.registry import get_simulator

    key = (sim, task, cameras, image_size, max_steps)
    if key not in _ENVS:
        _ENVS[key] = get_simulator(sim).make(task, cameras=cameras, image_size=image_size, max_steps=max_steps)
    return _ENVS[key]


def rollout(
    task: str,
    episode: int,
    *,
    seed: int,
    cameras: tuple[str, ...],
    image_size: int,
    max_steps: int,
    stop_after_success: int,
    sim: str = "metaworld",
) -> tuple[dict, dict]:
    """One expert episode -> (episode dict with cot.* columns, meta). Runs in a worker process."""
    from latentvla.data.annotate import annotate_episode, default_box_source
    from latentvla.envs.registry import get_simulator

    env = _env(sim, task, cameras, image_size, max_steps)
    obs, reset_info = env.reset(episode=episode, split="train", seed=seed)
    # The evaluation protocol's no-op warm-up runs here too, unrecorded: demonstrations start where a policy
    # starts acting, and objects of unsettled init states (LIBERO: up to 4 cm) have settled.
    protocol = get_simulator(sim).protocol()
    for _ in range(protocol.warmup_steps):
        obs, *_ = env.step(np.asarray(protocol.warmup_action, dtype=np.float32))
    frames: dict[str, list] = {}
    success_at = None
    for t in range(max_steps):
        action = env.expert_action(obs)
        row = {k: v for k, v in obs.items() if k != K.TASK} | env.privileged() | {K.ACTION: action}
        for k, v in row.items():
            frames.setdefault(k, []).append(v)
        obs, _, _, truncated, info = env.step(action)
        if info["success"] and success_at is None:
            success_at = t
        # LIBERO's "on" succeeds while the object is still in the hand: an expert that says it is not finished
        # (has not released yet) keeps going, so demonstrations end with the object let go.
        settled = getattr(env, "expert_finished", lambda: True)()
        if truncated or (success_at is not None and t - success_at >= stop_after_success and settled):
            break
    ep = {k: np.stack(v) for k, v in frames.items()}
    ep[K.TASK] = env.instruction
    ep["timestamp"] = (np.arange(len(ep[K.ACTION])) / env.fps).astype(np.float32)
    ep.update(
        annotate_episode(
            ep,
            task_name=task,
            instruction=env.instruction,
            box_source=default_box_source(ep, cameras[0]),
            camera=cameras[0],
            layout=get_simulator(sim).state_layout,
        )
    )  # the simulator's right/forward/up words
    meta = {
        "success": success_at is not None,
        "task_name": task,
        "episode": episode,
        "episode_seed": int(reset_info.get("episode_seed", -1)),
        "init_state": int(reset_info.get("init_state", -1)),  # LIBERO: -1 = not a benchmark init state
        "success_step": -1 if success_at is None else success_at,
    }
    return ep, meta


def _run_job(job: tuple) -> tuple[str, int, dict | None, dict]:
    task, episode, kwargs = job
    ep, meta = rollout(task, episode, **kwargs)
    return task, episode, (ep if meta["success"] else None), meta


def _key(task: str, episode: int) -> str:
    return f"{task}/train/{episode:04d}"


def collect(
    tasks: str | Sequence[str],
    episodes_per_task: int,
    image_size: int,
    out: str | Path,
    seed: int = 0,
    workers: int = 1,
    cameras: Sequence[str] | None = None,
    max_steps: int | None = None,
    resume: bool = False,
    stop_after_success: int = 10,
    overwrite: bool = False,
    video: bool = False,
    progress: bool = True,
    env: str = "metaworld",
) -> dict:
    """Collect, annotate and write a LeRobot v3.0 dataset of successful expert episodes; returns a summary."""
    from latentvla.data.lerobot import DatasetWriter

    if episodes_per_task < 1 or workers < 1 or stop_after_success < 0:
        raise ValueError("episodes_per_task and workers must be >= 1 and stop_after_success >= 0")
    sim, names, cameras, max_steps = _checked_setup(env, tasks, cameras, image_size, max_steps)
    out = Path(out)
    counters_path = out.with_name(out.name + ".collect.json")
    rollout = dict(
        seed=seed,
        cameras=cameras,
        image_size=image_size,
        max_steps=max_steps,
        stop_after_success=stop_after_success,
    )
    # the content-defining arguments, recorded in info.json and compared on --resume
    record = collect_args(env=env, tasks=names, episodes_per_task=episodes_per_task, video=video, **rollout)
    if resume and out.is_dir() and not out.with_name(out.name + ".partial").exists():
        return _already_published(out, counters_path, record)
    opts = dict(resume=resume, overwrite=overwrite, video=video)
    writer = DatasetWriter(out, fps=sim.fps, robot_type=sim.robot_type, names=sim.feature_names, **opts)
    succeeded, failed = _attempted(writer, counters_path, record, resume, names, episodes_per_task)
    start = time.perf_counter()
    save_failures = lambda f: _write_json_atomic(counters_path, {"args": record, "failed": f})  # noqa: E731
    jobs = (names, succeeded, failed, episodes_per_task, {**rollout, "sim": env})
    counts = _roll_out(*jobs, workers, writer, save_failures, progress)
    stats = {t: {"attempts": len(succeeded[t]) + len(failed[t]), "successes": len(succeeded[t])} for t in names}
    if not any(succeeded.values()):  # nothing to publish or resume: leave no .partial / record behind
        shutil.rmtree(writer.partial, ignore_errors=True)
        counters_path.unlink(missing_ok=True)
        attempts = sum(s["attempts"] for s in stats.values())
        raise ValueError(
            f"the expert succeeded in none of {attempts} episodes within --max-steps {max_steps}; nothing was written "
            f"to {out}: raise --max-steps or check the tasks"
        )
    setup = {
        "env": env,
        "seed": seed,
        "cameras": list(cameras),
        "image_size": image_size,
        "max_steps": max_steps,
        "train_init": sim.train_init or "reset(split='train')",
        "warmup_steps": sim.protocol().warmup_steps,
    }
    return _finish(writer, stats, names, start, counts, out, counters_path, setup, args=record)


def _checked_setup(
    env: str, tasks: str | Sequence[str], cameras: Sequence[str] | None, image_size: int, max_steps: int | None
) -> tuple:
    """(simulator, task names, cameras, max_steps) after every check that can fail before a worker starts."""
    from latentvla.envs.registry import get_simulator

    sim = get_simulator(env)
    if not sim.has_expert:
        raise ValueError(
            f"{env} has no scripted expert, so `collect` cannot make demonstrations for it; "
            "train on an existing LeRobot dataset instead"
        )
    sim.require()
    names = sim.resolve_tasks(tasks)
    cameras = tuple(cameras or sim.default_cameras)
    if max_steps is None:  # the evaluation protocol's limit of the longest task group
        max_steps = max(sim.protocol().steps_for(sim.task_group(t)) for t in names)
    if max_steps < 1:  # 0 used to crash inside the first rollout and leave <out>.partial behind
        raise ValueError(f"--max-steps must be >= 1 (the expert needs steps to succeed), got {max_steps}")
    sim.validate(cameras=cameras, image_size=image_size, max_steps=max_steps)
    return sim, names, cameras, max_steps


def _attempted(
    writer: Any, counters_path: Path, record: dict, resume: bool, names: list[str], per_task: int
) -> tuple[dict[str, set], dict[str, set]]:
    """Per task, the episodes written (successes) and those whose finished attempt failed: all the state a
    resumed run needs. Checks that a resumed run has the same content-defining arguments (or nothing is mixed)."""
    saved = json.loads(counters_path.read_text()) if resume and counters_path.exists() else {}
    if resume:
        check_resume_args(
            saved.get("args"), record, counters_path, bool(writer.done_keys() or saved.get("failed"))
        )
    _write_json_atomic(counters_path, {"args": record, "failed": saved.get("failed", {})})
    done = writer.done_keys()
    succeeded = {t: {e for e in range(2 * per_task) if _key(t, e) in done} for t in names}
    failed = {t: set(saved.get("failed", {}).get(t, [])) for t in names}
    return succeeded, failed


class _ExpertRunner:
    """A collection worker's runner (envs/workers.py): expert rollouts; its envs are freed on close."""

    def __init__(self, ask: Any = None) -> None:  # an expert never asks the parent
        pass

    def __call__(self, job: tuple) -> tuple[str, int, dict | None, dict]:
        return _run_job(job)

    def close(self) -> None:
        while _ENVS:  # free the GL contexts now, not at interpreter exit
            _ENVS.popitem()[1].close()


def _roll_out(
    names, succeeded, failed, per_task, kwargs, workers, writer, save_failed, progress
) -> tuple[int, int]:
    """Wave after wave (`_next_wave`) until every task has its successes or its attempts: successes go to
    `writer`, failures to `save_failed`; in this process (workers=1) or `workers` spawned ones. Returns
    (frames, episodes) written."""
    from tqdm import tqdm

    from latentvla.envs.workers import WorkerPool

    counts = [0, 0]
    bar = tqdm(total=len(names) * per_task, desc="collect", unit="ep", disable=not progress)
    bar.update(sum(len(s) for s in succeeded.values()))

    def on_done(result: tuple) -> None:
        task, episode, ep, meta = result
        if ep is not None:
            writer.add_episode(ep, key=_key(task, episode), meta=meta)
            succeeded[task].add(episode)
            counts[0], counts[1] = counts[0] + len(ep[K.ACTION]), counts[1] + 1
            bar.update(1)
        else:
            failed[task].add(episode)
            save_failed({t: sorted(f) for t, f in failed.items()})

    # results in the order they finish: `finalize` orders the episodes (module docstring)
    pool = WorkerPool(workers, _ExpertRunner, lockstep=False, name="latentvla-collect") if workers > 1 else None
    local, finished = _ExpertRunner(), False
    try:
        while jobs := _next_wave(names, succeeded, failed, per_task, kwargs):
            if pool is not None:
                pool.run(jobs, on_done)
            else:
                for job in jobs:
                    on_done(local(job))
        finished = True
    finally:
        bar.close()
        if pool is not None:
            pool.close(stop=finished)
        local.close()  # in-process rollouts (workers=1)
    return counts[0], counts[1]


def _write_json_atomic(path: Path, data: dict) -> None:
    tmp = path.with_name(path.name + ".tmp")
    try:
        tmp.write_text(json.dumps(data))
    except BaseException:  # a full disk must not leave a truncated .tmp behind
        tmp.unlink(missing_ok=True)
        raise
    os.replace(tmp, path)


def _next_wave(names, succeeded, failed, per_task, kwargs) -> list[tuple]:
    """Per task, the lowest episodes (< 2 * per_task) not yet attempted, as many as successes are missing.

    Never asking for more than are missing makes the kept set "the first `per_task` successes" in every
    schedule, so an interrupted + resumed run keeps exactly the episodes of an uninterrupted one.
    """
    jobs = []
    for t in names:
        missing = per_task - len(succeeded[t])
        for episode in range(2 * per_task):
            if missing <= 0:
                break
            if episode not in succeeded[t] and episode not in failed[t]:
                jobs.append((t, episode, kwargs))
                missing -= 1
    return jobs


def _already_published(out: Path, counters_path: Path, record: dict) -> dict:
    """`--resume` after a kill at the very end of a publish: the dataset is complete; drop leftovers."""
    from latentvla.data.lerobot import LeRobotDatasetReader
    from latentvla.data.lerobot.writer import SHARDS

    summary = LeRobotDatasetReader(out).info.get("latentvla_collect", {})
    check_resume_args(summary.get("args"), record, out / "meta" / "info.json", False, published=True)
    shutil.rmtree(out / SHARDS, ignore_errors=True)
    counters_path.unlink(missing_ok=True)
    return summary | {"out": str(out), "seconds": 0.0, "episodes_per_s": 0.0, "already_complete": True}


def _finish(
    writer, stats, names, start, counts, out, counters_path, setup: dict | None = None, args: dict | None = None
) -> dict:
    frames, written = counts
    attempts = sum(stats[t]["attempts"] for t in names)
    kept = sum(stats[t]["successes"] for t in names)
    per_task = {
        t: {
            "attempts": stats[t]["attempts"],
            "successes": stats[t]["successes"],
            "success_rate": stats[t]["successes"] / max(stats[t]["attempts"], 1),
        }
        for t in names
    }
    summary = {
        "episodes_kept": kept,
        "attempts": attempts,
        "success_rate": kept / max(attempts, 1),
        "per_task": per_task,
        "args": args,
        **(setup or {}),
    }
    if kept == 0:
        raise RuntimeError(f"The expert succeeded in none of {attempts} episodes; nothing to write to {out}.")
    order = {t: i for i, t in enumerate(names)}

    def by_task_episode(key: str) -> tuple[int, int]:  # "<task>/train/<episode>" -> (task position, episode)
        task, _, episode = key.rsplit("/", 2)  # task names may contain "/" (LIBERO: "<suite>/<name>")
        return order.get(task, len(order)), int(episode)

    writer.finalize(extra_info={"latentvla_collect": summary}, sort_key=by_task_episode)
    counters_path.unlink(missing_ok=True)
    seconds = time.perf_counter() - start
    return summary | {
        "out": str(out),
        "seconds": seconds,
        "episodes_per_s": written / seconds,
        "frames_written_this_run": frames,
    }
