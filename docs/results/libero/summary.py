"""summary.json, a per-task table and a plot from `latentvla ablations --out` directories.

    python docs/results/libero/summary.py OUT/steps [OUT/minutes ...] --suite libero_object --out docs/results/libero

Reads every evaluated run under each directory (eval/<model>/seed<s>/eval_info.json, whichever lane or call made
it) rather than one call's ablations.json, so seeds run in parallel lanes aggregate together, also across
directories. For each model: the success rate averaged over the suite's tasks per training seed, then mean and sample std over seeds; the optimizer
steps and training wall clock of each run (the last row of its metrics.jsonl); per-task means. Equal-wall-clock
directories (runs trained with `--minutes`) land under "<model>@<M>min".
"""

from __future__ import annotations

import argparse
import json
import re
from pathlib import Path

from latentvla.scripts.ablations import aggregate, plot_ablations


def _last_row(run: Path) -> dict:
    return json.loads((run / "metrics.jsonl").read_text().splitlines()[-1])


def _short(task: str) -> str:
    return re.sub(r"^.*/(pick_up_the_)?|_and_place_it_in_the_basket$", "", task)


def collect(out_dirs: list[Path]) -> tuple[dict, dict]:
    """({label: {seed: {task: pc_success}}}, {label: {"seeds": [...], "steps": [...], "minutes": [...]}}) over
    all `out_dirs` together: one model's seeds may sit in several directories (one lane per seed)."""
    found = [(p.parent.name, int(p.name[4:]), d) for d in out_dirs for p in d.glob("eval/*/seed*")]
    per_run, runs = {}, {}
    for model, seed, out_dir in sorted(found, key=lambda f: f[:2]):  # seed order within a model
        info_path = out_dir / "eval" / model / f"seed{seed}" / "eval_info.json"
        if not info_path.is_file():
            continue
        run = out_dir / "runs" / model / f"seed{seed}"
        minutes = json.loads((run / "checkpoints" / "last" / "config.json").read_text())["train"]["minutes"]
        label = model if minutes is None else f"{model}@{minutes:g}min"
        if seed in per_run.get(label, {}):
            raise SystemExit(f"{label}: seed {seed} evaluated in two of the directories; pass one of them")
        info, last = json.loads(info_path.read_text()), _last_row(run)
        per_run.setdefault(label, {})[seed] = {t["task"]: t["metrics"]["pc_success"] for t in info["per_task"]}
        r = runs.setdefault(label, {"seeds": [], "steps": [], "minutes": [], "episodes_per_task": set()})
        r["seeds"].append(seed)
        r["steps"].append(int(last["step"]))
        r["minutes"].append(round(last["time"] / 60, 1))
        r["episodes_per_task"].add(info["per_task"][0]["metrics"]["n_episodes"])
    return per_run, runs


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("dirs", nargs="+", type=Path, help="`latentvla ablations --out` directories")
    p.add_argument("--suite", required=True)
    p.add_argument(
        "--out", type=Path, required=True, help="writes summary.json (other suites kept), <suite>.md/.png"
    )
    args = p.parse_args()
    per_run, runs = collect(args.dirs)
    agg = aggregate(per_run)
    suite = {}
    for label, row in agg.items():
        seeds = sorted(per_run[label])
        mean, std = row["average"]  # over the seeds' task averages (ablations.aggregate)
        suite[label] = {
            "mean": round(mean, 2),
            "std": round(std, 2) if len(seeds) > 1 else None,
            "seeds": [round(sum(per_run[label][s].values()) / len(per_run[label][s]), 2) for s in seeds],
            "seed_ids": seeds,
            "steps": runs[label]["steps"],
            "minutes": runs[label]["minutes"],
            "episodes_per_task": sorted(runs[label]["episodes_per_task"]),
            "per_task": {_short(t): round(v[0], 2) for t, v in row.items() if t != "average"},
        }
    args.out.mkdir(parents=True, exist_ok=True)
    path = args.out / "summary.json"
    summary = json.loads(path.read_text()) if path.is_file() else {}
    summary[args.suite] = suite
    path.write_text(json.dumps(summary, indent=2) + "\n")
    tasks = list(next(iter(suite.values()))["per_task"])
    lines = [
        "| model | seeds | " + " | ".join(tasks) + " | **average** |",
        "|---|---:|" + "---:|" * (len(tasks) + 1),
    ]
    for label, s in suite.items():
        cells = [f"{agg[label][t][0]:.0f}" for t in agg[label] if t != "average"]
        spread = f" ± {s['std']:.1f}" if s["std"] is not None else ""
        lines.append(
            f"| `{label}` | {len(s['seeds'])} | " + " | ".join(cells) + f" | **{s['mean']:.1f}{spread}** |"
        )
    (args.out / f"{args.suite}.md").write_text("\n".join(lines) + "\n")
    plot_ablations(agg, args.out / f"{args.suite}.png")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
