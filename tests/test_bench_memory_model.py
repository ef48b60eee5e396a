"""`bench memory`'s model of the papers' configurations: Qwen3-VL's pixel minimum, DINOv2-L's 518 px
config with its 224 crop, fp32 encoders, the padded vocabulary, weights not counted twice, the CPU mode, and the
full-width Qwen3-VL-4B parameter count on the meta device (public: 4.44 B, Qwen/Qwen3-VL-4B-Instruct)."""

from __future__ import annotations

import pytest
import torch

from latentvla.bench import memory
from latentvla.bench.memory import estimate

tf = pytest.importorskip("transformers")
pytest.importorskip("peft")


@pytest.mark.parametrize(
    "h,w,longest",
    [
        (64, 64, None),
        (112, 112, None),
        (224, 224, None),
        (300, 300, None),
        (480, 640, None),
        (480, 640, 200_000),
    ],  # the last one scales down to a smaller pixel maximum
)
def test_qwen_grid_equals_the_processor_at_qwen3vl_pixel_limits(h, w, longest):
    from latentvla.bench.memory import qwen_grid

    size = dict(memory.QWEN3VL_PROCESSOR["size"], **({"longest_edge": longest} if longest else {}))
    proc = tf.Qwen2VLImageProcessorPil(patch_size=16, merge_size=2, temporal_patch_size=2, size=size)
    _, gh, gw = proc(images=[torch.rand(3, h, w)], do_rescale=False, return_tensors="pt")["image_grid_thw"][0]
    assert qwen_grid(h, w, 16, 2, size["shortest_edge"], size["longest_edge"]) == (int(gh), int(gw))


def test_qwen3vl_images_are_upsampled_to_66_tokens():
    """112 / 224 px images fall under Qwen3-VL's 65,536-pixel minimum: 256 x 256 -> 8 x 8 merged + 2 wrappers."""
    assert estimate("lara-qwen3vl", image_size=224).tokens_per_image == 66
    assert estimate("lara-qwen3vl", image_size=112).tokens_per_image == 66


def test_lara_qwen3vl_full_width_parameter_count_on_meta():
    """The VLM alone is the public 4.44 B; the padded 151,936-row vocabulary holds our 264 tokens (no growth), so
    the policy is the VLM + the DiT action expert exactly."""
    vlm = memory._meta_model(memory._QWEN3VL_4B, torch.bfloat16)
    n_vlm = sum(p.numel() for p in vlm.parameters())
    assert round(n_vlm / 1e9, 2) == 4.44
    assert vlm.get_input_embeddings().weight.shape[0] == 151_936
    report = estimate("lara-qwen3vl")
    with torch.device("meta"):
        from latentvla.config import get_preset
        from latentvla.models.action_heads import build_action_head

        pc = get_preset("lara-qwen3vl").policy
        head = build_action_head(pc, 2560, 36)
    assert report.params == n_vlm + sum(p.numel() for p in head.parameters())
    assert report.trainable == report.params  # full fine-tune


def test_minivla_reference_dinov2_518_with_224_crop_and_fp32_encoders():
    r = estimate("rdvla-minivla", batch_size=2)
    assert memory._DINOV2_L["image_size"] == 518 and r.tokens_per_image == 16 * 16
    enc = sum(
        p.numel()
        for c in (memory._DINOV2_L, memory._SIGLIP_SO400M)
        for p in memory._meta_model(c, torch.float32).parameters()
    )
    lm = memory._meta_model(memory._QWEN25_05B, torch.bfloat16)
    n_lm = sum(p.numel() for p in lm.parameters())
    frozen_lm = n_lm  # LoRA: the whole base is frozen (the 264 new rows live in the padding)
    assert r.params - r.trainable == frozen_lm + enc
    # trainable in fp32, the frozen LM in bf16 (the preset's dtype), the frozen encoders in fp32 as they load
    expected = (r.trainable * 4 + frozen_lm * 2 + enc * 4) / 1e9
    assert r.weights_gb == pytest.approx(expected)


def test_saved_bytes_do_not_count_weights_twice():
    with torch.device("meta"):
        lin = torch.nn.Linear(1000, 1000)
    x = torch.randn(2, 1000, device="meta", requires_grad=True)
    assert memory._saved_bytes(lambda: lin(x), params=lin) == 2 * 1000 * 4  # the input only, not the 4 MB weight


@pytest.mark.slow  # measures the runtime RSS of a fresh process
def test_cpu_mode_runs_in_fp32_and_adds_the_process_runtime():
    gpu = estimate("rdvla-minivla", batch_size=2, dtype="float32")
    cpu = estimate("rdvla-minivla", batch_size=2, dtype="float32", device="cpu")
    assert cpu.weights_gb == gpu.weights_gb and cpu.runtime_gb > 0.05
    # no autocast on CPU: the trunk's saved activations are fp32, about twice CUDA's bf16 ones
    assert 1.4 < cpu.activations_gb / gpu.activations_gb < 2.4
    assert cpu.total_gb == pytest.approx(
        cpu.weights_gb + cpu.grads_gb + cpu.optimizer_gb + cpu.activations_gb + cpu.runtime_gb
    )
    with pytest.raises(ValueError, match="device"):
        estimate("rdvla-minivla", device="tpu")


def test_real_size_check_passes_within_tolerance_and_fails_outside(tmp_path, capsys):
    """`bench real-size --check-only` compares a recorded peak RSS with `bench memory --device cpu` (here on tiny
    saved models standing in for the full-size ones; the real numbers come from runs/real_size_cpu.sh)."""
    import json

    from latentvla.bench.real_size import predict
    from latentvla.cli import main
    from latentvla.testing.tiny_hf import save_tiny

    models = {
        "lm": save_tiny("qwen2", tmp_path / "lm"),
        "dinov2": save_tiny("dinov2", tmp_path / "d"),
        "siglip": save_tiny("siglip", tmp_path / "s"),
    }
    report = {"batch_size": 2, "cameras": 2, "dtype": "float32", "models": {k: str(v) for k, v in models.items()}}
    predicted = predict(report).total_gb
    assert main(["bench", "real-size", "--out", str(tmp_path), "--check-only"]) == 2  # no run recorded yet
    for measured, code in ((predicted, 0), (predicted * 1.3, 1), (predicted * 0.7, 1)):
        report.update(peak_rss_gb=measured, resume_peak_rss_gb=measured * 0.9)
        (tmp_path / "real_size.json").write_text(json.dumps(report))
        capsys.readouterr()
        assert main(["bench", "real-size", "--out", str(tmp_path), "--check-only"]) == code
        assert "bench memory predicts" in capsys.readouterr().out
