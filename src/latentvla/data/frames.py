"""Lazy, per-sample image access for a dataset's cameras, with bounded per-process caches.

Opening a `FrameStore` reads only metadata: for each selected episode and camera, where its frames live (a
parquet file plus the row of its first frame, or a video file plus the episode's `from_timestamp`). Pixels are
read when a sample asks for them, and only the frames it asks for:

- PNG-in-parquet: the camera column of the row group that holds the frame is read through Arrow (encoded PNG
  bytes, kept in a byte-bounded LRU so neighbouring frames do not re-read it), then only the requested PNGs are
  decoded. Decoding is the same `PIL.Image.open(...).convert("RGB")` as the eager reader, so pixels are identical.
- video: `data/video.py` seeks to the first requested timestamp and decodes forward once, so a sample's current
  and next frame come from one decode pass (LeRobot's `decode_video_frames` idea).

Decoded frames go into a second byte-bounded LRU, so consecutive samples of one episode (evaluation, analysis)
decode each frame once. Each DataLoader worker owns its caches (they are created lazily in the process that uses
them), so peak memory is bounded by workers x (cache budgets), independent of dataset size.

`DECODE_COUNTS` (data/decoding.py) counts decoded frames per kind in this process; tests use it to prove that
opening a dataset decodes nothing and that a sample decodes only its own frames.
"""

from __future__ import annotations

import os
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from latentvla.data.decoding import decode_png
from latentvla.data.errors import DatasetFormatError
from latentvla.data.video import VideoReader

DECODED_CACHE_MB = 256  # per process: decoded uint8 frames (the demo's 64 px cameras fit whole)
# Per process: encoded PNG row groups read from parquet. A random-access sample needs one frame per camera but
# Arrow reads the frame's whole row group (~140 rows, ~3 MB per camera in LeRobot's layout), so a budget far below
# the dataset's encoded size re-reads ~3 MB per frame. libero_object_20 (200 episodes x 2 cameras at 128 px, 1.2 GB
# encoded), random batches of 32, 1 thread: flat at 51 samples/s with 64 MB; with 1 GB 140 samples/s cumulative
# after 80 batches and still rising as the cache filled (2026-12-07). 1 GB holds most of such a dataset and bounds
# a worker's memory on larger ones; PNG decoding itself runs ~1,700 frames/s.
ENCODED_CACHE_MB = 1024


class LRUCache:
    """A dict with a byte budget: least recently used entries are evicted once `max_bytes` is exceeded."""

    def __init__(self, max_bytes: int) -> None:
        self.max_bytes, self.nbytes = int(max_bytes), 0
        self._items: OrderedDict[Any, tuple[Any, int]] = OrderedDict()

    def __len__(self) -> int:
        return len(self._items)

    def get(self, key: Any) -> Any:
        item = self._items.get(key)
        if item is None:
            return None
        self._items.move_to_end(key)
        return item[0]

    def put(self, key: Any, value: Any, nbytes: int) -> None:
        if key in self._items:
            self.nbytes -= self._items.pop(key)[1]
        if nbytes > self.max_bytes:
            return  # larger than the whole budget: never cached
        self._items[key] = (value, nbytes)
        self.nbytes += nbytes
        while self.nbytes > self.max_bytes:
            self.nbytes -= self._items.popitem(last=False)[1][1]

    def clear(self) -> None:
        self._items.clear()
        self.nbytes = 0


@dataclass(frozen=True)
class ParquetLocation:
    """Where episode frames of one camera live: parquet file and the file row of frame 0."""

    path: Path
    first_row: int


@dataclass(frozen=True)
class VideoLocation:
    """Where episode frames of one camera live: video file and the episode's start time in it (v3.0 files
    hold many episodes back to back; v2.1 files one, from 0)."""

    path: Path
    from_timestamp: float


class _ParquetImages:
    """Reads encoded PNG cells by file row, one row group at a time, through a byte-bounded LRU."""

    def __init__(self, encoded_cache_mb: float) -> None:
        self.encoded_cache_mb = encoded_cache_mb
        self._pid: int | None = None

    def _ensure_process(self) -> None:
        # DataLoader workers fork after the dataset is built: each process opens its own files and caches
        if self._pid != os.getpid():
            self._pid = os.getpid()
            self._files: dict[Path, tuple[pq.ParquetFile, np.ndarray]] = {}
            self._groups = LRUCache(int(self.encoded_cache_mb * 2**20))
            self.group_reads = 0  # row groups read from parquet in this process (tests, benchmarks)

    def _file(self, path: Path) -> tuple[pq.ParquetFile, np.ndarray]:
        if path not in self._files:
            try:
                handle = pq.ParquetFile(path)
            except (pa.ArrowException, OSError) as e:
                raise DatasetFormatError(f"{path}: cannot read parquet ({e}); the file is corrupt.") from e
            meta = handle.metadata
            starts = np.cumsum([0] + [meta.row_group(g).num_rows for g in range(meta.num_row_groups)])
            self._files[path] = (handle, starts)
        return self._files[path]

    def cell(self, path: Path, key: str, row: int) -> bytes:
        self._ensure_process()
        handle, starts = self._file(path)
        group = int(np.searchsorted(starts, row, side="right")) - 1
        cached = self._groups.get((path, key, group))
        if cached is None:
            self.group_reads += 1
            try:
                column = (
                    handle.read_row_group(group, columns=[key], use_threads=False).column(key).combine_chunks()
                )
                pa.default_memory_pool().release_unused()  # mimalloc keeps read buffers otherwise (~2x RSS)
            except (pa.ArrowException, OSError) as e:
                raise DatasetFormatError(f"{path}: cannot read row group {group} of {key!r} ({e}).") from e
            cached = column.field("bytes") if pa.types.is_struct(column.type) else column
            self._groups.put((path, key, group), cached, cached.nbytes)
        data = cached[row - int(starts[group])].as_py()
        if data is None:
            raise DatasetFormatError(f"{path}: row {row} of {key!r} has no embedded image bytes.")
        return data


class FrameStore:
    """uint8 `(H, W, 3)` frames of selected episodes, addressed by (camera key, episode position, frame index).

    `locations[key][e]` says where camera `key` of the `e`-th selected episode lives; `video_timestamps[e]`
    holds that episode's per-frame `timestamp` column (video keys only).
    """

    def __init__(
        self,
        kinds: dict[str, str],
        locations: dict[str, list[Any]],
        shape: dict[str, tuple[int, int, int]],
        *,
        video_timestamps: list[np.ndarray] | None = None,
        tolerance_s: float = 1e-4,
        decoded_cache_mb: float = DECODED_CACHE_MB,
        encoded_cache_mb: float = ENCODED_CACHE_MB,
    ) -> None:
        self.kinds, self.locations, self.shape = kinds, locations, shape
        self.video_timestamps, self.tolerance_s = video_timestamps, tolerance_s
        self.decoded_cache_mb = decoded_cache_mb
        self._parquet = _ParquetImages(encoded_cache_mb)
        self._pid: int | None = None

    def _ensure_process(self) -> None:
        if self._pid != os.getpid():
            self._pid = os.getpid()
            self._decoded = LRUCache(int(self.decoded_cache_mb * 2**20))
            self._video = None

    def frames(self, key: str, episode: int, indices: list[int]) -> list[np.ndarray]:
        """Frames `indices` (ascending, within the episode) of camera `key` of selected episode `episode`."""
        self._ensure_process()
        out: dict[int, np.ndarray] = {}
        missing = []
        for t in indices:
            hit = self._decoded.get((key, episode, t))
            if hit is None:
                missing.append(t)
            else:
                out[t] = hit
        if missing:
            for t, frame in self._checked_decode(key, episode, missing).items():
                self._decoded.put((key, episode, t), frame, frame.nbytes)
                out[t] = frame
        return [out[t] for t in indices]

    def _checked_decode(self, key: str, episode: int, indices: list[int]) -> dict[int, np.ndarray]:
        """`_decode`, with a damaged or wrong-size image as one clear `DatasetFormatError`."""
        where = f"{self.locations[key][episode].path}: camera {key!r}, episode #{episode}, frames {indices}"
        try:
            frames = self._decode(key, episode, indices)
        except DatasetFormatError:
            raise
        except (OSError, SyntaxError, ValueError) as e:  # PIL: unidentified / truncated image, bad CRC
            raise DatasetFormatError(f"{where}: cannot decode ({e}); re-collect or drop that episode") from e
        expected = tuple(self.shape[key])
        for t, frame in frames.items():
            if frame.shape != expected and (frame.shape[2], *frame.shape[:2]) != expected:  # HWC or CHW spec
                raise DatasetFormatError(
                    f"{where}: frame {t} is {list(frame.shape)} but the dataset declares {list(expected)} "
                    "(meta/info.json); every frame of a camera must have the declared size"
                )
        return frames

    def _decode(self, key: str, episode: int, indices: list[int]) -> dict[int, np.ndarray]:
        loc = self.locations[key][episode]
        if self.kinds[key] == "image":
            return {t: decode_png(self._parquet.cell(loc.path, key, loc.first_row + t)) for t in indices}
        if self._video is None:
            self._video = VideoReader()
        stamps = self.video_timestamps[episode]
        wanted = [loc.from_timestamp + float(stamps[t]) for t in indices]
        # the decode pass may also yield the frames between (same GOP): keep them in the cache too
        frames = self._video.decode(loc.path, wanted, self.tolerance_s)
        return dict(zip(indices, frames))
