"""DiT flow-matching expert: shapes, seeding, masking, AdaLN-Zero init, and a CPU overfit."""

import pytest
import torch

from latentvla.models.action_expert import ActionExpertConfig, FlowMatchingExpert

torch.set_num_threads(1)
B, T, DC, H, A, S = 3, 6, 16, 4, 3, 5


def _expert(**kw):
    torch.manual_seed(0)
    cfg = ActionExpertConfig(width=32, depth=4, heads=2, num_future_tokens=4, **kw)
    return FlowMatchingExpert(cfg, context_dim=DC, action_dim=A, horizon=H, state_dim=S)


def _inputs(seed=0):
    g = torch.Generator().manual_seed(seed)
    return (
        torch.randn(B, T, DC, generator=g),
        torch.randn(B, S, generator=g),
        torch.rand(B, H, A, generator=g) * 2 - 1,
    )


def test_shapes_and_seeded_determinism():
    e = _expert()
    ctx, st, act = _inputs()
    loss1 = e.loss(act, ctx, None, st, None, generator=torch.Generator().manual_seed(1))
    loss2 = e.loss(act, ctx, None, st, None, generator=torch.Generator().manual_seed(1))
    assert loss1.shape == (B,) and torch.equal(loss1, loss2)
    s1 = e.sample(ctx, None, st, generator=torch.Generator().manual_seed(2))
    s2 = e.sample(ctx, None, st, generator=torch.Generator().manual_seed(2))
    assert s1.shape == (B, H, A) and torch.equal(s1, s2)
    assert not torch.equal(s1, e.sample(ctx, None, st, generator=torch.Generator().manual_seed(3)))


def test_adaln_zero_makes_blocks_identity_at_init():
    """With zero modulation every block is the identity, so velocity = decoder(action tokens) ignores context."""
    e = _expert()
    ctx, st, act = _inputs()
    t = torch.full((B,), 0.5)
    v1 = e.velocity(act, t, ctx, None, st)
    v2 = e.velocity(act, t, torch.randn_like(ctx), None, st)
    torch.testing.assert_close(v1, v2)


def test_context_mask_hides_padded_keys():
    e = _expert()
    for p in e.parameters():  # break AdaLN-Zero so context matters
        torch.nn.init.normal_(p, std=0.2)
    ctx, st, act = _inputs()
    mask = torch.ones(B, T, dtype=torch.bool)
    mask[:, :2] = False
    t = torch.full((B,), 0.3)
    ctx2 = ctx.clone()
    ctx2[:, :2] = 100.0
    torch.testing.assert_close(e.velocity(act, t, ctx, mask, st), e.velocity(act, t, ctx2, mask, st))
    assert not torch.allclose(e.velocity(act, t, ctx, None, st), e.velocity(act, t, ctx2, None, st))


def test_state_token_optional_and_validated():
    e = _expert()
    ctx, st, act = _inputs()
    assert e.sample(ctx, None, None, num_steps=2).shape == (B, H, A)  # LaRA's released runs pass state=None
    with pytest.raises(ValueError, match="state"):
        e.sample(ctx, None, torch.zeros(B, S + 1))
    with pytest.raises(ValueError, match="state_dim"):
        FlowMatchingExpert(ActionExpertConfig(), context_dim=DC, action_dim=A, horizon=H, state_dim=0)
    with pytest.raises(ValueError, match="divisible"):
        ActionExpertConfig(width=30, heads=4)


@pytest.mark.slow
def test_overfits_a_handful_of_pairs():
    """Deterministic (context -> chunk) map: the FM loss drops >= 90 % and 4-step samples land on the targets."""
    torch.manual_seed(0)
    n = 6
    cfg = ActionExpertConfig(width=64, depth=2, heads=4, num_future_tokens=2, use_state_token=False)
    e = FlowMatchingExpert(cfg, context_dim=DC, action_dim=A, horizon=H)
    g = torch.Generator().manual_seed(0)
    ctx, act = torch.randn(n, T, DC, generator=g), torch.rand(n, H, A, generator=g) * 2 - 1
    opt = torch.optim.AdamW(e.parameters(), lr=3e-3)
    eval_g = lambda: torch.Generator().manual_seed(123)  # noqa: E731
    with torch.no_grad():
        start = e.loss(act.repeat(8, 1, 1), ctx.repeat(8, 1, 1), None, None, None, generator=eval_g()).mean()
        err0 = (e.sample(ctx, None, None, generator=eval_g()) - act).abs().mean()
    for _ in range(400):
        loss = e.loss(act.repeat(8, 1, 1), ctx.repeat(8, 1, 1), None, None, None).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
    with torch.no_grad():
        end = e.loss(act.repeat(8, 1, 1), ctx.repeat(8, 1, 1), None, None, None, generator=eval_g()).mean()
        err = (e.sample(ctx, None, None, generator=eval_g()) - act).abs().mean()
    print(f"fm loss {float(start):.4f} -> {float(end):.4f}; sample L1 {float(err0):.4f} -> {float(err):.4f}")
    assert end < 0.1 * start, (float(start), float(end))
    assert err < 0.1 * err0, (float(err0), float(err))
