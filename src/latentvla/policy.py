"""Policy: the model plus everything a robot loop needs around it (normalization, action queue, checkpoints).

`LatentVLA` (models/vla.py) only ever sees normalized tensors. `Policy` owns the dataset statistics (saved with
every checkpoint as `stats.json`, never baked into module buffers — the lerobot migration lesson), converts raw
observations (uint8 HWC/CHW or float [0, 1] images, unnormalized state, instruction string; validated by
`observation.py`, the server's checks) into a batch, unnormalizes and clips the
chunk, and runs the action queue whose execution horizon may adapt to the recurrent depth used (RD-VLA §III-D).

    Policy.from_pretrained(dir)       dir = a checkpoint dir, or a run dir (uses RUN/checkpoints/last)
    policy.infer(obs) -> {"actions": (H, A) float32, "iterations": int | None, "cot_text": str | None}
    policy.select_action(obs) -> (A,)  one action per control step from the queue
    policy.reset()                     clear the queue at episode start
"""

from __future__ import annotations

import contextlib
import json
from collections import deque
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors.torch import load_file, load_model, save_file, save_model
from torch import nn

from latentvla.checkpoint_check import (
    CONFIG,
    STATS,
    WEIGHTS,
    CorruptCheckpointError,
    newest_intact,
    require_intact,
    step_dirs,
)
from latentvla.checkpoint_shards import has_shards, load_sharded_weights
from latentvla.config import PolicyConfig, config_from_dict, config_to_dict
from latentvla.constants import ACTION, OBS_IMAGES, OBS_STATE, TASK
from latentvla.data.stats import Normalizer
from latentvla.models.bc import BCPolicyModel
from latentvla.models.curriculum import StageSpec, final_stage
from latentvla.models.execution import make_horizon
from latentvla.models.halting import parse_halting
from latentvla.models.vla import LatentVLA, SampleOutput
from latentvla.observation import (
    MAX_TASK_TOKENS,
    BadObservation,
    check_task_tokens,
    prepare_image,
    prepare_state,
    prepare_task,
)


def _dedup(model: nn.Module, state_dict: dict) -> dict:
    """`state_dict` without the extra names of parameters the model ties, keeping the alphabetically first one as
    `save_model` does (so `load_model` restores the others from the tie)."""
    groups: dict[int, list[str]] = {}
    for name, p in model.named_parameters(remove_duplicate=False):
        groups.setdefault(id(p), []).append(name)
    drop = {n for names in groups.values() for n in sorted(names)[1:]}
    return {k: v.contiguous() for k, v in state_dict.items() if k not in drop}


def _weights_mismatch(model: nn.Module, weights: Path, show: int = 3) -> str:
    """One phrase naming the tensors whose shapes differ between `model` and the safetensors file (and the
    names only one side has; tied parameters count as present when any of their names is in the file)."""
    from safetensors import safe_open

    with safe_open(str(weights), "pt") as f:
        stored = {k: tuple(f.get_slice(k).get_shape()) for k in f.keys()}  # noqa: SIM118 (safe_open is not iterable)
    aliases: dict[int, list[str]] = {}
    for name, p in model.named_parameters(remove_duplicate=False):
        aliases.setdefault(id(p), []).append(name)
    expected = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    tied = {n: names for names in aliases.values() for n in names}
    shapes = [
        f"{k} {stored[k]} in the file vs {v} from the config"
        for k, v in expected.items()
        if k in stored and stored[k] != v
    ]
    missing = [k for k in expected if k not in stored and not any(a in stored for a in tied.get(k, ()))]
    unexpected = [k for k in stored if k not in expected]
    parts = [f"{len(shapes)} shape(s) differ ({'; '.join(shapes[:show])})"] if shapes else []
    parts += [f"{len(missing)} missing ({', '.join(missing[:show])})"] if missing else []
    parts += [f"{len(unexpected)} unexpected ({', '.join(unexpected[:show])})"] if unexpected else []
    return ", ".join(parts) or "the tensors do not load"


def resolve_checkpoint(path: str | Path) -> Path:
    """A checkpoint directory from a checkpoint dir or a training run dir (its newest *intact* checkpoint).

    A damaged newest checkpoint of a run is skipped with a `CheckpointSkippedWarning` naming it; a damaged
    checkpoint named directly is one `CorruptCheckpointError` line (checkpoint_check.py).
    """
    from latentvla.hub import HubError, is_hub_id, resolve_model

    if is_hub_id(path):  # ORG/NAME[@REV] that is no local path: a checkpoint in the Hugging Face cache (hub.py)
        try:
            path = resolve_model(path, "hub id")
        except HubError as e:
            raise FileNotFoundError(
                f"No checkpoint at {path}: no such directory (train one with `latentvla train --preset ... --out "
                f"RUN`); as a {e}"
            ) from e
    path = Path(path)
    if (path / WEIGHTS).is_file() or (path / CONFIG).is_file():
        return require_intact(path)
    found = newest_intact(path)
    if found is not None:
        return found
    if step_dirs(path):
        raise CorruptCheckpointError(f"no intact checkpoint under {path / 'checkpoints'}: every one is damaged")
    raise FileNotFoundError(
        f"No checkpoint at {path}: expected {WEIGHTS} there or a training run with checkpoints/ "
        "(train one with `latentvla train --preset ... --out RUN`)."
    )


class Policy(nn.Module):
    """A trained (or freshly initialised) LatentVLA with its normalization stats and action queue."""

    def __init__(self, config: PolicyConfig, normalizer: Normalizer) -> None:
        super().__init__()
        for key in (OBS_STATE, ACTION):
            if key not in normalizer.keys:
                raise ValueError(f"the normalizer has no stats for {key!r}; it knows {normalizer.keys}")
        if normalizer.shape(ACTION) != (config.action_dim,) or normalizer.shape(OBS_STATE) != (config.state_dim,):
            raise ValueError(
                f"stats shapes (state {normalizer.shape(OBS_STATE)}, action {normalizer.shape(ACTION)}) do not match "
                f"the policy config (state {config.state_dim}, action {config.action_dim})"
            )
        self.config = config
        self.model = BCPolicyModel(config) if config.model == "bc" else LatentVLA(config)
        self.normalizer = normalizer
        stats = normalizer.stats[ACTION]
        self.action_low = np.asarray(stats["min"], dtype=np.float32)
        self.action_high = np.asarray(stats["max"], dtype=np.float32)
        self._queue: deque[np.ndarray] = deque()
        self._horizon_rule = make_horizon(config.execution)
        self.last_info: dict[str, Any] = {}
        self.autocast_dtype: torch.dtype | None = None  # set_precision: bf16 autocast on a GPU (device.py)

    # ------------------------------------------------------------------------------------ construction

    def save_pretrained(
        self,
        directory: str | Path,
        extra_config: dict | None = None,
        state_dict: dict | None = None,
        write_weights: bool = True,
    ) -> None:
        """model.safetensors + config.json ({"policy": ..., **extra}) + stats.json. `write_weights=False`: the
        weights are already in `directory/shards/` (an FSDP2 checkpoint, checkpoint_shards.py)."""
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        extra = dict(extra_config or {})
        if not write_weights:
            extra["weights"] = "shards"
        elif self.is_lora:  # the adapter only: the frozen base weights are rebuilt from hf_path on load
            from latentvla.models.backbones.lora import adapter_state_dict

            save_file(adapter_state_dict(self.model, state_dict), str(directory / WEIGHTS))
            extra["weights"] = "adapter"
        elif state_dict is not None:  # e.g. gathered from FSDP2 shards; tied tensors kept once
            save_file(_dedup(self.model, state_dict), str(directory / WEIGHTS))
        else:
            save_model(
                self.model, str(directory / WEIGHTS)
            )  # handles tied weights (HF LMs tie lm_head to embeddings)
        # The curriculum stage the weights are at: a periodic stage-I/II checkpoint acts as that stage.
        cfg = {"policy": config_to_dict(self.config), "stage": self.model.stage.name, **extra}
        (directory / CONFIG).write_text(json.dumps(cfg, indent=2))
        (directory / STATS).write_text(json.dumps(self.normalizer.to_dict()))

    @classmethod
    def from_pretrained(cls, path: str | Path, device: str = "cpu") -> Policy:
        ckpt = resolve_checkpoint(path)
        for name in (CONFIG, STATS):
            if not (ckpt / name).is_file():
                raise FileNotFoundError(f"checkpoint {ckpt} is missing {name}")
        raw = json.loads((ckpt / CONFIG).read_text())
        config = config_from_dict(PolicyConfig, raw["policy"])
        normalizer = Normalizer.from_dict(json.loads((ckpt / STATS).read_text()))
        policy = cls(config, normalizer)
        if "stage" in raw:  # checkpoints from before stage recording act as the final stage
            policy.model.set_stage(raw["stage"])
        load_weights(policy.model, ckpt, raw)
        return policy.to(device).eval()

    @property
    def is_lora(self) -> bool:
        return self.config.backbone.kind != "scratch" and self.config.backbone.lora.rank > 0

    def save_merged(self, directory: str | Path, extra_config: dict | None = None) -> None:
        """A full checkpoint with the LoRA adapters folded into the base weights (loads without peft's wrapper:
        its config says lora.rank = 0). Merges a copy; this policy keeps its adapters."""
        import copy

        from latentvla.models.backbones.lora import merge_backbone

        if not self.is_lora:
            raise ValueError("save_merged: this policy has no LoRA adapters; save_pretrained writes it whole.")
        merged = copy.deepcopy(self)
        merge_backbone(merged.model.backbone)
        bb = replace(merged.config.backbone, lora=replace(merged.config.backbone.lora, rank=0))
        merged.config = replace(merged.config, backbone=bb)
        merged.save_pretrained(directory, extra_config)

    # ------------------------------------------------------------------------------------------ verbs

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    def compute_loss(self, batch: dict, stage: StageSpec | None = None):
        return self.model.compute_loss(batch, stage or final_stage(self.config.curriculum))

    @property
    def metadata(self) -> dict:
        """What a client needs to know (sent as the server's metadata frame)."""
        c = self.config
        return {
            "preset": c.preset,
            "action_dim": c.action_dim,
            "horizon": c.horizon,
            "state_dim": c.state_dim,
            "cameras": list(c.cameras),
            "image_size": c.image_size,
            "action_low": self.action_low.tolist(),
            "action_high": self.action_high.tolist(),
            "head": c.head,
            "modes": list(self.model.modes),  # the first is the default
        }

    def make_batch(self, observations: list[dict]) -> dict:
        """Raw observations -> a normalized model batch on the policy's device."""
        dev, size = self.device, self.config.image_size
        for o in observations:
            missing = [
                k for k in (TASK, OBS_STATE, *(f"{OBS_IMAGES}.{c}" for c in self.config.cameras)) if k not in o
            ]
            if missing:
                raise BadObservation(f"observation lacks {missing} (it has {sorted(o)})")
        # one validator with the server (observation.py): uint8 HWC/CHW or float in [0, 1], scaled by 255 once
        tasks = [prepare_task(TASK, o[TASK]) for o in observations]
        for task in tasks:  # the prompt's cost is its token count, not its characters
            # a tokenizer makes at most one token per UTF-8 byte (+ a few specials): short prompts are not
            # tokenized twice per call just to be counted
            if len(task.encode()) > MAX_TASK_TOKENS - 8:
                check_task_tokens(TASK, task, len(self.model.tokenizer.encode(task)))
        batch: dict[str, Any] = {TASK: tasks}
        for cam in self.config.cameras:
            key = f"{OBS_IMAGES}.{cam}"
            imgs = [prepare_image(key, o[key], size) for o in observations]
            batch[key] = torch.from_numpy(np.stack(imgs)).to(dev).permute(0, 3, 1, 2).float() / 255.0
        state = np.stack([prepare_state(OBS_STATE, o[OBS_STATE], self.config.state_dim) for o in observations])
        batch[OBS_STATE] = torch.from_numpy(self.normalizer.normalize(OBS_STATE, state)).to(dev)
        return batch

    # inference_mode, not no_grad: no view / version-counter bookkeeping per op, ~10 % off a batch-1 tiny call
    # (13.2 -> 11.7 ms no reasoning, 17.3 -> 15.7 ms latent; 1 thread, LOG.md 2026-12-02). Same outputs.
    def check_options(self, mode: str | None = None, iterations: int | None = None, halting: Any = None) -> None:
        """Refuse test-time options this policy cannot run or would silently ignore, in one line: a
        reasoning mode it never learned (`--mode explicit` on a bc run), or a recurrent depth / halting rule on a
        policy without the recurrent-depth head (its flow head or bc network never reads them)."""
        if mode is not None and mode not in self.model.modes:
            explain = getattr(self.model, "_mode_error", None)  # LatentVLA says why (no CoT text learned, ...)
            raise ValueError(
                explain(mode)
                if explain is not None
                else f"mode {mode!r}: this {self.config.preset!r} policy has no reasoning to write; use one of "
                f"{', '.join(self.model.modes)}"
            )
        recurrent = self.config.model == "vla" and self.config.head == "recurrent"
        for name, value in (("halting", halting), ("iterations", iterations)):
            if value is not None and not recurrent:
                head = "bc network" if self.config.model == "bc" else f"{self.config.head} head"
                raise ValueError(
                    f"{name} applies only to the recurrent-depth head (policy.head=recurrent: rdvla, lara-rd, "
                    f"rdvla-minivla); this {self.config.preset!r} policy has a {head}, which would ignore it: "
                    f"drop --{name}"
                )
        if iterations is not None and iterations < 1:
            raise ValueError(f"iterations must be >= 1, got {iterations}")

    @torch.inference_mode()
    def sample(
        self,
        observations: list[dict],
        *,
        mode: str | None = None,
        iterations: int | None = None,
        halting: Any = None,
        generator: torch.Generator | None = None,
    ) -> tuple[np.ndarray, SampleOutput]:
        """Unnormalized, clipped (B, H, A) chunks and the raw SampleOutput."""
        self.check_options(mode, iterations, halting)  # a few comparisons: cheaper than a silently ignored flag
        if isinstance(halting, str):
            halting = parse_halting(halting)
        batch = self.make_batch(observations)
        dt = self.autocast_dtype
        with torch.autocast(self.device.type, dtype=dt) if dt is not None else contextlib.nullcontext():
            out = self.model.sample_actions(
                batch, mode=mode, iterations=iterations, halting=halting, generator=generator
            )
        acts = self.normalizer.unnormalize(ACTION, out.actions.float().cpu().numpy())
        if not np.isfinite(acts).all():
            raise FloatingPointError("the model produced non-finite actions")
        return np.clip(acts, self.action_low, self.action_high).astype(np.float32), out

    def infer_batch(self, observations: list[dict], **kwargs: Any) -> list[dict]:
        if not observations:  # nothing to act on: an empty list back, as map() would
            self.check_options(**{k: v for k, v in kwargs.items() if k in ("mode", "iterations", "halting")})
            return []
        acts, out = self.sample(observations, **kwargs)
        res = []
        for i in range(len(observations)):
            res.append(
                {
                    "actions": acts[i],
                    "iterations": None if out.iterations is None else int(out.iterations[i]),
                    "cot_text": None if out.cot_text is None else out.cot_text[i],
                }
            )
        return res

    def infer(self, obs: dict, **kwargs: Any) -> dict:
        return self.infer_batch([obs], **kwargs)[0]

    def set_precision(self, precision: str = "auto") -> torch.dtype | None:
        """Inference precision (device.py): "auto" = bf16 autocast + TF32 on a CUDA device that supports them, fp32
        on CPU (results unchanged); "fp32"; "bf16" (any device). Returns the autocast dtype (None: fp32)."""
        from latentvla.device import autocast_dtype, enable_tf32

        self.autocast_dtype = autocast_dtype(self.device, precision)
        enable_tf32(self.device, precision)
        return self.autocast_dtype

    def execution_length(self, iterations: int | None) -> int:
        """How many actions of a chunk run before the next inference (the execution-horizon rule, RD-VLA §III-D),
        given the recurrent depth the chunk used (None: the config's)."""
        iters = iterations if iterations is not None else self.config.iterations
        return self._horizon_rule.horizon(int(iters), self.config.horizon)

    def set_execution(self, spec: str) -> None:
        """Replace the execution-horizon rule (models/execution.py spec, e.g. "fixed:8" = the whole chunk)."""
        self._horizon_rule = make_horizon(spec)
        self._queue.clear()

    def reset(self) -> None:
        self._queue.clear()
        self.last_info = {}

    def select_action(self, obs: dict, **kwargs: Any) -> np.ndarray:
        """One action per call; a new chunk is sampled when the queue runs dry. The number of actions queued from
        each chunk follows the execution-horizon rule (fixed, or adaptive to the recurrent depth used)."""
        if not self._queue:
            res = self.infer(obs, **kwargs)
            n = self.execution_length(res["iterations"])
            self._queue.extend(res["actions"][:n])
            self.last_info = {"iterations": res["iterations"], "executed": n, "cot_text": res["cot_text"]}
        return self._queue.popleft()


def load_weights(model: torch.nn.Module, ckpt: Path, raw: dict | None = None) -> None:
    """A checkpoint's weights into an already built model of its config: the single file, an adapter-only file
    (LoRA: the base is the model's own), or FSDP2 shards. `--resume` loads into the model it trains, so the
    weights are never held twice (a second policy peaked at +1.7 GB on the full-size MiniVLA)."""
    raw = raw if raw is not None else json.loads((ckpt / CONFIG).read_text())
    if not (ckpt / WEIGHTS).is_file() and has_shards(ckpt):  # a periodic FSDP2 checkpoint
        load_sharded_weights(model, ckpt)
        return
    if raw.get("weights") == "adapter":
        from latentvla.models.backbones.lora import load_adapter_state_dict

        load_adapter_state_dict(model, load_file(str(ckpt / WEIGHTS)))
        return
    try:
        missing, unexpected = load_model(model, str(ckpt / WEIGHTS), strict=True)
    except RuntimeError:  # torch's multi-line "Error(s) in loading state_dict": say it in one line, with files
        missing, unexpected = None, None
    if missing is None or missing or unexpected:  # strict=True raises already; kept for older safetensors
        raise CorruptCheckpointError(
            f"{ckpt / WEIGHTS} does not match {ckpt / CONFIG}: {_weights_mismatch(model, ckpt / WEIGHTS)}; "
            "was config.json edited? restore the one training wrote, or retrain"
        )
