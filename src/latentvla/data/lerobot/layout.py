"""Where a LeRobot dataset keeps its files: one layout object per format version, chosen once from
`meta/info.json` `codebase_version` (LeRobot `datasets/utils.py`, `datasets/v30/convert_dataset_v21_to_v30.py`).

v3.0 (written by `DatasetWriter`, read):

    meta/info.json                          codebase_version "v3.0", fps, features, totals, paths, splits
    meta/stats.json                         {feature: {mean, std, min, max, q01, q99, count}}
    meta/tasks.parquet                      column `task_index`, index column `task` (pandas metadata kept)
    meta/episodes/chunk-000/file-000.parquet  one row per episode: episode_index, tasks, length,
                                            data/chunk_index, data/file_index, dataset_from_index,
                                            dataset_to_index, key, writer meta columns, stats/<feature>/<stat>
    data/chunk-000/file-000.parquet         many episodes back to back (rows found by `episode_index`)
    videos/<key>/chunk-000/file-000.mp4     many episodes back to back (`videos/<key>/from_timestamp`)

v2.1 (and v2.0; read only): `meta/tasks.jsonl`, `meta/episodes.jsonl`, per-episode stats in
`meta/episodes_stats.jsonl` (v2.0: global `meta/stats.json`), one data file and one video per episode in chunk
directories of `chunks_size` episodes, no global frame offsets (derived from the lengths).
"""

from __future__ import annotations

import json
from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import pyarrow as pa

from latentvla.constants import TASK
from latentvla.data.errors import DatasetFormatError
from latentvla.data.frames import VideoLocation
from latentvla.data.lerobot.columns import read_json, read_jsonl, read_parquet
from latentvla.data.stats import aggregate_stats, stats_from_json

CHUNKS_SIZE = 1000  # files (v3.0) or episodes (v2.1) per chunk directory (LeRobot default)


def _stat_type(name: str) -> pa.DataType:
    return pa.int64() if name == "count" else pa.float64()


@dataclass
class Meta:
    """What a reader loads from `meta/`: tasks by index, episode rows sorted by episode_index (with global
    `dataset_from_index` / `dataset_to_index`), dataset stats and (v3.0) each episode's `stats/...` columns."""

    tasks: list[str]
    episodes: list[dict]
    stats: dict
    episode_stats: list[dict] = field(default_factory=list)


class DataFile:
    """A data file's table (the columns read) and its `episode_index` column as numpy, made once on first use
    (v3.0 files hold many episodes: an episode's rows are found by it)."""

    def __init__(self, table: pa.Table) -> None:
        self.table = table
        self._episode_index: np.ndarray | None = None

    @property
    def episode_index(self) -> np.ndarray:
        if self._episode_index is None:
            self._episode_index = self.table.column("episode_index").to_numpy()
        return self._episode_index


class Layout(ABC):
    """The file layout of one LeRobot format version (see the module docstring)."""

    version: ClassVar[str]
    row_columns: ClassVar[tuple[str, ...]]  # columns needed, besides the data, to find an episode's rows

    @abstractmethod
    def load_meta(self, root: Path) -> Meta:
        """Tasks, episodes and stats from `root/meta`."""

    @abstractmethod
    def data_file(self, root: Path, info: dict, episode: dict) -> Path:
        """The data parquet file holding `episode` (a row of `Meta.episodes`)."""

    @abstractmethod
    def rows(self, file: DataFile, episode: dict, i: int, path: Path) -> tuple[int, int]:
        """(first row, number of rows) of episode `i` in its data file."""

    @abstractmethod
    def first_row(self, read: Callable[[], DataFile], episode: dict, i: int, path: Path) -> int:
        """The row of frame 0 of episode `i` in its data file; `read()` gives the file's `DataFile`."""

    @abstractmethod
    def video_location(
        self, root: Path, template: str, info: dict, episode: dict, key: str, i: int
    ) -> VideoLocation:
        """The video file holding camera `key` of episode `i` (path `template`) and its first timestamp in it."""

    @abstractmethod
    def episode_stats_files(
        self, root: Path, by_index: dict[int, int], stats: list[dict[str, dict]]
    ) -> list[tuple[Path, pa.Table | str]]:
        """New contents of the per-episode stats files with `stats[i][feature]` (i: reader episode position;
        every episode has the same features and stat names) added; `by_index` maps episode_index -> position.
        Used to add columns in place (data/add_columns.py)."""


class V30(Layout):
    version = "v3.0"
    row_columns = ("episode_index",)
    data_files_size_mb = 100  # a new data file is started once the current one would exceed this
    video_files_size_mb = 200  # the same for each camera's video files (LeRobot's default)
    data_path = "data/chunk-{chunk_index:03d}/file-{file_index:03d}.parquet"
    video_path = "videos/{video_key}/chunk-{chunk_index:03d}/file-{file_index:03d}.mp4"
    episodes_path = "meta/episodes/chunk-{chunk_index:03d}/file-{file_index:03d}.parquet"

    # --- writing -----------------------------------------------------------------------------------------
    @staticmethod
    def location(file_number: int) -> tuple[int, int]:
        """(chunk index, file index) of the `file_number`-th file of a kind."""
        return file_number // CHUNKS_SIZE, file_number % CHUNKS_SIZE

    def data_file_path(self, file_number: int) -> str:
        chunk, file = self.location(file_number)
        return self.data_path.format(chunk_index=chunk, file_index=file)

    def video_file_path(self, key: str, file_number: int) -> str:
        chunk, file = self.location(file_number)
        return self.video_path.format(video_key=key, chunk_index=chunk, file_index=file)

    def info_fields(self, video: bool) -> dict[str, Any]:
        """The layout's entries of meta/info.json, in LeRobot's order."""
        return {
            "chunks_size": CHUNKS_SIZE,
            "data_files_size_in_mb": self.data_files_size_mb,
            "video_files_size_in_mb": self.video_files_size_mb,
            "data_path": self.data_path,
            "video_path": self.video_path if video else None,
        }

    # --- reading -----------------------------------------------------------------------------------------
    def load_meta(self, root: Path) -> Meta:
        meta = root / "meta"
        table = read_parquet(meta / "tasks.parquet")
        task_col = TASK if TASK in table.column_names else "__index_level_0__"
        if task_col not in table.column_names or "task_index" not in table.column_names:
            raise DatasetFormatError(f"{meta / 'tasks.parquet'}: needs columns 'task' and 'task_index'.")
        pairs = sorted(zip(table.column("task_index").to_pylist(), table.column(task_col).to_pylist()))
        files = sorted((meta / "episodes").glob("chunk-*/file-*.parquet"))
        if not files:
            raise DatasetFormatError(f"{meta / 'episodes'}: no episode metadata parquet files found.")
        rows = [r for f in files for r in read_parquet(f).to_pylist()]
        episodes = sorted(
            ({k: v for k, v in r.items() if not k.startswith(("stats/", "meta/episodes/"))} for r in rows),
            key=lambda r: r["episode_index"],
        )
        stats_path = meta / "stats.json"
        return Meta(
            tasks=[t for _, t in pairs],
            episodes=episodes,
            stats=stats_from_json(read_json(stats_path)) if stats_path.exists() else {},
            episode_stats=[{k: v for k, v in r.items() if k.startswith("stats/")} for r in rows],
        )

    def data_file(self, root: Path, info: dict, episode: dict) -> Path:
        chunk, file = episode["data/chunk_index"], episode["data/file_index"]
        return root / info["data_path"].format(chunk_index=chunk, file_index=file)

    def rows(self, file: DataFile, episode: dict, i: int, path: Path) -> tuple[int, int]:
        rows = np.flatnonzero(file.episode_index == episode["episode_index"])
        if len(rows) != int(episode["length"]):
            raise DatasetFormatError(
                f"{path}: episode {i} has {len(rows)} rows but meta/episodes says {episode['length']}."
            )
        return int(rows[0]), len(rows)

    def first_row(self, read: Callable[[], DataFile], episode: dict, i: int, path: Path) -> int:
        return self.rows(read(), episode, i, path)[0]

    def video_location(
        self, root: Path, template: str, info: dict, episode: dict, key: str, i: int
    ) -> VideoLocation:
        cols = [f"videos/{key}/{c}" for c in ("chunk_index", "file_index", "from_timestamp")]
        if any(episode.get(c) is None for c in cols):
            raise DatasetFormatError(
                f"{root / 'meta' / 'episodes'}: episode {i} lacks {cols} for video feature {key!r}."
            )
        rel = template.format(video_key=key, chunk_index=int(episode[cols[0]]), file_index=int(episode[cols[1]]))
        return VideoLocation(root / rel, float(episode[cols[2]]))

    def episode_stats_files(
        self, root: Path, by_index: dict[int, int], stats: list[dict[str, dict]]
    ) -> list[tuple[Path, pa.Table | str]]:
        out = []
        for path in sorted((root / "meta" / "episodes").glob("chunk-*/file-*.parquet")):
            table = read_parquet(path)
            rows = [by_index[int(e)] for e in table.column("episode_index").to_pylist()]
            arrays = {
                f"stats/{k}/{s}": pa.array([stats[i][k][s] for i in rows], pa.list_(_stat_type(s)))
                for k, per_stat in stats[0].items()
                for s in per_stat
            }
            table = table.drop_columns([c for c in arrays if c in table.column_names])
            for name, array in arrays.items():
                table = table.append_column(name, array)
            out.append((path, table))
        return out


class V21(Layout):
    version = "v2.1"  # v2.0 reads the same, with global stats in meta/stats.json
    row_columns = ()

    def load_meta(self, root: Path) -> Meta:
        meta = root / "meta"
        tasks = [t["task"] for t in sorted(read_jsonl(meta / "tasks.jsonl"), key=lambda t: t["task_index"])]
        episodes = sorted(read_jsonl(meta / "episodes.jsonl"), key=lambda e: e["episode_index"])
        start = 0
        for ep in episodes:  # v2.1 has no global offsets in its metadata; derive them
            ep["dataset_from_index"], ep["dataset_to_index"] = start, start + int(ep["length"])
            start += int(ep["length"])
        if (meta / "stats.json").exists():  # v2.0 kept global stats
            stats = stats_from_json(read_json(meta / "stats.json"))
        elif (meta / "episodes_stats.jsonl").exists():  # v2.1: aggregate per-episode stats at load, like LeRobot
            per_episode = [stats_from_json(e["stats"]) for e in read_jsonl(meta / "episodes_stats.jsonl")]
            stats = aggregate_stats(per_episode) if per_episode else {}
        else:
            stats = {}
        return Meta(tasks=tasks, episodes=episodes, stats=stats)

    @staticmethod
    def _chunk(info: dict, episode: dict) -> tuple[int, int]:
        index = int(episode["episode_index"])
        return index // int(info.get("chunks_size", CHUNKS_SIZE)), index

    def data_file(self, root: Path, info: dict, episode: dict) -> Path:
        chunk, index = self._chunk(info, episode)
        return root / info["data_path"].format(episode_chunk=chunk, episode_index=index)

    def rows(self, file: DataFile, episode: dict, i: int, path: Path) -> tuple[int, int]:
        return 0, file.table.num_rows  # one file per episode

    def first_row(self, read: Callable[[], DataFile], episode: dict, i: int, path: Path) -> int:
        return 0

    def video_location(
        self, root: Path, template: str, info: dict, episode: dict, key: str, i: int
    ) -> VideoLocation:
        chunk, index = self._chunk(info, episode)
        return VideoLocation(root / template.format(episode_chunk=chunk, video_key=key, episode_index=index), 0.0)

    def episode_stats_files(
        self, root: Path, by_index: dict[int, int], stats: list[dict[str, dict]]
    ) -> list[tuple[Path, pa.Table | str]]:
        path = root / "meta" / "episodes_stats.jsonl"
        if not path.exists():
            return []
        lines = read_jsonl(path)
        for line in lines:
            for k, value in stats[by_index[int(line["episode_index"])]].items():
                line.setdefault("stats", {})[k] = value
        return [(path, "".join(json.dumps(line) + "\n" for line in lines))]


LAYOUTS: dict[str, Layout] = {"v3.0": V30(), "v2.1": V21(), "v2.0": V21()}
WRITE_LAYOUT = LAYOUTS["v3.0"]  # the version `DatasetWriter` writes


def layout_for(version: str, info_path: Path) -> Layout:
    """The layout of a dataset whose meta/info.json (`info_path`) declares `codebase_version` `version`."""
    if version not in LAYOUTS:
        raise DatasetFormatError(
            f"{info_path}: codebase_version {version!r} is not supported (this reader reads v3.0 and v2.1)."
        )
    return LAYOUTS[version]
