"""A LoRA ("adapter") checkpoint stores what training changed, not frozen pretrained weights that building the
policy from its config reloads: the peft base model (from `hf_path`) and frozen SigLIP / DINOv2 encoders (from
`vision.paths`). On main the frozen fp32 encoders were written into every MiniVLA checkpoint (~3.3 of 3.6 GB)."""

from __future__ import annotations

import pytest
import torch
from safetensors.torch import load_file

from latentvla.config import apply_overrides, get_preset, use_backbone
from latentvla.data.dataset import VLADataset, make_normalizer
from latentvla.data.lerobot import LeRobotDatasetReader
from latentvla.data.synthetic import write_synthetic_dataset
from latentvla.policy import Policy
from latentvla.testing.tiny_hf import save_tiny
from latentvla.train.curriculum import stage_boundaries

pytest.importorskip("peft")


def test_adapter_checkpoint_leaves_frozen_encoders_out_and_round_trips(tmp_path):
    tiny = {f: save_tiny(f, tmp_path / f) for f in ("qwen2", "siglip", "dinov2")}
    root = write_synthetic_dataset(tmp_path / "ds", num_episodes=1, length=6, image_size=32)
    norm = make_normalizer(LeRobotDatasetReader(root))
    batch = torch.utils.data.default_collate(
        [VLADataset(root, chunk_size=4, cameras=["corner4"], normalizer=norm)[i] for i in range(2)]
    )
    cfg = use_backbone(
        get_preset("rdvla", "micro"), str(tiny["qwen2"]), (str(tiny["dinov2"]), str(tiny["siglip"]))
    )
    cfg = apply_overrides(
        cfg,
        [
            "policy.image_size=32",
            "policy.horizon=4",
            "policy.num_action_bins=8",
            "policy.backbone.freeze_vision=true",
            "policy.backbone.lora.rank=4",
        ],
    )
    torch.manual_seed(0)
    policy = Policy(cfg.policy, norm)
    opt = torch.optim.AdamW([p for p in policy.parameters() if p.requires_grad], lr=1e-2)
    stage = stage_boundaries(policy.config.curriculum, 10)[0][1]
    policy.model.compute_loss(batch, stage)[0].mean().backward()
    opt.step()
    policy.save_pretrained(tmp_path / "ckpt")
    saved = load_file(str(tmp_path / "ckpt" / "model.safetensors"))
    assert not [k for k in saved if ".encoders." in k]  # frozen pretrained encoders: reloaded from their paths
    assert [k for k in saved if ".vision.projector." in k]  # the new projector trains: kept
    again = Policy.from_pretrained(tmp_path / "ckpt").model.state_dict()
    now = policy.model.state_dict()
    assert again.keys() == now.keys() and all(torch.equal(again[k], now[k]) for k in now)


def test_lora_resume_loads_into_the_trained_model_and_equals_uninterrupted(tmp_path):
    """`--resume` of a LoRA run reads the adapter checkpoint into the model being trained (no second policy is
    built: on the full-size MiniVLA that copy raised the resume's peak RSS from 10.4 to 12.1 GB) and ends equal to
    an uninterrupted run."""
    from latentvla.train.checkpoint import latest_checkpoint
    from latentvla.train.loop import train

    tiny = save_tiny("qwen2", tmp_path / "qwen2")
    root = write_synthetic_dataset(tmp_path / "ds", num_episodes=2, length=8, image_size=32)
    cfg = use_backbone(get_preset("rdvla", "micro"), str(tiny))
    cfg = apply_overrides(
        cfg,
        [
            "steps=4",
            "batch_size=2",
            "save_every=1",
            "log_every=1",
            "num_workers=0",
            "policy.image_size=32",
            "policy.horizon=4",
            "policy.backbone.lora.rank=4",
        ],
    )
    train(cfg, root, tmp_path / "full", show_progress=False)
    train(cfg, root, tmp_path / "split", show_progress=False, stop_at=2)
    train(cfg, root, tmp_path / "split", resume=True, show_progress=False)
    full = load_file(str(latest_checkpoint(tmp_path / "full") / "model.safetensors"))
    split = load_file(str(latest_checkpoint(tmp_path / "split") / "model.safetensors"))
    assert full.keys() == split.keys() and any("lora_" in k for k in full)
    assert max((full[k] - split[k]).abs().max().item() for k in full) <= 1e-6
