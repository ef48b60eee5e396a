"""Add per-frame columns to a LeRobot dataset (v3.0 or v2.1) in place, leaving everything else as it was.

`latentvla annotate` used to read the whole dataset and write a new one: every video was decoded and re-encoded
(mean error 2.19 -> 3.30 /255, an H.264 dataset came out AV1), the feature `names` and the q01..q99 stats were
lost and a v2.1 dataset became v3.0, which LeRobot 0.3.3 cannot open. `add_columns` instead

- appends the new columns to each data parquet file (existing columns, their arrow types and the file's HF
  `huggingface` schema metadata kept; the new columns are declared there too, in the file's own style),
- adds their feature specs to meta/info.json (nothing else in it changes: version, names, paths, totals),
- adds their stats (numeric columns only, with the stat names the dataset already uses, e.g. LeRobot 0.4.4's
  q01/q10/q50/q90/q99) to meta/stats.json and to the per-episode stats (v3.0 `meta/episodes/*.parquet`
  `stats/<col>/<stat>` columns; v2.1 `meta/episodes_stats.jsonl`),
- never opens a video file or an image cell.

Columns of the same names already present (a second annotation) are replaced. Every changed file is first written
next to the original as `<name>.adding.tmp` (not `*.parquet`, so no reader globs it) and only then renamed over
it, data files first and meta/info.json last: a kill leaves the dataset readable as before (at worst some data
files carry columns info.json does not declare yet, which readers ignore; run the command again).
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from latentvla.constants import OBS_STATE
from latentvla.data.errors import DatasetFormatError
from latentvla.data.lerobot.columns import feature_spec, read_json, read_parquet, to_arrow
from latentvla.data.lerobot.reader import LeRobotDatasetReader

_TMP = ".adding.tmp"
_BASE_STATS = ("min", "max", "mean", "std", "count")


def _stat_names(reader: LeRobotDatasetReader) -> list[str]:
    """The stat names this dataset uses (those of observation.state, else any feature's, else ours)."""
    stats = reader.stats.get(OBS_STATE) or next(iter(reader.stats.values()), None)
    if not stats:
        return [*_BASE_STATS, "q01", "q99"]
    return [s for s in stats if s in _BASE_STATS or (s.startswith("q") and s[1:].isdigit())]


def column_stats(values: np.ndarray, names: Sequence[str]) -> dict[str, list]:
    """Stats of a `(T, ...)` numeric column in LeRobot's layout, `names` in the given order (`qNN` = quantile)."""
    x = np.asarray(values, dtype=np.float64).reshape(len(values), -1)
    out: dict[str, list] = {}
    for name in names:
        if name == "count":
            out[name] = [int(len(x))]
        elif name in ("min", "max", "mean", "std"):
            out[name] = getattr(np, name)(x, axis=0).tolist()
        else:
            out[name] = np.quantile(x, int(name[1:]) / 100.0, axis=0).tolist()
    return out


def _hf_feature(spec: dict[str, Any], list_type: str) -> dict[str, Any]:
    """The `datasets` feature JSON of a new column, as LeRobot writes it into each parquet file's metadata."""
    if spec["dtype"] == "string":
        return {"dtype": "string", "_type": "Value"}
    if spec["shape"] == [1]:
        return {"dtype": spec["dtype"], "_type": "Value"}
    return {"feature": {"dtype": spec["dtype"], "_type": "Value"}, "length": spec["shape"][0], "_type": list_type}


def _with_hf_metadata(table: pa.Table, specs: dict[str, dict]) -> pa.Table:
    meta = dict(table.schema.metadata or {})
    if b"huggingface" not in meta:
        return table
    hf = json.loads(meta[b"huggingface"])
    features = hf.setdefault("info", {}).setdefault("features", {})
    list_type = next((f["_type"] for f in features.values() if isinstance(f, dict) and "length" in f), "List")
    for name, spec in specs.items():
        features[name] = _hf_feature(spec, list_type)
    hf.pop("fingerprint", None)  # the content changed
    meta[b"huggingface"] = json.dumps(hf).encode()
    return table.replace_schema_metadata(meta)


def _write_table_tmp(table: pa.Table, path: Path) -> Path:
    tmp = path.with_name(path.name + _TMP)
    pq.write_table(table, tmp)
    return tmp


def _write_text_tmp(text: str, path: Path) -> Path:
    tmp = path.with_name(path.name + _TMP)
    tmp.write_text(text)
    return tmp


def _replace_columns(table: pa.Table, arrays: dict[str, pa.Array]) -> pa.Table:
    table = table.drop_columns([c for c in arrays if c in table.column_names])
    for name, array in arrays.items():
        table = table.append_column(name, array)
    return table


def _data_file_table(
    reader: LeRobotDatasetReader, path: Path, episodes: list[int], columns: list[dict], specs: dict[str, dict]
) -> pa.Table:
    """`path`'s table with the new columns of `episodes` placed at their rows."""
    table = read_parquet(path)
    if "episode_index" not in table.column_names:
        raise DatasetFormatError(f"{path}: has no 'episode_index' column; not a LeRobot data file.")
    ep_index = table.column("episode_index").to_numpy()
    n = table.num_rows
    full = {k: np.empty(n, dtype=object) if s["dtype"] == "string" else None for k, s in specs.items()}
    covered = np.zeros(n, dtype=bool)
    for i in episodes:
        rows = np.flatnonzero(ep_index == reader.episodes[i]["episode_index"])
        length = int(reader.episodes[i]["length"])
        if len(rows) != length:
            raise DatasetFormatError(f"{path}: episode {i} has {len(rows)} rows but meta says {length}.")
        covered[rows] = True
        for k, values in columns[i].items():
            arr = np.asarray(values) if specs[k]["dtype"] != "string" else np.asarray(list(values), dtype=object)
            if full[k] is None:
                full[k] = np.zeros((n, *arr.shape[1:]), dtype=arr.dtype)
            full[k][rows] = arr
    if not covered.all():
        raise DatasetFormatError(
            f"{path}: {int((~covered).sum())} rows belong to no episode of meta/episodes; the dataset is inconsistent."
        )
    arrays = {k: to_arrow(k, v, specs[k]) for k, v in full.items()}
    return _with_hf_metadata(_replace_columns(table, arrays), specs)


def add_columns(reader: LeRobotDatasetReader, columns: list[dict[str, Any]]) -> list[str]:
    """Add `columns[i]` ({name: per-frame values}) to episode `i` of `reader`'s dataset in place; returns the
    names of the files rewritten (data and meta; never a video). See the module docstring."""
    if len(columns) != reader.num_episodes or not columns:
        raise ValueError(f"add_columns: {len(columns)} episodes of columns for {reader.num_episodes} episodes.")
    specs = {k: feature_spec(k, v) for k, v in columns[0].items()}
    for i, cols in enumerate(columns):
        length = int(reader.episodes[i]["length"])
        if set(cols) != set(specs) or any(len(v) != length for v in cols.values()):
            raise ValueError(
                f"add_columns: episode {i} needs the columns {sorted(specs)} with {length} frames each."
            )
    root, meta = reader.root, reader.root / "meta"
    files: dict[Path, list[int]] = {}
    for i in range(reader.num_episodes):
        files.setdefault(reader.data_file(i), []).append(i)
    numeric = [k for k, s in specs.items() if s["dtype"] not in ("string", "bool")]
    names = _stat_names(reader)
    staged: list[tuple[Path, Path]] = []
    try:
        for path, episodes in files.items():  # data files
            staged.append((_write_table_tmp(_data_file_table(reader, path, episodes, columns, specs), path), path))
        staged += _stage_episode_stats(reader, columns, numeric, names)
        if (meta / "stats.json").exists():  # v3.0 (and v2.0): global stats, exact over all frames
            stats = read_json(meta / "stats.json")
            for k in numeric:
                stats[k] = column_stats(np.concatenate([np.asarray(c[k]) for c in columns]), names)
            staged.append((_write_text_tmp(json.dumps(stats, indent=4), meta / "stats.json"), meta / "stats.json"))
        info = read_json(meta / "info.json")
        info["features"].update(specs)
        staged.append((_write_text_tmp(json.dumps(info, indent=4), meta / "info.json"), meta / "info.json"))
    except BaseException:
        for tmp, _ in staged:
            tmp.unlink(missing_ok=True)
        raise
    for tmp, path in staged:  # info.json last: until then readers see the dataset as it was
        os.replace(tmp, path)
    return [str(path.relative_to(root)) for _, path in staged]


def _stage_episode_stats(
    reader: LeRobotDatasetReader, columns: list[dict], numeric: list[str], names: list[str]
) -> list[tuple[Path, Path]]:
    """Per-episode stats of the numeric new columns, in the dataset's own per-episode stats files (which ones
    is the layout's business: v3.0 `meta/episodes/*.parquet`, v2.1 `meta/episodes_stats.jsonl`)."""
    if not numeric:
        return []
    by_index = {int(e["episode_index"]): i for i, e in enumerate(reader.episodes)}
    stats = [{k: column_stats(np.asarray(cols[k]), names) for k in numeric} for cols in columns]
    staged = []
    for path, content in reader.layout.episode_stats_files(reader.root, by_index, stats):
        tmp = _write_text_tmp(content, path) if isinstance(content, str) else _write_table_tmp(content, path)
        staged.append((tmp, path))
    return staged
