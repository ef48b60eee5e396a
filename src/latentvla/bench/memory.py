"""`latentvla bench memory`: parameters and per-GPU training memory of a preset at the papers' scale, from model
configs alone (no weights): every module is built on the `meta` device.

    parameters / trainable     counted on the meta-device model (LoRA applied with peft, frozen vision, EMA copy);
                               our 264 tokens fill Qwen's padded vocabulary rows (no growth, models/backbones/hf_lm.py)
    weights                    trainable in fp32 (AdamW master weights), frozen LM weights in the load dtype
                               (`BackboneConfig.dtype`), separate SigLIP / DINOv2 encoders in fp32 (they always load
                               so, models/backbones/lm_vision.py); FSDP2 divides by N, DDP replicates; the EMA
                               target is never sharded (train/parallel.py)
    gradients / optimizer      fp32, 4 and 8 bytes per trainable parameter (AdamW m and v); / N under FSDP2
    activations                measured: the bytes autograd saves for backward (`saved_tensors_hooks`; weights it
                               saves are not counted twice) in a meta forward of the language model in the compute
                               dtype (CUDA: bf16 autocast; CPU: the weights' dtype) and of the action head, at the
                               per-GPU batch; with gradient checkpointing, one layer input per layer plus one layer
                               recomputed, times the Coconut prefix passes (K thinking tokens = K + 1 passes). Added
                               per curriculum stage, the largest stage counted: the fp32 copies of every layer's
                               hidden state the backbone returns (bf16 compute), and the vocabulary logits at the
                               supervised positions (compute dtype + fp32 copy + log-softmax). The trainable vision
                               tower (LaRA) cannot run on meta (its grid sizes are host values): estimated as 34
                               bytes x tokens x width per layer (Korthikanti et al. 2022, SDPA stores no scores).
    image tokens               as each model's processor resizes a 224 px image: Qwen's `smart_resize` with the
                               processor's pixel limits (Qwen3-VL: >= 65,536 px, so 66 tokens), a separate encoder
                               at its processor's crop (DINOv2-L: 224 of a 518 px config) / size (SigLIP: 224)
    largest batch              per GPU, linear in the activations, leaving `reserve_gb` for the allocator / CUDA.
    --device cpu               a CPU training run's peak RSS: no autocast, plus the resident runtime of a fresh
                               process that imported the training code (measured in a subprocess); checked against
                               a real-size run by `bench real-size`.

Not modelled: autocast's bf16 weight copies, the FSDP root group's unsharded modules, allocator fragmentation.

`--backbone DIR` reads DIR/config.json and DIR/preprocessor_config.json (and --vision dirs). Without it, the two
paper presets use the reference architectures in `REFERENCE_CONFIGS`, written from the public config.json and
preprocessor_config.json files of Qwen/Qwen3-VL-4B-Instruct, Qwen/Qwen2.5-0.5B, facebook/dinov2-large and
google/siglip-so400m-patch14-224 (check them against your local copies by passing DIR).
"""

from __future__ import annotations

import functools
import json
import math
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import torch
from torch import nn

from latentvla.models.action_heads import build_action_head
from latentvla.models.backbones.lora import VISION_MODULES

GB = 1e9
_QWEN3VL_4B = {
    "model_type": "qwen3_vl",
    "text_config": dict(
        hidden_size=2560,
        intermediate_size=9728,
        num_hidden_layers=36,
        num_attention_heads=32,
        num_key_value_heads=8,
        head_dim=128,
        vocab_size=151936,
        tie_word_embeddings=True,
        rope_parameters={
            "rope_type": "default",
            "rope_theta": 5e6,
            "mrope_section": [24, 20, 20],
            "mrope_interleaved": True,
        },
    ),
    "vision_config": dict(
        depth=24,
        hidden_size=1024,
        intermediate_size=4096,
        num_heads=16,
        out_hidden_size=2560,
        patch_size=16,
        spatial_merge_size=2,
        temporal_patch_size=2,
        num_position_embeddings=2304,
        deepstack_visual_indexes=[5, 11, 17],
    ),
    "tie_word_embeddings": True,
}
# Qwen/Qwen2.5-0.5B config.json (vocab 151,936 rows, padded past its 151,665-id tokenizer; tied embeddings)
_QWEN25_05B = {
    "model_type": "qwen2",
    "hidden_size": 896,
    "intermediate_size": 4864,
    "num_hidden_layers": 24,
    "num_attention_heads": 14,
    "num_key_value_heads": 2,
    "vocab_size": 151936,
    "tie_word_embeddings": True,
    "rope_theta": 1e6,
    "rms_norm_eps": 1e-6,
    "max_position_embeddings": 32768,
}
# facebook/dinov2-large config.json: the position table is trained at 518 px; its processor crops 224 (below)
_DINOV2_L = {
    "model_type": "dinov2",
    "hidden_size": 1024,
    "mlp_ratio": 4,
    "num_hidden_layers": 24,
    "num_attention_heads": 16,
    "image_size": 518,
    "patch_size": 14,
    "layerscale_value": 1.0,
}
# facebook/dinov2-large preprocessor_config.json (BitImageProcessor)
DINOV2_PROCESSOR = {
    "do_resize": True,
    "size": {"shortest_edge": 256},
    "do_center_crop": True,
    "crop_size": {"height": 224, "width": 224},
    "image_mean": [0.485, 0.456, 0.406],
    "image_std": [0.229, 0.224, 0.225],
}
# google/siglip-so400m-patch14-224 config.json (vision_config) and preprocessor_config.json
_SIGLIP_SO400M = {
    "model_type": "siglip_vision_model",
    "hidden_size": 1152,
    "intermediate_size": 4304,
    "num_hidden_layers": 27,
    "num_attention_heads": 16,
    "image_size": 224,
    "patch_size": 14,
}
SIGLIP_PROCESSOR = {"size": {"height": 224, "width": 224}, "image_mean": [0.5] * 3, "image_std": [0.5] * 3}
# Qwen/Qwen3-VL-4B-Instruct preprocessor_config.json: at least 65,536 pixels (256 x 256), so 112 / 224 px images
# are upsampled to a 16 x 16 patch grid = 8 x 8 merged tokens
QWEN3VL_PROCESSOR = {
    "size": {"shortest_edge": 65536, "longest_edge": 16777216},
    "patch_size": 16,
    "merge_size": 2,
    "temporal_patch_size": 2,
}
# preset -> (backbone config, its image processor, [(vision encoder config, its processor)], cameras, name)
REFERENCE_CONFIGS = {
    "lara-qwen3vl": (_QWEN3VL_4B, QWEN3VL_PROCESSOR, [], 2, "Qwen3-VL-4B"),
    "rdvla-minivla": (
        _QWEN25_05B,
        {},
        [(_DINOV2_L, DINOV2_PROCESSOR), (_SIGLIP_SO400M, SIGLIP_PROCESSOR)],
        2,
        "Qwen2.5-0.5B + DINOv2-L + SigLIP-so400m",
    ),
}
INSTRUCTION_TOKENS = 32  # the task instruction (+ BOS / special tokens), both papers
COT_TOKENS = 96  # explicit CoT text of the longest (Stage I) LaRA prompt (LaRA-VLA Fig. 8)
IMAGE_SIZE = 224  # both papers' camera images (LaRA-VLA §3.2, RD-VLA §III-A)
BYTES = {"float32": 4, "bfloat16": 2, "float16": 2, "auto": 2}
DEVICES = ("cuda", "cpu")


@dataclass
class MemoryReport:
    preset: str
    backbone: str
    world: int
    mode: str
    batch_per_gpu: int
    seq_len: int
    params: int
    trainable: int
    ema_params: int
    weights_gb: float
    grads_gb: float
    optimizer_gb: float
    activations_gb: float
    total_gb: float
    gpu_gb: float
    max_batch_per_gpu: int
    device: str = "cuda"
    tokens_per_image: int = 0
    runtime_gb: float = 0.0  # CPU only: the Python process with torch + transformers loaded (measured)

    def table(self) -> str:
        rows = [
            ("preset", self.preset),
            ("backbone", self.backbone),
            ("GPUs x parallel", f"{self.world} x {self.mode}"),
            ("batch per GPU", self.batch_per_gpu),
            ("sequence length", self.seq_len),
            ("parameters", f"{self.params:,}"),
            ("trainable parameters", f"{self.trainable:,}"),
            ("EMA target parameters", f"{self.ema_params:,}"),
            ("weights / GPU", f"{self.weights_gb:.2f} GB"),
            ("gradients / GPU", f"{self.grads_gb:.2f} GB"),
            ("optimizer / GPU", f"{self.optimizer_gb:.2f} GB"),
            ("activations / GPU", f"{self.activations_gb:.2f} GB"),
            ("image tokens / camera", self.tokens_per_image),
            *([("runtime (process, CPU)", f"{self.runtime_gb:.2f} GB")] if self.device == "cpu" else []),
            ("total / GPU" if self.device == "cuda" else "total (peak RSS, CPU)", f"{self.total_gb:.2f} GB"),
            (f"largest batch / GPU in {self.gpu_gb:g} GB", self.max_batch_per_gpu),
        ]
        return "\n".join(["| quantity | value |", "|---|---:|", *(f"| {k} | {v} |" for k, v in rows)])


def _hf_config(data: dict) -> Any:
    from transformers import AutoConfig

    data = dict(data)
    return AutoConfig.for_model(data.pop("model_type"), **data)


def _read(path: str) -> dict:
    from latentvla.hub import resolve_model

    f = resolve_model(path, "--backbone/--vision") / "config.json"  # a hub id reads its cached snapshot
    if not f.is_file():
        raise ValueError(f"{path}: no config.json (a local transformers model directory is needed).")
    return json.loads(f.read_text())


def _read_processor(path: str) -> dict:
    f = Path(path) / "preprocessor_config.json"
    return json.loads(f.read_text()) if f.is_file() else {}


def _meta_model(cfg_dict: dict, dtype: torch.dtype) -> nn.Module:
    import transformers as tf

    config = _hf_config(cfg_dict)
    mt = cfg_dict["model_type"]
    with torch.device("meta"):
        if mt in ("dinov2", "siglip_vision_model", "siglip"):
            cls = tf.Dinov2Model if mt == "dinov2" else tf.SiglipVisionModel
            return cls._from_config(getattr(config, "vision_config", config), dtype=dtype)
        auto = tf.AutoModelForImageTextToText if vlm_model_type_from(mt) else tf.AutoModelForCausalLM
        return auto.from_config(config, dtype=dtype)


def vlm_model_type_from(model_type: str) -> bool:
    from latentvla.models.backbones.hf_vlm import FAMILIES

    return model_type in FAMILIES


def _saved_bytes(fn, seq: int = 0, params: nn.Module | None = None) -> int:
    """Bytes autograd saves for backward while `fn()` runs (each tensor once). Parameters (and views of them)
    that autograd saves are the weights themselves, already counted: not counted again. (.., seq, seq) tensors
    are the attention probabilities of the meta device's math SDPA (CUDA's fused and CPU's flash SDPA do not
    store them) or the one shared mask: not counted."""
    saved: dict[int, int] = {}
    own = {id(p) for p in params.parameters()} if params is not None else set()

    def pack(t: torch.Tensor) -> torch.Tensor:
        base = t._base if t._base is not None else t
        if id(t) in own or id(base) in own or isinstance(t, nn.Parameter) or isinstance(base, nn.Parameter):
            return t
        if not (seq and t.dim() >= 2 and t.shape[-1] == t.shape[-2] == seq):
            # keyed by the base tensor: views of one storage (q/k/v split from one projection, transposes,
            # reshapes) occupy it once; each view alone counted it again (meta run 3.74 GB vs 3.20 GB measured
            # by the same hooks on the real full-size MiniVLA)
            saved[id(base)] = max(saved.get(id(base), 0), base.numel() * base.element_size())
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        fn()
    return sum(saved.values())


def _lm_activations(
    text: nn.Module, batch: int, seq: int, width: int, checkpointing: bool, dtype: torch.dtype
) -> int:
    x = torch.randn(batch, seq, width, device="meta", dtype=dtype, requires_grad=True)
    pos = torch.arange(seq, device="meta")[None].expand(batch, seq)
    full = _saved_bytes(lambda: text(inputs_embeds=x, position_ids=pos), seq, text)
    if not checkpointing:
        return full
    layers = len(text.layers)
    return layers * x.numel() * x.element_size() + full // layers


_RUNTIME_PROBE = """
import torch, transformers, peft  # noqa
import latentvla.train.loop, latentvla.policy, latentvla.models.backbones, latentvla.cli  # noqa
import latentvla.data.dataset, latentvla.data.lerobot, latentvla.data.validate  # noqa
print(next(int(l.split()[1]) * 1024 for l in open("/proc/self/status") if l.startswith("VmRSS:")))
"""


@functools.cache  # a fresh process's runtime does not change within this one
def runtime_rss() -> int:
    """Resident bytes of a fresh Python process that has imported what `latentvla train` imports (torch,
    transformers, peft, the training loop), measured in a subprocess so this process's own state does not leak
    in; 0 where /proc is missing (not Linux)."""
    import subprocess
    import sys

    if not Path("/proc/self/status").is_file():
        return 0
    out = subprocess.run([sys.executable, "-c", _RUNTIME_PROBE], capture_output=True, text=True, check=True)
    return int(out.stdout.strip().splitlines()[-1])


@dataclass
class _MetaModels:
    """The meta-device modules of one estimate: the backbone (LoRA applied), separate encoders, head, projector."""

    model: nn.Module
    encoders: list[nn.Module]
    head: nn.Module
    projector: nn.Module | None
    is_vlm: bool
    width: int
    n_layers: int
    vocab: int  # embedding rows after our tokens are added
    vision_params: int  # the vision tower's (VLM) or the separate encoders' parameters


@dataclass
class _ParamCounts:
    params: int
    trainable: int
    ema: int  # the EMA target's parameters (never sharded)
    frozen_backbone: int
    enc_params: int  # separate encoders (0 for a VLM, whose tower is part of the backbone)
    vision_trainable: int


def estimate(
    preset: str,
    backbone: str | None = None,
    vision: tuple[str, ...] = (),
    *,
    lora: int | None = None,
    world: int = 1,
    fsdp: bool = False,
    batch_size: int | None = None,
    gpu_gb: float = 80.0,
    reserve_gb: float = 4.0,
    cameras: int | None = None,
    device: str = "cuda",
    dtype: str | None = None,
    image_size: int = IMAGE_SIZE,
) -> MemoryReport:
    """The memory table of `preset` (see the module docstring). `device="cpu"` predicts a CPU run's peak RSS:
    no autocast (activations in the weights' dtype) plus the process runtime."""
    from latentvla.config import get_preset

    if device not in DEVICES:
        raise ValueError(f"device must be one of {DEVICES}, got {device!r}")
    cfg = get_preset(preset)
    bb_cfg, bb_proc, vis, n_cam, name = _architecture(preset, cfg, backbone, vision)
    cameras = cameras or n_cam
    pc, bbc = cfg.policy, _backbone_config(cfg.policy.backbone, lora, dtype)
    per_gpu = _per_gpu_batch(batch_size or cfg.batch_size, world)
    load_bytes = BYTES[bbc.dtype]
    m = _build_meta_models(bb_cfg, vis, pc, bbc, load_bytes)
    stages = pc.curriculum.stages()
    uses_visual = any(s.visual_latents for s in stages)
    n = _count_params(m, bbc, uses_visual)
    shard = world if fsdp else 1
    weights = (n.trainable * 4 + n.frozen_backbone * load_bytes + (n.enc_params - n.vision_trainable) * 4) / shard
    weights += n.ema * (load_bytes if m.is_vlm else 4)
    grads, optim = n.trainable * 4 / shard, n.trainable * 8 / shard
    tokens_per_image = _tokens_per_image(bb_cfg, bb_proc, vis, m.is_vlm, image_size)
    seq = _sequence_length(pc, stages, cameras, tokens_per_image)
    # CUDA: bf16 autocast; CPU: no autocast, activations in the weights' dtype
    act_dtype = torch.float32 if device == "cpu" and load_bytes == 4 else torch.bfloat16
    act = _stage_activations(m, pc, bbc, stages, per_gpu, seq, act_dtype, cameras * tokens_per_image)
    if m.is_vlm and not bbc.freeze_vision and bbc.lora.rank == 0:
        act += _vision_tower_activations(m.model, bb_cfg, per_gpu, cameras, tokens_per_image)
    fixed = weights + grads + optim
    runtime = runtime_rss() if device == "cpu" else 0
    max_batch = max(0, int((gpu_gb * GB - reserve_gb * GB - fixed) // (act / per_gpu))) if per_gpu else 0
    return MemoryReport(
        preset,
        name,
        world,
        "fsdp" if fsdp else "ddp",
        per_gpu,
        seq,
        n.params,
        n.trainable,
        n.ema,
        weights / GB,
        grads / GB,
        optim / GB,
        act / GB,
        (fixed + act + runtime) / GB,
        gpu_gb,
        max_batch,
        device,
        tokens_per_image,
        runtime / GB,
    )


def _architecture(preset: str, cfg: Any, backbone: str | None, vision: tuple[str, ...]) -> tuple:
    """(backbone config, its processor, [(encoder config, processor)], cameras, name): read from `backbone`'s
    directory, else the preset's reference architecture."""
    if backbone is not None:
        vis = [(_read(v), _read_processor(v)) for v in vision]
        return _read(backbone), _read_processor(backbone), vis, len(cfg.policy.cameras), Path(backbone).name
    if preset in REFERENCE_CONFIGS:
        return REFERENCE_CONFIGS[preset]
    raise ValueError(
        f"bench memory --preset {preset} needs --backbone DIR (reference configs exist for "
        f"{sorted(REFERENCE_CONFIGS)})."
    )


def _backbone_config(bbc: Any, lora: int | None, dtype: str | None) -> Any:
    """The preset's backbone config with the --lora rank and --dtype applied."""
    if lora is not None:
        bbc = replace(bbc, lora=replace(bbc.lora, rank=lora))
    if dtype is not None:
        bbc = replace(bbc, dtype=dtype)
    return bbc


def _per_gpu_batch(batch: int, world: int) -> int:
    if world < 1 or batch % world:
        raise ValueError(f"--batch-size {batch} must be a multiple of the GPU count {world}.")
    return batch // world


def _build_meta_models(bb_cfg: dict, vis: list, pc: Any, bbc: Any, load_bytes: int) -> _MetaModels:
    """Every module of the policy on the meta device: backbone (our tokens added, LoRA applied), encoders, head."""
    model = _meta_model(bb_cfg, torch.bfloat16 if load_bytes == 2 else torch.float32)
    is_vlm = vlm_model_type_from(bb_cfg["model_type"])
    text_cfg = model.config.get_text_config()
    width, n_layers, rows = text_cfg.hidden_size, text_cfg.num_hidden_layers, text_cfg.vocab_size
    new_tokens = 8 + pc.num_action_bins  # our special tokens + action bins (models/tokenizer.py)
    # Our tokens go after the tokenizer's ids; a padded matrix (Qwen: 151,936 rows) already holds them, so it only
    # grows when the tokenizer + our tokens outgrow it (models/backbones/hf_lm.py `grow_vocab`). Without the tokenizer
    # here, its length is taken as the matrix's minus the Qwen padding that the new tokens fill first.
    base_vocab = rows - min(new_tokens, rows - 151_665) if rows == 151_936 else rows
    vocab = max(rows, base_vocab + new_tokens)
    model.resize_token_embeddings(vocab, mean_resizing=False)
    # separate encoders always load in fp32 (models/backbones/lm_vision.py), whatever the LM's dtype
    encoders = [_meta_model(v, torch.float32) for v, _ in vis]
    with torch.device("meta"):
        head = build_action_head(pc, width, n_layers)
        fused = sum(e.config.hidden_size for e in encoders)
        projector = (
            nn.Sequential(nn.Linear(fused, width), nn.GELU(), nn.Linear(width, width)) if encoders else None
        )
    vision_params = sum(p.numel() for e in encoders for p in e.parameters())
    if is_vlm:
        vision_params = sum(p.numel() for n, p in model.named_parameters() if _is_vision(n))
    if bbc.lora.rank > 0:
        from peft import LoraConfig, get_peft_model

        ids = list(range(base_vocab, base_vocab + new_tokens))
        model = get_peft_model(
            model,
            LoraConfig(
                r=bbc.lora.rank,
                lora_alpha=bbc.lora.scale_alpha,
                target_modules="all-linear",
                exclude_modules=VISION_MODULES,
                trainable_token_indices={"embed_tokens": ids},
            ),
        )
    return _MetaModels(model, encoders, head, projector, is_vlm, width, n_layers, vocab, vision_params)


def _count_params(m: _MetaModels, bbc: Any, uses_visual: bool) -> _ParamCounts:
    """Parameters, trainable ones (LoRA / frozen vision), and the EMA target's (visual latents only)."""
    backbone_params = sum(p.numel() for p in m.model.parameters())
    backbone_trainable = sum(p.numel() for p in m.model.parameters() if p.requires_grad)
    if m.is_vlm and bbc.freeze_vision and bbc.lora.rank == 0:
        backbone_trainable -= m.vision_params
    enc_params = 0 if m.is_vlm else m.vision_params
    vision_trainable = 0 if (bbc.freeze_vision or bbc.lora.rank > 0) else enc_params
    small = sum(p.numel() for mod in (m.head, m.projector) if mod is not None for p in mod.parameters())
    return _ParamCounts(
        params=backbone_params + enc_params + small,
        trainable=backbone_trainable + vision_trainable + small,
        ema=m.vision_params if uses_visual else 0,
        frozen_backbone=backbone_params - backbone_trainable,
        enc_params=enc_params,
        vision_trainable=vision_trainable,
    )


def _sequence_length(pc: Any, stages: list, cameras: int, tokens_per_image: int) -> int:
    """Image tokens per camera + text (+ explicit CoT) + thinking + <img_next> + queries + action tokens."""
    cot = any(s.explicit_components for s in stages)
    uses_visual = any(s.visual_latents for s in stages)
    seq = cameras * tokens_per_image + INSTRUCTION_TOKENS + COT_TOKENS * cot + 5 + pc.n_query
    return seq + pc.n_img_next * uses_visual + pc.horizon * pc.action_dim * any(s.discrete_actions for s in stages)


def _language_model(model: nn.Module, is_vlm: bool) -> nn.Module:
    """The decoder stack that runs the sequence (under a peft wrapper and a VLM's vision tower)."""
    text = model.get_base_model() if hasattr(model, "get_base_model") else model
    if is_vlm and hasattr(text.model, "language_model"):
        return text.model.language_model
    return getattr(text.model, "text_model", text.model)


def _stage_activations(
    m: _MetaModels, pc: Any, bbc: Any, stages: list, per_gpu: int, seq: int, act_dtype: torch.dtype, n_image: int
) -> int:
    """Activation bytes of the largest curriculum stage: language model, hidden-state copies, logits, head."""
    act_bytes = 4 if act_dtype == torch.float32 else 2
    text = _language_model(m.model, m.is_vlm)
    text.to(act_dtype)  # meta: free; what autocast computes the layers in (its weight-cast copies: not modelled)
    trunk = _lm_activations(text, per_gpu, seq, m.width, bbc.grad_checkpointing, act_dtype)
    # the backbone returns every layer's hidden state in fp32 (models/backbones/hf_lm.py): a copy unless already fp32
    hidden_copies = 0 if act_bytes == 4 else (m.n_layers + 1) * per_gpu * seq * m.width * 4
    head_act = _head_activations(m.head, pc, per_gpu, seq, m.width, n_image)
    per_stage = []
    for s in stages:
        # Coconut under gradient checkpointing: K thinking tokens = K prefix passes + the full one, each keeping
        # its checkpointed layer inputs (models/thinking.py `naive_latent_forward`)
        passes = s.num_thinking + 1 if bbc.grad_checkpointing and s.num_thinking else 1
        # token CE: logits over the whole vocabulary at every supervised position, in the compute dtype, the
        # fp32 copy (`logits.float()`) and the log-softmax cross-entropy saves (models/vla.py `_token_losses`)
        supervised = COT_TOKENS * bool(s.explicit_components) + pc.horizon * pc.action_dim * s.discrete_actions
        logits = per_gpu * supervised * m.vocab * (act_bytes + 4 * (act_bytes != 4) + 4)
        per_stage.append(trunk * passes + hidden_copies + logits + head_act * s.train_head)
    return max(per_stage)


def _vision_tower_activations(
    model: nn.Module, bb_cfg: dict, per_gpu: int, cameras: int, tokens_per_image: int
) -> int:
    """A trainable VLM vision tower cannot run on meta (its grid sizes are host values): 34 bytes x tokens x width
    per layer (Korthikanti et al. 2022, SDPA stores no scores)."""
    vc = model.config.vision_config
    patches = (tokens_per_image - 2 * ("spatial_merge_size" in bb_cfg.get("vision_config", {}))) * getattr(
        vc, "spatial_merge_size", 1
    ) ** 2
    return 34 * per_gpu * cameras * patches * vc.hidden_size * getattr(vc, "depth", 0)


def _is_vision(name: str) -> bool:
    import re

    return re.match(VISION_MODULES, name + ".") is not None or ".visual." in name or name.startswith("visual")


def qwen_grid(
    height: int, width: int, patch: int, merge: int, min_pixels: int, max_pixels: int
) -> tuple[int, int]:
    """The (rows, cols) patch grid Qwen's image processor gives an image (its `smart_resize`): each side rounded
    to a multiple of patch x merge, then scaled up to `min_pixels` or down to `max_pixels` keeping the aspect."""
    f = patch * merge
    h, w = max(f, round(height / f) * f), max(f, round(width / f) * f)
    if h * w > max_pixels:
        beta = math.sqrt(height * width / max_pixels)
        h, w = max(f, math.floor(height / beta / f) * f), max(f, math.floor(width / beta / f) * f)
    elif h * w < min_pixels:
        beta = math.sqrt(min_pixels / (height * width))
        h, w = math.ceil(height * beta / f) * f, math.ceil(width * beta / f) * f
    return h // patch, w // patch


def _tokens_per_image(bb: dict, bb_proc: dict, vis: list[tuple[dict, dict]], is_vlm: bool, image_size: int) -> int:
    """Image tokens per camera at `image_size` px, as each processor resizes it."""
    from latentvla.models.backbones.lm_vision import encoder_input_size

    if not is_vlm:
        if not vis:
            return 16
        v, proc = vis[0]
        return (encoder_input_size(proc, v.get("image_size", image_size)) // v["patch_size"]) ** 2
    vc = bb.get("vision_config", {})
    if "spatial_merge_size" in vc:  # Qwen: patches merged 2x2, + <|vision_start|>, <|vision_end|>
        size = bb_proc.get("size") or {}
        lo = bb_proc.get("min_pixels", size.get("shortest_edge", 0))
        hi = bb_proc.get("max_pixels", size.get("longest_edge", 1 << 62))
        gh, gw = qwen_grid(image_size, image_size, vc["patch_size"], vc["spatial_merge_size"], lo, hi)
        return gh * gw // vc["spatial_merge_size"] ** 2 + 2
    side = vc.get("image_size", image_size) // vc.get("patch_size", 14)
    return side * side // (bb.get("scale_factor", 1) ** 2)


def _head_activations(head: nn.Module, pc: Any, batch: int, seq: int, width: int, n_image: int) -> int:
    """Bytes the action head saves for backward in fp32 (meta forward of its loss)."""
    state = torch.zeros(batch, pc.state_dim, device="meta") if pc.use_state else None
    actions = torch.zeros(batch, pc.horizon, pc.action_dim, device="meta")
    ctx = torch.zeros(batch, seq, width, device="meta", requires_grad=True)
    if pc.head == "flow":
        return _saved_bytes(lambda: head.loss(actions, ctx, None, state, None), params=head)
    q, im = ctx[:, : pc.n_query], ctx[:, pc.n_query : pc.n_query + n_image]  # RD: queries + image tokens
    prelude = ctx[:, : pc.n_query + n_image]
    rc = pc.recurrent  # TBPTT: only the last `backprop_depth` iterations keep activations
    return _saved_bytes(
        lambda: head.loss(
            actions,
            prelude,
            q,
            im,
            state,
            None,
            num_iterations=rc.backprop_depth,
            backprop_depth=rc.backprop_depth,
        ),
        params=head,
    )
