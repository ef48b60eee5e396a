"""FSDP2 sharded checkpoints (train/sharded_checkpoint.py, checkpoint_shards.py): 2 gloo processes train a tiny
Qwen-style HF LM with tied embeddings (Qwen2.5-0.5B and Qwen3-VL-4B tie `lm_head` to `embed_tokens`:
`tie_word_embeddings: true` in their config.json) through the whole LaRA curriculum; a run SIGKILLed after a
stage-I checkpoint and resumed with the same command ends with exactly the weights of an uninterrupted run.

On main the resume crashed: the optimizer state was loaded strictly by name, and the tied embedding's moments sit
under `embed_tokens.weight` while the param groups list `lm_head.weight` (and the action expert, unstepped before
stage III, has no state at all)."""

from __future__ import annotations

import os
import signal
import socket
from pathlib import Path

import pytest
import torch
import torch.multiprocessing as mp
from safetensors.torch import load_file

from latentvla.config import apply_overrides, get_preset, use_backbone

# I (steps 1-2), II-1..II-3 (3-5), III (6-7): the kill comes right after the stage-I checkpoint 000002
COMMON = [
    "steps=7",
    "batch_size=4",
    "log_every=1",
    "save_every=2",
    "num_workers=0",
    "policy.horizon=4",
    "augment=false",
    "parallel=fsdp",
    "keep_last=10",
    "policy.curriculum.fractions=2,1,1,1,2",
]
KILL_AT = 2  # 0-based step index: the processes die at the start of the 3rd step (stage II-1)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _worker(
    rank: int, world: int, port: int, cfg, dataset: str, run: str, resume: bool, kill_at: int | None
) -> None:
    os.environ.update(
        MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), WORLD_SIZE=str(world), LOCAL_RANK=str(rank)
    )
    torch.set_num_threads(1)
    from latentvla.train import loop

    if kill_at is not None:  # a hard kill (no handler, no checkpoint) at the start of step `kill_at`
        original = loop.accumulate_gradients

        def dying(*args, step=None, **kwargs):
            if step == kill_at:
                os.kill(os.getpid(), signal.SIGKILL)
            return original(*args, step=step, **kwargs)

        loop.accumulate_gradients = dying
    loop.train(cfg, dataset, run, resume=resume, show_progress=False)


def _spawn(cfg, dataset: Path, run: Path, resume: bool = False, kill_at: int | None = None) -> None:
    mp.spawn(_worker, args=(2, _free_port(), cfg, str(dataset), str(run), resume, kill_at), nprocs=2, join=True)


@pytest.fixture(scope="module")
def dataset(tmp_path_factory) -> Path:
    from latentvla.data.synthetic import write_synthetic_dataset

    return write_synthetic_dataset(tmp_path_factory.mktemp("data") / "ds", num_episodes=2, length=8, image_size=32)


@pytest.mark.slow
def test_fsdp2_killed_after_stage1_checkpoint_resumes_to_the_uninterrupted_weights(dataset, tmp_path):
    from latentvla.policy import Policy
    from latentvla.testing.tiny_hf import save_tiny
    from latentvla.train.checkpoint import list_checkpoints, load_training_state

    backbone = save_tiny("qwen2", tmp_path / "qwen2")
    cfg = apply_overrides(use_backbone(get_preset("lara", "micro"), str(backbone)), COMMON)
    assert cfg.policy.backbone.kind == "hf"
    # the uninterrupted run writes its periodic shards in the background (async_save): the same weights
    _spawn(apply_overrides(cfg, ["async_save=true"]), dataset, tmp_path / "whole")
    assert [c.name for c in list_checkpoints(tmp_path / "whole")] == ["000002", "000004", "000006", "000007"]
    with pytest.raises(mp.ProcessExitedException, match="SIGKILL"):
        _spawn(cfg, dataset, tmp_path / "killed", kill_at=KILL_AT)
    assert [c.name for c in list_checkpoints(tmp_path / "killed")] == ["000002"]
    _spawn(cfg, dataset, tmp_path / "killed", resume=True)  # main: crashed loading the optimizer state

    whole, resumed = (list_checkpoints(tmp_path / run)[-1] for run in ("whole", "killed"))
    assert whole.name == resumed.name == "000007"
    a, b = load_file(str(whole / "model.safetensors")), load_file(str(resumed / "model.safetensors"))
    assert a.keys() == b.keys()
    tied = {"backbone.lm.model.embed_tokens.weight", "backbone.lm.lm_head.weight"}
    assert len(tied & a.keys()) == 1  # the tie, kept once
    assert all(torch.equal(a[k], b[k]) for k in a), [k for k in a if not torch.equal(a[k], b[k])][:5]

    from latentvla.checkpoint_shards import SHARDS

    periodic = tmp_path / "killed" / "checkpoints" / "000002"  # kept: keep_last=10
    # a periodic FSDP checkpoint: one shard file per rank, no gathered single-file weights
    assert sorted(p.name for p in (periodic / SHARDS).glob("*.distcp")) == ["__0_0.distcp", "__1_0.distcp"]
    assert not (periodic / "model.safetensors").exists()
    assert load_training_state(periodic)["optimizer"] == SHARDS
    start = Policy.from_pretrained(periodic).model.state_dict()  # the periodic shards, read by one process
    head = [k for k in a if k.startswith("head.")]
    assert head and any(not torch.equal(a[k], start[k]) for k in head)  # stage III trained the expert
    # the final checkpoint's single file and its shards hold the same weights
    final = Policy.from_pretrained(resumed).model.state_dict()
    (resumed / "model.safetensors").unlink()
    from_shards = Policy.from_pretrained(resumed).model.state_dict()
    assert all(torch.equal(final[k], from_shards[k]) for k in final)
