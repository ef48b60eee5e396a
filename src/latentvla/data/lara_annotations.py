"""Import LaRA-VLA's released chain-of-thought annotations, which sit next to a LeRobot dataset.

LaRA-VLA released its LIBERO CoT as side files of LeRobot datasets (`lovejuly/libero_lerobot_all`, one
`<suite>_no_noops_1.0.0_lerobot/` dataset per suite, LaRA-VLA README). The format below is the one LaRA-VLA's own
loader reads (`laravla/dataloader/gr00t_lerobot/bridge_annotations.py` `BridgeAnnotations._load_cot` /
`_load_bbox`, upstream commit 93b5c03; the LIBERO launchers point it at these two files):

`annotations/episode_dense_captions_full.jsonl`: one JSON object per line, one line per episode,

    {"episode_index": 3,
     "steps": {"0": {"subtask": "reach the alphabet soup", "reasoning": "...", "gripper_state": 1}, "1": ...}}

  `steps` is keyed by the frame index within the episode, as a string. A missing step, or one whose subtask and
  reasoning are both empty, carries no annotation (the loader skips it). `gripper_state` is an int (1 open,
  0 closed / holding, -1 unknown) or absent.

`annotations/episode_sam3_bboxes_from_dino_final.jsonl`: one JSON object per line, one line per episode,

    {"episode_index": 3, "num_steps": 120,
     "dense_labels": {"active_bbox": [[x1, y1, x2, y2], null, ...], "active_bbox2": [...]},
     "dense_scores": [0.91, null, ...]}

  `active_bbox[t]` is the target box of frame t (GroundingDINO + SAM3 tracking), normalized xyxy in [0, 1]
  (LaRA's formatter prints it with 4 decimals and falls back to the full image [0, 0, 1, 1]), or null when
  the target was not found. `active_bbox2` is an optional second target (LIBERO-10's two-object tasks);
  `dense_scores[t]` the detector confidence. Other keys are ignored.

How they become our `cot.*` columns (`latentvla annotate DIR` does this when DIR/annotations holds the files):
frames with a LaRA subtask/reasoning take them verbatim; the rest keep the automatic annotation of
`data.annotate` (from the 8-D state). Boxes come from the bbox file through `LaraBoxes`, a `BoxSource`
(frames without a box are flagged not visible, as everywhere). `cot.segment` stays automatic (LaRA has no
segment labels). `cot.text` is rebuilt in our Stage-I format from the merged parts.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from latentvla import constants as K
from latentvla.data.boxes import finalize_boxes
from latentvla.data.cot import format_cot

COT_FILE = "episode_dense_captions_full.jsonl"
BBOX_FILE = "episode_sam3_bboxes_from_dino_final.jsonl"


@dataclass(frozen=True)
class StepCoT:
    subtask: str
    reasoning: str
    gripper_state: int | None = None


def _lines(path: Path):
    for n, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        if not line.strip():
            continue
        try:
            obj = json.loads(line)
            yield n, obj, int(obj["episode_index"])
        except (ValueError, KeyError, TypeError) as e:
            raise ValueError(f"{path}:{n}: expected a JSON object with an integer episode_index ({e})") from None


def _box(value, where: str) -> np.ndarray | None:
    if value is None:
        return None
    try:
        box = np.asarray(value, dtype=np.float64).reshape(-1)
    except (ValueError, TypeError):
        raise ValueError(f"{where}: a box must be 4 numbers [x1, y1, x2, y2] or null, got {value!r}") from None
    if box.shape != (4,):
        raise ValueError(f"{where}: a box must be 4 numbers [x1, y1, x2, y2] or null, got {value!r}")
    return box


class LaraAnnotations:
    """The two LaRA-VLA annotation files of one dataset (either may be missing)."""

    def __init__(self, cot_path: str | Path | None = None, bbox_path: str | Path | None = None) -> None:
        self.cot_path = Path(cot_path) if cot_path else None
        self.bbox_path = Path(bbox_path) if bbox_path else None
        self.cot: dict[int, dict[int, StepCoT]] = {}
        self.bbox: dict[int, dict[int, tuple[np.ndarray, float | None]]] = {}
        self.bbox2: dict[int, dict[int, np.ndarray]] = {}
        if self.cot_path is not None:
            self._load_cot(self.cot_path)
        if self.bbox_path is not None:
            self._load_bbox(self.bbox_path)

    @classmethod
    def find(cls, dataset_root: str | Path, directory: str | Path | None = None) -> LaraAnnotations | None:
        """The files in `directory` (default `<dataset_root>/annotations`), or None when neither is there."""
        folder = Path(directory) if directory is not None else Path(dataset_root) / "annotations"
        cot, bbox = folder / COT_FILE, folder / BBOX_FILE
        if not cot.is_file() and not bbox.is_file():
            if directory is not None:
                raise FileNotFoundError(f"{folder} has neither {COT_FILE} nor {BBOX_FILE} (LaRA-VLA annotations)")
            return None
        return cls(cot if cot.is_file() else None, bbox if bbox.is_file() else None)

    def _load_cot(self, path: Path) -> None:
        for n, obj, ep in _lines(path):
            steps = obj.get("steps", {})
            if not isinstance(steps, dict):
                raise ValueError(f"{path}:{n}: 'steps' must map frame indices to {{subtask, reasoning}}")
            per_step = {}
            for key, value in steps.items():
                try:
                    t = int(key)
                except ValueError:
                    raise ValueError(f"{path}:{n}: step key {key!r} is not a frame index") from None
                if not isinstance(value, dict):
                    raise ValueError(f"{path}:{n}: step {key} must be an object with subtask / reasoning")
                sub, rea = str(value.get("subtask") or "").strip(), str(value.get("reasoning") or "").strip()
                if sub or rea:  # LaRA's loader drops steps with neither
                    grip = value.get("gripper_state")
                    per_step[t] = StepCoT(sub, rea, None if grip is None else int(grip))
            if per_step:
                self.cot[ep] = per_step

    def _load_bbox(self, path: Path) -> None:
        for n, obj, ep in _lines(path):
            labels = obj.get("dense_labels") or {}
            boxes, boxes2, scores = labels.get("active_bbox"), labels.get("active_bbox2"), obj.get("dense_scores")
            per_step, per_step2 = {}, {}
            for t, value in enumerate(boxes if isinstance(boxes, list) else []):
                box = _box(value, f"{path}:{n} active_bbox[{t}]")
                if box is not None:
                    score = scores[t] if isinstance(scores, list) and t < len(scores) else None
                    per_step[t] = (box, None if score is None else float(score))
            for t, value in enumerate(boxes2 if isinstance(boxes2, list) else []):
                box = _box(value, f"{path}:{n} active_bbox2[{t}]")
                if box is not None:
                    per_step2[t] = box
            if per_step:
                self.bbox[ep] = per_step
            if per_step2:
                self.bbox2[ep] = per_step2

    def step_cot(self, episode_index: int, frame: int) -> StepCoT | None:
        return self.cot.get(episode_index, {}).get(frame)

    def apply(self, columns: dict, episode_index: int) -> int:
        """Overwrite cot.subtask / cot.reasoning of annotated frames and rebuild cot.text; returns how many."""
        steps = self.cot.get(episode_index, {})
        subtasks, reasonings = list(columns[K.COT_SUBTASK]), list(columns[K.COT_REASONING])
        used = 0
        for t in range(len(subtasks)):
            step = steps.get(t)
            if step is None:
                continue
            subtasks[t] = step.subtask or subtasks[t]
            reasonings[t] = step.reasoning or reasonings[t]
            used += 1
        columns[K.COT_SUBTASK], columns[K.COT_REASONING] = subtasks, reasonings
        columns[K.COT_TEXT] = [
            format_cot(s, b, bool(v), r)
            for s, b, v, r in zip(subtasks, columns[K.COT_BBOX], columns[K.COT_BBOX_VISIBLE], reasonings)
        ]
        return used


class LaraBoxes:
    """`BoxSource` over LaRA-VLA's box file: `active_bbox[t]` of the episode (`episode["episode_index"]`)."""

    def __init__(self, annotations: LaraAnnotations) -> None:
        self.annotations = annotations

    def boxes(self, episode: dict, camera: str) -> tuple[np.ndarray, np.ndarray]:
        if "episode_index" not in episode:
            raise KeyError("LaraBoxes needs episode['episode_index'] to look boxes up")
        ep = int(np.asarray(episode["episode_index"]).reshape(-1)[0])
        length = len(episode[K.ACTION])
        xyxy, visible = np.zeros((length, 4)), np.zeros(length, dtype=bool)
        for t, (box, _score) in self.annotations.bbox.get(ep, {}).items():
            if t < length:
                xyxy[t], visible[t] = box, True
        return finalize_boxes(xyxy, visible)
