"""LeRobot v3.0 dataset writer (atomic, resumable), numpy + pyarrow only (+ PyAV for video cameras).

Files and paths follow the v3.0 layout object (data/lerobot/layout.py); columns are encoded by
data/lerobot/columns.py. Feature `names` (what each dimension of `observation.state` / `action` means) come from
the caller, e.g. the simulator adapter of `collect` (`Simulator.feature_names`), never from this module.

While writing, everything lives in `<root>.partial/`: each `add_episode` writes `shards/episode_NNNNNN.parquet`
then its `.json` sidecar (the sidecar's existence marks the episode done, so a crash mid-episode is redone on
resume). `finalize` merges the shards into the v3.0 files and renames `<root>.partial` to `<root>`, so an
interrupted run never leaves a directory that looks like a complete dataset. The shards are deleted only after
that rename, so a kill anywhere inside `finalize` leaves either `<root>.partial/` with every shard (finalize
again) or the published `<root>` (plus, at worst, a leftover `shards/` folder that readers ignore).
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from latentvla.constants import ACTION, OBS_IMAGES, OBS_STATE, TASK
from latentvla.data.lerobot.columns import (
    STANDARD_DTYPES,
    FeatureNames,
    episode_columns,
    feature_spec,
    read_json,
    read_parquet,
    to_arrow,
)
from latentvla.data.lerobot.layout import WRITE_LAYOUT
from latentvla.data.stats import aggregate_stats, compute_stats, stats_from_json, stats_to_json
from latentvla.data.video import concat_videos, encode_video, video_feature

SHARDS = "shards"  # per-episode parquet + json sidecars inside `<root>.partial/` until finalize
_INFO_KEYS = {"codebase_version", "fps", "features", "total_episodes", "total_frames", "total_tasks", "splits"}


def _atomic_write_bytes(path: Path, data: bytes) -> None:
    tmp = path.with_name(path.name + ".tmp")
    try:
        tmp.write_bytes(data)
    except BaseException:  # a full disk (ENOSPC) must not leave a truncated .tmp behind
        tmp.unlink(missing_ok=True)
        raise
    os.replace(tmp, path)


def _tasks_table(tasks: list[str]) -> pa.Table:
    """meta/tasks.parquet with pandas metadata so `pd.read_parquet` gives index=task (LeRobot's layout)."""
    table = pa.table({"task_index": pa.array(range(len(tasks)), pa.int64()), TASK: pa.array(tasks, pa.string())})
    pandas_meta = {
        "index_columns": [TASK],
        "column_indexes": [],
        "columns": [
            {
                "name": "task_index",
                "field_name": "task_index",
                "pandas_type": "int64",
                "numpy_type": "int64",
                "metadata": None,
            },
            {"name": TASK, "field_name": TASK, "pandas_type": "unicode", "numpy_type": "object", "metadata": None},
        ],
        "creator": {"library": "pyarrow", "version": pa.__version__},
        "pandas_version": "2.2.0",
    }
    return table.replace_schema_metadata({b"pandas": json.dumps(pandas_meta).encode()})


def _frame_table(shard: pa.Table, episode_index: int, start: int, task_index: int) -> pa.Table:
    """A shard's columns behind the writer-assigned standard columns, in LeRobot's column order."""
    n = shard.num_rows
    standard = {
        "index": pa.array(np.arange(start, start + n, dtype=np.int64)),
        "episode_index": pa.array(np.full(n, episode_index, dtype=np.int64)),
        "frame_index": pa.array(np.arange(n, dtype=np.int64)),
        "timestamp": shard.column("timestamp"),
        "task_index": pa.array(np.full(n, task_index, dtype=np.int64)),
    }
    order = [OBS_STATE, ACTION] + sorted(c for c in shard.column_names if c.startswith(OBS_IMAGES))
    order += sorted(c for c in shard.column_names if c not in order and c != "timestamp")
    return pa.table(standard | {c: shard.column(c) for c in order})


class DatasetWriter:
    """Writes episodes into `<root>.partial/` and atomically publishes a LeRobot v3.0 dataset on `finalize`.

    `root` complete already: refused unless `overwrite=True` (replaced at finalize). `<root>.partial` present:
    `resume=True` keeps its finished episodes, `overwrite=True` discards it, otherwise refused. `names`: the
    per-dimension names of vector features (`{"observation.state": [...], "action": [...]}`), written as their
    info.json `names` where the sizes match.
    """

    def __init__(
        self,
        root: str | Path,
        *,
        fps: int,
        robot_type: str,
        names: FeatureNames | None = None,
        resume: bool = False,
        overwrite: bool = False,
        video: bool = False,
    ) -> None:
        if fps <= 0:
            raise ValueError(f"fps must be positive, got {fps}.")
        self.root = Path(root)
        self.partial = self.root.with_name(self.root.name + ".partial")
        self.fps, self.robot_type, self.overwrite, self.video = int(fps), robot_type, overwrite, video
        self.names = dict(names or {})
        self.layout = WRITE_LAYOUT
        if self.root.exists() and not overwrite:
            raise FileExistsError(
                f"{self.root} already holds a complete dataset; pass overwrite=True (--overwrite) to replace it "
                "or choose another output directory."
            )
        if self.partial.exists() and not resume:
            if not overwrite:
                raise FileExistsError(
                    f"{self.partial} holds an interrupted write; pass --resume (resume=True) to continue it, "
                    "or delete that directory to start over."
                )
            shutil.rmtree(self.partial)
        self.shards = self.partial / SHARDS
        self.shards.mkdir(parents=True, exist_ok=True)
        self._done = self._load_done()
        self._features: dict[str, dict] | None = self._done[0]["features"] if self._done else None

    def _load_done(self) -> list[dict]:
        done = []
        for sidecar in sorted(self.shards.glob("episode_*.json")):
            done.append(read_json(sidecar))
        # Episodes whose parquet was written but whose sidecar was not are redone: drop the orphan shard.
        for shard in self.shards.glob("episode_*.parquet"):
            if not shard.with_suffix(".json").exists():
                shard.unlink()
        for clip in self.shards.glob("episode_*.mp4"):  # episode_NNNNNN.<camera key>.mp4
            if not (self.shards / (clip.name.split(".")[0] + ".json")).exists():
                clip.unlink()
        return done

    def done_keys(self) -> set[str]:
        """Keys of episodes already written (e.g. from an interrupted run being resumed)."""
        return {d["key"] for d in self._done}

    def _validate(self, episode: dict, key: str, meta: dict) -> dict[str, Any]:
        if key in self.done_keys():
            raise ValueError(f"Episode key {key!r} was already written; keys must be unique.")
        columns = episode_columns(episode, key, meta, self.fps)
        features = self._specs(columns)
        if self._features is not None and features != self._features:
            keys = features.keys() | self._features.keys()
            diff = sorted(k for k in keys if features.get(k) != self._features.get(k))
            raise ValueError(f"Episode {key!r} does not match the dataset's features; differing columns: {diff}.")
        return columns

    def _specs(self, columns: dict[str, Any]) -> dict[str, dict[str, Any]]:
        features = {k: feature_spec(k, v, self.names) for k, v in columns.items()}
        if self.video:
            for k, spec in features.items():
                if spec["dtype"] == "image":
                    features[k] = video_feature(spec["shape"], self.fps)
        return features

    def add_episode(self, episode: dict, *, key: str, meta: dict | None = None) -> None:
        """Encode one episode (docs/design.md "episode" format) and flush it to its own shard immediately."""
        meta = dict(meta or {})
        columns = self._validate(episode, key, meta)
        features = self._specs(columns)
        numeric = {
            k: np.asarray(v)
            for k, v in columns.items()
            if features[k]["dtype"] not in ("string", "bool") and k != "timestamp"
        }
        number = len(self._done)
        for k in [k for k, spec in features.items() if spec["dtype"] == "video"]:
            clip = self.shards / f"episode_{number:06d}.{k}.mp4"
            tmp = clip.with_name(clip.name + ".tmp.mp4")
            try:
                encode_video(columns.pop(k), tmp, self.fps)
            except BaseException:
                tmp.unlink(missing_ok=True)
                raise
            os.replace(tmp, clip)
        table = pa.table({k: to_arrow(k, v, features[k]) for k, v in columns.items()})
        shard = self.shards / f"episode_{number:06d}.parquet"
        buf = pa.BufferOutputStream()
        pq.write_table(table, buf)
        _atomic_write_bytes(shard, buf.getvalue().to_pybytes())
        record = {
            "key": key,
            "task": episode[TASK],
            "length": len(episode[ACTION]),
            "meta": {k: (v.item() if isinstance(v, np.generic) else v) for k, v in meta.items()},
            "features": features,
            "stats": stats_to_json(compute_stats(numeric)),
        }
        _atomic_write_bytes(shard.with_suffix(".json"), json.dumps(record).encode())
        self._done.append(record)
        self._features = self._features or features

    def finalize(self, extra_info: dict | None = None, sort_key: Any = None) -> Path:
        """Write stats, meta and data files, then atomically rename `<root>.partial` to `<root>`.

        Episodes are numbered in the order they were added, or by `sort_key(key)` when given (e.g. collection
        orders by (task, episode) so the dataset does not depend on which worker finished first). Idempotent
        until the rename: a finalize killed midway is simply run again.
        """
        if not self._done:
            raise ValueError(f"No episodes were added to {self.partial}; nothing to finalize.")
        extra_info = dict(extra_info or {})
        if clash := set(extra_info) & _INFO_KEYS:
            raise ValueError(f"extra_info keys {sorted(clash)} would overwrite standard info.json fields.")
        numbers = list(range(len(self._done)))  # shard numbers, in output order
        if sort_key is not None:
            numbers.sort(key=lambda n: sort_key(self._done[n]["key"]))
        records = [self._done[n] for n in numbers]
        tasks = list(dict.fromkeys(d["task"] for d in records))
        locations = self._write_data(tasks, numbers)
        self._write_episodes(locations, records, self._write_videos(numbers))
        pq.write_table(_tasks_table(tasks), self.partial / "meta" / "tasks.parquet")
        stats = aggregate_stats([stats_from_json(d["stats"]) for d in records])
        (self.partial / "meta" / "stats.json").write_text(json.dumps(stats_to_json(stats), indent=2))
        (self.partial / "meta" / "info.json").write_text(json.dumps(self._info(tasks) | extra_info, indent=2))
        if self.root.exists():  # overwrite=True: move the old dataset aside only now that the new one is whole
            old = self.root.with_name(self.root.name + ".old")
            shutil.rmtree(old, ignore_errors=True)
            os.replace(self.root, old)
            shutil.rmtree(old)
        os.replace(self.partial, self.root)
        shutil.rmtree(self.root / SHARDS)  # only now: until the rename, the shards are the resumable state
        return self.root

    def _write_data(self, tasks: list[str], numbers: list[int]) -> list[tuple[int, int]]:
        """Concatenate shards into data files (split at ~data_files_size_mb); returns (chunk, file) per episode."""
        locations, writer, file_number, file_bytes, index = [], None, -1, 0, 0
        for episode_index, number in enumerate(numbers):
            record = self._done[number]
            shard = self.shards / f"episode_{number:06d}.parquet"
            size = shard.stat().st_size
            if writer is None or file_bytes + size > self.layout.data_files_size_mb * 2**20:
                if writer is not None:
                    writer.close()
                file_number, file_bytes = file_number + 1, 0
                path = self.partial / self.layout.data_file_path(file_number)
                path.parent.mkdir(parents=True, exist_ok=True)
                writer = None
            table = _frame_table(read_parquet(shard), episode_index, index, tasks.index(record["task"]))
            if writer is None:
                writer = pq.ParquetWriter(path, table.schema)
            writer.write_table(table)
            file_bytes += size
            index += record["length"]
            locations.append(self.layout.location(file_number))
        writer.close()
        return locations

    def _video_groups(self, key: str, numbers: list[int]) -> list[list[int]]:
        """Shard numbers per output video file of camera `key`: at most video_files_size_mb each."""
        groups: list[list[int]] = [[]]
        size = 0
        for number in numbers:
            clip_size = (self.shards / f"episode_{number:06d}.{key}.mp4").stat().st_size
            if groups[-1] and size + clip_size > self.layout.video_files_size_mb * 2**20:
                groups.append([])
                size = 0
            groups[-1].append(number)
            size += clip_size
        return groups

    def _write_videos(self, numbers: list[int]) -> list[dict[str, Any]]:
        """Concatenate per-episode clips (shard `numbers`, in output order) into v3.0 video files; returns each
        output episode's `videos/<key>/...` columns."""
        rows: dict[int, dict[str, Any]] = {n: {} for n in numbers}
        keys = [k for k, spec in (self._features or {}).items() if spec["dtype"] == "video"]
        for key in keys:
            for file_number, group in enumerate(self._video_groups(key, numbers)):
                chunk, file = self.layout.location(file_number)
                path = self.partial / self.layout.video_file_path(key, file_number)
                path.parent.mkdir(parents=True, exist_ok=True)
                durations = [self._done[n]["length"] / self.fps for n in group]
                concat_videos([self.shards / f"episode_{n:06d}.{key}.mp4" for n in group], path, durations)
                start = 0.0
                for n, duration in zip(group, durations):
                    rows[n] |= {
                        f"videos/{key}/chunk_index": chunk,
                        f"videos/{key}/file_index": file,
                        f"videos/{key}/from_timestamp": start,
                        f"videos/{key}/to_timestamp": start + duration,
                    }
                    start += duration
        return [rows[n] for n in numbers]

    def _write_episodes(
        self, locations: list[tuple[int, int]], records: list[dict], videos: list[dict[str, Any]]
    ) -> None:
        rows, start = [], 0
        meta_keys = list(dict.fromkeys(k for d in records for k in d["meta"]))
        for number, (record, (chunk, file)) in enumerate(zip(records, locations)):
            row = {
                "episode_index": number,
                "tasks": [record["task"]],
                "length": record["length"],
                "data/chunk_index": chunk,
                "data/file_index": file,
                "dataset_from_index": start,
                "dataset_to_index": start + record["length"],
                "meta/episodes/chunk_index": 0,
                "meta/episodes/file_index": 0,
                "key": record["key"],
                **videos[number],
            }
            row |= {k: record["meta"].get(k) for k in meta_keys}
            for feature, stats in record["stats"].items():
                row |= {
                    f"stats/{feature}/{s}": np.asarray(v, dtype=np.float64).reshape(-1).tolist()
                    for s, v in stats.items()
                }
            rows.append(row)
            start += record["length"]
        try:
            table = pa.Table.from_pylist(rows)
        except (pa.ArrowInvalid, pa.ArrowTypeError) as e:
            raise ValueError(f"Episode meta values must have one type per key across episodes: {e}") from e
        path = self.partial / self.layout.episodes_path.format(chunk_index=0, file_index=0)
        path.parent.mkdir(parents=True, exist_ok=True)
        pq.write_table(table, path)

    def _info(self, tasks: list[str]) -> dict[str, Any]:
        features = {k: {"dtype": v, "shape": [1], "names": None} for k, v in STANDARD_DTYPES.items()}
        features |= {k: v for k, v in self._features.items() if k != "timestamp"}
        return {
            "codebase_version": self.layout.version,
            "robot_type": self.robot_type,
            "fps": self.fps,
            "features": features,
            "total_episodes": len(self._done),
            "total_frames": sum(d["length"] for d in self._done),
            "total_tasks": len(tasks),
            **self.layout.info_fields(self.video),
            "splits": {"train": f"0:{len(self._done)}"},
            "image_storage": "video" if self.video else "png-in-parquet",
        }
