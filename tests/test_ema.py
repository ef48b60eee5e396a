"""EMA target encoder: frozen copy, exact update rule, no gradient, buffers copied."""

import pytest
import torch
from torch import nn

from latentvla.models.ema import ema_update, make_ema


def _net():
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(4, 5), nn.BatchNorm1d(5), nn.Linear(5, 2))


def test_make_ema_is_frozen_eval_copy():
    online = _net()
    target = make_ema(online)
    assert not target.training and all(not p.requires_grad for p in target.parameters())
    assert all(p.requires_grad for p in online.parameters())
    assert all(torch.equal(a, b) for a, b in zip(target.parameters(), online.parameters()))
    assert target[0].weight.data_ptr() != online[0].weight.data_ptr()


def test_one_update_is_exact_and_moves_toward_online():
    online = _net()
    target = make_ema(online)
    with torch.no_grad():
        for p in online.parameters():
            p.add_(torch.randn_like(p))
    online.train()(torch.randn(8, 4))  # change the BatchNorm running stats
    before = [p.clone() for p in target.parameters()]
    d = 0.9
    ema_update(target, online, d)
    for b, t, o in zip(before, target.parameters(), online.parameters()):
        torch.testing.assert_close(t, d * b + (1 - d) * o, rtol=0, atol=1e-6)
        assert (t - o).norm() < (b - o).norm()
    for tb, ob in zip(target.buffers(), online.buffers()):
        assert torch.equal(tb, ob)


def test_target_gets_no_gradient_and_rate_compounds():
    online = _net()
    target = make_ema(online)
    x = torch.randn(8, 4)
    (online(x).sum() + target.train()(x).sum()).backward()
    assert all(p.grad is None for p in target.parameters())
    assert all(p.grad is not None for p in online.parameters())
    with torch.no_grad():
        online[0].weight.fill_(1.0)
    w0 = target[0].weight.clone()
    for _ in range(10):
        ema_update(target, online, 0.999)
    torch.testing.assert_close(target[0].weight, 1.0 + 0.999**10 * (w0 - 1.0), rtol=0, atol=1e-5)


def test_mismatched_modules_raise():
    with pytest.raises(ValueError, match="make_ema"):
        ema_update(nn.Linear(2, 2), nn.Sequential(nn.Linear(2, 2)), 0.9)
    with pytest.raises(ValueError, match="decay"):
        ema_update(nn.Linear(2, 2), nn.Linear(2, 2), 1.5)
