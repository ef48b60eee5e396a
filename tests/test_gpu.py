"""The GPU tier: `pytest -m gpu`, skipped without CUDA; `runs/gpu_check.sh` runs it.

On a CUDA machine: every preset trains a few steps in bf16 (tiny configs; the two paper presets on tiny
transformers-written Qwen3-VL / Qwen2 + DINOv2 + SigLIP), FSDP2 trains through `torchrun` on one GPU, one
Meta-World episode is evaluated with the policy on the GPU (bf16 autocast + TF32), and one `serve` round trip
answers from the GPU. `LATENTVLA_GPU_TESTS_DEVICE=cpu` runs the same tests on CPU (to check the tier itself
where no GPU is at hand; plain fp32 there).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

DEVICE = os.environ.get("LATENTVLA_GPU_TESTS_DEVICE", "cuda")
pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(DEVICE == "cuda" and not torch.cuda.is_available(), reason="needs a CUDA GPU"),
]
COMMON = [
    "steps=6",
    "batch_size=2",
    "save_every=6",
    "log_every=1",
    "num_workers=0",
    "augment=false",
    "policy.horizon=4",
    "policy.image_size=32",
    f"device={DEVICE}",
    "bf16=true",
]
TINY_PRESETS = ("lara", "lara-explicit", "lara-latent-text", "lara-no-cot", "ecot", "rdvla", "lara-rd", "bc")


@pytest.fixture(scope="module")
def tiny_hf(tmp_path_factory):
    pytest.importorskip("transformers")
    from latentvla.testing.tiny_hf import save_tiny

    root = tmp_path_factory.mktemp("tiny_hf")
    return {f: str(save_tiny(f, root / f)) for f in ("qwen3_vl", "qwen2", "dinov2", "siglip")}


def _config(preset: str, tiny_hf: dict | None = None):
    from latentvla.config import apply_overrides, get_preset, use_backbone

    cfg = get_preset(preset, "micro")
    if preset == "lara-qwen3vl":
        cfg = use_backbone(cfg, tiny_hf["qwen3_vl"])
    elif preset == "rdvla-minivla":
        cfg = use_backbone(cfg, tiny_hf["qwen2"], (tiny_hf["dinov2"], tiny_hf["siglip"]))
    return apply_overrides(cfg, COMMON)


def _train_and_check(cfg, dataset, run: Path) -> None:
    from latentvla.policy import Policy
    from latentvla.train.logging import read_metrics
    from latentvla.train.loop import train

    train(cfg, dataset, run, show_progress=False)
    losses = [r["loss"] for r in read_metrics(run / "metrics.jsonl") if "loss" in r]
    assert losses and all(np.isfinite(losses)), losses
    policy = Policy.from_pretrained(run, device=DEVICE)
    assert policy.device.type == torch.device(DEVICE).type
    policy.set_precision("auto")
    c = policy.config
    obs = {f"observation.images.{cam}": np.zeros((32, 32, 3), np.uint8) for cam in c.cameras}
    obs |= {"observation.state": np.zeros(c.state_dim, np.float32), "task": "reach the goal"}
    out = policy.infer(obs)
    assert out["actions"].shape == (4, c.action_dim) and np.isfinite(out["actions"]).all()


@pytest.mark.parametrize("preset", TINY_PRESETS)
def test_every_tiny_preset_trains_in_bf16(preset, synthetic_dataset, tmp_path):
    _train_and_check(_config(preset), synthetic_dataset, tmp_path / "run")


@pytest.mark.parametrize("preset", ["lara-qwen3vl", "rdvla-minivla"])
def test_paper_presets_train_in_bf16_on_tiny_transformers_models(preset, tiny_hf, synthetic_dataset, tmp_path):
    _train_and_check(_config(preset, tiny_hf), synthetic_dataset, tmp_path / "run")


def test_fsdp2_through_torchrun_on_one_gpu(synthetic_dataset, tmp_path):
    run = tmp_path / "fsdp"
    cmd = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        "--nproc_per_node=1",
        "-m",
        "latentvla.cli",
        "train",
        "--preset",
        "lara",
        "--size",
        "micro",
        "--dataset",
        str(synthetic_dataset),
        "--out",
        str(run),
        "--fsdp",
        "--no-progress",
        *COMMON,
    ]
    res = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr[-3000:]
    cfg = json.loads((run / "checkpoints" / "last" / "config.json").read_text())
    assert cfg["train"]["parallel"] == "fsdp"


@pytest.fixture(scope="module")
def rd_ckpt(tmp_path_factory):
    from latentvla.config import get_preset
    from latentvla.data.stats import Normalizer
    from latentvla.policy import Policy

    one = np.ones(4)
    stats = {"mean": 0 * one, "std": one, "min": -one, "max": one, "q01": -one, "q99": one, "count": np.array([9])}
    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("rdvla")
    Policy(get_preset("rdvla").policy, Normalizer({"observation.state": stats, "action": stats})).save_pretrained(
        path
    )
    return str(path)


@pytest.mark.sim
def test_one_metaworld_episode_with_the_policy_on_the_gpu(rd_ckpt, tmp_path):
    from latentvla.eval.evaluate import evaluate

    info = evaluate(
        rd_ckpt,
        "reach",
        1,
        seed=0,
        max_steps=8,
        workers=1,
        progress=False,
        device=DEVICE,
        out_dir=tmp_path / "eval",
    )
    (ep,) = info["episodes"]
    assert ep["length"] == 8 and len(ep["latencies_ms"]) == 2
    assert info["config"]["device"] == DEVICE and (tmp_path / "eval" / "episodes.jsonl").is_file()
    again = evaluate(rd_ckpt, "reach", 1, seed=0, max_steps=8, workers=1, progress=False, device=DEVICE)
    np.testing.assert_array_equal(again["actions"][("reach-v3", 0)], info["actions"][("reach-v3", 0)])


def test_one_serve_round_trip_on_the_gpu(rd_ckpt):
    from latentvla.client import WebsocketPolicyClient
    from latentvla.policy import Policy
    from latentvla.serve.server import PolicyServer

    policy = Policy.from_pretrained(rd_ckpt, device=DEVICE)
    dtype = policy.set_precision("auto")
    assert (dtype is torch.bfloat16) == (DEVICE == "cuda" and torch.cuda.is_bf16_supported())
    server = PolicyServer(policy, "127.0.0.1", 0)
    port = server.start_in_thread()
    try:
        c = policy.config
        obs = {
            f"observation.images.{cam}": np.zeros((c.image_size, c.image_size, 3), np.uint8) for cam in c.cameras
        }
        obs |= {"observation.state": np.zeros(4, np.float32), "task": "press the button"}
        with WebsocketPolicyClient("127.0.0.1", port, timeout=120) as client:
            reply = client.infer(obs)
    finally:
        server.stop()
    assert reply["actions"].shape == (c.horizon, 4) and np.isfinite(reply["actions"]).all()
