"""No host syncs in a training step: for each preset, every optimizer step of a real `train` run
that writes no log row and no checkpoint makes zero host reads of device values (`tests/sync_counter.py`): metrics
stay tensors until the log row, the CoT box text comes from the data loader, the supervised CE positions and
thinking columns from the host layout, the non-finite guard reads last step's verdict from pinned memory."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from latentvla.config import apply_overrides, get_preset
from latentvla.constants import COT_BBOX, COT_BBOX_TEXT, COT_BBOX_VISIBLE, COT_REASONING, COT_SUBTASK
from latentvla.data.cot import format_box, format_cot
from latentvla.data.dataset import make_normalizer
from latentvla.data.lerobot import LeRobotDatasetReader
from latentvla.data.synthetic import write_synthetic_dataset
from latentvla.models import sequence as seq_lib
from latentvla.models import vla as vla_lib
from latentvla.models.recurrent_ops import trunc_normal_icdf_
from latentvla.train import loop
from latentvla.train.logging import MetricsLogger, read_metrics
from policy_helpers import policy_and_batches
from sync_counter import SyncCounter

COMMON = [
    "batch_size=2",
    "grad_accum=2",
    "num_workers=0",
    "save_every=1000",
    "policy.horizon=4",
    "policy.image_size=32",
]


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    return write_synthetic_dataset(
        tmp_path_factory.mktemp("sync") / "ds", num_episodes=2, length=10, image_size=32
    )


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


@pytest.mark.parametrize("preset, steps", [("lara", 20), ("lara-no-cot", 8), ("rdvla", 4), ("bc", 4)])
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


# ------------------------------------------------------------- the sync-free paths change nothing that is learned
def _main_token_losses(self, hidden, seq):
    """`LatentVLA._token_losses` as it was on main: boolean indexing (a host read of the count)."""
    targets = seq.targets
    valid = targets != seq_lib.IGNORE
    ce = torch.zeros(targets.shape, dtype=torch.float32, device=hidden.device)
    logits = self.backbone.logits(hidden[valid])
    ce[valid] = F.cross_entropy(logits.float(), targets[valid], reduction="none")
    off = self._action_offset
    is_act = (targets >= off) & (targets < off + self.cfg.num_action_bins)
    text, act = valid & ~is_act, valid & is_act
    per = lambda m: (ce * m).sum(1) / m.sum(1).clamp(min=1)  # noqa: E731
    return per(text), per(act)


def _main_compose_cot(batch, components, index):
    """`compose_cot` as it was on main: the box read back from the batch tensors per sample."""
    return format_cot(
        batch[COT_SUBTASK][index],
        batch[COT_BBOX][index].tolist(),
        bool(batch[COT_BBOX_VISIBLE][index]),
        batch[COT_REASONING][index],
        components,
    )


def _loss_and_grads(model, batch, stage):
    model.zero_grad(set_to_none=True)
    loss, metrics = model.compute_loss(batch, stage, generator=torch.Generator().manual_seed(3), step=5)
    loss.mean().backward()
    grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
    return loss.detach(), grads, {k: float(v) for k, v in metrics.items()}


@pytest.fixture(scope="module")
def data(dataset):
    reader = LeRobotDatasetReader(dataset)
    return reader, make_normalizer(reader)


@pytest.mark.parametrize("preset", ["lara", "lara-no-cot", "rdvla"])
def test_every_stage_same_losses_gradients_and_metrics_as_main(data, preset):
    """Bitwise: index_select at the host-known supervised positions = boolean indexing; the loader's box text =
    the box formatted from the tensors; action ids written into the layout on the device (forced here on the
    CPU) = laid out on the host."""
    policy, (batch,) = policy_and_batches(*data, preset, indices=((0, 3, 9, 14),))
    model = policy.model.train()
    assert COT_BBOX_TEXT in batch
    for stage in policy.config.curriculum.stages():
        with pytest.MonkeyPatch.context() as mp:
            mp.setattr(seq_lib, "_on_device", lambda t: True)  # the accelerator branch of build_sequence
            new, g_new, m_new = _loss_and_grads(model, batch, stage)
        with pytest.MonkeyPatch.context() as mp:
            mp.setattr(vla_lib.LatentVLA, "_token_losses", _main_token_losses)
            mp.setattr(vla_lib, "compose_cot", _main_compose_cot)
            old, g_old, m_old = _loss_and_grads(model, batch, stage)
        assert torch.equal(new, old), (preset, stage.name)
        assert g_new.keys() == g_old.keys() and all(torch.equal(g_new[k], g_old[k]) for k in g_old), stage.name
        assert m_new == m_old


def test_layout_with_device_action_ids_equals_the_host_layout(data):
    policy, (batch,) = policy_and_batches(*data, "lara", indices=((0, 3, 9, 14),))
    tok, model = policy.model.tokenizer, policy.model
    ids = model._action_offset + model.action_tokenizer.encode(batch["action"])
    texts = [vla_lib.compose_cot(batch, ("subtask", "bbox", "reasoning"), i) for i in range(4)]
    args = dict(n_latent=1, n_img_next=4, action_token_ids=ids, n_query=0, n_image=5)
    for n_img_next in (4, 0):  # without <img_next> the first action's target sits at each row's own text end
        host = seq_lib.build_sequence(tok, list(batch["task"]), texts, **{**args, "n_img_next": n_img_next})
        with pytest.MonkeyPatch.context() as mp:
            mp.setattr(seq_lib, "_on_device", lambda t: True)
            dev = seq_lib.build_sequence(tok, list(batch["task"]), texts, **{**args, "n_img_next": n_img_next})
        for f in ("input_ids", "segments", "position_ids", "targets", "supervised", "action_index"):
            assert torch.equal(getattr(dev, f), getattr(host, f)), f
        assert dev.thinking_cols == host.thinking_cols == host.thinking_index[0].tolist()
        assert torch.equal(host.supervised, (host.targets != seq_lib.IGNORE).flatten().nonzero().squeeze(1))


def test_loader_box_text_is_the_cot_box_string(data):
    policy, (batch,) = policy_and_batches(*data, "lara", indices=((0, 3, 9, 14),))
    for i in range(4):
        assert batch[COT_BBOX_TEXT][i] == format_box(batch[COT_BBOX][i].tolist(), bool(batch[COT_BBOX_VISIBLE][i]))
        for comps in (("subtask", "bbox", "reasoning"), ("bbox", "reasoning"), ("reasoning",)):
            assert vla_lib.compose_cot(batch, comps, i) == _main_compose_cot(batch, comps, i)


def test_inverse_cdf_truncated_normal_matches_torchs_distribution():
    """The recurrent head's initial state off the CPU: same truncated normal as nn.init.trunc_normal_."""
    std, n = 0.02, 400_000
    x = trunc_normal_icdf_(torch.empty(n), std, torch.Generator().manual_seed(0))
    ref = torch.nn.init.trunc_normal_(
        torch.empty(n), 0.0, std, -3 * std, 3 * std, torch.Generator().manual_seed(1)
    )
    assert x.abs().max() <= 3 * std and x.mean().abs() < 1e-4
    assert abs(x.std() / ref.std() - 1) < 0.01 and abs(x.std() / std - 0.98658) < 0.01  # truncated at 3 sigma
    for q in (0.01, 0.1, 0.5, 0.9, 0.99):
        assert abs(x.quantile(q) - ref.quantile(q)) < 0.03 * std


@pytest.mark.slow  # ~25 s on 2 busy cores
def test_no_host_sync_outside_log_steps_hf_backbone(dataset, tmp_path, monkeypatch):
    """lara on a tiny Qwen3-VL: its own vision tower with images preprocessed on the device, DeepStack, the EMA
    target. Allowed: the tower inputs made once per image shape (`VLMVision._tower_inputs`), and transformers'
    SDPA vision attention splitting by the segment boundaries `_tower_inputs` keeps on the host."""
    pytest.importorskip("transformers")
    from latentvla.config import use_backbone
    from latentvla.testing.tiny_hf import save_tiny

    path = save_tiny("qwen3_vl", tmp_path / "qwen3_vl")
    cfg = use_backbone(get_preset("lara", "micro"), str(path))
    cfg = apply_overrides(cfg, ["steps=20", "log_every=20", *COMMON, "policy.num_action_bins=8"])
    counter, stages, logged = run_counted(cfg, dataset, tmp_path / "run", monkeypatch)
    quiet = [s for s in stages if s not in logged]
    assert quiet and {stages[s] for s in quiet} == set(stages.values()), (stages, logged)

    def allowed(site: str) -> bool:
        inner = site.split(" <- ")[0]
        return ":_tower_inputs:" in site or ("modeling_qwen3_vl.py:<listcomp>" in inner and ":encode:" in site)

    bad = {k: v for k, v in counter.summary(quiet).items() if not allowed(k.split(" at ", 1)[1])}
    assert not bad, f"host reads of device values in steps without a log row: {bad}"
    assert sum(v for k, v in counter.summary(quiet[1:]).items() if ":_tower_inputs:" in k) == 0  # once


@pytest.mark.slow  # ~20 s on 2 busy cores
def test_deepstack_by_index_equals_transformers_boolean_mask(data, tmp_path):
    """Qwen3-VL DeepStack added at our host-known image columns = transformers' hidden[mask] += embeds, for the
    per-sample losses and every gradient (bitwise)."""
    pytest.importorskip("transformers")
    from latentvla.config import use_backbone
    from latentvla.testing.tiny_hf import save_tiny

    path = save_tiny("qwen3_vl", tmp_path / "qwen3_vl")
    policy, (batch,) = policy_and_batches(
        *data, "lara", "policy.num_action_bins=8", indices=((0, 9),), cfg_fn=lambda c: use_backbone(c, str(path))
    )
    model, text = policy.model.train(), policy.model.backbone._text
    for stage in (model.final,):  # Coconut passes, visual latents, the head
        ours = _loss_and_grads(model, batch, stage)
        assert policy.model.backbone._deepstack_cols[1].numel() > 0  # our path ran
        del text._deepstack_process  # the class's boolean-mask version
        try:
            ref = _loss_and_grads(model, batch, stage)
        finally:
            text._deepstack_process = policy.model.backbone._deepstack_add
        assert torch.equal(ours[0], ref[0]), stage.name
        assert ours[1].keys() == ref[1].keys() and all(torch.equal(ours[1][k], ref[1][k]) for k in ref[1])


def test_num_workers_auto_is_zero_on_cpu_and_leaves_a_core_on_cuda(monkeypatch):
    from latentvla.train.loop import loader_workers

    cpu, cuda = torch.device("cpu"), torch.device("cuda", 0)
    assert get_preset("lara", "micro").num_workers == -1  # auto by default
    assert loader_workers(-1, cpu, cores=16) == 0 and loader_workers(2, cpu) == 2 and loader_workers(0, cuda) == 0
    assert [loader_workers(-1, cuda, cores=c) for c in (1, 2, 3, 16)] == [0, 1, 2, 4]
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "8")  # 8 ranks on a 16-core node: 2 cores each
    assert loader_workers(-1, cuda, cores=16) == 1
    with pytest.raises(ValueError, match="num_workers"):
        apply_overrides(get_preset("lara", "micro"), ["num_workers=-2"])


def test_finite_guard_reports_each_verdict_once():
    from latentvla.train.finite_guard import FiniteGuard, host_floats, step_loss

    guard = FiniteGuard()
    assert guard.pop() is None
    guard.push(3, step_loss([torch.tensor(1.5), 2.0]), torch.tensor(0.5))
    v = guard.pop()
    assert v.step == 3 and v.finite and guard.pop() is None
    guard.push(4, step_loss([torch.tensor(float("nan")), torch.tensor(1.0)]), torch.tensor(0.5))
    v = guard.pop()
    assert v.step == 4 and not v.finite and np.isnan(v.loss) and v.grad_norm == 0.5
    guard.push(5, torch.tensor(1.0), torch.tensor(float("inf")))
    assert not guard.pop().finite
    values = [torch.tensor(0.1), 0.25, torch.tensor(1 / 3, dtype=torch.float32)]
    assert host_floats(values) == [float(v) for v in values]


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA: counts the syncs the driver sees")
@pytest.mark.parametrize("preset, steps", [("lara", 20), ("rdvla", 4), ("bc", 4)])
def test_no_cuda_sync_outside_log_steps(preset, steps, dataset, tmp_path, monkeypatch):
    """On CUDA, torch's sync debug mode also sees what the CPU count cannot (blocking host-to-device copies).
    Step 0 fills the one-time caches (weights, grids, pinned buffers) and is not checked."""
    import warnings

    cfg = apply_overrides(
        get_preset(preset, "micro"), [f"steps={steps}", f"log_every={steps}", *COMMON, "device=cuda"]
    )
    marks, logged = [], set()  # marks[s]: warnings recorded before step s began
    set_lrs, log = loop.set_lrs, MetricsLogger.log

    def start_step(*a, **kw):
        marks.append(len(caught))
        return set_lrs(*a, **kw)

    def log_row(self, *a, **kw):
        logged.add(len(marks) - 1)
        return log(self, *a, **kw)

    monkeypatch.setattr(loop, "set_lrs", start_step)
    monkeypatch.setattr(MetricsLogger, "log", log_row)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        torch.cuda.set_sync_debug_mode("warn")
        try:
            loop.train(cfg, dataset, tmp_path / "run", show_progress=False)
        finally:
            torch.cuda.set_sync_debug_mode("default")
    bounds = [*marks, len(caught)]
    per_step = {
        s: [str(w.message) for w in caught[bounds[s] : bounds[s + 1]] if "synchroniz" in str(w.message)]
        for s in range(len(marks))
    }
    quiet = [s for s in range(1, len(marks)) if s not in logged]
    assert quiet and not {s: per_step[s] for s in quiet if per_step[s]}, per_step
