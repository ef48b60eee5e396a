"""`latentvla ablations`: LaRA-VLA's CoT ablation ladder (Table 4) with seeds, trained and evaluated in one go.

    latentvla ablations --dataset data/mw6 --out docs/results/ablations --steps 3000          # 4 presets x 3 seeds
    latentvla ablations --dataset data/mw6 --out /tmp/abl --steps 5 --seeds 0 --episodes 1    # smoke
    latentvla ablations --env libero --tasks libero_object --dataset data/lo20 --out abl_lo \
        --presets lara,lara-no-cot,rdvla,bc --steps 2000 --episodes 5     # LIBERO: the papers' protocol, init states 0-4
    latentvla ablations ... --minutes 10                                   # equal wall clock instead of equal steps

The four presets differ in one factor each (LaRA Table 4: 55.2 < 58.3 < 64.6 < 68.8 on LIBERO-Long):
no CoT (`lara-no-cot`) / explicit text CoT (`lara-explicit`) / latent text (`lara-latent-text`) / latent text +
visual latents (`lara`). Every (preset, seed) trains for the same number of steps with `seed=k` and is evaluated
on the same held-out episodes (split `eval`, evaluation seed fixed, so only the training seed varies) of any
registered simulator under its evaluation protocol (`--env`, `--protocol`; LIBERO's default is the papers':
episode i starts from the benchmark's init state i). `--minutes M` trains every run for M minutes of wall clock
instead (`--steps` is then the schedule's length and a cap). Each step is skipped when its output exists, so an
interrupted sweep re-run continues. Writes to --out:

    runs/<preset>/seed<k>/   eval/<preset>/seed<k>/   ablations.json   ablations.md (mean ± std)   ablations.png
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from datetime import UTC, datetime
from pathlib import Path

from latentvla.errors import UserError
from latentvla.scripts.choices import RegistryHelpFormatter
from latentvla.scripts.demo import DEFAULT_TASKS  # the same six tasks as the demo

DEFAULT_PRESETS = "lara-no-cot,lara-explicit,lara-latent-text,lara"
PAPER_TABLE4 = {"lara-no-cot": 55.2, "lara-explicit": 58.3, "lara-latent-text": 64.6, "lara": 68.8}  # LIBERO-Long


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "ablations",
        help="CoT ablation presets x seeds: train, evaluate, mean ± std table",
        description=__doc__.splitlines()[0],
        formatter_class=RegistryHelpFormatter,
    )
    p.add_argument("--dataset", required=True, help="LeRobot dataset dir (e.g. from `latentvla collect`)")
    p.add_argument("--out", required=True)
    p.add_argument("--presets", default=DEFAULT_PRESETS)
    p.add_argument("--seeds", default="0,1,2")
    p.add_argument("--steps", type=int, default=3000, help="training steps, the same for every preset")
    p.add_argument("--minutes", type=float, default=None, help="train every run for this wall clock instead")
    p.add_argument("--env", default="metaworld", help="simulator: {simulators}")
    p.add_argument("--protocol", default=None, help="the simulator's evaluation protocol (default: its first)")
    p.add_argument("--tasks", default=None, help=f"tasks or suites (Meta-World default: {DEFAULT_TASKS})")
    p.add_argument("--episodes", type=int, default=10, help="held-out evaluation episodes per task")
    p.add_argument("--max-steps", type=int, default=None, help="episode cap (default: the protocol's per task)")
    p.add_argument("--workers", type=int, default=2, help="parallel rollout processes")
    p.add_argument("overrides", nargs="*", metavar="KEY=VALUE", help="TrainConfig overrides for every run")
    p.set_defaults(func=main)


def run_config(preset: str, seed: int, steps: int, overrides: list[str], minutes: float | None = None):
    """The TrainConfig of one (preset, seed) run: the user's key=value `overrides` on the preset, then the sweep's
    own steps (or wall-clock minutes) and seed (one checkpoint, at the end)."""
    from dataclasses import replace

    from latentvla.config import apply_overrides, get_preset

    cfg = apply_overrides(get_preset(preset), list(overrides))
    return replace(cfg, steps=steps, minutes=minutes, seed=seed, save_every=steps)


def mean_std(values: list[float]) -> tuple[float, float]:
    """Mean and sample standard deviation (ddof 1; 0 for a single value)."""
    n = len(values)
    mean = sum(values) / n
    var = sum((v - mean) ** 2 for v in values) / (n - 1) if n > 1 else 0.0
    return mean, math.sqrt(var)


def aggregate(per_run: dict[str, dict[int, dict[str, float]]]) -> dict[str, dict[str, tuple[float, float]]]:
    """{preset: {seed: {task: pc_success}}} -> {preset: {task | "average": (mean, std) over seeds}}.

    A seed's "average" is its mean over tasks; the spread is then taken over seeds (what a reader compares).
    """
    out: dict[str, dict[str, tuple[float, float]]] = {}
    for preset, seeds in per_run.items():
        tasks = sorted({t for r in seeds.values() for t in r})
        row = {t: mean_std([seeds[s][t] for s in sorted(seeds)]) for t in tasks}
        row["average"] = mean_std([sum(seeds[s][t] for t in tasks) / len(tasks) for s in sorted(seeds)])
        out[preset] = row
    return out


def format_table(agg: dict[str, dict[str, tuple[float, float]]], n_seeds: int) -> str:
    presets = list(agg)
    tasks = [t for t in agg[presets[0]] if t != "average"]
    head = "| preset | " + " | ".join(t.replace("-v3", "") for t in tasks) + " | **average** | LaRA Table 4 |"
    lines = [head, "|---|" + "---:|" * (len(tasks) + 2)]
    for p in presets:
        cells = [f"{agg[p][t][0]:.1f} ± {agg[p][t][1]:.1f}" for t in tasks]
        m, s = agg[p]["average"]
        paper = PAPER_TABLE4.get(p)
        lines.append(
            f"| {p} | "
            + " | ".join(cells)
            + f" | **{m:.1f} ± {s:.1f}** | "
            + (f"{paper}" if paper is not None else "-")
            + " |"
        )
    lines.append(f"\nSuccess rate (%), mean ± sample std over {n_seeds} training seed(s).")
    return "\n".join(lines)


def plot_ablations(agg: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    presets = list(agg)
    fig, ax = plt.subplots(figsize=(1.6 * len(presets) + 2, 3.6))
    means = [agg[p]["average"][0] for p in presets]
    stds = [agg[p]["average"][1] for p in presets]
    ax.bar(range(len(presets)), means, yerr=stds, capsize=5, color="tab:blue", label="ours (mean ± std)")
    paper = [PAPER_TABLE4.get(p) for p in presets]
    if any(v is not None for v in paper):
        xs = [i for i, v in enumerate(paper) if v is not None]
        ax.plot(xs, [paper[i] for i in xs], "kD", label="LaRA Table 4 (LIBERO-Long)")
    ax.set_xticks(range(len(presets)), presets, rotation=15)
    ax.set_ylabel("success (%)")
    ax.set_ylim(0, 105)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def _checked_args(args: argparse.Namespace) -> tuple[list[str], list[int], str]:
    """(presets, seeds, tasks), every name checked (did-you-mean) before any work; `args.dataset` resolved."""
    from latentvla.config import get_preset
    from latentvla.envs.registry import get_simulator
    from latentvla.hub import resolve_dataset

    try:
        presets = [p.strip() for p in args.presets.split(",") if p.strip()]
        seeds = [int(s) for s in args.seeds.split(",") if s.strip()]
        for p in presets:
            get_preset(p)
        if not seeds or args.steps < 1 or args.episodes < 1:
            raise ValueError("need at least one seed, --steps >= 1 and --episodes >= 1")
        if args.minutes is not None and not args.minutes > 0:
            raise ValueError(f"--minutes is a training budget > 0, got {args.minutes}")
        if args.tasks is None and args.env != "metaworld":
            raise ValueError(f"--tasks is required with --env {args.env} (e.g. a suite such as libero_object)")
        tasks = args.tasks or DEFAULT_TASKS
        sim = get_simulator(args.env)
        sim.resolve_tasks(tasks)
        sim.protocol(args.protocol)
        args.dataset = str(resolve_dataset(args.dataset))  # a LeRobot repo id: its HF_LEROBOT_HOME copy
        if not Path(args.dataset, "meta", "info.json").is_file():
            raise ValueError(
                f"{args.dataset} is not a LeRobot dataset (no meta/info.json); make one with `latentvla collect`"
            )
    except ValueError as e:
        raise UserError(str(e)) from e
    return presets, seeds, tasks


def main(args: argparse.Namespace) -> int:
    from latentvla.eval.evaluate import evaluate
    from latentvla.train.checkpoint import latest_checkpoint
    from latentvla.train.loop import train

    out = Path(args.out)
    presets, seeds, tasks = _checked_args(args)
    per_run: dict[str, dict[int, dict[str, float]]] = {}
    for preset in presets:
        for seed in seeds:
            run, ev = out / "runs" / preset / f"seed{seed}", out / "eval" / preset / f"seed{seed}"
            if latest_checkpoint(run) is None:
                budget = f"{args.minutes} min" if args.minutes else f"{args.steps} steps"
                print(f"[ablations] training {preset} seed {seed} for {budget}", flush=True)
                cfg = run_config(preset, seed, args.steps, args.overrides, args.minutes)
                train(cfg, args.dataset, run, show_progress=False)
            info_path = ev / "eval_info.json"
            if info_path.is_file():
                info = json.loads(info_path.read_text())
            else:
                print(f"[ablations] evaluating {preset} seed {seed}", flush=True)
                info = evaluate(
                    run,
                    tasks,
                    args.episodes,
                    max_steps=args.max_steps,
                    workers=args.workers,
                    out_dir=ev,
                    progress=False,
                    env=args.env,
                    protocol=args.protocol,
                )
            per_run.setdefault(preset, {})[seed] = {
                t["task"]: t["metrics"]["pc_success"] for t in info["per_task"]
            }
    agg = aggregate(per_run)
    table = format_table(agg, len(seeds))
    cmd = " ".join(["latentvla", *sys.argv[1:]]) if "ablations" in sys.argv else "latentvla ablations"
    out.mkdir(parents=True, exist_ok=True)
    payload = {
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
        "command": cmd,
        "steps": args.steps,
        "minutes": args.minutes,
        "env": args.env,
        "protocol": args.protocol,
        "tasks": tasks,
        "seeds": seeds,
        "episodes_per_task": args.episodes,
        "per_run": per_run,
        "aggregate": {p: {t: {"mean": m, "std": s} for t, (m, s) in row.items()} for p, row in agg.items()},
        "paper_table4": PAPER_TABLE4,
    }
    (out / "ablations.json").write_text(json.dumps(payload, indent=2))
    (out / "ablations.md").write_text(f"# CoT ablations ({payload['date']})\n\nCommand: `{cmd}`\n\n{table}\n")
    plot_ablations(agg, out / "ablations.png")
    print(table)
    return 0
