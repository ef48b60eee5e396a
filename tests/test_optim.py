"""LR schedule shape (warm-up + cosine, restarted at curriculum boundaries), AdamW groups, sampler sharding."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from latentvla.train.curriculum import CurriculumConfig, StageSpec, stage_boundaries
from latentvla.train.optim import ADAM_BETAS, build_optimizer, lr_multiplier, no_decay_param_ids, set_lrs
from latentvla.train.sampler import ResumableBatchSampler


def test_single_stage_warmup_then_cosine():
    total = 100
    m = [lr_multiplier(s, [0], total, warmup_frac=0.1, min_lr_frac=0.1) for s in range(total)]
    assert m[:10] == pytest.approx([(k + 1) / 10 for k in range(10)])  # linear warm-up to 1.0
    assert m[10] == pytest.approx(1.0)  # cosine starts at the peak
    assert all(a >= b for a, b in zip(m[10:], m[11:]))  # then decays monotonically ...
    assert m[-1] == pytest.approx(0.1)  # ... to min_lr_frac at the last step
    mid = 10 + (total - 10 - 1) / 2
    assert lr_multiplier(int(mid), [0], total, 0.1, 0.1) == pytest.approx(0.55, abs=0.02)


def test_schedule_restarts_at_every_stage_boundary():
    total = 100
    bounds = [s for s, _ in stage_boundaries(CurriculumConfig("lara"), total)]
    assert bounds == [0, 20, 30, 40, 50]
    m = [lr_multiplier(s, bounds, total, warmup_frac=0.2, min_lr_frac=0.0) for s in range(total)]
    for i, start in enumerate(bounds):
        end = bounds[i + 1] if i + 1 < len(bounds) else total
        seg = m[start:end]
        warm = max(1, round(0.2 * (end - start)))
        assert seg[0] == pytest.approx(1 / warm)  # a fresh warm-up at each stage start
        assert max(seg) == pytest.approx(1.0)
        assert seg[-1] == pytest.approx(0.0, abs=1e-12)  # each stage decays fully
        if start > 0:
            assert m[start] < m[start - 1] or m[start - 1] == 0.0


def test_no_warmup_and_bad_inputs():
    assert lr_multiplier(0, [0], 10, 0.0, 0.0) == pytest.approx(1.0)
    with pytest.raises(ValueError, match="boundaries"):
        lr_multiplier(0, [3], 10, 0.1, 0.1)
    with pytest.raises(ValueError, match="outside"):
        lr_multiplier(10, [0], 10, 0.1, 0.1)
    with pytest.raises(ValueError, match="warmup_frac"):
        lr_multiplier(0, [0], 10, 1.5, 0.1)


class _Toy(nn.Module):
    def __init__(self):
        super().__init__()
        self.embed = nn.Embedding(10, 8)
        self.query_tokens = nn.Parameter(torch.zeros(4, 8))
        self.proj = nn.Linear(8, 8)
        self.norm = nn.LayerNorm(8)
        self.head = nn.Linear(8, 2)


def test_optimizer_groups_betas_and_no_decay():
    toy = _Toy()
    groups = {
        "backbone": [toy.embed.weight, toy.query_tokens, *toy.proj.parameters(), *toy.norm.parameters()],
        "head": list(toy.head.parameters()),
    }
    opt = build_optimizer(groups, 1e-4, 1e-3, 0.05, no_decay_param_ids(toy))
    by_name = {g["name"]: g for g in opt.param_groups}
    assert set(by_name) == {"backbone/decay", "backbone/no_decay", "head/decay", "head/no_decay"}
    decayed = {id(p) for p in by_name["backbone/decay"]["params"]}
    assert decayed == {id(toy.proj.weight)}  # embeddings, learned tokens, norms, biases: no decay
    assert (
        by_name["backbone/no_decay"]["weight_decay"] == 0.0 and by_name["backbone/decay"]["weight_decay"] == 0.05
    )
    assert by_name["head/decay"]["lr"] == 1e-3 and by_name["backbone/decay"]["lr"] == 1e-4
    assert all(g["betas"] == ADAM_BETAS for g in opt.param_groups)
    with pytest.raises(ValueError, match="unknown parameter group"):
        build_optimizer({"encoder": [toy.proj.weight]}, 1e-4, 1e-3, 0.0)
    with pytest.raises(ValueError, match="more than one group"):
        build_optimizer({"backbone": [toy.proj.weight], "head": [toy.proj.weight]}, 1e-4, 1e-3, 0.0)


def test_set_lrs_applies_stage_multipliers():
    toy = _Toy()
    opt = build_optimizer(
        {"backbone": list(toy.proj.parameters()), "head": list(toy.head.parameters())}, 1.0, 2.0, 0.0
    )

    class Cfg:
        steps, warmup_frac, min_lr_frac = 10, 0.0, 0.0

    stage = StageSpec(
        name="III",
        latent_components=(),
        explicit_components=(),
        visual_latents=False,
        discrete_actions=False,
        train_head=True,
        w_head=1.0,
        lr_backbone=0.5,
        lr_head=1.0,
    )
    lrs = set_lrs(opt, 0, stage, Cfg, [0])
    assert lrs == {"lr_backbone": pytest.approx(0.5), "lr_head": pytest.approx(2.0)}
    lrs = set_lrs(opt, 9, stage, Cfg, [0])
    assert lrs["lr_head"] == pytest.approx(0.0, abs=1e-12)
    assert all(math.isclose(g["lr"], lrs[f"lr_{g['group']}"]) for g in opt.param_groups)


def test_vision_group_has_its_own_base_lr_and_follows_the_backbone_stage_multiplier():
    """LaRA Table 5: VLM / vision / heads LRs; lr_vision=None means the backbone's LR."""
    toy = _Toy()
    groups = {"backbone": [toy.proj.weight], "vision": [toy.embed.weight], "head": [toy.head.weight]}
    opt = build_optimizer(groups, 1e-5, 1e-4, 0.0, lr_vision=3e-5)
    base = {g["group"]: g["base_lr"] for g in opt.param_groups}
    assert base == {"backbone": 1e-5, "vision": 3e-5, "head": 1e-4}
    assert {g["group"]: g["base_lr"] for g in build_optimizer(groups, 1e-5, 1e-4, 0.0).param_groups}[
        "vision"
    ] == 1e-5

    class Cfg:
        steps, warmup_frac, min_lr_frac = 10, 0.0, 0.0

    stage = StageSpec(
        name="III",
        latent_components=(),
        explicit_components=(),
        visual_latents=False,
        discrete_actions=False,
        train_head=True,
        w_head=1.0,
        lr_backbone=0.5,
        lr_head=1.0,
    )
    lrs = set_lrs(opt, 0, stage, Cfg, [0])
    assert lrs["lr_vision"] == pytest.approx(1.5e-5) and lrs["lr_backbone"] == pytest.approx(5e-6)


def test_sampler_resume_and_rank_shards_cover_the_global_batch():
    full = ResumableBatchSampler(10, 4, seed=3)
    it = iter(full)
    first = [next(it) for _ in range(6)]  # 24 samples: crosses two epoch boundaries
    assert sorted(sum(first[:2], []) + first[2][:2]) == list(range(10))  # epoch 0 is a permutation
    resumed = iter(ResumableBatchSampler(10, 4, seed=3, start=3))
    assert [next(resumed) for _ in range(3)] == first[3:]
    shards = [ResumableBatchSampler(10, 4, seed=3, rank=r, world_size=2) for r in range(2)]
    for c in range(6):
        assert shards[0].batch(c) + shards[1].batch(c) == first[c]
    with pytest.raises(ValueError, match="divisible"):
        ResumableBatchSampler(10, 3, seed=0, world_size=2)


def test_from_scratch_sizes_get_their_backbone_lr_and_pretrained_backbones_do_not(tmp_path):
    """The tiny backbone trains at 1e-3 (at 3e-4 the demo's `lara` never learned the CoT format, LOG.md 12-02);
    every preset that learns CoT text shares it (the ablations differ in one factor); a pretrained backbone does not
    inherit it, the paper presets keep their own LRs, and an explicit override still wins."""
    import json

    from latentvla.config import (
        PRETRAINED_LR_BACKBONE,
        SCRATCH_LR_BACKBONE,
        apply_overrides,
        get_preset,
        use_backbone,
    )

    vla = ("lara", "lara-explicit", "lara-latent-text", "lara-no-cot", "ecot", "lara-rd")
    assert {get_preset(p, "tiny").lr_backbone for p in vla} == {SCRATCH_LR_BACKBONE["tiny"]} == {1e-3}
    assert {get_preset(p, "small").lr_backbone for p in vla} == {PRETRAINED_LR_BACKBONE}
    assert get_preset("rdvla", "tiny").lr_backbone == PRETRAINED_LR_BACKBONE == 3e-4  # recurrent head, no text
    assert get_preset("lara", "tiny").lr_vision is None  # the vision encoder follows the backbone LR
    assert get_preset("bc").lr_backbone == 1e-3 and get_preset("lara-qwen3vl").lr_backbone == 1e-5

    lm = tmp_path / "lm"
    lm.mkdir()
    (lm / "config.json").write_text(json.dumps({"model_type": "qwen2"}))
    assert use_backbone(get_preset("lara", "tiny"), str(lm)).lr_backbone == PRETRAINED_LR_BACKBONE
    assert use_backbone(get_preset("lara-rd", "micro"), str(lm)).lr_backbone == PRETRAINED_LR_BACKBONE
    custom = use_backbone(apply_overrides(get_preset("lara", "tiny"), ["lr_backbone=5e-5"]), str(lm))
    assert custom.lr_backbone == 5e-5  # a user's own LR is never replaced
    assert use_backbone(get_preset("lara", "tiny"), None).lr_backbone == 1e-3
