"""No host syncs in a training step (issue 22 item 5): for each preset, every optimizer step of a real `train` run
that writes no log row and no checkpoint makes zero host reads of device values (`tests/sync_counter.py`): metrics
stay tensors until the log row, the CoT box text comes from the data loader, the supervised CE positions and
thinking columns from the host layout, the non-finite guard reads last step's verdict from pinned memory."""

from __future__ import annotations

import pytest

from latentvla.config import apply_overrides, get_preset
from latentvla.data.synthetic import write_synthetic_dataset
from latentvla.train import loop
from latentvla.train.logging import MetricsLogger, read_metrics
from sync_counter import SyncCounter

COMMON = ["batch_size=2", "grad_accum=2", "num_workers=0", "save_every=1000", "policy.horizon=4",
          "policy.image_size=32"]  # fmt: skip


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    return write_synthetic_dataset(tmp_path_factory.mktemp("sync") / "ds", num_episodes=2, length=10, image_size=32)


def run_counted(cfg, dataset, run, monkeypatch) -> tuple[SyncCounter, dict[int, str], set[int]]:
    """Train `cfg` under a SyncCounter; returns it, the stage of each step and the steps that logged or saved."""
    counter, stages, logged = SyncCounter(), {}, set()
    set_lrs, log, save = loop.set_lrs, MetricsLogger.log, loop.ckpt_lib.save_checkpoint

    def start_step(optimizer, position, stage, *a, **kw):  # first call of each loop iteration
        counter.bucket += 1
        stages[counter.bucket] = stage.name
        return set_lrs(optimizer, position, stage, *a, **kw)

    def log_row(self, *a, **kw):
        logged.add(counter.bucket)
        return log(self, *a, **kw)

    def save_ckpt(*a, **kw):
        logged.add(counter.bucket)
        return save(*a, **kw)

    monkeypatch.setattr(loop, "set_lrs", start_step)
    monkeypatch.setattr(MetricsLogger, "log", log_row)
    monkeypatch.setattr(loop.ckpt_lib, "save_checkpoint", save_ckpt)
    with counter:
        loop.train(cfg, dataset, run, show_progress=False)
    return counter, stages, logged


@pytest.mark.parametrize(
    "preset, steps", [("lara", 20), ("lara-no-cot", 8), ("rdvla", 4), ("bc", 4)]
)
def test_no_host_sync_outside_log_steps(preset, steps, dataset, tmp_path, monkeypatch):
    cfg = apply_overrides(get_preset(preset, "micro"), [f"steps={steps}", f"log_every={steps}", *COMMON])
    counter, stages, logged = run_counted(cfg, dataset, tmp_path / "run", monkeypatch)
    quiet = [s for s in stages if s not in logged]
    assert quiet and {stages[s] for s in quiet} == set(stages.values()), (stages, logged)  # every stage checked
    bad = counter.summary(quiet)
    assert not bad, f"host reads of device values in steps without a log row: {bad}"
    assert counter.device_syncs(), "the counter sees the log steps' reads (it can fail)"


def test_log_rows_keep_their_keys_and_values(dataset, tmp_path):
    """The metrics a row shows are the mean of the micro-batch values, read once at the row (one step per row
    here, so the row's loss is the mean of the two micro-batch losses the model returned)."""
    cfg = apply_overrides(get_preset("lara", "micro"), ["steps=3", "log_every=1", *COMMON])
    seen = []
    forward = loop.LossModule.forward

    def recording(self, batch, stage, step=None):
        per_sample, metrics = forward(self, batch, stage, step)
        seen.append({k: float(v) for k, v in metrics.items()})
        return per_sample, metrics

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(loop.LossModule, "forward", recording)
        loop.train(cfg, dataset, tmp_path / "run", show_progress=False)
    rows = read_metrics(tmp_path / "run" / "metrics.jsonl")
    assert len(rows) == 3 and len(seen) == 6
    for row, pair in zip(rows, [seen[0:2], seen[2:4], seen[4:6]]):
        for k in pair[0]:  # a step that trained an earlier stage (Coconut mixing) logs "<key>@<stage>"
            key = k if k in row else next(r for r in row if r.startswith(k + "@"))
            assert row[key] == (pair[0][k] + pair[1][k]) / 2, (key, row[key])
        assert {"loss", "grad_norm", "lr_backbone", "steps_per_s"} <= set(row)
        assert len(pair[0]) >= 2, pair[0]  # loss and the stage's terms
