"""What every backbone is: its config (`BackboneConfig`), its output (`BackboneOutput`) and its interface (the
`Backbone` protocol), plus the size dial. A leaf module: the backbone kinds import it, it imports none of them.

The protocol lists everything the rest of the code reads from a backbone; a member some kind lacks (a fed-back
thought rescaling, an embedding module, LoRA adapters) has its default here, so callers never probe with getattr.
"""

from __future__ import annotations

import dataclasses
import warnings
from dataclasses import dataclass, field
from typing import Any, NamedTuple, Protocol, runtime_checkable

import torch
from torch import Tensor, nn

from latentvla.models.backbones.lora import LoraSettings
from latentvla.models.vision import VisionConfig
from latentvla.registry import did_you_mean, lookup


class BackboneSize(NamedTuple):
    width: int
    layers: int
    heads: int


# The one complexity dial (nanochat `--depth` style): the scratch backbone's width / depth / heads, which the
# action heads follow too (config.py). "micro" exists for unit tests and smoke runs; "tiny" is the CPU training size.
BACKBONE_SIZES: dict[str, BackboneSize] = {
    "micro": BackboneSize(64, 2, 2),
    "tiny": BackboneSize(128, 4, 4),
    "small": BackboneSize(256, 6, 8),
    "base": BackboneSize(512, 8, 8),
}
BACKBONE_KINDS = ("scratch", "hf", "hf_vlm")
DEPRECATED_KINDS = {"tiny": "scratch"}  # old name -> new name; old checkpoints' config.json still load
BACKBONE_DTYPES = ("float32", "bfloat16", "float16", "auto")


@dataclass(frozen=True)
class BackboneConfig:
    """Backbone settings. `size` sets width/depth/heads of the scratch model; `hf_path` is a local HF model dir.

    The image size, camera count and action-bin count are not here: the policy owns them (`PolicyConfig`) and
    hands them to `build_backbone`, so they cannot disagree with it."""

    kind: str = "scratch"
    size: str = "tiny"
    vision: VisionConfig = field(default_factory=VisionConfig)
    hf_path: str | None = None
    extra_words: tuple[str, ...] = ()
    rope_theta: float = 10000.0
    norm_eps: float = 1e-6
    # transformers kinds ("hf", "hf_vlm") only:
    dtype: str = (
        "float32"  # weights as loaded; "auto" = the checkpoint's dtype (bf16 for Qwen), CUDA autocast on top
    )
    lora: LoraSettings = field(default_factory=LoraSettings)
    freeze_vision: bool = False  # RD-VLA freezes its vision encoder (§III-A); LaRA-VLA trains the VLM's
    grad_checkpointing: bool = False
    rescale_thoughts: bool = False  # fed-back thoughts scaled to the token-embedding RMS

    def __post_init__(self) -> None:
        if self.kind in DEPRECATED_KINDS:
            new = DEPRECATED_KINDS[self.kind]
            warnings.warn(
                f"backbone kind {self.kind!r} is now called {new!r}; read as {new!r}.", FutureWarning, stacklevel=3
            )
            object.__setattr__(self, "kind", new)
        if self.kind not in BACKBONE_KINDS:
            raise ValueError(did_you_mean(self.kind, BACKBONE_KINDS, "backbone kind"))
        lookup(BACKBONE_SIZES, self.size, "backbone size")
        if self.kind != "scratch" and not self.hf_path:
            raise ValueError(
                f"BackboneConfig(kind={self.kind!r}) needs hf_path, a local directory with a transformers model "
                "(CLI: --backbone DIR)."
            )
        if self.dtype not in BACKBONE_DTYPES:
            raise ValueError(did_you_mean(self.dtype, BACKBONE_DTYPES, "backbone dtype"))
        if isinstance(self.lora, dict):
            object.__setattr__(self, "lora", LoraSettings(**self.lora))
        if isinstance(self.vision, dict):  # from_dict / JSON round trip
            object.__setattr__(self, "vision", VisionConfig(**self.vision))
        object.__setattr__(self, "extra_words", tuple(self.extra_words))

    @property
    def width(self) -> int:
        return BACKBONE_SIZES[self.size].width

    @property
    def num_layers(self) -> int:
        return BACKBONE_SIZES[self.size].layers

    @property
    def num_heads(self) -> int:
        return BACKBONE_SIZES[self.size].heads

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> BackboneConfig:
        return cls(**d)


@dataclass(frozen=True)
class BackboneShape:
    """What the policy decides about the backbone's inputs (`PolicyConfig`: `image_size`, `len(cameras)`,
    `num_action_bins`); `build_backbone` takes it next to the `BackboneConfig`."""

    image_size: int = 64
    num_cameras: int = 1
    num_action_bins: int = 256

    def __post_init__(self) -> None:
        if self.num_cameras < 1 or self.image_size < 8 or self.num_action_bins < 1:
            raise ValueError(
                "a backbone needs num_cameras >= 1, image_size >= 8 and num_action_bins >= 1, got "
                f"{self.num_cameras}, {self.image_size}, {self.num_action_bins}."
            )


@dataclass
class BackboneOutput:
    """`hidden` (B, T, D) after the final norm; `layers[0]` = input embeds, `layers[i]` = block i output."""

    hidden: Tensor
    layers: tuple[Tensor, ...]


@runtime_checkable
class Backbone(Protocol):
    """The backbone interface (images -> tokens, token embeddings, a causal transformer under an explicit mask).

    `hidden` is what LaRA feeds back as a thinking token and regresses at <img_next>; `layers` feed the action
    heads. The kinds subclass this protocol to inherit the defaults below."""

    tokenizer: Any  # models.tokenizer.Tokenizer or HFTokenizer: our special and action tokens
    width: int
    num_layers: int
    num_cameras: int
    tokens_per_image: int  # per camera
    vision: nn.Module  # images -> (B, n, D) on a square grid: what LaRA's EMA target copies
    # False where gradient checkpointing drops the KV cache (transformers layers, modeling_layers.py), so the
    # Coconut multi-pass forward recomputes prefixes instead (thinking.latent_forward).
    cache_in_training: bool = True

    def encode_image(self, images: Tensor, camera: int = 0) -> Tensor:
        """(B, 3, H, W) in [0, 1] -> (B, tokens_per_image, D) image tokens of camera index `camera`."""
        ...

    def encode_images(self, images: list[Tensor]) -> Tensor:
        """One (B, 3, H, W) tensor per camera, in camera order -> (B, num_cameras * tokens_per_image, D)."""
        return torch.cat([self.encode_image(x, i) for i, x in enumerate(images)], dim=1)

    def embed(self, ids: Tensor) -> Tensor:
        """(B, T) token ids -> (B, T, D) input embeddings."""
        ...

    def forward(
        self, embeds: Tensor, *, attention_mask: Tensor, position_ids: Tensor, cache: Any = None
    ) -> BackboneOutput:
        """embeds (B,T,D); attention_mask bool (B,T,T_past+T), True = may attend; position_ids (B,T)."""
        ...

    def logits(self, hidden: Tensor) -> Tensor:
        """(..., D) -> (..., V)."""
        ...

    def new_cache(self) -> Any:
        """An empty KV cache for `forward(..., cache=)`, appended in place."""
        ...

    def thought(self, hidden: Tensor) -> Tensor:
        """The input a thinking token gets from the previous position's final hidden state (Coconut)."""
        return hidden

    def transformer_blocks(self) -> list[nn.Module]:
        """The language model's blocks, in order (one FSDP2 unit each, train/parallel.py)."""
        ...

    def vision_modules(self) -> list[nn.Module]:
        """The registered modules the vision tower runs (one FSDP2 unit together)."""
        return [self.vision]

    def embedding_modules(self) -> list[nn.Module]:
        """Token embedding and LM head modules, each once (one FSDP2 unit: tied models share the tensor); none
        where `logits` multiplies by the embedding table directly (no module call)."""
        return []

    def merge_adapters(self) -> None:
        """Fold LoRA adapters into the base weights, in place (models/backbones/lora.py)."""
        raise ValueError(f"{type(self).__name__} has no LoRA adapters to merge.")


def cache_length(cache: Any) -> int:
    """Positions held by a KV cache (ours or a transformers one; 0 for None)."""
    return 0 if cache is None else cache.get_seq_length()


def check_forward_args(embeds: Tensor, attention_mask: Tensor, position_ids: Tensor, past: int) -> None:
    B, T = embeds.shape[:2]
    if attention_mask.dtype != torch.bool or tuple(attention_mask.shape) != (B, T, past + T):
        raise ValueError(
            f"attention_mask must be bool (B, T, T_past + T) = ({B}, {T}, {past + T}) with True = may attend, got "
            f"{attention_mask.dtype} {tuple(attention_mask.shape)}; build it with models.sequence.attention_mask."
        )
    if tuple(position_ids.shape) != (B, T):
        raise ValueError(f"position_ids must be (B, T) = ({B}, {T}), got {tuple(position_ids.shape)}.")
