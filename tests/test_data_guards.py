"""The data side of training: what a training run refuses or takes from its dataset instead of training silently
on the wrong thing (no CoT columns, sensor sentinels, a camera layout other than the preset's, an image size the
dataset does not have), and the dataset checks that failed with tracebacks or not at all."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch

from latentvla.cli import main as cli
from latentvla.config import apply_overrides, get_preset
from latentvla.data.lerobot import DatasetFormatError, LeRobotDatasetReader
from latentvla.data.synthetic import write_synthetic_dataset
from latentvla.train.loop import fit_policy_to_dataset

torch.set_num_threads(1)
TRAIN = ["--steps", "2", "batch_size=2", "save_every=2", "log_every=1", "policy.horizon=4", "--no-progress"]


def _train(data: Path, out: Path, preset: str = "lara", *extra: str) -> int:
    return cli(["train", "--preset", preset, "--dataset", str(data), "--out", str(out), *TRAIN, *extra])


# ------------------------------------------------------------------------------- 1: CoT preset without CoT
@pytest.mark.parametrize("preset", ["lara", "lara-explicit", "ecot", "lara-rd"])
def test_reasoning_preset_on_dataset_without_cot_is_refused(tmp_path, preset):
    data = write_synthetic_dataset(tmp_path / "nocot", num_episodes=2, length=6, image_size=16, with_cot=False)
    cfg = get_preset(preset, "micro")
    with pytest.raises(ValueError, match=r"learns chain-of-thought .*`latentvla annotate"):
        fit_policy_to_dataset(cfg, LeRobotDatasetReader(data))


def test_reasoning_preset_refused_on_cli_in_one_line(tmp_path, capsys):
    data = write_synthetic_dataset(tmp_path / "nocot", num_episodes=2, length=6, image_size=16, with_cot=False)
    assert _train(data, tmp_path / "run") == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "latentvla annotate" in err and "cot." in err
    assert not (tmp_path / "run").exists()  # refused before the run directory is made


def test_presets_without_reasoning_still_train_without_cot(tmp_path):
    data = write_synthetic_dataset(tmp_path / "nocot", num_episodes=2, length=6, image_size=16, with_cot=False)
    reader = LeRobotDatasetReader(data)
    for preset in ("lara-no-cot", "rdvla", "bc"):
        fit_policy_to_dataset(get_preset(preset, "micro"), reader)


def test_reasoning_preset_refused_when_every_cot_text_is_empty(tmp_path):
    data = write_synthetic_dataset(tmp_path / "ds", num_episodes=2, length=6, image_size=16)
    path = next((data / "data").rglob("*.parquet"))
    table = pq.read_table(path)
    i = table.column_names.index("cot.text")
    pq.write_table(table.set_column(i, "cot.text", pa.array([""] * table.num_rows)), path)
    with pytest.raises(ValueError, match="every cot.text .* is empty"):
        fit_policy_to_dataset(get_preset("lara", "micro"), LeRobotDatasetReader(data))


# ------------------------------------------------------------------------------- 6: cameras from the dataset
def test_libero_layout_takes_the_dataset_cameras_in_stored_order(tmp_path, capsys):
    data = write_synthetic_dataset(tmp_path / "lib", num_episodes=2, length=6, image_size=16, layout="libero")
    cfg = fit_policy_to_dataset(get_preset("rdvla", "micro"), LeRobotDatasetReader(data))
    assert cfg.policy.cameras == ("image", "image2")
    assert "['image', 'image2']" in capsys.readouterr().out
    # the run config and the checkpoint record them
    assert _train(data, tmp_path / "run", "rdvla") == 0
    saved = json.loads((tmp_path / "run" / "checkpoints" / "last" / "config.json").read_text())
    assert saved["policy"]["cameras"] == ["image", "image2"]
    from latentvla.policy import Policy

    assert Policy.from_pretrained(tmp_path / "run" / "checkpoints" / "last").config.cameras == ("image", "image2")
    assert _train(data, tmp_path / "run", "rdvla", "--steps", "3", "--resume") == 0  # resume agrees with itself


def test_explicitly_named_missing_camera_is_still_refused(tmp_path):
    data = write_synthetic_dataset(tmp_path / "lib", num_episodes=2, length=6, image_size=16, layout="libero")
    cfg = apply_overrides(get_preset("rdvla", "micro"), ["policy.cameras=wrist"])
    with pytest.raises(ValueError, match=r"cameras \['wrist'\] are not in dataset .* policy.cameras=image,image2"):
        fit_policy_to_dataset(cfg, LeRobotDatasetReader(data))
    cfg = apply_overrides(get_preset("rdvla", "micro"), ["policy.cameras=image2"])
    assert fit_policy_to_dataset(cfg, LeRobotDatasetReader(data)).policy.cameras == ("image2",)


# ------------------------------------------------------------------------------- 7: image size
def test_image_size_other_than_the_dataset_is_refused(tmp_path):
    data = write_synthetic_dataset(tmp_path / "ds", num_episodes=1, length=4, image_size=32)
    reader = LeRobotDatasetReader(data)
    cfg = apply_overrides(get_preset("rdvla", "micro"), ["policy.image_size=96"])
    with pytest.raises(ValueError, match=r"policy.image_size=96 but dataset .* stores 32x32 images"):
        fit_policy_to_dataset(cfg, reader)
    ok = apply_overrides(get_preset("rdvla", "micro"), ["policy.image_size=32"])
    assert fit_policy_to_dataset(ok, reader).policy.image_size == 32
    assert fit_policy_to_dataset(get_preset("rdvla", "micro"), reader).policy.image_size == 32  # preset default


# ------------------------------------------------------------------------------- 2: finite sensor sentinels
def _write(root: Path, episodes: list[dict]) -> Path:
    from latentvla.data.lerobot import DatasetWriter

    writer = DatasetWriter(root, fps=10, robot_type="synthetic", overwrite=True)
    for i, ep in enumerate(episodes):
        writer.add_episode(ep, key=f"e/{i}")
    return writer.finalize()


def _episodes(n: int = 3, length: int = 8) -> list[dict]:
    from latentvla.data.synthetic import synthetic_episodes

    return synthetic_episodes(n, length, 16)


@pytest.mark.parametrize("key", ["action", "observation.state"])
def test_sentinel_value_with_recomputed_stats_is_refused_naming_column_episode_frame(tmp_path, key, capsys):
    episodes = _episodes()
    episodes[1][key] = np.array(episodes[1][key], dtype=np.float32)
    episodes[1][key][5, 2] = 3e38  # finite: passes the NaN/inf check; the writer's stats include it
    data = _write(tmp_path / "ds", episodes)
    assert LeRobotDatasetReader(data).stats[key]["max"][2] > 1e38
    from latentvla.data.dataset import VLADataset

    with pytest.raises(DatasetFormatError, match=rf"column '{key}' holds 3e\+38 at episode 1, frame 5 \(dim"):
        VLADataset(data, chunk_size=2)
    assert _train(data, tmp_path / "run", "rdvla") == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "episode 1, frame 5" in err
    assert not (tmp_path / "run" / "checkpoints").exists()  # nothing published


def test_ordinary_ranges_pass_the_magnitude_check(tmp_path):
    from latentvla.data.validate import validate_dataset

    episodes = _episodes()
    for ep in episodes:  # a binary gripper (constant on most frames), joint ticks in the 1e5 range
        ep["action"] = np.array(ep["action"], dtype=np.float32)
        ep["action"][:, 3] = -1.0
        ep["observation.state"] = np.array(ep["observation.state"], dtype=np.float32) * 1e5
    episodes[0]["action"][0, 3] = 1.0
    validate_dataset(LeRobotDatasetReader(_write(tmp_path / "ds", episodes)))
    for name in ("lr_img", "lr_vid", "lr21_vid"):  # LeRobot-written fixtures: their stats describe their data
        validate_dataset(LeRobotDatasetReader(FIXTURES / name))


FIXTURES = Path(
    os.environ.get(
        "LATENTVLA_LEROBOT_FIXTURES",
        Path(__file__).resolve().parents[2] / "shared" / "fixtures" / "lerobot-written",
    )
)


# ------------------------------------------------------------------------------- 7: stats.json vs the data
def _edit_stats(data: Path, edit) -> None:
    path = data / "meta" / "stats.json"
    stats = json.loads(path.read_text())
    edit(stats)
    path.write_text(json.dumps(stats))


def test_stats_that_do_not_cover_the_data_are_refused(tmp_path):
    from latentvla.data.validate import validate_dataset

    data = _write(tmp_path / "ds", _episodes())
    _edit_stats(data, lambda s: s["action"].update(max=[v - 0.5 for v in s["action"]["max"]]))
    with pytest.raises(
        DatasetFormatError,
        match=r"stats.json: 'action' dimension 0 spans .* in the stats but the "
        r"data holds .* at episode \d+, frame \d+",
    ):
        validate_dataset(LeRobotDatasetReader(data))


def test_stats_absurdly_wider_than_the_data_are_refused(tmp_path):
    from latentvla.data.validate import validate_dataset

    data = _write(tmp_path / "ds", _episodes())
    _edit_stats(data, lambda s: s["observation.state"].update(max=[1e30] * len(s["observation.state"]["max"])))
    with pytest.raises(DatasetFormatError, match=r"'observation.state' dimension 0 spans .*normalization would"):
        validate_dataset(LeRobotDatasetReader(data))


def test_resume_refuses_data_changed_under_unchanged_stats(tmp_path, capsys):
    data = write_synthetic_dataset(tmp_path / "ds", num_episodes=2, length=6, image_size=16)
    assert _train(data, tmp_path / "run", "rdvla") == 0
    path = next((data / "data").rglob("*.parquet"))
    table = pq.read_table(path)
    i = table.column_names.index("action")
    swapped = table.column("action").to_pylist()
    swapped[0], swapped[1] = swapped[1], swapped[0]  # same values, same stats, different data
    pq.write_table(table.set_column(i, table.schema.field(i), pa.array(swapped, table.schema.field(i).type)), path)
    capsys.readouterr()
    assert _train(data, tmp_path / "run", "rdvla", "--steps", "3", "--resume") == 2
    assert "values of 'action'" in capsys.readouterr().err


# ------------------------------------------------------------------------------- 7: info.json shape vs the data
def test_info_shape_that_disagrees_with_the_data_names_file_and_column(tmp_path, capsys):
    data = write_synthetic_dataset(tmp_path / "ds", num_episodes=2, length=6, image_size=16)
    path = data / "meta" / "info.json"
    info = json.loads(path.read_text())
    info["features"]["observation.state"]["shape"] = [5]  # the data has 4
    path.write_text(json.dumps(info))
    with pytest.raises(
        DatasetFormatError,
        match=r"file-000.parquet: column 'observation.state' holds 4 values per "
        r"frame but meta/info.json declares shape \[5\]",
    ):
        LeRobotDatasetReader(data).column("observation.state")
    assert _train(data, tmp_path / "run", "rdvla") == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "'observation.state'" in err and "file-000.parquet" in err


# ------------------------------------------------------------------------------- 7: NaN in cot.bbox
def test_nan_box_is_refused_at_open(tmp_path):
    from latentvla.data.dataset import VLADataset

    path = write_synthetic_dataset(tmp_path / "ds", num_episodes=3, length=8, image_size=16)
    file = next((path / "data").rglob("*.parquet"))
    table = pq.read_table(file)  # the writer refuses NaN itself; a dataset written elsewhere may hold one
    boxes = table.column("cot.bbox").to_pylist()
    boxes[2 * 8 + 4][1] = float("nan")
    i = table.column_names.index("cot.bbox")
    pq.write_table(table.set_column(i, table.schema.field(i), pa.array(boxes, table.schema.field(i).type)), file)
    with pytest.raises(DatasetFormatError, match=r"column 'cot.bbox' holds NaN at episode 2, frame 4 .*annotate"):
        VLADataset(path, chunk_size=2)


# ------------------------------------------------------------------------------- 7: dataset info, 0 episodes
def test_dataset_info_on_an_empty_dataset(tmp_path, capsys):
    data = write_synthetic_dataset(tmp_path / "ds", num_episodes=1, length=4, image_size=16)
    path = data / "meta" / "episodes" / "chunk-000" / "file-000.parquet"
    pq.write_table(pq.read_table(path).slice(0, 0), path)
    assert cli(["dataset", "info", str(data)]) == 0
    out = capsys.readouterr().out
    assert "episodes 0   frames 0" in out and "the dataset is empty" in out
    assert cli(["dataset", "info", str(data), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["cot_coverage"] == 0.0
