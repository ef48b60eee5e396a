"""Per-frame columns of a LeRobot dataset: info.json feature specs, Arrow encoding and decoding, and the checks an
episode passes before it is written. Format-version independent (data/lerobot/layout.py holds what differs).

Images are PNG-in-parquet: a struct `{bytes: binary, path: string}` exactly like HF `datasets.Image` (LeRobot's
`dtype: "image"` features, as in the `HuggingFaceVLA/libero` sets). We chose PNG over MP4 because it is lossless
(the CoT boxes and the next-frame targets are pixel-exact), needs no PyAV/ffmpeg, and random access is one
decode. Vectors are fixed-size lists, strings are string columns, flags are bool columns.
"""

from __future__ import annotations

import io
import json
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from PIL import Image

from latentvla.constants import ACTION, OBS_IMAGES, OBS_STATE, TASK
from latentvla.data.errors import DatasetFormatError

STANDARD_COLUMNS = ("index", "episode_index", "frame_index", "timestamp", "task_index")
STANDARD_DTYPES = {
    "index": "int64",
    "episode_index": "int64",
    "frame_index": "int64",
    "timestamp": "float32",
    "task_index": "int64",
}
INDEX_COLUMNS = ("index", "episode_index", "frame_index", "task_index")  # assigned by the writer, not data
RESERVED_META = {"episode_index", "tasks", "length", "key", "dataset_from_index", "dataset_to_index"}
IMAGE_TYPE = pa.struct([("bytes", pa.binary()), ("path", pa.string())])
PNG_COMPRESS_LEVEL = 1  # ~3x faster than the default 6 for a few % more bytes
FeatureNames = Mapping[str, Sequence[str]]  # per-dimension names of vector features, e.g. from a simulator


def is_text(value: Any) -> bool:
    """Per-frame string columns are lists of str; everything else becomes a numpy array."""
    return isinstance(value, list | tuple) and len(value) > 0 and isinstance(value[0], str)


def feature_spec(key: str, value: Any, names: FeatureNames | None = None) -> dict[str, Any]:
    """info.json `features` entry for one episode column (values are per-frame arrays/lists).

    `names[key]` labels the dimensions of a 1-D vector feature (LeRobot's `names`); a vector without names, or
    whose names do not fit its size, gets `None`.
    """
    if is_text(value):
        return {"dtype": "string", "shape": [1], "names": None}
    arr = np.asarray(value)
    if key.startswith(OBS_IMAGES):
        return {"dtype": "image", "shape": list(arr.shape[1:]), "names": ["height", "width", "channels"]}
    shape = list(arr.shape[1:]) or [1]
    dtype = "bool" if arr.dtype == np.bool_ else str(arr.dtype)
    given = list((names or {}).get(key) or [])
    return {"dtype": dtype, "shape": shape, "names": given if given and [len(given)] == shape else None}


def vector_names(features: Mapping[str, Any]) -> dict[str, list[str]]:
    """The flat per-dimension `names` of a dataset's vector features (what `feature_spec` writes back)."""
    out = {}
    for key, spec in features.items():
        names = spec.get("names") if isinstance(spec, dict) else None
        if isinstance(names, list) and names and all(isinstance(n, str) for n in names):
            out[key] = names
    return out


def encode_png(frame: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(frame).save(buf, format="PNG", compress_level=PNG_COMPRESS_LEVEL)
    return buf.getvalue()


def to_arrow(key: str, value: Any, spec: dict[str, Any]) -> pa.Array:
    if spec["dtype"] == "string":
        return pa.array([str(s) for s in value], type=pa.string())
    if spec["dtype"] == "image":
        return pa.array([{"bytes": encode_png(f), "path": None} for f in value], type=IMAGE_TYPE)
    arr = np.ascontiguousarray(value)
    if arr.ndim == 1:
        return pa.array(arr)
    size = int(np.prod(arr.shape[1:]))
    return pa.FixedSizeListArray.from_arrays(pa.array(arr.reshape(-1)), size)


def decode_images(column: pa.ChunkedArray, file: Path, shape: Any = None) -> np.ndarray:
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


def from_arrow(column: pa.ChunkedArray, spec: dict[str, Any], file: Path, name: str = "?") -> Any:
    dtype = spec["dtype"]
    if dtype == "string":
        return column.to_pylist()
    if dtype == "image":
        return decode_images(column, file, spec.get("shape"))
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


def episode_columns(episode: dict, key: str, meta: dict, fps: int) -> dict[str, Any]:
    """The writer's per-frame columns of one episode (a `timestamp` added if absent), after refusing bad input:
    missing state/action/task, writer-assigned columns, ragged or empty columns, non-uint8 images, NaN/inf and
    non-scalar or reserved meta values."""
    for required in (OBS_STATE, ACTION, TASK):
        if required not in episode:
            raise KeyError(f"Episode {key!r} has no {required!r} (it has: {', '.join(sorted(episode))}).")
    if not isinstance(episode[TASK], str) or not episode[TASK]:
        raise ValueError(f"Episode {key!r}: 'task' must be a non-empty instruction string.")
    columns = {k: (list(v) if is_text(v) else np.asarray(v)) for k, v in episode.items() if k != TASK}
    for k in columns:
        if k in STANDARD_COLUMNS and k != "timestamp":
            raise ValueError(f"Episode {key!r}: column {k!r} is assigned by the writer; remove it.")
    length = len(episode[ACTION])
    if length == 0:
        raise ValueError(f"Episode {key!r} is empty.")
    if "timestamp" not in columns:
        columns["timestamp"] = np.arange(length, dtype=np.float32) / fps
    for k, v in columns.items():
        if len(v) != length:
            raise ValueError(f"Episode {key!r}: {k!r} has {len(v)} frames but 'action' has {length}.")
        if k.startswith(OBS_IMAGES) and not (np.asarray(v).dtype == np.uint8 and np.asarray(v).ndim == 4):
            raise ValueError(f"Episode {key!r}: {k!r} must be uint8 (T, H, W, 3), got {np.asarray(v).shape}.")
        if isinstance(v, np.ndarray) and v.dtype.kind == "f" and not np.isfinite(v).all():
            raise ValueError(f"Episode {key!r}: {k!r} contains NaN or inf; refusing to write it.")
    for k, v in meta.items():
        if not isinstance(v, (bool, int, float, str, np.generic)) and v is not None:
            raise TypeError(f"Episode {key!r}: meta {k!r} must be a scalar (bool/int/float/str), got {type(v)}.")
    bad_meta = set(meta) & RESERVED_META
    if bad_meta or any(k.startswith(("stats/", "data/", "meta/")) for k in meta):
        raise ValueError(f"Episode meta keys {sorted(bad_meta)} clash with LeRobot episode columns; rename them.")
    return columns


# --- files --------------------------------------------------------------------------------------------------


def read_parquet(path: Path, columns: list[str] | None = None) -> pa.Table:
    if not path.is_file():
        raise DatasetFormatError(f"{path}: file is missing; the dataset is incomplete.")
    try:
        return pq.read_table(path, columns=columns)
    except (pa.ArrowException, OSError) as e:
        raise DatasetFormatError(f"{path}: cannot read parquet ({e}); the file is corrupt or truncated.") from e


def read_schema_names(path: Path) -> list[str]:
    if not path.is_file():
        raise DatasetFormatError(f"{path}: file is missing; the dataset is incomplete.")
    try:
        return pq.read_schema(path).names
    except (pa.ArrowException, OSError) as e:
        raise DatasetFormatError(f"{path}: cannot read parquet ({e}); the file is corrupt or truncated.") from e


def read_json(path: Path) -> Any:
    if not path.is_file():
        raise DatasetFormatError(f"{path}: file is missing; the dataset is incomplete.")
    try:
        return json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise DatasetFormatError(f"{path}: invalid JSON ({e}).") from e


def read_jsonl(path: Path) -> list[dict]:
    if not path.is_file():
        raise DatasetFormatError(f"{path}: file is missing; the dataset is incomplete.")
    try:
        return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    except json.JSONDecodeError as e:
        raise DatasetFormatError(f"{path}: invalid JSON lines ({e}).") from e
