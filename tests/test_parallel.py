"""FSDP2 (`fully_shard`) with 2 gloo processes on CPU equals one process, as DDP does (tests/test_train.py);
the checkpoint it writes is an ordinary one (full weights gathered to rank 0)."""

from __future__ import annotations

import os
import socket
from pathlib import Path

import pytest
import torch
import torch.multiprocessing as mp
from safetensors.torch import load_file

from latentvla.config import apply_overrides, get_preset
from latentvla.train.checkpoint import latest_checkpoint
from latentvla.train.logging import read_metrics

COMMON = ["batch_size=4", "log_every=1", "save_every=1000", "num_workers=0", "policy.horizon=4", "augment=false"]


@pytest.fixture(scope="module")
def dataset(tmp_path_factory) -> Path:
    from latentvla.data.synthetic import write_synthetic_dataset

    return write_synthetic_dataset(tmp_path_factory.mktemp("data") / "ds", num_episodes=2, length=8, image_size=32)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _worker(rank: int, world: int, port: int, cfg, dataset: str, run: str) -> None:
    os.environ.update(
        MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), WORLD_SIZE=str(world), LOCAL_RANK=str(rank)
    )
    torch.set_num_threads(1)
    from latentvla.train.loop import train

    train(cfg, dataset, run, show_progress=False)


def _weights(run: Path) -> dict[str, torch.Tensor]:
    return load_file(str(latest_checkpoint(run) / "model.safetensors"))


# two spawned processes (~10 s even for the tiny backbone): slow, so `-m "not slow"` stays under 2 minutes
@pytest.mark.slow
@pytest.mark.parametrize("backbone", ["tiny", "hf-qwen2", "hf-qwen3_vl"])
def test_fsdp2_two_gloo_processes_equal_one_process(dataset, tmp_path, backbone):
    """`lara` held in stage I draws no noise (CoT + action-token CE + visual L1 vs the EMA target; the flow stages
    draw per-rank noise streams that legitimately differ), so 2 x batch 2 sharded == 1 x batch 4.
    3 steps cover the EMA update (every 2 steps) from all-gathered online weights. "hf-qwen2": a transformers
    LM (decoder layers sharded, tied lm_head: the gathered checkpoint keeps the tie once). "hf-qwen3_vl": the LaRA
    paper's VLM family (its vision tower and merger are one FSDP unit, its embedding + lm_head another)."""
    from latentvla.config import use_backbone
    from latentvla.train.loop import train

    cfg = get_preset("lara", "micro")
    if backbone != "tiny":
        from latentvla.testing.tiny_hf import save_tiny

        family = backbone.removeprefix("hf-")
        cfg = use_backbone(cfg, str(save_tiny(family, tmp_path / family)))
    cfg = apply_overrides(cfg, ["steps=3", "policy.curriculum.fractions=1,0,0,0,0", *COMMON])
    train(cfg, dataset, tmp_path / "single", show_progress=False)
    fsdp = apply_overrides(cfg, ["parallel=fsdp"])
    mp.spawn(_worker, args=(2, _free_port(), fsdp, str(dataset), str(tmp_path / "fsdp")), nprocs=2, join=True)
    single, sharded = _weights(tmp_path / "single"), _weights(tmp_path / "fsdp")
    assert single.keys() == sharded.keys()  # a full, ordinary checkpoint
    assert max((single[k] - sharded[k]).abs().max().item() for k in single) <= 2e-5
    ema = [k for k in single if k.startswith("ema_vision.")]
    assert ema and all(
        torch.equal(single[k], sharded[k]) or (single[k] - sharded[k]).abs().max() < 2e-5 for k in ema
    )
    losses = lambda run: [r["loss"] for r in read_metrics(tmp_path / run / "metrics.jsonl")]  # noqa: E731
    assert losses("fsdp") == pytest.approx(losses("single"), abs=1e-4)
