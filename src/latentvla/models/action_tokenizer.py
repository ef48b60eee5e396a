"""Per-dimension uniform binning of normalized action chunks <-> discrete bin indices (LaRA-VLA Stage I/II).

Actions are normalized to [-1, 1] (min-max, data/stats.py), so every dimension shares the same `num_bins`
equal-width bins over that range. A chunk (H, A) is flattened time-major: token j = step j // A, dim j % A.
Decoding returns bin centers, so the round-trip error of an in-range value is at most half a bin width
(values outside [-1, 1] are clipped first). The returned indices are in [0, num_bins); the model adds its
tokenizer's action-token offset to turn them into vocabulary ids.
"""

from __future__ import annotations

import torch
from torch import Tensor

LOW, HIGH = -1.0, 1.0


class BinningActionTokenizer:
    """Uniform per-dimension binning of (B, H, A) chunks in [-1, 1] to (B, H*A) long indices."""

    def __init__(self, num_bins: int, action_dim: int, horizon: int):
        if num_bins < 2 or action_dim < 1 or horizon < 1:
            raise ValueError(
                f"need num_bins >= 2, action_dim >= 1, horizon >= 1; got {num_bins}, {action_dim}, {horizon}."
            )
        self.num_bins, self.action_dim, self.horizon = num_bins, action_dim, horizon

    @property
    def bin_width(self) -> float:
        return (HIGH - LOW) / self.num_bins

    @property
    def num_tokens(self) -> int:
        """Tokens per chunk (H * A)."""
        return self.horizon * self.action_dim

    def encode(self, actions: Tensor) -> Tensor:
        """(B, H, A) float in [-1, 1] -> (B, H*A) long bin indices in [0, num_bins)."""
        if actions.dim() != 3 or actions.shape[1:] != (self.horizon, self.action_dim):
            raise ValueError(f"actions must be (B,{self.horizon},{self.action_dim}), got {tuple(actions.shape)}.")
        x = actions.float().clamp(LOW, HIGH)
        bins = torch.floor((x - LOW) / self.bin_width).long().clamp_(0, self.num_bins - 1)  # x = 1 -> last bin
        return bins.reshape(actions.shape[0], self.num_tokens)

    def decode(self, bins: Tensor) -> Tensor:
        """(B, H*A) bin indices -> (B, H, A) float32 bin centers."""
        if bins.dim() != 2 or bins.shape[1] != self.num_tokens:
            raise ValueError(f"bins must be (B,{self.num_tokens}), got {tuple(bins.shape)}.")
        if bins.numel() and (int(bins.min()) < 0 or int(bins.max()) >= self.num_bins):
            raise ValueError(
                f"bin indices must lie in [0, {self.num_bins}); subtract the action-token offset before decoding."
            )
        centers = LOW + (bins.float() + 0.5) * self.bin_width
        return centers.reshape(bins.shape[0], self.horizon, self.action_dim)
