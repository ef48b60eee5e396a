"""A pretrained transformers vision-language model behind the backbone interface (`BackboneConfig(kind="hf_vlm")`).

The papers' systems are defined by their VLM (LaRA-VLA §3.2: LaRA fine-tunes Qwen3-VL-4B end to end and uses
its own vision tower for the visual-latent targets). This backbone loads one from a LOCAL directory
(`AutoModelForImageTextToText`, never a hub download) and exposes the `Backbone` protocol's verbs (interface.py):

    encode_image(images, camera) -> (B, N, D)   the VLM's own vision tower + merger/projector at its native
                                                preprocessing (`AutoImageProcessor` from the directory)
    embed(ids), forward(embeds, attention_mask=, position_ids=, cache=), logits(hidden), new_cache()
    vision                                      the tower as one module: images -> (B, n, D) on a square grid
                                                (what LaRA's EMA target copies, LaRA-VLA §3.3 Eq. 3)

Families (`FAMILIES`): Qwen2.5-VL, Qwen3-VL (M-RoPE: 3-D positions, image tokens wrapped in
<|vision_start|>/<|vision_end|> as the Qwen chat template does), Idefics3 / SmolVLM (pixel-shuffle connector,
no image splitting) and PaliGemma (SigLIP + linear projector). Our 4-D LaRA mask replaces each family's own mask,
so PaliGemma's bidirectional prefix and Qwen's causal text both become the LaRA layout (LaRA-VLA §3.3, Fig. 3).

Qwen3-VL's DeepStack (intermediate vision features added to the first LM layers' hidden states at the image
positions) is wired through a per-batch side channel: `encode_image` keeps the features of the images it just
encoded and the next forward that starts at column 0 (the prompt pass, or each prefix pass of the cache-free
multi-pass) adds them; later cached passes never hold image columns. Tests check the whole path equals
transformers' own forward.
"""

from __future__ import annotations

import contextlib
import os
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from latentvla.models.backbones.hf_lm import (
    additive_mask,
    embedding_rms,
    grow_vocab,
    local_model_dir,
    rescale_to_rms,
    text_forward,
    torch_dtype,
    unique_modules,
)
from latentvla.models.backbones.hf_version import require_transformers
from latentvla.models.backbones.image_preprocess import DevicePreprocessor
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

# model_type -> (text model attribute of `.model`, vision kind); see VLMVision.forward.
FAMILIES = {
    "qwen2_5_vl": ("language_model", "qwen"),
    "qwen3_vl": ("language_model", "qwen"),
    "idefics3": ("text_model", "idefics3"),
    "smolvlm": ("text_model", "idefics3"),
    "paligemma": ("language_model", "paligemma"),
}


def vlm_model_type(path: str | os.PathLike) -> str | None:
    """The `model_type` of a local transformers directory if it is a supported VLM family, else None."""
    import json

    cfg = Path(path) / "config.json"
    if not cfg.is_file():
        return None
    model_type = json.loads(cfg.read_text()).get("model_type")
    return model_type if model_type in FAMILIES else None


class VLMVision(nn.Module):
    """The VLM's vision tower (+ merger / connector / projector) as one module: (B, 3, H, W) in [0, 1] ->
    (B, n, D) tokens in the LM width, row-major on a square grid for square images.

    Preprocessing is the image processor saved with the model (resize, rescale, normalise, patchify), done
    with tensor ops on the images' device with the same pixel values (`image_preprocess.DevicePreprocessor`);
    Idefics3 / SmolVLM still run their PIL processor on CPU copies (image splitting / padding not ported).
    """

    def __init__(self, kind: str, modules: dict[str, nn.Module], processor: Any, merge: int = 1) -> None:
        super().__init__()
        self.kind, self.processor, self.merge = kind, processor, merge
        self.parts = nn.ModuleDict(modules)
        self.on_device = None  # Idefics3, or a setting without a device implementation: the processor on CPU
        if kind != "idefics3":
            with contextlib.suppress(ValueError):
                self.on_device = DevicePreprocessor(processor, qwen=kind == "qwen")
        self._tower_cache: dict = {}

    def preprocess(self, images: Tensor) -> dict[str, Tensor]:
        if self.on_device is not None:
            return self.on_device(images.detach().float().clamp(0, 1))
        x = images.detach().float().clamp(0, 1).cpu()
        kw: dict[str, Any] = {"do_rescale": False, "return_tensors": "pt"}
        if self.kind == "idefics3":
            kw["do_image_splitting"] = False
            return self.processor(images=[[xi] for xi in x], **kw)
        return self.processor(images=list(x), **kw)

    def forward(self, images: Tensor) -> Tensor:
        return self.encode(images)[0]

    def encode(self, images: Tensor) -> tuple[Tensor, list[Tensor]]:
        """(tokens (B, n, D), DeepStack features: one (B, n, D) per injected LM layer, Qwen3-VL only)."""
        inputs = self.preprocess(images)
        B = images.shape[0]
        dev = next(self.parameters()).device
        dtype = next(self.parameters()).dtype
        pv = inputs["pixel_values"].to(dev, dtype)
        if self.kind == "qwen":
            grid = inputs["image_grid_thw"].to(dev)
            out = self.parts["tower"](pv, grid_thw=grid, return_dict=True, **self._tower_inputs(grid, pv.shape))
            deep = [f.reshape(B, -1, f.shape[-1]) for f in (getattr(out, "deepstack_features", None) or [])]
            return out.pooler_output.reshape(B, -1, out.pooler_output.shape[-1]), deep
        if self.kind == "idefics3":
            feats = self.parts["tower"](pixel_values=pv.flatten(0, 1), return_dict=True).last_hidden_state
            feats = self.parts["projector"](feats)
            return feats.reshape(B, -1, feats.shape[-1]), []
        feats = self.parts["tower"](pv, return_dict=True).last_hidden_state  # paligemma
        return self.parts["projector"](feats), []

    def _tower_inputs(self, grid: Tensor, pixels_shape: torch.Size) -> dict[str, Any]:
        """What the Qwen tower derives from `image_grid_thw` by reading it on the host (its positions, attention
        segments and, for Qwen2.5-VL, windows), made once per image shape with transformers' own functions and
        passed in precomputed (the tower pops them from its kwargs). The segment boundaries stay on the host:
        the SDPA path splits by them there."""
        key = (tuple(grid.shape), tuple(pixels_shape), grid.device)
        if key not in self._tower_cache:
            try:
                from transformers import vision_utils as vu
            except ImportError:  # an older transformers: the tower computes them itself
                return {}
            tower, host = self.parts["tower"], grid.cpu()
            kw: dict[str, Any] = {
                "position_ids": vu.get_vision_position_ids(host, tower.spatial_merge_size).to(grid.device),
                "cu_seqlens": vu.get_vision_cu_seqlens(host),
            }
            if hasattr(tower, "window_size"):  # Qwen2.5-VL's windowed attention
                index, cu_window = vu.get_vision_window_index(
                    host, tower.spatial_merge_size, tower.window_size, tower.patch_size
                )
                kw.update(window_index=index.to(grid.device), cu_window_seqlens=cu_window)
            self._tower_cache[key] = kw
        return self._tower_cache[key]


def _vision_parts(kind: str, inner: nn.Module) -> dict[str, nn.Module]:
    if kind == "qwen":
        return {"tower": inner.visual}
    if kind == "idefics3":
        return {"tower": inner.vision_model, "projector": inner.connector}
    return {"tower": inner.vision_tower, "projector": inner.multi_modal_projector}


def mrope_positions(position_ids: Tensor, table: Tensor, n_image: int, span: int) -> Tensor:
    """1-D positions (B, T) -> Qwen M-RoPE positions (3, B, T) (temporal, height, width).

    Image tokens fill columns [0, n_image) and hold 1-D positions 0..n_image-1 (models/sequence.py), so the
    mapping is a pure function of the 1-D position: p < n_image looks up `table` (3, n_image), the per-image
    (t, h, w) grid positions Qwen's `get_rope_index` assigns; text continues after the image block's largest
    position: p - n_image + span on all three axes. Pads (position 0, never attended) map to the first entry.
    """
    p = position_ids.long()
    is_img = p < n_image
    text = (p - n_image + span)[None].expand(3, -1, -1)
    img = table.to(p.device)[:, p.clamp(max=n_image - 1)]
    return torch.where(is_img[None], img, text)


def qwen_position_table(grids: list[tuple[int, int]], wrap: bool) -> tuple[Tensor, int]:
    """(3, n_image) M-RoPE positions of an image block of merged grids (gh, gw) per camera, and its span.

    As Qwen's `get_rope_index` for images: a block starting at s gets t = s, h = s + i, w = s + j; the next token
    starts at s + max(gh, gw). With `wrap`, each image is preceded and followed by a text-like
    <|vision_start|> / <|vision_end|> token (one position each).
    """
    cols: list[Tensor] = []
    s = 0
    for gh, gw in grids:
        if wrap:
            cols.append(torch.full((3, 1), s))
            s += 1
        i, j = torch.meshgrid(torch.arange(gh), torch.arange(gw), indexing="ij")
        cols.append(torch.stack([torch.full((gh * gw,), s), s + i.flatten(), s + j.flatten()]))
        s += max(gh, gw)
        if wrap:
            cols.append(torch.full((3, 1), s))
            s += 1
    return torch.cat(cols, dim=1), s


class HFVLMBackbone(nn.Module, Backbone):
    """A local transformers VLM (`FAMILIES`) behind the backbone interface; see the module docstring."""

    def __init__(self, cfg: BackboneConfig, shape: BackboneShape | None = None) -> None:
        super().__init__()
        require_transformers()
        from transformers import AutoImageProcessor, AutoModelForImageTextToText, AutoTokenizer

        path = local_model_dir(cfg.hf_path)
        model_type = vlm_model_type(path)
        if model_type is None:
            raise ValueError(
                f"{path} is not a supported VLM (config.json model_type must be one of {sorted(FAMILIES)})."
            )
        shape = shape or BackboneShape()
        self.cfg, self.model_type, self.num_cameras = cfg, model_type, shape.num_cameras
        text_attr, vision_kind = FAMILIES[model_type]
        self.vlm = AutoModelForImageTextToText.from_pretrained(
            path, local_files_only=True, dtype=torch_dtype(cfg.dtype), attn_implementation="sdpa"
        )
        self.tokenizer = HFTokenizer(
            AutoTokenizer.from_pretrained(path, local_files_only=True), shape.num_action_bins
        )
        grow_vocab(self.vlm, self.tokenizer)
        inner = self.vlm.model
        # Plain (unregistered) references: the modules stay registered once, under `vlm` (peft / FSDP wrap them
        # in place, so these stay valid).
        object.__setattr__(self, "_text", getattr(inner, text_attr))
        if hasattr(self._text, "_deepstack_process"):  # Qwen3-VL: add DeepStack features without a host sync
            self._text._deepstack_process = self._deepstack_add
        tc = self.vlm.config.get_text_config()
        self.width, self.num_layers = tc.hidden_size, tc.num_hidden_layers
        processor = AutoImageProcessor.from_pretrained(path, local_files_only=True)
        merge = getattr(self.vlm.config.vision_config, "spatial_merge_size", 1)
        object.__setattr__(
            self, "_vision", VLMVision(vision_kind, _vision_parts(vision_kind, inner), processor, merge)
        )
        self._init_layout(shape.image_size)
        self.embed_rms = embedding_rms(self.vlm, self.tokenizer.base_vocab)  # target scale of fed-back thoughts
        if cfg.freeze_vision:
            self._vision.requires_grad_(False)
        if cfg.grad_checkpointing:
            self.vlm.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        if cfg.lora.rank > 0:
            self.vlm = apply_lora(self.vlm, cfg.lora, self.tokenizer.new_token_ids)

    # A transformers layer under gradient checkpointing drops the KV cache (modeling_layers.py), so the Coconut
    # multi-pass forward must recompute prefixes instead (thinking.latent_forward reads this).
    @property
    def cache_in_training(self) -> bool:
        return not self.cfg.grad_checkpointing

    @property
    def vision(self) -> VLMVision:
        return self._vision

    def _init_layout(self, image_size: int) -> None:
        """Image tokens per camera, and the M-RoPE table for Qwen (from one dummy image at `image_size`)."""
        probe = torch.zeros(1, 3, image_size, image_size)
        inputs = self._vision.preprocess(probe)
        self.qwen = self._vision.kind == "qwen"
        if self.qwen:
            _, h, w = inputs["image_grid_thw"][0].tolist()
            gh, gw = h // self._vision.merge, w // self._vision.merge
            self.tokens_per_image = gh * gw + 2  # + <|vision_start|>, <|vision_end|>
            table, span = qwen_position_table([(gh, gw)] * self.num_cameras, wrap=True)
            self.register_buffer("mrope_table", table, persistent=False)
            self.mrope_span = span
            c = self.vlm.config
            self.register_buffer(
                "_wrap_ids", torch.tensor([c.vision_start_token_id, c.vision_end_token_id]), False
            )
        else:
            with torch.no_grad():
                self.tokens_per_image = self._vision(probe.to(self.vlm.dtype)).shape[1]
        self.n_image = self.tokens_per_image * self.num_cameras

    # ------------------------------------------------------------------------------------- interface

    def encode_image(self, images: Tensor, camera: int = 0) -> Tensor:
        """(B, 3, H, W) in [0, 1] -> (B, tokens_per_image, D); cameras are told apart by position (M-RoPE) or
        by order, as the VLM does for several images in one prompt."""
        if not 0 <= camera < self.num_cameras:
            raise ValueError(f"camera index {camera} out of range; the backbone has {self.num_cameras}.")
        feats, deep = self._vision.encode(images)
        if camera == 0:
            self._deepstack: dict[int, list[Tensor]] = {}
        if deep:
            self._deepstack[camera] = deep
        if self.qwen:
            wrap = self.embed(self._wrap_ids).to(feats.dtype)  # (2, D): <|vision_start|>, <|vision_end|>
            B = feats.shape[0]
            feats = torch.cat([wrap[:1].expand(B, 1, -1), feats, wrap[1:].expand(B, 1, -1)], dim=1)
        return feats

    def new_cache(self) -> Any:
        from transformers import DynamicCache

        return DynamicCache(config=self.vlm.config.get_text_config())

    def embed(self, ids: Tensor) -> Tensor:
        return self.vlm.get_input_embeddings()(ids)

    def thought(self, hidden: Tensor) -> Tensor:
        """A fed-back Coconut thought: rescaled to the token-embedding RMS when `cfg.rescale_thoughts` (a
        pretrained LM's final hidden state is ~13x a token embedding's norm)."""
        return rescale_to_rms(hidden, self.embed_rms) if self.cfg.rescale_thoughts else hidden

    def forward(
        self, embeds: Tensor, *, attention_mask: Tensor, position_ids: Tensor, cache: Any = None
    ) -> BackboneOutput:
        check_forward_args(embeds, attention_mask, position_ids, cache_length(cache))
        embeds = embeds.to(self.vlm.dtype)  # bf16 weights: fed-back fp32 thoughts enter in the weights' dtype
        pos = (
            mrope_positions(position_ids, self.mrope_table, self.n_image, self.mrope_span)
            if self.qwen
            else position_ids
        )
        return text_forward(
            self._text,
            self.num_layers,
            embeds,
            attention_mask=additive_mask(attention_mask, embeds),
            position_ids=pos,
            cache=cache,
            **self._deepstack_inputs(embeds, cache_length(cache)),
        )

    def _deepstack_inputs(self, embeds: Tensor, past: int) -> dict:
        """Qwen3-VL DeepStack kwargs for a pass that holds the image columns [0, n_image) (else none)."""
        deep = getattr(self, "_deepstack", {})
        B, T = embeds.shape[:2]
        cams = self.num_cameras
        if past or self.n_image > T or len(deep) != cams or deep[0][0].shape[0] != B:
            return {}
        n = self.tokens_per_image - 2  # image tokens between <|vision_start|> and <|vision_end|>
        mask = torch.zeros(B, T, dtype=torch.bool, device=embeds.device)
        for k in range(cams):
            mask[:, k * self.tokens_per_image + 1 : k * self.tokens_per_image + 1 + n] = True
        cols = [k * self.tokens_per_image + 1 + j for k in range(cams) for j in range(n)]
        key = (tuple(cols), embeds.device)
        if getattr(self, "_deepstack_cols", (None, None))[0] != key:  # made once per layout and device
            self._deepstack_cols = (key, torch.tensor(cols).to(embeds.device))
        self._deepstack_mask = mask  # `_deepstack_add` recognises our own mask (its columns are known)
        per_layer = [torch.cat([deep[k][i] for k in range(cams)], dim=1) for i in range(len(deep[0]))]
        return {
            "visual_pos_masks": mask,
            "deepstack_visual_embeds": [f.reshape(-1, f.shape[-1]) for f in per_layer],
        }

    def _deepstack_add(self, hidden: Tensor, visual_pos_masks: Tensor, visual_embeds: Tensor) -> Tensor:
        """Qwen3-VL's `_deepstack_process` (hidden[mask] += embeds) at the image columns we laid out, which are
        the same in every row and known on the host: an index, where a boolean mask would read its count back
        from the device. Same values and gradients (tests/test_no_host_sync.py)."""
        if visual_pos_masks is not getattr(self, "_deepstack_mask", None):  # transformers' own forward
            return type(self._text)._deepstack_process(self._text, hidden, visual_pos_masks, visual_embeds)
        cols = self._deepstack_cols[1]
        hidden = hidden.clone()
        emb = visual_embeds.to(hidden.device, hidden.dtype).view(hidden.shape[0], cols.numel(), -1)
        hidden[:, cols] = hidden[:, cols] + emb
        return hidden

    def logits(self, hidden: Tensor) -> Tensor:
        head = self.vlm.get_output_embeddings()
        return head(hidden.to(head.weight.dtype))

    def transformer_blocks(self) -> list[nn.Module]:
        return list(self._text.layers)

    def vision_modules(self) -> list[nn.Module]:
        """The VLM's own registered modules the (unregistered) `vision` view runs."""
        return list(self._vision.parts.values())

    def embedding_modules(self) -> list[nn.Module]:
        return unique_modules([self.vlm.get_input_embeddings(), self.vlm.get_output_embeddings()])

    def merge_adapters(self) -> None:
        self.vlm = merge_lora(self.vlm)
