"""Is a checkpoint directory intact? Cheap structural checks, and "newest intact" for run directories.

A checkpoint is written atomically (train/checkpoint.py), but files can still be damaged afterwards: a copy cut
short, a disk error, a hand edit. Loading such a checkpoint used to fail deep inside safetensors / torch / json
with a traceback, and `--resume` or `serve RUN` gave up although an older intact checkpoint sat next to it.
Here every checkpoint file is checked without loading tensors:

    model.safetensors    header parses and the file is exactly as long as the header's tensors need
    shards/              (FSDP2, in place of or next to model.safetensors) DCP metadata loads and every shard
                         file it names exists (checkpoint_shards.py)
    config.json          valid JSON object with a "policy" section
    stats.json           valid JSON object; the statistics the normalizer uses are finite, and no std is 0 where
                         min < max (a NaN or zero std would normalize silently wrong)
    training_state.pt    (training checkpoints) a zip archive whose members all pass their CRC check

`newest_intact(run_dir)` walks RUN/checkpoints newest first and skips damaged ones with a
`CheckpointSkippedWarning` naming the directory and the problem; `require_intact(dir)` turns the problem of a
checkpoint named explicitly into one `CorruptCheckpointError` line.
"""

from __future__ import annotations

import json
import re
import struct
import warnings
import zipfile
from pathlib import Path

from latentvla.checkpoint_shards import SHARDS, shards_problem

WEIGHTS, CONFIG, STATS, TRAINING_STATE = "model.safetensors", "config.json", "stats.json", "training_state.pt"
CHECKPOINTS = "checkpoints"
_STEP_DIR = re.compile(r"^\d{6,}$")


class CorruptCheckpointError(ValueError):
    """A checkpoint directory exists but one of its files is damaged (the message names the file)."""


class CheckpointSkippedWarning(UserWarning):
    """A damaged checkpoint was skipped in favour of an older intact one."""


def _safetensors_problem(path: Path) -> str | None:
    size = path.stat().st_size
    with open(path, "rb") as f:
        head = f.read(8)
        if len(head) < 8:
            return f"{path.name} is truncated ({size} bytes, no header)"
        (n,) = struct.unpack("<Q", head)
        if n > size - 8:
            return f"{path.name} is truncated ({size} bytes, header alone needs {n + 8})"
        try:
            header = json.loads(f.read(n))
        except (json.JSONDecodeError, UnicodeDecodeError) as e:
            return f"{path.name} has a corrupt header ({e})"
    ends = [v["data_offsets"][1] for k, v in header.items() if k != "__metadata__" and isinstance(v, dict)]
    need = 8 + n + max(ends, default=0)
    if size != need:
        return (
            f"{path.name} is {'truncated' if size < need else 'too long'} ({size} bytes, its header needs {need})"
        )
    return None


def _json_problem(path: Path, section: str | None) -> str | None:
    try:
        data = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        return f"{path.name} is not valid JSON ({e})"
    if not isinstance(data, dict):
        return f"{path.name} is not a JSON object"
    if section is not None and section not in data:
        return f"{path.name} has no {section!r} section"
    return None


# the statistics each normalization mode reads (data/stats.py); checked for NaN/inf and consistency at load
_STATS_USED = {"mean_std": ("mean", "std"), "min_max": ("min", "max"), "quantile": ("q01", "q99")}


def _stats_problem(path: Path) -> str | None:
    """A checkpoint's stats.json that would normalize with NaN, or with a zero std where the feature varies
    (min < max: the normalizer would treat it as constant and scale by 1), names the key."""
    import numpy as np

    problem = _json_problem(path, None)
    if problem is not None:
        return problem
    data = json.loads(path.read_text())
    stats, modes = data.get("stats"), data.get("modes")
    if not isinstance(stats, dict) or not isinstance(modes, dict):
        return None  # not the normalizer's layout: `Normalizer.from_dict` names what is missing
    for key, mode in modes.items():
        entry = stats.get(key)
        if not isinstance(entry, dict):
            continue
        try:
            values = {s: np.asarray(v, dtype=np.float64) for s, v in entry.items() if s != "count"}
        except (TypeError, ValueError):
            return f"{path.name}: the stats of {key!r} are not numbers"
        for s in _STATS_USED.get(mode, ()):
            if s in values and not np.isfinite(values[s]).all():
                return f"{path.name}: {key!r} {s} is not finite ({values[s].tolist()})"
        if mode == "mean_std" and "std" in values:
            std = values["std"]
            varies = values["max"] > values["min"] if {"min", "max"} <= values.keys() else np.zeros_like(std, bool)
            zero = (std < 0) | ((std == 0) & varies)
            if zero.any():
                dims = np.flatnonzero(zero).tolist()
                return (
                    f"{path.name}: {key!r} std is {std[zero].tolist()[0]} in dims {dims}, which vary (min < max)"
                )
    return None


def _zip_problem(path: Path) -> str | None:
    try:
        with zipfile.ZipFile(path) as z:
            bad = z.testzip()
    except (zipfile.BadZipFile, OSError, EOFError) as e:
        return f"{path.name} is corrupt or truncated ({e})"
    return f"{path.name} is corrupt (member {bad} fails its CRC check)" if bad else None


def checkpoint_problem(path: str | Path, training: bool = False) -> str | None:
    """None for an intact checkpoint directory, else one phrase saying what is wrong with it."""
    path = Path(path)
    sharded = (path / SHARDS).is_dir()
    required = ((WEIGHTS,) if not sharded else ()) + (CONFIG, STATS) + ((TRAINING_STATE,) if training else ())
    missing = [f for f in required if not (path / f).is_file()]
    if missing:
        return f"missing {', '.join(missing)}"
    return (
        _json_problem(path / CONFIG, "policy")
        or _stats_problem(path / STATS)
        or ((path / WEIGHTS).is_file() and _safetensors_problem(path / WEIGHTS) or None)
        or (shards_problem(path) if sharded else None)
        or (_zip_problem(path / TRAINING_STATE) if training else None)
    )


def require_intact(path: str | Path, training: bool = False) -> Path:
    """`path` if intact, else CorruptCheckpointError with the problem and how to recover."""
    problem = checkpoint_problem(path, training)
    if problem:
        raise CorruptCheckpointError(
            f"checkpoint {path} is damaged: {problem}; load an older checkpoint of the run (or the run directory, "
            "which falls back to the newest intact one)"
        )
    return Path(path)


def step_dirs(run_dir: str | Path) -> list[Path]:
    """RUN/checkpoints/NNNNNN directories (complete or not, never `*.tmp`), oldest first."""
    root = Path(run_dir) / CHECKPOINTS
    if not root.is_dir():
        return []
    return sorted((p for p in root.iterdir() if p.is_dir() and _STEP_DIR.match(p.name)), key=lambda p: int(p.name))


def newest_intact(run_dir: str | Path, training: bool = False) -> Path | None:
    """The newest intact checkpoint of a run, warning about each newer damaged one it skips; None if none."""
    for path in reversed(step_dirs(run_dir)):
        problem = checkpoint_problem(path, training)
        if problem is None:
            return path
        if not (path / WEIGHTS).exists() and not (path / CONFIG).exists():
            continue  # an empty step dir (e.g. being pruned) is not worth a warning
        warnings.warn(f"skipping damaged checkpoint {path}: {problem}", CheckpointSkippedWarning, stacklevel=2)
    return None
