"""Top-level configs and the named preset registry.

Each sub-config lives next to the module it configures (BackboneConfig in models/backbones/, ActionExpertConfig
in models/action_expert.py, RecurrentHeadConfig in models/recurrent_head.py, CurriculumConfig in
models/curriculum.py); this file only composes them:

    TrainConfig
      └── policy: PolicyConfig
            ├── backbone: BackboneConfig       one size dial, BACKBONE_SIZES (or a local HF model)
            ├── head: "flow" | "recurrent"     LaRA's DiT expert or RD-VLA's recurrent-depth head
            ├── expert / recurrent             their configs
            └── curriculum: CurriculumConfig   which stages, in which order (models/curriculum.py)

Presets (paper ablations are names, not flags):
    lara              I -> II-1 -> II-2 -> II-3 -> III, latent text + visual latents, flow expert
    lara-latent-text  the lara curriculum without visual latents                    (LaRA Table 4, row 3)
    lara-explicit     explicit CoT text throughout, then the flow expert on it        (row 2)
    lara-no-cot       no reasoning: action tokens, then the flow expert              (row 1)
                      (the ablations differ from lara in one factor: same head, total steps, stage-III share)
    ecot              ECoT-style: explicit CoT text, then discrete action tokens; the explicit latency baseline
    rdvla             RD-VLA: backbone with query tokens + recurrent-depth head (L1, random depth, TBPTT)
    lara-rd           LaRA's latent CoT curriculum with the recurrent head as the action head (neither paper)
    lara-qwen3vl      the LaRA paper's setup: Qwen3-VL-4B (--backbone DIR), Table 5 steps / batch / LRs, 16-layer DiT
    rdvla-minivla     the RD-VLA paper's setup: Qwen2.5-0.5B (--backbone DIR) + frozen DINOv2/SigLIP (--vision DIR),
                      LoRA r=64, 64 queries, head width 896 / 8 heads, mean depth 32, TBPTT 8, L1, lr 2e-4
    bc                plain image behaviour cloning (conv + instruction + proprio -> MLP -> chunk, L1): the
                      no-reasoning reference, 70 % on six Meta-World tasks (models/bc.py, `model="bc"`)
Every preset but `bc` takes a local transformers model with `use_backbone` (CLI `--backbone DIR [--vision DIR]`).
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import math
import types
import typing
from dataclasses import dataclass, field, replace
from typing import Any, Literal

from latentvla.constants import DEFAULT_CAMERA
from latentvla.models.action_expert import ActionExpertConfig
from latentvla.models.backbones import BACKBONE_SIZES, BackboneConfig
from latentvla.models.backbones.lora import LoraSettings
from latentvla.models.bc import BCConfig
from latentvla.models.curriculum import CurriculumConfig
from latentvla.models.recurrent_head import RecurrentHeadConfig
from latentvla.registry import did_you_mean, lookup


@dataclass(frozen=True)
class PolicyConfig:
    """Everything needed to rebuild a policy's modules (saved as config.json with every checkpoint)."""

    preset: str = "lara"
    model: Literal["vla", "bc"] = "vla"  # LatentVLA (models/vla.py) or the plain BC policy (models/bc.py)
    backbone: BackboneConfig = field(default_factory=BackboneConfig)
    head: Literal["flow", "recurrent"] = "flow"
    expert: ActionExpertConfig = field(default_factory=ActionExpertConfig)
    recurrent: RecurrentHeadConfig = field(default_factory=RecurrentHeadConfig)
    curriculum: CurriculumConfig = field(default_factory=CurriculumConfig)
    bc: BCConfig = field(default_factory=BCConfig)  # model="bc" only
    cameras: tuple[str, ...] = (DEFAULT_CAMERA,)  # the first one is the primary camera (visual-latent target)
    image_size: int = 64
    state_dim: int = 4  # filled from the dataset at training time
    action_dim: int = 4
    horizon: int = 8  # action chunk length H (LaRA LIBERO 8, RD-VLA 8)
    n_img_next: int = 16  # LaRA: 16 <img_next> tokens regressing a 4x4 pooled next-frame feature grid
    target_image_size: int = 0  # next frame resized to this for the EMA target (LaRA: 112 px); 0 = image_size
    n_query: int = 0  # RD-VLA's learned latent tokens in the backbone (64 in the paper)
    num_action_bins: int = 64  # discrete action tokens (stages I/II)
    ema_decay: float = 0.999  # LaRA code: EMA teacher momentum 0.999 ...
    ema_every: int = 2  # ... updated every 2 optimizer steps
    # EMA time constant as a fraction of the run's total steps; 0 = use ema_decay as is. The paper gives no value
    # (LaRA Eq. 3); the code's 0.999 every 2 steps is a ~2,000-step time constant, longer than our whole CPU runs,
    # so the visual-latent targets would stay mostly the random-init encoder. 0.05: targets track the encoder
    # with a lag of 5 % of the run (stage I alone is 4 time constants).
    ema_horizon: float = 0.05
    use_state: bool = True  # proprio token for the action head
    # test-time defaults (overridable per call / on the CLI)
    iterations: int = 8  # recurrent head depth at inference (RD-VLA: 8-12 saturates)
    execution: str = "fixed:4"  # action-queue execution horizon (models/execution.py make_horizon spec)

    def __post_init__(self) -> None:
        if self.model not in ("vla", "bc"):
            raise ValueError(f"model must be 'vla' or 'bc', got {self.model!r}")
        if self.head not in ("flow", "recurrent"):
            raise ValueError(f"head must be 'flow' or 'recurrent', got {self.head!r}")
        if not self.cameras:
            raise ValueError("at least one camera is required")
        if self.head == "recurrent" and self.n_query < 1:
            raise ValueError("the recurrent head reads the backbone's query tokens: set n_query >= 1")
        if self.target_image_size < 0:
            raise ValueError(f"target_image_size must be >= 0 (0 = image_size), got {self.target_image_size}")
        if not 0.0 <= self.ema_horizon <= 1.0:
            raise ValueError(
                f"ema_horizon is a fraction of the run in [0, 1] (0 = fixed ema_decay), got {self.ema_horizon}"
            )
        for name in ("state_dim", "action_dim", "horizon", "image_size", "num_action_bins"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")


@dataclass(frozen=True)
class TrainConfig:
    """One training run. `latentvla train --preset NAME k=v ...` builds it."""

    preset: str = "lara"
    policy: PolicyConfig = field(default_factory=PolicyConfig)
    steps: int = 2000
    # Wall-clock budget in minutes of training (clock starts at the first step); None = step-based. With it, the
    # schedule advances with elapsed time over `steps` positions and `steps` is a cap (train/budget.py).
    minutes: float | None = None
    batch_size: int = 32
    seed: int = 0
    lr_backbone: float = 3e-4  # paper: VLM 1e-5, expert 1e-4 for 4B models; scaled up for tiny random-init ones
    lr_head: float = 1e-3
    lr_vision: float | None = None  # the image encoder's LR; None = lr_backbone (LaRA: VLM 1e-5, vision 1e-5)
    weight_decay: float = 1e-4
    warmup_frac: float = 0.05
    min_lr_frac: float = 0.1
    grad_clip: float = 1.0
    grad_accum: int = 1
    # DataLoader worker processes; -1 = auto (train/loop.py `loader_workers`): 0 on CPU, where workers take cores
    # from the training step, min(4, cores per rank - 1) on CUDA, where one process decodes only ~200-300 samples/s
    # of 64 px PNG frames (bench data) and would hold the GPU back.
    num_workers: int = -1
    log_every: int = 10
    save_every: int = 500
    keep_last: int = 2
    augment: bool = True  # random shift, pad 4 (replicate padding)
    device: str = "auto"
    bf16: bool = True  # autocast on CUDA only
    wandb: bool = False
    parallel: Literal["ddp", "fsdp"] = "ddp"  # multi-process: DDP, or FSDP2 fully_shard (train/parallel.py)
    save_merged: bool = False  # LoRA runs: the final checkpoint also gets merged/ (adapters folded in)
    async_save: bool = False  # --fsdp: periodic shards written in the background (train/sharded_checkpoint.py)

    def __post_init__(self) -> None:
        if self.steps < 1 or self.batch_size < 1 or self.grad_accum < 1:
            raise ValueError("steps, batch_size and grad_accum must be >= 1")
        if self.minutes is not None and not (self.minutes > 0 and math.isfinite(self.minutes)):
            raise ValueError(f"minutes is a training budget > 0 (or None for step-based), got {self.minutes}")
        for name in ("log_every", "save_every", "keep_last"):  # 0 used to crash mid-run or after training
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)} (e.g. {name}=1)")
        if self.num_workers < -1:
            raise ValueError(f"num_workers must be >= 0 (or -1 = auto), got {self.num_workers}")
        if self.parallel not in ("ddp", "fsdp"):
            raise ValueError(did_you_mean(self.parallel, ("ddp", "fsdp"), "parallel mode"))


# ----------------------------------------------------------------------------------------------- presets


def _policy(preset: str, size: str, **kw: Any) -> PolicyConfig:
    width, depth, heads = BACKBONE_SIZES[size]  # the action heads follow the backbone's size dial
    return PolicyConfig(
        preset=preset,
        backbone=BackboneConfig(size=size),
        expert=ActionExpertConfig(width=width, depth=depth, heads=heads),
        recurrent=RecurrentHeadConfig(width=width, heads=heads),
        **kw,
    )


# The backbone (and vision) LR of the from-scratch sizes. A 4-layer width-128 transformer learns at 1e-3 (the
# bc baseline's LR too); at the old 3e-4 the tiny `lara` had not learned the CoT format after the demo's ~800 steps:
# `analyze cot` parse_rate 0.29 vs 1.00 at 1e-3, CoT loss 3.31 vs 1.06 nats/token at step 100, flow loss 0.70 vs
# 0.44 at the end (LOG.md 2026-12-02, same 800-step run on mw6). small/base were not measured: they keep 3e-4.
# A pretrained backbone (`use_backbone`) never inherits these: it gets PRETRAINED_LR_BACKBONE.
SCRATCH_LR_BACKBONE = {"micro": 1e-3, "tiny": 1e-3}
PRETRAINED_LR_BACKBONE = 3e-4


def _vla(preset: str, size: str, curriculum: str, **kw: Any) -> TrainConfig:
    """A VLA preset on the from-scratch backbone at `size`, with the size's backbone LR, except `rdvla` (the
    recurrent head and no CoT text; nothing suggested a gain), which keeps 3e-4. At 1e-3 its demo run reached 8.3 %
    (3.3 % on a second evaluation seed) against 30.0-31.7 % in two runs at 3e-4 (LOG.md 2026-12-02)."""
    policy = _policy(preset, size, curriculum=CurriculumConfig(curriculum), **kw)
    learns_text = any(s.explicit_components for s in policy.curriculum.stages())
    pure_rd = policy.head == "recurrent" and not learns_text
    lr = PRETRAINED_LR_BACKBONE if pure_rd else SCRATCH_LR_BACKBONE.get(size, PRETRAINED_LR_BACKBONE)
    return TrainConfig(preset, policy, lr_backbone=lr)


def _presets() -> dict[str, typing.Callable[[str], TrainConfig]]:
    rd = dict(head="recurrent", n_query=16)
    return {
        "lara": lambda s: _vla("lara", s, "lara"),
        "lara-explicit": lambda s: _vla("lara-explicit", s, "lara-explicit"),
        "lara-latent-text": lambda s: _vla("lara-latent-text", s, "lara-latent-text"),
        "lara-no-cot": lambda s: _vla("lara-no-cot", s, "no-cot"),
        "ecot": lambda s: _vla("ecot", s, "ecot"),
        "rdvla": lambda s: _vla("rdvla", s, "rd", **rd),
        "lara-rd": lambda s: _vla("lara-rd", s, "lara", **rd),
        "lara-qwen3vl": lambda s: _lara_qwen3vl(),
        "rdvla-minivla": lambda s: _rdvla_minivla(),
        # measured BC recipe: AdamW lr 1e-3, batch 64 (the size dial does not apply: one fixed small network)
        "bc": lambda s: TrainConfig(
            "bc",
            _policy("bc", s, model="bc", curriculum=CurriculumConfig("bc")),
            batch_size=64,
            lr_backbone=1e-3,
            lr_head=1e-3,
        ),
    }


# The paper presets need a local model directory (`use_backbone`): what each paper used.
PAPER_BACKBONES = {
    "lara-qwen3vl": "Qwen3-VL-4B-Instruct (LaRA-VLA §3.2)",
    "rdvla-minivla": "Qwen2.5-0.5B + --vision DINOv2 / SigLIP dirs (MiniVLA, RD-VLA §III-A)",
}


def _lara_qwen3vl() -> TrainConfig:
    """LaRA-VLA Table 5, LIBERO column: stages 5k / 2k+2k+2k / 40k; VLM and vision 1e-5, DiT 1e-4;
    AdamW, cosine, warm-up 0.1; horizon 8; 3 thinking tokens; 16 <img_next>; 16-layer DiT. Batch 16 per GPU on
    8 H100 = 128 global (Table 5 does not say per-device or global). The whole VLM trains (no LoRA), in bf16
    autocast over fp32 master weights; FSDP2 (`--fsdp`) shards them over the 8 GPUs."""
    policy = PolicyConfig(
        preset="lara-qwen3vl",
        backbone=BackboneConfig(dtype="float32", rescale_thoughts=True, grad_checkpointing=True),
        expert=ActionExpertConfig(width=1024, depth=16, heads=16, num_future_tokens=32, dropout=0.2),
        curriculum=CurriculumConfig("lara", fractions=(5.0, 2.0, 2.0, 2.0, 40.0)),
        horizon=8,
        n_img_next=16,
        # LaRA img_next.res: 112 px (§1.2). Qwen3-VL's processor raises every image to its 65,536-pixel minimum,
        # so the 112 px frame reaches the EMA tower as 256 px = 8x8 merged tokens (the 224 px input likewise: 66
        # tokens per camera), pooled to the 4x4 = 16 targets; our device path keeps the processor's pixels.
        target_image_size=112,
    )
    return TrainConfig(
        "lara-qwen3vl",
        policy,
        steps=51_000,
        batch_size=128,
        lr_backbone=1e-5,
        lr_vision=1e-5,
        lr_head=1e-4,
        weight_decay=1e-8,
        warmup_frac=0.1,
        min_lr_frac=0.05,
    )


def _rdvla_minivla() -> TrainConfig:
    """RD-VLA (§III and its code): LoRA r=64 alpha 128 on all linear LM layers, frozen vision encoder, 64 query
    tokens (trainable), head width 896 / 8 heads, mean recurrence 32, TBPTT 8, L1, one AdamW at lr 2e-4,
    constant (no warm-up, no decay within 40k steps), batch 16 x grad-accum 2. The frozen base loads in bf16 (LoRA
    adapters stay fp32). A single 24 GB GPU suffices (RD-VLA README)."""
    policy = PolicyConfig(
        preset="rdvla-minivla",
        backbone=BackboneConfig(dtype="bfloat16", freeze_vision=True, lora=LoraSettings(rank=64, alpha=128.0)),
        head="recurrent",
        n_query=64,
        recurrent=RecurrentHeadConfig(width=896, heads=8, mean_recurrence=32, backprop_depth=8),
        curriculum=CurriculumConfig("rd"),
        horizon=8,
    )
    return TrainConfig(
        "rdvla-minivla",
        policy,
        steps=40_000,
        batch_size=16,
        grad_accum=2,
        lr_backbone=2e-4,
        lr_head=2e-4,
        warmup_frac=0.0,
        min_lr_frac=1.0,
        weight_decay=0.01,
    )


def use_backbone(cfg: TrainConfig, backbone_dir: str | None, vision_dirs: tuple[str, ...] = ()) -> TrainConfig:
    """Point a preset at a local transformers model: a VLM directory (Qwen2.5-VL, Qwen3-VL, SmolVLM, PaliGemma)
    becomes kind "hf_vlm" (its own vision tower); a causal LM becomes kind "hf" with our vision encoder, or the
    local SigLIP / DINOv2 encoders in `vision_dirs` (fused) behind a learned projector."""
    from latentvla.hub import pinned_model_id, resolve_model
    from latentvla.models.backbones.hf_vlm import vlm_model_type
    from latentvla.models.vision import VisionConfig

    bb = cfg.policy.backbone
    if backbone_dir is None:
        if vision_dirs:
            raise ValueError("--vision needs --backbone (a local causal LM directory to pair it with).")
        if cfg.preset in PAPER_BACKBONES:
            raise ValueError(
                f"preset {cfg.preset} needs --backbone DIR|ID, a {PAPER_BACKBONES[cfg.preset]} directory or hub "
                "id (e.g. Qwen/Qwen3-VL-4B-Instruct, read from the Hugging Face cache; README 'GPU recipes')."
            )
        return cfg
    # A hub id (ORG/NAME[@REV]) resolves through the Hugging Face cache (hub.py); the config records it pinned
    # to the snapshot's commit, a local directory as an absolute path.
    path = resolve_model(backbone_dir, "--backbone")
    if not (path / "config.json").is_file():
        raise ValueError(f"--backbone {backbone_dir}: not a local transformers model directory (no config.json).")
    vision_paths = []
    for v in vision_dirs:
        vpath = resolve_model(v, "--vision")
        if not (vpath / "config.json").is_file():
            raise ValueError(f"--vision {v}: not a local transformers model directory (no config.json).")
        vision_paths.append(pinned_model_id(v, vpath))
    hf_path = pinned_model_id(backbone_dir, path)
    if vlm_model_type(path) is not None:
        if vision_dirs:
            raise ValueError(f"--backbone {backbone_dir} is a VLM with its own vision tower; drop --vision.")
        bb = replace(bb, kind="hf_vlm", hf_path=hf_path)
    else:
        vision = VisionConfig(kind="hf", paths=tuple(vision_paths)) if vision_dirs else bb.vision
        bb = replace(bb, kind="hf", hf_path=hf_path, vision=vision)
    lr = cfg.lr_backbone
    if cfg.preset not in PAPER_BACKBONES and lr == SCRATCH_LR_BACKBONE.get(cfg.policy.backbone.size):
        lr = PRETRAINED_LR_BACKBONE  # the size's LR is for a random-init backbone, not a pretrained one
    return replace(cfg, lr_backbone=lr, policy=replace(cfg.policy, backbone=bb))


PRESETS = _presets()


def get_preset(name: str, size: str = "tiny") -> TrainConfig:
    """A named preset at a size; unknown names get a did-you-mean error."""
    factory = lookup(PRESETS, name, "preset")
    if size not in BACKBONE_SIZES:  # the one size dial (models/backbones/interface.py)
        raise ValueError(did_you_mean(size, BACKBONE_SIZES, "size"))
    return factory(size)


# ------------------------------------------------------------------------------ (de)serialisation, overrides


def config_to_dict(cfg: Any) -> dict:
    """Nested frozen dataclasses -> plain JSON-able dict (tuples become lists)."""
    return json.loads(json.dumps(dataclasses.asdict(cfg)))


def _coerce(tp: Any, value: Any) -> Any:
    """Convert a JSON value (or a CLI string) to the annotated field type."""
    origin = typing.get_origin(tp)
    if dataclasses.is_dataclass(tp):
        return config_from_dict(tp, value)
    if origin in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        if value is None or value == "None":
            return None
        return _coerce(args[0], value)
    if origin is Literal:
        choices = typing.get_args(tp)
        if value not in choices:
            raise ValueError(did_you_mean(str(value), [str(c) for c in choices], "value"))
        return value
    if origin is tuple:
        args = typing.get_args(tp)
        items = value.split(",") if isinstance(value, str) else list(value)
        inner = args[0] if args else str
        return tuple(_coerce(inner, v) for v in items if v != "")
    if tp is bool and isinstance(value, str):
        if value.lower() not in ("true", "false", "1", "0", "yes", "no"):
            raise ValueError(f"expected a boolean (true/false), got {value!r}")
        return value.lower() in ("true", "1", "yes")
    if tp in (int, float) and not isinstance(value, tp):
        with contextlib.suppress(TypeError, ValueError):
            return tp(value)
        with contextlib.suppress(TypeError, ValueError, OverflowError):
            if tp is int and float(value).is_integer():  # an integer written 1e3
                return int(float(value))
        raise ValueError(f"expected {'an integer' if tp is int else 'a number'}, got {value!r}")
    if tp is str and not isinstance(value, str):
        return str(value)
    return value


def config_from_dict(cls: Any, data: dict) -> Any:
    """Inverse of `config_to_dict`; unknown keys are an error (a typo must not be silently ignored)."""
    legacy: dict[str, Any] = {}
    if cls is PolicyConfig and isinstance(data.get("backbone"), dict):
        backbone = dict(data["backbone"])
        legacy = {k: backbone.pop(k) for k in DERIVED_BACKBONE_FIELDS if k in backbone}
        data = {**data, "backbone": backbone}
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = set(data) - names
    if unknown:
        key = sorted(unknown)[0]
        raise ValueError(did_you_mean(key, names, f"field of {cls.__name__}"))
    cfg = cls(**{k: _coerce(hints[k], v) for k, v in data.items()})
    for key, value in legacy.items():
        _check_derived_backbone_field(cfg, key, value)
    return cfg


# Backbone fields that the policy now owns (`LatentVLA` always built the backbone with the policy's values):
# name -> (the old BackboneConfig default, the policy field that sets it, its value). A config.json written before
# still holds them.
DERIVED_BACKBONE_FIELDS: dict[str, tuple[Any, str, typing.Callable[[PolicyConfig], Any]]] = {
    "image_size": (64, "image_size", lambda p: p.image_size),
    "num_cameras": (1, "cameras", lambda p: len(p.cameras)),
    "num_action_bins": (256, "num_action_bins", lambda p: p.num_action_bins),
}


def _check_derived_backbone_field(policy: PolicyConfig, key: str, value: Any) -> None:
    """An old config.json's `backbone.<key>` is dropped when it is the policy's value or the old default (which
    every checkpoint wrote, unused); any other value was a setting the model silently ignored: refuse it."""
    old_default, owner, derive = DERIVED_BACKBONE_FIELDS[key]
    if value not in (old_default, derive(policy)):
        raise ValueError(
            f"backbone.{key}={value} conflicts with the policy's {derive(policy)} (policy.{owner}): the backbone "
            f"takes it from the policy now; delete backbone.{key} from config.json (or set policy.{owner})."
        )


def apply_overrides(cfg: Any, overrides: list[str]) -> Any:
    """Apply CLI overrides like `steps=100`, `policy.horizon=8`, `policy.backbone.size=small`.

    `*.kind=...` overrides go last, so `policy.backbone.kind=hf policy.backbone.hf_path=DIR` validates in either
    order (a kind's required fields are set before the kind switch is checked).
    """
    overrides = sorted(overrides, key=lambda o: o.split("=", 1)[0].endswith(".kind"))
    for item in overrides:
        if "=" not in item:
            raise ValueError(f"override {item!r} must look like key=value (e.g. policy.horizon=8)")
        key, value = item.split("=", 1)
        try:
            cfg = _set_path(cfg, key.strip().split("."), value.strip())
        except (
            ValueError,
            TypeError,
        ) as e:  # name the override: `seed=1.5` alone said "invalid literal for int()"
            raise ValueError(f"override {key.strip()}={value.strip()}: {e}") from None
    return cfg


def _set_path(cfg: Any, path: list[str], value: str) -> Any:
    names = [f.name for f in dataclasses.fields(cfg)]
    head = path[0]
    if head not in names:
        raise ValueError(did_you_mean(head, names, f"field of {type(cfg).__name__}"))
    current = getattr(cfg, head)
    if len(path) > 1:
        if not dataclasses.is_dataclass(current):
            raise ValueError(f"{head!r} is not a nested config; cannot set {'.'.join(path)}")
        return replace(cfg, **{head: _set_path(current, path[1:], value)})
    if dataclasses.is_dataclass(current):
        fields = ", ".join(f.name for f in dataclasses.fields(current))
        raise ValueError(
            f"{head!r} is a group of settings, not a value: set one of its fields ({head}.FIELD, "
            f"FIELD one of {fields})"
        )
    hint = typing.get_type_hints(type(cfg))[head]
    return replace(cfg, **{head: _coerce(hint, value)})
