"""A Hugging Face `transformers` causal LM behind the backbone interface (`BackboneConfig(kind="hf")`).

Loaded from a LOCAL directory only (or ORG/NAME[@REV] from the HF cache, hub.py; never a download), our special
tokens added to its tokenizer (`models.tokenizer.HFTokenizer`), a 4-D additive mask, `DynamicCache` and
per-layer hidden states. Its `vision` is our own encoder, or local SigLIP / DINOv2 encoders with a learned
projector (`VisionConfig(kind="hf")`, lm_vision.py; RD-VLA's MiniVLA / Prismatic, RD-VLA §4).

The helpers below are shared with the VLM kind (hf_vlm.py): loading, vocabulary growth, the forward through the
transformers text model, and the rescaling of fed-back thoughts.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from latentvla.models.backbones.cameras import CameraVision
from latentvla.models.backbones.hf_version import require_transformers
from latentvla.models.backbones.interface import (
    Backbone,
    BackboneConfig,
    BackboneOutput,
    BackboneShape,
    cache_length,
    check_forward_args,
)
from latentvla.models.backbones.lora import apply_lora, merge_lora
from latentvla.models.tokenizer import HFTokenizer


def local_model_dir(hf_path: str | None) -> Path:
    """`hf_path` as a local directory (a directory, or ORG/NAME[@REV] from the HF cache); offline from here."""
    from latentvla.hub import resolve_model

    path = resolve_model(hf_path or "", "hf_path")
    if not path.is_dir():
        raise FileNotFoundError(f"hf_path {str(path)!r} is not a local directory or a Hugging Face model id.")
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    return path


def torch_dtype(name: str) -> Any:
    return "auto" if name == "auto" else getattr(torch, name)


def embedding_rms(model: nn.Module, base_vocab: int) -> float:
    """Mean RMS of the pretrained token-embedding rows: the target scale of fed-back thoughts."""
    emb = model.get_input_embeddings().weight[:base_vocab].detach().float()
    return float(emb.pow(2).mean(-1).sqrt().mean())


def rescale_to_rms(hidden: Tensor, target_rms: float) -> Tensor:
    """Each vector of `hidden` scaled to root-mean-square `target_rms` (a pretrained LM's final hidden state is
    ~13x a token embedding's norm; a thought fed back at that scale swamps the prompt)."""
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
    falling back to eos / pad when it is not one token (LaRA-VLA code, QWen3.py `_add_thinking_tokens`).
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


def additive_mask(attention_mask: Tensor, embeds: Tensor) -> Tensor:
    """Our bool (B, T, Tk) mask (True = may attend) as transformers' additive (B, 1, T, Tk) mask in `embeds`' dtype."""
    additive = torch.zeros(attention_mask.shape, dtype=embeds.dtype, device=embeds.device)
    return additive.masked_fill(~attention_mask, torch.finfo(embeds.dtype).min)[:, None]


def text_forward(text: nn.Module, num_layers: int, embeds: Tensor, **kwargs: Any) -> BackboneOutput:
    """One pass of a transformers text model (`kwargs`: its forward's mask, positions, cache, ...), with every
    layer's hidden state in fp32 (the heads run in fp32). transformers' last hidden state is post-norm, so the
    pre-norm output of the last block is captured with a hook."""
    last: list[Tensor] = []
    hook = text.layers[-1].register_forward_hook(
        lambda _m, _i, o: last.append(o[0] if isinstance(o, tuple) else o)
    )
    try:
        out = text(
            inputs_embeds=embeds, use_cache=kwargs.get("cache") is not None, output_hidden_states=True, **kwargs
        )
    finally:
        hook.remove()
    layers = tuple(h.float() for h in (*out.hidden_states[:num_layers], last[-1]))
    return BackboneOutput(hidden=out.last_hidden_state.float(), layers=layers)


class HFBackbone(CameraVision, Backbone):
    """A local transformers causal LM behind the `Backbone` interface (inputs_embeds, 4-D mask, DynamicCache)."""

    def __init__(self, cfg: BackboneConfig, shape: BackboneShape | None = None) -> None:
        super().__init__()
        require_transformers()
        from transformers import AutoModelForCausalLM, AutoTokenizer

        path = local_model_dir(cfg.hf_path)
        shape = shape or BackboneShape()
        self.cfg = cfg
        self.lm = AutoModelForCausalLM.from_pretrained(
            path, local_files_only=True, dtype=torch_dtype(cfg.dtype), attn_implementation="sdpa"
        )
        self.tokenizer = HFTokenizer(
            AutoTokenizer.from_pretrained(path, local_files_only=True), shape.num_action_bins
        )
        grow_vocab(self.lm, self.tokenizer)
        self.embed_rms = embedding_rms(self.lm, self.tokenizer.base_vocab)
        self.width, self.num_layers = self.lm.config.hidden_size, self.lm.config.num_hidden_layers
        self._init_vision(cfg.vision, shape.num_cameras, self.width)
        if cfg.freeze_vision:  # pretrained encoders only: a new projector keeps training
            self.vision.freeze() if hasattr(self.vision, "freeze") else self.vision.requires_grad_(False)
        if cfg.grad_checkpointing:
            self.lm.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        object.__setattr__(self, "_text", self.lm.model)  # unregistered: survives the peft wrap below
        if cfg.lora.rank > 0:
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
        check_forward_args(embeds, attention_mask, position_ids, cache_length(cache))
        embeds = embeds.to(self.lm.dtype)  # bf16 weights: fed-back fp32 thoughts enter in the weights' dtype
        mask = additive_mask(attention_mask, embeds)
        return text_forward(
            self._text, self.num_layers, embeds, attention_mask=mask, position_ids=position_ids, cache=cache
        )

    def logits(self, hidden: Tensor) -> Tensor:
        head = self.lm.get_output_embeddings()
        return head(hidden.to(head.weight.dtype))

    def transformer_blocks(self) -> list[nn.Module]:
        return list(self._text.layers)

    def embedding_modules(self) -> list[nn.Module]:
        return unique_modules([self.lm.get_input_embeddings(), self.lm.get_output_embeddings()])

    def merge_adapters(self) -> None:
        self.lm = merge_lora(self.lm)


def unique_modules(modules: list[nn.Module | None]) -> list[nn.Module]:
    """`modules` without None and without repeats (a tied LM head is the embedding module itself)."""
    return [m for i, m in enumerate(modules) if m is not None and all(m is not u for u in modules[:i])]
