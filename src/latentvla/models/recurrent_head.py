"""Recurrent-depth action head of RD-VLA (RD-VLA §III-B Eq. 1-5 and §III-C, its code's action_heads.py;
Huginn §3 for the prelude/core/coda recipe, init and truncated BPTT).

    K learned queries ─ Prelude block (x-attn: mid-layer latent keys, gated mid-layer vision keys) ─► S_pre (B,K,D)
    S_0 ~ TruncNormal(0, 0.632, ±3σ)   (fresh per call, seedable)
    for k = 1..r:   x_k = RMSNorm(γ · W[S_{k-1}; S_pre])                 input injection, W: 2D -> D
                    S_k = ExitNorm(Core_2(Core_1(x_k, ctx), ctx))         2 weight-tied blocks
    actions = Linear(RMSNorm(Coda(S_r, ctx)))  per scratchpad token  ─► (B, K=H, A)
    ctx = latent keys [core_latent_context; proprio token] and vision keys core_vision_context (final layer)

Block = pre-RMSNorm self-attention over the K tokens (RoPE, no mask) → pre-RMSNorm gated cross-attention
(separate K/V projections for latent and vision keys, vision logits × tanh(g), g init 0, ONE joint softmax)
→ pre-RMSNorm SwiGLU FFN; no biases. Every block, the prelude included, reads its layer's image tokens through
the gated vision path (RD-VLA Eq. 1: the prelude cross-attends h^(12)_{vis+lat}).

Context cache: the context and the (tied) weights are fixed within a call, so each block projects its context
into keys/values ONCE per call (`RecurrentBlock.project`) and every iteration reuses them. At width 896 with 577
context tokens that projection is ~88 % of a block-iteration's FLOPs (bench/head.py `head_flops`); the official
head (RD-VLA's action_heads.py) re-projects it at every iteration. Exact: the same ops on the same numbers.
`cache_context=False` keeps the re-projecting path as the reference for tests and `latentvla bench head`.

Training (grad enabled, no halting): the first r - d iterations run under torch.no_grad() (no graph at all)
on a detached copy of the cached keys/values, the last min(d, r) with gradient on the cached ones (their
gradients accumulate into the one projection), then the coda (truncated BPTT, d = 8). Inference (grad
disabled, or a halting strategy given): without halting the chunk is decoded once at the end; with halting it
is decoded every iteration, and an element that halts leaves the active batch (its state, chunk and cached
keys/values are dropped from the rows still iterating), so a batch costs the sum of its elements' depths, not
B x the deepest. Only (B,) / (B,R) scalars are kept across iterations, so memory is flat in depth.
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
from latentvla.models.recurrent_ops import rope, trunc_normal_rows


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
    # Backbone taps (RD-VLA §III-B: h^(12) for the prelude, h^(24) for core and coda of a 24-layer LLM).
    # 0 = the default: prelude at num_layers // 2, core at num_layers; else a layers[] index (0 = embeddings).
    prelude_layer: int = 0
    core_layer: int = 0

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


@dataclass(frozen=True)
class CrossContext:
    """What one block cross-attends in one call: the raw context (re-projected at every use: the reference path)
    or its keys/values projected once (the cache), each (B, heads, T, d) with the vision keys already gated."""

    latent: Tensor | None = None  # (B, T_lat, Dc)
    vision: Tensor | None = None  # (B, T_vis, Dc)
    kv: tuple[Tensor, Tensor] | None = None

    def detach(self) -> CrossContext:
        d = lambda t: None if t is None else t.detach()  # noqa: E731
        return CrossContext(
            d(self.latent), d(self.vision), None if self.kv is None else (d(self.kv[0]), d(self.kv[1]))
        )

    def rows(self, keep: Tensor) -> CrossContext:
        """The batch rows selected by `keep` (bool (B,) or indices): halted elements leave the active batch."""
        r = lambda t: None if t is None else t[keep]  # noqa: E731
        return CrossContext(
            r(self.latent), r(self.vision), None if self.kv is None else (r(self.kv[0]), r(self.kv[1]))
        )


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
        # g: vision logits × tanh(g). At init tanh(0) = 0 zeroes the vision LOGITS, not the vision attention:
        # every vision key then gets the same share exp(0) of the joint softmax (a uniform average of the
        # vision values enters), and the gate learns how sharply to attend to them (RD-VLA's action_heads.py).
        self.vision_gate = nn.Parameter(torch.zeros(()))
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

    def project(self, latent_ctx: Tensor, vision_ctx: Tensor | None) -> tuple[Tensor, Tensor]:
        """Context (B,T_lat,Dc) [+ (B,T_vis,Dc)] -> keys, values (B, heads, T, d): the per-call cacheable part."""
        k_lat, v_lat = self.kv_latent(latent_ctx).chunk(2, dim=-1)
        keys, values = [k_lat], [v_lat]
        if vision_ctx is not None:
            k_vis, v_vis = self.kv_vision(vision_ctx).chunk(2, dim=-1)
            # Scaling the vision keys by tanh(g) scales exactly their logits q·k/√d, and one SDPA call over the
            # concatenated keys is the single joint softmax of RD-VLA's code (gate on logits, not on the output).
            keys.append(torch.tanh(self.vision_gate) * k_vis)
            values.append(v_vis)
        return self._heads(torch.cat(keys, 1)).contiguous(), self._heads(torch.cat(values, 1)).contiguous()

    def context(self, latent_ctx: Tensor, vision_ctx: Tensor | None, cache: bool) -> CrossContext:
        """This block's cross-attention context for one call, projected now (cache) or at every use."""
        if cache:
            return CrossContext(kv=self.project(latent_ctx, vision_ctx))
        return CrossContext(latent_ctx, vision_ctx)

    def forward(self, x: Tensor, ctx: CrossContext) -> Tensor:
        q, k, v = self.qkv_self(self.norm_self(x)).chunk(3, dim=-1)
        q, k = rope(self._heads(q), self.rope_base), rope(self._heads(k), self.rope_base)
        x = x + self.o_self(self._merge(F.scaled_dot_product_attention(q, k, self._heads(v))))
        keys, values = ctx.kv if ctx.kv is not None else self.project(ctx.latent, ctx.vision)
        q = self._heads(self.q_cross(self.norm_cross(x)))
        x = x + self.o_cross(self._merge(F.scaled_dot_product_attention(q, keys, values)))
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
        # Proprio → one key/value token in context space, appended to the latent keys (RD-VLA's projectors.py).
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
        return trunc_normal_rows((batch, self.cfg.chunk, self.cfg.width), self.cfg.init_std, generator, like)

    def core_step(self, s: Tensor, s_pre: Tensor, core: list[CrossContext]) -> Tensor:
        """One recurrence: input injection, the weight-tied core blocks (each with its context), exit norm."""
        x = self.inject_norm(self.inject_gamma * self.adapter(torch.cat([s, s_pre], dim=-1)))
        for blk, ctx in zip(self.core, core, strict=True):
            x = blk(x, ctx)
        return self.exit_norm(x)

    def decode(self, s: Tensor, coda: CrossContext) -> Tensor:
        """Coda → RMSNorm → per-token linear: scratchpad (B,K,D) -> chunk (B,H=K,A)."""
        return self.action_out(self.out_norm(self.coda(s, coda)))

    def _latent_keys(self, contexts: dict[str, Tensor | None], state: Tensor | None) -> Tensor:
        """Validate the contexts; the core/coda latent keys [core_latent_context; proprio token]."""
        B = contexts["prelude_context"].shape[0]
        for name, c in contexts.items():
            if c is not None and (c.dim() != 3 or c.shape[0] != B or c.shape[2] != self.context_dim):
                raise ValueError(f"{name} must be (B={B}, T, {self.context_dim}), got {tuple(c.shape)}.")
        latent = contexts["core_latent_context"]
        if state is None:
            return latent
        if self.proprio is None:
            raise ValueError("this head was built with state_dim=0; pass state=None or build it with state_dim.")
        if state.shape != (B, self.state_dim):
            raise ValueError(f"state must be (B,S) = ({B}, {self.state_dim}), got {tuple(state.shape)}.")
        p = self.proprio(state.to(latent.dtype))[:, None]  # (B, 1, Dc)
        return torch.cat([latent, p], dim=1)

    def forward(
        self,
        prelude_context: Tensor,
        core_latent_context: Tensor,
        core_vision_context: Tensor | None,
        state: Tensor | None,
        *,
        prelude_vision_context: Tensor | None = None,
        num_iterations: int,
        backprop_depth: int | None = None,
        halting: HaltingStrategy | None = None,
        generator: torch.Generator | None = None,
        cache_context: bool = True,
    ) -> RecurrentOutput:
        """Run prelude, `num_iterations` core iterations (fewer per element if `halting` stops it), coda.

        prelude_context / prelude_vision_context: mid-layer latent / image tokens (the prelude's ungated and
        gated keys); core_latent_context / core_vision_context: the same at the last layer (core and coda)."""
        if num_iterations < 1:
            raise ValueError(f"num_iterations must be >= 1, got {num_iterations}.")
        named = {
            "prelude_context": prelude_context,
            "prelude_vision_context": prelude_vision_context,
            "core_latent_context": core_latent_context,
            "core_vision_context": core_vision_context,
        }
        train = halting is None and torch.is_grad_enabled()
        with torch.enable_grad() if train else torch.no_grad():
            latent_ctx = self._latent_keys(named, state)
            B = prelude_context.shape[0]
            queries = self.queries[None].expand(B, -1, -1).to(prelude_context.dtype)
            s_pre = self.prelude(queries, self.prelude.context(prelude_context, prelude_vision_context, False))
            core = [blk.context(latent_ctx, core_vision_context, cache_context) for blk in self.core]
            coda = self.coda.context(latent_ctx, core_vision_context, cache_context)
            s = self.init_state(B, generator, s_pre)
            if train:
                return self._train_path(s, s_pre, core, coda, num_iterations, backprop_depth)
            return self._infer_path(s, s_pre, core, coda, num_iterations, halting)

    def _train_path(self, s, s_pre, core, coda, r: int, backprop_depth: int | None) -> RecurrentOutput:
        n_no_grad, n_grad = split_depth(r, self.cfg.backprop_depth if backprop_depth is None else backprop_depth)
        frozen = [c.detach() for c in core]  # the no-grad iterations reuse the detached keys/values
        with torch.no_grad():  # truncated BPTT: these iterations build no autograd graph at all
            for _ in range(n_no_grad):
                s = self.core_step(s, s_pre, frozen)
        for _ in range(n_grad):  # each graded iteration adds its gradient into the one cached projection
            s = self.core_step(s, s_pre, core)
        B = s.shape[0]
        return RecurrentOutput(
            actions=self.decode(s, coda),
            iterations=torch.full((B,), r, dtype=torch.long, device=s.device),
            deltas=torch.full((B, r), float("nan"), device=s.device),
            latents=s,
        )

    def _infer_path(self, s, s_pre, core, coda, r: int, halting) -> RecurrentOutput:
        B, dev = s.shape[0], s.device
        deltas = torch.full((B, r), float("nan"), device=dev)
        if halting is None:  # fixed depth, decode once: the cheapest path (latency benchmarks)
            for _ in range(r):
                s = self.core_step(s, s_pre, core)
            iters = torch.full((B,), r, dtype=torch.long, device=dev)
            return RecurrentOutput(self.decode(s, coda), iters, deltas, s)
        halting.reset(B)
        rows = torch.arange(B, device=dev)  # the active batch: elements that have not halted yet
        iters = torch.zeros(B, dtype=torch.long, device=dev)
        latents, actions = s.clone(), None
        for k in range(1, r + 1):
            s = self.core_step(s, s_pre, core)
            a = self.decode(s, coda)
            latents[rows], iters[rows] = s, k
            if actions is None:  # k = 1: nothing to compare with yet (earliest stop is k = 2, as in RD-VLA's code)
                actions, halt = a.clone(), torch.zeros(len(rows), dtype=torch.bool, device=dev)
            else:
                deltas[rows, k - 1] = mean_squared_change(actions[rows], a)
                current = actions.clone()
                current[rows] = a
                # The strategy sees the whole batch (its patience streaks are per element); halted rows compare
                # their frozen chunk with itself and are ignored.
                halt = halting.check(actions, current)[0].to(dev)[rows]
                actions = current
            if bool(halt.all()):
                break
            if bool(halt.any()):  # compaction: the halted elements leave the active batch
                keep = ~halt
                rows, s, s_pre = rows[keep], s[keep], s_pre[keep]
                core, coda = [c.rows(keep) for c in core], coda.rows(keep)
        return RecurrentOutput(actions, iters, deltas, latents)

    def loss(
        self,
        actions: Tensor,
        prelude_context: Tensor,
        core_latent_context: Tensor,
        core_vision_context: Tensor | None,
        state: Tensor | None,
        action_is_pad: Tensor | None,
        *,
        prelude_vision_context: Tensor | None = None,
        num_iterations: int | None = None,
        backprop_depth: int | None = None,
        generator: torch.Generator | None = None,
        cache_context: bool = True,
    ) -> tuple[Tensor, RecurrentOutput]:
        """Per-sample L1 chunk loss (B,) at depth `num_iterations` (default: r ~ log-normal-Poisson, §2.4),
        and the head's output, whose `.iterations` is the depth used (for metrics)."""
        if num_iterations is None:
            c = self.cfg
            num_iterations = sample_depth(generator, c.mean_recurrence, c.depth_sigma, 1, c.max_depth)
        contexts = (prelude_context, core_latent_context, core_vision_context, state)
        out = self(
            *contexts,
            prelude_vision_context=prelude_vision_context,
            num_iterations=num_iterations,
            backprop_depth=backprop_depth,
            generator=generator,
            cache_context=cache_context,
        )
        return l1_chunk_loss(out.actions, actions, action_is_pad), out


def l1_chunk_loss(pred: Tensor, target: Tensor, is_pad: Tensor | None = None) -> Tensor:
    """Per-sample L1 (B,) between chunks (B,H,A), averaged over non-padded steps and action dims (RD-VLA code)."""
    if pred.shape != target.shape or pred.dim() != 3:
        raise ValueError(f"pred and target must both be (B,H,A); got {tuple(pred.shape)}, {tuple(target.shape)}.")
    return mean_over_valid_steps((pred - target).abs().mean(dim=-1), is_pad)  # (B, H) -> (B,)
