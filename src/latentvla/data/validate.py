"""Checks run when a dataset is opened, so bad data fails in one line instead of training "successfully".

Without them, NaN actions trained to a NaN checkpoint with exit 0, an `info.json` image shape that disagreed
with the stored PNGs (and was copied into the checkpoint), and tracebacks for a missing `stats.json`, an empty
dataset or an `info.json` that is a list. Every check raises `DatasetFormatError` (a ValueError) whose message
names the file, column, episode and frame at fault and says how to fix it.

    check_info(info, path)          shape of meta/info.json itself (called by the reader before anything else)
    validate_dataset(reader, ...)   non-empty, finite state/action columns, finite stats, image shape vs info

The column scan reads the numeric columns only; the image check reads one stored frame's PNG / video header per
camera (no pixel decode: opening a dataset decodes nothing, data/frames.py). A damaged image found later, when a
sample is decoded, is one `DatasetFormatError` too (frames.py).
`validate_dataset` remembers what it checked on the reader, so the training loop and `VLADataset` can both call
it on the same reader without scanning twice.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from numbers import Real
from typing import Any

import numpy as np

from latentvla.constants import ACTION, COT_BBOX, OBS_STATE
from latentvla.data.errors import DatasetFormatError
from latentvla.data.video import probe

_CHECKED_ATTR = "_latentvla_validated"
ABSURD_FACTOR = 1e3  # a value this many reference scales from its column's median is not a measurement


def _error(message: str) -> Exception:
    return DatasetFormatError(message)


def check_info(info: Any, path: Any) -> None:
    """meta/info.json must be an object with a `features` object and a positive numeric `fps`."""
    if not isinstance(info, dict):
        raise _error(
            f"{path}: must be a JSON object, got a {type(info).__name__}; restore the dataset's info.json."
        )
    if not isinstance(info.get("features"), dict):
        raise _error(f"{path}: lacks a 'features' object; not a LeRobot info.json.")
    fps = info.get("fps")
    if isinstance(fps, bool) or not isinstance(fps, Real) or not fps > 0:
        raise _error(
            f"{path}: 'fps' must be a positive number, got {fps!r}; fix it in info.json (e.g. \"fps\": 10)."
        )
    for key, spec in info["features"].items():
        if not isinstance(spec, dict) or not isinstance(spec.get("shape"), list | tuple):
            raise _error(f"{path}: feature {key!r} needs a 'dtype' and a 'shape' list, got {spec!r}.")


def _locate(reader: Any, position: int) -> tuple[int, int]:
    """Global frame position -> (episode index, frame within the episode)."""
    lengths = np.array([int(e["length"]) for e in reader.episodes])
    episode = int(np.searchsorted(np.cumsum(lengths), position, side="right"))
    return int(reader.episodes[episode]["episode_index"]), int(position - lengths[:episode].sum())


def _check_finite_column(reader: Any, key: str) -> np.ndarray:
    """The column as (frames, dims) float64, after refusing NaN / inf in it."""
    values = np.asarray(reader.column(key), dtype=np.float64)
    values = values.reshape(len(values), -1)
    bad = ~np.isfinite(values)
    if bad.any():
        row, dim = (int(i) for i in np.argwhere(bad)[0])
        episode, frame = _locate(reader, row)
        what = "NaN" if np.isnan(values[row, dim]) else "inf"
        fix = (
            f"re-annotate with `latentvla annotate {reader.root}`"
            if key.startswith("cot.")
            else "fix or drop those episodes"
        )
        raise _error(
            f"{reader.root}: column {key!r} holds {what} at episode {episode}, frame {frame} (dimension {dim}; "
            f"{int(bad.any(axis=1).sum())} bad frames in all); {fix} before training."
        )
    return values


def _typical_range(values: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per dimension: median, 10th and 90th percentile of the column (robust: sentinels on fewer than 10 % of
    the frames do not move them, even in a small dataset)."""
    q10, median, q90 = np.quantile(values, [0.1, 0.5, 0.9], axis=0)
    return median, q10, q90


def _reference_scale(lo: np.ndarray, hi: np.ndarray) -> np.ndarray:
    """How large a dimension's values are: its robust spread or magnitude, at least 1 (so a dimension that is
    constant on 99 % of frames, e.g. a binary gripper, still allows its other value)."""
    return np.maximum.reduce([hi - lo, np.abs(lo), np.abs(hi), np.ones_like(lo)])


def _check_magnitude(reader: Any, key: str, values: np.ndarray) -> None:
    """Refuse finite but absurd values (a 3e38 sensor sentinel, a unit slip): more than ABSURD_FACTOR times the
    reference scale of the rest of the column away from its median. Stats recomputed on such data squash every real
    value to ~0 after normalization, and the published checkpoint's actions overflow ."""
    median, lo, hi = _typical_range(values)
    bad = np.abs(values - median) > ABSURD_FACTOR * _reference_scale(lo, hi)
    if bad.any():
        row, dim = (int(i) for i in np.argwhere(bad)[0])
        episode, frame = _locate(reader, row)
        raise _error(
            f"{reader.root}: column {key!r} holds {values[row, dim]:.6g} at episode {episode}, frame {frame} "
            f"(dimension {dim}; {int(bad.any(axis=1).sum())} such frames in all), more than {ABSURD_FACTOR:g}x "
            f"the range of the rest of the column (10th..90th percentile {lo[dim]:.4g}..{hi[dim]:.4g}): a sensor "
            "sentinel or a unit error; fix or drop those frames (and recompute meta/stats.json) before training."
        )


def _check_stats_against_data(reader: Any, key: str, values: np.ndarray) -> None:
    """meta/stats.json must describe the data: every value inside the stats' [min, max] (min_max normalization
    maps that range to [-1, 1]), and that range not absurdly wider than the data's own."""
    meta = reader.root / "meta"
    path = meta / "stats.json" if (meta / "stats.json").exists() else meta / "episodes_stats.jsonl"
    stats = reader.stats[key]
    if "min" not in stats or "max" not in stats:
        return
    lo, hi = (np.asarray(stats[s], dtype=np.float64).reshape(-1) for s in ("min", "max"))
    if lo.shape != (values.shape[1],) or hi.shape != lo.shape:
        raise _error(
            f"{path}: stats of {key!r} have {lo.size} dimensions but the data has {values.shape[1]}; the stats "
            "belong to another dataset: recompute them."
        )
    data_lo, data_hi = values.min(axis=0), values.max(axis=0)
    tol = 1e-4 * np.maximum(hi - lo, 1.0)
    outside = (data_lo < lo - tol) | (data_hi > hi + tol)
    if outside.any():
        dim = int(np.flatnonzero(outside)[0])
        rows = np.flatnonzero((values[:, dim] < lo[dim] - tol[dim]) | (values[:, dim] > hi[dim] + tol[dim]))
        episode, frame = _locate(reader, int(rows[0]))
        raise _error(
            f"{path}: {key!r} dimension {dim} spans {lo[dim]:.6g}..{hi[dim]:.6g} in the stats but the data holds "
            f"{values[rows[0], dim]:.6g} at episode {episode}, frame {frame} ({len(rows)} frames outside); the "
            "stats do not describe this data: recompute them (rewrite the dataset with `latentvla dataset convert`)."
        )
    scale = _reference_scale(*_typical_range(values)[1:])
    wide = (hi - lo) > ABSURD_FACTOR * np.maximum(data_hi - data_lo, scale)
    if wide.any():
        dim = int(np.flatnonzero(wide)[0])
        raise _error(
            f"{path}: {key!r} dimension {dim} spans {lo[dim]:.6g}..{hi[dim]:.6g} in the stats, more than "
            f"{ABSURD_FACTOR:g}x the data's {data_lo[dim]:.6g}..{data_hi[dim]:.6g}: normalization would squash "
            "every value to ~0; recompute the stats from this data."
        )


def _check_finite_stats(reader: Any, keys: Sequence[str]) -> None:
    path = reader.root / "meta" / "stats.json"
    if not reader.stats:
        raise _error(
            f"{path}: missing or empty; the normalization statistics are needed to train. Recreate the dataset "
            "with `latentvla collect`/`latentvla annotate` (they write stats.json) or restore the file."
        )
    missing = [k for k in keys if k not in reader.stats]
    if missing:
        raise _error(f"{path}: has no stats for {missing} (it has {sorted(reader.stats)}); restore the file.")
    for key in keys:
        for name, value in reader.stats[key].items():
            arr = np.asarray(value, dtype=np.float64)
            if not np.isfinite(arr).all():
                raise _error(
                    f"{path}: {key!r} {name!r} contains NaN or inf ({arr.reshape(-1).tolist()}); recompute the "
                    "stats from finite data."
                )


def _stored_image_shape(reader: Any, key: str) -> tuple[int, int, int]:
    """(H, W, 3) of one stored frame of camera `key`, read from the PNG / video header (no pixel decode, so
    opening a dataset still decodes nothing: data/frames.py)."""
    if reader.features[key].get("dtype") == "video":
        path = reader.video_location(0, key).path
        try:
            info = probe(path)
        except ImportError as e:
            raise _error(
                f"{reader.root}: {key!r} is stored as video and no video decoder is installed ({e})."
            ) from e
        except (OSError, ValueError) as e:
            raise _error(f"{path}: cannot open the video of {key!r} ({e}); the file is corrupt or missing.") from e
        return int(info["video.height"]), int(info["video.width"]), 3
    import io

    import pyarrow.parquet as pq
    from PIL import Image

    path = reader.data_file(0)
    try:
        cell = pq.ParquetFile(path).read_row_group(0, columns=[key]).column(0)[0].as_py()
        with Image.open(io.BytesIO(cell["bytes"])) as image:  # parses the header only
            width, height = image.size
    except (OSError, SyntaxError, ValueError, KeyError, TypeError) as e:
        raise _error(f"{path}: the first image of {key!r} cannot be read ({e}); the file is corrupt.") from e
    return height, width, 3  # every frame is converted to RGB when decoded


def _check_image_shape(reader: Any, key: str) -> None:
    declared = tuple(int(d) for d in reader.features[key]["shape"])
    stored = _stored_image_shape(reader, key)
    if stored != declared and stored != (*declared[1:], declared[0]):  # HWC, or a channel-first declaration
        raise _error(
            f"{reader.root}/meta/info.json: {key!r} is declared {list(declared)} but the stored images are "
            f"{list(stored)}; fix the shape in info.json."
        )


def validate_dataset(
    reader: Any, keys: Sequence[str] = (OBS_STATE, ACTION), camera_keys: Sequence[str] | None = None
) -> None:
    """Raise `DatasetFormatError` unless the dataset can be trained on: see the module docstring."""
    checked: set[str] = getattr(reader, _CHECKED_ATTR, set())
    cameras = list(reader.camera_keys if camera_keys is None else camera_keys)
    todo = [k for k in ("<dataset>", *keys, COT_BBOX, *cameras) if k not in checked]
    if not todo:
        return
    if "<dataset>" in todo and (reader.num_episodes == 0 or reader.num_frames == 0):
        raise _error(
            f"{reader.root}: the dataset is empty ({reader.num_episodes} episodes, {reader.num_frames} frames); "
            "collect or convert episodes into it first."
        )
    present = [k for k in keys if k in reader.features]
    columns = {key: _check_finite_column(reader, key) for key in present if key in todo}
    for key, values in columns.items():
        _check_magnitude(reader, key, values)
    if columns:
        _check_finite_stats(reader, present)
        for key, values in columns.items():
            _check_stats_against_data(reader, key, values)
    if COT_BBOX in reader.features and COT_BBOX in todo:  # a NaN box would be printed into the CoT text
        _check_finite_column(reader, COT_BBOX)
    for key in cameras:
        if key in todo:
            _check_image_shape(reader, key)
    setattr(reader, _CHECKED_ATTR, checked | {"<dataset>", COT_BBOX, *present, *cameras})


def dataset_fingerprint(reader: Any, keys: Sequence[str] = (OBS_STATE, ACTION)) -> dict:
    """What must not change under a resumed run: sizes, tasks, feature shapes, the stats of `keys` and a digest
    of their values (so data edited under an unchanged meta/stats.json is caught too).

    Saved with every training checkpoint; `--resume` compares it with the dataset given now (the path may differ:
    a copied dataset, or one converted to video cameras, resumes fine).
    """
    return {
        "data": {
            k: hashlib.sha256(np.ascontiguousarray(reader.column(k), dtype=np.float32).tobytes()).hexdigest()[:16]
            for k in keys
            if k in reader.features
        },
        "total_episodes": int(reader.num_episodes),
        "total_frames": int(reader.num_frames),
        "tasks": list(reader.tasks),
        "shapes": {k: [int(d) for d in v["shape"]] for k, v in sorted(reader.features.items())},
        "stats": {
            k: {
                s: np.asarray(v, dtype=np.float64).reshape(-1).tolist() for s, v in sorted(reader.stats[k].items())
            }
            for k in keys
            if k in reader.stats
        },
    }


def fingerprint_diff(saved: dict, now: dict) -> list[str]:
    """Human-readable differences between two `dataset_fingerprint`s (empty when they match)."""
    out = []
    for field in ("total_episodes", "total_frames"):
        if saved.get(field) != now.get(field):
            out.append(f"{field} {saved.get(field)} (run) vs {now.get(field)} (now)")
    if saved.get("tasks") != now.get("tasks"):
        out.append(f"tasks {saved.get('tasks')} (run) vs {now.get('tasks')} (now)")
    shapes_then, shapes_now = saved.get("shapes", {}), now.get("shapes", {})
    changed = sorted(k for k in shapes_then.keys() | shapes_now.keys() if shapes_then.get(k) != shapes_now.get(k))
    if changed:
        out.append(f"features {changed}")
    data_then, data_now = saved.get("data"), now.get("data")
    if data_then is not None and data_now is not None:  # checkpoints from before the digest have none
        out += [
            f"values of {k!r}"
            for k in sorted(data_then.keys() | data_now.keys())
            if data_then.get(k) != data_now.get(k)
        ]
    stats_then, stats_now = saved.get("stats", {}), now.get("stats", {})
    for key in sorted(stats_then.keys() | stats_now.keys()):
        a, b = stats_then.get(key, {}), stats_now.get(key, {})
        names = sorted(s for s in a.keys() | b.keys() if not np.allclose(a.get(s, [np.nan]), b.get(s, [np.nan])))
        if names:
            out.append(f"stats of {key!r} ({', '.join(names)})")
    return out
