"""`collect --resume` with other content-defining arguments than the interrupted run is refused;
the arguments, seed included, are recorded in meta/info.json. Fake rollouts: no rendering."""

from __future__ import annotations

import json

import pytest

from collect_helpers import fake_episode

pytestmark = pytest.mark.sim


@pytest.fixture(autouse=True)
def _need_sim():
    pytest.importorskip("metaworld")


def _fake_rollout(task, episode, *, seed, **kwargs):
    ep = fake_episode(task, episode, seed)
    return ep, {"success": episode != 1, "task_name": task, "episode": episode}


class _Stop(BaseException):
    pass


def _interrupted(C, monkeypatch, out, **kw):
    """A collection killed right before it publishes (every episode written, `.partial/` left)."""

    def stop(*a, **k):
        raise _Stop

    with monkeypatch.context() as m:
        m.setattr(C, "rollout", _fake_rollout)
        m.setattr(C, "_finish", stop)
        with pytest.raises(_Stop):
            C.collect(kw.pop("tasks", "reach,drawer-close"), kw.pop("per_task", 2), 64, out, progress=False, **kw)


@pytest.mark.parametrize(
    "change, flag",
    [
        (dict(seed=1), "--seed 0 (run) vs 1 (now)"),
        (dict(per_task=1), "--episodes-per-task 2 (run) vs 1 (now)"),
        (dict(tasks="reach"), "--tasks reach-v3,drawer-close-v3 (run) vs reach-v3 (now)"),
        (dict(max_steps=100), "--max-steps 500 (run) vs 100 (now)"),
        (dict(cameras=("corner4", "gripperPOV")), "--camera corner4 (run) vs corner4,gripperPOV (now)"),
    ],
)
def test_resume_with_other_arguments_is_refused(tmp_path, monkeypatch, change, flag):
    from latentvla.data import collect as C

    out = tmp_path / "ds"
    _interrupted(C, monkeypatch, out)
    kw = dict(tasks="reach,drawer-close", per_task=2) | change
    monkeypatch.setattr(C, "rollout", _fake_rollout)
    with pytest.raises(ValueError, match="--resume: the interrupted collection used other arguments") as e:
        C.collect(kw.pop("tasks"), kw.pop("per_task"), 64, out, progress=False, resume=True, **kw)
    assert flag in str(e.value)
    assert out.with_name("ds.partial").is_dir() and not out.exists()  # nothing mixed, nothing published


def test_resume_with_the_same_arguments_publishes_and_records_them(tmp_path, monkeypatch, capsys):
    from latentvla.cli import main
    from latentvla.data import collect as C
    from latentvla.data.lerobot import LeRobotDatasetReader

    out = tmp_path / "ds"
    _interrupted(C, monkeypatch, out, seed=3, workers=1)
    monkeypatch.setattr(C, "rollout", _fake_rollout)
    argv = [
        "collect",
        "--tasks",
        "reach,drawer-close",
        "--episodes-per-task",
        "2",
        "--image-size",
        "64",
        "--out",
        str(out),
        "--seed",
        "3",
        "--resume",
    ]
    assert main([*argv[:-3], "--seed", "4", "--resume"]) == 2  # the CLI: one line
    err = capsys.readouterr().err
    assert err.startswith("error: --resume") and "--seed 3 (run) vs 4 (now)" in err and "Traceback" not in err
    assert main(argv) == 0
    info = LeRobotDatasetReader(out).info
    args = info["latentvla_collect"]["args"]
    assert (
        args["seed"] == 3 and args["episodes_per_task"] == 2 and args["tasks"] == ["reach-v3", "drawer-close-v3"]
    )
    assert not out.with_name("ds.collect.json").exists()
    # a resume of the published dataset is checked against info.json too
    assert main([*argv[:-3], "--seed", "5", "--resume"]) == 2
    assert "--seed 3 (run) vs 5 (now)" in capsys.readouterr().err
    assert main([*argv[:4], "3", *argv[5:]]) == 2  # more episodes than a published dataset has: not "complete"
    assert "--episodes-per-task 2 (run) vs 3 (now)" in capsys.readouterr().err


def test_resume_with_more_episodes_per_task_extends_exactly(tmp_path, monkeypatch):
    from latentvla.data import collect as C
    from latentvla.data.lerobot import LeRobotDatasetReader

    monkeypatch.setattr(C, "rollout", _fake_rollout)
    C.collect("reach", 3, 64, tmp_path / "ref", progress=False)
    _interrupted(C, monkeypatch, tmp_path / "ds", tasks="reach", per_task=2)
    monkeypatch.setattr(C, "rollout", _fake_rollout)
    C.collect("reach", 3, 64, tmp_path / "ds", progress=False, resume=True)
    keys = [[e["key"] for e in LeRobotDatasetReader(tmp_path / d).episodes] for d in ("ref", "ds")]
    assert keys[0] == keys[1] == ["reach-v3/train/0000", "reach-v3/train/0002", "reach-v3/train/0003"]


def test_resume_of_a_run_without_a_record_is_refused(tmp_path, monkeypatch):
    from latentvla.data import collect as C

    out = tmp_path / "ds"
    _interrupted(C, monkeypatch, out)
    out.with_name("ds.collect.json").write_text(json.dumps({"failed": {"reach-v3": [1]}}))  # an older latentvla's
    monkeypatch.setattr(C, "rollout", _fake_rollout)
    with pytest.raises(ValueError, match="does not record the interrupted run's arguments"):
        C.collect("reach,drawer-close", 2, 64, out, progress=False, resume=True)


# --- a full disk, and --max-steps 0 / 3 ---


def test_collect_on_a_full_disk_is_one_line_without_stray_tmp(tmp_path, monkeypatch, capsys):
    import errno
    from pathlib import Path

    from latentvla.cli import main
    from latentvla.data import collect as C

    monkeypatch.setattr(C, "rollout", _fake_rollout)
    real = Path.write_bytes
    written = [0]

    def full_disk(self, data):  # the third shard file: half of it reaches the disk, then ENOSPC
        written[0] += 1
        if written[0] == 3:
            real(self, data[: len(data) // 2])
            raise OSError(errno.ENOSPC, "No space left on device", str(self))
        return real(self, data)

    out = tmp_path / "ds"
    argv = ["collect", "--tasks", "reach", "--episodes-per-task", "3", "--image-size", "64", "--out", str(out)]
    with monkeypatch.context() as m:
        m.setattr(Path, "write_bytes", full_disk)
        assert main(argv) == 1
    err = capsys.readouterr().err.strip()  # (the progress bar writes to stderr too)
    assert err.count("error:") == 1 and "Traceback" not in err
    assert "No space left on device" in err.splitlines()[-1] and "--resume" in err.splitlines()[-1]
    assert not [p for p in tmp_path.rglob("*") if ".tmp" in p.name]  # no truncated temporary file left
    assert out.with_name("ds.partial").is_dir() and not out.exists()
    assert main([*argv, "--resume"]) == 0  # space freed: the resume finishes the same dataset
    from latentvla.data.lerobot import LeRobotDatasetReader

    assert [e["key"] for e in LeRobotDatasetReader(out).episodes] == [
        "reach-v3/train/0000",
        "reach-v3/train/0002",
        "reach-v3/train/0003",
    ]


def test_collect_max_steps_zero_is_refused_before_anything_is_written(tmp_path, capsys):
    from latentvla.cli import main

    out = tmp_path / "ds"
    assert main(["collect", "--tasks", "reach", "--out", str(out), "--max-steps", "0"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error:") and "--max-steps must be >= 1" in err and "Traceback" not in err
    assert not list(tmp_path.iterdir())


def test_collect_where_the_expert_never_succeeds_leaves_nothing(tmp_path, capsys):
    from latentvla.cli import main

    out = tmp_path / "ds"  # 3 steps are too few for the real expert to reach
    assert (
        main(["collect", "--tasks", "reach", "--episodes-per-task", "1", "--out", str(out), "--max-steps", "3"])
        == 2
    )
    err = capsys.readouterr().err.strip()
    assert (
        err.count("error:") == 1
        and "Traceback" not in err
        and "succeeded in none of 2 episodes within --max-steps 3" in err
    )
    assert not list(tmp_path.iterdir())  # no .partial, no .collect.json
