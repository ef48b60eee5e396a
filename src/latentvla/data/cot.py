"""The one chain-of-thought text format (LaRA Fig. 8, Stage I), written and read in one place.

    "Subtask: move toward the puck. BBox: [0.4123 0.5010 0.4522 0.5391]. Reasoning: globally move down, ..."

`format_cot` is used by the annotator and the synthetic data (the stored `cot.text`) and by the model for the
text it learns (`explicit_components` of a stage: any subset, in `COT_COMPONENTS` order), so the stored string
is exactly the string the model is trained to write. `parse_cot` inverts it (`latentvla analyze cot`).
A box the camera cannot see is written "BBox: none." (LaRA's box is of the target in the current frame).
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from latentvla.constants import COT_COMPONENTS

BOX_DECIMALS = 4  # 4 decimals of a [0, 1] coordinate: 1e-4 of the image side, far below one pixel


def format_box(bbox: Sequence[float] | np.ndarray, visible: bool) -> str:
    if not visible:
        return "BBox: none."
    box = " ".join(f"{float(v):.{BOX_DECIMALS}f}" for v in np.asarray(bbox, dtype=np.float64).reshape(4))
    return f"BBox: [{box}]."


def format_cot(
    subtask: str,
    bbox: Sequence[float] | np.ndarray,
    visible: bool,
    reasoning: str,
    components: Sequence[str] = COT_COMPONENTS,
    *,
    box_text: str | None = None,
) -> str:
    """The CoT string of the given components (default: all three, the stored `cot.text`). `box_text`, when
    given, is `format_box(bbox, visible)` already made (the data loader's `cot.bbox_text`); bbox/visible are then
    not read."""
    unknown = set(components) - set(COT_COMPONENTS)
    if unknown:
        raise ValueError(f"unknown CoT components {sorted(unknown)}; expected a subset of {COT_COMPONENTS}")
    parts = {
        "subtask": f"Subtask: {subtask.strip()}.",
        "bbox": format_box(bbox, bool(visible)) if box_text is None else box_text,
        "reasoning": f"Reasoning: {reasoning.strip()}",
    }
    return " ".join(parts[c] for c in COT_COMPONENTS if c in components)


@dataclass(frozen=True)
class ParsedCot:
    subtask: str
    bbox: tuple[float, float, float, float] | None  # None when the text says "BBox: none."
    reasoning: str


_FULL = re.compile(
    r"^Subtask: (?P<subtask>.+?)\. BBox: (?:\[(?P<box>[-\d. ]+)\]|none)\. Reasoning: (?P<reasoning>.+)$", re.S
)


def parse_cot(text: str) -> ParsedCot | None:
    """The three components of a full CoT string in `format_cot`'s format, or None if it does not parse."""
    m = _FULL.match(text.strip())
    if m is None:
        return None
    box = None
    if m.group("box") is not None:
        try:
            vals = tuple(float(v) for v in m.group("box").split())
        except ValueError:
            return None
        if len(vals) != 4:
            return None
        box = vals
    return ParsedCot(m.group("subtask").strip(), box, m.group("reasoning").strip())


def box_iou(a: Sequence[float], b: Sequence[float]) -> float:
    """Intersection over union of two xyxy boxes (0 when either is empty)."""
    ix = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    iy = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = ix * iy
    area = lambda r: max(0.0, r[2] - r[0]) * max(0.0, r[3] - r[1])  # noqa: E731
    union = area(a) + area(b) - inter
    return inter / union if union > 0 else 0.0
