"""Expert collection end to end: write, read back, annotation coverage, interrupted runs and --resume."""

import numpy as np
import pytest

from collect_helpers import fake_episode
from latentvla import constants as K
from latentvla.envs import metaworld as _metaworld  # noqa: F401  (sets MUJOCO_GL before mujoco is imported)

pytestmark = pytest.mark.sim


@pytest.fixture(autouse=True)
def _need_sim():
    pytest.importorskip("metaworld")


def test_collect_writes_annotated_dataset(tmp_path):
    from latentvla.cli import main
    from latentvla.data.lerobot import LeRobotDatasetReader

    out = tmp_path / "ds"
    argv = [
        "collect",
        "--env",
        "metaworld",
        "--tasks",
        "reach",
        "--episodes-per-task",
        "2",
        "--image-size",
        "64",
        "--out",
        str(out),
        "--camera",
        "corner4,gripperPOV",
    ]
    assert main(argv) == 0
    reader = LeRobotDatasetReader(out)
    assert reader.num_episodes == 2
    assert set(reader.camera_keys) == {f"{K.OBS_IMAGES}.corner4", f"{K.OBS_IMAGES}.gripperPOV"}
    assert reader.info["latentvla_collect"]["success_rate"] == 1.0
    assert [e["key"] for e in reader.episodes] == ["reach-v3/train/0000", "reach-v3/train/0001"]
    ep = reader.episode(1)
    length = len(ep[K.ACTION])
    assert ep[f"{K.OBS_IMAGES}.corner4"].shape == (length, 64, 64, 3)
    assert ep[K.TASK] == "reach the goal position"
    assert np.all(np.abs(ep[K.ACTION]) <= 1.0)
    assert ep[K.PRIV_TARGET_CORNERS].shape == (length, 24)
    assert all(s == "move toward the goal" for s in ep[K.COT_SUBTASK])
    assert np.mean(ep[K.COT_BBOX_VISIBLE]) >= 0.9
    assert ep[K.COT_TEXT][0].startswith("Subtask: move toward the goal. BBox: [")
    # the same (task, episode, seed) reproduces the same first frame
    from latentvla.envs.metaworld import MetaWorldConfig, MetaWorldEnv

    env = MetaWorldEnv(MetaWorldConfig("reach", cameras=("corner4",), image_size=64))
    obs, _ = env.reset(episode=1, split="train", seed=0)
    env.close()
    np.testing.assert_array_equal(obs[f"{K.OBS_IMAGES}.corner4"], ep[f"{K.OBS_IMAGES}.corner4"][0])


def test_collect_into_complete_dataset_is_refused(tmp_path, capsys):
    from latentvla.cli import main

    (tmp_path / "ds" / "meta").mkdir(parents=True)
    assert main(["collect", "--tasks", "reach", "--out", str(tmp_path / "ds")]) == 2
    assert "already holds a complete dataset" in capsys.readouterr().err


def test_interrupted_collection_refuses_then_resumes(tmp_path, monkeypatch):
    from latentvla.data import collect as C
    from latentvla.data.lerobot import LeRobotDatasetReader

    out = tmp_path / "ds"
    kwargs = dict(image_size=64, out=out, progress=False)

    def interrupted(*args, **kw):
        raise KeyboardInterrupt

    with monkeypatch.context() as m:
        m.setattr(C, "_finish", interrupted)
        with pytest.raises(KeyboardInterrupt):
            C.collect("reach", 1, **kwargs)
    assert not out.exists() and out.with_name("ds.partial").is_dir()
    with pytest.raises(FileExistsError, match="--resume"):
        C.collect("reach", 2, **kwargs)
    summary = C.collect("reach", 2, resume=True, **kwargs)
    assert summary["episodes_kept"] == 2 and summary["attempts"] == 2
    reader = LeRobotDatasetReader(out)
    assert reader.num_episodes == 2 and not out.with_name("ds.partial").exists()
    assert {e["key"] for e in reader.episodes} == {"reach-v3/train/0000", "reach-v3/train/0001"}


# --- interruption at every disk write, then --resume: exactly the uninterrupted dataset ---


class _Kill(BaseException):
    """Stands in for SIGKILL: raised *before* a disk operation, so the files are as a kill there leaves them."""


def _fake_rollout(task, episode, **kwargs):
    """Deterministic tiny episodes; some attempts fail, so the failure bookkeeping is exercised too."""
    fails = episode % 3 == 1 if task.startswith("reach") else episode == 0
    ep = fake_episode(task, episode)
    return ep, {"success": not fails, "task_name": task, "episode": episode}


def _dataset_content(root):
    import json

    from latentvla.data.lerobot import LeRobotDatasetReader

    reader = LeRobotDatasetReader(root)
    episodes = [
        (reader.episodes[i]["key"], {k: np.asarray(v).tolist() for k, v in reader.episode(i).items()})
        for i in range(reader.num_episodes)
    ]
    return episodes, json.loads((root / "meta" / "stats.json").read_text()), reader.info


def _collect_with_kill(C, monkeypatch, out, kill_at: int | None, resume: bool = False):
    """Run collect, raising _Kill before the `kill_at`-th disk operation; returns how many operations ran."""
    import os
    import shutil

    import pyarrow.parquet as pq

    count = [0]

    def hook(fn):
        def wrapped(*a, **kw):
            count[0] += 1
            if kill_at is not None and count[0] == kill_at:
                raise _Kill
            return fn(*a, **kw)

        return wrapped

    with monkeypatch.context() as m:
        m.setattr(C, "rollout", _fake_rollout)
        for mod, name in ((os, "replace"), (shutil, "rmtree"), (pq, "write_table")):
            m.setattr(mod, name, hook(getattr(mod, name)))
        try:
            C.collect("reach,drawer-close", 3, image_size=64, out=out, progress=False, resume=resume)
        except _Kill:
            return None
    return count[0]


def test_collect_resume_after_kill_anywhere_equals_uninterrupted(tmp_path, monkeypatch):
    from latentvla.data import collect as C

    total = _collect_with_kill(C, monkeypatch, tmp_path / "ref", None)
    reference = _dataset_content(tmp_path / "ref")
    keys = [k for k, _ in reference[0]]
    assert keys == [
        "reach-v3/train/0000",
        "reach-v3/train/0002",
        "reach-v3/train/0003",
        "drawer-close-v3/train/0001",
        "drawer-close-v3/train/0002",
        "drawer-close-v3/train/0003",
    ]
    assert reference[2]["latentvla_collect"]["attempts"] == 8
    for kill_at in range(1, total + 1):  # every disk operation, the publish step included
        out = tmp_path / f"k{kill_at}"
        assert _collect_with_kill(C, monkeypatch, out, kill_at) is None
        _collect_with_kill(C, monkeypatch, out, None, resume=True)
        assert _dataset_content(out) == reference, f"killed before disk operation {kill_at} of {total}"
        assert not out.with_name(out.name + ".partial").exists() and not (out / "shards").exists()
        assert not out.with_name(out.name + ".collect.json").exists()


@pytest.mark.parametrize("tasks, expected", [("pick-plac", "pick-place"), ("mt11", "mt10")])
def test_collect_unknown_task_or_suite_is_one_line(tasks, expected, tmp_path, capsys):
    from latentvla.cli import main

    assert main(["collect", "--tasks", tasks, "--out", str(tmp_path / "ds")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error:") and expected in err and "Traceback" not in err


def test_collect_video_writes_lerobot_av1_dataset(tmp_path):
    from latentvla.cli import main
    from latentvla.data.lerobot import LeRobotDatasetReader

    out = tmp_path / "vid"
    argv = [
        "collect",
        "--env",
        "metaworld",
        "--tasks",
        "reach",
        "--episodes-per-task",
        "1",
        "--image-size",
        "64",
        "--out",
        str(out),
        "--video",
    ]
    assert main(argv) == 0
    reader = LeRobotDatasetReader(out)
    spec = reader.features[f"{K.OBS_IMAGES}.corner4"]
    assert spec["dtype"] == "video" and spec["info"]["video.codec"] == "av1"
    assert spec["info"]["video.pix_fmt"] == "yuv420p" and reader.info["video_path"] is not None
    assert not list((out / "data").rglob("*.mp4")) and len(list((out / "videos").rglob("*.mp4"))) == 1
    ep = reader.episode(0)
    assert ep[f"{K.OBS_IMAGES}.corner4"].shape == (len(ep[K.ACTION]), 64, 64, 3)


@pytest.mark.slow
def test_collect_in_worker_processes_writes_the_same_bytes_as_in_process(tmp_path):
    """workers=2 (envs/workers.py, results in the order they finish) and workers=1 write identical datasets,
    failed attempts included (seed 1, 60 steps: one of reach's first three episodes fails)."""
    from latentvla.data.collect import collect

    kw = dict(image_size=64, seed=1, max_steps=60, progress=False)
    one = collect("reach", 2, out=tmp_path / "w1", workers=1, **kw)
    two = collect("reach", 2, out=tmp_path / "w2", workers=2, **kw)
    assert one["attempts"] == two["attempts"] > one["episodes_kept"] == two["episodes_kept"] == 2
    files = sorted(p.relative_to(tmp_path / "w1") for p in (tmp_path / "w1").rglob("*") if p.is_file())
    assert files == sorted(p.relative_to(tmp_path / "w2") for p in (tmp_path / "w2").rglob("*") if p.is_file())
    for f in files:
        assert (tmp_path / "w1" / f).read_bytes() == (tmp_path / "w2" / f).read_bytes(), f
