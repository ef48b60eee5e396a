"""Atomic checkpoints, keep-last-N, the `last` pointer and resume state.

Layout of one run:

    RUN/checkpoints/000500/
        model.safetensors     policy weights                    } written by Policy.save_pretrained, so the
        config.json           {"policy": PolicyConfig,          } directory loads with
                               "train": the full TrainConfig}   } Policy.from_pretrained(dir)
        stats.json            normalizer statistics             }
        training_state.pt     optimizer, step, sampler position, RNG states of python / numpy / torch (/ cuda)
        shards/               (--fsdp) weights + optimizer state, one file per rank (checkpoint_shards.py); the
                              optimizer entry of training_state.pt is then "shards", and model.safetensors is
                              written only in the run's final checkpoint (the single file eval / serve load)
    RUN/checkpoints/last      symlink -> 000500   (+ last.txt holding "000500" where symlinks are unavailable)

Atomicity: everything is written into `000500.tmp/`, fsync'ed, then `os.replace`d to `000500/` (a rename is
atomic on POSIX); the pointer is swapped the same way afterwards. A kill at any moment leaves either a `*.tmp`
directory or a complete checkpoint, and `latest_checkpoint` only ever returns complete ones.
`training_state.pt` holds only tensors and plain Python values so it loads with `torch.load(weights_only=True)`.

Failures: a write that fails (disk full, quota, I/O error; torch.save reports them as RuntimeError) removes its
`*.tmp` and raises `CheckpointError` with one line; the previous checkpoint stays `last`. `resume_point` also
skips a checkpoint whose training_state.pt is not its own (another step's or run's, unloadable), naming the file.
Damaged checkpoints are detected by `checkpoint_check.py`; `latest_intact_checkpoint` and `resume_point` (what
`--resume` uses) skip them with a warning naming the directory.
"""

from __future__ import annotations

import json
import os
import random
import re
import shutil
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import torch

from latentvla.checkpoint_check import (
    CheckpointSkippedWarning,
    CorruptCheckpointError,
    checkpoint_problem,
    newest_intact,
    step_dirs,
)
from latentvla.checkpoint_shards import SHARDS, has_shards
from latentvla.config import config_to_dict

CHECKPOINTS = "checkpoints"
LAST = "last"
LAST_TXT = "last.txt"
TRAINING_STATE = "training_state.pt"
CONFIG = "config.json"
WEIGHTS = "model.safetensors"
REQUIRED_FILES = (CONFIG, "stats.json", TRAINING_STATE)  # + the weights: WEIGHTS or shards/ (or both)
_STEP_DIR = re.compile(r"^\d{6,}$")


def checkpoint_dir(run_dir: str | Path, step: int) -> Path:
    return Path(run_dir) / CHECKPOINTS / f"{step:06d}"


def is_complete(path: str | Path) -> bool:
    """True for a finished checkpoint directory (not `*.tmp`, every required file present)."""
    path = Path(path)
    return (
        path.is_dir()
        and bool(_STEP_DIR.match(path.name))
        and all((path / f).is_file() for f in REQUIRED_FILES)
        and ((path / WEIGHTS).is_file() or has_shards(path))
    )


def list_checkpoints(run_dir: str | Path) -> list[Path]:
    """Complete checkpoints of a run, oldest first (the one directory scan: `checkpoint_check.step_dirs`)."""
    return [p for p in step_dirs(run_dir) if is_complete(p)]


def latest_checkpoint(run_dir: str | Path) -> Path | None:
    """The newest complete checkpoint, or None. Ignores `*.tmp` and incomplete directories.

    The directory scan (not the pointer) is the source of truth: a kill between the rename and the pointer swap
    leaves a complete checkpoint newer than `last`, and that one is the right place to resume from.
    """
    found = list_checkpoints(run_dir)
    return found[-1] if found else None


def latest_intact_checkpoint(run_dir: str | Path) -> Path | None:
    """The newest checkpoint whose files all pass `checkpoint_check` (damaged newer ones are skipped with a
    `CheckpointSkippedWarning`); None if there is none."""
    return newest_intact(run_dir, training=True)


def tmp_dir(run_dir: str | Path, step: int) -> Path:
    """Where checkpoint `step` is written before its atomic rename."""
    final = checkpoint_dir(run_dir, step)
    return final.with_name(final.name + ".tmp")


def prepare_tmp(run_dir: str | Path, step: int) -> Path:
    """An empty `tmp_dir` with its `shards/` folder, for every rank to write its shard into (rank 0 calls this,
    then all ranks meet at a barrier); `save_checkpoint(..., shards_in=...)` completes it."""
    tmp = tmp_dir(run_dir, step)
    if tmp.exists():  # left by an earlier kill
        shutil.rmtree(tmp)
    (tmp / SHARDS).mkdir(parents=True)
    return tmp


class CheckpointError(RuntimeError):
    """Writing a checkpoint failed (e.g. disk full); the message says what and which checkpoint is still last."""


def _fsync_dir(path: Path) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:  # not supported on this platform / filesystem: the rename is still atomic
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def _write_text_atomic(path: Path, text: str) -> None:
    tmp = path.with_name(path.name + ".tmp")
    try:
        with open(tmp, "w") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except OSError:
        tmp.unlink(missing_ok=True)
        raise


def _point_last(root: Path, name: str) -> None:
    """Swap `last` (symlink) and `last.txt` to `name`, each atomically."""
    link_tmp = root / (LAST + ".tmp")
    if link_tmp.is_symlink() or link_tmp.exists():
        link_tmp.unlink()
    try:
        os.symlink(name, link_tmp)
        os.replace(link_tmp, root / LAST)
    except OSError:  # filesystems without symlinks: last.txt alone carries the pointer
        pass
    _write_text_atomic(root / LAST_TXT, name + "\n")


def _is_torch_write_failure(e: RuntimeError) -> bool:
    """torch.save reports a full disk or an I/O error as RuntimeError from its zip writer, not OSError:
    "[enforce fail at inline_container.cc:...] . PytorchStreamWriter failed writing file data/0: file write failed"
    or "... unexpected pos 4416 vs 4304"."""
    return "PytorchStreamWriter" in str(e) or "inline_container" in str(e)


def save_checkpoint(
    run_dir: str | Path,
    step: int,
    policy: Any,
    train_config: Any,
    training_state: dict,
    keep_last: int = 2,
    rng_states: list[dict] | None = None,
    extra_config: dict | None = None,
    weights: dict | None = None,
    shards_in: Path | None = None,
    write_weights: bool = True,
) -> Path:
    """Write checkpoint `step` atomically, move the `last` pointer, prune to the newest `keep_last`.

    `policy` is a Policy (its `save_pretrained` writes weights, config and stats); `training_state` is the dict
    from the loop (optimizer state, sampler position, ...). `rng_states` holds one `get_rng_state()` per rank
    (DDP ranks draw different noise); it defaults to this process's state. `extra_config` adds sections to
    config.json (the loop records the run's step extensions there). `weights` replaces the policy's own state
    dict (FSDP2: the gathered full weights, train/parallel.py). `shards_in`: the `prepare_tmp` directory the
    ranks already wrote their shards into (then `write_weights=False` skips model.safetensors).
    """
    if keep_last < 1:
        raise ValueError(f"keep_last must be >= 1, got {keep_last}")
    root = Path(run_dir) / CHECKPOINTS
    root.mkdir(parents=True, exist_ok=True)
    final = checkpoint_dir(run_dir, step)
    tmp = tmp_dir(run_dir, step)
    if tmp.exists() and shards_in is None:  # left by an earlier kill
        shutil.rmtree(tmp)
    rng_states = rng_states if rng_states is not None else [get_rng_state()]
    try:
        tmp.mkdir(exist_ok=shards_in is not None)
        extra = {"train": config_to_dict(train_config), **(extra_config or {})}
        if weights is not None:
            policy.save_pretrained(tmp, extra_config=extra, state_dict=weights)
        elif write_weights:
            policy.save_pretrained(tmp, extra_config=extra)
        else:  # the ranks' shards are the weights
            policy.save_pretrained(tmp, extra_config=extra, write_weights=False)
        torch.save({**training_state, "step": step, "rng": rng_states}, tmp / TRAINING_STATE)
        for f in tmp.iterdir():
            if f.is_file():  # shards/: each rank fsync'ed its own file (DCP FileSystemWriter sync_files)
                with open(f, "rb") as fh:
                    os.fsync(fh.fileno())
        if shards_in is not None:
            _fsync_dir(tmp / SHARDS)
        _fsync_dir(tmp)
    except (OSError, RuntimeError) as e:  # disk full, quota, I/O error: leave nothing half-written behind
        if isinstance(e, RuntimeError) and not _is_torch_write_failure(e):
            raise
        shutil.rmtree(tmp, ignore_errors=True)
        previous = latest_checkpoint(run_dir)
        raise CheckpointError(
            f"could not write checkpoint {final} ({' '.join(str(e).split())}); "
            + (f"{previous} is still the last checkpoint" if previous else "no earlier checkpoint exists")
            + "; free space and continue with --resume"
        ) from e
    if final.exists():  # re-saving a step (e.g. a resumed run that ends where it started): replace it whole
        shutil.rmtree(final)
    os.replace(tmp, final)
    _fsync_dir(root)
    try:
        _point_last(root, final.name)
    except OSError as e:  # the checkpoint itself is complete; the directory scan finds it without the pointer
        raise CheckpointError(
            f"wrote {final} but could not move the `last` pointer ({e}); --resume still finds it"
        ) from e
    for old in list_checkpoints(run_dir)[:-keep_last]:
        shutil.rmtree(old)
    for junk in step_dirs(run_dir):  # older step dirs left incomplete by a kill during an earlier prune
        if int(junk.name) < step and not is_complete(junk):
            shutil.rmtree(junk, ignore_errors=True)
    return final


def load_training_state(ckpt_dir: str | Path) -> dict:
    """The dict saved by `save_checkpoint` (optimizer, step, sampler position, rng, ...)."""
    path = Path(ckpt_dir) / TRAINING_STATE
    if not path.is_file():
        raise FileNotFoundError(f"{path} is missing: {ckpt_dir} is not a complete training checkpoint")
    return torch.load(path, map_location="cpu", weights_only=True)


def training_state_problem(ckpt_dir: str | Path) -> tuple[dict | None, str | None]:
    """(the training state of `ckpt_dir`, None) if its training_state.pt loads and belongs to that checkpoint, else
    (None, what is wrong). A file copied from another checkpoint or run loads fine and would resume silently from
    the wrong step or fail deep inside the optimizer."""
    path = Path(ckpt_dir) / TRAINING_STATE
    try:
        state = load_training_state(ckpt_dir)
    except Exception as e:  # unpickling / zip / weights_only errors of all kinds: the file is not ours
        return None, f"{path} does not load ({' '.join(str(e).split())[:200]})"
    if not isinstance(state, dict):
        return None, f"{path} holds a {type(state).__name__}, not a training state"
    missing = [k for k in ("step", "optimizer", "rng") if k not in state]
    if missing:
        return None, f"{path} lacks {', '.join(missing)}: it is not a latentvla training state"
    if str(state["step"]) != str(int(Path(ckpt_dir).name)):
        return None, (
            f"{path} is the state of step {state['step']}, not of step {int(Path(ckpt_dir).name)} "
            "(copied from another checkpoint?)"
        )
    return state, None


def resume_point(run_dir: str | Path) -> tuple[Path | None, dict | None]:
    """(checkpoint, its training state) to resume from: the newest intact checkpoint whose training_state.pt is its
    own. Newer ones that fail are skipped with a `CheckpointSkippedWarning` naming the file, as damaged ones are
    (`latest_intact_checkpoint`). (None, None) if the run has no checkpoint; `CorruptCheckpointError` naming the
    file when every checkpoint fails."""
    problems = []
    for path in reversed(step_dirs(run_dir)):
        problem = checkpoint_problem(path, training=True)
        state = None
        if problem is None:
            state, problem = training_state_problem(path)
            if problem is None:
                return path, state
        elif not (path / "model.safetensors").exists() and not (path / CONFIG).exists():
            continue  # an empty step dir (being pruned) is not a checkpoint
        problems.append(problem)
        warnings.warn(f"skipping checkpoint {path}: {problem}", CheckpointSkippedWarning, stacklevel=2)
    if problems:
        raise CorruptCheckpointError(
            f"--resume: no usable checkpoint under {Path(run_dir) / CHECKPOINTS} (newest: {problems[0]}); put the "
            "right file back, or start the run again with --overwrite"
        )
    return None, None


def load_train_config_dict(ckpt_dir: str | Path) -> dict:
    """The TrainConfig dict stored under "train" in the checkpoint's config.json."""
    data = json.loads((Path(ckpt_dir) / CONFIG).read_text())
    if "train" not in data:
        raise ValueError(f"{Path(ckpt_dir) / CONFIG} has no 'train' section: not a training checkpoint")
    return data["train"]


# --------------------------------------------------------------------------------------------- RNG state


def get_rng_state() -> dict:
    """RNG states of python, numpy and torch (and CUDA when present) as weights_only-loadable values."""
    np_state = np.random.get_state()
    state = {
        "python": random.getstate(),
        "numpy": (np_state[0], torch.from_numpy(np_state[1].astype(np.int64)), *np_state[2:]),
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict) -> None:
    """Inverse of `get_rng_state`."""
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))
    name, key, pos, has_gauss, cached = state["numpy"]
    np.random.set_state((name, key.numpy().astype(np.uint32), int(pos), int(has_gauss), float(cached)))
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
