"""`docs/results/rl/summary.json` + `rl.png` from the outputs of runs/rl_metaworld.sh.

    python -m latentvla.rl.summary --root outputs/rl_mw --out docs/results/rl

Reads, under ROOT:
    rl/<model>_<algo>/rl_summary.json              each RL run (`latentvla rl`): minutes, env steps, curve
    eval/<model>_before/eval_info.json             `latentvla eval` of the starting checkpoint
    eval/<model>_<algo>_after/eval_info.json       `latentvla eval` of the RL output (same episodes, same protocol)
and writes {"<model>": {"<task>": {"before": %, "after": %}, "algorithm", "minutes", "env_steps", ...}} (the run
of `--primary` algorithm under the model's name, the others under "<model>/<algo>"), with the issue's target
check: the mean change over the hard tasks and the largest drop on any other task. Without an "after" eval the
run's own held-out numbers (its in-loop evaluation) are used and the entry says so (`"source": "rl-heldout"`).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

HARD = ("reach", "push", "pick-place")


def _eval_pct(path: Path) -> dict[str, float] | None:
    if not path.is_file():
        return None
    info = json.loads(path.read_text())
    return {t["task"]: float(t["metrics"]["pc_success"]) for t in info["per_task"]}


def _base(task: str) -> str:
    return task[:-3] if task.endswith("-v3") else task


def summarize(root: str | Path, primary: str = "ppo", hard: tuple[str, ...] = HARD) -> dict[str, Any]:
    root = Path(root)
    runs = sorted((root / "rl").glob("*/rl_summary.json"))
    if not runs:
        raise FileNotFoundError(f"no RL runs under {root / 'rl'} (expected rl/<model>_<algo>/rl_summary.json)")
    out: dict[str, Any] = {}
    for path in runs:
        run = json.loads(path.read_text())
        model, algo = run["model"], run["algorithm"]
        before = _eval_pct(root / "eval" / f"{model}_before" / "eval_info.json")
        after = _eval_pct(root / "eval" / f"{model}_{algo}_after" / "eval_info.json")
        source = "latentvla eval"
        if before is None or after is None:
            before, after, source = run["before"], run["after"], "rl-heldout"
        entry: dict[str, Any] = {
            _base(t): {"before": before[t], "after": after[t]} for t in sorted(after) if t in before
        }
        deltas = {t: v["after"] - v["before"] for t, v in entry.items()}
        hard_d = [d for t, d in deltas.items() if t in hard]
        easy_d = [d for t, d in deltas.items() if t not in hard]
        entry.update(
            algorithm=algo,
            minutes=round(run["minutes"], 2),
            env_steps=run["env_steps"],
            updates=run["updates"],
            rl_tasks=[_base(t) for t in run["tasks"]],
            source=source,
            hard_mean_delta=sum(hard_d) / len(hard_d) if hard_d else None,
            easy_max_drop=max([-d for d in easy_d] + [0.0]) if easy_d else None,
            curve=[{"env_steps": c["env_steps"], "success": c["success"]} for c in run["curve"]],
        )
        out[model if algo == primary else f"{model}/{algo}"] = entry
    return out


def plot(summary: dict[str, Any], path: str | Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    keys = list(summary)
    fig, axes = plt.subplots(1, 2, figsize=(13, 4.5))
    ax = axes[0]
    tasks = sorted({t for k in keys for t, v in summary[k].items() if isinstance(v, dict) and "before" in v})
    width = 0.8 / max(1, len(keys))
    for i, k in enumerate(keys):
        xs = [j + i * width for j in range(len(tasks))]
        before = [summary[k].get(t, {}).get("before", 0.0) for t in tasks]
        after = [summary[k].get(t, {}).get("after", 0.0) for t in tasks]
        ax.bar(xs, after, width, label=f"{k} after", alpha=0.85)
        ax.scatter(xs, before, marker="_", s=200, color="black", zorder=3, label="before" if i == 0 else None)
    ax.set_xticks([j + 0.4 - width / 2 for j in range(len(tasks))], tasks, rotation=30, ha="right")
    ax.set_ylabel("held-out success (%)")
    ax.set_title("before (black tick) / after RL")
    ax.legend(fontsize=7)
    ax = axes[1]
    for k in keys:
        c = summary[k]["curve"]
        ax.plot([p["env_steps"] for p in c], [p["success"] for p in c], marker="o", label=k)
    ax.set_xlabel("environment steps")
    ax.set_ylabel("held-out success, RL tasks (%)")
    ax.set_title("during RL (in-loop held-out evaluation)")
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--root", required=True, help="the output directory of runs/rl_metaworld.sh")
    p.add_argument("--out", default="docs/results/rl")
    p.add_argument("--primary", default="ppo", help="the algorithm reported under the model's own name")
    args = p.parse_args(argv)
    summary = summarize(args.root, args.primary)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "summary.json").write_text(json.dumps(summary, indent=2))
    plot(summary, out / "rl.png")
    for k, v in summary.items():
        print(
            f"{k:16s} {v['algorithm']:5s} hard mean delta {v['hard_mean_delta']} easy max drop {v['easy_max_drop']} "
            f"({v['minutes']} min, {v['env_steps']} env steps)"
        )
    print(f"wrote {out / 'summary.json'} and {out / 'rl.png'}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
