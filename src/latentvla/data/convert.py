"""Convert a LeRobot dataset (v3.0 or v2.1, images or video) to a v3.0 dataset with PNG-in-parquet or video cameras.

One episode at a time: read (decoding that episode's frames), write through `DatasetWriter` (which encodes PNGs or
an AV1 clip per camera and computes that episode's stats), so memory is bounded by the longest episode and the
dataset stats are aggregated from per-episode stats (streaming, like collection). Non-image columns, tasks,
CoT annotations and the writer's episode meta (key, success, task_name, ...) carry over unchanged.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from latentvla.data.lerobot import DatasetWriter, LeRobotDatasetReader
from latentvla.data.lerobot.columns import vector_names

# info.json keys the writer sets itself (v3.0) or that only describe the source layout (v2.x)
_LAYOUT_INFO = {
    "codebase_version",
    "robot_type",
    "fps",
    "features",
    "total_episodes",
    "total_frames",
    "total_tasks",
    "total_videos",
    "total_chunks",
    "chunks_size",
    "data_files_size_in_mb",
    "video_files_size_in_mb",
    "data_path",
    "video_path",
    "splits",
    "image_storage",
}
_EPISODE_LAYOUT = {"episode_index", "tasks", "length", "dataset_from_index", "dataset_to_index", "key"}


def convert_dataset(src: str | Path, dst: str | Path, *, video: bool, overwrite: bool = False) -> Path:
    """Write `src` to `dst` as a v3.0 dataset whose cameras are AV1 video (`video=True`) or PNG-in-parquet."""
    src, dst = Path(src), Path(dst)
    if src.resolve() == dst.resolve():
        raise ValueError(f"source and destination must differ (both are {src}); pick a new output directory.")
    reader = LeRobotDatasetReader(src)
    writer = DatasetWriter(
        dst,
        fps=reader.fps,
        robot_type=reader.info.get("robot_type") or "unknown",
        names=vector_names(reader.features),  # the source's per-dimension names carry over
        overwrite=overwrite,
        video=video,
    )
    for i in range(reader.num_episodes):
        meta = reader.episodes[i]
        keep = {k: v for k, v in meta.items() if k not in _EPISODE_LAYOUT and "/" not in k and np.isscalar(v)}
        writer.add_episode(reader.episode(i), key=str(meta.get("key") or f"episode/{i:06d}"), meta=keep)
    extra = {k: v for k, v in reader.info.items() if k not in _LAYOUT_INFO}
    return writer.finalize(extra_info=extra or None)
