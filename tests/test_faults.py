"""Training under faults: bad data, forgotten --resume, another dataset, NaN loss, SIGTERM, damaged
checkpoints, full disk, extending a finished run. Micro lara model, synthetic data, a few steps each."""

from __future__ import annotations

import errno
import json
import os
import signal
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch

from latentvla.config import apply_overrides, get_preset
from latentvla.constants import ACTION, OBS_STATE
from latentvla.train import checkpoint as ckpt_lib
from latentvla.train.logging import read_metrics
from run_helpers import checkpoint_weights, same_weights, train_quiet

COMMON = ["batch_size=2", "log_every=1", "num_workers=0", "policy.horizon=4", "augment=true"]
DATA_FILE = Path("data/chunk-000/file-000.parquet")
IMAGE = "observation.images.corner4"


def _cfg(steps: int, *extra: str):
    return apply_overrides(get_preset("lara", "micro"), [f"steps={steps}", *COMMON, *extra])


@pytest.fixture(scope="module")
def dataset(tmp_path_factory) -> Path:
    from latentvla.data.synthetic import write_synthetic_dataset

    return write_synthetic_dataset(tmp_path_factory.mktemp("data") / "ds", num_episodes=2, length=8, image_size=32)


@pytest.fixture(scope="module")
def reference(dataset, tmp_path_factory) -> Path:
    """An uninterrupted 6-step run saving every 2 steps."""
    run = tmp_path_factory.mktemp("ref") / "run"
    train_quiet(_cfg(6, "save_every=2", "keep_last=5"), dataset, run)
    return run


def _copy(dataset: Path, tmp_path: Path) -> Path:
    import shutil

    return Path(shutil.copytree(dataset, tmp_path / "ds"))


def _edit_column(root: Path, column: str, fn) -> None:
    table = pq.read_table(root / DATA_FILE)
    values = fn(table.column(column).to_pylist())
    pq.write_table(
        table.set_column(table.column_names.index(column), column, pa.array(values, table.column(column).type)),
        root / DATA_FILE,
    )


def _cli(*argv: str) -> int:
    from latentvla.cli import main

    return main(list(argv))


def _train_cli(dataset: Path, run: Path, *extra: str) -> int:
    return _cli(
        "train",
        "--preset",
        "lara",
        "--size",
        "micro",
        "--dataset",
        str(dataset),
        "--out",
        str(run),
        "--steps",
        "4",
        "--batch-size",
        "2",
        "--no-progress",
        "num_workers=0",
        "policy.horizon=4",
        *extra,
    )


# ------------------------------------------------------------------------------------- bad data (items 1, 6, 13)


@pytest.mark.parametrize("column", [ACTION, OBS_STATE])
@pytest.mark.parametrize("value", [float("nan"), float("inf")])
def test_nonfinite_column_is_one_line_naming_episode_and_frame(column, value, dataset, tmp_path, capsys):
    root = _copy(dataset, tmp_path)
    # global frame 11 = episode 1, frame 3 (two episodes of 8 frames)
    _edit_column(
        root,
        column,
        lambda rows: [[value if (i == 11 and d == 2) else x for d, x in enumerate(r)] for i, r in enumerate(rows)],
    )
    assert _train_cli(root, tmp_path / "run") == 2
    err = capsys.readouterr().err
    assert f"column {column!r}" in err and "episode 1, frame 3" in err and "Traceback" not in err
    assert not (tmp_path / "run" / "checkpoints").exists()


@pytest.mark.parametrize(
    "edit, message",
    [
        (lambda s: s[ACTION].__setitem__("std", [float("nan")] * 4), "'action' 'std' contains NaN"),
        (lambda s: s[OBS_STATE].__setitem__("mean", [float("inf")] * 4), "'observation.state' 'mean'"),
        (lambda s: s.clear(), "stats.json: missing or empty"),
    ],
)
def test_bad_or_missing_stats_is_one_line(edit, message, dataset, tmp_path, capsys):
    root = _copy(dataset, tmp_path)
    stats = json.loads((root / "meta" / "stats.json").read_text())
    edit(stats)
    (root / "meta" / "stats.json").write_text(json.dumps(stats))  # NaN / Infinity literals, as json writes them
    assert _train_cli(root, tmp_path / "run") == 2
    assert message in capsys.readouterr().err


def test_missing_stats_file_is_one_line(dataset, tmp_path, capsys):
    root = _copy(dataset, tmp_path)
    (root / "meta" / "stats.json").unlink()
    assert _train_cli(root, tmp_path / "run") == 2
    assert "stats.json: missing" in capsys.readouterr().err


def test_info_image_shape_must_match_stored_images(dataset, tmp_path, capsys):
    root = _copy(dataset, tmp_path)
    info = json.loads((root / "meta" / "info.json").read_text())
    info["features"][IMAGE]["shape"] = [64, 64, 3]  # the PNGs are 32 x 32
    (root / "meta" / "info.json").write_text(json.dumps(info))
    assert _train_cli(root, tmp_path / "run") == 2
    err = capsys.readouterr().err
    assert "[32, 32, 3]" in err and "[64, 64, 3]" in err
    assert not (tmp_path / "run" / "checkpoints").exists()  # never a checkpoint recording the wrong size


@pytest.mark.parametrize(
    "info, message",
    [([1, 2], "must be a JSON object"), ("fps-string", "'fps' must be a positive number"), ("fps-zero", "'fps'")],
)
def test_bad_info_json_is_one_line(info, message, dataset, tmp_path, capsys):
    root = _copy(dataset, tmp_path)
    data = json.loads((root / "meta" / "info.json").read_text())
    if info == "fps-string":
        data["fps"] = "10"
    elif info == "fps-zero":
        data["fps"] = 0
    else:
        data = info
    (root / "meta" / "info.json").write_text(json.dumps(data))
    assert _train_cli(root, tmp_path / "run") == 2
    assert message in capsys.readouterr().err
    assert _cli("dataset", "info", str(root)) == 2
    err = capsys.readouterr().err
    assert message in err and err.count("\n") == 1


@pytest.mark.parametrize("damage", ["corrupt", "truncated", "wrong-size"])
def test_damaged_png_is_one_line(damage, dataset, tmp_path, capsys):
    import io

    from PIL import Image

    root = _copy(dataset, tmp_path)

    def damaged(png: bytes) -> bytes:
        if damage == "corrupt":
            return png[:20] + bytes(len(png) - 20)
        if damage == "truncated":
            return png[: len(png) // 2]
        buf = io.BytesIO()
        Image.new("RGB", (16, 16)).save(buf, format="PNG")
        return buf.getvalue()

    def edit(cells):  # every frame but the first: the open-time header check passes, the first sample fails
        return [c if i == 0 else {"bytes": damaged(c["bytes"]), "path": None} for i, c in enumerate(cells)]

    _edit_column(root, IMAGE, edit)
    assert _train_cli(root, tmp_path / "run") == 2
    err = capsys.readouterr().err
    assert "episode #" in err and "frames [" in err and err.count("\n") == 1 and "Traceback" not in err


def test_empty_dataset_is_one_line(dataset, tmp_path, capsys):
    root = _copy(dataset, tmp_path)
    path = root / "meta" / "episodes" / "chunk-000" / "file-000.parquet"
    pq.write_table(pq.read_table(path).slice(0, 0), path)
    assert _train_cli(root, tmp_path / "run") == 2
    assert "the dataset is empty (0 episodes" in capsys.readouterr().err


@pytest.mark.parametrize("override", ["save_every=0", "log_every=0", "keep_last=0"])
def test_zero_intervals_are_refused_before_training(override, dataset, tmp_path, capsys):
    assert _train_cli(dataset, tmp_path / "run", override) == 2
    assert f"{override.split('=')[0]} must be >= 1" in capsys.readouterr().err
    assert not (tmp_path / "run").exists()


def test_nonfinite_loss_stops_without_publishing(dataset, tmp_path, monkeypatch):
    from latentvla.train import loop

    calls = [0]
    forward = loop.LossModule.forward

    def poisoned(
        self, batch, stage, step=None
    ):  # step 4's loss is NaN (as NaN data past the checks would make it)
        per_sample, metrics = forward(self, batch, stage, step)
        calls[0] += 1
        if calls[0] == 4:
            per_sample = per_sample * float("nan")
            metrics = {**metrics, "loss": float("nan")}
        return per_sample, metrics

    monkeypatch.setattr(loop.LossModule, "forward", poisoned)
    with pytest.raises(loop.NonFiniteLossError, match="step 4: the loss is nan"):
        train_quiet(_cfg(6, "save_every=2"), dataset, tmp_path / "run")
    last = ckpt_lib.latest_checkpoint(tmp_path / "run")
    assert last.name == "000002" and ckpt_lib.checkpoint_dir(tmp_path / "run", 4).exists() is False
    assert all(torch.isfinite(v).all() for v in checkpoint_weights(last).values())
    rows = read_metrics(tmp_path / "run" / "metrics.jsonl")
    assert all(np.isfinite(r["loss"]) for r in rows)


# -------------------------------------------------------------------- forgotten --resume, other data (2, 3)


@pytest.mark.slow
def test_existing_run_is_refused_without_resume_or_overwrite(dataset, tmp_path, capsys):
    run = tmp_path / "run"
    assert _train_cli(dataset, run) == 0
    before = (run / "metrics.jsonl").read_text()
    weights = checkpoint_weights(ckpt_lib.latest_checkpoint(run))
    assert _train_cli(dataset, run, "seed=1") == 2
    assert "already holds a training run" in capsys.readouterr().err
    assert (run / "metrics.jsonl").read_text() == before and same_weights(
        checkpoint_weights(ckpt_lib.latest_checkpoint(run)), weights
    )
    assert _train_cli(dataset, run, "seed=1", "--overwrite") == 0
    assert not same_weights(checkpoint_weights(ckpt_lib.latest_checkpoint(run)), weights)
    steps = [r["step"] for r in read_metrics(run / "metrics.jsonl")]
    assert steps == sorted(set(steps)) and steps[-1] == 4  # one fresh curve, not two runs interleaved


def test_resume_on_another_dataset_or_other_stats_is_refused(dataset, tmp_path):
    from latentvla.data.synthetic import write_synthetic_dataset

    cfg = _cfg(4)
    train_quiet(cfg, dataset, tmp_path / "run", stop_at=2)
    other = write_synthetic_dataset(tmp_path / "other", num_episodes=3, length=8, image_size=32, seed=5)
    with pytest.raises(
        ValueError, match=r"differs from the one this run was trained on: total_episodes 2 \(run\) vs 3"
    ):
        train_quiet(cfg, other, tmp_path / "run", resume=True)
    restats = _copy(dataset, tmp_path)
    stats = json.loads((restats / "meta" / "stats.json").read_text())
    stats[ACTION]["max"] = [2.0] * 4
    (restats / "meta" / "stats.json").write_text(json.dumps(stats))
    with pytest.raises(ValueError, match=r"stats of 'action' \(max\)"):
        train_quiet(cfg, restats, tmp_path / "run", resume=True)
    assert train_quiet(cfg, dataset, tmp_path / "run", resume=True)["end_step"] == 4  # the right one still resumes


# ------------------------------------------------------------- SIGTERM, damaged checkpoints, full disk (8-10)


def test_sigterm_saves_at_the_step_boundary_and_resume_is_exact(dataset, reference, tmp_path, monkeypatch):
    from latentvla.train import loop

    steps = [0]
    advance = loop.MetricsLogger.advance

    def advance_then_signal(self, n=1):  # SIGTERM arrives during step 3 (after its optimizer step)
        steps[0] += 1
        if steps[0] == 3:
            os.kill(os.getpid(), signal.SIGTERM)
        return advance(self, n)

    monkeypatch.setattr(loop.MetricsLogger, "advance", advance_then_signal)
    cfg = _cfg(6, "save_every=2", "keep_last=5")
    with pytest.raises(loop.TrainingInterrupted, match="interrupted by SIGTERM.*at step 3 of 6.*--resume") as e:
        train_quiet(cfg, dataset, tmp_path / "run")
    assert e.value.signum == signal.SIGTERM
    assert ckpt_lib.latest_checkpoint(tmp_path / "run").name == "000003"
    assert signal.getsignal(signal.SIGTERM) is signal.SIG_DFL  # handlers restored
    monkeypatch.undo()
    train_quiet(cfg, dataset, tmp_path / "run", resume=True)
    assert same_weights(
        checkpoint_weights(ckpt_lib.latest_checkpoint(tmp_path / "run")),
        checkpoint_weights(reference / "checkpoints/000006"),
    )


def _damage(ckpt: Path, what: str) -> None:
    if what == "weights":
        data = (ckpt / "model.safetensors").read_bytes()
        (ckpt / "model.safetensors").write_bytes(data[: len(data) - 1000])
    elif what == "state":
        data = (ckpt / "training_state.pt").read_bytes()
        (ckpt / "training_state.pt").write_bytes(data[: len(data) // 2])  # a copy cut short
    else:
        (ckpt / "config.json").write_text('{"policy": {')


@pytest.mark.slow
@pytest.mark.parametrize("what", ["weights", "state", "config"])
def test_damaged_newest_checkpoint_falls_back_with_a_warning(what, dataset, reference, tmp_path):
    from latentvla.checkpoint_check import CheckpointSkippedWarning, CorruptCheckpointError
    from latentvla.policy import Policy

    cfg = _cfg(6, "save_every=2", "keep_last=5")
    run = tmp_path / "run"
    train_quiet(cfg, dataset, run, stop_at=4)
    _damage(run / "checkpoints" / "000004", what)
    if what != "state":  # a policy-only load does not read training_state.pt: it keeps using 000004 then
        with pytest.warns(CheckpointSkippedWarning, match="000004"):
            policy = Policy.from_pretrained(run)
        expected = checkpoint_weights(run / "checkpoints/000002")
        assert same_weights({k: v for k, v in policy.model.state_dict().items() if k in expected}, expected)
        with pytest.raises(CorruptCheckpointError, match="000004 is damaged"):
            Policy.from_pretrained(run / "checkpoints" / "000004")
    with pytest.warns(CheckpointSkippedWarning, match="000004"):
        summary = train_quiet(cfg, dataset, run, resume=True)
    assert summary["start_step"] == 2
    assert same_weights(
        checkpoint_weights(run / "checkpoints" / "000006"), checkpoint_weights(reference / "checkpoints/000006")
    )


def test_serve_and_cli_name_a_damaged_checkpoint_in_one_line(dataset, tmp_path, capsys):
    run = tmp_path / "run"
    train_quiet(_cfg(2, "save_every=2"), dataset, run)
    _damage(run / "checkpoints" / "000002", "weights")
    assert _cli("serve", str(run / "checkpoints" / "000002"), "--port", "0") == 2
    err = capsys.readouterr().err
    assert "model.safetensors is truncated" in err and "Traceback" not in err


def test_disk_full_during_checkpoint_write(dataset, reference, tmp_path, monkeypatch):
    save = torch.save
    calls = [0]

    def full_disk(obj, path, *a, **kw):
        calls[0] += 1
        if calls[0] == 2:  # the second checkpoint (step 4) hits a full disk
            raise OSError(errno.ENOSPC, "No space left on device")
        return save(obj, path, *a, **kw)

    cfg = _cfg(6, "save_every=2", "keep_last=5")
    run = tmp_path / "run"
    monkeypatch.setattr(ckpt_lib.torch, "save", full_disk)
    with pytest.raises(ckpt_lib.CheckpointError, match="No space left on device.*000002 is still the last"):
        train_quiet(cfg, dataset, run)
    monkeypatch.undo()
    assert sorted(p.name for p in (run / "checkpoints").iterdir()) == ["000002", "last", "last.txt"]  # no *.tmp
    assert ckpt_lib.latest_checkpoint(run).name == "000002"
    train_quiet(cfg, dataset, run, resume=True)  # space freed
    assert same_weights(
        checkpoint_weights(run / "checkpoints" / "000006"), checkpoint_weights(reference / "checkpoints/000006")
    )


# --------------------------------------------------------------------------------- extending a run (11)


@pytest.mark.slow
def test_extending_a_finished_run(dataset, reference, tmp_path):
    import shutil

    ext = _cfg(9, "save_every=2", "keep_last=5")
    for name in ("a", "b"):
        shutil.copytree(reference, tmp_path / name)
    train_quiet(ext, dataset, tmp_path / "a", resume=True)
    train_quiet(ext, dataset, tmp_path / "b", resume=True, stop_at=8)  # the extension itself resumes exactly
    train_quiet(ext, dataset, tmp_path / "b", resume=True)
    a, b = (checkpoint_weights(ckpt_lib.latest_checkpoint(tmp_path / n)) for n in "ab")
    assert same_weights(a, b) and not same_weights(a, checkpoint_weights(reference / "checkpoints/000006"))
    assert same_weights(
        checkpoint_weights(tmp_path / "a/checkpoints/000006"), checkpoint_weights(reference / "checkpoints/000006")
    )
    rows = read_metrics(tmp_path / "a" / "metrics.jsonl")
    assert [r["step"] for r in rows] == list(range(1, 10))
    base = _cfg(6)
    for r in rows[6:]:  # constant LR = min_lr_frac x base in the last stage (III: head x 1)
        assert r["lr_head"] == pytest.approx(base.lr_head * base.min_lr_frac) and r["stage"] == "III"
    history = json.loads((ckpt_lib.latest_checkpoint(tmp_path / "a") / "config.json").read_text())["extensions"]
    assert history == [{"at_step": 6, "from_steps": 6, "to_steps": 9}]
    assert json.loads((tmp_path / "b/checkpoints/000009/config.json").read_text())["extensions"] == history


def test_video_dataset_without_decoder_is_one_line(tmp_path, monkeypatch, capsys):
    from latentvla.data import video
    from latentvla.data.lerobot import DatasetWriter
    from latentvla.data.synthetic import synthetic_episode

    writer = DatasetWriter(tmp_path / "vds", fps=10, robot_type="synthetic", video=True)
    for i in range(2):
        episode, meta = synthetic_episode(i, 8, 32, 0, True, ("corner4",))
        writer.add_episode(episode, key=f"synthetic/{i:04d}", meta=meta)
    writer.finalize()

    def no_av():
        raise ImportError("video datasets need PyAV: pip install 'latentvla[video]' (or pip install av)")

    monkeypatch.setattr(video, "_av", no_av)
    assert _train_cli(tmp_path / "vds", tmp_path / "run") == 2
    err = capsys.readouterr().err
    assert "stored as video and no video decoder is installed" in err and "pip install" in err
