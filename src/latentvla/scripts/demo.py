"""`latentvla demo`: the main job — collect, annotate, train, evaluate and benchmark on Meta-World, on CPU.

    latentvla demo --out outputs/demo                      # default: 6 tasks, lara/rdvla/lara-no-cot/bc, <= 30 min
    latentvla demo --minutes 10 --models rdvla             # smaller
    latentvla demo --tasks mt10 --episodes-per-task 40 --steps 20000 --minutes 600

Steps (each writes under --out, and each is skipped when its output already exists, so an interrupted demo
re-run continues where it stopped):
    1. data/        scripted-expert demonstrations with automatic CoT annotation (LeRobot v3.0)
    2. runs/<m>/    training of each model; with no --steps, every model trains for the same minutes (`minutes=`,
                    train/budget.py: its curriculum and LR follow the clock): an equal share of what is left of
                    --minutes after collection, minus evaluation and latency benches. --steps N trains N steps each
    3. eval/<m>/    held-out evaluation (split "eval": configurations disjoint from the training ones)
    4. latency/     per-call latency of each reasoning path, RD memory vs depth
    5. report.md, summary.json (best_pc_success in percent, per-model and per-task results, elapsed time, and
                    whether the reasoning models beat the no-reasoning ones), plots

Defaults follow a plain-BC feasibility run on this CPU: its six tasks (three with large visible targets, three whose goal is a
1-2 px dot: reach, push, pick-place), one camera (corner4, 64 px), and the plain image BC policy (`bc`) trained
in the same run next to `lara`, `rdvla` and the no-reasoning ablation `lara-no-cot`.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from datetime import UTC, datetime
from pathlib import Path

DEFAULT_TASKS = "button-press-topdown,drawer-close,window-open,reach,push,pick-place"
DEFAULT_MODELS = "lara,rdvla,lara-no-cot,bc"
# Models that reason (thinking tokens / recurrent depth) vs the no-reasoning references they must beat.
REASONING = ("lara", "rdvla", "lara-rd", "lara-latent-text", "lara-explicit")
BASELINES = ("bc", "lara-no-cot")
# CPU-budget overrides of the recurrent head: the paper trains with mean depth 32 (r ~ log-normal Poisson) and
# runs 12 iterations at test time; on 2 cores a mean of 12 keeps 3x the optimizer steps in the same minutes.
# TBPTT depth stays at the paper's 8. Recorded in each run's config.json.
CPU_RECURRENCE = {"rdvla": 12, "lara-rd": 12}  # preset -> mean training recurrence = test-time iterations


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "demo",
        help="the main job: collect -> train -> eval -> bench on Meta-World (CPU)",
        description=__doc__.splitlines()[0],
    )
    p.add_argument("--out", default="outputs/demo")
    p.add_argument("--tasks", default=DEFAULT_TASKS, help="Meta-World task names or a suite (>= 1 grasping task)")
    p.add_argument("--models", default=DEFAULT_MODELS, help="comma-separated presets to train and compare")
    p.add_argument("--episodes-per-task", type=int, default=25, help="expert demonstrations per task")
    p.add_argument("--eval-episodes", type=int, default=10, help="held-out evaluation episodes per task")
    p.add_argument("--steps", type=int, default=None, help="training steps per model (default: fit --minutes)")
    p.add_argument("--minutes", type=float, default=30.0, help="wall-clock budget for the whole demo")
    p.add_argument("--batch-size", type=int, default=None, help="all models (default: each preset's own)")
    p.add_argument("--image-size", type=int, default=64)
    p.add_argument("--camera", default="corner4")
    p.add_argument("--max-steps", type=int, default=200, help="episode cap during evaluation")
    p.add_argument("--workers", type=int, default=2)
    p.add_argument(
        "--loader-workers",
        type=int,
        default=1,
        help="DataLoader worker processes while training: frames are decoded lazily from PNG, and a worker "
        "does it beside the training process (docs/profile.md: 8-10 %% of a VLA step, 60 %% of bc's)",
    )
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--latency-repeats", type=int, default=10, help="timed calls per path in the latency bench")
    p.set_defaults(func=main)


def _log(msg: str) -> None:
    print(f"[demo {datetime.now().strftime('%H:%M:%S')}] {msg}", flush=True)


# A budgeted run lays its schedule over `steps` positions and stops at its minutes (train/budget.py), so `steps`
# is only the schedule's resolution and a cap on optimizer steps; this one never binds (bc runs ~15 steps/s on 2
# cores). It replaced a 3-step throughput probe that planned 4.7 min per model for runs of 3.0-3.7 min (LOG.md).
SCHEDULE_STEPS = 100_000
# Per model, outside its training clock: dataset open, model build, final checkpoint, loss plot, plus the last
# step's overshoot of the budget. Measured 1.8-5.9 s + < 1 step (lara, rdvla, bc on mw6, 2 cores, LOG.md).
SETUP_S = 10.0


def minutes_per_model(left_s: float, n_models: int) -> float:
    """Equal wall-clock per model: the seconds left for training split evenly, less each run's setup; >= 1 min."""
    return max(1.0, (left_s / max(1, n_models) - SETUP_S) / 60)


def _run_record(run: Path) -> dict:
    """Real steps and training-clock minutes of a finished run, read back from its newest checkpoint."""
    from latentvla.train.checkpoint import latest_checkpoint, load_training_state

    last = latest_checkpoint(run)
    elapsed = load_training_state(last).get("elapsed_s") if last else None
    return {
        "steps": int(last.name) if last else None,
        "minutes_used": elapsed / 60 if elapsed is not None else None,
    }


def demo_config(preset: str, args: argparse.Namespace, steps: int, minutes: float | None, batch_size: int):
    """One model's TrainConfig: the preset on the demo's camera(s) and image size, the CPU budget of a recurrent
    head (CPU_RECURRENCE), then this run's length, budget, batch and seed."""
    from dataclasses import replace

    from latentvla.config import get_preset

    cfg = get_preset(preset)
    cameras = tuple(c for c in args.camera.strip().split(",") if c)  # `--camera a,b`: two cameras
    policy = replace(cfg.policy, cameras=cameras, image_size=args.image_size)
    if preset in CPU_RECURRENCE:
        depth = CPU_RECURRENCE[preset]
        policy = replace(policy, recurrent=replace(policy.recurrent, mean_recurrence=depth), iterations=depth)
    return replace(
        cfg,
        policy=policy,
        num_workers=args.loader_workers,
        steps=steps,
        minutes=minutes,
        batch_size=batch_size,
        seed=args.seed,
        save_every=steps,
        log_every=25,
    )


def reasoning_verdict(per_model: dict[str, float]) -> str:
    """One sentence: did the best reasoning model beat every no-reasoning baseline that was run?"""
    reasoning = {m: v for m, v in per_model.items() if m in REASONING}
    baselines = {m: v for m, v in per_model.items() if m in BASELINES}
    if not reasoning or not baselines:
        return "Reasoning vs no reasoning: not compared (run at least one of each)."
    best = max(reasoning, key=reasoning.get)
    base = max(baselines, key=baselines.get)
    diff = reasoning[best] - baselines[base]
    against = ", ".join(f"{m} {v:.1f} %" for m, v in sorted(baselines.items()))
    if diff > 0:
        return f"Reasoning paid: {best} ({reasoning[best]:.1f} %) beat every no-reasoning model ({against})."
    return (
        f"Reasoning did not pay in this run: the best reasoning model, {best} ({reasoning[best]:.1f} %), "
        f"{'tied' if diff == 0 else 'lost to'} {base} ({against})."
    )


def main(args: argparse.Namespace) -> int:
    from latentvla.bench.latency import format_table
    from latentvla.config import get_preset

    t0, budget = time.time(), args.minutes * 60
    out = Path(args.out)
    models = [m.strip() for m in args.models.split(",") if m.strip()]
    for m in models:
        get_preset(m)  # did-you-mean before any work
    data = _collect_demos(args, out)
    tasks = json.loads((data / "meta" / "info.json").read_text()).get("latentvla_collect", {}).get("tasks")
    tasks = ",".join(tasks) if tasks else args.tasks
    minutes, steps = _training_plan(args, models, len(tasks.split(",")), budget - (time.time() - t0))
    results = _train_models(args, out, models, data, minutes, steps)
    _evaluate_models(args, out, models, tasks, results)
    latency = _bench_models(args, out, models)
    summary = _write_report(out, args, tasks, models, results, latency, time.time() - t0, format_table)
    print(json.dumps({k: summary[k] for k in ("best_pc_success", "best_model", "elapsed_min")}, indent=2))
    print((out / "report.md").read_text())
    return 0


def _collect_demos(args: argparse.Namespace, out: Path) -> Path:
    """Step 1: the expert demonstrations in OUT/data (reused when already published, resumed when partial)."""
    from latentvla.data.collect import collect

    data = out / "data"
    if not (data / "meta" / "info.json").is_file():
        _log(f"1/5 collecting {args.episodes_per_task} demos/task of {args.tasks}")
        collect(
            args.tasks,
            args.episodes_per_task,
            args.image_size,
            data,
            seed=args.seed,
            workers=args.workers,
            cameras=(args.camera,),
            resume=(out / "data.partial").exists(),
        )
    else:
        _log(f"1/5 reusing {data}")
    return data


def _training_plan(
    args: argparse.Namespace, models: list[str], n_tasks: int, left_s: float
) -> tuple[float | None, int]:
    """(minutes, steps) per model: --steps N, or what is left of the budget after collection, minus evaluation
    and latency benches, in equal shares over a schedule of SCHEDULE_STEPS positions."""
    if args.steps:
        return None, args.steps
    eval_reserve = len(models) * (
        30 + n_tasks * args.eval_episodes * args.max_steps * 0.012 / max(1, args.workers)
    )
    minutes = minutes_per_model(left_s - eval_reserve - 40 * len(models), len(models))
    _log(f"equal wall-clock per model: {minutes:.2f} min of training each")
    return minutes, SCHEDULE_STEPS


def _train_models(
    args: argparse.Namespace, out: Path, models: list[str], data: Path, minutes: float | None, steps: int
) -> dict[str, dict]:
    """Step 2: train every model into OUT/runs/<m> (a run with a checkpoint is reused); {model: run record}."""
    from latentvla.config import get_preset
    from latentvla.train.checkpoint import latest_checkpoint
    from latentvla.train.loop import train

    batch = {m: args.batch_size or get_preset(m).batch_size for m in models}
    results = {}
    for i, m in enumerate(models):
        run = out / "runs" / m
        if latest_checkpoint(run) is None:
            _log(
                f"2/5 training {m} for "
                + (f"{minutes:.2f} min" if minutes else f"{steps} steps")
                + f" ({i + 1}/{len(models)})"
            )
            cfg = demo_config(m, args, steps, minutes, batch[m])
            t = time.time()
            summary = train(cfg, data, run, overwrite=True)  # no checkpoint yet: restart a killed run
            used = summary.get("train_elapsed_s", summary["seconds"])
            results[m] = {
                "train_s": time.time() - t,
                "steps": summary["end_step"],
                "minutes_budget": minutes,
                "minutes_used": used / 60,
                "samples_per_s": summary["samples_per_s"],
                "train_summary": summary,
            }
        else:
            _log(f"2/5 reusing {run}")
            results[m] = {"minutes_budget": minutes, **_run_record(run)}
    return results


def _evaluate_models(args: argparse.Namespace, out: Path, models: list[str], tasks: str, results: dict) -> None:
    """Step 3: held-out evaluation of every model into OUT/eval/<m>; adds results[m]["eval"]."""
    from latentvla.eval.evaluate import evaluate

    for m in models:
        _log(f"3/5 evaluating {m} on {args.eval_episodes} held-out episodes/task")
        info = evaluate(
            out / "runs" / m,
            tasks,
            args.eval_episodes,
            mode=None,
            seed=args.seed,
            max_steps=args.max_steps,
            workers=args.workers,
            out_dir=out / "eval" / m,
        )
        info.pop("actions", None)
        results[m]["eval"] = {"overall": info["overall"], "per_task": info["per_task"]}


def _bench_models(args: argparse.Namespace, out: Path, models: list[str]) -> dict[str, dict]:
    """Step 4: the latency benchmark of every model into OUT/latency/<m>.json; {model: report}."""
    import torch

    from latentvla.bench.latency import bench_latency
    from latentvla.policy import Policy

    latency = {}
    torch.set_num_threads(max(1, args.workers))
    for m in models:
        _log(f"4/5 latency benchmark of {m}")
        policy = Policy.from_pretrained(out / "runs" / m).eval()
        latency[m] = bench_latency(policy, warmup=2, repeats=args.latency_repeats)
        (out / "latency").mkdir(parents=True, exist_ok=True)
        (out / "latency" / f"{m}.json").write_text(json.dumps(latency[m], indent=2))
    return latency


def _success_plot(out: Path, models: list[str], results: dict) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    tasks = [t["task"] for t in results[models[0]]["eval"]["per_task"]]
    x, w = np.arange(len(tasks) + 1), 0.8 / len(models)
    fig, ax = plt.subplots(figsize=(2 + 1.6 * len(x), 4))
    for i, m in enumerate(models):
        per = [t["metrics"]["pc_success"] for t in results[m]["eval"]["per_task"]]
        ax.bar(x + i * w, [*per, results[m]["eval"]["overall"]["pc_success"]], w, label=m)
    ax.set_xticks(x + w * (len(models) - 1) / 2, [*[t.replace("-v3", "") for t in tasks], "average"], rotation=20)
    ax.set_ylabel("success (%)")
    ax.set_ylim(0, 105)
    ax.legend()
    fig.tight_layout()
    path = out / "success.png"
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def per_task_table(models: list[str], results: dict) -> dict[str, dict[str, float]]:
    """{task: {model: pc_success}}: the models side by side on every task (plus "average")."""
    table: dict[str, dict[str, float]] = {}
    for m in models:
        for t in results[m]["eval"]["per_task"]:
            table.setdefault(t["task"], {})[m] = t["metrics"]["pc_success"]
        table.setdefault("average", {})[m] = results[m]["eval"]["overall"]["pc_success"]
    return table


def _write_report(out, args, tasks, models, results, latency, elapsed, format_table) -> dict:
    best = max(models, key=lambda m: results[m]["eval"]["overall"]["pc_success"])
    table = per_task_table(models, results)
    verdict = reasoning_verdict(table["average"])
    summary = {
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
        "command": " ".join(["latentvla", *sys.argv[1:]]) if sys.argv and "demo" in sys.argv else "latentvla demo",
        "tasks": tasks.split(","),
        "eval_episodes_per_task": args.eval_episodes,
        "best_model": best,
        "best_pc_success": results[best]["eval"]["overall"]["pc_success"],
        "per_task": table,
        "reasoning_paid": verdict.startswith("Reasoning paid"),
        "verdict": verdict,
        "elapsed_min": round(elapsed / 60, 2),
        "elapsed_s": round(elapsed, 1),
        "models": {m: {**results[m], "latency": latency[m]} for m in models},
    }
    (out / "summary.json").write_text(json.dumps(summary, indent=2, default=str))
    plot = _success_plot(out, models, results)
    lines = [
        f"# latentvla demo — {summary['date']}",
        "",
        f"Command: `{summary['command']}`  ",
        f"Elapsed: {summary['elapsed_min']} min. Held-out episodes per task: {args.eval_episodes} "
        "(split `eval`, disjoint from training).",
        "",
        f"**{verdict}**",
        "",
        "## Success rate (%), per task, models side by side",
        "",
        "| task | " + " | ".join(models) + " |",
        "|---|" + "---:|" * len(models),
    ]
    for task, row in table.items():
        name = f"**{task}**" if task == "average" else task.replace("-v3", "")
        lines.append(
            f"| {name} | "
            + " | ".join(f"{row[m]:.0f}" if task != "average" else f"**{row[m]:.1f}**" for m in models)
            + " |"
        )
    lines += [
        "",
        "| model | steps | minutes budgeted | minutes used | samples/s | mean iterations |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    fmt = lambda v, spec: "-" if v is None else format(v, spec)  # noqa: E731
    for m in models:
        r = results[m]
        cells = [
            r.get("steps"),
            fmt(r.get("minutes_budget"), ".2f"),
            fmt(r.get("minutes_used"), ".2f"),
            fmt(r.get("samples_per_s"), ".0f"),
            fmt(r["eval"]["overall"].get("avg_iterations") or None, ".1f"),
        ]
        lines.append(f"| {m} | " + " | ".join(str(c) for c in cells) + " |")
    lines += ["", f"![success]({plot.name})", "", "## Latency per call (CPU, batch 1)", ""]
    for m in models:
        lines += [f"### {m}", "", format_table(latency[m]), ""]
    lines += ["## Training curves", ""] + [f"![{m}](runs/{m}/loss.png)" for m in models]
    (out / "report.md").write_text("\n".join(lines) + "\n")
    return summary
