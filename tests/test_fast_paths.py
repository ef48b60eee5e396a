"""The training speed-ups change nothing that is learned: on a fixed batch, every curriculum stage of
`lara` and `rdvla` gives the same per-sample losses and gradients through the fast paths (fused RMSNorm, the
vectorised sequence layout with the memoised tokenizer, skipped identity pooling, foreach EMA) as through the
reference implementations they replaced, and fused AdamW takes the same steps as the per-tensor loop."""

from __future__ import annotations

import contextlib

import pytest
import torch
import torch.nn.functional as F

from latentvla.data.dataset import make_normalizer
from latentvla.data.lerobot import LeRobotDatasetReader
from latentvla.data.synthetic import write_synthetic_dataset
from latentvla.models import action_expert as expert_lib
from latentvla.models import ema as ema_lib
from latentvla.models import recurrent_head as head_lib
from latentvla.models import recurrent_ops as ops
from latentvla.models import sequence as seq_lib
from latentvla.models import vision as vision_lib
from latentvla.models.backbones import scratch as backbone_lib
from latentvla.train.optim import build_optimizer, no_decay_param_ids
from policy_helpers import policy_and_batches
from test_sequence import _reference_build_sequence


def _reference_head_rope(x, base):
    """The recurrent head's RoPE as it was: cos/sin rebuilt at every call, rotate-half with a negation."""
    K, d = x.shape[-2], x.shape[-1]
    inv = 1.0 / base ** (torch.arange(0, d, 2, device=x.device, dtype=torch.float32) / d)
    ang = torch.arange(K, device=x.device, dtype=torch.float32)[:, None] * inv[None]
    cos, sin = torch.cat([ang, ang], -1).cos().to(x.dtype), torch.cat([ang, ang], -1).sin().to(x.dtype)
    x1, x2 = x[..., : d // 2], x[..., d // 2 :]
    return x * cos + torch.cat([-x2, x1], dim=-1) * sin


def _reference_modulate(x, shift, scale):
    return x * (1 + scale[:, None]) + shift[:, None]


def _reference_dit_attend(self, x, context_kv, key_mask, repeats=1):
    """The DiT block's attention as it was: keys/values already copied to every query row."""
    assert repeats == 1
    B, L, W = x.shape
    k, v = context_kv if self.cross else self.project(x)
    mask = key_mask[:, None, None, :] if (self.cross and key_mask is not None) else None
    y = F.scaled_dot_product_attention(self._split(self.q(x)), k, v, attn_mask=mask)
    return self.out(y.transpose(1, 2).reshape(B, L, W))


def _reference_dit_forward(self, x, c, context_kv, key_mask, repeats=1):
    shift1, scale1, gate1, shift2, scale2, gate2 = self.ada(F.silu(c)).chunk(6, dim=-1)
    x = x + gate1[:, None] * self._attend(_reference_modulate(self.norm1(x), shift1, scale1), context_kv, key_mask)
    return x + gate2[:, None] * self.mlp(_reference_modulate(self.norm2(x), shift2, scale2))


_fast_velocity = expert_lib.FlowMatchingExpert._velocity


def _reference_velocity(self, x_t, t, context_kv, key_mask, state, repeats=1):
    """The R noise draws as they were: the context keys/values and key mask copied R times."""
    rep = lambda z: z if z is None or repeats == 1 else z.repeat_interleave(repeats, dim=0)  # noqa: E731
    kv = [None if p is None else (rep(p[0]), rep(p[1])) for p in context_kv]
    return _fast_velocity(self, x_t, t, kv, rep(key_mask), state, 1)


def _patch_session_references(mp) -> None:
    mp.setattr(head_lib, "rope", _reference_head_rope)
    mp.setattr(expert_lib, "_modulate", _reference_modulate)
    mp.setattr(expert_lib.DiTBlock, "_attend", _reference_dit_attend)
    mp.setattr(expert_lib.DiTBlock, "forward", _reference_dit_forward)
    mp.setattr(expert_lib.FlowMatchingExpert, "_velocity", _reference_velocity)


@contextlib.contextmanager
def session_reference():
    """Only the reference paths of the latest speed-ups (the in-process A/B timing in docs/profile.md)."""
    mp = pytest.MonkeyPatch()
    _patch_session_references(mp)
    try:
        yield
    finally:
        mp.undo()


@contextlib.contextmanager
def reference_paths():
    """Swap the original (slow) implementations back in."""
    mp = pytest.MonkeyPatch()

    def rms(self, x):
        return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + self.eps) * self.weight

    def build(
        tok,
        instructions,
        explicit_cot=None,
        n_latent=0,
        n_img_next=16,
        action_token_ids=None,
        n_query=0,
        *,
        n_image,
    ):
        return _reference_build_sequence(
            tok, instructions, explicit_cot, n_latent, n_img_next, action_token_ids, n_query, n_image
        )

    def grid_tokens(self, fmap):
        fmap = F.adaptive_avg_pool2d(fmap, self.grid)
        return (self.proj(fmap.permute(0, 2, 3, 1)) + self.row + self.col).flatten(1, 2)

    mp.setattr(backbone_lib.RMSNorm, "forward", rms)
    _patch_session_references(mp)
    mp.setattr(seq_lib, "build_sequence", build)
    mp.setattr(vision_lib.GridTokens, "forward", grid_tokens)
    try:
        yield
    finally:
        mp.undo()


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    root = write_synthetic_dataset(
        tmp_path_factory.mktemp("fast") / "ds", num_episodes=2, length=10, image_size=32
    )
    reader = LeRobotDatasetReader(root)
    return reader, make_normalizer(reader)


def _policy_and_batch(data, preset):
    policy, (batch,) = policy_and_batches(*data, preset, indices=((0, 3, 9, 14),))
    return policy, batch


def _loss_and_grads(model, batch, stage):
    model.zero_grad(set_to_none=True)
    loss, _ = model.compute_loss(batch, stage, generator=torch.Generator().manual_seed(3))
    loss.mean().backward()
    grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
    return loss.detach(), grads


@pytest.mark.parametrize("preset", ["lara", "rdvla"])
def test_every_stage_same_loss_and_gradients_as_the_reference_path(data, preset):
    policy, batch = _policy_and_batch(data, preset)
    model = policy.model.train()
    for stage in policy.config.curriculum.stages():
        fast, g_fast = _loss_and_grads(model, batch, stage)
        with reference_paths():
            ref, g_ref = _loss_and_grads(model, batch, stage)
        torch.testing.assert_close(fast, ref, rtol=1e-5, atol=1e-6, msg=f"{preset} {stage.name}")
        assert g_fast.keys() == g_ref.keys()
        for name in g_ref:
            torch.testing.assert_close(g_fast[name], g_ref[name], rtol=1e-4, atol=1e-6, msg=name)


def test_fused_adamw_takes_the_same_steps_as_the_per_tensor_loop(data):
    policy, batch = _policy_and_batch(data, "lara-no-cot")
    model = policy.model.train()
    stage = policy.config.curriculum.stages()[0]
    start = {k: v.clone() for k, v in model.state_dict().items()}
    finals = []
    for fused in (True, False):
        model.load_state_dict(start)
        opt = build_optimizer(model.param_groups(), 1e-3, 1e-3, 1e-4, no_decay_param_ids(model))
        assert all(g.get("fused") for g in opt.param_groups)
        if not fused:
            for g in opt.param_groups:
                g["fused"] = False
        for step in range(3):
            opt.zero_grad()
            loss, _ = model.compute_loss(batch, stage, generator=torch.Generator().manual_seed(step))
            loss.mean().backward()
            opt.step()
        finals.append({k: v.clone() for k, v in model.state_dict().items()})
    moved = [k for k in start if not torch.equal(start[k], finals[0][k])]
    assert len(moved) > 10
    # Adam divides by sqrt(v): float rounding of near-zero gradients moves a weight by up to ~1e-6 here, against
    # steps of up to lr = 1e-3 per update; 1e-5 is 1 % of one step.
    for k in finals[0]:
        torch.testing.assert_close(finals[0][k], finals[1][k], rtol=1e-5, atol=1e-5, msg=k)


def test_foreach_ema_equals_the_per_parameter_lerp():
    online, target = torch.nn.Linear(5, 3), torch.nn.Linear(5, 3)
    expected = {
        n: t.detach() * 0.9 + o.detach() * 0.1
        for (n, t), (_, o) in zip(target.named_parameters(), online.named_parameters())
    }
    ema_lib.ema_update(target, online, 0.9)
    for n, p in target.named_parameters():
        torch.testing.assert_close(p.detach(), expected[n])


def test_grid_tokens_skip_identity_pooling_exactly():
    tokens = vision_lib.GridTokens(8, 6, grid=4)
    fmap = torch.randn(2, 8, 4, 4)
    expected = (tokens.proj(F.adaptive_avg_pool2d(fmap, 4).permute(0, 2, 3, 1)) + tokens.row + tokens.col).flatten(
        1, 2
    )
    torch.testing.assert_close(tokens(fmap), expected, rtol=0, atol=0)
    assert tokens(torch.randn(2, 8, 8, 8)).shape == (2, 16, 6)  # a larger map is still pooled to the grid


def test_head_rope_tables_are_exact_and_usable_in_training_after_inference():
    x = torch.randn(3, 4, 8, 16)
    with torch.inference_mode():  # the tables' first use is a sampling call: they must not be inference tensors
        torch.testing.assert_close(ops.rope(x, 10000.0), _reference_head_rope(x, 10000.0), rtol=0, atol=0)
    y = x.clone().requires_grad_(True)
    ops.rope(y, 10000.0).square().sum().backward()  # raises if a table were an inference tensor
    z = x.clone().requires_grad_(True)
    _reference_head_rope(z, 10000.0).square().sum().backward()
    torch.testing.assert_close(y.grad, z.grad, rtol=0, atol=0)
    assert ops.rope(x.double(), 10000.0).dtype == torch.float64  # one table per dtype
