"""`latentvla analyze actions`: sampled vs demonstrated chunks on dataset frames, in raw action units."""

import json
from dataclasses import replace

import numpy as np
import pytest
import torch

from latentvla.config import get_preset
from latentvla.data.dataset import VLADataset, make_normalizer
from latentvla.data.lerobot import LeRobotDatasetReader
from latentvla.data.synthetic import write_synthetic_dataset
from latentvla.eval.action_error import analyze_actions
from latentvla.eval.cot_analysis import frame_indices
from latentvla.policy import Policy

H = 4


def _policy(root):
    cfg = replace(get_preset("lara", "micro").policy, image_size=32, state_dim=4, action_dim=4, horizon=H)
    torch.manual_seed(0)
    return Policy(cfg, make_normalizer(LeRobotDatasetReader(root)))


def test_errors_are_in_raw_units_over_unpadded_steps_and_the_state_goes_in_raw(tmp_path):
    root = write_synthetic_dataset(tmp_path / "ds", num_episodes=3, length=6, image_size=32)
    policy = _policy(root)
    ds = VLADataset(root, chunk_size=H, cameras=list(policy.config.cameras), normalizer=policy.normalizer)
    reader = LeRobotDatasetReader(root)
    eps = [reader.episode(e, images=False) for e in range(3)]
    raw_action = np.concatenate([np.asarray(e["action"], np.float64) for e in eps])
    raw_state = np.concatenate([np.asarray(e["observation.state"], np.float64) for e in eps])
    ends = np.repeat(np.cumsum([len(e["action"]) for e in eps]), [len(e["action"]) for e in eps])

    const = np.array([0.1, -0.2, 0.3, 0.5], np.float32)  # the fake policy answers this chunk everywhere
    seen_states = []

    def fake_sample(observations, **kwargs):
        seen_states.extend(o["observation.state"] for o in observations)
        return np.broadcast_to(const, (len(observations), H, 4)).copy(), None

    policy.sample = fake_sample
    res = analyze_actions(policy, ds, episodes=3, frames_per_episode=3, batch_size=2)

    idx = frame_indices(ds, 3, 3)
    assert res["n_frames"] == len(idx) == 9
    np.testing.assert_allclose(np.stack(seen_states), raw_state[idx], atol=1e-5)  # raw, not normalized twice
    first = np.abs(raw_action[idx] - const).mean(0)
    np.testing.assert_allclose(res["l1_first_per_dim"], first, atol=1e-4)
    steps = [(i + k) for i in idx for k in range(H) if i + k < ends[i]]  # padded steps past the end excluded
    chunk = np.abs(raw_action[steps] - const).mean(0)
    np.testing.assert_allclose(res["l1_chunk_per_dim"], chunk, atol=1e-4)
    assert res["l1_chunk"] == pytest.approx(chunk.mean(), abs=1e-4)
    assert len(steps) < len(idx) * H  # the last frame of each episode really had padding to exclude
    assert res["gripper_sign_agreement"] == pytest.approx(float(np.mean(np.sign(raw_action[steps, -1]) == 1.0)))


def test_analyze_actions_cli(tmp_path, capsys):
    from latentvla.cli import main

    root = write_synthetic_dataset(tmp_path / "ds", num_episodes=2, length=6, image_size=32)
    _policy(root).save_pretrained(tmp_path / "ckpt")
    out = tmp_path / "a.json"
    args = ["analyze", "actions", str(tmp_path / "ckpt"), "--dataset", str(root), "--episodes", "2"]
    assert main([*args, "--frames-per-episode", "2", "--json", str(out)]) == 0
    res = json.loads(out.read_text())
    assert res["n_frames"] == 4 and res["horizon"] == H
    assert len(res["l1_first_per_dim"]) == len(res["l1_chunk_per_dim"]) == 4
    assert all(np.isfinite(res["l1_chunk_per_dim"])) and 0.0 <= res["gripper_sign_agreement"] <= 1.0
    # the same seed samples the same flow noise: the report repeats exactly
    assert main([*args, "--frames-per-episode", "2", "--json", str(tmp_path / "b.json")]) == 0
    assert json.loads((tmp_path / "b.json").read_text())["l1_chunk"] == res["l1_chunk"]
    capsys.readouterr()
    assert main(["analyze", "actions", str(tmp_path / "ckpt"), "--dataset", str(tmp_path / "nope")]) == 2
    assert "nope" in capsys.readouterr().err
