"""The scratch backbone (`BackboneConfig(kind="scratch")`, random init; nanoGPT-like): a pre-RMSNorm causal
transformer with RoPE, SwiGLU and `F.scaled_dot_product_attention` under an explicit boolean mask (the LaRA masks
are not plain causal, LaRA-VLA §3.2), a tied LM head and a simple per-layer `KVCache`. Width / depth / heads come
from the one size dial, `BACKBONE_SIZES`.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from latentvla.models.backbones.cameras import CameraVision
from latentvla.models.backbones.interface import (
    Backbone,
    BackboneConfig,
    BackboneOutput,
    BackboneShape,
    cache_length,
    check_forward_args,
)
from latentvla.models.tokenizer import Tokenizer


class KVCache:
    """Per-layer key/value tensors (B, heads, T_past, head_dim), appended in place by each forward call."""

    def __init__(self, num_layers: int) -> None:
        self.keys: list[Tensor | None] = [None] * num_layers
        self.values: list[Tensor | None] = [None] * num_layers

    def update(self, layer: int, k: Tensor, v: Tensor) -> tuple[Tensor, Tensor]:
        """Append this call's k, v for `layer` and return the full (past + new) keys and values."""
        if self.keys[layer] is not None:
            k, v = torch.cat([self.keys[layer], k], dim=2), torch.cat([self.values[layer], v], dim=2)
        self.keys[layer], self.values[layer] = k, v
        return k, v

    @property
    def length(self) -> int:
        return 0 if self.keys[0] is None else self.keys[0].shape[2]

    def get_seq_length(self) -> int:
        """`length` under the name transformers' caches use (`cache_length` reads either kind)."""
        return self.length

    def crop(self, length: int) -> None:
        """Drop everything after the first `length` positions (e.g. to branch a generation)."""
        for i, (k, v) in enumerate(zip(self.keys, self.values)):
            if k is not None:
                self.keys[i], self.values[i] = k[:, :, :length], v[:, :, :length]


class RMSNorm(nn.Module):
    def __init__(self, dim: int, eps: float) -> None:
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x: Tensor) -> Tensor:
        # One fused kernel (forward and backward) instead of pow, mean, rsqrt and two muls: the same maths,
        # x * rsqrt(mean(x^2) + eps) * weight, to float rounding.
        return F.rms_norm(x, (x.shape[-1],), self.weight, self.eps)


def _rope(x: Tensor, rot: Tensor) -> Tensor:
    """Rotate channel pairs (2i, 2i+1) by the complex phases `rot` (B, 1, T, hd/2); ~2x faster than rotate-half."""
    pairs = torch.view_as_complex(x.float().unflatten(-1, (-1, 2)).contiguous())
    return torch.view_as_real(pairs * rot).flatten(-2).to(x.dtype)


class Block(nn.Module):
    """Pre-norm block: x + Attn(RMSNorm(x)); x + SwiGLU(RMSNorm(x))."""

    def __init__(self, width: int, heads: int, eps: float) -> None:
        super().__init__()
        self.heads = heads
        hidden = 64 * math.ceil(8 * width / 3 / 64)  # SwiGLU: ~8/3 D keeps params equal to a 4 D GELU MLP
        self.attn_norm, self.mlp_norm = RMSNorm(width, eps), RMSNorm(width, eps)
        self.qkv = nn.Linear(width, 3 * width, bias=False)
        self.attn_out = nn.Linear(width, width, bias=False)
        self.gate_up = nn.Linear(width, 2 * hidden, bias=False)
        self.down = nn.Linear(hidden, width, bias=False)

    def forward(self, x: Tensor, mask: Tensor, rot: Tensor, cache: KVCache | None, idx: int) -> Tensor:
        B, T, D = x.shape
        q, k, v = self.qkv(self.attn_norm(x)).view(B, T, 3, self.heads, D // self.heads).permute(2, 0, 3, 1, 4)
        q, k = _rope(q, rot), _rope(k, rot)  # (B, h, T, hd)
        if cache is not None:
            k, v = cache.update(idx, k, v)
        y = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)  # mask (B, 1, T, Tk) bool
        x = x + self.attn_out(y.transpose(1, 2).reshape(B, T, D))
        gate, up = self.gate_up(self.mlp_norm(x)).chunk(2, dim=-1)
        return x + self.down(F.silu(gate) * up)


class ScratchBackbone(CameraVision, Backbone):
    """Random-init causal transformer with RoPE, KV cache, per-layer hidden states and a tied LM head."""

    def __init__(
        self, cfg: BackboneConfig, shape: BackboneShape | None = None, tokenizer: Tokenizer | None = None
    ) -> None:
        super().__init__()
        if cfg.kind != "scratch":
            raise ValueError(f"ScratchBackbone builds kind='scratch'; build_backbone(cfg) builds {cfg.kind!r}.")
        shape = shape or BackboneShape()
        self.cfg = cfg
        self.tokenizer = tokenizer or Tokenizer(cfg.extra_words, shape.num_action_bins)
        self.width, self.num_layers, heads = cfg.width, cfg.num_layers, cfg.num_heads
        self.tok_embed = nn.Embedding(self.tokenizer.vocab_size, self.width)
        self.blocks = nn.ModuleList(Block(self.width, heads, cfg.norm_eps) for _ in range(self.num_layers))
        self.norm = RMSNorm(self.width, cfg.norm_eps)
        head_dim = self.width // heads
        self.register_buffer(
            "inv_freq", cfg.rope_theta ** (-torch.arange(0, head_dim, 2).float() / head_dim), False
        )
        # Token embeddings are scaled by sqrt(D) (Gemma-style) so real tokens and fed-back final-normed hidden
        # states (RMS ~1) enter the trunk at comparable scales.
        self.embed_scale = math.sqrt(self.width)
        self.apply(self._init_weights)
        for block in self.blocks:  # GPT-2 scaled residual init
            for lin in (block.attn_out, block.down):
                nn.init.normal_(lin.weight, std=0.02 / math.sqrt(2 * self.num_layers))
        self._init_vision(cfg.vision, shape.num_cameras, self.width)

    @staticmethod
    def _init_weights(m: nn.Module) -> None:
        if isinstance(m, nn.Linear | nn.Embedding):
            nn.init.normal_(m.weight, std=0.02)

    def new_cache(self) -> KVCache:
        return KVCache(self.num_layers)

    def embed(self, ids: Tensor) -> Tensor:
        """(B, T) token ids -> (B, T, D) input embeddings."""
        return self.tok_embed(ids) * self.embed_scale

    def forward(
        self, embeds: Tensor, *, attention_mask: Tensor, position_ids: Tensor, cache: KVCache | None = None
    ) -> BackboneOutput:
        """embeds (B,T,D); attention_mask bool (B,T,T_past+T), True = may attend; position_ids (B,T)."""
        check_forward_args(embeds, attention_mask, position_ids, cache_length(cache))
        angles = position_ids[:, None, :, None].to(self.inv_freq) * self.inv_freq  # (B, 1, T, hd/2)
        rot = torch.polar(torch.ones_like(angles), angles)
        mask = attention_mask[:, None]
        x, layers = embeds, [embeds]
        for i, block in enumerate(self.blocks):
            x = block(x, mask, rot, cache, i)
            layers.append(x)
        return BackboneOutput(hidden=self.norm(x), layers=tuple(layers))

    def logits(self, hidden: Tensor) -> Tensor:
        """(..., D) -> (..., V) with the tied embedding matrix."""
        return hidden @ self.tok_embed.weight.t()

    def transformer_blocks(self) -> list[nn.Module]:
        return list(self.blocks)
