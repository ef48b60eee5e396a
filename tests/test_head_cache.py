"""Per-call context cache of both action heads: the fixed context is projected into keys/values once
per call, and the cached path equals the re-projecting reference (outputs and gradients, several depths, with
and without halting, through truncated BPTT; Euler steps and repeated noise draws of the flow expert)."""

import pytest
import torch

from latentvla.models.action_expert import ActionExpertConfig, FlowMatchingExpert
from latentvla.models.halting import MSEConvergence
from latentvla.models.recurrent_head import RecurrentDepthHead, RecurrentHeadConfig

torch.set_num_threads(1)
B, DC, A, S, K = 3, 16, 3, 5, 4


def _head():
    torch.manual_seed(0)
    cfg = RecurrentHeadConfig(width=32, heads=2, chunk=K, backprop_depth=4)
    head = RecurrentDepthHead(cfg, context_dim=DC, action_dim=A, state_dim=S).double()
    with torch.no_grad():  # open the gates so the vision keys matter (tanh(0) = 0 makes their logits 0)
        for blk in [head.prelude, *head.core, head.coda]:
            blk.vision_gate.fill_(0.7)
    return head


def _ctx(seed=0):
    g = torch.Generator().manual_seed(seed)
    pl, pv, lc, vc = (torch.randn(B, n, DC, generator=g, dtype=torch.float64) for n in (5, 7, 5, 7))
    st = torch.randn(B, S, generator=g, dtype=torch.float64)
    return pl, pv, lc, vc, st, (torch.rand(B, K, A, generator=g, dtype=torch.float64) * 2 - 1)


def _count_projections(blocks):
    """Number of calls of each block's context projection (kv_latent) during a head call."""
    counts = [0] * len(blocks)
    for i, blk in enumerate(blocks):
        blk.kv_latent.register_forward_hook(lambda *_, i=i: counts.__setitem__(i, counts[i] + 1))
    return counts


@pytest.mark.parametrize("r", [1, 5, 12])
def test_recurrent_projects_context_once_per_call(r):
    """Fails on the re-projecting head: there every core block projects its context at every iteration."""
    head = _head()
    pl, pv, lc, vc, st, _ = _ctx()
    counts = _count_projections([*head.core, head.coda])
    with torch.no_grad():
        head(pl, lc, vc, st, num_iterations=r)
    assert counts == [1] * len(head.core) + [1]
    counts[:] = [0] * len(counts)
    head(pl, lc, vc, st, num_iterations=r, halting=MSEConvergence(delta=1e-12))  # decodes every iteration
    assert counts == [1] * len(head.core) + [1]


@pytest.mark.parametrize("r", [1, 5, 12])
def test_recurrent_cached_equals_uncached_inference(r):
    head = _head()
    pl, pv, lc, vc, st, _ = _ctx()
    runs = {}
    for cache in (True, False):
        with torch.no_grad():
            fixed = head(
                pl,
                lc,
                vc,
                st,
                prelude_vision_context=pv,
                num_iterations=r,
                cache_context=cache,
                generator=torch.Generator().manual_seed(1),
            )
        halted = head(
            pl,
            lc,
            vc,
            st,
            prelude_vision_context=pv,
            num_iterations=r,
            cache_context=cache,
            halting=MSEConvergence(delta=1.2e-3),
            generator=torch.Generator().manual_seed(1),
        )
        runs[cache] = (fixed, halted)
    for a, b in zip(runs[True], runs[False], strict=True):
        torch.testing.assert_close(a.actions, b.actions, atol=1e-12, rtol=0)
        torch.testing.assert_close(a.latents, b.latents, atol=1e-12, rtol=0)
        torch.testing.assert_close(a.deltas, b.deltas, atol=1e-12, rtol=0, equal_nan=True)
        assert torch.equal(a.iterations, b.iterations)
    if r == 12:
        assert len(set(runs[True][1].iterations.tolist())) > 1  # halting at different depths was exercised


@pytest.mark.parametrize("r", [3, 4, 11])
def test_recurrent_cached_equals_uncached_gradients_through_tbptt(r):
    """r = 3: every iteration graded; r = 11: 7 no-grad iterations on the detached copy, 4 graded ones whose
    gradients all accumulate into the one projection. Parameter and context gradients match the reference."""
    head = _head()
    grads = {}
    for cache in (True, False):
        pl, pv, lc, vc, st, act = (t.clone().requires_grad_(t.dim() == 3) for t in _ctx())
        head.zero_grad(set_to_none=True)
        loss, out = head.loss(
            act,
            pl,
            lc,
            vc,
            st,
            None,
            prelude_vision_context=pv,
            num_iterations=r,
            cache_context=cache,
            generator=torch.Generator().manual_seed(2),
        )
        loss.sum().backward()
        grads[cache] = {n: p.grad.clone() for n, p in head.named_parameters()}
        grads[cache].update({f"input{i}": t.grad.clone() for i, t in enumerate((pl, pv, lc, vc))})
        assert out.iterations.tolist() == [r] * B
    assert set(grads[True]) == set(grads[False])
    for n in grads[True]:
        torch.testing.assert_close(grads[True][n], grads[False][n], atol=1e-10, rtol=1e-8, msg=n)
    assert grads[True]["core.0.kv_vision.weight"].abs().sum() > 0
    assert grads[True]["prelude.kv_vision.weight"].abs().sum() > 0  # the prelude's gated vision path learns


def test_halting_compaction_matches_each_element_alone():
    """With compaction every element's result equals running it alone at a fixed depth = its halting depth."""
    head = _head()
    pl, pv, lc, vc, st, _ = _ctx(3)
    g = lambda: torch.Generator().manual_seed(4)  # noqa: E731
    out = head(pl, lc, vc, st, num_iterations=12, halting=MSEConvergence(delta=1.1e-3), generator=g())
    assert len(set(out.iterations.tolist())) > 1  # elements halt at different depths
    s0 = head.init_state(B, g(), pl)
    for b in range(B):
        k = int(out.iterations[b])
        with torch.no_grad():
            head_init = head.init_state  # the same S_0 row the batched call drew

            def one_row(batch, generator, like, b=b):
                return s0[b : b + 1]

            head.init_state = one_row
            alone = head(pl[b : b + 1], lc[b : b + 1], vc[b : b + 1], st[b : b + 1], num_iterations=k)
            head.init_state = head_init
        torch.testing.assert_close(out.actions[b], alone.actions[0], atol=1e-10, rtol=0)
        torch.testing.assert_close(out.latents[b], alone.latents[0], atol=1e-10, rtol=0)


# ------------------------------------------------------------------------------------------- flow expert

H, T = 4, 6


def _expert(**kw):
    torch.manual_seed(0)
    cfg = ActionExpertConfig(width=32, depth=4, heads=2, num_future_tokens=4, **kw)
    return FlowMatchingExpert(cfg, context_dim=DC, action_dim=A, horizon=H, state_dim=S).double()


def _flow_inputs(seed=0):
    g = torch.Generator().manual_seed(seed)
    ctx = torch.randn(B, T, DC, generator=g, dtype=torch.float64)
    mask = torch.ones(B, T, dtype=torch.bool)
    mask[0, -2:] = False
    st = torch.randn(B, S, generator=g, dtype=torch.float64)
    return ctx, mask, st, torch.rand(B, H, A, generator=g, dtype=torch.float64) * 2 - 1


def _cross_kv_counts(expert):
    cross = [blk for blk in expert.blocks if blk.cross]
    counts = [0] * len(cross)
    for i, blk in enumerate(cross):
        blk.kv.register_forward_hook(lambda *_, i=i: counts.__setitem__(i, counts[i] + 1))
    return counts


def test_flow_sample_projects_context_once_and_matches_reference():
    expert = _expert()
    ctx, mask, st, _ = _flow_inputs()
    noise = torch.randn(B, H, A, generator=torch.Generator().manual_seed(5), dtype=torch.float64)
    counts = _cross_kv_counts(expert)
    cached = expert.sample(ctx, mask, st, num_steps=4, noise=noise)
    assert counts == [1, 1]  # once per call, not once per Euler step
    reference = expert.sample(ctx, mask, st, num_steps=4, noise=noise, cache_context=False)
    assert counts == [5, 5]
    torch.testing.assert_close(cached, reference, atol=1e-12, rtol=0)


def test_flow_repeats_draw_fresh_noise_per_copy_and_project_once():
    """expert.repeats = R: R (t, noise) draws per backbone forward (GR00T/LaRA repeated_diffusion_steps); the
    per-sample loss is their mean, the context is projected once, gradients equal the re-projecting reference."""
    R = 4
    expert = _expert(repeats=R)
    ctx, mask, st, act = _flow_inputs()
    counts = _cross_kv_counts(expert)
    grads, losses = {}, {}
    for cache in (True, False):
        c = ctx.clone().requires_grad_(True)
        expert.zero_grad(set_to_none=True)
        loss = expert.loss(act, c, mask, st, None, generator=torch.Generator().manual_seed(6), cache_context=cache)
        loss.sum().backward()
        losses[cache] = loss
        grads[cache] = {n: p.grad.clone() for n, p in expert.named_parameters() if p.grad is not None}
        grads[cache]["context"] = c.grad.clone()
    assert counts == [2, 2]  # one projection per call with the cache, one per call on R x the rows without
    assert losses[True].shape == (B,)
    torch.testing.assert_close(losses[True], losses[False], atol=1e-12, rtol=0)
    for n in grads[True]:
        torch.testing.assert_close(grads[True][n], grads[False][n], atol=1e-10, rtol=1e-8, msg=n)
    # The mean over R draws: recompute each draw explicitly from the same generator stream.
    g = torch.Generator().manual_seed(6)
    from latentvla.models import flow_matching as fm

    rep = lambda x: x.repeat_interleave(R, 0)  # noqa: E731
    t = fm.sample_time(B * R, g, kind=expert.cfg.time_sampling).double()
    noise = torch.randn((B * R, H, A), generator=g).double()
    x_t = fm.interpolate(noise, rep(act), t)
    with torch.no_grad():
        pred = expert.velocity(x_t, t, rep(ctx), rep(mask), rep(st))
    per_draw = fm.flow_matching_loss(pred, fm.target_velocity(noise, rep(act)), None)
    torch.testing.assert_close(losses[True].detach(), per_draw.view(B, R).mean(1), atol=1e-12, rtol=0)
    assert per_draw.view(B, R).std(1).min() > 0  # the draws differ
