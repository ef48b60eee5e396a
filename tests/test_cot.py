"""One CoT text format (data/cot.py) used by annotation, synthetic data and the model; the target box follows the
random-shift augmentation; `latentvla analyze cot` metrics and CLI."""

from __future__ import annotations

import json
from dataclasses import replace

import numpy as np
import pytest
import torch

from latentvla import constants as K
from latentvla.data.cot import box_iou, format_cot, parse_cot


def test_format_parse_round_trip_and_components():
    text = format_cot("grasp the puck", [0.1, 0.2, 0.3, 0.4], True, "globally move down, locally stay, close")
    assert (
        text == "Subtask: grasp the puck. BBox: [0.1000 0.2000 0.3000 0.4000]. Reasoning: globally move down, "
        "locally stay, close"
    )
    p = parse_cot(text)
    assert p.subtask == "grasp the puck" and p.bbox == (0.1, 0.2, 0.3, 0.4) and p.reasoning.startswith("globally")
    hidden = parse_cot(format_cot("reach", [0, 0, 0, 0], False, "stay"))
    assert hidden.bbox is None and hidden.subtask == "reach"
    assert format_cot("a", [0, 0, 1, 1], True, "r", ("bbox", "reasoning")).startswith("BBox: [0.0000")
    assert parse_cot("Subtask: x BBox: [1 2 3 4] Reasoning: y") is None  # the old annotator format
    assert parse_cot("Subtask: x. BBox: [1 2 3]. Reasoning: y") is None
    assert box_iou((0, 0, 1, 1), (0.5, 0, 1, 1)) == pytest.approx(0.5)
    assert box_iou((0, 0, 0, 0), (0, 0, 0, 0)) == 0.0


def test_stored_text_is_the_text_the_model_learns(tmp_path):
    """Annotation, synthetic data and the model's training target agree character for character."""
    from latentvla.data import annotate as A
    from latentvla.data.dataset import VLADataset
    from latentvla.data.synthetic import write_synthetic_dataset
    from latentvla.models.vla import compose_cot

    length = 12
    t = np.arange(length)
    ee = np.stack([np.zeros(length), 0.01 * t, 0.2 - 0.005 * t], 1)
    grip = np.where(t < 6, 1.0, 0.3)
    episode = {K.PRIV_EE_POS: ee, K.PRIV_GRIPPER: grip}
    for visible in (True, False):
        fixed = np.tile([0.1, 0.2, 0.3, 0.4], (length, 1)).astype(np.float32)

        class Boxes:
            def boxes(self, episode, camera, visible=visible, fixed=fixed):
                return fixed, np.full(length, visible)

        cols = A.annotate_episode(
            episode, task_name="pick-place", instruction="pick up the puck", box_source=Boxes()
        )
        batch = {k: cols[k] for k in (K.COT_SUBTASK, K.COT_REASONING)}
        batch[K.COT_BBOX] = torch.from_numpy(cols[K.COT_BBOX])
        batch[K.COT_BBOX_VISIBLE] = torch.from_numpy(cols[K.COT_BBOX_VISIBLE])
        for i in range(length):
            assert compose_cot(batch, K.COT_COMPONENTS, i) == cols[K.COT_TEXT][i]
    root = write_synthetic_dataset(tmp_path / "ds", num_episodes=1, length=6, image_size=32)
    ds = VLADataset(root, chunk_size=2)
    batch = torch.utils.data.default_collate([ds[i] for i in range(len(ds))])
    assert [compose_cot(batch, K.COT_COMPONENTS, i) for i in range(len(ds))] == batch[K.COT_TEXT]


def test_target_box_moves_with_the_random_shift(tmp_path):
    """With augmentation on, the BBox still encloses the block's pixels (it used to stay put)."""
    from latentvla.data.dataset import VLADataset
    from latentvla.data.synthetic import TASKS, write_synthetic_dataset

    size = 32
    root = write_synthetic_dataset(tmp_path / "ds", num_episodes=1, length=8, image_size=size)
    ds = VLADataset(root, chunk_size=2, augment=True)
    color = np.array(TASKS[0][2])
    torch.manual_seed(0)
    moved = 0
    for i in list(range(len(ds))) * 3:
        s = ds[i]
        img = (s[f"{K.OBS_IMAGES}.{K.DEFAULT_CAMERA}"].permute(1, 2, 0).numpy() * 255).round()
        ys, xs = np.nonzero((np.abs(img - color) < 1).all(-1))
        found = np.array([xs.min(), ys.min(), xs.max() + 1, ys.max() + 1]) / size  # pixel extent of the block
        assert bool(s[K.COT_BBOX_VISIBLE])
        np.testing.assert_allclose(s[K.COT_BBOX].numpy(), found, atol=1.01 / size)
        moved += not np.allclose(s[K.COT_BBOX].numpy(), ds.bbox[i])
    assert moved > 0  # the shifts did move the box


def test_shift_box_clips_and_hides():
    from latentvla.data.dataset import AUGMENT_PAD, shift_box

    box = np.array([0.0, 0.0, 0.05, 0.05], np.float32)
    out, vis = shift_box(box, True, (2 * AUGMENT_PAD, 2 * AUGMENT_PAD), (64, 64))  # content moves up-left 4 px
    assert not vis and (out >= 0).all()
    out, vis = shift_box(box, True, (0, 0), (64, 64))  # moves down-right 4 px
    np.testing.assert_allclose(out, box + 4 / 64, atol=1e-6)
    assert vis
    assert shift_box(box, False, (0, 0), (64, 64))[1] is False


class _FakeModel:
    """Answers with a fixed function of the frame, to test the metrics without training."""

    modes = ("latent", "explicit")

    def __init__(self, answer):
        self.answer = answer
        self.stage = type("S", (), {"name": "III"})()

    def sample_actions(self, batch, mode, generator, max_cot_tokens):
        from latentvla.models.sampling import SampleOutput

        text, n = self.answer(batch, max_cot_tokens)
        return SampleOutput(torch.zeros(1, 2, 4), cot_text=[text], cot_tokens=torch.tensor([n]))


def test_analyze_cot_metrics(tmp_path):
    from latentvla.data.dataset import VLADataset
    from latentvla.data.synthetic import write_synthetic_dataset
    from latentvla.eval.cot_analysis import analyze_cot

    ds = VLADataset(
        write_synthetic_dataset(tmp_path / "ds", num_episodes=3, length=6, image_size=32), chunk_size=2
    )
    policy = type("P", (), {"eval": lambda self: None, "device": torch.device("cpu"), "config": None})()
    policy.model = _FakeModel(lambda b, cap: (b[K.COT_TEXT][0], 30))  # perfect
    res = analyze_cot(policy, ds, episodes=3, frames_per_episode=2)
    assert res["n_frames"] == 6 and res["n_visible_boxes"] == 6
    assert (res["parse_rate"], res["stop_rate"], res["subtask_match"]) == (1.0, 1.0, 1.0)
    assert res["bbox_iou"] == pytest.approx(1.0, abs=1e-4)  # 4-decimal text
    assert res["mean_tokens"] == 30

    def shifted(b, cap):  # right subtask, box shifted by half its width, never stops
        x1, y1, x2, y2 = b[K.COT_BBOX][0].tolist()
        w = (x2 - x1) / 2
        return format_cot(b[K.COT_SUBTASK][0], [x1 + w, y1, x2 + w, y2], True, "r"), cap

    policy.model = _FakeModel(shifted)
    res = analyze_cot(policy, ds, episodes=3, frames_per_episode=2)
    assert res["parse_rate"] == 1.0 and res["stop_rate"] == 0.0 and res["subtask_match"] == 1.0
    assert res["bbox_iou"] == pytest.approx(1 / 3, abs=1e-3)
    policy.model = _FakeModel(lambda b, cap: ("Subtask: Subtask: Subtask", cap))
    res = analyze_cot(policy, ds, episodes=3, frames_per_episode=2)
    assert (res["parse_rate"], res["bbox_iou"], res["subtask_match"]) == (0.0, 0.0, 0.0)


def test_analyze_cot_cli(tmp_path):
    from latentvla.cli import main
    from latentvla.config import get_preset
    from latentvla.data.dataset import make_normalizer
    from latentvla.data.lerobot import LeRobotDatasetReader
    from latentvla.data.synthetic import write_synthetic_dataset
    from latentvla.policy import Policy

    root = write_synthetic_dataset(tmp_path / "ds", num_episodes=2, length=6, image_size=32)
    norm = make_normalizer(LeRobotDatasetReader(root))
    cfg = replace(get_preset("lara", "micro").policy, image_size=32, state_dim=4, action_dim=4)
    torch.manual_seed(0)
    Policy(cfg, norm).save_pretrained(tmp_path / "ckpt")
    args = ["analyze", "cot", str(tmp_path / "ckpt"), "--dataset", str(root), "--episodes", "2"]
    assert (
        main([*args, "--frames-per-episode", "1", "--max-cot-tokens", "3", "--json", str(tmp_path / "c.json")])
        == 0
    )
    res = json.loads((tmp_path / "c.json").read_text())
    assert res["n_frames"] == 2 and res["max_cot_tokens"] == 3 and res["mean_tokens"] <= 3
    for key in ("parse_rate", "stop_rate", "subtask_match"):
        assert 0.0 <= res[key] <= 1.0
    assert main(["analyze", "cot", str(tmp_path / "ckpt"), "--dataset", str(tmp_path / "nope")]) == 2
