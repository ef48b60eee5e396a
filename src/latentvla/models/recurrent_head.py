"""Recurrent-depth action head of RD-VLA (papers.md §2.3-2.5, [RP] §III-B Eq. 1-5, [RF] action_heads.py;
Huginn §3 for the prelude/core/coda recipe, init and truncated BPTT).

    K learned queries ─ Prelude block (x-attn: prelude context, mid layer) ─► S_pre (B,K,D)
    S_0 ~ TruncNormal(0, 0.632, ±3σ)   (fresh per call, seedable)
    for k = 1..r:   x_k = RMSNorm(γ · W[S_{k-1}; S_pre])                 input injection, W: 2D -> D
                    S_k = ExitNorm(Core_2(Core_1(x_k, ctx), ctx))         2 weight-tied blocks
    actions = Linear(RMSNorm(Coda(S_r, ctx)))  per scratchpad token  ─► (B, K=H, A)
    ctx = latent keys [core_latent_context; proprio token] and vision keys core_vision_context (final layer)

Block = pre-RMSNorm self-attention over the K tokens (RoPE, no mask) → pre-RMSNorm gated cross-attention
(separate K/V projections for latent and vision keys, vision logits × tanh(g), g init 0, ONE joint softmax)
→ pre-RMSNorm SwiGLU FFN; no biases. The prelude's context is one tensor, all of it on the ungated side.

Training (grad enabled, no halting): the first r - d iterations run under torch.no_grad() (no graph at all),
the last min(d, r) with gradient, then the coda (truncated BPTT, d = 8). Inference (grad disabled, or a halting
strategy given): without halting the chunk is decoded once at the end; with halting it is decoded every
iteration, each batch element freezes its state/actions at its first halting iteration, and the loop stops
when all have halted. Only (B,) / (B,R) scalars are kept across iterations, so memory is flat in depth.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from latentvla.models.halting import HaltingStrategy, mean_squared_change
from latentvla.models.masking import mean_over_valid_steps
from latentvla.models.recurrence import sample_depth, split_depth


@dataclass(frozen=True)
class RecurrentHeadConfig:
    """Head size and depth schedule. RD-VLA scale: width 896, 8 heads, chunk 8, mean recurrence 32."""

    width: int = 128
    heads: int = 4
    chunk: int = 8  # K scratchpad tokens = H executed-chunk length
    mean_recurrence: int = 32
    depth_sigma: float = 0.5
    backprop_depth: int = 8
    max_depth: int = 64
    init_std: float = 0.632  # sqrt(2/5): Huginn's state init, RD's scratchpad/query init
    ffn_mult: int = 4
    rope_base: float = 10000.0
    core_layers: int = 2

    def __post_init__(self) -> None:
        if self.width < 1 or self.heads < 1 or self.width % self.heads or (self.width // self.heads) % 2:
            raise ValueError(f"width {self.width} must split into {self.heads} heads of even size (RoPE).")
        if (
            min(
                self.chunk,
                self.mean_recurrence,
                self.backprop_depth,
                self.max_depth,
                self.ffn_mult,
                self.core_layers,
            )
            < 1
        ):
            raise ValueError(
                "chunk, mean_recurrence, backprop_depth, max_depth, ffn_mult, core_layers must be >= 1."
            )
        if self.init_std <= 0 or self.depth_sigma < 0 or self.rope_base <= 0:
            raise ValueError("init_std and rope_base must be > 0 and depth_sigma >= 0.")


@dataclass
class RecurrentOutput:
    """What one call of the head returns."""

    actions: Tensor  # (B, H, A) normalized
    iterations: Tensor  # (B,) long: core iterations actually used per element
    deltas: (
        Tensor  # (B, R): mean squared change of the decoded chunk at iteration k (index k-1); nan if not computed
    )
    latents: Tensor  # (B, K, D): final scratchpad


def _trunc_normal(shape: tuple[int, ...], std: float, generator: torch.Generator | None, like: Tensor) -> Tensor:
    device = generator.device if generator is not None else like.device
    x = torch.empty(shape, device=device)
    nn.init.trunc_normal_(x, 0.0, std, -3 * std, 3 * std, generator=generator)
    return x.to(device=like.device, dtype=like.dtype)


def _rope(x: Tensor, base: float) -> Tensor:
    """Rotary embedding over the token axis of x (B, heads, K, d) (rotate-half convention)."""
    K, d = x.shape[-2], x.shape[-1]
    inv = 1.0 / base ** (torch.arange(0, d, 2, device=x.device, dtype=torch.float32) / d)
    ang = torch.arange(K, device=x.device, dtype=torch.float32)[:, None] * inv[None]  # (K, d/2)
    cos, sin = torch.cat([ang, ang], -1).cos().to(x.dtype), torch.cat([ang, ang], -1).sin().to(x.dtype)
    x1, x2 = x[..., : d // 2], x[..., d // 2 :]
    return x * cos + torch.cat([-x2, x1], dim=-1) * sin


class RecurrentBlock(nn.Module):
    """RD-VLA "RecurrentLayer": self-attn (RoPE) → gated joint cross-attn → SwiGLU, all pre-RMSNorm, no biases."""

    def __init__(self, width: int, heads: int, ffn_mult: int, context_dim: int, rope_base: float):
        super().__init__()
        self.heads, self.rope_base = heads, rope_base
        self.norm_self = nn.RMSNorm(width, eps=1e-6)
        self.qkv_self = nn.Linear(width, 3 * width, bias=False)
        self.o_self = nn.Linear(width, width, bias=False)
        self.norm_cross = nn.RMSNorm(width, eps=1e-6)
        self.q_cross = nn.Linear(width, width, bias=False)
        self.kv_latent = nn.Linear(context_dim, 2 * width, bias=False)
        self.kv_vision = nn.Linear(context_dim, 2 * width, bias=False)
        self.vision_gate = nn.Parameter(torch.zeros(()))  # g: vision logits × tanh(g), closed at init
        self.o_cross = nn.Linear(width, width, bias=False)
        self.norm_ffn = nn.RMSNorm(width, eps=1e-6)
        self.ffn_in = nn.Linear(width, 2 * ffn_mult * width, bias=False)  # gate and up, fused
        self.ffn_down = nn.Linear(ffn_mult * width, width, bias=False)

    def _heads(self, z: Tensor) -> Tensor:
        B, L, W = z.shape
        return z.view(B, L, self.heads, W // self.heads).transpose(1, 2)

    def _merge(self, z: Tensor) -> Tensor:
        B, h, L, d = z.shape
        return z.transpose(1, 2).reshape(B, L, h * d)

    def forward(self, x: Tensor, latent_ctx: Tensor, vision_ctx: Tensor | None) -> Tensor:
        q, k, v = self.qkv_self(self.norm_self(x)).chunk(3, dim=-1)
        q, k = _rope(self._heads(q), self.rope_base), _rope(self._heads(k), self.rope_base)
        x = x + self.o_self(self._merge(F.scaled_dot_product_attention(q, k, self._heads(v))))
        k_lat, v_lat = self.kv_latent(latent_ctx).chunk(2, dim=-1)
        keys, values = [k_lat], [v_lat]
        if vision_ctx is not None:
            k_vis, v_vis = self.kv_vision(vision_ctx).chunk(2, dim=-1)
            # Scaling the vision keys by tanh(g) scales exactly their logits q·k/√d, and one SDPA call over the
            # concatenated keys is the single joint softmax of [RF] (gate on logits, not on the output).
            keys.append(torch.tanh(self.vision_gate) * k_vis)
            values.append(v_vis)
        q = self._heads(self.q_cross(self.norm_cross(x)))
        att = F.scaled_dot_product_attention(q, self._heads(torch.cat(keys, 1)), self._heads(torch.cat(values, 1)))
        x = x + self.o_cross(self._merge(att))
        gate, up = self.ffn_in(self.norm_ffn(x)).chunk(2, dim=-1)
        return x + self.ffn_down(F.silu(gate) * up)


class RecurrentDepthHead(nn.Module):
    """Prelude / weight-tied recurrent core / coda action head with truncated BPTT and per-element halting."""

    OUTPUT_LAYERS = ("o_self", "o_cross", "ffn_down", "action_out")

    def __init__(self, cfg: RecurrentHeadConfig, context_dim: int, action_dim: int, state_dim: int = 0):
        super().__init__()
        if context_dim < 1 or action_dim < 1 or state_dim < 0:
            raise ValueError("context_dim and action_dim must be >= 1 and state_dim >= 0.")
        self.cfg, self.context_dim, self.action_dim, self.state_dim = cfg, context_dim, action_dim, state_dim
        D = cfg.width
        block = lambda: RecurrentBlock(D, cfg.heads, cfg.ffn_mult, context_dim, cfg.rope_base)  # noqa: E731
        self.queries = nn.Parameter(torch.empty(cfg.chunk, D))
        # Proprio → one key/value token in context space, appended to the latent keys ([RC] projectors.py).
        self.proprio = (
            nn.Sequential(nn.Linear(state_dim, context_dim), nn.GELU(), nn.Linear(context_dim, context_dim))
            if state_dim > 0
            else None
        )
        self.prelude = block()
        self.adapter = nn.Linear(2 * D, D, bias=False)
        self.inject_gamma = nn.Parameter(torch.ones(()))
        self.inject_norm = nn.RMSNorm(D, eps=1e-6)
        self.core = nn.ModuleList(block() for _ in range(cfg.core_layers))
        self.exit_norm = nn.RMSNorm(D, eps=1e-6)
        self.coda = block()
        self.out_norm = nn.RMSNorm(D, eps=1e-6)
        self.action_out = nn.Linear(D, action_dim)
        self._init_weights()

    def _init_weights(self) -> None:
        """Takase/Huginn init: trunc-normal std sqrt(2/(5D)), ±3σ; output layers / sqrt(mean_recurrence · core
        layers); biases 0. (RD's name filter misses o_self/o_cross; Huginn scales every out-projection, as here.)"""
        std = math.sqrt(2.0 / (5.0 * self.cfg.width))
        out_scale = 1.0 / math.sqrt(self.cfg.mean_recurrence * self.cfg.core_layers)
        for name, mod in self.named_modules():
            if isinstance(mod, nn.Linear):
                s = std * (out_scale if name.split(".")[-1] in self.OUTPUT_LAYERS else 1.0)
                nn.init.trunc_normal_(mod.weight, 0.0, s, -3 * s, 3 * s)
                if mod.bias is not None:
                    nn.init.zeros_(mod.bias)
        s = self.cfg.init_std
        nn.init.trunc_normal_(self.queries, 0.0, s, -3 * s, 3 * s)

    def init_state(self, batch: int, generator: torch.Generator | None, like: Tensor) -> Tensor:
        """Fresh scratchpad S_0 ~ TruncNormal(0, init_std, ±3σ), (B, K, D)."""
        return _trunc_normal((batch, self.cfg.chunk, self.cfg.width), self.cfg.init_std, generator, like)

    def core_step(self, s: Tensor, s_pre: Tensor, latent_ctx: Tensor, vision_ctx: Tensor | None) -> Tensor:
        """One recurrence: input injection, the weight-tied core blocks, exit norm. (B,K,D) -> (B,K,D)."""
        x = self.inject_norm(self.inject_gamma * self.adapter(torch.cat([s, s_pre], dim=-1)))
        for blk in self.core:
            x = blk(x, latent_ctx, vision_ctx)
        return self.exit_norm(x)

    def decode(self, s: Tensor, latent_ctx: Tensor, vision_ctx: Tensor | None) -> Tensor:
        """Coda → RMSNorm → per-token linear: scratchpad (B,K,D) -> chunk (B,H=K,A)."""
        return self.action_out(self.out_norm(self.coda(s, latent_ctx, vision_ctx)))

    def _contexts(self, prelude_context, core_latent_context, core_vision_context, state) -> Tensor:
        B = prelude_context.shape[0]
        named = {"prelude_context": prelude_context, "core_latent_context": core_latent_context}
        named["core_vision_context"] = core_vision_context
        for name, c in named.items():
            if c is not None and (c.dim() != 3 or c.shape[0] != B or c.shape[2] != self.context_dim):
                raise ValueError(f"{name} must be (B={B}, T, {self.context_dim}), got {tuple(c.shape)}.")
        if state is None:
            return core_latent_context
        if self.proprio is None:
            raise ValueError("this head was built with state_dim=0; pass state=None or build it with state_dim.")
        if state.shape != (B, self.state_dim):
            raise ValueError(f"state must be (B,S) = ({B}, {self.state_dim}), got {tuple(state.shape)}.")
        p = self.proprio(state.to(core_latent_context.dtype))[:, None]  # (B, 1, Dc)
        return torch.cat([core_latent_context, p], dim=1)

    def forward(
        self,
        prelude_context: Tensor,
        core_latent_context: Tensor,
        core_vision_context: Tensor | None,
        state: Tensor | None,
        *,
        num_iterations: int,
        backprop_depth: int | None = None,
        halting: HaltingStrategy | None = None,
        generator: torch.Generator | None = None,
    ) -> RecurrentOutput:
        """Run prelude, `num_iterations` core iterations (fewer per element if `halting` stops it), coda."""
        if num_iterations < 1:
            raise ValueError(f"num_iterations must be >= 1, got {num_iterations}.")
        latent_ctx = self._contexts(prelude_context, core_latent_context, core_vision_context, state)
        B = prelude_context.shape[0]
        queries = self.queries[None].expand(B, -1, -1).to(prelude_context.dtype)
        if halting is None and torch.is_grad_enabled():
            s_pre = self.prelude(queries, prelude_context, None)
            s = self.init_state(B, generator, s_pre)
            return self._train_path(s, s_pre, latent_ctx, core_vision_context, num_iterations, backprop_depth)
        with torch.no_grad():
            s_pre = self.prelude(queries, prelude_context, None)
            s = self.init_state(B, generator, s_pre)
            return self._infer_path(s, s_pre, latent_ctx, core_vision_context, num_iterations, halting)

    def _train_path(self, s, s_pre, latent_ctx, vision_ctx, r: int, backprop_depth: int | None) -> RecurrentOutput:
        n_no_grad, n_grad = split_depth(r, self.cfg.backprop_depth if backprop_depth is None else backprop_depth)
        with torch.no_grad():  # truncated BPTT: these iterations build no autograd graph at all
            for _ in range(n_no_grad):
                s = self.core_step(s, s_pre, latent_ctx, vision_ctx)
        for _ in range(n_grad):
            s = self.core_step(s, s_pre, latent_ctx, vision_ctx)
        B = s.shape[0]
        return RecurrentOutput(
            actions=self.decode(s, latent_ctx, vision_ctx),
            iterations=torch.full((B,), r, dtype=torch.long, device=s.device),
            deltas=torch.full((B, r), float("nan"), device=s.device),
            latents=s,
        )

    def _infer_path(self, s, s_pre, latent_ctx, vision_ctx, r: int, halting) -> RecurrentOutput:
        B, dev = s.shape[0], s.device
        deltas = torch.full((B, r), float("nan"), device=dev)
        if halting is None:  # fixed depth, decode once: the cheapest path (latency benchmarks)
            for _ in range(r):
                s = self.core_step(s, s_pre, latent_ctx, vision_ctx)
            iters = torch.full((B,), r, dtype=torch.long, device=dev)
            return RecurrentOutput(self.decode(s, latent_ctx, vision_ctx), iters, deltas, s)
        halting.reset(B)
        done = torch.zeros(B, dtype=torch.bool, device=dev)
        iters = torch.zeros(B, dtype=torch.long, device=dev)
        actions = prev = None
        for k in range(1, r + 1):
            # Halted elements keep their state; the rest advance. (Computing all rows and selecting keeps shapes
            # static; the wasted work is bounded by the batch's slowest element.)
            s = torch.where(done[:, None, None], s, self.core_step(s, s_pre, latent_ctx, vision_ctx))
            a = self.decode(s, latent_ctx, vision_ctx)
            newly = torch.zeros_like(done)
            if prev is not None:
                deltas[:, k - 1] = torch.where(done, float("nan"), mean_squared_change(prev, a))
                halt, _ = halting.check(prev, a)
                newly = halt.to(dev) & ~done
            actions = a if actions is None else torch.where(done[:, None, None], actions, a)
            iters = torch.where(done, iters, k)
            done = done | newly
            prev = a
            if bool(done.all()):
                break
        return RecurrentOutput(actions, iters, deltas, s)

    def loss(
        self,
        actions: Tensor,
        prelude_context: Tensor,
        core_latent_context: Tensor,
        core_vision_context: Tensor | None,
        state: Tensor | None,
        action_is_pad: Tensor | None,
        *,
        num_iterations: int | None = None,
        backprop_depth: int | None = None,
        generator: torch.Generator | None = None,
    ) -> tuple[Tensor, RecurrentOutput]:
        """Per-sample L1 chunk loss (B,) at depth `num_iterations` (default: r ~ log-normal-Poisson, §2.4),
        and the head's output, whose `.iterations` is the depth used (for metrics)."""
        if num_iterations is None:
            c = self.cfg
            num_iterations = sample_depth(generator, c.mean_recurrence, c.depth_sigma, 1, c.max_depth)
        contexts = (prelude_context, core_latent_context, core_vision_context, state)
        out = self(*contexts, num_iterations=num_iterations, backprop_depth=backprop_depth, generator=generator)
        return l1_chunk_loss(out.actions, actions, action_is_pad), out


def l1_chunk_loss(pred: Tensor, target: Tensor, is_pad: Tensor | None = None) -> Tensor:
    """Per-sample L1 (B,) between chunks (B,H,A), averaged over non-padded steps and action dims ([RF] L1)."""
    if pred.shape != target.shape or pred.dim() != 3:
        raise ValueError(f"pred and target must both be (B,H,A); got {tuple(pred.shape)}, {tuple(target.shape)}.")
    return mean_over_valid_steps((pred - target).abs().mean(dim=-1), is_pad)  # (B, H) -> (B,)
