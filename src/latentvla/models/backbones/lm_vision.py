"""A separate pretrained vision encoder (SigLIP and / or DINOv2) from local directories + a learned projector:
the vision side of the "LM + vision encoder" backbone (RD-VLA's MiniVLA = Qwen2.5-0.5B + a frozen fused
DINOv2+SigLIP encoder, Prismatic recipe, 256 tokens per 224 px image; RD-VLA §III-A).

    VisionConfig(kind="hf", paths=("DIR_DINOV2", "DIR_SIGLIP"))   # one or several encoders, fused
    images (B, 3, H, W) in [0, 1] -> each encoder at the input size its own image processor produces (see
    `encoder_input_size`), mean / std from that processor -> patch features (CLS / register tokens dropped), all on the same grid -> concatenated along
    channels (Prismatic "fused") -> 2-layer GELU MLP projector -> (B, grid * grid, D)

`freeze()` freezes the pretrained encoders; the projector always trains (it is new).
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from latentvla.models.backbones.hf_version import require_transformers

_SUPPORTED = ("siglip_vision_model", "siglip", "dinov2")


def encoder_input_size(processor: object, config_size: int) -> int:
    """The square side the encoder's own image processor feeds it: the centre crop when it crops (DINOv2's
    BitImageProcessor: shortest edge 256, crop 224), else its fixed size (SigLIP: 224), else `config_size`.

    Not `config.image_size`: facebook/dinov2-large says 518 (the size its position table was trained at) but is
    used at 224 and interpolates its position embeddings, which is how OpenVLA / MiniVLA fuse it with SigLIP-224
    on one 16 x 16 grid (RD-VLA §III-A). Images are resized straight to this side ("resize-naive", Prismatic's
    default for OpenVLA), not resized-then-cropped."""
    get = processor.get if isinstance(processor, dict) else lambda k, d=None: getattr(processor, k, d)
    crop = get("crop_size", None) or {}  # an image processor, or its preprocessor_config.json as a dict
    if get("do_center_crop", False) and "height" in crop:
        return int(crop["height"])
    size = get("size", None) or {}
    for key in ("height", "shortest_edge"):
        if key in size:
            return int(size[key])
    return int(config_size)


def _load_encoder(path: str | Path) -> tuple[nn.Module, str, Tensor, Tensor, int]:
    from transformers import AutoImageProcessor, Dinov2Model, SiglipVisionModel

    from latentvla.hub import resolve_model

    path = resolve_model(path, "vision encoder")  # a local dir, or ORG/NAME[@REV] from the HF cache
    cfg_file = path / "config.json"
    if not cfg_file.is_file():
        raise FileNotFoundError(f"vision encoder dir {path} has no config.json (a local transformers model).")
    model_type = json.loads(cfg_file.read_text()).get("model_type")
    if model_type not in _SUPPORTED:
        raise ValueError(f"{path}: model_type {model_type!r} is not a supported vision encoder {_SUPPORTED}.")
    cls = Dinov2Model if model_type == "dinov2" else SiglipVisionModel
    model = cls.from_pretrained(path, local_files_only=True, dtype=torch.float32)
    proc = AutoImageProcessor.from_pretrained(path, local_files_only=True)
    mean = torch.tensor(proc.image_mean, dtype=torch.float32).view(1, 3, 1, 1)
    std = torch.tensor(proc.image_std, dtype=torch.float32).view(1, 3, 1, 1)
    return model, model_type, mean, std, encoder_input_size(proc, model.config.image_size)


class HFVisionEncoder(nn.Module):
    """One or several local SigLIP / DINOv2 encoders, fused, + an MLP projector to the LM width."""

    def __init__(self, paths: tuple[str, ...], out_dim: int) -> None:
        super().__init__()
        require_transformers()
        if not paths:
            raise ValueError(
                "VisionConfig(kind='hf') needs paths: local SigLIP / DINOv2 dirs (CLI: --vision DIR)."
            )
        os.environ.setdefault("HF_HUB_OFFLINE", "1")
        self.encoders = nn.ModuleList()
        self.kinds, self.sizes, grids = [], [], []
        for i, p in enumerate(paths):
            model, kind, mean, std, size = _load_encoder(p)
            self.encoders.append(model)
            self.kinds.append(kind)
            self.sizes.append(size)
            self.register_buffer(f"mean{i}", mean, persistent=False)
            self.register_buffer(f"std{i}", std, persistent=False)
            grids.append(size // model.config.patch_size)
        if len(set(grids)) != 1:
            raise ValueError(
                f"fused encoders must share one patch grid, got {grids} (input sizes {self.sizes} from each "
                "encoder's image processor / patch_size); use encoders with the same input size and patch size."
            )
        self.grid = grids[0]
        width = sum(e.config.hidden_size for e in self.encoders)
        self.projector = nn.Sequential(nn.Linear(width, out_dim), nn.GELU(), nn.Linear(out_dim, out_dim))

    @property
    def num_tokens(self) -> int:
        return self.grid * self.grid

    def freeze(self) -> None:
        """Freeze the pretrained encoders (RD-VLA); the projector keeps training."""
        self.encoders.requires_grad_(False)

    def forward(self, images: Tensor) -> Tensor:
        feats = []
        for i, (enc, size) in enumerate(zip(self.encoders, self.sizes)):
            x = F.interpolate(
                images.float(), size=(size, size), mode="bilinear", antialias=True, align_corners=False
            )
            x = ((x - getattr(self, f"mean{i}")) / getattr(self, f"std{i}")).to(next(enc.parameters()).dtype)
            # DINOv2 always interpolates its position table to the input; SigLIP only when asked
            kw = (
                {"interpolate_pos_encoding": True}
                if self.kinds[i] != "dinov2" and size != enc.config.image_size
                else {}
            )
            h = enc(pixel_values=x, **kw).last_hidden_state
            feats.append(h[:, -self.grid * self.grid :])  # DINOv2: drop CLS (and register) tokens in front
        return self.projector(torch.cat(feats, dim=-1).to(self.projector[0].weight.dtype))
