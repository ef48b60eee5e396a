"""Seeded simulator evaluation of a policy: rollouts, LeRobot-schema `eval_info.json`, table, videos.

    info = evaluate("runs/lara", ["pick-place-v3", "reach-v3"], episodes=10, out_dir="runs/lara/eval")
    info = evaluate("runs/libero", "libero_object", episodes=50, env="libero")          # the papers' protocol

Any simulator of `envs.registry` works through the simulator protocol (envs/base.py). Each simulator names its
evaluation protocols (`Simulator.protocols`): episodes per task, seed, max steps per task group, no-op warm-up,
gripper post-processing and whether the whole chunk runs before re-querying. The protocol used (its name and
every field, plus the gripper mode and execution horizon actually applied) is written into
`eval_info.json["config"]["protocol"]`, so a number always says how it was measured.

Episode i of task T: `env.reset(episode=i, split="eval", seed=seed)`. Meta-World: a seeded start from the
eval split, disjoint from the training episodes by construction (envs/metaworld.py); LIBERO: the benchmark's
init state i. Deterministic for a fixed seed: each episode owns a generator seeded from (seed, task, i) that
drives the flow-matching noise / the recurrent head's initial state, so a result does not depend on which
worker ran it or in which order.

The policy is loaded ONCE, in this process, on `device` (cpu, cuda, auto) with bf16 autocast + TF32 on a GPU
(`precision`); `workers` simulator processes (spawned, not forked: MuJoCo's EGL context does not survive fork)
step the environments and the policy answers their observations in deterministic lock-step batches
(eval/pool.py). On CPU the policy uses one torch thread, the kernels evaluation always used. Every finished
episode goes to OUT/episodes.jsonl at once; an interrupted evaluation resumes from it (eval/episodes_log.py).

`eval_info.json` follows `lerobot-eval` (`per_task` entries with `task_group`/`task`/`metrics`, `per_group`,
`overall` with `pc_success`, `n_episodes`, `eval_s`, plus `video_paths`), extended with what latent-reasoning
policies need: mean episode length, mean recurrent iterations (RD-VLA Table II) and per-call latency.
"""

from __future__ import annotations

import json
import signal
import sys
import threading
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from latentvla.constants import OBS_IMAGES, OBS_STATE, TASK
from latentvla.envs.base import GRIPPER_MODES
from latentvla.envs.registry import get_simulator
from latentvla.models.halting import parse_halting


@dataclass(frozen=True)
class EvalSettings:
    """How every episode of one evaluation is run (shipped to the workers)."""

    run_dir: str
    mode: str | None = None  # None: the model's default (explicit for a model whose last stage writes CoT text)
    iterations: int | None = None  # fixed recurrent depth; with `halting`, the cap (None: the config's default)
    halting: str | None = None  # "mse:5e-4", "cosine:0.999", "fixed" or None
    seed: int = 0
    max_steps: int | None = None  # policy steps per episode (None: the protocol's, per task group)
    env: str = "metaworld"
    protocol: str | None = None  # the simulator's named protocol (None: its default)
    gripper: str | None = None  # gripper post-processing (None: the protocol's)
    execution: str | None = None  # execution-horizon spec (None: protocol full chunk, else the checkpoint's)
    device: str = "cpu"  # where the one policy runs (device.py; "auto" is resolved before it gets here)
    precision: str = "auto"  # "auto": bf16 autocast + TF32 on a CUDA GPU that supports them, fp32 on CPU

    def __post_init__(self) -> None:
        if self.mode is not None and self.mode not in ("latent", "explicit", "none"):
            raise ValueError(f"mode must be 'latent', 'explicit' or 'none', got {self.mode!r}")
        if self.iterations is not None and self.iterations < 1:
            raise ValueError(f"iterations must be >= 1, got {self.iterations}")
        if self.seed < 0 or (self.max_steps is not None and self.max_steps < 1):
            raise ValueError(f"seed must be >= 0 and max_steps >= 1, got {self.seed}, {self.max_steps}")
        if self.gripper is not None and self.gripper not in GRIPPER_MODES:
            raise ValueError(f"gripper must be one of {GRIPPER_MODES}, got {self.gripper!r}")
        get_simulator(self.env).protocol(self.protocol)  # fail in the parent, not in every worker
        parse_halting(self.halting)
        if self.execution is not None:
            from latentvla.models.execution import make_horizon

            make_horizon(self.execution)

    @property
    def sim_protocol(self):
        return get_simulator(self.env).protocol(self.protocol)

    @property
    def gripper_mode(self) -> str:
        return self.gripper or self.sim_protocol.gripper

    def steps_for(self, task: str) -> int:
        if self.max_steps is not None:
            return self.max_steps
        return self.sim_protocol.steps_for(get_simulator(self.env).task_group(task))

    def execution_spec(self, horizon: int) -> str | None:
        """The execution horizon applied (None: the checkpoint's `policy.execution`)."""
        if self.execution is not None:
            return self.execution
        return f"fixed:{horizon}" if self.sim_protocol.execute_full_chunk else None


class PolicyAgent:
    """`runtime.Agent` over a `Policy`: one action per step from its queue, seeded noise per episode."""

    def __init__(self, policy: Any, settings: EvalSettings, torch_seed: int) -> None:
        import torch

        self.policy, self.settings, self.torch_seed = policy, settings, torch_seed
        self.generator = torch.Generator(device=policy.device)

    def reset(self) -> None:
        import torch

        torch.manual_seed(self.torch_seed)  # anything not drawing from the generator is seeded too
        self.generator.manual_seed(self.torch_seed)
        self.policy.reset()

    def get_action(self, observation: dict) -> dict:
        before = self.policy.last_info
        s = self.settings
        action = self.policy.select_action(
            observation,
            mode=s.mode,
            iterations=s.iterations,
            halting=parse_halting(s.halting),
            generator=self.generator,
        )
        info = self.policy.last_info
        chunk = info is not before  # select_action builds a fresh last_info dict exactly when it ran inference
        return {"action": action, "chunk": chunk, "iterations": info.get("iterations") if chunk else None}


# ------------------------------------------------------------------------------------------------- workers


class EvalInterrupted(Exception):
    """Ctrl-C / SIGTERM during an evaluation: the finished episodes are kept in OUT/episodes.jsonl."""

    def __init__(self, signum: int, done: int, total: int, log: Path | None) -> None:
        self.signum, self.done, self.total, self.log = signum, done, total, log
        where = (
            f"{done} of {total} episodes are in {log}; run the same command again to resume"
            if log is not None
            else f"{done} of {total} episodes finished (pass --out to keep them)"
        )
        super().__init__(f"evaluation interrupted by {signal.Signals(signum).name}: {where}.")


class _Terminated(Exception):
    pass


def _raise_terminated(signum, frame):  # SIGTERM -> an exception in the main thread, like Ctrl-C's
    raise _Terminated()


def load_eval_policy(settings: EvalSettings) -> Any:
    """The one policy of an evaluation, on `settings.device` at `settings.precision`, warmed up."""
    from latentvla.policy import Policy

    policy = Policy.from_pretrained(settings.run_dir, device=settings.device)
    policy.set_precision(settings.precision)
    execution = settings.execution_spec(policy.config.horizon)
    if execution is not None:
        policy.set_execution(execution)
    # One untimed call first: lazy initialisation (allocator, kernels) would otherwise land in the first
    # latency sample and bias short runs and sweeps.
    c = policy.config
    dummy = {f"{OBS_IMAGES}.{cam}": np.zeros((c.image_size, c.image_size, 3), np.uint8) for cam in c.cameras}
    dummy |= {OBS_STATE: np.zeros(c.state_dim, np.float32), TASK: "warm up"}
    policy.infer(
        dummy, mode=settings.mode, iterations=settings.iterations, halting=parse_halting(settings.halting)
    )
    return policy


def _run_jobs(
    settings: EvalSettings,
    jobs: list[tuple],
    workers: int,
    progress: bool,
    on_done: Any = None,
    max_batch: int | None = None,
    already: int = 0,
) -> list[dict]:
    """Run `jobs` (eval/pool.py): the policy here, the environments here (workers=1) or in `workers` processes."""
    import torch
    from tqdm import tqdm

    from latentvla.eval.pool import run_local, run_pool

    bar = tqdm(
        total=len(jobs) + already,
        initial=already,
        desc="eval",
        unit="ep",
        disable=not progress,
        dynamic_ncols=True,
    )
    results, wins = [], 0

    def done(res: dict) -> None:
        nonlocal wins
        results.append(res)
        if on_done is not None:
            on_done(res)
        wins += int(res["success"])
        bar.update(1)
        bar.set_postfix(success=f"{100 * wins / len(results):.0f}%")

    if not jobs:  # every episode came from an interrupted run's log
        bar.close()
        return []
    threads = torch.get_num_threads()
    try:
        if torch.device(settings.device).type == "cpu":
            torch.set_num_threads(1)  # the kernels every evaluation has used (one thread): same numbers
        policy = load_eval_policy(settings)
        if workers <= 1:
            run_local(policy, settings, jobs, done)
        else:
            run_pool(policy, settings, jobs, workers, done, max_batch)
    finally:
        torch.set_num_threads(threads)
        bar.close()
    return results


def _metrics(rows: list[dict]) -> dict:
    lat = [x for r in rows for x in r["latencies_ms"]]
    its = [x for r in rows for x in r["iterations"]]
    return {
        "pc_success": 100.0 * float(np.mean([r["success"] for r in rows])),
        "n_episodes": len(rows),
        "avg_length": float(np.mean([r["length"] for r in rows])),
        "avg_iterations": float(np.mean(its)) if its else None,
        "n_calls": len(lat),
        "latency_ms_median": float(np.median(lat)) if lat else None,
        "latency_ms_p90": float(np.percentile(lat, 90)) if lat else None,
    }


def summarize(
    results: list[dict], tasks: list[str], eval_s: float, settings: EvalSettings, horizon: int | None = None
) -> dict:
    """LeRobot-schema eval info from per-episode results."""
    sim = get_simulator(settings.env)
    task_group = sim.task_group
    per_task = []
    for task in tasks:
        rows = [r for r in results if r["task"] == task]
        metrics = {
            **_metrics(rows),
            "successes": [bool(r["success"]) for r in rows],
            "lengths": [r["length"] for r in rows],
            "video_paths": [p for r in rows for p in r["video_paths"]],
        }
        metrics["max_steps"] = settings.steps_for(task)
        per_task.append({"task_group": task_group(task), "task": task, "metrics": metrics})
    groups = sorted({t["task_group"] for t in per_task})
    per_group = {g: _metrics([r for r in results if task_group(r["task"]) == g]) for g in groups}
    video_paths = [p for r in results for p in r["video_paths"]]
    overall = {
        **_metrics(results),
        "eval_s": eval_s,
        "eval_ep_s": eval_s / max(1, len(results)),
        "video_paths": video_paths,
    }
    protocol = {
        **settings.sim_protocol.to_dict(),
        "gripper_applied": settings.gripper_mode,
        "execution_applied": settings.execution_spec(horizon) if horizon else settings.execution,
    }
    config = {**asdict(settings), "tasks": tasks, "protocol": protocol}
    return {
        "per_task": per_task,
        "per_group": per_group,
        "overall": overall,
        "video_paths": video_paths,
        "config": config,
    }


def _fmt(x: float | None, spec: str) -> str:
    return "–" if x is None else format(x, spec)


def markdown_table(info: dict) -> str:
    """Per-task rows plus an overall row."""
    lines = [
        "| task | group | success % | episodes | avg length | avg iterations | latency ms (median / p90) |",
        "|---|---|---:|---:|---:|---:|---:|",
    ]
    rows = [(t["task"], t["task_group"], t["metrics"]) for t in info["per_task"]]
    rows.append(("**overall**", "", info["overall"]))
    for name, group, m in rows:
        lat = f"{_fmt(m['latency_ms_median'], '.1f')} / {_fmt(m['latency_ms_p90'], '.1f')}"
        lines.append(
            f"| {name} | {group} | {m['pc_success']:.1f} | {m['n_episodes']} | {m['avg_length']:.1f} | "
            f"{_fmt(m['avg_iterations'], '.2f')} | {lat} |"
        )
    return "\n".join(lines) + "\n"


def iterations_histogram(iterations: list[int], path: str | Path, title: str = "") -> None:
    """Histogram of the recurrent depth used per inference call (adaptive halting, RD-VLA Fig. 5 style)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5, 3.2))
    hi = max(iterations)
    ax.hist(iterations, bins=np.arange(0.5, hi + 1.5), color="tab:blue", edgecolor="white")
    ax.set_xlabel("recurrent iterations per call")
    ax.set_ylabel("calls")
    ax.set_title(title or f"adaptive depth (mean {np.mean(iterations):.2f})")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def _check_policy_fits(ckpt: str | Path, sim: Any) -> None:
    """One line naming the mismatch when the checkpoint cannot act in this simulator (cameras, state, action)."""
    cfg = json.loads((Path(ckpt) / "config.json").read_text())["policy"]
    problems = []
    if cfg.get("action_dim") != sim.action_dim:
        problems.append(f"action_dim {cfg.get('action_dim')} != {sim.action_dim}")
    if cfg.get("state_dim") != sim.state_dim:
        problems.append(f"state_dim {cfg.get('state_dim')} != {sim.state_dim}")
    bad = [c for c in cfg.get("cameras", []) if c not in sim.cameras]
    if bad:
        problems.append(f"cameras {bad} not in {list(sim.cameras)}")
    if problems:
        raise ValueError(f"checkpoint {ckpt} does not fit --env {sim.name}: {'; '.join(problems)}")


def evaluate(
    run_dir: str | Path,
    tasks: str | list[str],
    episodes: int | None,
    *,
    mode: str | None = None,
    iterations: int | None = None,
    halting: str | None = None,
    seed: int | None = None,
    max_steps: int | None = None,
    workers: int = 2,
    video_dir: str | Path | None = None,
    out_dir: str | Path | None = None,
    progress: bool = True,
    env: str = "metaworld",
    protocol: str | None = None,
    gripper: str | None = None,
    execution: str | None = None,
    device: str = "cpu",
    precision: str = "auto",
    max_batch: int | None = None,
    resume: bool = True,
) -> dict:
    """Evaluate a policy on a simulator's evaluation episodes; writes eval_info.json / eval_table.md to `out_dir`.

    `tasks`: names and/or suites (comma-separated string or list). `episodes` / `seed` / `max_steps` default to
    the protocol's (None). `video_dir`: GIF (and MP4 with PyAV) of the first episode of each task. Cameras and
    image size come from the policy's config. The policy is loaded once, on `device` (cpu, cuda, auto) at
    `precision`; `workers` env processes send it their observations, at most `max_batch` (default: workers) per
    call (eval/pool.py). With `out_dir`, each finished episode goes to out_dir/episodes.jsonl at once, and a run
    interrupted before eval_info.json was written resumes from it (`resume=False`: start over;
    eval/episodes_log.py). Ctrl-C / SIGTERM raise `EvalInterrupted` (the finished episodes kept).
    """
    from latentvla.device import autocast_dtype, resolve_device
    from latentvla.policy import resolve_checkpoint

    if out_dir is not None and Path(out_dir).exists() and not Path(out_dir).is_dir():
        raise ValueError(f"--out {out_dir} is an existing file; eval writes a directory there: pick another path.")
    if max_batch is not None and max_batch < 1:
        raise ValueError(f"max_batch must be >= 1, got {max_batch}")
    device = resolve_device(device)
    autocast_dtype(device, precision)  # a bad --precision fails here, before any work

    sim = get_simulator(env)
    proto = sim.protocol(protocol)
    episodes = proto.episodes if episodes is None else episodes
    seed = proto.seed if seed is None else seed
    if episodes < 1:
        raise ValueError(f"episodes must be >= 1, got {episodes}")
    ckpt = resolve_checkpoint(run_dir)  # a clear error before any worker starts
    names = sim.resolve_tasks(tasks)
    sampling = (mode, iterations, halting, seed, max_steps)
    settings = EvalSettings(str(run_dir), *sampling, env, protocol, gripper, execution, device, precision)
    _check_policy_fits(ckpt, sim)
    horizon = json.loads((Path(ckpt) / "config.json").read_text())["policy"].get("horizon")
    sim.require()
    jobs, log = _plan_jobs(ckpt, settings, names, episodes, video_dir, out_dir, resume)
    kept = list(log.finished.values()) if log is not None else []
    todo = [j for j in jobs if log is None or (j[0], j[1]) not in log.finished]
    start = time.perf_counter()
    results = _run_interruptible(settings, todo, workers, progress, max_batch, log, len(kept), len(jobs))
    results = sorted(kept + results, key=lambda r: (r["task"], r["episode"]))
    info = summarize(results, names, time.perf_counter() - start, settings, horizon)
    info["episodes"] = [{k: v for k, v in r.items() if k != "actions"} for r in results]
    info["overall"]["resumed_episodes"] = len(kept)
    if out_dir is not None:
        _write_outputs(Path(out_dir), info, results, halting)
    # In memory only (not written): the executed actions per (task, episode), for determinism checks.
    info["actions"] = {(r["task"], r["episode"]): r["actions"] for r in results}
    return info


def _plan_jobs(
    ckpt: str | Path,
    settings: EvalSettings,
    names: list[str],
    episodes: int,
    video_dir: str | Path | None,
    out_dir: str | Path | None,
    resume: bool,
) -> tuple[list[tuple], Any]:
    """Every (task, episode, video stem) job, and with `out_dir` the OUT/episodes.jsonl of this evaluation
    (eval/episodes_log.py), whose finished episodes are not run again."""
    from latentvla.eval.episodes_log import EpisodeLog, checkpoint_identity

    vdir = Path(video_dir) if video_dir is not None else None
    jobs = [
        (t, e, str(vdir / f"{t}_ep{e}") if vdir is not None and e == 0 else None)
        for t in names
        for e in range(episodes)
    ]
    if out_dir is None:
        return jobs, None
    fingerprint = {
        "checkpoint": checkpoint_identity(ckpt),
        "settings": asdict(settings),
        "tasks": names,
        "episodes": episodes,
        "video": vdir is not None,
    }
    log = EpisodeLog(out_dir, fingerprint, resume=resume)
    if log.discarded:
        print(
            f"eval: {log.path} held {log.discarded} episodes of a different evaluation; starting over",
            file=sys.stderr,
        )
    if log.finished:
        print(
            f"eval: resuming, {len(log.finished)} of {len(jobs)} episodes already in {log.path}", file=sys.stderr
        )
    return jobs, log


def _run_interruptible(
    settings: EvalSettings,
    todo: list[tuple],
    workers: int,
    progress: bool,
    max_batch: int | None,
    log: Any,
    n_kept: int,
    n_jobs: int,
) -> list[dict]:
    """`_run_jobs` with every finished episode in `log` at once; Ctrl-C / SIGTERM raise `EvalInterrupted`."""
    in_main = threading.current_thread() is threading.main_thread()
    previous = signal.signal(signal.SIGTERM, _raise_terminated) if in_main else None
    finished: list[dict] = []  # appended as each episode completes (the log too): survives an interruption

    def on_done(res: dict) -> None:
        if log is not None:
            log.append(res)
        finished.append(res)

    try:
        return _run_jobs(
            settings,
            todo,
            max(1, min(workers, len(todo))),
            progress,
            on_done=on_done,
            max_batch=max_batch,
            already=n_kept,
        )
    except (KeyboardInterrupt, _Terminated) as e:
        signum = signal.SIGINT if isinstance(e, KeyboardInterrupt) else signal.SIGTERM
        n_done = n_kept + len(finished)
        raise EvalInterrupted(signum, n_done, n_jobs, log.path if log is not None else None) from None
    finally:
        if previous is not None:
            signal.signal(signal.SIGTERM, previous)
        if log is not None:
            log.close()


def _write_outputs(out: Path, info: dict, results: list[dict], halting: str | None) -> None:
    """eval_info.json, eval_table.md and, with adaptive halting, the histogram of iterations per call."""
    out.mkdir(parents=True, exist_ok=True)
    (out / "eval_info.json").write_text(json.dumps(info, indent=2))
    (out / "eval_table.md").write_text(markdown_table(info))
    its = [x for r in results for x in r["iterations"]]
    if halting is not None and its:
        iterations_histogram(its, out / "iterations_hist.png", f"{halting}: mean {np.mean(its):.2f} iterations")
