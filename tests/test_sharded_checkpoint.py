"""The sharded (DCP) checkpoint format in one process (`parallel=fsdp` with a world of 1 writes it too): resume
from shards alone equals the uninterrupted run bit for bit, `Policy.from_pretrained` reads shards, and a damaged
shard is detected without loading tensors (`--resume` falls back to the previous checkpoint with a warning).
The 2-process version with a real kill is tests/test_fsdp_resume.py."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from latentvla.config import apply_overrides, get_preset

torch.set_num_threads(1)
COMMON = [
    "steps=6",
    "batch_size=2",
    "log_every=1",
    "save_every=2",
    "keep_last=5",
    "num_workers=0",
    "policy.horizon=4",
    "augment=false",
    "parallel=fsdp",
]


@pytest.fixture(scope="module")
def dataset(tmp_path_factory) -> Path:
    from latentvla.data.synthetic import write_synthetic_dataset

    return write_synthetic_dataset(tmp_path_factory.mktemp("data") / "ds", num_episodes=2, length=8, image_size=32)


def test_shards_resume_exactly_load_for_inference_and_damage_is_detected(dataset, tmp_path):
    from latentvla.checkpoint_check import CheckpointSkippedWarning, checkpoint_problem
    from latentvla.checkpoint_shards import SHARDS
    from latentvla.policy import Policy
    from latentvla.train.checkpoint import latest_intact_checkpoint, list_checkpoints, load_training_state
    from latentvla.train.loop import train

    cfg = apply_overrides(get_preset("lara", "micro"), COMMON)  # I, II-1..3, III: the expert steps from 4 on
    train(cfg, dataset, tmp_path / "whole", show_progress=False)
    # the periodic checkpoint is written in the background (async_save) and published at a later step boundary
    train(apply_overrides(cfg, ["async_save=true"]), dataset, tmp_path / "split", show_progress=False, stop_at=3)
    split = tmp_path / "split" / "checkpoints"
    assert not (split / "000002" / "model.safetensors").exists()  # periodic: shards only
    assert (split / "000003" / "model.safetensors").exists()  # the last of a process: + the single file
    assert load_training_state(split / "000002")["optimizer"] == SHARDS
    shutil.rmtree(split / "000003")  # resume from the periodic checkpoint, as after a kill
    from_shards = Policy.from_pretrained(split / "000002").model.state_dict()  # one process reads the shards
    train(cfg, dataset, tmp_path / "split", resume=True, show_progress=False)
    a = load_file(str(list_checkpoints(tmp_path / "whole")[-1] / "model.safetensors"))
    b = load_file(str(list_checkpoints(tmp_path / "split")[-1] / "model.safetensors"))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert any(not torch.equal(a[k], from_shards[k]) for k in a if k.startswith("head."))

    newest = list_checkpoints(tmp_path / "split")[-1]
    shard = next((newest / SHARDS).glob("*.distcp"))
    shard.write_bytes(shard.read_bytes()[:-8])  # cut short
    assert "truncated" in checkpoint_problem(newest, training=True)
    with pytest.warns(CheckpointSkippedWarning, match=newest.name):
        assert latest_intact_checkpoint(tmp_path / "split") == list_checkpoints(tmp_path / "split")[-2]
    shard.unlink()
    assert "missing" in checkpoint_problem(newest, training=True)
