"""Atomic checkpoints: keep-last-N, the `last` pointer, *.tmp / incomplete dirs never loaded, RNG round trip."""

from __future__ import annotations

import json
import os
import random
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import save_file

from latentvla.config import get_preset
from latentvla.train import checkpoint as ck


class FakePolicy:
    """Writes what Policy.save_pretrained writes (weights, config.json, stats.json)."""

    def __init__(self, value: float, fail: bool = False):
        self.value, self.fail = value, fail

    def save_pretrained(self, directory, extra_config=None):
        directory = Path(directory)
        save_file({"w": torch.full((2,), self.value)}, str(directory / "model.safetensors"))
        if self.fail:
            raise RuntimeError("killed mid-write")
        (directory / "config.json").write_text(json.dumps({"policy": {}, **(extra_config or {})}))
        (directory / "stats.json").write_text("{}")


CFG = get_preset("rdvla")


def _save(run: Path, step: int, keep: int = 2, fail: bool = False) -> Path:
    return ck.save_checkpoint(run, step, FakePolicy(step, fail), CFG, {"optimizer": {"k": torch.ones(1)}}, keep)


def test_keep_last_and_pointer(tmp_path):
    for step in (10, 20, 30, 40):
        _save(tmp_path, step, keep=2)
    root = tmp_path / "checkpoints"
    assert sorted(p.name for p in root.iterdir() if p.is_dir() and not p.is_symlink()) == ["000030", "000040"]
    assert os.readlink(root / "last") == "000040"
    assert (root / "last.txt").read_text().strip() == "000040"
    assert ck.latest_checkpoint(tmp_path) == root / "000040"
    state = ck.load_training_state(root / "000040")
    assert state["step"] == 40 and torch.equal(state["optimizer"]["k"], torch.ones(1))
    assert ck.load_train_config_dict(root / "000040")["preset"] == "rdvla"


def test_tmp_and_incomplete_dirs_are_ignored(tmp_path):
    _save(tmp_path, 10)
    root = tmp_path / "checkpoints"
    # a kill during a later save leaves a complete-looking .tmp dir, and a dir missing its weights
    tmp = root / "000030.tmp"
    tmp.mkdir()
    for f in ck.REQUIRED_FILES:
        (tmp / f).write_text("x")
    incomplete = root / "000020"
    incomplete.mkdir()
    for f in ck.REQUIRED_FILES:
        if f != "model.safetensors":
            (incomplete / f).write_text("x")
    assert ck.latest_checkpoint(tmp_path) == root / "000010"
    # a save that dies inside save_pretrained publishes nothing and leaves the pointer alone
    with pytest.raises(RuntimeError, match="killed"):
        _save(tmp_path, 40, fail=True)
    assert not (root / "000040").exists() and (root / "000040.tmp").exists()
    assert ck.latest_checkpoint(tmp_path) == root / "000010"
    assert os.readlink(root / "last") == "000010"
    # the next save cleans its stale .tmp and succeeds
    _save(tmp_path, 40)
    assert ck.latest_checkpoint(tmp_path) == root / "000040" and not (root / "000040.tmp").exists()


def test_resave_same_step_replaces(tmp_path):
    _save(tmp_path, 10)
    ck.save_checkpoint(tmp_path, 10, FakePolicy(99.0), CFG, {}, 2)
    from safetensors.torch import load_file

    assert load_file(str(tmp_path / "checkpoints" / "000010" / "model.safetensors"))["w"][0] == 99.0


def test_rng_state_round_trip(tmp_path):
    random.seed(1)
    np.random.seed(2)
    torch.manual_seed(3)
    path = _save(tmp_path, 5)
    expected = (random.random(), np.random.rand(), torch.rand(3))
    random.seed(7)
    np.random.seed(7)
    torch.manual_seed(7)
    [rng] = ck.load_training_state(path)["rng"]  # weights_only load
    ck.set_rng_state(rng)
    got = (random.random(), np.random.rand(), torch.rand(3))
    assert got[0] == expected[0] and got[1] == expected[1] and torch.equal(got[2], expected[2])


def test_missing_state_is_a_clear_error(tmp_path):
    with pytest.raises(FileNotFoundError, match="not a complete training checkpoint"):
        ck.load_training_state(tmp_path)
    assert ck.latest_checkpoint(tmp_path) is None


def test_prune_removes_older_dirs_left_incomplete_by_a_kill(tmp_path):
    """A kill during pruning leaves a half-deleted old step dir; the next save removes it."""
    junk = tmp_path / "checkpoints" / "000001"
    junk.mkdir(parents=True)
    (junk / "config.json").write_text("{}")  # the weights were already deleted when the kill came
    _save(tmp_path, 2)
    assert not junk.exists() and ck.latest_checkpoint(tmp_path).name == "000002"
