"""Fault injection on the real CLI process: SIGKILL `latentvla train` at random moments
several times and resume each time; SIGTERM it once. Both must end with the weights of an uninterrupted run.
Micro lara on a tiny synthetic dataset, a checkpoint every step so kills also land inside checkpoint writes."""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from latentvla.train.checkpoint import latest_checkpoint, list_checkpoints

pytestmark = pytest.mark.slow
STEPS = 20


@pytest.fixture(scope="module")
def dataset(tmp_path_factory) -> Path:
    from latentvla.data.synthetic import write_synthetic_dataset

    return write_synthetic_dataset(tmp_path_factory.mktemp("data") / "ds", num_episodes=2, length=8, image_size=32)


def _argv(dataset: Path, run: Path, *extra: str, steps: int = STEPS) -> list[str]:
    return [
        sys.executable,
        "-m",
        "latentvla.cli",
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
        str(steps),
        "--batch-size",
        "2",
        "--no-progress",
        "num_workers=0",
        "policy.horizon=4",
        "save_every=1",
        "keep_last=2",
        "log_every=1",
        *extra,
    ]


def _env() -> dict:
    src = str(Path(__file__).resolve().parents[1] / "src")
    return {
        **os.environ,
        "OMP_NUM_THREADS": "1",
        "PYTHONPATH": os.environ.get("PYTHONPATH", src),  # CI: the editable install; here: the checkout
    }


@pytest.fixture(scope="module")
def reference(dataset, tmp_path_factory) -> dict[str, torch.Tensor]:
    run = tmp_path_factory.mktemp("ref") / "run"
    subprocess.run(_argv(dataset, run), env=_env(), check=True, capture_output=True, timeout=300)
    return load_file(str(latest_checkpoint(run) / "model.safetensors"))


def _wait_for_checkpoint_after(run: Path, step: int, proc: subprocess.Popen, timeout: float = 120) -> bool:
    """Wait until a complete checkpoint newer than `step` exists (True) or the process ended (False)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        found = list_checkpoints(run)
        if found and int(found[-1].name) > step:
            return True
        if proc.poll() is not None:
            return False
        time.sleep(0.02)
    raise TimeoutError(f"no new checkpoint in {run} after {timeout} s")


def _final_weights(run: Path, steps: int = STEPS) -> dict[str, torch.Tensor]:
    last = latest_checkpoint(run)
    assert last.name == f"{steps:06d}"
    return load_file(str(last / "model.safetensors"))


def _assert_same(a: dict, b: dict) -> None:
    assert a.keys() == b.keys()
    assert all(torch.equal(a[k], b[k]) for k in a), "resumed weights differ from the uninterrupted run"


def test_sigkill_at_random_moments_then_resume_matches_uninterrupted(dataset, reference, tmp_path):
    run, rng, kills, resume, step = tmp_path / "run", random.Random(0), 0, [], 0
    while True:
        proc = subprocess.Popen(
            _argv(dataset, run, *resume), env=_env(), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE
        )
        if kills < 3 and _wait_for_checkpoint_after(run, step, proc):
            time.sleep(rng.uniform(0.0, 0.25))  # a random moment: mid-step, mid-checkpoint-write, mid-prune
            if proc.poll() is None:
                proc.send_signal(signal.SIGKILL)
                proc.wait()
                kills += 1
                step = int(latest_checkpoint(run).name)  # the next kill waits for progress beyond this
                if step == STEPS:  # killed after its final checkpoint: nothing left to resume
                    break
                resume = ["--resume"]
                continue
        _, err = proc.communicate(timeout=300)
        assert proc.returncode == 0, err.decode()
        break
    assert kills >= 2  # bounded: at most 3 kills; several land before the end (20 steps)
    _assert_same(_final_weights(run), reference)
    assert not any(p.name.endswith(".tmp") for p in (run / "checkpoints").iterdir())


def test_sigterm_writes_a_checkpoint_and_resume_is_exact(dataset, reference, tmp_path):
    run = tmp_path / "run"
    proc = subprocess.Popen(_argv(dataset, run), env=_env(), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    assert _wait_for_checkpoint_after(run, 1, proc)  # well inside the run
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=120)
    message = err.decode()
    assert proc.returncode == 128 + signal.SIGTERM, message
    assert "interrupted by SIGTERM" in message and "--resume" in message
    stopped = int(latest_checkpoint(run).name)
    assert 2 <= stopped < STEPS and f"at step {stopped} of {STEPS}" in message
    done = subprocess.run(_argv(dataset, run, "--resume"), env=_env(), capture_output=True, timeout=300)
    assert done.returncode == 0, done.stderr.decode()
    _assert_same(_final_weights(run), reference)


def test_sigterm_to_a_ddp_launcher_saves_once_and_resume_is_exact(dataset, tmp_path):
    """`train --nproc 2`: SIGTERM to the launcher reaches both ranks (via torchrun), they stop on the same step
    and write one checkpoint; resuming matches an uninterrupted 2-process run."""
    ddp, steps = ["--nproc", "2"], 8
    full = subprocess.run(
        _argv(dataset, tmp_path / "full", *ddp, steps=steps), env=_env(), capture_output=True, timeout=600
    )
    assert full.returncode == 0, full.stderr.decode()
    run = tmp_path / "run"
    proc = subprocess.Popen(
        _argv(dataset, run, *ddp, steps=steps), env=_env(), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE
    )
    assert _wait_for_checkpoint_after(run, 1, proc, timeout=300)
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode != 0 and "interrupted by SIGTERM" in err.decode(), err.decode()
    stopped = int(latest_checkpoint(run).name)
    assert stopped < steps
    resumed = subprocess.run(
        _argv(dataset, run, *ddp, "--resume", steps=steps), env=_env(), capture_output=True, timeout=600
    )
    assert resumed.returncode == 0, resumed.stderr.decode()
    _assert_same(_final_weights(run, steps), _final_weights(tmp_path / "full", steps))
