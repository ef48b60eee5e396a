"""Per-dimension binning of action chunks: round trip within half a bin, layout, validation."""

import pytest
import torch

from latentvla.models.action_tokenizer import BinningActionTokenizer


def test_round_trip_within_half_a_bin():
    tok = BinningActionTokenizer(num_bins=256, action_dim=4, horizon=8)
    a = torch.rand(16, 8, 4, generator=torch.Generator().manual_seed(0)) * 2 - 1
    a[0, 0] = torch.tensor([-1.0, 1.0, 0.0, 1.0 - 1e-7])  # edges
    bins = tok.encode(a)
    assert bins.shape == (16, 32) and bins.dtype == torch.long
    assert int(bins.min()) >= 0 and int(bins.max()) < 256
    err = (tok.decode(bins) - a).abs().max()
    assert float(err) <= tok.bin_width / 2 + 1e-6
    assert torch.equal(tok.encode(tok.decode(bins)), bins)  # centers map back to their own bins


def test_time_major_layout_and_clipping():
    tok = BinningActionTokenizer(num_bins=4, action_dim=2, horizon=2)
    a = torch.tensor([[[-1.0, -0.4], [0.2, 3.0]]])  # 3.0 is clipped to the last bin
    assert tok.encode(a).tolist() == [[0, 1, 2, 3]]
    assert tok.decode(torch.tensor([[0, 1, 2, 3]])).tolist() == [[[-0.75, -0.25], [0.25, 0.75]]]


def test_validation():
    tok = BinningActionTokenizer(num_bins=8, action_dim=2, horizon=3)
    with pytest.raises(ValueError, match="offset"):
        tok.decode(torch.full((1, 6), 8))
    with pytest.raises(ValueError, match=r"\(B,3,2\)"):
        tok.encode(torch.zeros(1, 2, 3))
    with pytest.raises(ValueError, match="num_bins"):
        BinningActionTokenizer(num_bins=1, action_dim=2, horizon=3)
