"""`OUT/episodes.jsonl`: every finished evaluation episode, written the moment it finishes.

    line 1: {"fingerprint": {...}}                 what the episodes were measured with
    then:   {"task": ..., "episode": i, "success": ..., "length": ..., "iterations": [...], "latencies_ms": [...],
             "video_paths": [...], "actions": [[...], ...]}

An interrupted evaluation (Ctrl-C, SIGTERM, a crash) keeps the episodes it finished; running the same command
again skips them (`resume`). Episodes are deterministic for a seed (evaluate.py), so a resumed evaluation
gives the numbers an uninterrupted one would. Resuming needs the same fingerprint: checkpoint (path, weights size
and mtime), settings, tasks, episodes, device and precision; anything else starts over. A completed evaluation
(eval_info.json written) is never resumed: running it again measures it again.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import numpy as np

EPISODES_FILE = "episodes.jsonl"


def checkpoint_identity(ckpt: Path) -> dict:
    """The checkpoint's path and its weights' size / mtime: a retrained checkpoint never resumes an old log."""
    out: dict[str, Any] = {"path": str(Path(ckpt).resolve())}
    for f in sorted(Path(ckpt).glob("*.safetensors")):
        st = f.stat()
        out[f.name] = [st.st_size, st.st_mtime_ns]
    return out


def _to_row(res: dict) -> dict:
    row = {k: v for k, v in res.items() if k != "actions"}
    row["actions"] = np.asarray(res["actions"], dtype=np.float32).tolist()
    return row


def _from_row(row: dict) -> dict:
    res = dict(row)
    res["actions"] = np.asarray(row["actions"], dtype=np.float32)
    return res


class EpisodeLog:
    """Append-only, flushed and fsync'd per episode; `finished` holds what a previous interrupted run wrote."""

    def __init__(self, out_dir: str | Path, fingerprint: dict, resume: bool = True) -> None:
        self.path = Path(out_dir) / EPISODES_FILE
        self.fingerprint = json.loads(json.dumps(fingerprint))  # as it reads back (tuples -> lists)
        self.finished: dict[tuple[str, int], dict] = {}
        self.discarded = 0
        complete = (Path(out_dir) / "eval_info.json").is_file()
        if resume and not complete and self.path.is_file():
            self.finished, self.discarded = self._read()
        Path(out_dir).mkdir(parents=True, exist_ok=True)
        tmp = self.path.with_name(self.path.name + ".tmp")
        with open(tmp, "w") as f:  # rewrite: the header and the kept episodes (a torn last line is dropped)
            f.write(json.dumps({"fingerprint": self.fingerprint}) + "\n")
            for res in self.finished.values():
                f.write(json.dumps(_to_row(res)) + "\n")
        os.replace(tmp, self.path)
        self._file = open(self.path, "a")  # noqa: SIM115 (closed in close())

    def _read(self) -> tuple[dict, int]:
        lines = self.path.read_text().splitlines()
        try:
            header = json.loads(lines[0]) if lines else {}
        except json.JSONDecodeError:
            header = {}
        if header.get("fingerprint") != self.fingerprint:
            return {}, max(0, len(lines) - 1)
        kept = {}
        for line in lines[1:]:
            try:
                row = json.loads(line)
            except json.JSONDecodeError:  # the line being written when the process died
                continue
            kept[(row["task"], int(row["episode"]))] = _from_row(row)
        return kept, 0

    def append(self, res: dict) -> None:
        self._file.write(json.dumps(_to_row(res)) + "\n")
        self._file.flush()
        os.fsync(self._file.fileno())

    def close(self) -> None:
        self._file.close()
