"""The HF image path preprocesses on the device with tensor ops and gives the transformers processor's pixels
bitwise: Pillow's fixed-point resampler, the uint8 round trip, normalisation and Qwen2-VL
patchify, checked against the `*ImageProcessorPil` classes built with the public models' preprocessing values."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from latentvla.models.backbones.image_preprocess import (
    BICUBIC,
    BILINEAR,
    LANCZOS,
    DevicePreprocessor,
    pil_resize,
    smart_resize,
)

tf = pytest.importorskip("transformers")
PIL = pytest.importorskip("PIL.Image")

CLIP_MEAN, CLIP_STD = [0.48145466, 0.4578275, 0.40821073], [0.26862954, 0.26130258, 0.27577711]
# preprocessor_config.json of each public model (the values that matter for the pixels)
PROCESSORS = {
    # Qwen/Qwen3-VL-4B-Instruct: patch 16, merge 2, temporal 2, size {shortest_edge 65536, longest_edge 16777216}
    "qwen3_vl": lambda: tf.Qwen2VLImageProcessorPil(
        patch_size=16,
        merge_size=2,
        temporal_patch_size=2,
        size={"shortest_edge": 65536, "longest_edge": 16777216},
        image_mean=[0.5] * 3,
        image_std=[0.5] * 3,
    ),
    # Qwen/Qwen2.5-VL-3B-Instruct: patch 14, min_pixels 3136, max_pixels 12845056, CLIP mean / std
    "qwen2_5_vl": lambda: tf.Qwen2VLImageProcessorPil(
        patch_size=14,
        merge_size=2,
        temporal_patch_size=2,
        min_pixels=3136,
        max_pixels=12845056,
        image_mean=CLIP_MEAN,
        image_std=CLIP_STD,
    ),
    # google/siglip-so400m-patch14-224 and google/paligemma-3b-pt-224: 224 x 224 bicubic, mean / std 0.5
    "siglip": lambda: tf.SiglipImageProcessorPil(size={"height": 224, "width": 224}, resample=3),
    # facebook/dinov2-large: BiT processor, shortest edge 256 bicubic, centre crop 224, ImageNet mean / std
    "dinov2": lambda: tf.BitImageProcessorPil(
        size={"shortest_edge": 256},
        crop_size={"height": 224, "width": 224},
        resample=3,
        image_mean=[0.485, 0.456, 0.406],
        image_std=[0.229, 0.224, 0.225],
    ),
}


def _images(size: int, seed: int, quantised: bool) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    if quantised:  # what the dataset gives: uint8 / 255 (float32(k / 255) * 255 can land just below k)
        return torch.randint(0, 256, (2, 3, size, size), generator=g).float().div_(255.0)
    return torch.rand(2, 3, size, size, generator=g)


@pytest.mark.parametrize("name", sorted(PROCESSORS))
@pytest.mark.parametrize("size", [32, 112, 224, 480])
def test_device_pixels_equal_the_pil_processor_bitwise(name, size):
    proc = PROCESSORS[name]()
    qwen = name.startswith("qwen")
    for quantised in (True, False):
        x = _images(size, size, quantised)
        ref = proc(images=list(x), do_rescale=False, return_tensors="pt")
        out = DevicePreprocessor(proc, qwen=qwen)(x)
        assert out["pixel_values"].dtype == torch.float32
        assert torch.equal(out["pixel_values"], ref["pixel_values"]), (name, size, quantised)
        if qwen:
            assert torch.equal(out["image_grid_thw"], ref["image_grid_thw"])


@pytest.mark.parametrize("size", [112, 224])
def test_qwen3_vl_upsamples_small_images_to_its_minimum_pixels(size):
    """65,536 minimum pixels: a 112 or 224 px image becomes 256 x 256 = 16 x 16 patches = 8 x 8 merged tokens
    (66 per image with <|vision_start|> / <|vision_end|>), not the 4 x 4 / 7 x 7 its size suggests."""
    pre = DevicePreprocessor(PROCESSORS["qwen3_vl"](), qwen=True)
    assert pre.target_size(size, size) == (256, 256) == smart_resize(size, size, 32, 65536, 16777216)
    grid = pre(_images(size, 0, True))["image_grid_thw"]
    assert grid.tolist() == [[1, 16, 16]] * 2 and (16 // 2) ** 2 + 2 == 66


@pytest.mark.parametrize("resample", [BILINEAR, BICUBIC, LANCZOS])
@pytest.mark.parametrize(
    "shape",
    [
        (40, 40, 40, 40),
        (37, 53, 37, 21),
        (37, 53, 64, 53),
        (224, 224, 256, 256),
        (480, 480, 224, 224),
        (72, 38, 36, 19),
        (96, 64, 32, 96),
    ],
)
def test_resampler_equals_pillow(resample, shape):
    """Pillow's own Image.resize on uint8 RGB images: down, up, one axis, same size (a copy), one scale for a
    non-square image; a resize with two different scales is refused (Pillow picks the pass order there)."""
    H, W, h, w = shape
    u8 = np.random.default_rng(H * W + resample).integers(0, 256, (H, W, 3), dtype=np.uint8)
    if h != H and w != W and h * W != w * H:
        with pytest.raises(ValueError, match="one scale on both axes"):
            pil_resize(torch.zeros(1, 3, H, W), (h, w), resample)
        return
    ref = np.asarray(PIL.fromarray(u8).resize((w, h), resample=resample)).astype(np.float64)
    x = torch.from_numpy(u8).permute(2, 0, 1)[None].float() / 255
    out = pil_resize(x, (h, w), resample)[0].permute(1, 2, 0).double()
    assert torch.equal((out * 255).round(), torch.from_numpy(ref))


def test_hf_backbone_never_calls_the_pil_processor_in_training(tmp_path):
    """The tiny Qwen3-VL backbone encodes images (and the EMA target) with the device path only."""
    from latentvla.models.backbones import BackboneConfig, build_backbone
    from latentvla.testing.tiny_hf import save_tiny

    bb = build_backbone(
        BackboneConfig(kind="hf_vlm", hf_path=str(save_tiny("qwen3_vl", tmp_path / "q"))),
        num_action_bins=8,
        image_size=32,
    )
    x = _images(32, 1, False)
    ref = bb.vision.processor(images=list(x), do_rescale=False, return_tensors="pt")

    def refuse(*a, **k):
        raise AssertionError("the PIL processor ran")

    bb.vision.processor.__class__ = type("Refusing", (type(bb.vision.processor),), {"__call__": refuse})
    out = bb.vision.preprocess(x)
    assert torch.equal(out["pixel_values"], ref["pixel_values"])
    assert bb.encode_image(x).shape == (2, bb.tokens_per_image, bb.width)
