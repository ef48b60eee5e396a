"""VLADataset samples (chunks, padding, next frame, CoT fields, augmentation) and the `dataset info|show` CLI."""

import numpy as np
import pytest
import torch
from PIL import Image
from torch.utils.data import DataLoader

from latentvla.cli import main as cli_main
from latentvla.data.dataset import VLADataset, make_normalizer
from latentvla.data.lerobot import LeRobotDatasetReader
from latentvla.data.stats import Normalizer, compute_stats
from latentvla.data.synthetic import synthetic_episodes, write_synthetic_dataset

torch.set_num_threads(1)
CAM = "observation.images.corner4"
LENGTH = 10


@pytest.fixture(scope="module")
def root(tmp_path_factory):
    return write_synthetic_dataset(tmp_path_factory.mktemp("data") / "ds", num_episodes=3, length=LENGTH)


@pytest.fixture(scope="module")
def raw():
    return synthetic_episodes(3, LENGTH)


def test_sample_format(root):
    ds = VLADataset(root, chunk_size=4)
    assert len(ds) == 3 * LENGTH and ds.cameras == ["corner4"] and ds.action_dim == 4 and ds.state_dim == 4
    s = ds[3]
    assert s[CAM].shape == (3, 32, 32) and s[CAM].dtype == torch.float32
    assert float(s[CAM].min()) >= 0.0 and float(s[CAM].max()) <= 1.0
    assert s[CAM + ".next"].shape == (3, 32, 32) and s["next_image_is_pad"].dtype == torch.bool
    assert s["observation.state"].shape == (4,) and s["action"].shape == (4, 4)
    assert s["action_is_pad"].shape == (4,) and not s["action_is_pad"].any()
    assert s["task"] == "push the red block to the goal" and s["cot.text"].startswith("Subtask: ")
    assert s["cot.bbox"].shape == (4,) and bool(s["cot.bbox_visible"]) and bool(s["has_cot"])
    for key in ("episode_index", "frame_index", "index", "task_index"):
        assert s[key].dtype == torch.int64 and s[key].ndim == 0
    assert (int(s["frame_index"]), int(s["index"])) == (3, 3)
    batch = next(iter(DataLoader(ds, batch_size=5)))
    assert batch["action"].shape == (5, 4, 4) and len(batch["cot.subtask"]) == 5


def test_normalized_values_and_images_match_raw(root, raw):
    ds = VLADataset(root, chunk_size=3)
    norm = ds.normalizer
    s = ds[LENGTH + 2]  # episode 1, frame 2
    ep = raw[1]
    np.testing.assert_allclose(
        s["observation.state"].numpy(), norm.normalize("observation.state", ep["observation.state"][2]), atol=1e-6
    )
    np.testing.assert_allclose(norm.unnormalize("action", s["action"]).numpy(), ep["action"][2:5], atol=1e-5)
    np.testing.assert_array_equal((s[CAM].permute(1, 2, 0).numpy() * 255).round().astype(np.uint8), ep[CAM][2])
    np.testing.assert_array_equal(
        (s[CAM + ".next"].permute(1, 2, 0).numpy() * 255).round().astype(np.uint8), ep[CAM][3]
    )
    assert s["task"] == "move the blue block to the goal" and int(s["task_index"]) == 1
    assert s["cot.subtask"] == ep["cot.subtask"][2]


def test_chunk_padding_and_next_frame_at_episode_end(root, raw):
    ds = VLADataset(root, chunk_size=5)
    s = ds[LENGTH - 3]  # third-to-last frame of episode 0: 3 real actions, 2 padded
    assert s["action_is_pad"].tolist() == [False, False, False, True, True]
    assert torch.equal(s["action"][3], s["action"][2]) and torch.equal(s["action"][4], s["action"][2])
    np.testing.assert_allclose(
        ds.normalizer.unnormalize("action", s["action"][2]).numpy(), raw[0]["action"][-1], atol=1e-5
    )
    assert not bool(s["next_image_is_pad"])
    last = ds[LENGTH - 1]
    assert bool(last["next_image_is_pad"]) and float(last[CAM + ".next"].abs().sum()) == 0.0
    assert last["action_is_pad"].tolist() == [False, True, True, True, True]
    first_of_next = ds[LENGTH]  # the chunk never crosses into the next episode
    assert int(first_of_next["episode_index"]) == 1 and int(first_of_next["frame_index"]) == 0


def test_episode_subset_and_camera_names(root):
    ds = VLADataset(root, chunk_size=2, episodes=[2], cameras=["corner4"], next_frame=False)
    assert len(ds) == LENGTH and int(ds[0]["index"]) == 2 * LENGTH and int(ds[0]["episode_index"]) == 2
    assert CAM + ".next" not in ds[0] and "next_image_is_pad" not in ds[0]
    with pytest.raises(ValueError, match="Unknown camera 'corner5'.*Did you mean 'corner4'"):
        VLADataset(root, chunk_size=2, cameras=["corner5"])
    with pytest.raises(IndexError, match="has 3 episodes"):
        VLADataset(root, chunk_size=2, episodes=[7])


def test_augment_keeps_shapes_and_shifts_current_and_next_together(root):
    torch.manual_seed(0)
    ds = VLADataset(root, chunk_size=2, augment=True)
    plain = VLADataset(root, chunk_size=2)
    changed = 0
    for _ in range(10):
        s = ds[4]
        assert s[CAM].shape == (3, 32, 32) and s[CAM + ".next"].shape == (3, 32, 32)
        changed += not torch.equal(s[CAM], plain[4][CAM])
        # Same shift on both: find the shift that reproduces the current frame and check it on the next frame.
        img, nxt = plain.frames.frames(CAM, 0, [4, 5])
        pad = lambda x: np.pad(x, ((4, 4), (4, 4), (0, 0)), mode="edge")  # noqa: E731
        cur = (s[CAM].permute(1, 2, 0).numpy() * 255).round().astype(np.uint8)
        shifts = [
            (dy, dx)
            for dy in range(9)
            for dx in range(9)
            if np.array_equal(pad(img)[dy : dy + 32, dx : dx + 32], cur)
        ]
        nxt_aug = (s[CAM + ".next"].permute(1, 2, 0).numpy() * 255).round().astype(np.uint8)
        assert any(np.array_equal(pad(nxt)[dy : dy + 32, dx : dx + 32], nxt_aug) for dy, dx in shifts)
    assert changed > 0


def test_no_cot_dataset_gives_empty_fields(tmp_path):
    root = write_synthetic_dataset(tmp_path / "nocot", num_episodes=2, length=5, with_cot=False)
    s = VLADataset(root, chunk_size=2)[1]
    assert s["cot.text"] == "" and s["cot.subtask"] == "" and s["cot.reasoning"] == ""
    assert not bool(s["has_cot"]) and not bool(s["cot.bbox_visible"]) and float(s["cot.bbox"].abs().sum()) == 0.0


def test_stats_mismatch_errors(root):
    reader = LeRobotDatasetReader(root)
    wrong = Normalizer(compute_stats({"observation.state": np.random.rand(9, 4), "action": np.random.rand(9, 7)}))
    with pytest.raises(ValueError, match=r"stats for 'action' have shape \(7,\) but the data has \(4,\)"):
        VLADataset(reader, chunk_size=2, normalizer=wrong)
    with pytest.raises(KeyError, match="no stats for \\['observation.velocity'\\]"):
        make_normalizer(reader, {"observation.velocity": "mean_std"})
    only_state = Normalizer(reader.stats, {"observation.state": "mean_std"})
    with pytest.raises(KeyError, match="no mode for 'action'"):
        VLADataset(reader, chunk_size=2, normalizer=only_state)


def test_cli_info_and_show(root, tmp_path, capsys):
    assert cli_main(["dataset", "info", str(root)]) == 0
    out = capsys.readouterr().out
    assert "episodes 3" in out and "frames 30" in out and "tasks 2" in out
    assert "CoT on 100.0% of frames" in out and "expert success rate: 100.0%" in out
    assert "observation.state" in out and "[4]" in out
    sheet = tmp_path / "sheet.png"
    assert cli_main(["dataset", "show", str(root), "--episode", "1", "--out", str(sheet), "--frames", "4"]) == 0
    image = Image.open(sheet)
    assert image.width >= 4 * 256 and image.height > 256
    # The CoT box is drawn in pure green on the first tile.
    pixels = np.asarray(image.convert("RGB"))
    assert ((pixels == [0, 255, 0]).all(axis=-1)).sum() > 100


def test_cli_errors_are_one_line(tmp_path, capsys):
    assert cli_main(["dataset", "info", str(tmp_path / "missing")]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and "\n" not in err and "Traceback" not in err
    root = write_synthetic_dataset(tmp_path / "ds", num_episodes=1, length=4)
    data = root / "data/chunk-000/file-000.parquet"
    data.write_bytes(data.read_bytes()[:100])
    assert cli_main(["dataset", "info", str(root)]) == 2
    err = capsys.readouterr().err.strip()
    assert "file-000.parquet" in err and "\n" not in err
