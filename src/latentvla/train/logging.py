"""Training metrics: progress bar, `RUN/metrics.jsonl`, TensorBoard, optional wandb, loss-curve PNG.

One JSON object per logged step, e.g.
    {"step": 120, "stage": "II-1", "loss": 2.31, "loss_cot": 1.9, ..., "lr_backbone": 3e-4, "lr_head": 1e-3,
     "steps_per_s": 14.2, "samples_per_s": 113.6, "time": 8.4}
`step` counts optimizer steps completed (1-based). Only rank 0 creates a logger that writes (the loop passes
`enabled=False` elsewhere). On resume, rows past the resume step are dropped so the file stays one clean curve.
"""

from __future__ import annotations

import json
import math
import time
from pathlib import Path
from typing import Any

METRICS_FILE = "metrics.jsonl"
LOSS_PLOT = "loss.png"
_NOT_LOSS = {
    "step",
    "stage",
    "time",
    "steps_per_s",
    "samples_per_s",
    "epoch",
    "grad_norm",
    "iterations",
    "position",
    "elapsed_s",
}


class MetricsLogger:
    """Progress bar + metrics.jsonl + TensorBoard (+ wandb). A disabled logger does nothing (non-zero ranks)."""

    def __init__(
        self,
        run_dir: str | Path,
        total_steps: int,
        *,
        start_step: int = 0,
        enabled: bool = True,
        show_progress: bool = True,
        use_wandb: bool = False,
        config: dict | None = None,
        progress_total: int | None = None,
        progress_start: int | None = None,
        desc: str = "train",
        postfix_keys: tuple[str, ...] | None = None,
    ) -> None:
        """`progress_total` / `progress_start` (default: `total_steps` / `start_step`) set what the bar counts: a
        wall-clock-budgeted run counts schedule positions (train/budget.py), moved by `advance`. `postfix_keys`:
        the metrics the bar shows (default: a training run's stage, loss and backbone LR)."""
        self.postfix_keys = postfix_keys
        self.enabled = enabled
        self.run_dir = Path(run_dir)
        self.path = self.run_dir / METRICS_FILE
        self._last_time, self._last_step = time.perf_counter(), start_step
        self._start_time = self._last_time
        self._bar = self._tb = self._wandb = None
        if not enabled:
            return
        self.run_dir.mkdir(parents=True, exist_ok=True)
        _truncate_after(self.path, start_step)
        if show_progress:
            from tqdm.auto import tqdm

            self._bar = tqdm(
                total=total_steps if progress_total is None else progress_total,
                initial=start_step if progress_start is None else progress_start,
                desc=desc,
                dynamic_ncols=True,
            )
        try:  # TensorBoard is a core dependency, but keep training when a broken install cannot import
            from torch.utils.tensorboard import SummaryWriter

            self._tb = SummaryWriter(log_dir=str(self.run_dir / "tensorboard"), purge_step=start_step or None)
        except ImportError:
            self._tb = None
        if use_wandb:
            self._wandb = _init_wandb(self.run_dir, config)

    def _postfix(self, stage: str, metrics: dict[str, float], rate: float) -> dict[str, str]:
        if self.postfix_keys is None:
            lr = metrics.get("lr_backbone", 0.0)
            return dict(
                stage=stage, loss=f"{metrics.get('loss', float('nan')):.4f}", lr=f"{lr:.2e}", it_s=f"{rate:.1f}"
            )
        # only what this row has: an RL row has no loss or LR, and a held-out row only the success
        return {k: f"{float(metrics[k]):.4g}" for k in self.postfix_keys if k in metrics}

    def advance(self, n: int = 1) -> None:
        """Move the progress bar by `n` optimizer steps (schedule positions in a budgeted run)."""
        if self._bar is not None and n:
            self._bar.update(n)

    def log(self, step: int, stage: str, metrics: dict[str, float], samples_per_step: int) -> dict[str, Any]:
        """Record one row (step = optimizer steps completed). Returns the row written."""
        now = time.perf_counter()
        steps = max(1, step - self._last_step)
        rate = steps / max(now - self._last_time, 1e-9)
        self._last_time, self._last_step = now, step
        row = {"step": step, "stage": stage, **{k: float(v) for k, v in metrics.items()}}
        row.update(steps_per_s=rate, samples_per_s=rate * samples_per_step, time=now - self._start_time)
        if not self.enabled:
            return row
        with open(self.path, "a") as f:
            f.write(json.dumps(row) + "\n")
        if self._bar is not None:
            self._bar.set_postfix(self._postfix(stage, metrics, rate))
        if self._tb is not None:
            for k, v in row.items():
                if k not in ("step", "stage") and isinstance(v, float) and math.isfinite(v):
                    self._tb.add_scalar(k, v, step)
        if self._wandb is not None:
            self._wandb.log({k: v for k, v in row.items() if k != "step"}, step=step)
        return row

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()
        if self._tb is not None:
            self._tb.close()
        if self._wandb is not None:
            self._wandb.finish()


def _init_wandb(run_dir: Path, config: dict | None) -> Any:
    try:
        import wandb
    except ImportError:
        print(
            "wandb=true but wandb is not installed (pip install wandb); logging to metrics.jsonl/TensorBoard only"
        )
        return None
    return wandb.init(project="latentvla", name=run_dir.name, dir=str(run_dir), config=config or {})


def _truncate_after(path: Path, step: int) -> None:
    """Drop rows with `step > step` (left by a run that was killed after its last checkpoint)."""
    if not path.exists():
        return
    keep = [line for line in path.read_text().splitlines() if line.strip() and json.loads(line)["step"] <= step]
    path.write_text("".join(line + "\n" for line in keep))


def read_metrics(path: str | Path) -> list[dict]:
    return [json.loads(line) for line in Path(path).read_text().splitlines() if line.strip()]


def loss_terms(rows: list[dict]) -> list[str]:
    """Loss keys present in the rows: `loss` first, then every other non-LR / non-rate numeric key."""
    keys: list[str] = []
    for row in rows:
        for k, v in row.items():
            if k not in keys and k not in _NOT_LOSS and not k.startswith("lr") and isinstance(v, int | float):
                keys.append(k)
    return sorted(keys, key=lambda k: (k != "loss", k))


def stage_spans(rows: list[dict]) -> list[tuple[str, int, int]]:
    """(stage, first step, last step) for each contiguous run of one stage."""
    spans: list[tuple[str, int, int]] = []
    for row in rows:
        if spans and spans[-1][0] == row["stage"]:
            spans[-1] = (row["stage"], spans[-1][1], row["step"])
        else:
            spans.append((row["stage"], row["step"], row["step"]))
    return spans


def plot_losses(metrics_jsonl: str | Path, out_png: str | Path) -> Path:
    """One panel per loss term against step, curriculum stages shaded and labelled. Returns the PNG path."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = read_metrics(metrics_jsonl)
    if not rows:
        raise ValueError(f"{metrics_jsonl} has no rows to plot (did the run log anything? lower log_every)")
    terms = loss_terms(rows)
    spans = stage_spans(rows)
    fig, axes = plt.subplots(len(terms), 1, figsize=(8, 2.2 * len(terms) + 0.6), sharex=True, squeeze=False)
    for ax, term in zip(axes[:, 0], terms):
        pts = [
            (r["step"], r[term]) for r in rows if isinstance(r.get(term), int | float) and math.isfinite(r[term])
        ]
        if pts:
            ax.plot(*zip(*pts), lw=1.2, marker="." if len(pts) < 40 else None)
        ax.set_ylabel(term, fontsize=9)
        ax.grid(alpha=0.3)
        # a row at step s covers the steps since the previous row, so stage i spans (end of i-1, its last row]
        edges = [0] + [last for _, _, last in spans]
        for i, (stage, _, last) in enumerate(spans):
            ax.axvspan(edges[i], last, color=f"C{i % 10}", alpha=0.08, lw=0)
            if ax is axes[0, 0]:
                x = (edges[i] + last) / 2
                ax.text(x, 1.02, stage, transform=ax.get_xaxis_transform(), ha="center", fontsize=8)
    axes[-1, 0].set_xlabel("optimizer step")
    fig.tight_layout()
    out = Path(out_png)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=110)
    plt.close(fig)
    return out
