"""The action-head interface: each head owns what it reads from the backbone, its loss and its sampling.

`LatentVLA` runs the backbone once over the sequence and hands the result to its head through three methods:

    head.n_query                                   tokens the head needs appended to the backbone sequence
    head.compute_loss(out, seq, batch, generator, step=None)  -> (per-sample loss (B,), metrics)
    head.sample_actions(out, seq, batch, options)  -> SampleOutput (normalized chunk + head diagnostics)

The heads' networks live in `action_expert.py` and `recurrent_head.py`; the classes here add only the wiring
(which backbone states, which batch keys), so parameter names and checkpoints are those of the networks.
"""

from __future__ import annotations

from dataclasses import replace

import torch
from torch import Tensor

from latentvla.constants import ACTION, ACTION_IS_PAD, OBS_STATE
from latentvla.models.action_expert import FlowMatchingExpert
from latentvla.models.backbone import BackboneOutput
from latentvla.models.recurrence import sample_depth, step_depth
from latentvla.models.recurrent_head import RecurrentDepthHead
from latentvla.models.sampling import SampleOptions, SampleOutput
from latentvla.models.sequence import SequenceBatch


def _state(batch: dict, state_dim: int) -> Tensor | None:
    """The proprio input, or None for a head built without state (LaRA's released LIBERO model, use_state=false)."""
    return batch[OBS_STATE] if state_dim > 0 else None


class FlowHead(FlowMatchingExpert):
    """LaRA §3.2: the DiT expert cross-attends the final hidden states of the whole sequence (pads masked)."""

    n_query = 0

    def compute_loss(self, out: BackboneOutput, seq: SequenceBatch, batch: dict, generator=None, step=None):
        # `expert.repeats` (t, noise) draws per example share this one backbone forward and one K/V projection.
        state = _state(batch, self.state_dim)
        loss = self.loss(batch[ACTION], out.hidden, seq.valid, state, batch[ACTION_IS_PAD], generator=generator)
        return loss, {"loss_flow": loss.detach().mean()}  # a tensor: read on the host only at log steps

    @torch.no_grad()
    def sample_actions(
        self, out: BackboneOutput, seq: SequenceBatch, batch: dict, options: SampleOptions
    ) -> SampleOutput:
        acts = self.sample(
            out.hidden,
            seq.valid,
            _state(batch, self.state_dim),
            num_steps=options.num_steps or self.cfg.num_steps,
            noise=options.noise,
            generator=options.generator,
        )
        return SampleOutput(acts)


class RecurrentHead(RecurrentDepthHead):
    """RD-VLA §III-B: the prelude reads the query and image tokens at a middle layer (h^(12) of 24), the core and
    coda read them at the last layer (h^(24))."""

    def __init__(self, cfg, context_dim: int, action_dim: int, state_dim: int, *, n_query: int, num_layers: int):
        super().__init__(cfg, context_dim, action_dim, state_dim)
        self.n_query = n_query
        self.prelude_layer = cfg.prelude_layer or num_layers // 2  # RD-VLA taps h^(12) of 24 for the prelude ...
        self.core_layer = cfg.core_layer or num_layers  # ... and the last layer for core and coda
        if not (1 <= self.prelude_layer <= num_layers and 1 <= self.core_layer <= num_layers):
            raise ValueError(
                f"recurrent.prelude_layer / core_layer must be in [1, {num_layers}] (the backbone's layers), got "
                f"{self.prelude_layer}, {self.core_layer}."
            )

    def read(self, out: BackboneOutput, seq: SequenceBatch) -> dict[str, Tensor]:
        """The backbone taps: query (latent) and image tokens at the prelude's and at the core's layer. The prelude
        reads its image tokens through the gated vision path, like the core (RD-VLA Eq. 1: h^(12)_{vis+lat})."""
        mid, last = out.layers[self.prelude_layer], out.layers[self.core_layer]
        q, im = seq.query_index, seq.image_index
        return {
            "prelude_context": gather(mid, q),
            "prelude_vision_context": gather(mid, im),
            "core_latent_context": gather(last, q),
            "core_vision_context": gather(last, im),
        }

    def compute_loss(self, out: BackboneOutput, seq: SequenceBatch, batch: dict, generator=None, step=None):
        c = self.cfg
        # One depth per optimizer step for the whole batch, all micro-batches and all DDP ranks (Huginn: all
        # workers draw the same r; step-seeded, recurrence.step_depth), TBPTT through the last d. Without a step
        # (direct calls, tests) the depth comes from `generator`.
        draw = dict(mean=c.mean_recurrence, sigma=c.depth_sigma, max_depth=c.max_depth)
        depth = sample_depth(generator, **draw) if step is None else step_depth(step, **draw)
        loss, _ = self.loss(
            batch[ACTION],
            state=_state(batch, self.state_dim),
            action_is_pad=batch[ACTION_IS_PAD],
            **self.read(out, seq),
            num_iterations=depth,
            backprop_depth=c.backprop_depth,
            generator=generator,
        )
        return loss, {"loss_l1": loss.detach().mean(), "iterations": float(depth)}  # depth: a host int

    @torch.no_grad()
    def sample_actions(
        self, out: BackboneOutput, seq: SequenceBatch, batch: dict, options: SampleOptions
    ) -> SampleOutput:
        if options.iterations is None:
            raise ValueError("the recurrent head needs options.iterations (LatentVLA fills in the config default)")
        res = self(
            **self.read(out, seq),
            state=_state(batch, self.state_dim),
            num_iterations=options.iterations,
            halting=options.halting,
            generator=options.generator,
        )
        return SampleOutput(res.actions, iterations=res.iterations, deltas=res.deltas)


def build_action_head(cfg, width: int, num_layers: int) -> FlowHead | RecurrentHead:
    """The continuous action head `cfg.head` names (cfg: PolicyConfig), reading a `width`-wide backbone."""
    state_dim = cfg.state_dim if cfg.use_state else 0
    if cfg.head == "flow":
        expert = cfg.expert if cfg.use_state else replace(cfg.expert, use_state_token=False)
        return FlowHead(expert, width, cfg.action_dim, cfg.horizon, state_dim)
    return RecurrentHead(
        replace(cfg.recurrent, chunk=cfg.horizon),
        width,
        cfg.action_dim,
        state_dim,
        n_query=cfg.n_query,
        num_layers=num_layers,
    )


def gather(x: Tensor, index: Tensor) -> Tensor:
    """x (B,T,D), index (B,n) -> (B,n,D)."""
    return x.gather(1, index[..., None].expand(-1, -1, x.shape[-1]))
