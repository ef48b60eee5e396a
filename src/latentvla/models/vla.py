"""LatentVLA: one backbone; LaRA-VLA's latent chain-of-thought and visual latents; either action head.

The model has two verbs (house style §4.4):

    compute_loss(batch, stage) -> (per-sample loss (B,), metrics)
    sample_actions(batch, mode=..., iterations=..., halting=...) -> SampleOutput

    images ──vision──► [image tokens][instr " @"][<sot>][<thinking>×K][<eot>][explicit CoT][<img_next>×16][act | query]
                                                    │  Coconut multi-pass   │                 │ L1 vs EMA   │
                                                    ▼                       ▼                 ▼ next frame  ▼
                                         thinking latents (C18)      CE on text (C2)    visual latents  CE (C5) /
                                                                                            (C4)        head (C6/C7)

What varies between LaRA-VLA, RD-VLA and their ablations is only (a) the `StageSpec` the curriculum hands to
`compute_loss` and (b) which head `PolicyConfig.head` builds: the flow-matching DiT expert reads the final hidden
states of the whole sequence (LaRA §3.2); the recurrent-depth head reads the query tokens and image tokens at a
middle layer (prelude) and at the last layer (core/coda), as RD-VLA §III-B does with h^(12) and h^(24).
Normalization, action queues and robot conversions live in `policy.py`, never here.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from latentvla.constants import (
    ACTION,
    ACTION_IS_PAD,
    COT_BBOX,
    COT_BBOX_VISIBLE,
    COT_REASONING,
    COT_SUBTASK,
    NEXT_IMAGE_IS_PAD,
    NEXT_IMAGE_SUFFIX,
    OBS_IMAGES,
    OBS_STATE,
    TASK,
)
from latentvla.models import sequence as seq_lib
from latentvla.models.action_expert import FlowMatchingExpert
from latentvla.models.action_tokenizer import BinningActionTokenizer
from latentvla.models.backbone import BackboneOutput, build_backbone
from latentvla.models.ema import ema_update, make_ema
from latentvla.models.recurrence import sample_depth
from latentvla.models.recurrent_head import RecurrentDepthHead
from latentvla.models.thinking import generate, latent_forward
from latentvla.train.curriculum import StageSpec, final_stage


@dataclass
class SampleOutput:
    """What `sample_actions` returns; eval, bench and the server read only this."""

    actions: Tensor  # (B,H,A) normalized
    cot_text: list[str] | None = None  # explicit mode only
    iterations: Tensor | None = None  # (B,) recurrent head only
    deltas: Tensor | None = None  # (B,R) per-iteration mean squared change of the decoded chunk
    thinking_latents: Tensor | None = None  # (B,K,D) one per latent CoT component (C18)
    cot_tokens: Tensor | None = None  # (B,) tokens decoded in explicit mode (stop token excluded)


def compose_cot(batch: dict, components: tuple[str, ...], index: int) -> str:
    """The explicit CoT text of sample `index` for the given components, in LaRA's Stage-I format (Fig. 8)."""
    parts = []
    for comp in components:
        if comp == "subtask":
            parts.append(f"Subtask: {batch[COT_SUBTASK][index]}.")
        elif comp == "bbox":
            if bool(batch[COT_BBOX_VISIBLE][index]):
                box = " ".join(f"{float(v):.4f}" for v in batch[COT_BBOX][index])
                parts.append(f"BBox: [{box}].")
            else:
                parts.append("BBox: none.")
        elif comp == "reasoning":
            parts.append(f"Reasoning: {batch[COT_REASONING][index]}")
    return " ".join(parts)


class LatentVLA(nn.Module):
    """Backbone + LaRA reasoning tokens + a flow-matching or recurrent-depth action head."""

    def __init__(self, cfg) -> None:  # cfg: latentvla.config.PolicyConfig (not imported: config imports models)
        super().__init__()
        self.cfg = cfg
        stages = cfg.curriculum.stages()
        self.final = final_stage(cfg.curriculum)
        self.backbone = build_backbone(
            replace(
                cfg.backbone,
                image_size=cfg.image_size,
                num_cameras=len(cfg.cameras),
                num_action_bins=cfg.num_action_bins,
            )
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
        state_dim = cfg.state_dim if cfg.use_state else None
        if cfg.head == "flow":
            self.head = FlowMatchingExpert(cfg.expert, width, cfg.action_dim, cfg.horizon, state_dim)
        else:
            self.head = RecurrentDepthHead(
                replace(cfg.recurrent, chunk=cfg.horizon), width, cfg.action_dim, state_dim
            )
        n = self.backbone.num_layers
        self.prelude_layer = n // 2  # RD-VLA taps h^(12) of 24 for the prelude ...
        self.core_layer = n  # ... and the last layer for core and coda

    # ------------------------------------------------------------------------------------------ helpers

    @property
    def tokenizer(self):
        return self.backbone.tokenizer

    @property
    def _action_offset(self) -> int:
        return self.tokenizer.action_token_ids[0]  # bins 0..n-1 map to <act_0>..<act_n-1>

    def param_groups(self) -> dict[str, list[nn.Parameter]]:
        """Trainable parameters split into the two LR groups (LaRA Table 5: VLM 1e-5, expert 1e-4)."""
        backbone = [p for p in self.backbone.parameters() if p.requires_grad]
        head = [p for p in self.head.parameters() if p.requires_grad]
        return {"backbone": backbone, "head": head}

    @torch.no_grad()
    def on_optimizer_step(self, step: int) -> None:
        """EMA target update every `ema_every` optimizer steps (LaRA code: momentum 0.999 every 2 steps)."""
        if self.ema_vision is not None and (step + 1) % self.cfg.ema_every == 0:
            ema_update(self.ema_vision, self.backbone.vision, self.cfg.ema_decay)

    def _image_tokens(self, batch: dict) -> Tensor:
        feats = [
            self.backbone.encode_image(batch[f"{OBS_IMAGES}.{cam}"], camera=i)
            for i, cam in enumerate(self.cfg.cameras)
        ]
        return torch.cat(feats, dim=1)  # (B, Ncam*N, D)

    @torch.no_grad()
    def _visual_targets(self, next_images: Tensor) -> Tensor:
        """EMA-encoder features of frame t+1, adaptive-avg-pooled to a grid x grid map (LaRA: 4x4 = 16 tokens)."""
        feats = self.ema_vision(next_images)  # (B, N, D) on a square grid
        b, n, d = feats.shape
        side = int(round(n**0.5))
        fmap = feats.transpose(1, 2).reshape(b, d, side, side)
        pooled = F.adaptive_avg_pool2d(fmap, self.target_grid)
        return pooled.flatten(2).transpose(1, 2)  # (B, grid*grid, D)

    def _build(
        self,
        batch: dict,
        *,
        explicit: list[str] | None,
        n_latent: int,
        visual: bool,
        action_ids: Tensor | None,
        n_query: int,
    ):
        """Sequence layout + input embeddings (image columns filled with image tokens) + attention mask."""
        img = self._image_tokens(batch)
        seq = seq_lib.build_sequence(
            self.tokenizer,
            list(batch[TASK]),
            explicit,
            n_latent=n_latent,
            n_img_next=self.cfg.n_img_next if visual else 0,
            action_token_ids=action_ids,
            n_query=n_query,
            n_image=img.shape[1],
        ).to(img.device)
        embeds = self.backbone.embed(seq.input_ids)
        embeds = torch.cat([img.to(embeds.dtype), embeds[:, img.shape[1] :]], dim=1)  # image block = cols [0, N)
        return seq, embeds, seq.attention_mask()

    def _run(self, seq, embeds, mask, n_latent: int) -> tuple[BackboneOutput, Tensor | None]:
        if n_latent > 0:
            return latent_forward(self.backbone, embeds, mask, seq.position_ids, seq.thinking_cols)
        return self.backbone(embeds, attention_mask=mask, position_ids=seq.position_ids), None

    def _head_contexts(self, out: BackboneOutput, seq) -> dict:
        """What the action head reads. Flow: the whole final sequence (pads masked); recurrent: taps."""
        if self.cfg.head == "flow":
            return {"context": out.hidden, "context_mask": seq.valid}
        mid, last = out.layers[self.prelude_layer], out.layers[self.core_layer]
        q, im = seq.query_index, seq.image_index
        gather = _gather
        return {
            "prelude_context": torch.cat([gather(mid, q), gather(mid, im)], dim=1),
            "core_latent_context": gather(last, q),
            "core_vision_context": gather(last, im),
        }

    # ------------------------------------------------------------------------------------- verb 1: loss

    def compute_loss(self, batch: dict, stage: StageSpec, generator: torch.Generator | None = None):
        """Per-sample loss (B,) and scalar metrics for one curriculum stage."""
        actions, bsz = batch[ACTION], batch[ACTION].shape[0]
        explicit = (
            [compose_cot(batch, stage.explicit_components, i) for i in range(bsz)]
            if stage.explicit_components
            else None
        )
        action_ids = (
            self._action_offset + self.action_tokenizer.encode(actions) if stage.discrete_actions else None
        )
        n_query = self.cfg.n_query if (stage.train_head and self.cfg.head == "recurrent") else 0
        seq, embeds, mask = self._build(
            batch,
            explicit=explicit,
            n_latent=stage.num_thinking,
            visual=stage.visual_latents,
            action_ids=action_ids,
            n_query=n_query,
        )
        out, _ = self._run(seq, embeds, mask, stage.num_thinking)
        loss = torch.zeros(bsz, device=actions.device)
        metrics: dict[str, float] = {}

        if stage.explicit_components or stage.discrete_actions:
            ce_text, ce_act = self._token_losses(out.hidden, seq)
            if stage.explicit_components:
                loss = loss + stage.w_cot * ce_text
                metrics["loss_cot"] = ce_text.mean().item()
            if stage.discrete_actions:
                loss = loss + stage.w_act * ce_act
                metrics["loss_act_tokens"] = ce_act.mean().item()
        if stage.visual_latents and stage.w_vis > 0:
            vis = self._visual_loss(out.hidden, seq, batch)
            loss = loss + stage.w_vis * vis
            metrics["loss_vis"] = vis.mean().item()
        if stage.train_head:
            head_loss, head_metrics = self._head_loss(out, seq, batch, generator)
            loss = loss + stage.w_head * head_loss
            metrics.update(head_metrics)
        metrics["loss"] = loss.mean().item()
        return loss, metrics

    def _token_losses(self, hidden: Tensor, seq) -> tuple[Tensor, Tensor]:
        """Next-token CE per sample, split into CoT text targets and discrete action-token targets."""
        targets = seq.targets  # already shifted: what position t must predict
        valid = targets != seq_lib.IGNORE
        ce = torch.zeros(targets.shape, dtype=torch.float32, device=hidden.device)
        logits = self.backbone.logits(hidden[valid])  # vocabulary projection only where supervised
        ce[valid] = F.cross_entropy(logits.float(), targets[valid], reduction="none")
        off = self._action_offset
        is_act = (targets >= off) & (targets < off + self.cfg.num_action_bins)
        text, act = valid & ~is_act, valid & is_act
        per = lambda m: (ce * m).sum(1) / m.sum(1).clamp(min=1)  # noqa: E731
        return per(text), per(act)

    def _visual_loss(self, hidden: Tensor, seq, batch: dict) -> Tensor:
        """L1 between <img_next> last hidden states and EMA next-frame features; masked at episode end (Eq. 2)."""
        primary = self.cfg.cameras[0]
        target = self._visual_targets(batch[f"{OBS_IMAGES}.{primary}{NEXT_IMAGE_SUFFIX}"])
        pred = _gather(hidden, seq.img_next_index)
        keep = (~batch[NEXT_IMAGE_IS_PAD].bool()).to(hidden.dtype)
        return (pred - target).abs().mean(dim=(1, 2)) * keep

    def _state(self, batch: dict) -> Tensor | None:
        return batch[OBS_STATE] if self.cfg.use_state else None

    def _head_loss(self, out, seq, batch, generator) -> tuple[Tensor, dict]:
        ctx = self._head_contexts(out, seq)
        actions, is_pad, state = batch[ACTION], batch[ACTION_IS_PAD], self._state(batch)
        if self.cfg.head == "flow":
            loss = self.head.loss(actions, ctx["context"], ctx["context_mask"], state, is_pad, generator=generator)
            return loss, {"loss_flow": loss.mean().item()}
        rc = self.cfg.recurrent
        # One depth per step for the whole batch (Huginn: all workers draw the same r), TBPTT through the last d.
        depth = sample_depth(generator, mean=rc.mean_recurrence, sigma=rc.depth_sigma, max_depth=rc.max_depth)
        loss, _ = self.head.loss(
            actions,
            ctx["prelude_context"],
            ctx["core_latent_context"],
            ctx["core_vision_context"],
            state,
            is_pad,
            num_iterations=depth,
            backprop_depth=rc.backprop_depth,
            generator=generator,
        )
        return loss, {"loss_l1": loss.mean().item(), "iterations": float(depth)}

    # ---------------------------------------------------------------------------------- verb 2: sample

    @torch.no_grad()
    def sample_actions(
        self,
        batch: dict,
        *,
        mode: str = "latent",
        iterations: int | None = None,
        halting=None,
        num_steps: int | None = None,
        noise: Tensor | None = None,
        generator: torch.Generator | None = None,
        max_cot_tokens: int = 96,
    ) -> SampleOutput:
        """An action chunk (normalized) for each observation in `batch`.

        mode "latent": the final stage's prompt — K thinking tokens (K+1 KV-cached passes), <img_next> x16, head.
        mode "explicit": greedy CoT text generation with the KV cache (ECoT-style), then act on the text.
        mode "none": no reasoning tokens at all (image + instruction -> head): the latency floor.
        """
        if mode not in ("latent", "explicit", "none"):
            raise ValueError(f"mode must be 'latent', 'explicit' or 'none', got {mode!r}")
        if mode == "explicit":
            outs = [
                self._sample_explicit(
                    _index(batch, i), iterations, halting, num_steps, noise, generator, max_cot_tokens
                )
                for i in range(len(batch[TASK]))
            ]
            return _stack_outputs(outs)
        n_latent = self.final.num_thinking if mode == "latent" else 0
        visual = self.final.visual_latents and mode == "latent"
        return self._act(batch, None, n_latent, visual, iterations, halting, num_steps, noise, generator)

    def _act(
        self, batch, explicit, n_latent, visual, iterations, halting, num_steps, noise, generator
    ) -> SampleOutput:
        """Run the reasoning prompt, then the trained action output (head, or discrete tokens before stage III)."""
        use_head = self.final.train_head
        n_query = self.cfg.n_query if (use_head and self.cfg.head == "recurrent") else 0
        seq, embeds, mask = self._build(
            batch, explicit=explicit, n_latent=n_latent, visual=visual, action_ids=None, n_query=n_query
        )
        if not use_head:  # stages I/II: decode H*A action tokens greedily, restricted to the action vocabulary
            off, n_tok = self._action_offset, self.cfg.horizon * self.cfg.action_dim
            gen = generate(
                self.backbone,
                embeds,
                mask,
                seq.position_ids,
                max_new_tokens=n_tok,
                stop_ids=(),
                thinking_cols=seq.thinking_cols,
                allowed_ids=range(off, off + self.cfg.num_action_bins),
            )
            return SampleOutput(self.action_tokenizer.decode(gen.tokens - off))
        out, latents = self._run(seq, embeds, mask, n_latent)
        ctx, state = self._head_contexts(out, seq), self._state(batch)
        if self.cfg.head == "flow":
            acts = self.head.sample(
                ctx["context"],
                ctx["context_mask"],
                state,
                num_steps=num_steps or self.cfg.expert.num_steps,
                noise=noise,
                generator=generator,
            )
            return SampleOutput(acts, thinking_latents=latents)
        res = self.head(
            ctx["prelude_context"],
            ctx["core_latent_context"],
            ctx["core_vision_context"],
            state,
            num_iterations=iterations or self.cfg.iterations,
            halting=halting,
            generator=generator,
        )
        return SampleOutput(res.actions, iterations=res.iterations, deltas=res.deltas, thinking_latents=latents)

    def _sample_explicit(
        self, batch, iterations, halting, num_steps, noise, generator, max_cot_tokens
    ) -> SampleOutput:
        """ECoT-style: generate the CoT text token by token (KV cache), then act conditioned on it (batch of 1)."""
        seq, embeds, mask = self._build(batch, explicit=None, n_latent=0, visual=False, action_ids=None, n_query=0)
        # The first <img_next> is the trained end-of-CoT signal (sequence.py targets).
        gen = generate(
            self.backbone,
            embeds,
            mask,
            seq.position_ids,
            max_new_tokens=max_cot_tokens,
            stop_ids=(self.tokenizer.img_next_id,),
        )
        text = gen.text[0].strip()
        # Re-encode the prompt with the generated CoT once and act: the stage-I layout with the text explicit.
        res = self._act(
            batch, [text], 0, self.final.visual_latents, iterations, halting, num_steps, noise, generator
        )
        res.cot_text, res.cot_tokens = [text], gen.lengths
        return res


def _gather(x: Tensor, index: Tensor) -> Tensor:
    """x (B,T,D), index (B,n) -> (B,n,D)."""
    return x.gather(1, index[..., None].expand(-1, -1, x.shape[-1]))


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


def _stack_outputs(outs: list[SampleOutput]) -> SampleOutput:
    cat = lambda xs: None if xs[0] is None else torch.cat(xs, 0)  # noqa: E731
    return SampleOutput(
        actions=torch.cat([o.actions for o in outs], 0),
        cot_text=[t for o in outs for t in (o.cot_text or [""])],
        iterations=cat([o.iterations for o in outs]),
        deltas=cat([o.deltas for o in outs]),
        thinking_latents=cat([o.thinking_latents for o in outs]),
        cot_tokens=cat([o.cot_tokens for o in outs]),
    )
