"""The backbone package's interface: every kind satisfies the `Backbone` protocol (and really implements what it
has no default for), the old kind name "tiny" still loads, the one size table drives backbone and heads, and
the fields the policy owns (image size, cameras, action bins) cannot be set on the backbone, while old
config.json files that hold them still load."""

from __future__ import annotations

import dataclasses
import warnings

import pytest
import torch

from latentvla.config import PolicyConfig, apply_overrides, config_from_dict, config_to_dict, get_preset
from latentvla.models.backbones import (
    BACKBONE_SIZES,
    Backbone,
    BackboneConfig,
    ScratchBackbone,
    build_backbone,
)
from latentvla.models.vla import LatentVLA

# What each kind must implement itself: the protocol's stubs (`...`), as opposed to its defaults.
REQUIRED = ("encode_image", "embed", "forward", "logits", "new_cache", "transformer_blocks")
DEFAULTS = ("encode_images", "thought", "vision_modules", "embedding_modules", "merge_adapters")


def _kinds(tmp_path):
    torch.manual_seed(0)
    yield "scratch", build_backbone(BackboneConfig(size="micro"), image_size=32, num_cameras=2, num_action_bins=8)
    pytest.importorskip("transformers")
    from latentvla.testing.tiny_hf import save_tiny

    for kind, family in (("hf", "qwen2"), ("hf_vlm", "qwen2_5_vl")):
        path = save_tiny(family, tmp_path / family)
        yield (
            kind,
            build_backbone(
                BackboneConfig(kind=kind, hf_path=str(path)), image_size=32, num_cameras=2, num_action_bins=8
            ),
        )


def test_every_backbone_kind_satisfies_the_protocol(tmp_path):
    seen = []
    for kind, bb in _kinds(tmp_path):
        seen.append(kind)
        assert isinstance(bb, Backbone), kind
        for name in REQUIRED:  # a real implementation, not the protocol's stub
            assert getattr(type(bb), name) is not getattr(Backbone, name), (kind, name)
        assert bb.num_cameras == 2 and bb.tokenizer.num_action_bins == 8
        imgs = [torch.rand(1, 3, 32, 32) for _ in range(2)]
        tokens = bb.encode_images(imgs)
        assert tokens.shape == (1, 2 * bb.tokens_per_image, bb.width)
        blocks = bb.transformer_blocks()
        assert len(blocks) == bb.num_layers and all(isinstance(b, torch.nn.Module) for b in blocks)
        names = {id(m) for m in bb.modules()}
        for m in (*blocks, *bb.vision_modules(), *bb.embedding_modules()):
            assert id(m) in names, (kind, type(m).__name__)  # registered: FSDP2 can shard it
        hidden = torch.randn(1, 3, bb.width)
        if kind == "scratch":  # the defaults where the feature is absent
            assert bb.thought(hidden) is hidden and bb.cache_in_training and bb.embedding_modules() == []
            with pytest.raises(ValueError, match="no LoRA adapters"):
                bb.merge_adapters()
        else:
            units = bb.embedding_modules()  # the input embedding and the LM head, each once
            assert isinstance(units[0], torch.nn.Embedding) and len({id(m) for m in units}) == len(units) == 2
    assert seen[0] == "scratch"


def test_an_object_missing_a_member_is_not_a_backbone():
    class NoThought:  # everything but `thought` and `cache_in_training`
        tokenizer = width = num_layers = num_cameras = tokens_per_image = vision = None

        def __getattr__(self, name):
            if name in ("thought", "cache_in_training"):
                raise AttributeError(name)
            return lambda *a, **k: None

    assert not isinstance(NoThought(), Backbone)
    assert isinstance(ScratchBackbone(BackboneConfig(size="micro")), Backbone)


def test_old_kind_name_tiny_loads_with_a_warning():
    with pytest.warns(FutureWarning, match="'tiny' is now called 'scratch'"):
        cfg = BackboneConfig(kind="tiny", size="micro")
    assert cfg.kind == "scratch"
    old = config_to_dict(get_preset("lara", "micro").policy)
    old["backbone"]["kind"] = "tiny"  # a config.json written before the rename
    with pytest.warns(FutureWarning, match="'scratch'"):
        policy = config_from_dict(PolicyConfig, old)
    assert policy == get_preset("lara", "micro").policy
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        BackboneConfig(kind="scratch")  # the new name is silent


def test_one_size_table_drives_backbone_and_heads():
    for size, (width, layers, heads) in BACKBONE_SIZES.items():
        policy = get_preset("lara", size).policy
        bb, expert, recurrent = policy.backbone, policy.expert, get_preset("rdvla", size).policy.recurrent
        assert (bb.width, bb.num_layers, bb.num_heads) == (width, layers, heads)
        assert (expert.width, expert.depth, expert.heads) == (width, layers, heads)
        assert (recurrent.width, recurrent.heads) == (width, heads)
    with pytest.raises(ValueError, match="Available: base, micro, small, tiny"):
        get_preset("lara", "huge")


def test_fields_the_policy_owns_are_not_backbone_settings():
    field_names = {f.name for f in dataclasses.fields(BackboneConfig)}
    assert not field_names & {"image_size", "num_cameras", "num_action_bins"}
    with pytest.raises(TypeError):
        BackboneConfig(image_size=32)
    with pytest.raises(ValueError, match="field of BackboneConfig"):
        apply_overrides(get_preset("lara", "micro"), ["policy.backbone.num_cameras=2"])
    policy = dataclasses.replace(get_preset("lara", "micro").policy, image_size=32, cameras=("a", "b"))
    model = LatentVLA(policy)  # the backbone is built from the policy's values
    assert (model.backbone.num_cameras, model.backbone.tokenizer.num_action_bins) == (2, policy.num_action_bins)
    assert model.backbone.encode_images([torch.rand(1, 3, 32, 32)] * 2).shape[1] == 2 * 16


def _old_config(policy: PolicyConfig, **backbone) -> dict:
    """`policy` as a config.json from before: the backbone section holds the policy-owned fields."""
    old = config_to_dict(policy)
    old["backbone"] |= {"image_size": 64, "num_cameras": 1, "num_action_bins": 256} | backbone
    return old


def test_old_config_json_with_policy_owned_backbone_fields_loads():
    policy = dataclasses.replace(get_preset("lara", "micro").policy, image_size=32, cameras=("a", "b"))
    # as every old checkpoint wrote them: the unused defaults, different from the policy's values
    assert config_from_dict(PolicyConfig, _old_config(policy)) == policy
    # equal to the policy's values
    same = _old_config(policy, image_size=32, num_cameras=2, num_action_bins=policy.num_action_bins)
    assert config_from_dict(PolicyConfig, same) == policy


@pytest.mark.parametrize("key,value", [("image_size", 96), ("num_cameras", 3), ("num_action_bins", 17)])
def test_old_config_json_with_a_conflicting_backbone_field_is_refused(key, value):
    policy = dataclasses.replace(get_preset("lara", "micro").policy, image_size=32, cameras=("a", "b"))
    with pytest.raises(ValueError, match=rf"backbone.{key}={value} conflicts with the policy's") as err:
        config_from_dict(PolicyConfig, _old_config(policy, **{key: value}))
    assert "\n" not in str(err.value)
