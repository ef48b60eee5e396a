"""How LatentVLA drives its action heads in training: one step-seeded recurrence depth per
optimizer step for every micro-batch and DDP rank; the prelude's gated vision path; several flow-matching noise
draws per backbone forward."""

from __future__ import annotations

from collections import defaultdict
from contextlib import nullcontext

import pytest
import torch

from latentvla.data.dataset import make_normalizer
from latentvla.data.lerobot_format import LeRobotDatasetReader
from latentvla.data.synthetic import write_synthetic_dataset
from latentvla.models.recurrence import step_depth
from latentvla.train.loop import LossModule, accumulate_gradients
from policy_helpers import policy_and_batches


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    root = write_synthetic_dataset(tmp_path_factory.mktemp("hw") / "ds", num_episodes=2, length=10, image_size=32)
    reader = LeRobotDatasetReader(root)
    return reader, make_normalizer(reader)


def _policy(data, preset: str, *overrides: str):
    return policy_and_batches(*data, preset, *overrides, indices=((0, 5), (9, 13)))


def test_depth_is_one_per_step_for_every_micro_batch_and_rank(data):
    """Two 'ranks' with different global RNG streams (per-rank seeds), two micro-batches each: every forward of a
    step runs the same depth, step_depth(step); different steps draw different depths."""
    policy, batches = _policy(data, "rdvla", "policy.recurrent.mean_recurrence=6", "policy.recurrent.max_depth=12")
    module, stage = LossModule(policy.model), policy.model.final
    depths = {}
    for step in range(6):
        per_rank = []
        for rank in range(2):
            torch.manual_seed(100 + rank)  # what seed_everything(cfg.seed + rank) does to each rank's stream
            history = defaultdict(list)
            accumulate_gradients(
                module, iter(batches), stage, 2, torch.device("cpu"), nullcontext(), history, step=step
            )
            per_rank.append(history["iterations"])
        assert per_rank[0] == per_rank[1] and len(set(per_rank[0])) == 1, (step, per_rank)
        depths[step] = per_rank[0][0]
        assert depths[step] == step_depth(step, mean=6, sigma=0.5, max_depth=12)
    assert len(set(depths.values())) > 1, depths


def test_step_depth_is_a_pure_function_of_the_step():
    assert [step_depth(s) for s in range(20)] == [step_depth(s) for s in range(20)]
    assert len({step_depth(s) for s in range(20)}) > 5
    with pytest.raises(ValueError, match="step"):
        step_depth(-1)


def test_prelude_reads_mid_layer_image_tokens_through_its_gate(data):
    """The prelude's vision projection and gate learn: the mid-layer image tokens reach it (they were dead)."""
    policy, batches = _policy(data, "rdvla", "policy.recurrent.mean_recurrence=2", "policy.recurrent.max_depth=4")
    loss, _ = policy.model.compute_loss(batches[0], policy.model.final, generator=torch.Generator().manual_seed(0))
    loss.mean().backward()
    prelude = policy.model.head.prelude
    assert prelude.kv_vision.weight.grad is not None and prelude.kv_vision.weight.grad.abs().sum() > 0
    assert prelude.vision_gate.grad is not None and prelude.vision_gate.grad.abs() > 0


def test_flow_expert_draws_repeats_per_backbone_forward(data):
    """expert.repeats = 3: one backbone forward (K + 1 Coconut passes), the expert sees 3 x B noisy chunks, the
    loss stays (B,)."""
    policy, batches = _policy(data, "lara", "policy.expert.repeats=3")
    model, rows, forwards = policy.model, [], []
    model.backbone.register_forward_hook(lambda *_: forwards.append(1))
    orig = model.head._velocity
    model.head._velocity = lambda x_t, *a, **k: rows.append(x_t.shape[0]) or orig(x_t, *a, **k)
    loss, metrics = model.compute_loss(batches[0], model.final, generator=torch.Generator().manual_seed(0))
    assert loss.shape == (2,) and rows == [6] and "loss_flow" in metrics
    assert len(forwards) == model.final.num_thinking + 1
