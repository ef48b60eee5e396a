"""Halting strategies (per-element, patience, factory) and adaptive execution horizons (incl. direction)."""

import pytest
import torch

from latentvla.models.execution import (
    BinaryThresholdHorizon,
    FixedHorizon,
    LinearDecayHorizon,
    make_horizon,
)
from latentvla.models.halting import CosineConvergence, FixedDepth, MSEConvergence, make_halting


def _pair(changes):
    """prev/current (B, 2, 3) chunks whose per-element mean squared change equals `changes`."""
    prev = torch.zeros(len(changes), 2, 3)
    return prev, prev + torch.tensor(changes).sqrt()[:, None, None]


def test_mse_halts_per_element_with_mean_not_sum():
    h = MSEConvergence(delta=1e-3)
    h.reset(3)
    halt, score = h.check(*_pair([5e-4, 2e-3, 1e-3]))
    assert halt.tolist() == [True, False, False]  # strict "<", per element
    torch.testing.assert_close(score, torch.tensor([5e-4, 2e-3, 1e-3]))


def test_patience_needs_consecutive_hits_and_reset_clears():
    h = MSEConvergence(delta=1e-3, patience=2)
    h.reset(2)
    assert h.check(*_pair([1e-4, 1e-4]))[0].tolist() == [False, False]
    assert h.check(*_pair([1e-4, 1.0]))[0].tolist() == [True, False]
    h.reset(2)
    assert h.check(*_pair([1e-4, 1e-4]))[0].tolist() == [False, False]
    with pytest.raises(RuntimeError, match="reset"):
        MSEConvergence().check(*_pair([1.0]))


def test_cosine_and_fixed():
    c = CosineConvergence(threshold=0.999)
    c.reset(2)
    prev = torch.tensor([[[1.0, 0.0]], [[1.0, 0.0]]])
    cur = torch.tensor([[[2.0, 0.001]], [[0.0, 1.0]]])  # same direction (scaled) vs orthogonal
    halt, score = c.check(prev, cur)
    assert halt.tolist() == [True, False] and abs(float(score[1])) < 1e-6
    f = FixedDepth()
    f.reset(2)
    assert not f.check(prev, prev)[0].any()  # never halts, even with zero change


def test_make_halting_did_you_mean():
    assert isinstance(make_halting("mse", delta=5e-4), MSEConvergence)
    assert make_halting("cosine").threshold == 0.999
    with pytest.raises(ValueError, match="Did you mean 'mse'"):
        make_halting("mes")
    with pytest.raises(ValueError, match="bad arguments"):
        make_halting("fixed", delta=1.0)


def test_binary_horizon_paper_and_code_directions():
    paper = BinaryThresholdHorizon(tau=8, h_short=4, h_long=8)
    assert [paper.horizon(k, 8) for k in (3, 8, 9, 30)] == [8, 8, 4, 4]  # Eq. 8: deep = uncertain = fewer
    code = BinaryThresholdHorizon(tau=4, h_short=4, h_long=8, direction="code")
    assert [code.horizon(k, 8) for k in (2, 4, 5, 12)] == [4, 4, 8, 8]  # RD code: 8 when iters > 4
    assert BinaryThresholdHorizon(8, 4, 12).horizon(2, 8) == 8  # clipped to the chunk


def test_linear_decay_horizon():
    lin = LinearDecayHorizon(h_min=2, h_max=8, tau_base=6)
    assert [lin.horizon(k, 8) for k in (1, 6, 7, 9, 12, 40)] == [8, 8, 7, 5, 2, 2]  # Eq. 9
    inv = LinearDecayHorizon(h_min=2, h_max=8, tau_base=6, direction="code")
    assert [inv.horizon(k, 8) for k in (1, 6, 7, 9, 40)] == [2, 2, 3, 5, 8]
    assert lin.horizon(1, 5) == 5 and FixedHorizon(5).horizon(30, 8) == 5 and FixedHorizon(9).horizon(1, 4) == 4


def test_make_horizon_parses_cli_strings():
    assert make_horizon("fixed:4") == FixedHorizon(4)
    assert make_horizon("binary:8,4,8") == BinaryThresholdHorizon(8, 4, 8)
    assert make_horizon("binary:8,4,8:code") == BinaryThresholdHorizon(8, 4, 8, direction="code")
    assert make_horizon("linear:2,8,6") == LinearDecayHorizon(2, 8, 6)
    for bad, msg in [
        ("binar:8,4,8", "Did you mean 'binary'"),
        ("binary:8,4", "takes 3"),
        ("linear:a,b,c", "integers"),
        ("binary:8,4,8:paprr", "Did you mean 'paper'"),
        ("fixed", "use"),
        ("fixed:0", ">= 1"),
        ("linear:8,2,6", "h_min <= h_max"),
    ]:
        with pytest.raises(ValueError, match=msg):
            make_horizon(bad)
