"""`latentvla demo`: the main job — collect, annotate, train, evaluate and benchmark on Meta-World, on CPU.

    latentvla demo --out outputs/demo                      # default: 4 tasks, lara + rdvla + lara-no-cot, <= 30 min
    latentvla demo --minutes 10 --models rdvla             # smaller
    latentvla demo --tasks mt10 --episodes-per-task 40 --steps 20000 --minutes 600

Steps (each writes under --out, and each is skipped when its output already exists, so an interrupted demo
re-run continues where it stopped):
    1. data/        scripted-expert demonstrations with automatic CoT annotation (LeRobot v3.0)
    2. runs/<m>/    training of each model; with no --steps, the step count is set from a measured throughput so
                    that training fits the --minutes budget (what is left after collection, minus evaluation)
    3. eval/<m>/    held-out evaluation (split "eval": configurations disjoint from the training ones)
    4. latency/     per-call latency of each reasoning path, RD memory vs depth
    5. report.md, summary.json (best_pc_success in percent and per-model results), plots
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from datetime import UTC, datetime
from pathlib import Path

DEFAULT_TASKS = "button-press-topdown,drawer-close,window-open,coffee-pull"
DEFAULT_MODELS = "lara,rdvla"  # add lara-no-cot (the no-reasoning ablation) when the budget allows
# Share of the training budget per model (the curriculum model needs the most; no-cot is the fast ablation).
TRAIN_SHARES = {"lara": 0.5, "rdvla": 0.5, "lara-no-cot": 0.25, "lara-rd": 0.5, "lara-explicit": 0.3,
                "lara-latent-text": 0.4}  # fmt: skip
# CPU-budget overrides of the recurrent head: the paper trains with mean depth 32 (r ~ log-normal Poisson) and
# runs 12 iterations at test time; on 2 cores a mean of 12 keeps 3x the optimizer steps in the same minutes.
# TBPTT depth stays at the paper's 8. Recorded in each run's config.json.
CPU_OVERRIDES = {"rdvla": ["policy.recurrent.mean_recurrence=12", "policy.iterations=12"],
                 "lara-rd": ["policy.recurrent.mean_recurrence=12", "policy.iterations=12"]}  # fmt: skip


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser("demo", help="the main job: collect -> train -> eval -> bench on Meta-World (CPU)",
                              description=__doc__.splitlines()[0])  # fmt: skip
    p.add_argument("--out", default="outputs/demo")
    p.add_argument("--tasks", default=DEFAULT_TASKS, help="Meta-World task names or a suite (>= 1 grasping task)")
    p.add_argument("--models", default=DEFAULT_MODELS, help="comma-separated presets to train and compare")
    p.add_argument("--episodes-per-task", type=int, default=25, help="expert demonstrations per task")
    p.add_argument("--eval-episodes", type=int, default=10, help="held-out evaluation episodes per task")
    p.add_argument("--steps", type=int, default=None, help="training steps per model (default: fit --minutes)")
    p.add_argument("--minutes", type=float, default=30.0, help="wall-clock budget for the whole demo")
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--image-size", type=int, default=64)
    p.add_argument("--camera", default="corner4")
    p.add_argument("--max-steps", type=int, default=200, help="episode cap during evaluation")
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--latency-repeats", type=int, default=10, help="timed calls per path in the latency bench")
    p.set_defaults(func=main)


def _log(msg: str) -> None:
    print(f"[demo {datetime.now().strftime('%H:%M:%S')}] {msg}", flush=True)


def _plan_steps(models: list[str], dataset: Path, budget_s: float, batch: int, overrides: list[str]) -> dict:
    """Steps per model so that training fits `budget_s`, from a short measured throughput per preset."""
    from latentvla.bench.train_throughput import run_train_bench

    shares = {m: TRAIN_SHARES.get(m, 0.3) for m in models}
    total = sum(shares.values())
    plan = {}
    for m in models:
        rate = run_train_bench(
            [m], dataset, steps=3, batch_size=batch, warmup=1, overrides=[*overrides, *CPU_OVERRIDES.get(m, [])]
        )[0]
        steps_per_s = rate["samples_per_s"] / batch
        plan[m] = max(50, int(0.85 * budget_s * shares[m] / total * steps_per_s))  # 15 % slack: logging, ckpts
        _log(f"{m}: {rate['samples_per_s']:.0f} samples/s measured -> {plan[m]} steps")
    return plan


def main(args: argparse.Namespace) -> int:
    import torch

    from latentvla.bench.latency import bench_latency, format_table
    from latentvla.config import apply_overrides, get_preset
    from latentvla.data.collect import collect
    from latentvla.eval.evaluate import evaluate
    from latentvla.policy import Policy
    from latentvla.train.loop import train

    t0, budget = time.time(), args.minutes * 60
    out = Path(args.out)
    models = [m.strip() for m in args.models.split(",") if m.strip()]
    for m in models:
        get_preset(m)  # did-you-mean before any work
    overrides = [f"policy.cameras={args.camera}", f"policy.image_size={args.image_size}"]

    data = out / "data"
    if not (data / "meta" / "info.json").is_file():
        _log(f"1/5 collecting {args.episodes_per_task} demos/task of {args.tasks}")
        collect(args.tasks, args.episodes_per_task, args.image_size, data, seed=args.seed, workers=args.workers,
                cameras=(args.camera,), resume=(out / "data.partial").exists())  # fmt: skip
    else:
        _log(f"1/5 reusing {data}")

    tasks = json.loads((data / "meta" / "info.json").read_text()).get("latentvla_collect", {}).get("tasks")
    tasks = ",".join(tasks) if tasks else args.tasks
    n_tasks = len(tasks.split(","))
    eval_reserve = len(models) * (
        30 + n_tasks * args.eval_episodes * args.max_steps * 0.012 / max(1, args.workers)
    )
    train_budget = budget - (time.time() - t0) - eval_reserve - 40 * len(models)  # 40 s per model: latency bench
    steps = {m: args.steps for m in models} if args.steps else _plan_steps(
        models, data, max(60.0, train_budget), args.batch_size, overrides)  # fmt: skip

    results = {}
    for i, m in enumerate(models):
        run = out / "runs" / m
        if not (run / "checkpoints").exists() or not any((run / "checkpoints").glob("0*")):
            _log(f"2/5 training {m} for {steps[m]} steps ({i + 1}/{len(models)})")
            cfg = apply_overrides(
                get_preset(m),
                [
                    *overrides,
                    *CPU_OVERRIDES.get(m, []),
                    f"steps={steps[m]}",
                    f"batch_size={args.batch_size}",
                    f"seed={args.seed}",
                    f"save_every={steps[m]}",
                    "log_every=25",
                ],
            )
            t = time.time()
            summary = train(cfg, data, run, overwrite=True)  # no checkpoint yet: restart a killed run
            results[m] = {"train_s": time.time() - t, "steps": steps[m], "train_summary": summary}
        else:
            _log(f"2/5 reusing {run}")
            results[m] = {"steps": steps[m]}

    for m in models:
        _log(f"3/5 evaluating {m} on {args.eval_episodes} held-out episodes/task")
        info = evaluate(out / "runs" / m, tasks, args.eval_episodes, mode=None, seed=args.seed,
                        max_steps=args.max_steps, workers=args.workers, out_dir=out / "eval" / m)  # fmt: skip
        info.pop("actions", None)
        results[m]["eval"] = {"overall": info["overall"], "per_task": info["per_task"]}

    latency = {}
    torch.set_num_threads(max(1, args.workers))
    for m in models:
        _log(f"4/5 latency benchmark of {m}")
        policy = Policy.from_pretrained(out / "runs" / m).eval()
        latency[m] = bench_latency(policy, warmup=2, repeats=args.latency_repeats)
        (out / "latency").mkdir(parents=True, exist_ok=True)
        (out / "latency" / f"{m}.json").write_text(json.dumps(latency[m], indent=2))

    summary = _write_report(out, args, tasks, models, results, latency, time.time() - t0, format_table)
    print(json.dumps({k: summary[k] for k in ("best_pc_success", "best_model", "elapsed_min")}, indent=2))
    print((out / "report.md").read_text())
    return 0


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


def _write_report(out, args, tasks, models, results, latency, elapsed, format_table) -> dict:
    best = max(models, key=lambda m: results[m]["eval"]["overall"]["pc_success"])
    summary = {
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
        "command": " ".join(["latentvla", *sys.argv[1:]]) if sys.argv and "demo" in sys.argv else "latentvla demo",
        "tasks": tasks.split(","),
        "best_model": best,
        "best_pc_success": results[best]["eval"]["overall"]["pc_success"],
        "elapsed_min": round(elapsed / 60, 2),
        "models": {m: {**results[m], "latency": latency[m]} for m in models},
    }
    (out / "summary.json").write_text(json.dumps(summary, indent=2, default=str))
    plot = _success_plot(out, models, results)
    names = [t["task"] for t in results[models[0]]["eval"]["per_task"]]
    lines = [f"# latentvla demo — {summary['date']}", "", f"Command: `{summary['command']}`  ",
             f"Elapsed: {summary['elapsed_min']} min. Tasks: {', '.join(names)}. "
             f"Held-out episodes per task: {args.eval_episodes} (split `eval`, disjoint from training).", "",
             "## Success rate (%)", "", "| model | steps | " + " | ".join(n.replace("-v3", "") for n in names)
             + " | average | mean iterations |", "|---|---:|" + "---:|" * (len(names) + 2)]  # fmt: skip
    for m in models:
        per = [f"{t['metrics']['pc_success']:.0f}" for t in results[m]["eval"]["per_task"]]
        ov = results[m]["eval"]["overall"]
        iters = ov.get("avg_iterations")
        lines.append(f"| {m} | {results[m]['steps']} | " + " | ".join(per) + f" | **{ov['pc_success']:.1f}** | "
                     + (f"{iters:.1f}" if iters else "-") + " |")  # fmt: skip
    lines += ["", f"![success]({plot.name})", "", "## Latency per call (CPU, batch 1)", ""]
    for m in models:
        lines += [f"### {m}", "", format_table(latency[m]), ""]
    lines += ["## Training curves", ""] + [f"![{m}](runs/{m}/loss.png)" for m in models]
    (out / "report.md").write_text("\n".join(lines) + "\n")
    return summary
