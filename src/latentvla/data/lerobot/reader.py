"""LeRobot dataset reader (v3.0 and v2.1, PNG-in-parquet or video cameras), numpy + pyarrow (+ PyAV for video).

The format version is read once from meta/info.json and picks the layout object (data/lerobot/layout.py) that
knows where episodes, data files and videos live; everything below is version independent.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa

from latentvla.constants import TASK
from latentvla.data.errors import DatasetFormatError
from latentvla.data.frames import VideoLocation
from latentvla.data.lerobot.columns import INDEX_COLUMNS, from_arrow, read_json, read_parquet, read_schema_names
from latentvla.data.lerobot.layout import DataFile, layout_for
from latentvla.data.validate import check_info
from latentvla.data.video import VideoReader
from latentvla.hub import resolve_dataset


class LeRobotDatasetReader:
    """Reads a LeRobot v3.0 or v2.1 dataset (auto-detected from meta/info.json) into episode dicts.

    `episode(i)` returns the `DatasetWriter.add_episode` input format (images uint8 `(T, H, W, 3)`), so a
    dataset can be read, transformed (e.g. annotated) and written again. `episodes[i]` carries
    `episode_index, length, tasks, dataset_from_index, dataset_to_index` plus the writer's meta columns.
    """

    def __init__(self, root: str | Path) -> None:
        self.root = resolve_dataset(root)  # a LeRobot repo id reads from HF_LEROBOT_HOME/<repo_id> (hub.py)
        if not self.root.is_dir():
            partial = self.root.with_name(self.root.name + ".partial")
            hint = (
                f"; {partial} exists: the write was interrupted, re-run it with --resume"
                if partial.exists()
                else ""
            )
            raise DatasetFormatError(f"{self.root}: no such dataset directory{hint}.")
        info_path = self.root / "meta" / "info.json"
        if not info_path.is_file():
            raise DatasetFormatError(f"{info_path}: missing; {self.root} is not a LeRobot dataset.")
        self.info: dict = read_json(info_path)
        check_info(self.info, info_path)
        self.version = str(self.info.get("codebase_version"))
        if not isinstance(self.info.get("features"), dict) or "fps" not in self.info:
            raise DatasetFormatError(f"{info_path}: lacks 'features' or 'fps'; not a LeRobot info.json.")
        self.layout = layout_for(self.version, info_path)
        meta = self.layout.load_meta(self.root)
        self.tasks: list[str] = meta.tasks
        self.episodes: list[dict] = meta.episodes
        self.stats: dict = meta.stats
        self.episode_stats: list[dict] = meta.episode_stats
        self.fps = int(self.info["fps"])
        self.features: dict[str, dict] = self.info["features"]
        self.feature_keys = list(self.features)
        self.camera_keys = [k for k, v in self.features.items() if v.get("dtype") in ("image", "video")]
        self.num_episodes = len(self.episodes)
        self.num_frames = sum(int(e["length"]) for e in self.episodes)
        self._cache: tuple[tuple[Path, bool], DataFile] | None = None
        self._video: VideoReader | None = None  # opened on first use

    def _check_index(self, i: int) -> None:
        if not 0 <= i < len(self.episodes):
            raise IndexError(f"Episode {i} out of range: {self.root} has {len(self.episodes)} episodes.")

    def data_file(self, i: int) -> Path:
        """The data parquet file holding episode `i`."""
        return self.layout.data_file(self.root, self.info, self.episodes[i])

    def _episode_table(self, i: int, images: bool = True) -> tuple[pa.Table, Path]:
        self._check_index(i)
        path = self.data_file(i)
        if self._cache is None or self._cache[0] != (path, images):  # v3 files hold many episodes: keep the last
            columns = None if images else self._non_image_columns(path)
            self._cache = ((path, images), DataFile(read_parquet(path, columns)))
        file = self._cache[1]
        return file.table.slice(*self.layout.rows(file, self.episodes[i], i, path)), path

    def _non_image_columns(self, path: Path) -> list[str]:
        """Columns of a data file without pixels (what lazy datasets keep in memory)."""
        names = read_schema_names(path)
        return [n for n in names if self.features.get(n, {}).get("dtype") not in ("image", "video")]

    def first_rows(self, episodes: list[int]) -> list[tuple[Path, int]]:
        """(data file, row of frame 0 in that file) of each episode; reads only the episode_index column."""
        out, files = [], {}

        def read(path: Path) -> DataFile:
            if path not in files:
                files[path] = DataFile(read_parquet(path, ["episode_index"]))
            return files[path]

        for i in episodes:
            self._check_index(i)
            path = self.data_file(i)
            out.append((path, self.layout.first_row(lambda p=path: read(p), self.episodes[i], i, path)))
        return out

    def video_location(self, i: int, key: str) -> VideoLocation:
        """The video file holding camera `key` of episode `i` and the episode's first timestamp in it."""
        template = self.info.get("video_path")
        if not template:
            raise DatasetFormatError(
                f"{self.root / 'meta' / 'info.json'}: {key!r} is a video but 'video_path' is unset."
            )
        return self.layout.video_location(self.root, template, self.info, self.episodes[i], key, i)

    def episode(self, i: int, images: bool = True) -> dict:
        """Episode `i` in the writer's input format (per-frame arrays, `task` str, images uint8 THWC).

        `images=False` reads and returns only the columns without pixels (cheap: no decode, no image bytes read).
        """
        table, path = self._episode_table(i, images)
        episode: dict[str, Any] = {}
        for name in table.column_names:
            if name in INDEX_COLUMNS or name not in self.features:
                continue
            episode[name] = from_arrow(table.column(name), self.features[name], path, name)
        task_index = table.column("task_index")[0].as_py() if "task_index" in table.column_names else 0
        if not 0 <= task_index < len(self.tasks):
            raise DatasetFormatError(f"{path}: task_index {task_index} not in meta tasks ({len(self.tasks)}).")
        episode[TASK] = self.tasks[task_index]
        videos = [k for k in self.camera_keys if self.features[k]["dtype"] == "video"] if images else []
        for key in videos:  # whole episode: one seek, then a forward decode
            if self._video is None:
                self._video = VideoReader(max_open=2)
            loc = self.video_location(i, key)
            stamps = episode.get("timestamp", np.arange(table.num_rows) / self.fps)
            wanted = [loc.from_timestamp + float(t) for t in np.asarray(stamps).reshape(-1)]
            episode[key] = np.stack(self._video.decode(loc.path, wanted))
        return episode

    def column(self, key: str) -> Any:
        """One non-image column over the whole dataset, in global frame order (cheap: no image decode)."""
        if key not in self.features:
            raise KeyError(f"{self.root} has no feature {key!r} (it has: {', '.join(self.feature_keys)}).")
        parts, files = [], {}
        for i in range(self.num_episodes):
            path = self.data_file(i)
            if path not in files:
                files[path] = DataFile(read_parquet(path, [key, *self.layout.row_columns]))
            file = files[path]
            column = file.table.column(key).slice(*self.layout.rows(file, self.episodes[i], i, path))
            parts.append(from_arrow(column, self.features[key], path, key))
        if self.features[key]["dtype"] == "string":
            return [s for p in parts for s in p]
        if not parts:  # a dataset without episodes: an empty column of the declared shape
            return np.zeros((0, *self.features[key]["shape"]), dtype=np.dtype(self.features[key]["dtype"]))
        return np.concatenate(parts)
