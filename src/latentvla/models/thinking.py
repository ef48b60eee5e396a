"""Coconut multi-pass latent forward (Coconut §3; LaRA-VLA §3.3 Stage II) and greedy explicit-CoT decoding.

A <thinking> token has no embedding of its own: its input is the last (final-normed) hidden state of the position
just before it, the "continuous thought". Thought j depends on the output at column c_j - 1, so the sequence is
run in K + 1 passes over contiguous column ranges, reusing the KV cache:

    pass 0:      columns [0, c_0)                      -> hidden at c_0 - 1 becomes the input at c_0
    pass j:      columns [c_{j-1}, c_j)    (1 <= j < K) -> hidden at c_j - 1 becomes the input at c_j
    pass K:      columns [c_{K-1}, T)      (the last thought, <eot>, CoT text, <img_next>, actions, queries)

With adjacent thinking columns every middle pass is one position. Gradients flow through the fed-back states
(no detach, Coconut "fully differentiable"). This requires that no position attends to a later pass, which the
LaRA masks satisfy (the bidirectional blocks lie entirely inside one pass); `latent_forward` checks it.

`naive_latent_forward` recomputes the whole prefix from scratch in each pass, without a cache: the reference
the tests compare against. `generate` decodes explicit CoT greedily with the cache (design.md mode="explicit").
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from latentvla.models.backbones.interface import Backbone, BackboneOutput, cache_length
from latentvla.models.device_checks import check


def _pass_bounds(thinking_cols: Sequence[int], T: int) -> list[tuple[int, int]]:
    cols = list(thinking_cols)
    if cols != sorted(set(cols)) or (cols and (cols[0] < 1 or cols[-1] >= T)):
        raise ValueError(f"thinking_cols must be increasing columns in [1, {T}), got {cols}.")
    edges = [0, *cols, T]
    return [(a, b) for a, b in zip(edges[:-1], edges[1:])]


def _check_no_lookahead(mask: Tensor, bounds: list[tuple[int, int]], past: int) -> None:
    for start, end in bounds[:-1]:  # `check`: no host sync on an accelerator
        check(
            ~mask[:, start:end, past + end :].any(),
            f"attention_mask lets columns [{start}, {end}) attend to later columns, so a multi-pass forward "
            "cannot match one pass; keep bidirectional blocks away from the thinking tokens.",
        )


def concat_outputs(outputs: list[BackboneOutput]) -> BackboneOutput:
    """Outputs of consecutive column ranges -> one output over all of them."""
    if len(outputs) == 1:
        return outputs[0]
    hidden = torch.cat([o.hidden for o in outputs], dim=1)
    layers = tuple(torch.cat(per_layer, dim=1) for per_layer in zip(*(o.layers for o in outputs)))
    return BackboneOutput(hidden=hidden, layers=layers)


def _thought(backbone: Backbone, hidden: Tensor) -> Tensor:
    """The input a thinking token gets from the previous position's hidden state (the backbone may rescale it,
    e.g. to the token-embedding RMS of a pretrained LM, `BackboneConfig.rescale_thoughts`)."""
    return backbone.thought(hidden)


def latent_forward(
    backbone: Backbone,
    embeds: Tensor,
    attention_mask: Tensor,
    position_ids: Tensor,
    thinking_cols: Sequence[int],
    cache: Any = None,
) -> tuple[BackboneOutput, Tensor]:
    """Coconut forward over the whole sequence with the KV cache (K thinking tokens = K + 1 passes).

    Args:
        embeds: (B, T, D) input embeddings; the rows at `thinking_cols` are replaced (their values are unused).
        attention_mask: bool (B, T, T_past + T); position_ids: (B, T), as for `backbone.forward`.
        thinking_cols: thinking-token columns, the same in every row (`SequenceBatch.thinking_cols`).
        cache: a cache from `backbone.new_cache()` (possibly already holding T_past positions), appended in
            place; a fresh one is used when None.
    Returns:
        (BackboneOutput over all T columns with `layers[0]` the embeddings actually fed in,
         thinking latents (B, K, D): the final-normed hidden states at the thinking columns, one per CoT component).
    """
    T = embeds.shape[1]
    if cache is None and torch.is_grad_enabled() and not backbone.cache_in_training:
        # gradient checkpointing drops the KV cache in transformers layers: recompute the prefixes instead
        return naive_latent_forward(backbone, embeds, attention_mask, position_ids, thinking_cols)
    cache = backbone.new_cache() if cache is None else cache
    past = cache_length(cache)
    bounds = _pass_bounds(thinking_cols, T)
    _check_no_lookahead(attention_mask, bounds, past)
    outputs: list[BackboneOutput] = []
    for start, end in bounds:
        x = embeds[:, start:end]
        if outputs:  # this pass starts at a thinking column: feed the previous position's last hidden state
            x = torch.cat([_thought(backbone, outputs[-1].hidden[:, -1:]), x[:, 1:]], dim=1)
        outputs.append(
            backbone(
                x,
                attention_mask=attention_mask[:, start:end, : past + end],
                position_ids=position_ids[:, start:end],
                cache=cache,
            )
        )
    out = concat_outputs(outputs)
    return out, _columns(out.hidden, thinking_cols)


def _columns(x: Tensor, cols: Sequence[int]) -> Tensor:
    """x[:, cols]; a slice when the columns are consecutive (always, in our layout): indexing with a list copies
    it to the device first, which waits for the device."""
    cols = list(cols)
    if cols and cols == list(range(cols[0], cols[0] + len(cols))):
        return x[:, cols[0] : cols[0] + len(cols)]
    return x[:, cols]


def naive_latent_forward(
    backbone: Backbone, embeds: Tensor, attention_mask: Tensor, position_ids: Tensor, thinking_cols: Sequence[int]
) -> tuple[BackboneOutput, Tensor]:
    """Reference for `latent_forward`: each thought re-runs the full prefix from scratch, no cache."""
    T = embeds.shape[1]
    _pass_bounds(thinking_cols, T)
    x = embeds
    for c in thinking_cols:
        prefix = backbone(x[:, :c], attention_mask=attention_mask[:, :c, :c], position_ids=position_ids[:, :c])
        x = torch.cat([x[:, :c], _thought(backbone, prefix.hidden[:, -1:]), x[:, c + 1 :]], dim=1)
    out = backbone(x, attention_mask=attention_mask, position_ids=position_ids)
    return out, out.hidden[:, list(thinking_cols)]


@dataclass
class GenerationOutput:
    """Greedy decoding result: `tokens` (B, n) padded with the pad id after each row's stop token."""

    tokens: Tensor  # (B, n) generated ids before the stop token, pad id after
    lengths: Tensor  # (B,) number of generated tokens before the stop token (or n if none)
    stopped: Tensor  # (B,) bool: the row produced a stop token
    text: list[str]  # decoded tokens[b, :lengths[b]]
    states: BackboneOutput | None = None  # keep_states: outputs at every cached column (prompt + fed tokens)


@torch.no_grad()
def generate(
    backbone: Backbone,
    embeds: Tensor,
    attention_mask: Tensor,
    position_ids: Tensor,
    *,
    max_new_tokens: int,
    stop_ids: Sequence[int],
    thinking_cols: Sequence[int] = (),
    cache: Any = None,
    allowed_ids: Sequence[int] | None = None,
    keep_states: bool = False,
) -> GenerationOutput:
    """Run the prompt (latent thoughts included) with the cache, then decode greedily until a stop id.

    The prompt must end with a real token in every row (left padding only, as `build_sequence(...,
    n_img_next=0)` gives); new tokens attend to every key the prompt's last position attends to, plus each other.
    Typical use (explicit CoT): stop_ids=[tokenizer.eos_id], the end-of-CoT signal the CE loss trains.
    `keep_states` returns the backbone outputs of every column the cache now holds, so a caller can continue
    the sequence from the cache (append tokens with `cache`) without re-running the prompt.
    """
    if max_new_tokens < 1:
        raise ValueError(f"max_new_tokens must be >= 1, got {max_new_tokens}.")
    cache = backbone.new_cache() if cache is None else cache
    out, _ = latent_forward(backbone, embeds, attention_mask, position_ids, thinking_cols, cache)
    kept = [out] if keep_states else None
    keys = attention_mask[:, -1]  # (B, T_past + T): what the last prompt token sees
    pos, h = position_ids[:, -1], out.hidden[:, -1]
    B, pad = embeds.shape[0], backbone.tokenizer.pad_id
    stops = torch.tensor(list(stop_ids), device=embeds.device)
    tokens = torch.full((B, max_new_tokens), pad, dtype=torch.long, device=embeds.device)
    lengths = torch.full((B,), max_new_tokens, dtype=torch.long, device=embeds.device)
    stopped = torch.zeros(B, dtype=torch.bool, device=embeds.device)
    allowed = None if allowed_ids is None else torch.as_tensor(list(allowed_ids), device=embeds.device)
    for step in range(max_new_tokens):
        logits = backbone.logits(h)  # (B, V)
        if allowed is not None:  # constrained decoding, e.g. only action tokens after <img_next>
            logits = torch.full_like(logits, float("-inf")).index_copy(1, allowed, logits[:, allowed])
        nxt = logits.argmax(-1)  # (B,)
        hit = torch.isin(nxt, stops) & ~stopped
        lengths[hit] = step
        stopped |= hit
        tokens[:, step] = torch.where(stopped, pad, nxt)
        if bool(stopped.all()) or step == max_new_tokens - 1:
            break
        keys = torch.cat([keys, torch.ones(B, 1, dtype=torch.bool, device=keys.device)], dim=1)
        pos = pos + 1
        step_out = backbone(
            backbone.embed(nxt[:, None]), attention_mask=keys[:, None], position_ids=pos[:, None], cache=cache
        )
        h = step_out.hidden[:, -1]
        if kept is not None:
            kept.append(step_out)
    text = [backbone.tokenizer.decode(row[:n].tolist()) for row, n in zip(tokens, lengths.tolist())]
    states = concat_outputs(kept) if kept is not None else None
    return GenerationOutput(tokens=tokens, lengths=lengths, stopped=stopped, text=text, states=states)
