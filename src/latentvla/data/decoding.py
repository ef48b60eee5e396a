"""Per-process counts of decoded frames, and the counted PNG decode: a leaf module shared by the lazy frame
store (data/frames.py) and the video reader (data/video.py).

`DECODE_COUNTS` counts decoded frames per kind ("png", "video") in this process; tests use it to prove that
opening a dataset decodes nothing and that a sample decodes only its own frames.
"""

from __future__ import annotations

import io
from collections import Counter

import numpy as np
from PIL import Image

DECODE_COUNTS: Counter = Counter()  # frames decoded in this process, by kind ("png", "video")


def decode_png(data: bytes) -> np.ndarray:
    """One encoded image cell -> uint8 (H, W, 3), exactly as the eager reader decodes it."""
    DECODE_COUNTS["png"] += 1
    return np.array(Image.open(io.BytesIO(data)).convert("RGB"))  # writable (np.asarray of PIL is read-only)
