"""A transformers image processor's preprocessing as tensor ops on the images' own device.

The PIL-backed processors (`*ImageProcessorPil`, the ones that work without torchvision) take
host arrays: running one per camera per micro-batch (and again for the EMA target) copies every image to the
CPU, which waits for the device, and resamples it in Python. `DevicePreprocessor` reads the processor's saved
settings and gives the SAME pixel values on the device:

    quantise    x in [0, 1] -> uint8 as `to_pil_image` does: float32(float64(x) * 255), truncated
    resize      Pillow's two-pass resampler (Resample.c): per-axis filter weights in float64, rounded to 22-bit
                fixed point, horizontal pass then vertical, each rounded and clipped to uint8; the integer sums
                are exact in float64 matmuls (|sum| < 2^53). Same size: no resampling (Pillow returns a copy)
    rescale     k -> float32(k * (1/255)) in float64, as the processor's `rescale`
    crop        centre crop (DINOv2's BitImageProcessor)
    normalise   (x - mean) / std in float32
    patchify    Qwen2-VL: (grid_h * grid_w, C * temporal_patch_size * patch * patch) in merge order, the frame
                repeated temporal_patch_size times; `smart_resize` keeps the processor's min / max pixels

Qwen3-VL's processor has min_pixels = 65,536 (its preprocessor_config.json: size.shortest_edge), so a 112 or
224 px image is upsampled to 256 x 256 px = 16 x 16 patches = 8 x 8 merged tokens (64, + 2 wrap tokens). We keep
that: the pixels (and token count) are those the pretrained tower was trained with.

One difference: `to_pil_image` does not scale an image whose every value is an integer (an image of only 0s and
1s) by 255, so the processor resamples such an image on a 0..1 uint8 scale; here every image is treated as [0, 1]
(an all-0 or all-1 image comes out the same either way).
"""

from __future__ import annotations

import functools
import math
from typing import Any

import numpy as np
import torch
from torch import Tensor

PRECISION_BITS = 32 - 8 - 2  # Pillow's fixed-point precision for 8-bit images (Resample.c)
NEAREST, LANCZOS, BILINEAR, BICUBIC = 0, 1, 2, 3  # PIL.Image.Resampling values


def _bicubic(x: float) -> float:
    a = -0.5
    x = abs(x)
    if x < 1.0:
        return ((a + 2.0) * x - (a + 3.0)) * x * x + 1
    if x < 2.0:
        return (((x - 5) * x + 8) * x - 4) * a
    return 0.0


def _bilinear(x: float) -> float:
    x = abs(x)
    return 1.0 - x if x < 1.0 else 0.0


def _sinc(x: float) -> float:
    if x == 0.0:
        return 1.0
    x *= math.pi
    return math.sin(x) / x


def _lanczos(x: float) -> float:
    return _sinc(x) * _sinc(x / 3) if -3.0 <= x < 3.0 else 0.0


FILTERS = {BILINEAR: (_bilinear, 1.0), BICUBIC: (_bicubic, 2.0), LANCZOS: (_lanczos, 3.0)}


@functools.lru_cache(maxsize=64)
def resample_weights(in_size: int, out_size: int, resample: int) -> np.ndarray:
    """(in_size, out_size) float64 matrix of Pillow's fixed-point weights (integers) for one axis:
    `precompute_coeffs` + `normalize_coeffs_8bpc` of Pillow's Resample.c."""
    if resample not in FILTERS:
        raise ValueError(f"resample {resample} is not supported on the device (bilinear 2, bicubic 3, lanczos 1)")
    fn, support = FILTERS[resample]
    scale = in_size / out_size
    filterscale = max(scale, 1.0)
    support *= filterscale
    w = np.zeros((in_size, out_size), dtype=np.float64)
    for xx in range(out_size):
        center = (xx + 0.5) * scale
        xmin = max(int(center - support + 0.5), 0)  # C's (int) truncates toward zero
        xmax = min(int(center + support + 0.5), in_size) - xmin
        k = [fn((x + xmin - center + 0.5) / filterscale) for x in range(xmax)]
        total = sum(k)  # summed in order, as the C loop does
        for x in range(xmax):
            v = k[x] / total if total != 0.0 else k[x]
            w[xmin + x, xx] = (
                int(-0.5 + v * (1 << PRECISION_BITS)) if v < 0 else int(0.5 + v * (1 << PRECISION_BITS))
            )
    return w


def _pass(u8: Tensor, weights: Tensor, dim: int) -> Tensor:
    """One resampling pass along `dim` (-1: width, -2: height) of a float64 tensor of uint8 values."""
    x = u8.movedim(dim, -1) @ weights + float(1 << (PRECISION_BITS - 1))
    return torch.floor(x / float(1 << PRECISION_BITS)).clamp_(0, 255).movedim(-1, dim)  # clip8


def pil_resize(
    images: Tensor, size: tuple[int, int], resample: int = BICUBIC, cache: dict | None = None
) -> Tensor:
    """(B, C, H, W) float in [0, 1] -> (B, C, h, w) float32, exactly `resize` of a PIL-backed processor: the
    image quantised to uint8, resampled by Pillow's fixed-point passes, rescaled by 1/255. `cache` keeps the
    weight matrices on the device (a host-to-device copy per call would wait for the device)."""
    x = images.detach().float().clamp(0, 1)
    u8 = (x.double() * 255).float().trunc().double()  # to_pil_image: float32(float64(x) * 255).astype(uint8)
    H, W = u8.shape[-2:]
    h, w = size
    cache = {} if cache is None else cache

    def weights(n_in: int, n_out: int) -> Tensor:
        key = (n_in, n_out, resample, u8.device)
        if key not in cache:
            cache[key] = torch.from_numpy(resample_weights(n_in, n_out, resample)).to(u8.device)
        return cache[key]

    if h != H and w != W and h * W != w * H:
        # Pillow 13 picks the pass order of such a resize by a rule not reproduced here (images are square in
        # this project: `fit_policy_to_dataset`); with one scale for both axes it runs the horizontal pass first
        raise ValueError(f"the device resize reproduces Pillow for one scale on both axes, not {H}x{W} -> {h}x{w}")
    if (h, w) != (H, W):  # the horizontal pass first (when the width changes), then the vertical one
        if w != W:
            u8 = _pass(u8, weights(W, w), -1)
        if h != H:
            u8 = _pass(u8, weights(H, h), -2)
    return (u8 * (1 / 255)).float()


def smart_resize(height: int, width: int, factor: int, min_pixels: int, max_pixels: int) -> tuple[int, int]:
    """Qwen2-VL's target size (transformers' `smart_resize`): multiples of `factor`, pixels in [min, max]."""
    h_bar, w_bar = round(height / factor) * factor, round(width / factor) * factor
    if h_bar * w_bar > max_pixels:
        beta = math.sqrt((height * width) / max_pixels)
        h_bar = max(factor, math.floor(height / beta / factor) * factor)
        w_bar = max(factor, math.floor(width / beta / factor) * factor)
    elif h_bar * w_bar < min_pixels:
        beta = math.sqrt(min_pixels / (height * width))
        h_bar = math.ceil(height * beta / factor) * factor
        w_bar = math.ceil(width * beta / factor) * factor
    return h_bar, w_bar


def qwen_patchify(x: Tensor, patch: int, merge: int, temporal: int) -> Tensor:
    """(B, C, H, W) -> (B * gh * gw, C * temporal * patch * patch) in the Qwen2-VL processor's order: merge
    windows row-major, the merge x merge patches of a window row-major, each patch (C, temporal, p, p)."""
    B, C, H, W = x.shape
    gh, gw = H // patch, W // patch
    x = x.reshape(B, C, gh // merge, merge, patch, gw // merge, merge, patch)
    x = x.permute(0, 2, 5, 3, 6, 1, 4, 7)  # (B, gh/m, gw/m, m, m, C, p, p)
    x = x.unsqueeze(6).expand(*x.shape[:6], temporal, patch, patch)
    return x.reshape(B * gh * gw, C * temporal * patch * patch)


def _get(proc: Any, name: str, default: Any = None) -> Any:
    value = getattr(proc, name, default)
    return default if value is None else value


def _size(size: Any, key: str) -> Any:
    return size.get(key) if isinstance(size, dict) else getattr(size, key, None)


class DevicePreprocessor:
    """A PIL-backed processor's settings (Qwen2-VL, SigLIP, BiT / DINOv2) applied with tensor ops on the device.

    `__call__(images)` -> {"pixel_values": ..., and for Qwen "image_grid_thw" (int64)}, the processor's outputs
    for `processor(images=list(images), do_rescale=False, return_tensors="pt")`, on the images' device.
    """

    def __init__(self, processor: Any, qwen: bool) -> None:
        self.qwen = qwen
        self.do_resize = bool(_get(processor, "do_resize", True))
        resample = _get(processor, "resample", BICUBIC)  # PIL's enum, or torchvision's InterpolationMode
        resample = getattr(resample, "value", resample)
        self.resample = {"bilinear": BILINEAR, "bicubic": BICUBIC, "lanczos": LANCZOS}.get(resample, resample)
        self.size = _get(processor, "size", {})
        self.do_center_crop = bool(_get(processor, "do_center_crop", False))
        self.crop_size = _get(processor, "crop_size", {})
        self.do_normalize = bool(_get(processor, "do_normalize", True))
        self.mean = torch.tensor(_get(processor, "image_mean", [0.0, 0.0, 0.0]), dtype=torch.float32)
        self.std = torch.tensor(_get(processor, "image_std", [1.0, 1.0, 1.0]), dtype=torch.float32)
        if qwen:
            self.patch = int(processor.patch_size)
            self.merge = int(processor.merge_size)
            self.temporal = int(processor.temporal_patch_size)
            self.min_pixels = int(_size(self.size, "shortest_edge"))
            self.max_pixels = int(_size(self.size, "longest_edge"))
        self._cache: dict = {}  # device copies of weights, mean / std and grids, made once per device
        if not isinstance(self.resample, int) or (self.resample not in FILTERS and self.do_resize):
            raise ValueError(f"{type(processor).__name__}: resample {self.resample} has no device implementation")

    def target_size(self, height: int, width: int) -> tuple[int, int]:
        """The resized (height, width) the processor gives an image of this size (host arithmetic)."""
        if self.qwen:
            return smart_resize(height, width, self.patch * self.merge, self.min_pixels, self.max_pixels)
        h, w = _size(self.size, "height"), _size(self.size, "width")
        if h and w:
            return int(h), int(w)
        short = _size(self.size, "shortest_edge")
        if short:  # transformers' get_resize_output_image_size(default_to_square=False), no max_size
            lo, hi = (height, width) if height <= width else (width, height)
            new_lo, new_hi = int(short), int(int(short) * hi / lo)
            return (new_lo, new_hi) if height <= width else (new_hi, new_lo)
        raise ValueError(f"unsupported processor size {self.size!r} for the device path")

    def __call__(self, images: Tensor) -> dict[str, Tensor]:
        B, _, H, W = images.shape
        h, w = self.target_size(H, W) if self.do_resize else (H, W)
        # always through the uint8 round trip: the processor's resize does it even at the same size
        x = pil_resize(images, (h, w), self.resample, self._cache) if self.do_resize else images.float()
        if self.do_center_crop:
            ch, cw = int(_size(self.crop_size, "height")), int(_size(self.crop_size, "width"))
            if ch > h or cw > w:
                raise ValueError(f"centre crop {ch}x{cw} larger than the resized {h}x{w} image is not supported")
            top, left = (h - ch) // 2, (w - cw) // 2
            x, h, w = x[..., top : top + ch, left : left + cw], ch, cw
        if self.do_normalize:
            mean, std = self._on(("mean", x.device), lambda: (self.mean.to(x.device), self.std.to(x.device)))
            x = (x - mean.view(1, -1, 1, 1)) / std.view(1, -1, 1, 1)
        if not self.qwen:
            return {"pixel_values": x}
        gh, gw = h // self.patch, w // self.patch  # the grid depends on the shape only: made once per device
        grid = self._on(("grid", B, gh, gw, x.device), lambda: torch.tensor([[1, gh, gw]] * B).to(x.device))
        return {"pixel_values": qwen_patchify(x, self.patch, self.merge, self.temporal), "image_grid_thw": grid}

    def _on(self, key: Any, make: Any) -> Any:
        if key not in self._cache:
            self._cache[key] = make()
        return self._cache[key]
