"""Our image front-end for the backbones that have no vision tower of their own (kinds "scratch" and "hf"): one
image encoder shared by all cameras (models/vision.py, or SigLIP / DINOv2 + projector, lm_vision.py) plus a learned
per-camera embedding added to its tokens."""

from __future__ import annotations

import torch
from torch import Tensor, nn

from latentvla.models.backbones.lm_vision import HFVisionEncoder
from latentvla.models.vision import VisionConfig, build_vision


def build_camera_vision(cfg: VisionConfig, width: int) -> nn.Module:
    """The image encoder of `cfg` with (B, n, `width`) tokens: ours (models/vision.py), or local SigLIP / DINOv2
    encoders with a learned projector (kind "hf", lm_vision.py)."""
    return HFVisionEncoder(cfg.paths, width) if cfg.kind == "hf" else build_vision(cfg, width)


class CameraVision(nn.Module):
    """Mixin: `vision`, `camera_embed`, `tokens_per_image`, `num_cameras` and `encode_image`."""

    def _init_vision(self, cfg: VisionConfig, num_cameras: int, width: int) -> None:
        self.vision = build_camera_vision(cfg, width)
        self.camera_embed = nn.Parameter(torch.randn(num_cameras, width) * 0.02)
        self.num_cameras = num_cameras
        self.tokens_per_image = getattr(self.vision, "num_tokens", cfg.num_tokens)

    def encode_image(self, images: Tensor, camera: int = 0) -> Tensor:
        """(B, 3, H, W) in [0, 1] -> (B, N, D) image tokens of camera index `camera`."""
        if not 0 <= camera < self.camera_embed.shape[0]:
            raise ValueError(f"camera index {camera} out of range; the backbone has {self.camera_embed.shape[0]}.")
        return self.vision(images) + self.camera_embed[camera]
