"""Where the CoT annotator gets the target object's 2-D box from: the `BoxSource` interface.

A `BoxSource` maps an episode (the dict of docs/design.md) and a camera name to per-frame boxes:

    boxes(episode, camera) -> (xyxy float32 (T, 4) normalized to [0, 1], 4 decimals; visible bool (T,))

(0, 0) is the top-left of the stored (upright) image. Frames where the target cannot be localised have
`visible=False`; their box is all zeros.

Implementations:
- `ProjectedGeometryBoxes`: simulator ground truth. Projects the 8 world corners of the target's geometry box
  (`privileged.target_corners`) with the recorded camera pose and field of view (`privileged.camera.<cam>`)
  and takes the enclosing box, clipped to the image. Not visible when a corner lies behind the camera or the
  clipped box is empty (out of view). LaRA-VLA §3.2 uses this kind of ground truth in simulation. The box is
  amodal: it frames the whole geometry, occluded parts included (a drawer inside its case gives a box larger
  than its visible front; unoccluded objects agree with segmentation masks within ~2 px at 128 px).
- `ColumnBoxes`: boxes computed offline by an external detector, e.g. GroundingDINO / OWL-ViT prompted with
  the target name of `envs.metaworld_tasks` (or a noun from the instruction). This is the interface for real
  robot data, which has no simulator ground truth: run the detector once, store its output either as an
  episode column (`(T, 4)` normalized xyxy, NaN rows = not detected) or as a JSONL file with one object per
  line `{"episode_index": 3, "frame_index": 17, "bbox": [x1, y1, x2, y2]}` (normalized; frames without a line
  count as not detected), then run `latentvla annotate DIR --boxes-jsonl FILE`.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Protocol, runtime_checkable

import numpy as np

from latentvla import constants as K


@runtime_checkable
class BoxSource(Protocol):
    def boxes(self, episode: dict, camera: str) -> tuple[np.ndarray, np.ndarray]: ...


def finalize_boxes(xyxy: np.ndarray, visible: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Clip to [0, 1], round to 4 decimals, mark empty boxes invisible and zero invisible rows."""
    xyxy = np.clip(np.nan_to_num(np.asarray(xyxy, dtype=np.float64), nan=0.0), 0.0, 1.0).round(4)
    visible = np.asarray(visible, dtype=bool) & (xyxy[:, 2] > xyxy[:, 0]) & (xyxy[:, 3] > xyxy[:, 1])
    xyxy[~visible] = 0.0
    return xyxy.astype(np.float32), visible


class ProjectedGeometryBoxes:
    """Boxes from the privileged target corners projected through the recorded camera (simulator data)."""

    def boxes(self, episode: dict, camera: str) -> tuple[np.ndarray, np.ndarray]:
        from latentvla.envs.camera import project_points  # pure numpy, no simulator import
        from latentvla.envs.registry import bottom_up_cameras, flipped_cameras

        cam_key = f"{K.PRIV_CAMERA}{camera}"
        missing = [k for k in (K.PRIV_TARGET_CORNERS, cam_key) if k not in episode]
        if missing:
            raise KeyError(
                f"ProjectedGeometryBoxes needs the privileged columns {missing}; collect with "
                f"`latentvla collect --camera {camera}` or pass a ColumnBoxes source."
            )
        corners = np.asarray(episode[K.PRIV_TARGET_CORNERS], dtype=np.float64).reshape(-1, 8, 3)
        params = np.asarray(episode[cam_key], dtype=np.float64).reshape(-1, 13)
        xyxy = np.zeros((len(corners), 4))
        visible = np.zeros(len(corners), dtype=bool)
        flip, bottom_up = camera in flipped_cameras(), camera in bottom_up_cameras()
        for t, (pts, cam) in enumerate(zip(corners, params)):
            uv, in_front = project_points(pts, cam, flipped=flip, bottom_up=bottom_up)
            visible[t] = bool(in_front.all())
            xyxy[t] = [*uv.min(0), *uv.max(0)]
        return finalize_boxes(xyxy, visible)


class ColumnBoxes:
    """Boxes precomputed by an external detector, from an episode column or a JSONL file (see module doc)."""

    def __init__(self, column: str = "detector.bbox", jsonl: str | Path | None = None) -> None:
        self.column = column
        self.table: dict[tuple[int, int], list[float]] | None = None
        if jsonl is not None:
            self.table = {}
            for n, line in enumerate(Path(jsonl).read_text().splitlines(), 1):
                if not line.strip():
                    continue
                try:
                    row = json.loads(line)
                    box = [float(v) for v in row["bbox"]]
                    key = (int(row["episode_index"]), int(row["frame_index"]))
                except (ValueError, KeyError, TypeError) as e:
                    raise ValueError(
                        f"{jsonl}:{n}: expected {{episode_index, frame_index, bbox: [x1, y1, x2, "
                        f"y2]}}, got {line[:80]!r} ({e})"
                    ) from e
                if len(box) != 4:
                    raise ValueError(f"{jsonl}:{n}: bbox must have 4 numbers, got {len(box)}")
                self.table[key] = box

    def boxes(self, episode: dict, camera: str) -> tuple[np.ndarray, np.ndarray]:
        length = len(episode[K.ACTION])
        if self.table is None:
            if self.column not in episode:
                raise KeyError(f"Episode has no box column {self.column!r}; columns: {sorted(episode)}")
            xyxy = np.asarray(episode[self.column], dtype=np.float64).reshape(length, 4)
            return finalize_boxes(xyxy, ~np.isnan(xyxy).any(axis=1))
        if "episode_index" not in episode:
            raise KeyError("ColumnBoxes with a JSONL file needs episode['episode_index'] to look boxes up")
        ep = int(np.asarray(episode["episode_index"]).reshape(-1)[0])
        xyxy = np.zeros((length, 4))
        visible = np.zeros(length, dtype=bool)
        for t in range(length):
            if (ep, t) in self.table:
                xyxy[t], visible[t] = self.table[(ep, t)], True
        return finalize_boxes(xyxy, visible)
