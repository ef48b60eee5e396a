"""Checkpoint faults a user meets after training: a full disk reported by torch.save as a
RuntimeError, a training_state.pt that belongs to another checkpoint or run, stats that would normalize with NaN or
a zero std, a hand-edited config.json that no longer fits the weights. Micro lara, synthetic data."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch

from latentvla.checkpoint_check import CheckpointSkippedWarning, CorruptCheckpointError
from latentvla.config import apply_overrides, get_preset
from latentvla.train import checkpoint as ckpt_lib
from run_helpers import checkpoint_weights, same_weights, train_quiet

COMMON = ["batch_size=2", "log_every=1", "num_workers=0", "policy.horizon=4", "save_every=2", "keep_last=5"]


def _cfg(steps: int, preset: str = "lara"):
    return apply_overrides(get_preset(preset, "micro"), [f"steps={steps}", *COMMON])


@pytest.fixture(scope="module")
def reference(synthetic_dataset, tmp_path_factory) -> Path:
    run = tmp_path_factory.mktemp("ref") / "run"
    train_quiet(_cfg(6), synthetic_dataset, run)
    return run


@pytest.fixture(scope="module")
def stopped(synthetic_dataset, tmp_path_factory) -> Path:
    """The same run stopped at step 4 (checkpoints 000002 and 000004): copy before changing it."""
    run = tmp_path_factory.mktemp("stopped") / "run"
    train_quiet(_cfg(6), synthetic_dataset, run, stop_at=4)
    return run


def _copy(run: Path, tmp_path: Path) -> Path:
    return Path(shutil.copytree(run, tmp_path / "run", symlinks=True))


# ------------------------------------------------------------------------------------------------ full disk


def test_full_disk_reported_by_torch_save_as_runtime_error(synthetic_dataset, reference, tmp_path, monkeypatch):
    save, calls = torch.save, [0]

    def full_disk(obj, path, *a, **kw):  # what torch.save does on ENOSPC: part of the zip, then RuntimeError
        calls[0] += 1
        if calls[0] == 2:
            Path(path).write_bytes(b"PK\x03\x04" + b"\0" * 100)
            raise RuntimeError(
                "[enforce fail at inline_container.cc:672] . PytorchStreamWriter failed writing file data/3: "
                "file write failed"
            )
        return save(obj, path, *a, **kw)

    run = tmp_path / "run"
    monkeypatch.setattr(ckpt_lib.torch, "save", full_disk)
    with pytest.raises(ckpt_lib.CheckpointError, match="file write failed.*000002 is still the last") as e:
        train_quiet(_cfg(6), synthetic_dataset, run)
    assert "\n" not in str(e.value)
    monkeypatch.undo()
    assert sorted(p.name for p in (run / "checkpoints").iterdir()) == ["000002", "last", "last.txt"]  # no *.tmp
    train_quiet(_cfg(6), synthetic_dataset, run, resume=True)  # space freed
    assert same_weights(
        checkpoint_weights(run / "checkpoints/000006"), checkpoint_weights(reference / "checkpoints/000006")
    )


# ------------------------------------------------------------------------------------- training_state.pt


def test_training_state_of_another_step_is_skipped_with_its_name(synthetic_dataset, reference, stopped, tmp_path):
    run = _copy(stopped, tmp_path)
    ckpts = run / "checkpoints"
    shutil.copy(ckpts / "000002/training_state.pt", ckpts / "000004/training_state.pt")  # swapped by hand
    with pytest.warns(
        CheckpointSkippedWarning, match="000004/training_state.pt is the state of step 2, not of step 4"
    ):
        summary = train_quiet(_cfg(6), synthetic_dataset, run, resume=True)
    assert summary["start_step"] == 2  # not the step-4 weights with the step-2 optimizer and sampler
    assert same_weights(checkpoint_weights(ckpts / "000006"), checkpoint_weights(reference / "checkpoints/000006"))


def test_training_state_of_another_run_is_named(synthetic_dataset, stopped, tmp_path):
    run = _copy(stopped, tmp_path)
    other = tmp_path / "bc"
    train_quiet(_cfg(4, "bc"), synthetic_dataset, other)  # a bc run: its step 4 state has another optimizer
    shutil.copy(other / "checkpoints/000004/training_state.pt", run / "checkpoints/000004/training_state.pt")
    with pytest.raises(ValueError, match=r"000004/training_state.pt does not fit this model's optimizer") as e:
        train_quiet(_cfg(6), synthetic_dataset, run, resume=True)
    assert "--overwrite" in str(e.value) and "\n" not in str(e.value)


def test_no_usable_training_state_names_the_file(synthetic_dataset, stopped, tmp_path):
    run = _copy(stopped, tmp_path)
    for step in ("000002", "000004"):
        torch.save({"x": 1}, run / "checkpoints" / step / "training_state.pt")
    with (
        pytest.warns(CheckpointSkippedWarning),
        pytest.raises(
            CorruptCheckpointError, match=r"no usable checkpoint.*000004/training_state.pt lacks step.*--overwrite"
        ),
    ):
        train_quiet(_cfg(6), synthetic_dataset, run, resume=True)


# -------------------------------------------------------------------------------- stats.json, config.json


def _edit_json(path: Path, edit) -> None:
    data = json.loads(path.read_text())
    edit(data)
    path.write_text(json.dumps(data))


def _set(key: str, stat: str, value: float, constant: bool = False):
    def edit(data: dict) -> None:
        stats = data["stats"][key]
        stats[stat][0] = value
        if constant:
            stats["min"][0] = stats["max"][0] = stats["mean"][0]

    return edit


@pytest.mark.parametrize(
    "key, stat, value, message",
    [
        ("observation.state", "std", float("nan"), r"'observation.state' std is not finite"),
        ("observation.state", "std", 0.0, r"'observation.state' std is 0.0 in dims \[0\], which vary"),
        ("action", "max", float("inf"), r"'action' max is not finite"),  # action is min-max normalized
    ],
)
def test_stats_that_would_normalize_wrongly_are_refused_naming_the_key(
    key, stat, value, message, stopped, tmp_path
):
    from latentvla.policy import Policy

    run = _copy(stopped, tmp_path)
    _edit_json(run / "checkpoints/000004/stats.json", _set(key, stat, value))
    with pytest.raises(CorruptCheckpointError, match=rf"000004 is damaged: stats.json: {message}"):
        Policy.from_pretrained(run / "checkpoints/000004")
    with pytest.warns(CheckpointSkippedWarning, match="000004"):  # a run directory falls back to 000002
        policy = Policy.from_pretrained(run)
    expected = checkpoint_weights(run / "checkpoints/000002")
    assert same_weights({k: v for k, v in policy.model.state_dict().items() if k in expected}, expected)


def test_zero_std_of_a_constant_feature_still_loads(stopped, tmp_path):
    from latentvla.policy import Policy

    run = _copy(stopped, tmp_path)  # min == max: really constant, the normalizer maps it to 0 exactly
    _edit_json(run / "checkpoints/000004/stats.json", _set("observation.state", "std", 0.0, constant=True))
    Policy.from_pretrained(run / "checkpoints/000004")


def test_hand_edited_config_is_one_line_naming_the_files_and_tensors(stopped, tmp_path, capsys):
    from latentvla.cli import main
    from latentvla.policy import Policy

    run = _copy(stopped, tmp_path)
    ckpt = run / "checkpoints/000004"
    _edit_json(ckpt / "config.json", lambda d: d["policy"].update(horizon=8))
    with pytest.raises(CorruptCheckpointError) as e:
        Policy.from_pretrained(ckpt)
    message = str(e.value)
    assert "\n" not in message and f"{ckpt / 'model.safetensors'} does not match {ckpt / 'config.json'}" in message
    assert "head.action_pos (4, 64) in the file vs (8, 64) from the config" in message
    assert main(["serve", str(ckpt), "--port", "0"]) == 2  # the CLI says the same in one line
    err = capsys.readouterr().err
    assert "does not match" in err and len(err.strip().splitlines()) == 1, err
