"""What `LatentVLA.sample_actions` takes (`SampleOptions`, one frozen dataclass) and returns (`SampleOutput`)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

MODES = ("latent", "explicit", "none")


@dataclass(frozen=True, eq=False)
class SampleOptions:
    """Test-time options of one `sample_actions` call; every field has a model default.

    mode "latent": the acting stage's prompt (K thinking tokens, <img_next> x16), then the action output.
    mode "explicit": greedy CoT text generation with the KV cache (ECoT-style), then act on the text, continuing
        the same cache.
    mode "none": no reasoning tokens at all (image + instruction -> action output): the latency floor.
    mode None (default): what the model was trained to do — "explicit" when its acting stage still has explicit
        CoT text (lara-explicit, ecot, a stage-I/II checkpoint), else "latent".
    """

    mode: str | None = None
    iterations: int | None = None  # recurrent head depth (default PolicyConfig.iterations)
    halting: Any = None  # a models/halting.py criterion for the recurrent head
    num_steps: int | None = None  # flow-matching Euler steps (default ActionExpertConfig.num_steps)
    noise: Tensor | None = None  # (B,H,A) initial flow noise
    generator: torch.Generator | list[torch.Generator] | None = None  # a list: one per row (models/row_rng.py)
    max_cot_tokens: int = 96  # explicit mode: cap on generated CoT tokens

    def __post_init__(self) -> None:
        if self.mode is not None and self.mode not in MODES:
            raise ValueError(f"mode must be 'latent', 'explicit' or 'none', got {self.mode!r}")
        if self.max_cot_tokens < 1:
            raise ValueError(f"max_cot_tokens must be >= 1, got {self.max_cot_tokens}")


@dataclass
class SampleOutput:
    """What `sample_actions` returns; eval, bench and the server read only this."""

    actions: Tensor  # (B,H,A) normalized
    cot_text: list[str] | None = None  # explicit mode only
    iterations: Tensor | None = None  # (B,) recurrent head only
    deltas: Tensor | None = None  # (B,R) per-iteration mean squared change of the decoded chunk
    thinking_latents: Tensor | None = None  # (B,K,D) one per latent CoT component
    cot_tokens: Tensor | None = None  # (B,) tokens decoded in explicit mode (stop token excluded)


def stack_outputs(outs: list[SampleOutput]) -> SampleOutput:
    """Concatenate per-sample outputs along the batch dimension."""
    cat = lambda xs: None if xs[0] is None else torch.cat(xs, 0)  # noqa: E731
    return SampleOutput(
        actions=torch.cat([o.actions for o in outs], 0),
        cot_text=[t for o in outs for t in (o.cot_text or [""])],
        iterations=cat([o.iterations for o in outs]),
        deltas=cat([o.deltas for o in outs]),
        thinking_latents=cat([o.thinking_latents for o in outs]),
        cot_tokens=cat([o.cot_tokens for o in outs]),
    )
