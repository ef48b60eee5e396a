"""The stochastic policy RL trains, built around a trained checkpoint's model without changing it.

    actor = Actor(policy, cfg)              policy: a latentvla.policy.Policy (any head)
    step  = actor.sample(batch, generator)  -> Step: normalised chunk, what re-scoring needs (aux), log-prob, value
    dist  = actor.distribution(batch, aux)  -> Dist: per-element means / samples / log-std, value (with gradients)

Every head becomes a diagonal Gaussian over "elements" E of what was sampled:

    flow (lara, lara-no-cot, lara-rd with head=flow)   Flow-Noise (likelihood.py): E = K Euler steps x H x A, the
                                                       means are x_k + dt v_theta(x_k, t_k) along the stored chain
    recurrent (rdvla, lara-rd) and bc                  E = H x A, the mean is the head's chunk; for the recurrent
                                                       head the scratchpad S_0 drawn at rollout time is stored and
                                                       fed back, so the mean is the same function when re-scored

The backbone runs with gradients in `distribution`, Coconut's multi-pass included: the thinking tokens of `lara`
are continuous functions of the weights (each is the previous pass's last hidden state), so the RL loss reaches
the latent reasoning (LaST-R1, arXiv 2604.28192). Explicit CoT text is never sampled: RL acts in the model's
latent mode (or mode "none" for models without thinking tokens).

The learned log-std and the critic are RL-only parameters: they live here, not in the policy, so the output
checkpoint is the ordinary policy (eval / serve / Policy.from_pretrained load it with strict=True) and they travel
in training_state.pt. The critic reads pooled features (masked mean of the backbone's last hidden states; bc: the
input of its MLP) detached, so the value loss never moves the policy's features.
"""

from __future__ import annotations

import contextlib
import math
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from latentvla.constants import OBS_STATE
from latentvla.models.bc import BCPolicyModel
from latentvla.models.vla import LatentVLA, Layout
from latentvla.rl.config import RLConfig
from latentvla.rl.likelihood import flow_noise_sample, flow_step_means, gaussian_log_prob


@dataclass
class Dist:
    """A diagonal Gaussian over the E elements of a decision (flattened), and the critic's value."""

    mean: Tensor  # (B, E)
    sample: Tensor  # (B, E) what was sampled (the chain's x_1..x_K, or the chunk)
    log_std: Tensor  # (E,)
    value: Tensor | None  # (B,)

    def log_prob(self) -> Tensor:
        return gaussian_log_prob(self.sample, self.mean, self.log_std)


@dataclass
class Step:
    """One batched decision at rollout time (no gradients)."""

    actions: Tensor  # (B, H, A) normalised chunk sent to the simulator
    aux: dict[str, Tensor]  # per-row tensors `distribution` needs to re-score the decision
    logp: Tensor  # (B, E)
    value: Tensor | None  # (B,)


@contextlib.contextmanager
def _fixed_scratchpad(head: nn.Module, s0: Tensor):
    """Feed the recurrent head a given S_0 instead of drawing one (instance attribute shadows the method)."""
    head.init_state = lambda batch, generator, like: s0.to(like)
    try:
        yield
    finally:
        del head.init_state


class Actor(nn.Module):
    def __init__(
        self, policy: nn.Module, cfg: RLConfig, *, execute: int | None = None, critic: bool | None = None
    ) -> None:
        super().__init__()
        self.policy, self.cfg = policy, cfg
        model, pcfg = policy.model, policy.config
        self.H, self.A = pcfg.horizon, pcfg.action_dim
        # Gaussian heads score only the `execute` chunk steps the simulator runs (the others never act: their
        # noise would only add variance); the Flow-Noise chain is one joint sample of the whole chunk.
        self.n_exec = min(execute or self.H, self.H)
        if isinstance(model, BCPolicyModel):
            self.kind, feat_dim = "bc", model.mlp[0].in_features
        elif isinstance(model, LatentVLA):
            if not model.stage.train_head:
                raise ValueError(
                    f"this checkpoint acts at curriculum stage {model.stage.name!r}, before the action head trains; "
                    "RL starts from a checkpoint of the final stage (train longer, or pass the run's last checkpoint)"
                )
            if model.stage.explicit_components:
                raise ValueError(
                    f"preset {pcfg.preset!r} acts by writing CoT text, which RL does not sample; use a latent or "
                    "no-CoT model (lara, lara-no-cot, rdvla, lara-rd, bc)"
                )
            self.kind, feat_dim = ("flow" if pcfg.head == "flow" else "recurrent"), model.backbone.width
        else:
            raise TypeError(f"cannot do RL on a {type(model).__name__}")
        self.K = pcfg.expert.num_steps if self.kind == "flow" else 1
        # Flow: the per-step std is init_std / sqrt(K), so the noise accumulated over the chain is about init_std.
        init = math.log(cfg.init_std / math.sqrt(self.K))
        shape = (self.K, self.A) if self.kind == "flow" else (self.H, self.A)
        self.log_std = nn.Parameter(torch.full(shape, init))
        use_critic = cfg.algo == "ppo" if critic is None else critic
        self.value_head = (
            nn.Sequential(nn.Linear(feat_dim, cfg.value_hidden), nn.Tanh(), nn.Linear(cfg.value_hidden, 1))
            if use_critic
            else None
        )

    # ------------------------------------------------------------------------------------------- helpers

    @property
    def model(self) -> nn.Module:
        return self.policy.model

    def param_groups(self) -> dict[str, list[nn.Parameter]]:
        groups = {"policy": [p for p in self.model.parameters() if p.requires_grad], "noise": [self.log_std]}
        if self.value_head is not None:
            groups["value"] = list(self.value_head.parameters())
        return groups

    def element_log_std(self) -> Tensor:
        """(E,) log-std of every element, floored at log(min_std) so exploration never collapses to a point."""
        ls = self.log_std.clamp(min=math.log(self.cfg.min_std))
        if self.kind == "flow":
            return ls[:, None, :].expand(self.K, self.H, self.A).reshape(-1)
        return ls[: self.n_exec].reshape(-1)

    def _value(self, pooled: Tensor) -> Tensor | None:
        return None if self.value_head is None else self.value_head(pooled.detach().float()).squeeze(-1)

    def _backbone(self, batch: dict):
        """(BackboneOutput, SequenceBatch, pooled features) of the acting layout (latent mode, head queries)."""
        model: LatentVLA = self.model
        stage, latent = model.stage, "latent" in model.modes
        layout = Layout(
            n_latent=stage.num_thinking if latent else 0,
            visual=stage.visual_latents and latent,
            n_query=model.head.n_query,
        )
        prefix = model.embed_prefix(batch, layout)
        out, _ = model._forward(prefix)
        valid = prefix.seq.valid.to(out.hidden.dtype)[..., None]
        pooled = (out.hidden * valid).sum(1) / valid.sum(1).clamp(min=1.0)
        return out, prefix.seq, pooled

    def _state(self, batch: dict, head: nn.Module) -> Tensor | None:
        return batch[OBS_STATE] if head.state_dim > 0 else None

    def _bc_mean(self, batch: dict) -> tuple[Tensor, Tensor]:
        captured: list[Tensor] = []
        hook = self.model.mlp.register_forward_pre_hook(lambda mod, args: captured.append(args[0]))
        try:
            mean = self.model(batch)
        finally:
            hook.remove()
        return mean, captured[0]

    def _recurrent_mean(self, out, seq, batch: dict, s0: Tensor) -> Tensor:
        head = self.model.head
        with _fixed_scratchpad(head, s0):
            res = head(
                **head.read(out, seq),
                state=self._state(batch, head),
                num_iterations=self.model.cfg.iterations,
                halting=None,
            )
        return res.actions

    def _velocity(self, out, seq, batch: dict):
        head = self.model.head
        state = self._state(batch, head)
        return lambda x, t: head.velocity(x, t, out.hidden, seq.valid, state)

    # --------------------------------------------------------------------------------------------- verbs

    @torch.no_grad()
    def sample(self, batch: dict, generator: torch.Generator, deterministic: bool = False) -> Step:
        """One decision per row: the chunk to execute and what `distribution` needs to re-score it.
        `deterministic`: the trained policy itself (no exploration noise), for held-out evaluation."""
        B, dev = len(batch["task"]), batch[OBS_STATE].device
        noise = lambda shape: torch.randn(shape, generator=generator).to(dev)  # noqa: E731
        out = seq = mean = None
        if self.kind == "bc":
            mean, pooled = self._bc_mean(batch)
        else:
            out, seq, pooled = self._backbone(batch)
        if self.kind == "flow":
            step_ls = None if deterministic else self.log_std.clamp(min=math.log(self.cfg.min_std))
            x0 = noise((B, self.H, self.A))
            chain = flow_noise_sample(self._velocity(out, seq, batch), x0, step_ls, self.K, generator)
            aux, actions = {"chain": chain}, chain[:, -1]
        else:
            aux = {}
            if self.kind == "recurrent":
                s0 = self.model.head.init_state(B, generator, out.hidden).to(dev)
                mean, aux = self._recurrent_mean(out, seq, batch, s0), {"s0": s0}
            std = torch.exp(self.log_std.clamp(min=math.log(self.cfg.min_std)))
            actions = mean if deterministic else mean + std * noise(mean.shape)
            aux["action"] = actions
        if deterministic:
            return Step(actions, aux, torch.zeros(B, 0), None)
        dist = self._dist_from(batch, aux, cached=(out, seq, mean, pooled))
        return Step(actions, aux, dist.log_prob(), dist.value)

    def distribution(self, batch: dict, aux: dict[str, Tensor]) -> Dist:
        """The Gaussian over the stored decision `aux` under the current weights (differentiable)."""
        return self._dist_from(batch, aux)

    def _dist_from(self, batch: dict, aux: dict[str, Tensor], cached: tuple | None = None) -> Dist:
        B = len(batch["task"])
        if cached is not None:  # the rollout's own forward pass
            out, seq, mean, pooled = cached
        elif self.kind == "bc":
            mean, pooled = self._bc_mean(batch)
        else:
            out, seq, pooled = self._backbone(batch)
            if self.kind == "recurrent":
                mean = self._recurrent_mean(out, seq, batch, aux["s0"])
        if self.kind == "flow":
            chain = aux["chain"]
            means = flow_step_means(self._velocity(out, seq, batch), chain)
            mean_e, sample_e = means.reshape(B, -1), chain[:, 1:].reshape(B, -1)
        else:
            n = self.n_exec
            mean_e, sample_e = mean[:, :n].reshape(B, -1), aux["action"][:, :n].reshape(B, -1)
        return Dist(mean_e, sample_e, self.element_log_std(), self._value(pooled))

    def value(self, batch: dict) -> Tensor:
        """V(s) only (the bootstrap value of truncated episodes)."""
        with torch.no_grad():
            pooled = self._bc_mean(batch)[1] if self.kind == "bc" else self._backbone(batch)[2]
            return self._value(pooled)

    def means(self, batch: dict, aux: dict[str, Tensor]) -> Tensor:
        """(B, E) means of the stored decision (the KL anchor's reference, computed with no gradient)."""
        with torch.no_grad():
            return self._dist_from(batch, aux).mean
