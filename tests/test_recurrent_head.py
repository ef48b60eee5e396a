"""RD-VLA recurrent head: truncated BPTT, graph-free inference, per-element halting, seeding, overfit."""

import math

import pytest
import torch

from latentvla.models.halting import CosineConvergence, FixedDepth, MSEConvergence
from latentvla.models.recurrent_head import RecurrentDepthHead, RecurrentHeadConfig, l1_chunk_loss

torch.set_num_threads(1)
B, DC, A, S, K = 2, 16, 3, 5, 4


def _head(**kw):
    torch.manual_seed(0)
    cfg = RecurrentHeadConfig(width=32, heads=2, chunk=K, **kw)
    return RecurrentDepthHead(cfg, context_dim=DC, action_dim=A, state_dim=S)


def _ctx(seed=0, n=B):
    g = torch.Generator().manual_seed(seed)
    pc, lc, vc = (torch.randn(n, 5, DC, generator=g) for _ in range(3))
    return pc, lc, vc, torch.randn(n, S, generator=g), torch.rand(n, K, A, generator=g) * 2 - 1


def _record_core(monkeypatch, head, perturb_at=None):
    """Wrap core_step: record the state entering each iteration and which iteration outputs get a gradient."""
    entering, grad_hits, orig = [], [], head.core_step

    def wrapped(s, s_pre, core):
        if perturb_at is not None and len(entering) == perturb_at:
            s = s + 0.5 * torch.randn_like(s)  # s is detached here, so this stays outside the graph
        entering.append(s)
        out = orig(s, s_pre, core)
        if out.requires_grad:
            idx = len(entering)
            out.register_hook(lambda g: grad_hits.append(idx))
        return out

    monkeypatch.setattr(head, "core_step", wrapped)
    return entering, grad_hits


def _grads(head):
    return {n: p.grad.clone() for n, p in head.named_parameters() if p.grad is not None}


def test_tbptt_gradient_only_through_last_d_iterations(monkeypatch):
    head = _head()
    pc, lc, vc, st, act = _ctx()
    entering, grad_hits = _record_core(monkeypatch, head)
    kw = {"prelude_vision_context": vc[:, 1:], "num_iterations": 20, "backprop_depth": 8}
    loss, out = head.loss(act, pc, lc, vc, st, None, **kw)
    assert len(entering) == 20 and out.iterations.tolist() == [20, 20]
    # Iterations 1..12 ran under no_grad: their outputs (= states entering 2..13) carry no graph.
    for k in range(1, 13):
        assert entering[k].grad_fn is None and not entering[k].requires_grad, k
    for k in range(13, 20):
        assert entering[k].grad_fn is not None, k
    loss.mean().backward()
    assert sorted(grad_hits) == list(range(13, 21))  # backward visits exactly the last 8 iterations
    base = _grads(head)
    assert all(torch.isfinite(g).all() for g in base.values())
    # Every parameter learns (the prelude's gated vision path too), the core through the last 8 steps.
    assert set(base) == {n for n, _ in head.named_parameters()}

    # Perturb the detached state entering iteration 13: same params get gradients, still finite, values move.
    head.zero_grad(set_to_none=True)
    monkeypatch.undo()
    _record_core(monkeypatch, head, perturb_at=12)
    loss2, _ = head.loss(act, pc, lc, vc, st, None, **kw)
    loss2.mean().backward()
    pert = _grads(head)
    assert set(pert) == set(base)
    assert all(torch.isfinite(g).all() for g in pert.values())
    assert any(not torch.allclose(base[n], pert[n]) for n in base)


def test_short_depth_backprops_through_all_iterations(monkeypatch):
    head = _head()
    pc, lc, vc, st, act = _ctx()
    _, grad_hits = _record_core(monkeypatch, head)
    loss, _ = head.loss(act, pc, lc, vc, st, None, num_iterations=3, backprop_depth=8)
    loss.mean().backward()
    assert sorted(grad_hits) == [1, 2, 3]


@pytest.mark.parametrize("halting", [None, FixedDepth()])
def test_inference_at_fixed_depth_builds_no_graph(halting):
    head = _head()
    pc, lc, vc, st, _ = _ctx()
    if halting is None:
        with torch.no_grad():
            out = head(pc, lc, vc, st, num_iterations=6)
        assert torch.isnan(out.deltas).all()  # decoded once at the end: no per-iteration deltas
    else:  # a halting strategy selects the inference path even with grad enabled
        out = head(pc, lc, vc, st, num_iterations=6, halting=halting)
        assert torch.isnan(out.deltas[:, 0]).all() and torch.isfinite(out.deltas[:, 1:]).all()
    assert out.actions.grad_fn is None and not out.actions.requires_grad and out.latents.grad_fn is None
    assert out.actions.shape == (B, K, A) and out.iterations.tolist() == [6, 6] and out.deltas.shape == (B, 6)


def test_fixed_depth_paths_agree():
    """Decoding every iteration (FixedDepth) and once at the end give the same chunk at the same depth."""
    head = _head()
    pc, lc, vc, st, _ = _ctx()
    with torch.no_grad():
        a = head(pc, lc, vc, st, num_iterations=5, generator=torch.Generator().manual_seed(3)).actions
    b = head(pc, lc, vc, st, num_iterations=5, halting=FixedDepth(), generator=torch.Generator().manual_seed(3))
    torch.testing.assert_close(a, b.actions)


def test_halting_is_per_element_with_designed_chunks(monkeypatch):
    """Element 0's chunk converges at iteration 3, element 1's at 6: each stops there, actions frozen, and a
    halted element leaves the active batch (compaction): the core computes 3 x 2 + 3 x 1 rows, not 6 x 2."""
    head = _head()
    pc, lc, vc, st, _ = _ctx()
    values = {0: [0.0, 1.0, 1.001, 5.0, 9.0, 13.0, 17.0, 21.0], 1: [0.0, 1.0, 2.0, 3.0, 4.0, 4.001, 4.002, 4.003]}
    calls = []
    core_rows = []
    orig_core = head.core_step

    def fake_decode(s, coda):
        k = len(calls)
        calls.append(k)
        active = range(B) if s.shape[0] == B else [1]  # element 0 halts first
        return torch.stack([torch.full((K, A), values[b][k]) for b in active])

    monkeypatch.setattr(head, "decode", fake_decode)
    monkeypatch.setattr(head, "core_step", lambda s, *a: core_rows.append(s.shape[0]) or orig_core(s, *a))
    out = head(pc, lc, vc, st, num_iterations=8, halting=MSEConvergence(delta=1e-4))
    assert out.iterations.tolist() == [3, 6]
    assert core_rows == [2, 2, 2, 1, 1, 1]  # the loop stops once every element has halted
    torch.testing.assert_close(out.actions[0], torch.full((K, A), 1.001))
    torch.testing.assert_close(out.actions[1], torch.full((K, A), 4.001))
    assert math.isnan(out.deltas[0, 3]) and math.isnan(out.deltas[1, 6])  # not computed after halting
    assert out.deltas[0, 2] < 1e-4 <= out.deltas[0, 1]


@pytest.mark.parametrize("strategy", ["mse", "cosine"])
def test_halting_stops_at_first_iteration_meeting_criterion(strategy):
    """Real dynamics: the halting run stops each element at the first k >= 2 whose criterion holds in a fixed run."""
    head = _head()
    pc, lc, vc, st, _ = _ctx(n=4)
    R = 12
    g = lambda: torch.Generator().manual_seed(5)  # noqa: E731
    fixed = head(pc, lc, vc, st, num_iterations=R, halting=FixedDepth(), generator=g())
    if strategy == "mse":
        thr = float(fixed.deltas[:, 1:].median())
        halting, met = MSEConvergence(delta=thr), fixed.deltas < thr
    else:  # recompute cosine scores from per-iteration chunks of a fixed run
        chunks = [
            head(pc, lc, vc, st, num_iterations=k, halting=FixedDepth(), generator=g()).actions
            for k in range(1, R + 1)
        ]
        cos = torch.stack(
            [
                torch.nn.functional.cosine_similarity(chunks[k].flatten(1), chunks[k - 1].flatten(1))
                for k in range(1, R)
            ],
            1,
        )
        thr = float(cos.median())
        halting, met = (
            CosineConvergence(threshold=thr),
            torch.cat([torch.zeros(4, 1, dtype=torch.bool), cos > thr], 1),
        )
    out = head(pc, lc, vc, st, num_iterations=R, halting=halting, generator=g())
    expect = [int(row.nonzero()[0]) + 1 if row.any() else R for row in met]
    assert out.iterations.tolist() == expect
    assert len(set(expect)) > 1  # elements halt at different depths


def test_scratchpad_is_fresh_per_call_and_seedable():
    head = _head()
    pc, lc, vc, st, _ = _ctx()
    with torch.no_grad():
        a = head(pc, lc, vc, st, num_iterations=2, generator=torch.Generator().manual_seed(1)).actions
        b = head(pc, lc, vc, st, num_iterations=2, generator=torch.Generator().manual_seed(1)).actions
        c = head(pc, lc, vc, st, num_iterations=2).actions
        d = head(pc, lc, vc, st, num_iterations=2).actions
    assert torch.equal(a, b) and not torch.equal(c, d)
    s0 = head.init_state(20000, torch.Generator().manual_seed(0), pc)
    assert float(s0.abs().max()) <= 3 * 0.632 + 1e-6
    assert (
        abs(float(s0.std()) - 0.632 * 0.986) < 0.01
    )  # ±3σ truncation shrinks the std by 1.4 %ation shrinks the std by 1.4 %


def test_init_and_gate():
    head = _head()
    assert all(float(m.vision_gate) == 0.0 for m in [head.prelude, head.coda, *head.core])
    D = head.cfg.width
    std = math.sqrt(2 / (5 * D))
    assert abs(float(head.adapter.weight.std()) - std * 0.986) < 0.2 * std  # trunc ±3σ shrinks std by ~1.4 %
    assert float(head.core[0].ffn_down.weight.std()) < 0.3 * std  # output layers scaled by 1/sqrt(32 * 2)
    assert float(head.inject_gamma) == 1.0


def test_l1_loss_masks_padding_and_bad_inputs_raise():
    pred, tgt = torch.zeros(2, 4, 3), torch.ones(2, 4, 3)
    pad = torch.tensor([[False, False, True, True], [False] * 4])
    torch.testing.assert_close(l1_chunk_loss(pred, tgt, pad), torch.ones(2))
    head = _head()
    pc, lc, vc, st, _ = _ctx()
    with pytest.raises(ValueError, match="num_iterations"):
        head(pc, lc, vc, st, num_iterations=0)
    with pytest.raises(ValueError, match="core_vision_context"):
        head(pc, lc, vc[..., :3], st, num_iterations=1)
    with pytest.raises(ValueError, match="heads"):
        RecurrentHeadConfig(width=30, heads=4)


@pytest.mark.slow
def test_overfits_and_more_iterations_lower_the_error():
    """Random-depth training (mean 32, TBPTT 4) on 6 pairs: L1 falls >= 90 %; at test time 1 -> 4 -> 8 iterations
    monotonically lower the error (the RD-VLA Fig. 4 effect in miniature)."""
    torch.manual_seed(0)
    n = 6
    cfg = RecurrentHeadConfig(width=32, heads=2, chunk=K, mean_recurrence=32, backprop_depth=4, max_depth=48)
    head = RecurrentDepthHead(cfg, context_dim=DC, action_dim=A, state_dim=S)
    pc, lc, vc, st, act = _ctx(seed=0, n=n)

    def err(r):
        with torch.no_grad():
            out = head(pc, lc, vc, st, num_iterations=r, generator=torch.Generator().manual_seed(9))
        return float((out.actions - act).abs().mean())

    start = err(8)
    opt = torch.optim.AdamW(head.parameters(), lr=3e-3)
    depth_gen = torch.Generator().manual_seed(1)
    for _ in range(180):
        loss, _ = head.loss(act, pc, lc, vc, st, None, generator=depth_gen)
        opt.zero_grad()
        loss.mean().backward()
        opt.step()
    e1, e4, e8 = err(1), err(4), err(8)
    print(f"RD L1 at r=8: {start:.4f} -> {e8:.4f}; after training r=1/4/8: {e1:.4f} / {e4:.4f} / {e8:.4f}")
    assert e8 < 0.1 * start
    assert e1 > e4 > e8
