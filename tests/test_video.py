"""Video datasets: LeRobot v3.0 / v2.1 video layouts written here with PyAV + pyarrow directly (not by
latentvla's writer), AV1 and H.264, timestamp tolerance, decode errors naming file and timestamp, lazy decoding of
only a sample's frames, our writer's video mode, `dataset info` and `dataset convert`, and training on them."""

import json
from pathlib import Path

import av
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch

from latentvla.cli import main as cli_main
from latentvla.data.dataset import VLADataset
from latentvla.data.decoding import DECODE_COUNTS
from latentvla.data.lerobot import DatasetFormatError, LeRobotDatasetReader
from latentvla.data.synthetic import write_synthetic_dataset

torch.set_num_threads(1)
FPS, SIDE, LENGTHS = 10, 32, (7, 5, 9)
KEYS = ("observation.images.image", "observation.images.image2")
TASKS = ["put the bowl on the plate", "open the drawer"]


def _frames(episode: int, length: int, cam: int) -> np.ndarray:
    """Smooth, distinct frames (video codecs are lossy on noise): a gradient plus a square moving with t."""
    y, x = np.mgrid[0:SIDE, 0:SIDE]
    out = np.zeros((length, SIDE, SIDE, 3), np.uint8)
    for t in range(length):
        out[t, ..., 0] = (x * 6 + 40 * episode) % 256
        out[t, ..., 1] = (y * 6 + 80 * cam) % 256
        out[t, ..., 2] = 60
        out[t, 4:12, 2 + 3 * t : 10 + 3 * t] = 250
    return out


def _encode(path: Path, frames: np.ndarray, codec: str) -> None:
    """What LeRobot's `encode_video_frames` does (PyAV, yuv420p, g=2, crf=30)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with av.open(str(path), "w") as out:
        stream = out.add_stream(codec, rate=FPS, options={"g": "2", "crf": "30"})
        stream.width = stream.height = SIDE
        stream.pix_fmt = "yuv420p"
        for f in frames:
            for packet in stream.encode(av.VideoFrame.from_ndarray(f, format="rgb24")):
                out.mux(packet)
        for packet in stream.encode():
            out.mux(packet)


def _data_columns(episode: int, length: int, start: int) -> dict:
    t = np.arange(length)
    state = np.stack([t * 0.1 + episode, np.sin(t), np.cos(t), np.full(length, episode)], 1).astype(np.float32)
    action = np.stack([np.ones(length) * episode, t * 0.05, -t * 0.05, np.sign(t - 2.5)], 1).astype(np.float32)
    return {
        "observation.state": pa.array(state.tolist(), pa.list_(pa.float32())),
        "action": pa.array(action.tolist(), pa.list_(pa.float32())),
        "timestamp": pa.array((t / FPS).astype(np.float32)),
        "frame_index": pa.array(t.astype(np.int64)),
        "episode_index": pa.array(np.full(length, episode, np.int64)),
        "index": pa.array(np.arange(start, start + length, dtype=np.int64)),
        "task_index": pa.array(np.full(length, episode % 2, np.int64)),
    }


def _stats() -> dict:
    vec = {"min": [-2.0] * 4, "max": [3.0] * 4, "mean": [0.5] * 4, "std": [1.0] * 4, "count": [21]}
    return {"observation.state": vec, "action": vec}


def _info(version: str, codec: str) -> dict:
    video = {
        "dtype": "video",
        "shape": [SIDE, SIDE, 3],
        "names": ["height", "width", "channels"],
        "info": {
            "video.height": SIDE,
            "video.width": SIDE,
            "video.codec": codec,
            "video.pix_fmt": "yuv420p",
            "video.is_depth_map": False,
            "video.fps": FPS,
            "video.channels": 3,
            "has_audio": False,
        },
    }
    features = {k: video for k in KEYS}
    features |= {
        "observation.state": {"dtype": "float32", "shape": [4], "names": None},
        "action": {"dtype": "float32", "shape": [4], "names": None},
    }
    features |= {
        k: {"dtype": d, "shape": [1], "names": None}
        for k, d in (
            ("timestamp", "float32"),
            ("frame_index", "int64"),
            ("episode_index", "int64"),
            ("index", "int64"),
            ("task_index", "int64"),
        )
    }
    info = {
        "codebase_version": version,
        "robot_type": "panda",
        "fps": FPS,
        "features": features,
        "total_episodes": len(LENGTHS),
        "total_frames": sum(LENGTHS),
        "total_tasks": 2,
        "chunks_size": 1000,
        "splits": {"train": f"0:{len(LENGTHS)}"},
    }
    if version == "v3.0":
        return info | {
            "data_path": "data/chunk-{chunk_index:03d}/file-{file_index:03d}.parquet",
            "video_path": "videos/{video_key}/chunk-{chunk_index:03d}/file-{file_index:03d}.mp4",
            "data_files_size_in_mb": 100,
            "video_files_size_in_mb": 200,
        }
    return info | {
        "data_path": "data/chunk-{episode_chunk:03d}/episode_{episode_index:06d}.parquet",
        "video_path": "videos/chunk-{episode_chunk:03d}/{video_key}/episode_{episode_index:06d}.mp4",
        "total_videos": len(LENGTHS) * len(KEYS),
        "total_chunks": 1,
    }


def write_lerobot_v3(root: Path, codec: str = "libsvtav1") -> Path:
    """LeRobot v3.0: one data file, one video file per camera with all episodes back to back."""
    (root / "meta" / "episodes" / "chunk-000").mkdir(parents=True)
    starts = np.cumsum((0, *LENGTHS))
    data = [pa.table(_data_columns(e, n, int(starts[e]))) for e, n in enumerate(LENGTHS)]
    (root / "data" / "chunk-000").mkdir(parents=True)
    pq.write_table(pa.concat_tables(data), root / "data" / "chunk-000" / "file-000.parquet")
    for c, key in enumerate(KEYS):
        frames = np.concatenate([_frames(e, n, c) for e, n in enumerate(LENGTHS)])
        _encode(root / "videos" / key / "chunk-000" / "file-000.mp4", frames, codec)
    rows = []
    for e, n in enumerate(LENGTHS):
        row = {
            "episode_index": e,
            "tasks": [TASKS[e % 2]],
            "length": n,
            "data/chunk_index": 0,
            "data/file_index": 0,
            "dataset_from_index": int(starts[e]),
            "dataset_to_index": int(starts[e + 1]),
            "meta/episodes/chunk_index": 0,
            "meta/episodes/file_index": 0,
        }
        for key in KEYS:
            row |= {
                f"videos/{key}/chunk_index": 0,
                f"videos/{key}/file_index": 0,
                f"videos/{key}/from_timestamp": starts[e] / FPS,
                f"videos/{key}/to_timestamp": starts[e + 1] / FPS,
            }
        rows.append(row)
    pq.write_table(pa.Table.from_pylist(rows), root / "meta" / "episodes" / "chunk-000" / "file-000.parquet")
    tasks = pa.table({"task_index": pa.array([0, 1], pa.int64()), "__index_level_0__": TASKS})
    pq.write_table(tasks, root / "meta" / "tasks.parquet")
    (root / "meta" / "stats.json").write_text(json.dumps(_stats()))
    (root / "meta" / "info.json").write_text(json.dumps(_info("v3.0", "av1" if "av1" in codec else "h264")))
    return root


def write_lerobot_v21(root: Path, codec: str = "libx264") -> Path:
    """LeRobot v2.1: one data file and one video file per episode and camera, jsonl metadata."""
    (root / "meta").mkdir(parents=True)
    starts = np.cumsum((0, *LENGTHS))
    for e, n in enumerate(LENGTHS):
        path = root / "data" / "chunk-000" / f"episode_{e:06d}.parquet"
        path.parent.mkdir(parents=True, exist_ok=True)
        pq.write_table(pa.table(_data_columns(e, n, int(starts[e]))), path)
        for c, key in enumerate(KEYS):
            _encode(root / "videos" / "chunk-000" / key / f"episode_{e:06d}.mp4", _frames(e, n, c), codec)
    lines = lambda rows: "\n".join(json.dumps(r) for r in rows) + "\n"  # noqa: E731
    (root / "meta" / "tasks.jsonl").write_text(lines({"task_index": i, "task": t} for i, t in enumerate(TASKS)))
    eps = [{"episode_index": e, "tasks": [TASKS[e % 2]], "length": n} for e, n in enumerate(LENGTHS)]
    (root / "meta" / "episodes.jsonl").write_text(lines(eps))
    stats = [{"episode_index": e, "stats": _stats()} for e in range(len(LENGTHS))]
    (root / "meta" / "episodes_stats.jsonl").write_text(lines(stats))
    (root / "meta" / "info.json").write_text(json.dumps(_info("v2.1", "av1" if "av1" in codec else "h264")))
    return root


LAYOUTS = {
    "v3.0-av1": lambda r: write_lerobot_v3(r, "libsvtav1"),
    "v3.0-h264": lambda r: write_lerobot_v3(r, "libx264"),
    "v2.1-h264": lambda r: write_lerobot_v21(r, "libx264"),
    "v2.1-av1": lambda r: write_lerobot_v21(r, "libsvtav1"),
}


@pytest.fixture(scope="module", params=sorted(LAYOUTS))
def lerobot_video(request, tmp_path_factory):
    return LAYOUTS[request.param](tmp_path_factory.mktemp("lerobot") / "ds")


def _err(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.abs(a.astype(np.float64) - b.astype(np.float64)).mean())


def test_reads_lerobot_video_layouts(lerobot_video, capsys):
    assert cli_main(["dataset", "info", str(lerobot_video)]) == 0
    out = capsys.readouterr().out
    assert f"camera {KEYS[1]}: video " in out and f"{SIDE}x{SIDE}" in out and "size on disk" in out
    reader = LeRobotDatasetReader(lerobot_video)
    assert reader.camera_keys == list(KEYS) and reader.num_frames == sum(LENGTHS)
    for e, n in enumerate(LENGTHS):
        ep = reader.episode(e)
        for c, key in enumerate(KEYS):
            assert ep[key].shape == (n, SIDE, SIDE, 3) and ep[key].dtype == np.uint8
            # lossy (4:2:0 chroma, CRF 30) but each frame is its own: nearer to frame t than to t-1 or t+1
            for t in range(n):
                truth = _frames(e, n, c)
                assert _err(ep[key][t], truth[t]) < 8
                assert all(
                    _err(ep[key][t], truth[t]) < _err(ep[key][t], truth[s]) for s in (t - 1, t + 1) if 0 <= s < n
                )


def test_dataset_sample_from_video_decodes_only_its_frames(lerobot_video):
    DECODE_COUNTS.clear()
    ds = VLADataset(lerobot_video, chunk_size=3, cameras=["image", "image2"])
    assert sum(DECODE_COUNTS.values()) == 0  # opening decodes nothing
    i = LENGTHS[0] + 2  # episode 1, frame 2
    s = ds[i]
    # primary: frames 2 and 3 in one pass, second camera: frame 2; GOP 2 adds at most one frame before each seek
    assert 3 <= DECODE_COUNTS["video"] <= 5
    truth = _frames(1, LENGTHS[1], 0)
    to_u8 = lambda x: (x.permute(1, 2, 0).numpy() * 255).round().astype(np.uint8)  # noqa: E731
    assert _err(to_u8(s[KEYS[0]]), truth[2]) < 8 and _err(to_u8(s[KEYS[0] + ".next"]), truth[3]) < 8
    assert _err(to_u8(s[KEYS[1]]), _frames(1, LENGTHS[1], 1)[2]) < 8
    last = ds[LENGTHS[0] - 1]
    assert bool(last["next_image_is_pad"])
    assert s["task"] == TASKS[1] and int(s["episode_index"]) == 1 and int(s["frame_index"]) == 2


def test_timestamp_outside_tolerance_names_file_and_timestamp(tmp_path):
    root = write_lerobot_v3(tmp_path / "ds")
    path = root / "meta" / "episodes" / "chunk-000" / "file-000.parquet"
    rows = pq.read_table(path).to_pylist()
    rows[1][f"videos/{KEYS[0]}/from_timestamp"] += 0.05  # half a frame off: LeRobot's tolerance is 1e-4 s
    pq.write_table(pa.Table.from_pylist(rows), path)
    ds = VLADataset(root, chunk_size=2, cameras=["image"])
    with pytest.raises(DatasetFormatError, match=r"file-000\.mp4: no frame at timestamp 0\.75"):
        ds[LENGTHS[0]]


def test_corrupt_video_error_names_the_file(tmp_path):
    root = write_lerobot_v21(tmp_path / "ds")
    clip = root / "videos" / "chunk-000" / KEYS[0] / "episode_000001.mp4"
    clip.write_bytes(b"not a video at all" * 10)
    ds = VLADataset(root, chunk_size=2, cameras=["image"])
    ds[0]  # other episodes still read
    with pytest.raises(DatasetFormatError, match=r"episode_000001\.mp4: cannot open video"):
        ds[LENGTHS[0]]


def test_writer_video_mode_round_trip_and_info(tmp_path, capsys):
    cams = ("corner4", "top")
    png = write_synthetic_dataset(tmp_path / "png", num_episodes=3, length=9, image_size=SIDE, cameras=cams)
    assert cli_main(["dataset", "convert", str(png), str(tmp_path / "vid"), "--video"]) == 0
    vid = LeRobotDatasetReader(tmp_path / "vid")
    info = vid.info["features"]["observation.images.corner4"]
    assert info["dtype"] == "video" and vid.info["video_path"].startswith("videos/{video_key}/chunk-")
    assert {k: info["info"][k] for k in ("video.codec", "video.pix_fmt", "video.fps")} == {
        "video.codec": "av1",
        "video.pix_fmt": "yuv420p",
        "video.fps": 10,
    }
    with av.open(str(vid.video_location(0, "observation.images.corner4").path)) as c:
        assert c.streams.video[0].codec_context.name in ("libdav1d", "av1")
    src = LeRobotDatasetReader(png)
    for e in range(3):
        a, b = src.episode(e), vid.episode(e)
        assert a.keys() == b.keys() and a["task"] == b["task"]
        np.testing.assert_array_equal(a["action"], b["action"])
        assert a["cot.subtask"] == b["cot.subtask"]
        for key in ("observation.images.corner4", "observation.images.top"):
            assert _err(a[key], b[key]) < 6
    assert vid.episodes[2]["videos/observation.images.top/from_timestamp"] == pytest.approx(1.8)
    assert set(vid.stats) == set(src.stats)
    capsys.readouterr()
    assert cli_main(["dataset", "info", str(tmp_path / "vid")]) == 0
    out = capsys.readouterr().out
    assert "video av1 yuv420p" in out and "size on disk" in out
    assert cli_main(["dataset", "convert", str(tmp_path / "vid"), str(tmp_path / "back"), "--images"]) == 0
    back = LeRobotDatasetReader(tmp_path / "back")
    assert back.features["observation.images.top"]["dtype"] == "image" and back.info["video_path"] is None
    np.testing.assert_array_equal(
        back.episode(1)["observation.images.top"], vid.episode(1)["observation.images.top"]
    )


def test_convert_refuses_bad_requests(tmp_path, capsys):
    png = write_synthetic_dataset(tmp_path / "png", num_episodes=1, length=4, image_size=SIDE)
    assert cli_main(["dataset", "convert", str(png), str(png), "--video"]) == 2
    assert "must differ" in capsys.readouterr().err
    assert cli_main(["dataset", "convert", str(tmp_path / "nope"), str(tmp_path / "x"), "--video"]) == 2
    assert "no such dataset directory" in capsys.readouterr().err


@pytest.mark.parametrize("layout", ["v3.0-av1", "v2.1-h264"])
def test_train_steps_on_lerobot_video_dataset(layout, tmp_path):
    root = LAYOUTS[layout](tmp_path / "ds")
    assert cli_main(["annotate", str(root)]) == 0  # lara learns CoT: refused on a dataset without cot.*
    argv = [
        "train",
        "--preset",
        "lara",
        "--dataset",
        str(root),
        "--out",
        str(tmp_path / "run"),
        "--steps",
        "5",
        "--batch-size",
        "2",
        "--no-progress",
        "save_every=5",
        "policy.horizon=4",
        "policy.cameras=image,image2",
        "num_workers=1",
    ]
    assert cli_main(argv) == 0
    assert (tmp_path / "run" / "checkpoints" / "000005" / "model.safetensors").is_file()


def _decode_in_child(path: Path, queue) -> None:
    from latentvla.data.video import VideoReader

    queue.put(VideoReader().decode(path, [0.2])[0])


def test_decoding_in_a_forked_worker_after_the_parent_converted_frames(tmp_path):
    """A DataLoader worker forks from a process that may already have turned frames to RGB with PyAV's own
    `to_ndarray` (our reader before the fix, LeRobot's, a user's). PyAV >= 17 caches one multithreaded swscale
    context per thread; the fork copies it without its threads, and a worker using it waited forever (the CI hang
    of av 18.1.1). The reader converts with its own single-thread reformatter."""
    import multiprocessing

    path = tmp_path / "v.mp4"
    frames = _frames(0, 6, 0)
    _encode(path, frames, "libsvtav1")
    with av.open(str(path)) as container:  # the parent converts through PyAV's cached (threaded) reformatter
        first = next(container.decode(video=0)).to_ndarray(format="rgb24")
    ctx = multiprocessing.get_context("fork")
    queue = ctx.Queue()
    child = ctx.Process(target=_decode_in_child, args=(path, queue))
    child.start()
    child.join(timeout=60)
    if child.is_alive():
        child.kill()
        pytest.fail("decoding a video frame in a forked process hung")
    assert child.exitcode == 0
    got = queue.get(timeout=5)
    assert got.shape == first.shape and _err(got, frames[2]) < 12


def test_annotate_keeps_a_video_dataset_video(tmp_path):
    from latentvla.data.annotate import annotate_dataset
    from latentvla.data.convert import convert_dataset

    png = write_synthetic_dataset(tmp_path / "png", num_episodes=2, length=8, image_size=SIDE, with_cot=False)
    vid = convert_dataset(png, tmp_path / "vid", video=True)
    annotate_dataset(vid)
    reader = LeRobotDatasetReader(vid)
    assert reader.features["observation.images.corner4"]["dtype"] == "video" and "cot.text" in reader.features
    assert reader.episode(1)["observation.images.corner4"].shape == (8, SIDE, SIDE, 3)


def test_dataset_show_on_a_lerobot_video_dataset(tmp_path):
    root = write_lerobot_v3(tmp_path / "ds")
    out = tmp_path / "sheet.png"
    assert cli_main(["dataset", "show", str(root), "--episode", "2", "--camera", "image2", "--out", str(out)]) == 0
    assert out.stat().st_size > 1000
