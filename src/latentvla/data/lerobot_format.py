"""LeRobotDataset v3.0 writer (atomic, resumable) and reader (v3.0 and v2.1), numpy + pyarrow only.

On-disk layout written by `DatasetWriter.finalize` (ecosystem.md §1.1, lerobot `datasets/utils.py`):

    meta/info.json                          codebase_version "v3.0", fps, features, totals, paths, splits
    meta/stats.json                         {feature: {mean, std, min, max, q01, q99, count}}
    meta/tasks.parquet                      column `task_index`, index column `task` (pandas metadata kept)
    meta/episodes/chunk-000/file-000.parquet  one row per episode: episode_index, tasks, length,
                                            data/chunk_index, data/file_index, dataset_from_index,
                                            dataset_to_index, key, writer meta columns, stats/<feature>/<stat>
    data/chunk-000/file-000.parquet         index, episode_index, frame_index, timestamp, task_index,
                                            observation.state, action, observation.images.<cam>, privileged.*, cot.*

Images are PNG-in-parquet: a struct `{bytes: binary, path: string}` exactly like HF `datasets.Image` (LeRobot's
`dtype: "image"` features, as in the `HuggingFaceVLA/libero` sets). We chose PNG over MP4 because it is lossless
(the CoT boxes and the next-frame targets are pixel-exact), needs no PyAV/ffmpeg, and random access is one
decode. Vectors are fixed-size lists, strings are string columns, flags are bool columns.

While writing, everything lives in `<root>.partial/`: each `add_episode` writes `shards/episode_NNNNNN.parquet`
then its `.json` sidecar (the sidecar's existence marks the episode done, so a crash mid-episode is redone on
resume). `finalize` merges the shards into the v3.0 files and renames `<root>.partial` to `<root>`, so an
interrupted run never leaves a directory that looks like a complete dataset. The shards are deleted only after
that rename, so a kill anywhere inside `finalize` leaves either `<root>.partial/` with every shard (finalize
again) or the published `<root>` (plus, at worst, a leftover `shards/` folder that readers ignore).
"""

from __future__ import annotations

import io
import json
import os
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from PIL import Image

from latentvla.constants import ACTION, OBS_IMAGES, OBS_STATE, TASK
from latentvla.data.frames import VideoLocation
from latentvla.data.stats import aggregate_stats, compute_stats, stats_from_json, stats_to_json

CODEBASE_VERSION = "v3.0"
CHUNKS_SIZE = 1000  # files per chunk directory (LeRobot default)
DATA_FILE_SIZE_MB = 100  # a new data file is started once the current one would exceed this
VIDEO_FILE_SIZE_MB = 200  # the same for each camera's video files (LeRobot's default)
VIDEO_PATH = "videos/{video_key}/chunk-{chunk_index:03d}/file-{file_index:03d}.mp4"
DATA_PATH = "data/chunk-{chunk_index:03d}/file-{file_index:03d}.parquet"
EPISODES_PATH = "meta/episodes/chunk-{chunk_index:03d}/file-{file_index:03d}.parquet"
STANDARD_COLUMNS = ("index", "episode_index", "frame_index", "timestamp", "task_index")
_RESERVED_META = {"episode_index", "tasks", "length", "key", "dataset_from_index", "dataset_to_index"}
_INFO_KEYS = {"codebase_version", "fps", "features", "total_episodes", "total_frames", "total_tasks", "splits"}
_NAMES = {OBS_STATE: ["hand_x", "hand_y", "hand_z", "gripper"], ACTION: ["dx", "dy", "dz", "gripper"]}
_IMAGE_TYPE = pa.struct([("bytes", pa.binary()), ("path", pa.string())])
_PNG_COMPRESS_LEVEL = 1  # ~3x faster than the default 6 for a few % more bytes
SHARDS = "shards"  # per-episode parquet + json sidecars inside `<root>.partial/` until finalize


class DatasetFormatError(ValueError):
    """A dataset on disk is missing, corrupt or not in a supported LeRobot layout (message names the file)."""


# --- per-episode column encoding ---------------------------------------------------------------------------


def _is_text(value: Any) -> bool:
    """Per-frame string columns are lists of str; everything else becomes a numpy array."""
    return isinstance(value, list | tuple) and len(value) > 0 and isinstance(value[0], str)


def _feature_spec(key: str, value: Any) -> dict[str, Any]:
    """info.json `features` entry for one episode column (values are per-frame arrays/lists)."""
    if _is_text(value):
        return {"dtype": "string", "shape": [1], "names": None}
    arr = np.asarray(value)
    if key.startswith(OBS_IMAGES):
        return {"dtype": "image", "shape": list(arr.shape[1:]), "names": ["height", "width", "channels"]}
    shape = list(arr.shape[1:]) or [1]
    dtype = "bool" if arr.dtype == np.bool_ else str(arr.dtype)
    names = _NAMES.get(key) if len(_NAMES.get(key, [])) == shape[0] and len(shape) == 1 else None
    return {"dtype": dtype, "shape": shape, "names": names}


def _encode_png(frame: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(frame).save(buf, format="PNG", compress_level=_PNG_COMPRESS_LEVEL)
    return buf.getvalue()


def _to_arrow(key: str, value: Any, spec: dict[str, Any]) -> pa.Array:
    if spec["dtype"] == "string":
        return pa.array([str(s) for s in value], type=pa.string())
    if spec["dtype"] == "image":
        return pa.array([{"bytes": _encode_png(f), "path": None} for f in value], type=_IMAGE_TYPE)
    arr = np.ascontiguousarray(value)
    if arr.ndim == 1:
        return pa.array(arr)
    size = int(np.prod(arr.shape[1:]))
    return pa.FixedSizeListArray.from_arrays(pa.array(arr.reshape(-1)), size)


def _decode_images(column: pa.ChunkedArray, file: Path, shape: Any = None) -> np.ndarray:
    """PNG cells -> uint8 (T, H, W, 3); a corrupt cell or one whose size differs from `shape` is one clear error."""
    frames = []
    for row, item in enumerate(column.to_pylist()):
        if item is None or item.get("bytes") is None:
            raise DatasetFormatError(
                f"{file}: an image cell has no embedded bytes (path-only images unsupported)."
            )
        try:
            frame = np.asarray(Image.open(io.BytesIO(item["bytes"])).convert("RGB"))
        except (OSError, ValueError, SyntaxError) as e:  # PIL: UnidentifiedImageError, truncated, bad CRC
            raise DatasetFormatError(
                f"{file}: the image at row {row} cannot be decoded "
                f"({e}); the PNG is corrupt or truncated: re-collect or drop that episode."
            ) from e
        expected = tuple(int(d) for d in shape) if shape is not None else (frames[0] if frames else frame).shape
        chw = len(expected) == 3 and expected[0] == 3 and frame.shape == (*expected[1:], 3)  # channel-first spec
        if frame.shape != expected and not chw:
            raise DatasetFormatError(
                f"{file}: image at row {row} is {list(frame.shape)} but the dataset declares {list(expected)} "
                "(meta/info.json); every frame of a camera must have the declared size."
            )
        frames.append(frame)
    return np.stack(frames)


def _from_arrow(column: pa.ChunkedArray, spec: dict[str, Any], file: Path, name: str = "?") -> Any:
    dtype = spec["dtype"]
    if dtype == "string":
        return column.to_pylist()
    if dtype == "image":
        return _decode_images(column, file, spec.get("shape"))
    if dtype == "video":
        raise DatasetFormatError(f"{file}: video features are not supported; use a PNG-in-parquet dataset.")
    column = column.combine_chunks()
    if pa.types.is_fixed_size_list(column.type) or pa.types.is_list(column.type):
        values = column.flatten().to_numpy(zero_copy_only=False)
        per_frame = int(np.prod(spec["shape"]))
        if values.size != len(column) * per_frame:
            raise DatasetFormatError(
                f"{file}: column {name!r} holds {values.size // max(len(column), 1)} values per frame but "
                f"meta/info.json declares shape {list(spec['shape'])}; fix the shape in info.json."
            )
        return values.reshape((len(column), *spec["shape"])).astype(np.dtype(dtype), copy=False)
    if int(np.prod(spec["shape"])) != 1:
        raise DatasetFormatError(
            f"{file}: column {name!r} holds 1 value per frame but meta/info.json declares shape "
            f"{list(spec['shape'])}; fix the shape in info.json."
        )
    values = column.to_numpy(zero_copy_only=False)
    return values.astype(np.dtype(dtype), copy=False)


def _read_parquet(path: Path, columns: list[str] | None = None) -> pa.Table:
    if not path.is_file():
        raise DatasetFormatError(f"{path}: file is missing; the dataset is incomplete.")
    try:
        return pq.read_table(path, columns=columns)
    except (pa.ArrowException, OSError) as e:
        raise DatasetFormatError(f"{path}: cannot read parquet ({e}); the file is corrupt or truncated.") from e


def _read_json(path: Path) -> Any:
    if not path.is_file():
        raise DatasetFormatError(f"{path}: file is missing; the dataset is incomplete.")
    try:
        return json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise DatasetFormatError(f"{path}: invalid JSON ({e}).") from e


def _read_jsonl(path: Path) -> list[dict]:
    if not path.is_file():
        raise DatasetFormatError(f"{path}: file is missing; the dataset is incomplete.")
    try:
        return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    except json.JSONDecodeError as e:
        raise DatasetFormatError(f"{path}: invalid JSON lines ({e}).") from e


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


# --- writer ------------------------------------------------------------------------------------------------


class DatasetWriter:
    """Writes episodes into `<root>.partial/` and atomically publishes a LeRobot v3.0 dataset on `finalize`.

    `root` complete already: refused unless `overwrite=True` (replaced at finalize). `<root>.partial` present:
    `resume=True` keeps its finished episodes, `overwrite=True` discards it, otherwise refused.
    """

    def __init__(
        self,
        root: str | Path,
        *,
        fps: int,
        robot_type: str,
        resume: bool = False,
        overwrite: bool = False,
        video: bool = False,
    ) -> None:
        if fps <= 0:
            raise ValueError(f"fps must be positive, got {fps}.")
        self.root = Path(root)
        self.partial = self.root.with_name(self.root.name + ".partial")
        self.fps, self.robot_type, self.overwrite, self.video = int(fps), robot_type, overwrite, video
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
            done.append(_read_json(sidecar))
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
        for required in (OBS_STATE, ACTION, TASK):
            if required not in episode:
                raise KeyError(f"Episode {key!r} has no {required!r} (it has: {', '.join(sorted(episode))}).")
        if not isinstance(episode[TASK], str) or not episode[TASK]:
            raise ValueError(f"Episode {key!r}: 'task' must be a non-empty instruction string.")
        columns = {k: (list(v) if _is_text(v) else np.asarray(v)) for k, v in episode.items() if k != TASK}
        for k in columns:
            if k in STANDARD_COLUMNS and k != "timestamp":
                raise ValueError(f"Episode {key!r}: column {k!r} is assigned by the writer; remove it.")
        length = len(episode[ACTION])
        if length == 0:
            raise ValueError(f"Episode {key!r} is empty.")
        if "timestamp" not in columns:
            columns["timestamp"] = np.arange(length, dtype=np.float32) / self.fps
        for k, v in columns.items():
            if len(v) != length:
                raise ValueError(f"Episode {key!r}: {k!r} has {len(v)} frames but 'action' has {length}.")
            if k.startswith(OBS_IMAGES) and not (np.asarray(v).dtype == np.uint8 and np.asarray(v).ndim == 4):
                raise ValueError(f"Episode {key!r}: {k!r} must be uint8 (T, H, W, 3), got {np.asarray(v).shape}.")
            if isinstance(v, np.ndarray) and v.dtype.kind == "f" and not np.isfinite(v).all():
                raise ValueError(f"Episode {key!r}: {k!r} contains NaN or inf; refusing to write it.")
        for k, v in meta.items():
            if not isinstance(v, (bool, int, float, str, np.generic)) and v is not None:
                raise TypeError(
                    f"Episode {key!r}: meta {k!r} must be a scalar (bool/int/float/str), got {type(v)}."
                )
        bad_meta = set(meta) & _RESERVED_META
        if bad_meta or any(k.startswith(("stats/", "data/", "meta/")) for k in meta):
            raise ValueError(
                f"Episode meta keys {sorted(bad_meta)} clash with LeRobot episode columns; rename them."
            )
        features = self._specs(columns)
        if self._features is not None and features != self._features:
            keys = features.keys() | self._features.keys()
            diff = sorted(k for k in keys if features.get(k) != self._features.get(k))
            raise ValueError(f"Episode {key!r} does not match the dataset's features; differing columns: {diff}.")
        return columns

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
            from latentvla.data.video import encode_video

            clip = self.shards / f"episode_{number:06d}.{k}.mp4"
            tmp = clip.with_name(clip.name + ".tmp.mp4")
            try:
                encode_video(columns.pop(k), tmp, self.fps)
            except BaseException:
                tmp.unlink(missing_ok=True)
                raise
            os.replace(tmp, clip)
        table = pa.table({k: _to_arrow(k, v, features[k]) for k, v in columns.items()})
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
        self._write_episodes(tasks, locations, records, self._write_videos(numbers))
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
        """Concatenate shards into data files (split at ~DATA_FILE_SIZE_MB); returns (chunk, file) per episode."""
        locations, writer, file_number, file_bytes, index = [], None, -1, 0, 0
        for episode_index, number in enumerate(numbers):
            record = self._done[number]
            shard = self.shards / f"episode_{number:06d}.parquet"
            size = shard.stat().st_size
            if writer is None or file_bytes + size > DATA_FILE_SIZE_MB * 2**20:
                if writer is not None:
                    writer.close()
                file_number, file_bytes = file_number + 1, 0
                path = self.partial / DATA_PATH.format(
                    chunk_index=file_number // CHUNKS_SIZE, file_index=file_number % CHUNKS_SIZE
                )
                path.parent.mkdir(parents=True, exist_ok=True)
                writer = None
            table = self._frame_table(_read_parquet(shard), episode_index, index, tasks.index(record["task"]))
            if writer is None:
                writer = pq.ParquetWriter(path, table.schema)
            writer.write_table(table)
            file_bytes += size
            index += record["length"]
            locations.append((file_number // CHUNKS_SIZE, file_number % CHUNKS_SIZE))
        writer.close()
        return locations

    def _frame_table(self, shard: pa.Table, episode_index: int, start: int, task_index: int) -> pa.Table:
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

    def _specs(self, columns: dict[str, Any]) -> dict[str, dict[str, Any]]:
        features = {k: _feature_spec(k, v) for k, v in columns.items()}
        if self.video:
            from latentvla.data.video import video_feature

            for k, spec in features.items():
                if spec["dtype"] == "image":
                    features[k] = video_feature(spec["shape"], self.fps)
        return features

    def _write_videos(self, numbers: list[int]) -> list[dict[str, Any]]:
        """Concatenate per-episode clips (shard `numbers`, in output order) into v3.0 video files of at most
        VIDEO_FILE_SIZE_MB each; returns each output episode's `videos/<key>/...` columns."""
        from latentvla.data.video import concat_videos

        rows: dict[int, dict[str, Any]] = {n: {} for n in numbers}
        keys = [k for k, spec in (self._features or {}).items() if spec["dtype"] == "video"]
        for key in keys:
            groups: list[list[int]] = [[]]
            size = 0
            for number in numbers:
                clip_size = (self.shards / f"episode_{number:06d}.{key}.mp4").stat().st_size
                if groups[-1] and size + clip_size > VIDEO_FILE_SIZE_MB * 2**20:
                    groups.append([])
                    size = 0
                groups[-1].append(number)
                size += clip_size
            for file_number, group in enumerate(groups):
                chunk, file = file_number // CHUNKS_SIZE, file_number % CHUNKS_SIZE
                path = self.partial / VIDEO_PATH.format(video_key=key, chunk_index=chunk, file_index=file)
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
        self, tasks: list[str], locations: list[tuple[int, int]], records: list[dict], videos: list[dict[str, Any]]
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
        path = self.partial / EPISODES_PATH.format(chunk_index=0, file_index=0)
        path.parent.mkdir(parents=True, exist_ok=True)
        pq.write_table(table, path)

    def _info(self, tasks: list[str]) -> dict[str, Any]:
        total_frames = sum(d["length"] for d in self._done)
        standard = {
            "index": "int64",
            "episode_index": "int64",
            "frame_index": "int64",
            "timestamp": "float32",
            "task_index": "int64",
        }
        features = {k: {"dtype": v, "shape": [1], "names": None} for k, v in standard.items()}
        features |= {k: v for k, v in self._features.items() if k != "timestamp"}
        return {
            "codebase_version": CODEBASE_VERSION,
            "robot_type": self.robot_type,
            "fps": self.fps,
            "features": features,
            "total_episodes": len(self._done),
            "total_frames": total_frames,
            "total_tasks": len(tasks),
            "chunks_size": CHUNKS_SIZE,
            "data_files_size_in_mb": DATA_FILE_SIZE_MB,
            "video_files_size_in_mb": VIDEO_FILE_SIZE_MB,
            "data_path": DATA_PATH,
            "video_path": VIDEO_PATH if self.video else None,
            "splits": {"train": f"0:{len(self._done)}"},
            "image_storage": "video" if self.video else "png-in-parquet",
        }


# --- reader ------------------------------------------------------------------------------------------------

_INDEX_COLUMNS = ("index", "episode_index", "frame_index", "task_index")


class LeRobotDatasetReader:
    """Reads a LeRobot v3.0 or v2.1 dataset (auto-detected from meta/info.json) into episode dicts.

    `episode(i)` returns the `DatasetWriter.add_episode` input format (images uint8 `(T, H, W, 3)`), so a
    dataset can be read, transformed (e.g. annotated) and written again. `episodes[i]` carries
    `episode_index, length, tasks, dataset_from_index, dataset_to_index` plus the writer's meta columns.
    """

    def __init__(self, root: str | Path) -> None:
        from latentvla.hub import resolve_dataset

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
        self.info: dict = _read_json(info_path)
        from latentvla.data.validate import check_info

        check_info(self.info, info_path)
        self.version = str(self.info.get("codebase_version"))
        if not isinstance(self.info.get("features"), dict) or "fps" not in self.info:
            raise DatasetFormatError(f"{info_path}: lacks 'features' or 'fps'; not a LeRobot info.json.")
        if self.version == "v3.0":
            self._load_v3()
        elif self.version in ("v2.1", "v2.0"):
            self._load_v2()
        else:
            raise DatasetFormatError(
                f"{info_path}: codebase_version {self.version!r} is not supported (this reader reads v3.0 and v2.1)."
            )
        self.fps = int(self.info["fps"])
        self.features: dict[str, dict] = self.info["features"]
        self.feature_keys = list(self.features)
        self.camera_keys = [k for k, v in self.features.items() if v.get("dtype") in ("image", "video")]
        self.num_episodes = len(self.episodes)
        self.num_frames = sum(int(e["length"]) for e in self.episodes)
        self._cache: tuple[tuple[Path, bool], pa.Table, np.ndarray] | None = None
        self._video: Any = None  # a VideoReader, opened on first use

    def _load_v3(self) -> None:
        meta = self.root / "meta"
        table = _read_parquet(meta / "tasks.parquet")
        task_col = TASK if TASK in table.column_names else "__index_level_0__"
        if task_col not in table.column_names or "task_index" not in table.column_names:
            raise DatasetFormatError(f"{meta / 'tasks.parquet'}: needs columns 'task' and 'task_index'.")
        pairs = sorted(zip(table.column("task_index").to_pylist(), table.column(task_col).to_pylist()))
        self.tasks: list[str] = [t for _, t in pairs]
        files = sorted((meta / "episodes").glob("chunk-*/file-*.parquet"))
        if not files:
            raise DatasetFormatError(f"{meta / 'episodes'}: no episode metadata parquet files found.")
        rows = [r for f in files for r in _read_parquet(f).to_pylist()]
        self.episode_stats = [{k: v for k, v in r.items() if k.startswith("stats/")} for r in rows]
        self.episodes: list[dict] = sorted(
            ({k: v for k, v in r.items() if not k.startswith(("stats/", "meta/episodes/"))} for r in rows),
            key=lambda r: r["episode_index"],
        )
        stats_path = meta / "stats.json"
        self.stats = stats_from_json(_read_json(stats_path)) if stats_path.exists() else {}

    def _load_v2(self) -> None:
        meta = self.root / "meta"
        self.tasks = [t["task"] for t in sorted(_read_jsonl(meta / "tasks.jsonl"), key=lambda t: t["task_index"])]
        self.episodes = sorted(_read_jsonl(meta / "episodes.jsonl"), key=lambda e: e["episode_index"])
        start = 0
        for ep in self.episodes:  # v2.1 has no global offsets in its metadata; derive them
            ep["dataset_from_index"], ep["dataset_to_index"] = start, start + int(ep["length"])
            start += int(ep["length"])
        if (meta / "stats.json").exists():  # v2.0 kept global stats
            self.stats = stats_from_json(_read_json(meta / "stats.json"))
        elif (meta / "episodes_stats.jsonl").exists():  # v2.1: aggregate per-episode stats at load, like LeRobot
            per_episode = [stats_from_json(e["stats"]) for e in _read_jsonl(meta / "episodes_stats.jsonl")]
            self.stats = aggregate_stats(per_episode) if per_episode else {}
        else:
            self.stats = {}

    def _data_file(self, i: int) -> Path:
        ep = self.episodes[i]
        if self.version == "v3.0":
            rel = self.info["data_path"].format(
                chunk_index=ep["data/chunk_index"], file_index=ep["data/file_index"]
            )
        else:
            chunks = int(self.info.get("chunks_size", CHUNKS_SIZE))
            index = int(ep["episode_index"])
            rel = self.info["data_path"].format(episode_chunk=index // chunks, episode_index=index)
        return self.root / rel

    def _episode_table(self, i: int, images: bool = True) -> tuple[pa.Table, Path]:
        if not 0 <= i < len(self.episodes):
            raise IndexError(f"Episode {i} out of range: {self.root} has {len(self.episodes)} episodes.")
        path = self._data_file(i)
        columns = None if images else self._non_image_columns(path)
        if self.version != "v3.0":
            return _read_parquet(path, columns), path
        if self._cache is None or self._cache[0] != (path, images):  # v3 files hold many episodes: keep the last
            table = _read_parquet(path, columns)
            self._cache = ((path, images), table, table.column("episode_index").to_numpy())
        _, table, ep_index = self._cache
        return table.slice(*self._rows(ep_index, i, path)), path

    def _non_image_columns(self, path: Path) -> list[str]:
        """Columns of a data file without pixels (what lazy datasets keep in memory)."""
        if not path.is_file():
            raise DatasetFormatError(f"{path}: file is missing; the dataset is incomplete.")
        try:
            names = pq.read_schema(path).names
        except (pa.ArrowException, OSError) as e:
            raise DatasetFormatError(
                f"{path}: cannot read parquet ({e}); the file is corrupt or truncated."
            ) from e
        return [n for n in names if self.features.get(n, {}).get("dtype") not in ("image", "video")]

    def first_rows(self, episodes: list[int]) -> list[tuple[Path, int]]:
        """(data file, row of frame 0 in that file) of each episode; reads only the episode_index column."""
        out, files = [], {}
        for i in episodes:
            if not 0 <= i < len(self.episodes):
                raise IndexError(f"Episode {i} out of range: {self.root} has {len(self.episodes)} episodes.")
            path = self._data_file(i)
            if self.version != "v3.0":
                out.append((path, 0))
                continue
            if path not in files:
                files[path] = _read_parquet(path, ["episode_index"]).column("episode_index").to_numpy()
            out.append((path, self._rows(files[path], i, path)[0]))
        return out

    def _rows(self, ep_index: np.ndarray, i: int, path: Path) -> tuple[int, int]:
        rows = np.flatnonzero(ep_index == self.episodes[i]["episode_index"])
        if len(rows) != int(self.episodes[i]["length"]):
            raise DatasetFormatError(
                f"{path}: episode {i} has {len(rows)} rows but meta/episodes says {self.episodes[i]['length']}."
            )
        return int(rows[0]), len(rows)

    def video_location(self, i: int, key: str) -> VideoLocation:
        """The video file holding camera `key` of episode `i` and the episode's first timestamp in it."""
        ep, template = self.episodes[i], self.info.get("video_path")
        if not template:
            raise DatasetFormatError(
                f"{self.root / 'meta' / 'info.json'}: {key!r} is a video but 'video_path' is unset."
            )
        if self.version == "v3.0":
            cols = [f"videos/{key}/{c}" for c in ("chunk_index", "file_index", "from_timestamp")]
            if any(ep.get(c) is None for c in cols):
                raise DatasetFormatError(
                    f"{self.root / 'meta' / 'episodes'}: episode {i} lacks {cols} for video feature {key!r}."
                )
            rel = template.format(video_key=key, chunk_index=int(ep[cols[0]]), file_index=int(ep[cols[1]]))
            return VideoLocation(self.root / rel, float(ep[cols[2]]))
        index = int(ep["episode_index"])
        chunks = int(self.info.get("chunks_size", CHUNKS_SIZE))
        rel = template.format(episode_chunk=index // chunks, video_key=key, episode_index=index)
        return VideoLocation(self.root / rel, 0.0)

    def episode(self, i: int, images: bool = True) -> dict:
        """Episode `i` in the writer's input format (per-frame arrays, `task` str, images uint8 THWC).

        `images=False` reads and returns only the columns without pixels (cheap: no decode, no image bytes read).
        """
        table, path = self._episode_table(i, images)
        episode: dict[str, Any] = {}
        for name in table.column_names:
            if name in _INDEX_COLUMNS or name not in self.features:
                continue
            episode[name] = _from_arrow(table.column(name), self.features[name], path, name)
        task_index = table.column("task_index")[0].as_py() if "task_index" in table.column_names else 0
        if not 0 <= task_index < len(self.tasks):
            raise DatasetFormatError(f"{path}: task_index {task_index} not in meta tasks ({len(self.tasks)}).")
        episode[TASK] = self.tasks[task_index]
        videos = [k for k in self.camera_keys if self.features[k]["dtype"] == "video"] if images else []
        for key in videos:  # whole episode: one seek, then a forward decode
            from latentvla.data.video import VideoReader

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
        parts, tables = [], {}
        for i in range(self.num_episodes):
            path = self._data_file(i)
            if self.version != "v3.0":
                parts.append(_from_arrow(_read_parquet(path, [key]).column(key), self.features[key], path, key))
                continue
            if path not in tables:
                table = _read_parquet(path, [key, "episode_index"])
                tables[path] = (table, table.column("episode_index").to_numpy())
            table, ep_index = tables[path]
            column = table.column(key).slice(*self._rows(ep_index, i, path))
            parts.append(_from_arrow(column, self.features[key], path, key))
        if self.features[key]["dtype"] == "string":
            return [s for p in parts for s in p]
        if not parts:  # a dataset without episodes: an empty column of the declared shape
            return np.zeros((0, *self.features[key]["shape"]), dtype=np.dtype(self.features[key]["dtype"]))
        return np.concatenate(parts)
