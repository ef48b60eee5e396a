"""LoRA on a transformers backbone via `peft` (RD-VLA fine-tunes its LLM with LoRA r=64, alpha 128, all linear
layers, RD-VLA §III-A and its code), and which weights an adapter checkpoint must hold.

- `LoraSettings.rank == 0` means no LoRA (full fine-tuning, LaRA-VLA's setup: the whole VLM trains).
- Targets: `"all-linear"` of the language model only. peft's "all-linear" would also adapt the vision tower and
  its merger, so they are excluded by name; the vision tower is frozen or fully trained by
  `BackboneConfig.freeze_vision`, never adapted.
- Our added special / action tokens stay fully trainable through peft's `trainable_token_indices` (only those
  rows), which keeps a tied `lm_head` tied after merging; RD-VLA's "queries trainable".
- An adapter checkpoint stores everything that is not a frozen weight of the base model (`is_base_weight`):
  adapters, the new token rows, heads, projector, EMA target. `Policy.from_pretrained` rebuilds the base from
  `hf_path` and loads those on top; `merge` folds the adapters into the base weights for a full export.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from torch import nn

# Module names that belong to a VLM's vision side (Qwen `visual`, Idefics3 `vision_model` + `connector`,
# PaliGemma `vision_tower` + `multi_modal_projector`, our `vision` encoders); LoRA never targets them.
VISION_MODULES = r".*(visual|vision_model|vision_tower|connector|multi_modal_projector|vision)\..*"


@dataclass(frozen=True)
class LoraSettings:
    """LoRA on the language model. rank 0 = off. `targets`: peft target_modules ("all-linear" or a
    comma-separated list of module names such as "q_proj,v_proj")."""

    rank: int = 0
    alpha: float = 0.0  # 0 -> 2 * rank (RD-VLA / OpenVLA-OFT convention)
    dropout: float = 0.0
    targets: str = "all-linear"

    def __post_init__(self) -> None:
        if self.rank < 0 or self.alpha < 0 or not 0 <= self.dropout < 1:
            raise ValueError(f"LoRA needs rank >= 0, alpha >= 0 and dropout in [0, 1), got {self}.")

    @property
    def scale_alpha(self) -> float:
        return self.alpha or 2.0 * self.rank


def apply_lora(model: nn.Module, settings: LoraSettings, new_token_ids: list[int]) -> nn.Module:
    """Wrap a transformers model with LoRA adapters (a `peft.PeftModel`); only adapters and new rows train."""
    try:
        from peft import LoraConfig, get_peft_model
    except ImportError as e:
        raise ImportError('LoRA needs peft: pip install -e ".[hf]"') from e
    targets: Any = settings.targets if settings.targets == "all-linear" else settings.targets.split(",")
    config = LoraConfig(
        r=settings.rank,
        lora_alpha=settings.scale_alpha,
        lora_dropout=settings.dropout,
        target_modules=targets,
        exclude_modules=VISION_MODULES,
        trainable_token_indices={"embed_tokens": list(new_token_ids)} if new_token_ids else None,
    )
    return get_peft_model(model, config)


def merge_lora(model: nn.Module) -> nn.Module:
    """The base transformers model with the adapters folded into its weights."""
    return model.merge_and_unload()


def base_weight_names(module: nn.Module) -> set[str]:
    """State-dict names under `module` that an adapter checkpoint leaves out, because building the policy from
    its config reloads them unchanged: frozen parameters and buffers of the peft-wrapped base model (from
    `hf_path`), and frozen pretrained vision encoders (`HFVisionEncoder.encoders`, from `vision.paths`: fp32
    DINOv2-L + SigLIP-so400m are ~3.3 GB of a MiniVLA adapter checkpoint otherwise). Encoders that train, and the
    EMA target copy (it moves), are kept."""
    names = set()
    for mod_name, mod in module.named_modules():
        encoders = getattr(mod, "encoders", None)
        if (
            type(mod).__name__ == "HFVisionEncoder"
            and not mod_name.split(".")[0].startswith("ema")
            and not any(p.requires_grad for p in encoders.parameters())
        ):
            prefix = f"{mod_name}.encoders." if mod_name else "encoders."
            names.update(prefix + n for n, _ in encoders.named_parameters())
            names.update(prefix + n for n, _ in encoders.named_buffers())
        if type(mod).__name__ != "PeftModel" and not hasattr(mod, "peft_config"):
            continue
        for n, p in mod.named_parameters():
            if not p.requires_grad:
                names.add(f"{mod_name}.{n}" if mod_name else n)
        for n, _ in mod.named_buffers():
            names.add(f"{mod_name}.{n}" if mod_name else n)
    return names


def adapter_state_dict(module: nn.Module, state: dict | None = None) -> dict:
    """`module.state_dict()` (or `state`, the same names, e.g. gathered from FSDP2) without the frozen base
    weights (`base_weight_names`); tensors that share storage are kept once (safetensors refuses them)."""
    skip = base_weight_names(module)
    out, seen = {}, set()
    for name, t in (module.state_dict() if state is None else state).items():
        if name in skip or t.data_ptr() in seen and t.numel():
            continue
        seen.add(t.data_ptr())
        out[name] = t.detach().contiguous()
    return out


def load_adapter_state_dict(module: nn.Module, state: dict) -> None:
    """Load an `adapter_state_dict` on a freshly built module (base weights already loaded from `hf_path`)."""
    missing, unexpected = module.load_state_dict(state, strict=False)
    skip = base_weight_names(module)
    shared = {n for n in missing if n not in skip and _shares_storage(module, n, state)}
    bad = [n for n in missing if n not in skip and n not in shared]
    if bad or unexpected:
        raise RuntimeError(
            f"adapter checkpoint does not match the model: missing {bad[:5]}, unexpected {unexpected[:5]}"
        )


def _shares_storage(module: nn.Module, name: str, state: dict) -> bool:
    sd = module.state_dict()
    ptr = sd[name].data_ptr()
    return any(sd[k].data_ptr() == ptr for k in state if k in sd)


def merge_backbone(backbone: Any) -> None:
    """Fold the LoRA adapters (and trainable token rows) into the backbone's transformers model, in place."""
    backbone.merge_adapters()
