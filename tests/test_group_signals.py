"""A signal to the whole process group: SLURM's scancel, `kill -- -PGID` and Ctrl-C reach the
DataLoader workers and the DDP ranks too, not only the main process. The run must still finish its step, save,
print one line and exit 128 + signal; the workers must neither die first nor outlive it."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from latentvla.train.checkpoint import list_checkpoints

STEPS = 500  # never reached: the signal comes first


@pytest.fixture(scope="module")
def dataset(tmp_path_factory) -> Path:
    from latentvla.data.synthetic import write_synthetic_dataset

    return write_synthetic_dataset(tmp_path_factory.mktemp("data") / "ds", num_episodes=2, length=8, image_size=32)


def _env() -> dict:
    src = str(Path(__file__).resolve().parents[1] / "src")
    return {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": os.environ.get("PYTHONPATH", src)}


def _signal_group_mid_run(dataset: Path, run: Path, sig: int, *extra: str) -> tuple[int, str]:
    """Start `latentvla train` (DataLoader workers on) in its own process group, signal the group once two steps
    are logged, and return (exit code, stderr) after checking that no process of the group is left."""
    argv = [
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
        str(STEPS),
        "--batch-size",
        "2",
        "--no-progress",
        "num_workers=1",
        "policy.horizon=4",
        "save_every=1000",
        "log_every=1",
        *extra,
    ]
    proc = subprocess.Popen(
        argv, env=_env(), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, start_new_session=True
    )
    metrics, deadline = run / "metrics.jsonl", time.monotonic() + 300
    try:
        while not (metrics.is_file() and len(metrics.read_text().splitlines()) >= 2):
            assert proc.poll() is None, proc.communicate()[1].decode()
            assert time.monotonic() < deadline, "training did not start"
            time.sleep(0.05)
        os.killpg(proc.pid, sig)  # every process of the group, as scancel / a terminal's Ctrl-C does
        _, err = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
    for _ in range(100):  # the workers end with the run (they ignore the group signal, not their parent)
        try:
            os.killpg(proc.pid, 0)
        except ProcessLookupError:
            break
        time.sleep(0.1)
    else:
        os.killpg(proc.pid, signal.SIGKILL)
        pytest.fail("processes of the run outlived it")
    return proc.returncode, err.decode()


def _assert_saved_in_one_line(code: int, err: str, sig: int, run: Path) -> None:
    assert code == 128 + sig, err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in err, err
    saved = list_checkpoints(run)
    assert len(saved) == 1 and int(saved[0].name) >= 2  # the steps since the start were not lost
    assert (
        f"interrupted by {signal.Signals(sig).name}: saved {saved[0]} at step {int(saved[0].name)} of {STEPS}"
        in lines[0]
    )
    assert "--resume" in lines[0]


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_group_signal_with_dataloader_workers_saves_and_exits_in_one_line(sig, dataset, tmp_path):
    run = tmp_path / "run"
    code, err = _signal_group_mid_run(dataset, run, sig)
    _assert_saved_in_one_line(code, err, sig, run)


@pytest.mark.slow
def test_group_sigterm_to_a_ddp_run_with_workers_saves_and_exits_143_in_one_line(dataset, tmp_path):
    run = tmp_path / "run"
    code, err = _signal_group_mid_run(dataset, run, signal.SIGTERM, "--nproc", "2")
    _assert_saved_in_one_line(code, err, signal.SIGTERM, run)
