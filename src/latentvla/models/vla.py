"""LatentVLA: one backbone; LaRA-VLA's latent chain-of-thought and visual latents; either action head.

The model has two verbs:

    compute_loss(batch, stage) -> (per-sample loss (B,), metrics)
    sample_actions(batch, mode=..., iterations=..., halting=...) -> SampleOutput

    images ──vision──► [image tokens][instr " @"][<sot>][<thinking>×K][<eot>][explicit CoT][<img_next>×16][act | query]
                                                    │  Coconut multi-pass   │                 │ L1 vs EMA   │
                                                    ▼                       ▼                 ▼ next frame  ▼
                                         thinking latents            CE on text         visual latents  CE /
                                                                                                        head

What varies between LaRA-VLA, RD-VLA and their ablations is only (a) the `StageSpec` the curriculum hands to
`compute_loss` and (b) which head `PolicyConfig.head` builds (models/action_heads.py: each head owns what it reads
from the backbone, its loss and its sampling). As in openpi's pi0.py, `embed_prefix` builds what the backbone
reads (images, instruction, reasoning tokens, discrete action tokens, query tokens); the head's own input (state,
noisy actions, time — the "suffix") is embedded inside the head. Normalization, action queues and robot
conversions live in `policy.py`, never here.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from latentvla.constants import (
    ACTION,
    COT_BBOX,
    COT_BBOX_TEXT,
    COT_BBOX_VISIBLE,
    COT_REASONING,
    COT_SUBTASK,
    NEXT_IMAGE_IS_PAD,
    NEXT_IMAGE_SUFFIX,
    OBS_IMAGES,
    TASK,
)
from latentvla.data.cot import format_cot
from latentvla.models import sequence as seq_lib
from latentvla.models.action_heads import build_action_head, gather
from latentvla.models.action_tokenizer import BinningActionTokenizer
from latentvla.models.backbones import BackboneOutput, build_backbone, cache_length
from latentvla.models.curriculum import StageSpec, final_stage
from latentvla.models.ema import ema_update, horizon_decay, make_ema
from latentvla.models.sampling import SampleOptions, SampleOutput, stack_outputs
from latentvla.models.thinking import concat_outputs, generate, latent_forward

__all__ = ["LatentVLA", "Layout", "SampleOptions", "SampleOutput", "compose_cot"]


def compose_cot(batch: dict, components: tuple[str, ...], index: int) -> str:
    """The explicit CoT text of sample `index` for the given components (data/cot.py, LaRA Fig. 8).

    The box is read from the dataset's `COT_BBOX_TEXT` string when the batch has it (data/dataset.py formats it
    in the loader, where host work is free), so a training step never reads the box tensor back from the device;
    hand-built batches without it fall back to formatting `COT_BBOX` / `COT_BBOX_VISIBLE` (the same string)."""
    if COT_BBOX_TEXT in batch:
        return format_cot(
            batch[COT_SUBTASK][index],
            (),
            False,
            batch[COT_REASONING][index],
            components,
            box_text=batch[COT_BBOX_TEXT][index],
        )
    return format_cot(
        batch[COT_SUBTASK][index],
        batch[COT_BBOX][index].tolist(),
        bool(batch[COT_BBOX_VISIBLE][index]),
        batch[COT_REASONING][index],
        components,
    )


@dataclass(frozen=True, eq=False)
class Layout:
    """What the backbone sequence holds besides image tokens and the instruction (models/sequence.py)."""

    explicit: list[str] | None = None  # per-sample CoT text after <end_of_thinking>
    n_latent: int = 0  # thinking tokens (Coconut multi-pass when > 0)
    visual: bool = False  # <img_next> x n_img_next
    action_ids: Tensor | None = None  # (B, L) discrete action-token ids (stages I/II, teacher forcing)
    n_query: int = 0  # the recurrent head's query tokens


@dataclass
class Prefix:
    """The embedded backbone input: layout, embeddings (image columns filled) and attention mask."""

    seq: seq_lib.SequenceBatch
    embeds: Tensor
    mask: Tensor


class LatentVLA(nn.Module):
    """Backbone + LaRA reasoning tokens + a flow-matching or recurrent-depth action head."""

    def __init__(self, cfg) -> None:  # cfg: latentvla.config.PolicyConfig (not imported: config imports models)
        super().__init__()
        self.cfg = cfg
        stages = cfg.curriculum.stages()
        self.final = final_stage(cfg.curriculum)
        self.stage = self.final  # the stage the model acts as at inference (`set_stage`; Policy reads checkpoints)
        self.backbone = build_backbone(
            cfg.backbone,
            image_size=cfg.image_size,
            num_cameras=len(cfg.cameras),
            num_action_bins=cfg.num_action_bins,
        )
        width = self.backbone.width
        self.uses_visual = any(s.visual_latents for s in stages)
        grid = int(round(cfg.n_img_next**0.5))
        if self.uses_visual and grid * grid != cfg.n_img_next:
            raise ValueError(f"n_img_next must be a square (it regresses a pooled grid), got {cfg.n_img_next}")
        self.target_grid = grid
        # LaRA §3.3 Eq. 3: the visual-latent targets come from an EMA copy of the image encoder (no gradient).
        self.ema_vision = make_ema(self.backbone.vision) if self.uses_visual else None
        self.action_tokenizer = BinningActionTokenizer(cfg.num_action_bins, cfg.action_dim, cfg.horizon)
        self.head = build_action_head(cfg, width, self.backbone.num_layers)

    # ------------------------------------------------------------------------------------------ helpers

    @property
    def tokenizer(self):
        return self.backbone.tokenizer

    @property
    def _action_offset(self) -> int:
        return self.tokenizer.action_token_ids[0]  # bins 0..n-1 map to <act_0>..<act_n-1>

    def param_groups(self) -> dict[str, list[nn.Parameter]]:
        """Trainable parameters split into the LR groups (LaRA Table 5: VLM 1e-5, vision 1e-5, expert 1e-4)."""
        vision_ids = {id(p) for p in self.backbone.vision.parameters()}
        trainable = [p for p in self.backbone.parameters() if p.requires_grad]
        head = [p for p in self.head.parameters() if p.requires_grad]
        return {
            "backbone": [p for p in trainable if id(p) not in vision_ids],
            "vision": [p for p in trainable if id(p) in vision_ids],
            "head": head,
        }

    def ema_decay(self, total_steps: int | None) -> float:
        """The EMA target's per-update decay: a time constant of `ema_horizon` x the run (PolicyConfig), or the
        fixed `ema_decay` (LaRA code: 0.999 every 2 steps) when ema_horizon is 0 or the run length is unknown."""
        c = self.cfg
        if c.ema_horizon > 0 and total_steps:
            return horizon_decay(c.ema_horizon * total_steps, c.ema_every)
        return c.ema_decay

    @torch.no_grad()
    def on_optimizer_step(self, step: int, total_steps: int | None = None) -> None:
        """EMA target update every `ema_every` optimizer steps of a `total_steps` run (see `ema_decay`)."""
        if self.ema_vision is not None and (step + 1) % self.cfg.ema_every == 0:
            ema_update(self.ema_vision, self.backbone.vision, self.ema_decay(total_steps))

    def _image_tokens(self, batch: dict) -> Tensor:
        feats = [
            self.backbone.encode_image(batch[f"{OBS_IMAGES}.{cam}"], camera=i)
            for i, cam in enumerate(self.cfg.cameras)
        ]
        return torch.cat(feats, dim=1)  # (B, Ncam*N, D)

    @torch.no_grad()
    def _visual_targets(self, next_images: Tensor) -> Tensor:
        """EMA-encoder features of frame t+1, adaptive-avg-pooled to a grid x grid map (LaRA: 4x4 = 16 tokens).
        The frame is first resized to `cfg.target_image_size` when set (LaRA-VLA's code: 112 px)."""
        size = self.cfg.target_image_size
        if size and size != next_images.shape[-1]:
            next_images = F.interpolate(next_images, size=(size, size), mode="bilinear", antialias=True)
        feats = self.ema_vision(next_images)  # (B, N, D) on a square grid
        b, n, d = feats.shape
        side = int(round(n**0.5))
        fmap = feats.transpose(1, 2).reshape(b, d, side, side)
        pooled = F.adaptive_avg_pool2d(fmap, self.target_grid)
        return pooled.flatten(2).transpose(1, 2)  # (B, grid*grid, D)

    def embed_prefix(self, batch: dict, layout: Layout, image_tokens: Tensor | None = None) -> Prefix:
        """Everything the backbone reads: sequence layout + input embeddings (image columns = image tokens) + mask."""
        img = self._image_tokens(batch) if image_tokens is None else image_tokens
        seq = seq_lib.build_sequence(
            self.tokenizer,
            list(batch[TASK]),
            layout.explicit,
            n_latent=layout.n_latent,
            n_img_next=self.cfg.n_img_next if layout.visual else 0,
            action_token_ids=layout.action_ids,
            n_query=layout.n_query,
            n_image=img.shape[1],
        ).to(img.device)
        embeds = self.backbone.embed(seq.input_ids)
        embeds = torch.cat([img.to(embeds.dtype), embeds[:, img.shape[1] :]], dim=1)  # image block = cols [0, N)
        return Prefix(seq, embeds, seq.attention_mask())

    def _forward(self, prefix: Prefix) -> tuple[BackboneOutput, Tensor | None]:
        """One backbone pass (Coconut multi-pass when the prefix has thinking tokens) -> (output, thinking latents)."""
        seq = prefix.seq
        if seq.thinking_index.shape[1] > 0:
            return latent_forward(self.backbone, prefix.embeds, prefix.mask, seq.position_ids, seq.thinking_cols)
        return self.backbone(prefix.embeds, attention_mask=prefix.mask, position_ids=seq.position_ids), None

    def _train_layout(self, batch: dict, stage: StageSpec) -> Layout:
        bsz = batch[ACTION].shape[0]
        explicit = stage.explicit_components
        return Layout(
            explicit=[compose_cot(batch, explicit, i) for i in range(bsz)] if explicit else None,
            n_latent=stage.num_thinking,
            visual=stage.visual_latents,
            action_ids=(
                self._action_offset + self.action_tokenizer.encode(batch[ACTION])
                if stage.discrete_actions
                else None
            ),
            n_query=self.head.n_query if stage.train_head else 0,
        )

    # ------------------------------------------------------------------------------------- verb 1: loss

    def compute_loss(
        self, batch: dict, stage: StageSpec, generator: torch.Generator | None = None, *, step: int | None = None
    ):
        """Per-sample loss (B,) and scalar metrics for one curriculum stage; `step` (the optimizer step) seeds
        what must agree across micro-batches and DDP ranks (the recurrent head's depth)."""
        prefix = self.embed_prefix(batch, self._train_layout(batch, stage))
        out, _ = self._forward(prefix)
        terms: list[tuple[str, float, Tensor]] = []  # (metric name, weight, per-sample loss)
        if stage.explicit_components or stage.discrete_actions:
            ce_text, ce_act = self._token_losses(out.hidden, prefix.seq)
            if stage.explicit_components:
                terms.append(("loss_cot", stage.w_cot, ce_text))
            if stage.discrete_actions:
                terms.append(("loss_act_tokens", stage.w_act, ce_act))
        if stage.visual_latents and stage.w_vis > 0:
            terms.append(("loss_vis", stage.w_vis, self._visual_loss(out.hidden, prefix.seq, batch)))
        # metrics are detached device tensors: the loop reads them on the host once per log row (a `.item()`
        # here would stall every micro-batch until the device caught up)
        metrics: dict[str, Tensor | float] = {}
        if stage.train_head:
            head_loss, metrics = self.head.compute_loss(out, prefix.seq, batch, generator, step=step)
            terms.append(("", stage.w_head, head_loss))
        loss = torch.zeros(batch[ACTION].shape[0], device=batch[ACTION].device)
        for name, weight, term in terms:
            loss = loss + weight * term
            if name:
                metrics[name] = term.detach().mean()
        metrics["loss"] = loss.detach().mean()
        return loss, metrics

    def _token_losses(self, hidden: Tensor, seq) -> tuple[Tensor, Tensor]:
        """Next-token CE per sample, split into CoT text targets and discrete action-token targets."""
        off = self._action_offset
        return seq_lib.token_losses(self.backbone.logits, hidden, seq, range(off, off + self.cfg.num_action_bins))

    def _visual_loss(self, hidden: Tensor, seq, batch: dict) -> Tensor:
        """L1 between <img_next> last hidden states and EMA next-frame features; masked at episode end (Eq. 2)."""
        primary = self.cfg.cameras[0]
        target = self._visual_targets(batch[f"{OBS_IMAGES}.{primary}{NEXT_IMAGE_SUFFIX}"])
        pred = gather(hidden, seq.img_next_index)
        keep = (~batch[NEXT_IMAGE_IS_PAD].bool()).to(hidden.dtype)
        return (pred - target).abs().mean(dim=(1, 2)) * keep

    # ---------------------------------------------------------------------------------- verb 2: sample

    def set_stage(self, name: str) -> None:
        """Act as the curriculum stage `name` (recorded in every checkpoint): a stage-I/II checkpoint acts through
        its discrete action tokens with that stage's layout, not with an untrained head."""
        stages = {s.name: s for s in self.cfg.curriculum.stages()}
        if name not in stages:
            raise ValueError(
                f"stage {name!r} is not in schedule {self.cfg.curriculum.schedule!r}: {sorted(stages)}"
            )
        self.stage = stages[name]

    @property
    def modes(self) -> tuple[str, ...]:
        """The reasoning modes this model can run, the default first."""
        writes_text = any(s.explicit_components for s in self.cfg.curriculum.stages())
        if self.stage.explicit_components:
            return ("explicit", "none")
        return ("latent", "none", "explicit") if writes_text else ("latent", "none")

    @torch.inference_mode()
    def sample_actions(self, batch: dict, options: SampleOptions | None = None, **overrides) -> SampleOutput:
        """An action chunk (normalized) for each observation in `batch`.

        `options` (models/sampling.py) carries every test-time choice; keyword `overrides` replace its fields
        (`sample_actions(batch, mode="explicit")`). See `SampleOptions` for the modes.
        """
        opts = replace(options or SampleOptions(), **overrides)
        mode = opts.mode or self.modes[0]
        if mode not in self.modes:
            raise ValueError(self._mode_error(mode))
        if opts.iterations is None:
            opts = replace(opts, iterations=self.cfg.iterations)
        if mode == "explicit":
            gens = opts.generator if isinstance(opts.generator, list | tuple) else None  # one per row (row_rng.py)
            rows = [replace(opts, generator=gens[i]) if gens else opts for i in range(len(batch[TASK]))]
            return stack_outputs([self._sample_explicit(_index(batch, i), o) for i, o in enumerate(rows)])
        latent = mode == "latent"
        layout = Layout(
            n_latent=self.stage.num_thinking if latent else 0, visual=self.stage.visual_latents and latent
        )
        return self._act(batch, layout, opts)

    def _mode_error(self, mode: str) -> str:
        if mode == "latent":
            return (
                f"mode 'latent' would feed this {self.cfg.preset!r} model (stage {self.stage.name}) an empty CoT: it "
                f"was trained to write {', '.join(self.stage.explicit_components)} as text; use mode 'explicit'"
            )
        return f"mode {mode!r}: this {self.cfg.preset!r} model never learned CoT text; use one of {self.modes}"

    def _act(self, batch: dict, layout: Layout, opts: SampleOptions) -> SampleOutput:
        """Run the reasoning prompt, then the trained action output (head, or discrete tokens before stage III)."""
        if not self.stage.train_head:
            return self._act_tokens(self.embed_prefix(batch, layout))
        prefix = self.embed_prefix(batch, replace(layout, n_query=self.head.n_query))
        out, latents = self._forward(prefix)
        res = self.head.sample_actions(out, prefix.seq, batch, opts)
        res.thinking_latents = latents
        return res

    def _act_tokens(self, prefix: Prefix, cache=None) -> SampleOutput:
        """Stages I/II: decode H*A action tokens greedily, restricted to the action vocabulary."""
        off, n_tok = self._action_offset, self.cfg.horizon * self.cfg.action_dim
        gen = generate(
            self.backbone,
            prefix.embeds,
            prefix.mask,
            prefix.seq.position_ids,
            max_new_tokens=n_tok,
            stop_ids=(),
            thinking_cols=prefix.seq.thinking_cols,
            cache=cache,
            allowed_ids=range(off, off + self.cfg.num_action_bins),
        )
        return SampleOutput(self.action_tokenizer.decode(gen.tokens - off))

    def _sample_explicit(self, batch: dict, opts: SampleOptions) -> SampleOutput:
        """ECoT-style (batch of 1): generate the CoT text token by token with the KV cache, then append <eos>,
        <img_next> x16 and the head's queries to the same cache and act. Images are encoded once and the prompt
        runs once. A stage-II-k model thinks its k latent components first and writes the rest."""
        tok, stage = self.tokenizer, self.stage
        n_latent = stage.num_thinking if stage.explicit_components else 0
        prefix = self.embed_prefix(batch, Layout(n_latent=n_latent))
        cache, prompt_len = self.backbone.new_cache(), prefix.embeds.shape[1]
        gen = generate(
            self.backbone,
            prefix.embeds,
            prefix.mask,
            prefix.seq.position_ids,
            max_new_tokens=opts.max_cot_tokens,
            stop_ids=(
                tok.eos_id,
                tok.img_next_id,
            ),  # <eos>: the trained end of CoT (<img_next>: older checkpoints)
            thinking_cols=prefix.seq.thinking_cols,
            cache=cache,
            keep_states=True,
        )
        n, fed = int(gen.lengths[0]), cache_length(cache) - prompt_len
        S = seq_lib.Segment
        n_img = self.cfg.n_img_next if stage.visual_latents else 0
        n_query = self.head.n_query if stage.train_head else 0
        ids = [*gen.tokens[0, :n].tolist(), tok.eos_id, *[tok.img_next_id] * n_img, *[tok.query_id] * n_query]
        segs = [S.TEXT] * (n + 1) + [S.IMG_NEXT] * n_img + [S.QUERY] * n_query
        dev = prefix.embeds.device
        seq = seq_lib.extend_sequence(prefix.seq, torch.tensor([ids], device=dev), segs)
        new = slice(prompt_len + fed, seq.input_ids.shape[1])  # columns not yet in the cache
        rest = Prefix(seq, self.backbone.embed(seq.input_ids[:, new]), seq.attention_mask()[:, new])
        rest.seq = _columns(seq, new)
        if not stage.train_head:
            res = self._act_tokens(rest, cache=cache)
        else:
            tail = self.backbone(
                rest.embeds, attention_mask=rest.mask, position_ids=rest.seq.position_ids, cache=cache
            )
            res = self.head.sample_actions(concat_outputs([gen.states, tail]), seq, batch, opts)
        res.cot_text, res.cot_tokens = [gen.text[0].strip()], gen.lengths
        return res


def _columns(seq: seq_lib.SequenceBatch, cols: slice) -> seq_lib.SequenceBatch:
    """The columns `cols` of a sequence, for running them against a cache that holds the earlier ones."""
    empty = seq.image_index[:, :0]
    return seq_lib.SequenceBatch(
        input_ids=seq.input_ids[:, cols],
        segments=seq.segments[:, cols],
        position_ids=seq.position_ids[:, cols],
        targets=seq.targets[:, cols],
        image_index=empty,
        thinking_index=empty,
        img_next_index=empty,
        action_index=empty,
        query_index=empty,
    )


def _index(batch: dict, i: int) -> dict:
    """Row i of a collated batch, keeping the batch dimension."""
    out = {}
    for k, v in batch.items():
        if isinstance(v, Tensor):
            out[k] = v[i : i + 1]
        elif isinstance(v, list | tuple):
            out[k] = [v[i]]
        else:
            out[k] = v
    return out
