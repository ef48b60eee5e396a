"""Flow-matching DiT action expert (LaRA-VLA Stage III, §3.2-3.3, Eq. 4; its code's GR00T-N1.5 head).

    context (B,T,Dc) ──────────────────────────────┐ (K/V of the cross-attention layers)
    state (B,S) ─ MLP ─► [state token]              │
    learned future tokens (F,W) ─► [future tokens]  ▼
    x_t (B,H,A), t ─ Linear(a) ⊕ sin(t) ─ MLP ─► [action tokens] ─► DiT x depth ─► AdaLN ─► MLP ─► v (B,H,A)
    t ─ sinusoid ─ MLP ─► c (B,W): AdaLN-Zero shift/scale/gate of every block

Layer i cross-attends the context when i is even and self-attends the token sequence when i is odd (GR00T's
`interleave_self_attention`). The time convention and all flow-matching maths live in `flow_matching.py`
(t = 0 noise, t = 1 data, Euler from 0 to 1). Keys masked out by `context_mask` (False = padding) are ignored;
the released LaRA code passes no mask, which is equivalent when there is no padding.

The context is fixed within a call, so its cross-attention keys/values are projected ONCE per call
(`project_context`) and reused by every Euler step in `sample` and by every noise draw in `loss` (openpi's π0
computes the prefix KV once for all denoising steps). `repeats` = R draws R (t, noise) pairs per example per
backbone forward (`repeated_diffusion_steps = 4` in GR00T / LaRA-VLA code); the per-sample loss is their mean.
`cache_context=False` keeps the re-projecting path as the reference for tests and benchmarks.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from latentvla.models import flow_matching as fm
from latentvla.models.device_checks import check
from latentvla.models.row_rng import draw_per_row


@dataclass(frozen=True)
class ActionExpertConfig:
    """Size and schedule of the DiT expert. Paper scale: width 768, depth 16, heads 12, 32 future tokens."""

    width: int = 128
    depth: int = 4
    heads: int = 4
    num_future_tokens: int = 8
    use_state_token: bool = True
    dropout: float = 0.0
    num_steps: int = 4  # Euler steps at inference (LaRA-VLA's code: num_inference_timesteps: 4)
    time_sampling: str = "beta"  # "beta" (LaRA code) or "uniform" (LaRA paper)
    ffn_mult: int = 4
    repeats: int = 4  # (t, noise) draws per example per backbone forward (LaRA-VLA's repeated_diffusion_steps: 4)

    def __post_init__(self) -> None:
        if self.width < 1 or self.depth < 1 or self.heads < 1:
            raise ValueError(f"width, depth and heads must be >= 1, got {self.width}, {self.depth}, {self.heads}.")
        if self.width % self.heads:
            raise ValueError(f"width {self.width} must be divisible by heads {self.heads}.")
        if self.width % 2:
            raise ValueError(f"width must be even for the sinusoidal time embedding, got {self.width}.")
        if self.num_future_tokens < 0 or self.num_steps < 1 or self.ffn_mult < 1 or self.repeats < 1:
            raise ValueError("num_future_tokens must be >= 0, num_steps, ffn_mult and repeats >= 1.")
        if not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"dropout must be in [0, 1), got {self.dropout}.")
        if self.time_sampling not in fm.TIME_SAMPLERS:
            raise ValueError(f"time_sampling must be one of {fm.TIME_SAMPLERS}, got {self.time_sampling!r}.")


def sinusoidal_embedding(t: Tensor, dim: int, scale: float = 1000.0) -> Tensor:
    """(B,) times in [0, 1] -> (B, dim) sin/cos features; t is scaled by 1000 like the code's timestep buckets."""
    half = dim // 2
    freqs = torch.exp(-math.log(10000.0) * torch.arange(half, device=t.device, dtype=torch.float32) / half)
    args = (t.float() * scale)[:, None] * freqs[None]
    return torch.cat([torch.sin(args), torch.cos(args)], dim=-1)


def _modulate(x: Tensor, shift: Tensor, scale: Tensor) -> Tensor:
    """AdaLN: x * (1 + scale) + shift, as one fused multiply-add (one pass over x instead of two)."""
    return torch.addcmul(shift[:, None], x, 1 + scale[:, None])


class DiTBlock(nn.Module):
    """AdaLN-Zero transformer block: (cross- or self-) attention, then a GELU MLP, both gated by c."""

    def __init__(self, width: int, heads: int, ffn_mult: int, dropout: float, context_dim: int | None):
        super().__init__()
        self.heads, self.cross = heads, context_dim is not None
        self.norm1 = nn.LayerNorm(width, elementwise_affine=False, eps=1e-6)
        self.norm2 = nn.LayerNorm(width, elementwise_affine=False, eps=1e-6)
        self.q = nn.Linear(width, width)
        kv_in = context_dim if context_dim is not None else width
        self.kv = nn.Linear(kv_in, 2 * width)
        self.out = nn.Linear(width, width)
        self.mlp = nn.Sequential(
            nn.Linear(width, ffn_mult * width), nn.GELU(approximate="tanh"), nn.Linear(ffn_mult * width, width)
        )
        self.drop = nn.Dropout(dropout)
        # AdaLN-Zero (DiT, Peebles & Xie 2023): modulation starts at zero so every block starts as identity.
        self.ada = nn.Linear(width, 6 * width)
        nn.init.zeros_(self.ada.weight)
        nn.init.zeros_(self.ada.bias)

    def _split(self, z: Tensor) -> Tensor:
        B, L, W = z.shape
        return z.view(B, L, self.heads, W // self.heads).transpose(1, 2)

    def project(self, src: Tensor) -> tuple[Tensor, Tensor]:
        """Keys and values (B, heads, T, d) of `src` (the context for a cross-attention block)."""
        k, v = self.kv(src).chunk(2, dim=-1)
        return self._split(k).contiguous(), self._split(v).contiguous()

    def _attend(
        self, x: Tensor, context_kv: tuple[Tensor, Tensor] | None, key_mask: Tensor | None, repeats: int = 1
    ) -> Tensor:
        """Attention of x's tokens. Cross-attention with `repeats` = R: x holds R consecutive rows per context row
        (the R noise draws of one example, `FlowMatchingExpert.loss`); their queries are laid side by side along
        the query axis against the ONE copy of that example's keys/values, instead of copying the keys/values R
        times. Each query row attends exactly as before: attention is independent per query."""
        BR, L, W = x.shape
        p = self.drop.p if self.training else 0.0
        q = self._split(self.q(x))  # (B*R, h, L, d)
        if not self.cross:
            k, v = self.project(x)
            y = F.scaled_dot_product_attention(q, k, v, dropout_p=p)
            return self.out(y.transpose(1, 2).reshape(BR, L, W))
        k, v = context_kv
        B, R, h, d = k.shape[0], repeats, self.heads, W // self.heads
        if R > 1:
            q = q.view(B, R, h, L, d).transpose(1, 2).reshape(B, h, R * L, d)
        mask = None if key_mask is None else key_mask[:, None, None, :]
        y = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, dropout_p=p)  # (B, h, R*L, d)
        y = y.view(B, h, R, L, d).permute(0, 2, 3, 1, 4)  # (B, R, L, h, d)
        return self.out(y.reshape(BR, L, W))

    def forward(
        self,
        x: Tensor,
        c: Tensor,
        context_kv: tuple[Tensor, Tensor] | None,
        key_mask: Tensor | None,
        repeats: int = 1,
    ) -> Tensor:
        shift1, scale1, gate1, shift2, scale2, gate2 = self.ada(F.silu(c)).chunk(6, dim=-1)
        # x + gate * y as one fused multiply-add (AdaLN-Zero's gated residual)
        attn = self._attend(_modulate(self.norm1(x), shift1, scale1), context_kv, key_mask, repeats)
        x = torch.addcmul(x, gate1[:, None], self.drop(attn))
        return torch.addcmul(x, gate2[:, None], self.drop(self.mlp(_modulate(self.norm2(x), shift2, scale2))))


class FlowMatchingExpert(nn.Module):
    """DiT velocity field v(x_t, t | context, state) with the two verbs `loss` and `sample`."""

    def __init__(
        self, cfg: ActionExpertConfig, context_dim: int, action_dim: int, horizon: int, state_dim: int = 0
    ):
        super().__init__()
        if min(context_dim, action_dim, horizon) < 1 or state_dim < 0:
            raise ValueError("context_dim, action_dim and horizon must be >= 1 and state_dim >= 0.")
        if cfg.use_state_token and state_dim == 0:
            raise ValueError(
                "use_state_token=True needs state_dim > 0; pass state_dim or set use_state_token=False."
            )
        self.cfg, self.action_dim, self.horizon, self.state_dim = cfg, action_dim, horizon, state_dim
        W = cfg.width
        self.time_mlp = nn.Sequential(nn.Linear(W, W), nn.SiLU(), nn.Linear(W, W))
        # Action encoder (LaRA-VLA's code: MultiEmbodimentActionEncoder): Linear(a) ⊕ sinusoid(t) -> swish MLP.
        self.action_in = nn.Linear(action_dim, W)
        self.action_mix = nn.Sequential(nn.Linear(2 * W, W), nn.SiLU(), nn.Linear(W, W))
        self.action_pos = nn.Parameter(torch.randn(horizon, W) * 0.02)
        self.future_tokens = nn.Parameter(torch.randn(cfg.num_future_tokens, W) * 0.02)
        self.state_mlp = (
            nn.Sequential(nn.Linear(state_dim, W), nn.SiLU(), nn.Linear(W, W)) if cfg.use_state_token else None
        )
        self.blocks = nn.ModuleList(
            DiTBlock(W, cfg.heads, cfg.ffn_mult, cfg.dropout, context_dim if i % 2 == 0 else None)
            for i in range(cfg.depth)
        )
        self.final_norm = nn.LayerNorm(W, elementwise_affine=False, eps=1e-6)
        self.final_ada = nn.Linear(W, 2 * W)
        nn.init.zeros_(self.final_ada.weight)
        nn.init.zeros_(self.final_ada.bias)
        self.final_drop = nn.Dropout(cfg.dropout)  # LaRA-VLA's code: final_dropout: true
        self.decoder = nn.Sequential(nn.Linear(W, W), nn.SiLU(), nn.Linear(W, action_dim))

    def _check(self, context: Tensor, context_mask: Tensor | None, state: Tensor | None) -> Tensor | None:
        if context.dim() != 3:
            raise ValueError(f"context must be (B,T,D), got {tuple(context.shape)}.")
        if context_mask is not None:
            if context_mask.shape != context.shape[:2]:
                raise ValueError(
                    f"context_mask must be (B,T) = {tuple(context.shape[:2])}, got {tuple(context_mask.shape)}."
                )
            context_mask = context_mask.bool()
            check(  # no host sync on an accelerator (models/device_checks.py)
                context_mask.any(dim=1).all(),
                "every row of context_mask needs at least one True (attendable) position.",
            )
        if self.state_mlp is not None and state is not None and state.shape != (context.shape[0], self.state_dim):
            raise ValueError(
                f"state must be (B,S) = ({context.shape[0]}, {self.state_dim}), got {tuple(state.shape)}."
            )
        return context_mask

    def project_context(self, context: Tensor) -> list[tuple[Tensor, Tensor] | None]:
        """Per block: the context's keys/values (cross-attention blocks) or None (self-attention blocks)."""
        return [blk.project(context) if blk.cross else None for blk in self.blocks]

    def velocity(
        self, x_t: Tensor, t: Tensor, context: Tensor, context_mask: Tensor | None, state: Tensor | None
    ) -> Tensor:
        """Predicted velocity (B,H,A) at noisy chunk x_t (B,H,A), time t (B,) in [0, 1] (0 = noise)."""
        key_mask = self._check(context, context_mask, state)
        return self._velocity(x_t, t, self.project_context(context), key_mask, state)

    def _velocity(
        self,
        x_t: Tensor,
        t: Tensor,
        context_kv: list,
        key_mask: Tensor | None,
        state: Tensor | None,
        repeats: int = 1,
    ):
        """`velocity` on already-projected context keys/values (checked inputs); with `repeats` = R, x_t, t and
        state hold R consecutive rows per row of context_kv / key_mask (see `DiTBlock._attend`)."""
        if x_t.shape[1:] != (self.horizon, self.action_dim):
            raise ValueError(f"x_t must be (B,{self.horizon},{self.action_dim}), got {tuple(x_t.shape)}.")
        n_ctx = next((kv[0].shape[0] for kv in context_kv if kv is not None), x_t.shape[0] // repeats)
        if x_t.shape[0] != n_ctx * repeats:
            raise ValueError(
                f"x_t has {x_t.shape[0]} rows for {n_ctx} contexts; expected repeats={repeats} per context."
            )
        B, W = x_t.shape[0], self.cfg.width
        t_feat = sinusoidal_embedding(t, W).to(x_t.dtype)
        c = self.time_mlp(t_feat)  # (B, W)
        a_tok = self.action_mix(torch.cat([self.action_in(x_t), t_feat[:, None].expand(-1, self.horizon, -1)], -1))
        parts = [self.future_tokens[None].expand(B, -1, -1), a_tok + self.action_pos[None]]
        if self.state_mlp is not None and state is not None:  # state=None: LaRA's released LIBERO setting
            parts.insert(0, self.state_mlp(state.to(x_t.dtype))[:, None])
        x = torch.cat(parts, dim=1)  # (B, [1] + F + H, W)
        for block, kv in zip(self.blocks, context_kv, strict=True):
            x = block(x, c, kv, key_mask, repeats)
        shift, scale = self.final_ada(F.silu(c)).chunk(2, dim=-1)
        x = self.final_drop(_modulate(self.final_norm(x), shift, scale))
        return self.decoder(x[:, -self.horizon :])

    def loss(
        self,
        actions: Tensor,
        context: Tensor,
        context_mask: Tensor | None,
        state: Tensor | None,
        action_is_pad: Tensor | None,
        generator: torch.Generator | None = None,
        *,
        cache_context: bool = True,
    ) -> Tensor:
        """Per-sample flow-matching loss (B,): ||v(x_t, t) - (a - eps)||², masked by action_is_pad (LaRA Eq. 4),
        averaged over `repeats` (t, noise) draws whose context keys/values are projected once."""
        key_mask = self._check(context, context_mask, state)
        B, R = actions.shape[0], self.cfg.repeats
        rep = lambda z: z if z is None or R == 1 else z.repeat_interleave(R, dim=0)  # noqa: E731
        t = fm.sample_time(B * R, generator, kind=self.cfg.time_sampling, device=actions.device)
        t = t.to(actions.dtype)
        noise = self._noise((B * R, *actions.shape[1:]), generator, actions)
        target = rep(actions)
        x_t = fm.interpolate(noise, target, t)
        if cache_context:  # project the B contexts once; the R draws of each attend to the same keys/values
            pred = self._velocity(x_t, t, self.project_context(context), key_mask, rep(state), repeats=R)
        else:  # reference: R copies of the context, each projected
            pred = self.velocity(x_t, t, rep(context), rep(key_mask), rep(state))
        loss = fm.flow_matching_loss(pred, fm.target_velocity(noise, target), rep(action_is_pad))
        return loss.view(B, R).mean(dim=1)

    @torch.no_grad()
    def sample(
        self,
        context: Tensor,
        context_mask: Tensor | None,
        state: Tensor | None,
        num_steps: int | None = None,
        noise: Tensor | None = None,
        generator: torch.Generator | None = None,
        *,
        cache_context: bool = True,
    ) -> Tensor:
        """Integrate the velocity field from noise (t = 0) to an action chunk (B,H,A) with Euler steps; the
        context keys/values are projected once for all steps (`cache_context=False`: at every step)."""
        B = context.shape[0]
        shape = (B, self.horizon, self.action_dim)
        if noise is None:
            noise = self._noise(shape, generator, context)
        elif noise.shape != shape:
            raise ValueError(f"noise must be {shape}, got {tuple(noise.shape)}.")
        steps = self.cfg.num_steps if num_steps is None else num_steps
        if not cache_context:
            return fm.euler_integrate(lambda x, t: self.velocity(x, t, context, context_mask, state), noise, steps)
        key_mask = self._check(context, context_mask, state)
        kv = self.project_context(context)
        return fm.euler_integrate(lambda x, t: self._velocity(x, t, kv, key_mask, state), noise, steps)

    @staticmethod
    def _noise(shape: tuple[int, ...], generator, like: Tensor) -> Tensor:
        def draw(shape, generator):  # on the generator's device (a CPU generator seeds CUDA runs too)
            device = generator.device if generator is not None else like.device
            return torch.randn(shape, generator=generator, device=device).to(device=like.device, dtype=like.dtype)

        return draw_per_row(shape, generator, draw)  # a list of generators: one per row (models/row_rng.py)
