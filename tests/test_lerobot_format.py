"""LeRobot v3.0 writer/reader round trip and layout, atomic/resumable writes, v2.1 reading, corrupt-file errors."""

import io
import json

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from PIL import Image

from latentvla.data.lerobot import DatasetFormatError, DatasetWriter, LeRobotDatasetReader
from latentvla.data.stats import compute_stats, stats_to_json
from latentvla.data.synthetic import synthetic_episode, synthetic_episodes, write_synthetic_dataset

CAM = "observation.images.corner4"


def _assert_episode_equal(a: dict, b: dict) -> None:
    assert set(a) == set(b), set(a) ^ set(b)
    for key, value in a.items():
        if isinstance(value, np.ndarray):
            assert value.dtype == b[key].dtype, key
            np.testing.assert_array_equal(value, b[key], err_msg=key)
        else:
            assert value == b[key], key


def test_roundtrip_arrays_images_strings_meta(tmp_path):
    root = write_synthetic_dataset(tmp_path / "ds", num_episodes=4, length=12, cameras=("corner4", "top"))
    reader = LeRobotDatasetReader(root)
    assert reader.version == "v3.0" and reader.num_episodes == 4 and reader.num_frames == 48
    assert reader.camera_keys == [CAM, "observation.images.top"]
    for i, expected in enumerate(synthetic_episodes(4, 12, cameras=("corner4", "top"))):
        _assert_episode_equal(expected, reader.episode(i))
    ep = reader.episodes[3]
    assert ep["key"] == "synthetic/0003" and ep["success"] is True and ep["task_name"] == "synthetic-blue"
    assert (ep["dataset_from_index"], ep["dataset_to_index"], ep["length"]) == (36, 48, 12)
    assert reader.column("cot.subtask")[12] == synthetic_episodes(2, 12)[1]["cot.subtask"][0]


def test_v3_layout(tmp_path):
    root = write_synthetic_dataset(tmp_path / "ds", num_episodes=3, length=10)
    info = json.loads((root / "meta/info.json").read_text())
    assert info["codebase_version"] == "v3.0" and info["fps"] == 10 and info["video_path"] is None
    assert (info["total_episodes"], info["total_frames"], info["total_tasks"]) == (3, 30, 2)
    assert info["splits"] == {"train": "0:3"} and info["chunks_size"] == 1000
    assert info["expert_success_rate"] == 1.0  # extra_info merged
    feats = info["features"]
    assert feats[CAM] == {"dtype": "image", "shape": [32, 32, 3], "names": ["height", "width", "channels"]}
    assert feats["observation.state"]["shape"] == [4] and feats["cot.text"]["dtype"] == "string"
    assert feats["cot.bbox_visible"]["dtype"] == "bool"
    for key in ("index", "episode_index", "frame_index", "task_index"):
        assert feats[key]["dtype"] == "int64"

    stats = json.loads((root / "meta/stats.json").read_text())
    assert set(stats["action"]) == {"mean", "std", "min", "max", "q01", "q99", "count"}
    assert np.asarray(stats[CAM]["mean"]).shape == (3, 1, 1) and stats["action"]["count"] == [30]

    tasks = pq.read_table(root / "meta/tasks.parquet")
    assert tasks.column("task").to_pylist() == [
        "push the red block to the goal",
        "move the blue block to the goal",
    ]
    assert tasks.column("task_index").to_pylist() == [0, 1]
    assert json.loads(tasks.schema.metadata[b"pandas"])["index_columns"] == ["task"]

    episodes = pq.read_table(root / "meta/episodes/chunk-000/file-000.parquet")
    for column in (
        "episode_index",
        "tasks",
        "length",
        "data/chunk_index",
        "data/file_index",
        "dataset_from_index",
        "dataset_to_index",
        "stats/action/mean",
        "success",
        "task_name",
        "episode_seed",
    ):
        assert column in episodes.column_names, column
    assert episodes.column("tasks").to_pylist()[1] == ["move the blue block to the goal"]

    data = pq.read_table(root / "data/chunk-000/file-000.parquet")
    assert data.column_names[:7] == [
        "index",
        "episode_index",
        "frame_index",
        "timestamp",
        "task_index",
        "observation.state",
        "action",
    ]
    assert data.column("index").to_pylist() == list(range(30))
    assert pa.types.is_fixed_size_list(data.schema.field("action").type)
    assert data.schema.field(CAM).type == pa.struct([("bytes", pa.binary()), ("path", pa.string())])
    png = data.column(CAM)[0].as_py()["bytes"]
    assert np.asarray(Image.open(io.BytesIO(png))).shape == (32, 32, 3)
    assert data.schema.field("cot.text").type == pa.string()
    assert not (tmp_path / "ds.partial").exists()


def test_interrupted_write_resume_and_refusals(tmp_path):
    root = tmp_path / "ds"
    writer = DatasetWriter(root, fps=10, robot_type="test")
    for i in range(2):
        episode, meta = synthetic_episode(i, 8)
        writer.add_episode(episode, key=f"k{i}", meta=meta)
    del writer  # "crash" before finalize
    assert not root.exists() and (tmp_path / "ds.partial").is_dir()
    with pytest.raises(DatasetFormatError, match="--resume"):
        LeRobotDatasetReader(root)
    with pytest.raises(FileExistsError, match="--resume"):
        DatasetWriter(root, fps=10, robot_type="test")
    writer = DatasetWriter(root, fps=10, robot_type="test", resume=True)
    assert writer.done_keys() == {"k0", "k1"}
    with pytest.raises(ValueError, match="already written"):
        writer.add_episode(synthetic_episode(0, 8)[0], key="k0")
    for i in range(2, 4):
        episode, meta = synthetic_episode(i, 8)
        writer.add_episode(episode, key=f"k{i}", meta=meta)
    writer.finalize()
    reader = LeRobotDatasetReader(root)
    assert [e["key"] for e in reader.episodes] == ["k0", "k1", "k2", "k3"]
    _assert_episode_equal(synthetic_episode(1, 8)[0], reader.episode(1))
    with pytest.raises(FileExistsError, match="overwrite"):
        DatasetWriter(root, fps=10, robot_type="test")
    write_synthetic_dataset(root, num_episodes=1, length=5, overwrite=True)
    assert LeRobotDatasetReader(root).num_frames == 5


def test_add_episode_validation(tmp_path):
    writer = DatasetWriter(tmp_path / "ds", fps=10, robot_type="test")
    episode = synthetic_episode(0, 6)[0]
    with pytest.raises(ValueError, match="has 6 frames but 'action' has 5"):
        writer.add_episode(episode | {"action": episode["action"][:5]}, key="a")
    with pytest.raises(KeyError, match="'task'"):
        writer.add_episode({k: v for k, v in episode.items() if k != "task"}, key="a")
    writer.add_episode(episode, key="a")
    with pytest.raises(ValueError, match="observation.state"):
        writer.add_episode(episode | {"observation.state": np.zeros((6, 7), np.float32)}, key="b")
    with pytest.raises(ValueError, match="No episodes"):
        DatasetWriter(tmp_path / "empty", fps=10, robot_type="test").finalize()


def _write_v21(root, episodes):
    """A synthetic LeRobot v2.1 dataset: per-episode parquet + jsonl metadata (HF datasets encoding)."""
    (root / "meta").mkdir(parents=True)
    tasks = list(dict.fromkeys(e["task"] for e in episodes))
    image_type = pa.struct([("bytes", pa.binary()), ("path", pa.string())])
    start, rows, stats_rows = 0, [], []
    for i, ep in enumerate(episodes):
        n = len(ep["action"])
        pngs = []
        for frame in ep[CAM]:
            buf = io.BytesIO()
            Image.fromarray(frame).save(buf, format="PNG")
            pngs.append({"bytes": buf.getvalue(), "path": f"frame_{len(pngs):06d}.png"})
        table = pa.table(
            {
                "observation.state": pa.array(ep["observation.state"].tolist(), pa.list_(pa.float32())),
                "action": pa.array(ep["action"].tolist(), pa.list_(pa.float32())),
                CAM: pa.array(pngs, image_type),
                "timestamp": pa.array(ep["timestamp"]),
                "frame_index": pa.array(np.arange(n)),
                "episode_index": pa.array(np.full(n, i)),
                "index": pa.array(np.arange(start, start + n)),
                "task_index": pa.array(np.full(n, tasks.index(ep["task"]))),
            }
        )
        path = root / f"data/chunk-000/episode_{i:06d}.parquet"
        path.parent.mkdir(parents=True, exist_ok=True)
        pq.write_table(table, path)
        rows.append({"episode_index": i, "tasks": [ep["task"]], "length": n})
        arrays = {k: ep[k] for k in ("observation.state", "action", CAM)}
        stats_rows.append({"episode_index": i, "stats": stats_to_json(compute_stats(arrays))})
        start += n
    spec = {"dtype": "float32", "shape": [4], "names": None}
    info = {
        "codebase_version": "v2.1",
        "robot_type": "test",
        "total_episodes": len(episodes),
        "total_frames": start,
        "total_tasks": len(tasks),
        "total_videos": 0,
        "total_chunks": 1,
        "chunks_size": 1000,
        "fps": 10,
        "splits": {"train": f"0:{len(episodes)}"},
        "video_path": None,
        "data_path": "data/chunk-{episode_chunk:03d}/episode_{episode_index:06d}.parquet",
        "features": {
            "observation.state": spec,
            "action": spec,
            CAM: {"dtype": "image", "shape": [32, 32, 3], "names": ["height", "width", "channel"]},
            "timestamp": {"dtype": "float32", "shape": [1], "names": None},
            **{
                k: {"dtype": "int64", "shape": [1], "names": None}
                for k in ("frame_index", "episode_index", "index", "task_index")
            },
        },
    }
    (root / "meta/info.json").write_text(json.dumps(info))
    (root / "meta/tasks.jsonl").write_text(
        "".join(json.dumps({"task_index": j, "task": t}) + "\n" for j, t in enumerate(tasks))
    )
    (root / "meta/episodes.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    (root / "meta/episodes_stats.jsonl").write_text("".join(json.dumps(r) + "\n" for r in stats_rows))
    return root


def test_v21_reader(tmp_path):
    episodes = [
        {k: v for k, v in e.items() if k in ("observation.state", "action", CAM, "timestamp", "task")}
        for e in synthetic_episodes(3, 7, with_cot=False)
    ]
    reader = LeRobotDatasetReader(_write_v21(tmp_path / "v21", episodes))
    assert reader.version == "v2.1" and reader.num_episodes == 3 and reader.num_frames == 21
    assert reader.tasks == ["push the red block to the goal", "move the blue block to the goal"]
    assert reader.episodes[2]["dataset_from_index"] == 14
    for i, expected in enumerate(episodes):
        _assert_episode_equal(expected, reader.episode(i))
    whole = np.concatenate([e["action"] for e in episodes])
    np.testing.assert_allclose(reader.stats["action"]["mean"], whole.mean(0), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(reader.stats["action"]["max"], whole.max(0))


def test_corrupt_and_missing_files_name_the_file(tmp_path):
    root = write_synthetic_dataset(tmp_path / "ds", num_episodes=2, length=6)
    data = root / "data/chunk-000/file-000.parquet"
    data.write_bytes(data.read_bytes()[: data.stat().st_size // 2])  # truncate
    reader = LeRobotDatasetReader(root)
    with pytest.raises(DatasetFormatError, match="file-000.parquet.*corrupt or truncated"):
        reader.episode(0)
    info = root / "meta/info.json"
    info.write_text(info.read_text().replace('"v3.0"', '"v9.9"'))
    with pytest.raises(DatasetFormatError, match="info.json: codebase_version 'v9.9'"):
        LeRobotDatasetReader(root)
    info.unlink()
    with pytest.raises(DatasetFormatError, match="info.json: missing"):
        LeRobotDatasetReader(root)
    with pytest.raises(DatasetFormatError, match="no such dataset"):
        LeRobotDatasetReader(tmp_path / "nothing")


def test_rejects_nan_and_non_scalar_meta(tmp_path):
    writer = DatasetWriter(tmp_path / "ds", fps=10, robot_type="test")
    episode = synthetic_episode(0, 4)[0]
    state = episode["observation.state"].copy()
    state[1, 0] = np.nan
    with pytest.raises(ValueError, match="'observation.state' contains NaN"):
        writer.add_episode(episode | {"observation.state": state}, key="a")
    with pytest.raises(TypeError, match="meta 'extra' must be a scalar"):
        writer.add_episode(episode, key="a", meta={"extra": [1, 2]})
