"""Per-sample means over the valid (non-padded) steps of an action chunk, shared by every chunk loss."""

from __future__ import annotations

from torch import Tensor


def mean_over_valid_steps(per_step: Tensor, is_pad: Tensor | None) -> Tensor:
    """(B, H) per-step losses -> (B,) mean over steps where `is_pad` is False (all steps when it is None).

    A sample whose steps are all padded gets 0 (the denominator is clamped at 1), never NaN.
    """
    if is_pad is None:
        return per_step.mean(dim=-1)
    if is_pad.shape != per_step.shape:
        raise ValueError(f"action_is_pad must be (B,H) = {tuple(per_step.shape)}, got {tuple(is_pad.shape)}.")
    valid = (~is_pad.bool()).to(per_step.dtype)
    return (per_step * valid).sum(dim=-1) / valid.sum(dim=-1).clamp_min(1.0)
