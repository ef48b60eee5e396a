"""Test-time compute sweeps of the recurrent-depth head on Meta-World (RD-VLA Fig. 4 and Table II).

    sweep_iterations(run, tasks, episodes, [1, 2, 4, 8, 12, 16, 24, 32], out_dir=D)  -> D/sweep_iterations.{md,json,png}
    sweep_delta(run, tasks, episodes, [1e-4, 5e-4, 1e-3], out_dir=D)                -> D/sweep_delta.{md,json,png}

Every point evaluates the same held-out episodes with the same per-episode torch seeds (eval/evaluate.py), so
the points are paired: a change in success comes from the depth / threshold, not from different initial
states. RD-VLA reports that success rises with depth and saturates around 8–12 iterations (Fig. 4), and that
MSE halting at δ = 5e-4 keeps the fixed-depth success with fewer mean iterations (Table II).
Each point's own eval_info.json goes to a subdirectory (`iterations_K/`, `delta_D/`).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from latentvla.eval.evaluate import evaluate


def require_recurrent_head(run_dir: str | Path) -> None:
    """Raise a clear error unless the checkpoint's action head is RD-VLA's recurrent-depth head."""
    from latentvla.policy import CONFIG, resolve_checkpoint

    ckpt = resolve_checkpoint(run_dir)
    head = json.loads((ckpt / CONFIG).read_text())["policy"].get("head", "flow")
    if head != "recurrent":
        raise ValueError(
            f"{run_dir} has a {head!r} action head, so recurrence depth cannot be swept; sweeps need a "
            "recurrent-depth checkpoint (train one with `latentvla train --preset rdvla` or `lara-rd`)."
        )


def parse_list(text: str, kind: type = float) -> list:
    """'1,2,4' -> [1, 2, 4] with a clear error on junk."""
    try:
        values = [kind(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise ValueError(f"expected a comma-separated list of {kind.__name__}s, got {text!r}") from None
    if not values or any(v <= 0 for v in values):
        raise ValueError(f"expected a non-empty list of positive {kind.__name__}s, got {text!r}")
    return values


# RD-VLA Fig. 4 (LIBERO, success % at fixed test-time iterations; Table II): the reference our curve is drawn
# next to. Different tasks and scale, so the shape (where it saturates), not the level, is what compares.
PAPER_FIG4 = {1: 8.4, 2: 40.5, 4: 84.1, 8: 92.6, 12: 93.0}


def _plot(
    xs: list[float],
    ys: list[float],
    path: Path,
    xlabel: str,
    title: str,
    labels: list[str] | None = None,
    logx: bool = False,
    reference: dict[int, float] | None = None,
) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5, 3.4))
    ax.plot(xs, ys, marker="o", color="tab:blue", label="this run" if reference else None)
    if reference:
        ax.plot(list(reference), list(reference.values()), "k--D", ms=4, label="RD-VLA Fig. 4 (LIBERO)")
        ax.legend(fontsize=8, loc="lower right")
    for x, y, lab in zip(xs, ys, labels or []):
        ax.annotate(lab, (x, y), textcoords="offset points", xytext=(4, 6), fontsize=8)
    if logx:
        ax.set_xscale("log", base=2)
        ax.set_xticks(xs, [str(int(x)) for x in xs])
    ax.set_xlabel(xlabel)
    ax.set_ylabel("success rate (%)")
    ax.set_ylim(-2, 102)
    ax.grid(alpha=0.3)
    ax.set_title(title)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def _point(info: dict) -> dict:
    o = info["overall"]
    keys = ("pc_success", "n_episodes", "avg_length", "avg_iterations", "latency_ms_median", "latency_ms_p90")
    return {k: o[k] for k in keys}


def sweep_iterations(
    run_dir: str | Path,
    tasks: str | list[str],
    episodes: int,
    depths: list[int],
    *,
    out_dir: str | Path,
    **eval_kwargs: Any,
) -> dict:
    """Success vs fixed recurrent depth (RD-VLA Fig. 4); writes sweep_iterations.{md,json,png}."""
    require_recurrent_head(run_dir)
    out = Path(out_dir)
    points = []
    for k in depths:
        info = evaluate(
            run_dir, tasks, episodes, iterations=int(k), out_dir=out / f"iterations_{k}", **eval_kwargs
        )
        points.append({"iterations": int(k), **_point(info)})
    lines = ["| iterations | success % | avg length | latency ms (median) |", "|---:|---:|---:|---:|"]
    for p in points:
        lat = "–" if p["latency_ms_median"] is None else f"{p['latency_ms_median']:.1f}"
        lines.append(f"| {p['iterations']} | {p['pc_success']:.1f} | {p['avg_length']:.1f} | {lat} |")
    table = "\n".join(lines) + "\n"
    (out / "sweep_iterations.md").write_text(table)
    (out / "sweep_iterations.json").write_text(json.dumps({"points": points}, indent=2))
    plot_sweep_iterations(points, out / "sweep_iterations.png")
    return {"points": points, "table": table, "plot": str(out / "sweep_iterations.png")}


def plot_sweep_iterations(points: list[dict], path: Path) -> None:
    """Success vs fixed depth with RD-VLA's Fig. 4 beside it (also: redraw from a saved sweep_iterations.json)."""
    xs = [p["iterations"] for p in points]
    _plot(
        xs,
        [p["pc_success"] for p in points],
        Path(path),
        "recurrent iterations (fixed)",
        "success vs recurrence depth",
        logx=True,
        reference=PAPER_FIG4,
    )


def sweep_delta(
    run_dir: str | Path,
    tasks: str | list[str],
    episodes: int,
    deltas: list[float],
    *,
    out_dir: str | Path,
    strategy: str = "mse",
    **eval_kwargs: Any,
) -> dict:
    """Mean iterations and success vs the adaptive-halting threshold (RD-VLA Table II)."""
    require_recurrent_head(run_dir)
    out = Path(out_dir)
    points = []
    for d in deltas:
        info = evaluate(
            run_dir, tasks, episodes, halting=f"{strategy}:{d:g}", out_dir=out / f"delta_{d:g}", **eval_kwargs
        )
        points.append({"delta": float(d), **_point(info)})
    lines = [f"| {strategy} δ | mean iterations | success % | latency ms (median) |", "|---:|---:|---:|---:|"]
    for p in points:
        lat = "–" if p["latency_ms_median"] is None else f"{p['latency_ms_median']:.1f}"
        its = "–" if p["avg_iterations"] is None else f"{p['avg_iterations']:.2f}"
        lines.append(f"| {p['delta']:g} | {its} | {p['pc_success']:.1f} | {lat} |")
    table = "\n".join(lines) + "\n"
    (out / "sweep_delta.md").write_text(table)
    (out / "sweep_delta.json").write_text(json.dumps({"strategy": strategy, "points": points}, indent=2))
    xs = [p["avg_iterations"] or 0.0 for p in points]
    _plot(
        xs,
        [p["pc_success"] for p in points],
        out / "sweep_delta.png",
        "mean recurrent iterations",
        f"adaptive halting ({strategy})",
        labels=[f"δ={p['delta']:g}" for p in points],
    )
    return {"points": points, "table": table, "plot": str(out / "sweep_delta.png")}
