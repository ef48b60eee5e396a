"""The backbones: one interface (`Backbone`, interface.py), three kinds behind `build_backbone`.

- "scratch" (scratch.py): a random-init causal transformer (RoPE, KV cache, tied LM head), sized by the one dial
  `BACKBONE_SIZES` (micro / tiny / small / base), with our image encoder (models/vision.py).
- "hf" (hf_lm.py): a local transformers causal LM with our image encoder, or local SigLIP / DINOv2 encoders and a
  learned projector (lm_vision.py).
- "hf_vlm" (hf_vlm.py): a local pretrained vision-language model (Qwen2.5-VL, Qwen3-VL, SmolVLM, PaliGemma) whose
  own vision tower makes the image tokens.
The transformers kinds share the training knobs of `BackboneConfig`: `dtype`, LoRA (lora.py), a frozen vision
tower, gradient checkpointing and the optional rescaling of fed-back thoughts. Every kind returns
`BackboneOutput(hidden, layers)`: `hidden` after the final norm, `layers[0]` the input embeddings and `layers[i]`
the output of block i (pre-norm).
"""

from __future__ import annotations

from latentvla.models.backbones.hf_lm import HFBackbone
from latentvla.models.backbones.hf_vlm import HFVLMBackbone
from latentvla.models.backbones.interface import (
    BACKBONE_DTYPES,
    BACKBONE_KINDS,
    BACKBONE_SIZES,
    Backbone,
    BackboneConfig,
    BackboneOutput,
    BackboneShape,
    BackboneSize,
    cache_length,
)
from latentvla.models.backbones.scratch import KVCache, ScratchBackbone

__all__ = [
    "BACKBONE_DTYPES",
    "BACKBONE_KINDS",
    "BACKBONE_SIZES",
    "Backbone",
    "BackboneConfig",
    "BackboneOutput",
    "BackboneShape",
    "BackboneSize",
    "HFBackbone",
    "HFVLMBackbone",
    "KVCache",
    "ScratchBackbone",
    "build_backbone",
    "cache_length",
]

_KINDS = {"scratch": ScratchBackbone, "hf": HFBackbone, "hf_vlm": HFVLMBackbone}


def build_backbone(
    cfg: BackboneConfig, *, image_size: int = 64, num_cameras: int = 1, num_action_bins: int = 256
) -> Backbone:
    """The backbone named by `cfg.kind`, for images of `image_size` px from `num_cameras` cameras and
    `num_action_bins` discrete action tokens (the policy's choices, `PolicyConfig`)."""
    shape = BackboneShape(image_size=image_size, num_cameras=num_cameras, num_action_bins=num_action_bins)
    return _KINDS[cfg.kind](cfg, shape)
