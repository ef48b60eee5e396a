"""The `bc` preset (models/bc.py): overfits a tiny batch, round-trips a checkpoint, trains through the loop and
answers a server call — the same dataset, Policy, loop and server paths as the reasoning models."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest
import torch

from latentvla.client import WebsocketPolicyClient
from latentvla.config import apply_overrides, get_preset
from latentvla.constants import OBS_IMAGES, OBS_STATE, TASK
from latentvla.data.dataset import make_normalizer
from latentvla.data.lerobot_format import LeRobotDatasetReader
from latentvla.data.synthetic import write_synthetic_dataset
from latentvla.models.bc import BCConfig, BCPolicyModel
from latentvla.policy import Policy
from latentvla.serve.server import PolicyServer
from latentvla.train.curriculum import final_stage
from latentvla.train.loop import train
from policy_helpers import policy_and_batches


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    root = write_synthetic_dataset(tmp_path_factory.mktemp("bc") / "ds", num_episodes=2, length=12, image_size=32)
    reader = LeRobotDatasetReader(root)
    return root, reader, make_normalizer(reader)


def make_policy(data, *overrides: str) -> tuple[Policy, dict]:
    _, reader, norm = data
    policy, (batch,) = policy_and_batches(reader, norm, "bc", *overrides)
    return policy, batch


def obs_of(batch: dict, i: int, policy: Policy) -> dict:
    cam = f"{OBS_IMAGES}.{policy.config.cameras[0]}"
    img = (batch[cam][i].permute(1, 2, 0).numpy() * 255).round().astype(np.uint8)
    state = policy.normalizer.unnormalize(OBS_STATE, batch[OBS_STATE][i].numpy()).astype(np.float32)
    return {cam: img, OBS_STATE: state, TASK: batch[TASK][i]}


def test_bc_is_the_baseline_network():
    """As measured for the BC baseline: ~1.59 M parameters at 64 px, one camera, chunk 8 x 4 actions."""
    cfg = get_preset("bc").policy
    model = BCPolicyModel(replace(cfg, image_size=64, state_dim=4, action_dim=4))
    n = sum(p.numel() for p in model.parameters())
    assert 1.55e6 < n < 1.75e6, n  # + the instruction embedding table (vocab x 64)
    assert get_preset("bc").batch_size == 64 and cfg.model == "bc"
    with pytest.raises(ValueError, match="channels"):
        BCConfig(channels=())


def test_bc_overfits_a_tiny_batch_and_uses_every_input(data):
    policy, batch = make_policy(data, "policy.bc.state_noise=0")
    model, stage = policy.model.train(), final_stage(policy.config.curriculum)
    opt = torch.optim.AdamW(model.parameters(), lr=1.5e-3)
    losses = []
    for _ in range(100):
        loss, metrics = model.compute_loss(batch, stage)
        opt.zero_grad()
        loss.mean().backward()
        opt.step()
        losses.append(metrics["loss"])
    assert np.mean(losses[-5:]) < 0.1 * np.mean(losses[:3]), (losses[:3], losses[-5:])
    # every input reaches the output: the gradient of the prediction w.r.t. image, state and instruction is non-zero
    model.zero_grad()
    model(batch).sum().backward()
    assert model.encoder.convs[0].weight.grad.abs().sum() > 0
    assert model.text_embed.weight.grad.abs().sum() > 0
    other = {**batch, OBS_STATE: batch[OBS_STATE] + 1.0}
    assert not torch.allclose(model(batch), model(other))


def test_bc_padded_steps_do_not_count(data):
    policy, batch = make_policy(data, "policy.bc.state_noise=0")
    stage = final_stage(policy.config.curriculum)
    pad = torch.zeros_like(batch["action_is_pad"])
    pad[:, -3:] = True
    changed = batch["action"].clone()
    changed[:, -3:] += 5.0
    a, _ = policy.model.eval().compute_loss({**batch, "action_is_pad": pad}, stage)
    b, _ = policy.model.compute_loss({**batch, "action_is_pad": pad, "action": changed}, stage)
    torch.testing.assert_close(a, b)
    c, _ = policy.model.compute_loss({**batch, "action": changed}, stage)
    assert (c > a).all()


def test_bc_checkpoint_round_trip_and_all_modes(data, tmp_path):
    policy, batch = make_policy(data)
    policy.save_pretrained(tmp_path / "ckpt")
    loaded = Policy.from_pretrained(tmp_path / "ckpt")
    assert isinstance(loaded.model, BCPolicyModel) and loaded.config == policy.config
    obs = obs_of(batch, 1, policy)
    ref = policy.eval().infer(obs)["actions"]
    for mode in ("latent", "none"):
        np.testing.assert_allclose(loaded.infer(obs, mode=mode)["actions"], ref, rtol=1e-5, atol=1e-6)
    with pytest.raises(ValueError, match="no reasoning"):
        loaded.infer(obs, mode="explicit")
    assert loaded.model.modes[0] == "none" and loaded.metadata["modes"] == ["none", "latent"]
    assert len(loaded.select_action(obs)) == policy.config.action_dim


def test_bc_trains_through_the_loop_and_serves(data, tmp_path):
    root, _, _ = data
    cfg = apply_overrides(get_preset("bc"), ["steps=4", "batch_size=4", "log_every=2", "save_every=4"])
    summary = train(cfg, root, tmp_path / "run", show_progress=False)
    assert summary["end_step"] == 4 and summary["checkpoint"]
    policy = Policy.from_pretrained(tmp_path / "run")
    _, batch = make_policy(data)
    obs = obs_of(batch, 2, policy)
    server = PolicyServer(policy, "127.0.0.1", 0)
    port = server.start_in_thread()
    try:
        with WebsocketPolicyClient("127.0.0.1", port, timeout=10) as client:
            assert client.metadata["preset"] == "bc"
            reply = client.infer(obs)
    finally:
        server.stop()
    np.testing.assert_allclose(reply["actions"], policy.infer(obs)["actions"], rtol=1e-5, atol=1e-6)


def test_bc_latency_report_has_the_common_paths_only(data):
    from latentvla.bench.latency import bench_latency

    policy, _ = make_policy(data)
    report = bench_latency(policy.eval(), warmup=0, repeats=1)
    assert report["latent_ms"] > 0 and report["num_thinking_tokens"] == 0 and report["explicit_cot_tokens"] is None
    assert "rd_fixed_ms" not in report and "expert_sample_ms" not in report
