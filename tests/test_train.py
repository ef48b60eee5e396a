"""The training loop: exact resume (lara, rdvla), DDP 2 x gloo == 1 process, `latentvla train` end to end,
metrics / plots, did-you-mean on unknown presets. Tiny synthetic data, CPU, a few steps each."""

from __future__ import annotations

import json
import os
import socket
from pathlib import Path

import pytest
import torch
import torch.multiprocessing as mp
from safetensors.torch import load_file

from latentvla.config import apply_overrides, get_preset
from latentvla.train.checkpoint import latest_checkpoint
from latentvla.train.logging import MetricsLogger, plot_losses, read_metrics

torch.set_num_threads(1)
COMMON = ["batch_size=2", "log_every=1", "save_every=1000", "num_workers=0", "warmup_frac=0.2", "policy.horizon=4"]


@pytest.fixture(scope="module")
def dataset(tmp_path_factory) -> Path:
    from latentvla.data.synthetic import write_synthetic_dataset

    return write_synthetic_dataset(tmp_path_factory.mktemp("data") / "ds", num_episodes=2, length=8, image_size=32)


def _cfg(preset: str, steps: int, *extra: str):
    return apply_overrides(get_preset(preset, "tiny"), [f"steps={steps}", *COMMON, *extra])


def _weights(run: Path) -> dict[str, torch.Tensor]:
    return load_file(str(latest_checkpoint(run) / "model.safetensors"))


def _max_diff(a: dict, b: dict) -> float:
    assert a.keys() == b.keys()
    return max((a[k].float() - b[k].float()).abs().max().item() for k in a)


@pytest.mark.slow  # ~12 s for both presets; the fault tests cover resume in the quick loop
@pytest.mark.parametrize("preset", ["lara", "rdvla"])
def test_resume_equals_uninterrupted(preset, dataset, tmp_path):
    from latentvla.train.loop import train

    steps = 10 if preset == "lara" else 6  # lara: 10 steps cross all five stages (I, II-1..3, III)
    cfg = _cfg(preset, steps, "augment=true")  # augmentation RNG must resume too
    train(cfg, dataset, tmp_path / "full", show_progress=False)
    first = train(cfg, dataset, tmp_path / "split", show_progress=False, stop_at=steps // 2)
    assert first["end_step"] == steps // 2
    second = train(cfg, dataset, tmp_path / "split", resume=True, show_progress=False)
    assert second["start_step"] == steps // 2 and second["end_step"] == steps
    assert _max_diff(_weights(tmp_path / "full"), _weights(tmp_path / "split")) <= 1e-5
    rows = read_metrics(tmp_path / "split" / "metrics.jsonl")
    assert [r["step"] for r in rows] == list(range(1, steps + 1))  # one clean curve across the resume
    full_rows = read_metrics(tmp_path / "full" / "metrics.jsonl")
    assert [r["loss"] for r in rows] == pytest.approx([r["loss"] for r in full_rows], abs=1e-5)
    if preset == "lara":
        assert [r["stage"] for r in rows] == ["I", "I", "II-1", "II-2", "II-3", "III", "III", "III", "III", "III"]
        assert "loss_cot" in rows[0] and any("loss_flow" in r for r in rows if r["stage"] == "III")
        mixed = [k for r in rows for k in r if "@" in k]  # Coconut stage mixing (mix_prob 0.3), resumed exactly
        assert mixed and all(k.split("@")[1] in ("I", "II-1", "II-2", "II-3") for k in mixed)
    with pytest.raises(ValueError, match="already at step"):
        train(cfg, dataset, tmp_path / "split", resume=True, show_progress=False)
    with pytest.raises(ValueError, match="differs from the checkpoint"):  # fewer steps than the run: refused
        train(_cfg(preset, steps - 4), dataset, tmp_path / "split", resume=True, show_progress=False)
    with pytest.raises(ValueError, match="differs from the checkpoint"):
        train(_cfg(preset, steps, "lr_head=5e-3"), dataset, tmp_path / "split", resume=True, show_progress=False)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _ddp_worker(rank: int, world: int, port: int, cfg, dataset: str, run: str) -> None:
    os.environ.update(
        MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), WORLD_SIZE=str(world), LOCAL_RANK=str(rank)
    )
    torch.set_num_threads(1)
    from latentvla.train.loop import train

    train(cfg, dataset, run, show_progress=False)


@pytest.mark.slow
def test_ddp_two_gloo_processes_equal_one_process(dataset, tmp_path):
    """2 processes x batch 2 == 1 process x batch 4. The test controls the randomness: augmentation off and a
    preset whose loss draws no noise (ecot: CoT / action-token CE, one stage),
    since per-rank noise streams legitimately differ from one process's stream."""
    from latentvla.train.loop import train

    cfg = _cfg("ecot", 3, "batch_size=4", "augment=false")
    train(cfg, dataset, tmp_path / "single", show_progress=False)
    mp.spawn(_ddp_worker, args=(2, _free_port(), cfg, str(dataset), str(tmp_path / "ddp")), nprocs=2, join=True)
    assert _max_diff(_weights(tmp_path / "single"), _weights(tmp_path / "ddp")) <= 2e-5
    single, ddp = (
        read_metrics(tmp_path / "single" / "metrics.jsonl"),
        read_metrics(tmp_path / "ddp" / "metrics.jsonl"),
    )
    assert [r["loss"] for r in ddp] == pytest.approx([r["loss"] for r in single], abs=1e-4)  # reduced over ranks


def test_cli_end_to_end(dataset, tmp_path, capsys):
    from latentvla.cli import main
    from latentvla.policy import Policy

    run = tmp_path / "run"
    argv = [
        "train",
        "--preset",
        "lara",
        "--dataset",
        str(dataset),
        "--out",
        str(run),
        "--steps",
        "6",
        "--batch-size",
        "2",
        "--no-progress",
        "log_every=4",
        "save_every=3",
        "keep_last=1",
        "augment=false",
        "policy.horizon=4",
        "policy.curriculum.mix_prob=0",
    ]
    assert main(argv) == 0
    rows = read_metrics(run / "metrics.jsonl")
    assert all({"stage", "step", "loss", "lr_backbone", "lr_head"} <= r.keys() for r in rows)
    # every log_every=4 steps, at the end, and at each stage's last step (6 steps: I, II-1, II-3, III x3; II-2
    # rounds to zero length), so a row never averages two stages
    assert [(r["step"], r["stage"]) for r in rows] == [(1, "I"), (2, "II-1"), (3, "II-3"), (4, "III"), (6, "III")]
    assert "loss_flow" not in rows[2] and "loss_flow" in rows[3]
    ckpts = run / "checkpoints"
    assert sorted(p.name for p in ckpts.iterdir() if p.is_dir() and not p.is_symlink()) == [
        "000006"
    ]  # keep_last=1
    assert (ckpts / "last").resolve() == (ckpts / "000006").resolve()
    assert (run / "loss.png").stat().st_size > 1000
    assert (run / "tensorboard").is_dir()
    policy = Policy.from_pretrained(run)  # the run dir (via checkpoints/last) loads as a policy
    assert policy.config.horizon == 4 and policy.config.image_size == 32
    saved = json.loads((ckpts / "000006" / "config.json").read_text())
    assert saved["train"]["steps"] == 6 and saved["train"]["preset"] == "lara"
    assert "III" in capsys.readouterr().out  # per-stage loss table


def test_cli_unknown_preset_did_you_mean(dataset, tmp_path, capsys):
    from latentvla.cli import main

    assert main(["train", "--preset", "lara-explict", "--dataset", str(dataset), "--out", str(tmp_path)]) == 2
    assert "Did you mean" in capsys.readouterr().err
    assert main(["train", "--preset", "rdvla", "--dataset", str(dataset), "--out", str(tmp_path), "stepz=3"]) == 2
    assert "Did you mean" in capsys.readouterr().err


def test_metrics_logger_truncates_on_resume_and_plots(tmp_path):
    log = MetricsLogger(tmp_path, 6, show_progress=False)
    for step, stage in zip(range(1, 7), ["I", "I", "II-1", "III", "III", "III"]):
        log.log(step, stage, {"loss": 1.0 / step, "loss_cot": 2.0 / step, "lr_backbone": 1e-3, "lr_head": 1e-3}, 4)
    log.close()
    MetricsLogger(tmp_path, 6, start_step=4, show_progress=False).close()  # resumed at step 4: rows 5, 6 go
    rows = read_metrics(tmp_path / "metrics.jsonl")
    assert [r["step"] for r in rows] == [1, 2, 3, 4] and rows[2]["stage"] == "II-1"
    assert rows[0]["samples_per_s"] > 0
    out = plot_losses(tmp_path / "metrics.jsonl", tmp_path / "loss.png")
    assert out.stat().st_size > 1000
    with pytest.raises(ValueError, match="no rows"):
        (tmp_path / "empty.jsonl").write_text("")
        plot_losses(tmp_path / "empty.jsonl", tmp_path / "x.png")
