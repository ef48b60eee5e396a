"""Does explicit decoding still write a faithful CoT? (`latentvla analyze cot`)

Explicit CoT is decoded greedily (the model's own explicit mode, KV-cached) on dataset frames and compared
with the annotation of the same frame:

    parse_rate     share of outputs in the CoT format (data/cot.py `parse_cot`: Subtask / BBox / Reasoning)
    stop_rate      share that emitted the end-of-CoT token before the token cap
    bbox_iou       mean IoU of the decoded box vs the annotated box, over frames whose target is visible
                   (an unparsed output or a "none" box counts 0)
    subtask_match  share whose decoded subtask equals the annotated one exactly
    mean_tokens    mean number of decoded CoT tokens

Frames: `frames_per_episode` evenly spaced frames of `episodes` episodes evenly spread over the dataset (so
every task is covered), without augmentation.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from latentvla.constants import COT_BBOX, COT_BBOX_VISIBLE, COT_SUBTASK, COT_TEXT
from latentvla.data.cot import box_iou, parse_cot


def frame_indices(dataset: Any, episodes: int, frames_per_episode: int) -> list[int]:
    """Dataset positions of `frames_per_episode` evenly spaced frames in `episodes` evenly spread episodes."""
    if episodes < 1 or frames_per_episode < 1:
        raise ValueError(f"episodes and frames_per_episode must be >= 1, got {episodes}, {frames_per_episode}")
    ends = np.unique(dataset.end)  # exclusive end of each episode, in dataset positions
    starts = np.concatenate([[0], ends[:-1]])
    pick = np.unique(np.linspace(0, len(ends) - 1, min(episodes, len(ends))).round().astype(int))
    out: list[int] = []
    for e in pick:
        lo, hi = int(starts[e]), int(ends[e])
        out += np.unique(np.linspace(lo, hi - 1, min(frames_per_episode, hi - lo)).round().astype(int)).tolist()
    return out


def analyze_cot(
    policy: Any,
    dataset: Any,
    *,
    episodes: int = 12,
    frames_per_episode: int = 4,
    max_cot_tokens: int = 96,
    seed: int = 0,
    examples: int = 5,
) -> dict:
    """The metrics above for one policy on one `VLADataset` (with CoT annotation)."""
    import torch

    if not dataset.has_cot:
        raise ValueError(f"{dataset.reader.root} has no CoT annotation; run `latentvla annotate` on it first")
    if "explicit" not in policy.model.modes:
        raise ValueError(
            f"this {policy.config.preset!r} model never learned CoT text (modes {policy.model.modes}); analyse a "
            "model whose curriculum has explicit CoT (lara, lara-latent-text, lara-explicit, ecot, lara-rd)"
        )
    policy.eval()
    gen = torch.Generator(device=policy.device)
    rows = []
    for i in frame_indices(dataset, episodes, frames_per_episode):
        sample = dataset[i]
        batch = {k: (v[None].to(policy.device) if torch.is_tensor(v) else [v]) for k, v in sample.items()}
        gen.manual_seed(seed)
        out = policy.model.sample_actions(batch, mode="explicit", generator=gen, max_cot_tokens=max_cot_tokens)
        text, n = out.cot_text[0], int(out.cot_tokens[0])
        parsed = parse_cot(text)
        visible = bool(sample[COT_BBOX_VISIBLE])
        iou = None
        if visible:
            iou = box_iou(parsed.bbox, sample[COT_BBOX].tolist()) if parsed and parsed.bbox else 0.0
        rows.append(
            {
                "index": i,
                "text": text,
                "reference": sample[COT_TEXT],
                "tokens": n,
                "stopped": n < max_cot_tokens,
                "parsed": parsed is not None,
                "iou": iou,
                "subtask_match": parsed is not None and parsed.subtask == sample[COT_SUBTASK].strip().rstrip("."),
            }
        )
    ious = [r["iou"] for r in rows if r["iou"] is not None]
    mean = lambda xs: float(np.mean(xs)) if xs else float("nan")  # noqa: E731
    return {
        "parse_rate": mean([r["parsed"] for r in rows]),
        "stop_rate": mean([r["stopped"] for r in rows]),
        "bbox_iou": mean(ious),
        "subtask_match": mean([r["subtask_match"] for r in rows]),
        "mean_tokens": mean([r["tokens"] for r in rows]),
        "n_frames": len(rows),
        "n_visible_boxes": len(ious),
        "max_cot_tokens": max_cot_tokens,
        "stage": policy.model.stage.name,
        "examples": [{k: r[k] for k in ("index", "text", "reference", "tokens")} for r in rows[:examples]],
    }


def analyze_cot_run(run: str | Path, dataset_dir: str | Path, **kwargs: Any) -> dict:
    """`analyze_cot` for a checkpoint or run directory and a LeRobot dataset directory."""
    policy, ds = load_run_and_dataset(run, dataset_dir)
    return {"run": str(run), "dataset": str(dataset_dir), **analyze_cot(policy, ds, **kwargs)}


def load_run_and_dataset(run: str | Path, dataset_dir: str | Path) -> tuple[Any, Any]:
    """A trained policy and a `VLADataset` over `dataset_dir` as it sees it (its cameras, horizon and
    normalizer), without augmentation or next frames: what the offline analyses read."""
    from latentvla.data.dataset import VLADataset
    from latentvla.policy import Policy

    policy = Policy.from_pretrained(run)
    c = policy.config
    ds = VLADataset(
        dataset_dir, chunk_size=c.horizon, cameras=list(c.cameras), normalizer=policy.normalizer, next_frame=False
    )
    return policy, ds
