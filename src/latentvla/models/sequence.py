"""The LaRA sequence layout (LaRA §3.3, Fig. 3 and 8), its attention masks per stage, and the CE targets.

One row of a batch (columns left to right):

    [IMAGE x n_image][PAD gap][instruction " @"][<sot>][<thinking> x K][<eot>][explicit CoT <eos>][PAD gap]
    [<img_next> x n_img_next][action tokens x L | none in Stage III][<query> x n_query]

The two PAD gaps make every block that later code indexes sit in the same columns in every row:
- image tokens occupy columns [0, n_image) (fill them with `embeds[:, :n_image] = image_tokens`);
- the left gap aligns <sot> and the thinking tokens (Coconut's collator, as in LaRA-VLA's code), so the
  multi-pass forward splits every row at the same columns;
- the right gap aligns <img_next>, action and query tokens.
Pads are never attended and `position_ids` count only real tokens, so a gap changes nothing for the model.

Segments: IMAGE, TEXT (instruction, " @", <sot>, <eot>, explicit CoT), THINKING, IMG_NEXT, ACTION, QUERY, PAD.

Targets (already shifted, because of the gaps): `targets[b, t]` is the id the model must predict from position t,
i.e. the next real token when that token is supervised, else -100. Supervised tokens (LaRA §1.6): explicit CoT
text, the first <img_next> and the action tokens.

End of CoT: every explicit CoT ends with <eos> (`tokenizer.eos_id`), supervised in every stage that has explicit text,
and explicit decoding stops on it. LaRA does not name its end-of-CoT signal; the first <img_next> (what this
layout used before) is only present, hence only trained, when the curriculum has visual latents, so a model
without them never learned to stop. `explicit_cot=None` (latent prompts) adds no <eos>.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, fields
from enum import IntEnum

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from latentvla.models.device_checks import check
from latentvla.models.tokenizer import Tokenizer

IGNORE = -100


class Segment(IntEnum):
    IMAGE = 0
    TEXT = 1
    THINKING = 2
    IMG_NEXT = 3
    ACTION = 4
    QUERY = 5
    PAD = 6


# Segments whose tokens attend bidirectionally within their own block (LaRA Fig. 3; RD-VLA latent tokens).
BIDIRECTIONAL = (Segment.IMAGE, Segment.IMG_NEXT, Segment.QUERY)


@dataclass
class SequenceBatch:
    """A laid-out batch. Index tensors are (B, n) column indices of each block (same columns in every row)."""

    input_ids: Tensor  # (B, T) pad id in IMAGE columns (filled with image tokens), <thinking> at THINKING, <query> at QUERY
    segments: Tensor  # (B, T) Segment values
    position_ids: Tensor  # (B, T) 0.. over real tokens, 0 at pads
    targets: Tensor  # (B, T) shifted CE targets, IGNORE where unsupervised
    image_index: Tensor  # (B, n_image)
    thinking_index: Tensor  # (B, K)
    img_next_index: Tensor  # (B, n_img_next)
    action_index: Tensor  # (B, L)
    query_index: Tensor  # (B, n_query)
    # Host-side facts of the layout, known when it is built (build_sequence), so the training step never reads
    # them back from the device: the flat (row-major) indices of the supervised columns (targets != IGNORE) and
    # the thinking columns. None for sequences built elsewhere (then computed from the tensors).
    supervised: Tensor | None = field(default=None, repr=False)  # (n_sup,) int64 into a flattened (B*T)
    host_thinking_cols: tuple[int, ...] | None = field(default=None, repr=False)

    @property
    def valid(self) -> Tensor:
        """(B, T) True at real (non-pad) tokens: the `context_mask` the heads take."""
        return self.segments != Segment.PAD

    @property
    def thinking_cols(self) -> list[int]:
        """Columns of the thinking tokens (identical in every row), for `thinking.latent_forward`."""
        if self.host_thinking_cols is not None:
            return list(self.host_thinking_cols)
        return self.thinking_index[0].tolist() if self.thinking_index.numel() else []

    def attention_mask(self) -> Tensor:
        """(B, T, T) bool, True = may attend; see `attention_mask`."""
        return attention_mask(self.segments)

    def to(self, device: torch.device | str) -> SequenceBatch:
        move = lambda v: to_device_async(v, device) if isinstance(v, Tensor) else v  # noqa: E731
        return SequenceBatch(**{f.name: move(getattr(self, f.name)) for f in fields(self)})


def to_device_async(t: Tensor, device: torch.device | str) -> Tensor:
    """`t.to(device)` without a host sync: a host tensor goes to CUDA from pinned memory, non-blocking (a copy
    from pageable memory waits for the device queue). The caching host allocator keeps the pinned block until
    the copy has run."""
    device = torch.device(device)
    if t.device.type == "cpu" and device.type == "cuda":
        return t.pin_memory().to(device, non_blocking=True)
    return t.to(device)


def attention_mask(segments: Tensor, pad: Tensor | None = None) -> Tensor:
    """(B, T) segments (and optional (B, T) bool `pad`, default segments == PAD) -> (B, T, T) bool mask.

    Causal everywhere, plus bidirectional attention inside the IMAGE, IMG_NEXT and QUERY blocks (LaRA Fig. 3,
    §3.3). Action tokens come after <img_next>, so causality already lets them see every img_next and
    only earlier actions. Nobody attends to a pad; a pad row attends only to itself so softmax never sees an
    all-masked row (which would give NaN).
    """
    B, T = segments.shape
    is_pad = segments == Segment.PAD if pad is None else pad
    real = ~is_pad
    causal = torch.ones(T, T, dtype=torch.bool, device=segments.device).tril()
    bidir = torch.zeros_like(segments, dtype=torch.bool)
    for seg in BIDIRECTIONAL:
        bidir |= segments == seg
    same_block = (segments[:, :, None] == segments[:, None, :]) & bidir[:, :, None]
    mask = (causal | same_block) & real[:, :, None] & real[:, None, :]
    return mask | torch.eye(T, dtype=torch.bool, device=segments.device)


def _check_args(
    tok: Tokenizer, instructions, explicit_cot, n_latent, n_img_next, actions, n_query, n_image
) -> None:
    if isinstance(instructions, str) or not instructions:
        raise ValueError("instructions must be a non-empty list of strings (one per sample).")
    if explicit_cot is not None and len(explicit_cot) != len(instructions):
        raise ValueError(f"explicit_cot has {len(explicit_cot)} entries for {len(instructions)} instructions.")
    if min(n_latent, n_img_next, n_query, n_image) < 0:
        raise ValueError("n_latent, n_img_next, n_query and n_image must be >= 0.")
    if actions is not None:
        ok = tok.action_token_ids
        if actions.dim() != 2 or actions.shape[0] != len(instructions):
            raise ValueError(
                f"action_token_ids must be (B, L) with B = {len(instructions)}, got {tuple(actions.shape)}."
            )
        msg = (
            f"action_token_ids must be vocabulary ids in [{ok.start}, {ok.stop}) (tokenizer.action_token_ids"
            "[bin]), not raw bins."
        )
        if actions.numel():  # no host sync on an accelerator (models/device_checks.py)
            check(((actions >= ok.start) & (actions < ok.stop)).all(), msg)


def build_sequence(
    tokenizer: Tokenizer,
    instructions: Sequence[str],
    explicit_cot: Sequence[str] | None = None,
    n_latent: int = 0,
    n_img_next: int = 16,
    action_token_ids: Tensor | None = None,
    n_query: int = 0,
    *,
    n_image: int,
) -> SequenceBatch:
    """Lay out a batch (see the module docstring). `explicit_cot[b]` is encoded verbatim after <eot>, then <eos>.

    Stage I: n_latent=0 and the full CoT as explicit text; Stage II-k: n_latent=k and the remaining components
    as text; Stage III: no `action_token_ids`. Inference prompts: explicit_cot=None (latent mode), or
    n_img_next=0 to end the prompt at <eot> for explicit decoding.
    """
    _check_args(tokenizer, instructions, explicit_cot, n_latent, n_img_next, action_token_ids, n_query, n_image)
    tok, B, S = tokenizer, len(instructions), Segment
    encode = _cached_encoder(tok)
    prefixes = [encode(s.strip() + " @") + [tok.start_thinking_id] for s in instructions]
    texts = (
        [encode(s) + [tok.eos_id] for s in explicit_cot] if explicit_cot is not None else [[] for _ in range(B)]
    )
    L = action_token_ids.shape[1] if action_token_ids is not None else 0
    P, E = max(map(len, prefixes)), max(map(len, texts))
    think0 = n_image + P
    text0 = think0 + n_latent + 1
    img0 = text0 + E
    act0 = img0 + n_img_next
    T = act0 + L + n_query
    # Fixed blocks are the same in every row; the two variable-length blocks are written row by row, right-
    # aligned (prefix, after the left gap) and left-aligned (CoT text, before the right gap).
    ids = np.full((B, T), tok.pad_id, dtype=np.int64)
    segs = np.full((B, T), int(S.PAD), dtype=np.int64)
    sup = np.zeros((B, T), dtype=bool)
    segs[:, :n_image] = S.IMAGE
    ids[:, think0 : think0 + n_latent], segs[:, think0 : think0 + n_latent] = tok.thinking_id, S.THINKING
    ids[:, text0 - 1], segs[:, text0 - 1] = tok.end_thinking_id, S.TEXT
    ids[:, img0:act0], segs[:, img0:act0] = tok.img_next_id, S.IMG_NEXT
    sup[:, img0 : img0 + min(1, n_img_next)] = True  # only the first <img_next> is supervised
    # Action ids on a device stay there: the host lays out stand-in ids, written over on the device below
    # (reading them back would stall the training step until the device caught up).
    on_device = L > 0 and _on_device(action_token_ids)
    if L:
        ids[:, act0 : act0 + L] = tok.action_token_ids[0] if on_device else action_token_ids.numpy()
        segs[:, act0 : act0 + L], sup[:, act0 : act0 + L] = S.ACTION, True
    ids[:, act0 + L :], segs[:, act0 + L :] = tok.query_id, S.QUERY
    for b, (prefix, text) in enumerate(zip(prefixes, texts)):
        ids[b, think0 - len(prefix) : think0], segs[b, think0 - len(prefix) : think0] = prefix, S.TEXT
        ids[b, text0 : text0 + len(text)], segs[b, text0 : text0 + len(text)] = text, S.TEXT
        sup[b, text0 : text0 + len(text)] = True
    input_ids, segments = torch.from_numpy(ids), torch.from_numpy(segs)
    real = segments != S.PAD
    position_ids = ((real.cumsum(1) - 1) * real).long()
    targets = shifted_targets(input_ids, real, torch.from_numpy(sup))

    def cols(start: int, n: int) -> Tensor:
        return torch.arange(start, start + n).expand(B, n).contiguous()

    block_cols = (cols(0, n_image), cols(think0, n_latent), cols(img0, n_img_next), cols(act0, L))
    seq = SequenceBatch(
        input_ids,
        segments,
        position_ids,
        targets,
        *block_cols,
        cols(act0 + L, n_query),
        supervised=torch.from_numpy(np.flatnonzero(targets.numpy() != IGNORE)),
        host_thinking_cols=tuple(range(think0, think0 + n_latent)),
    )
    if not on_device:
        return seq
    # the action token at column c is the target of the previous real column (`shifted_targets`)
    prev = _previous_real(real)[:, act0 : act0 + L]
    seq = seq.to(action_token_ids.device)
    seq.input_ids[:, act0 : act0 + L] = action_token_ids
    seq.targets.scatter_(1, to_device_async(prev, action_token_ids.device), action_token_ids)
    return seq


def extend_sequence(seq: SequenceBatch, ids: Tensor, segments: Sequence[int]) -> SequenceBatch:
    """`seq` with the same columns `ids` (B, n) of `segments` (n,) appended (unsupervised): the layout of a
    prompt continued from its KV cache (explicit CoT tokens, <eos>, <img_next>, queries). Appended <img_next> and
    <query> blocks must be contiguous; indices of the appended blocks replace the prompt's (which has none)."""
    B, n = ids.shape
    if len(segments) != n:
        raise ValueError(f"{n} appended ids but {len(segments)} segments")
    T = seq.input_ids.shape[1]
    new_seg = torch.tensor(list(segments), device=seq.segments.device).expand(B, n)
    segs = torch.cat([seq.segments, new_seg], dim=1)
    real = segs != Segment.PAD
    dev = seq.segments.device

    def block(kind: Segment, old: Tensor) -> Tensor:
        cols = [T + j for j, s in enumerate(segments) if s == kind]
        if not cols:
            return old
        if cols != list(range(cols[0], cols[0] + len(cols))) or old.shape[1]:
            raise ValueError(f"appended {kind.name} tokens must form one block not already in the prompt")
        return torch.tensor(cols, device=dev).expand(B, len(cols)).contiguous()

    return SequenceBatch(
        input_ids=torch.cat([seq.input_ids, ids.to(seq.input_ids)], dim=1),
        segments=segs,
        position_ids=((real.cumsum(1) - 1) * real).long(),
        targets=torch.cat([seq.targets, torch.full_like(ids, IGNORE).to(seq.targets)], dim=1),
        image_index=seq.image_index,
        thinking_index=seq.thinking_index,
        img_next_index=block(Segment.IMG_NEXT, seq.img_next_index),
        action_index=seq.action_index,
        query_index=block(Segment.QUERY, seq.query_index),
        host_thinking_cols=seq.host_thinking_cols,
    )


def shifted_targets(ids: Tensor, real: Tensor, sup: Tensor) -> Tensor:
    """(B, T) targets: at the previous real column of every supervised real column t', its id; else IGNORE.

    Pads are skipped: the token a position predicts is the next *real* token (the gaps change nothing).
    """
    B, T = ids.shape
    prev = _previous_real(real)
    hit = sup & real & (prev >= 0)
    targets = torch.full((B, T), IGNORE, dtype=torch.long)
    rows = torch.arange(B)[:, None].expand(B, T)
    targets[rows[hit], prev[hit]] = ids[hit]
    return targets


def _on_device(t: Tensor) -> bool:
    """Whether `t` lives off the host (then its values are written into the layout on the device)."""
    return t.device.type != "cpu"


def _previous_real(real: Tensor) -> Tensor:
    """(B, T): prev[b, t] = the last real column < t (or -1): a running max over real columns, shifted right."""
    B, T = real.shape
    col = torch.arange(T).expand(B, T)
    last_real = torch.where(real, col, torch.full_like(col, -1)).cummax(dim=1).values
    return torch.cat([torch.full((B, 1), -1, dtype=torch.long), last_real[:, :-1]], dim=1)


def _cached_encoder(tok: Tokenizer) -> Callable[[str], list[int]]:
    """`tok.encode` memoised per tokenizer (instructions and CoT phrases repeat across every batch)."""
    cache = getattr(tok, "_latentvla_encode_cache", None)
    if cache is None:
        cache = {}
        try:
            tok._latentvla_encode_cache = cache
        except AttributeError:  # a tokenizer with __slots__: no memo
            return tok.encode

    def encode(text: str) -> list[int]:
        ids = cache.get(text)
        if ids is None:
            if len(cache) > 200_000:  # unique box strings could grow it forever on a huge dataset
                cache.clear()
            ids = cache[text] = tok.encode(text)
        return ids

    return encode


def token_losses(
    logits_fn: Callable[[Tensor], Tensor], hidden: Tensor, seq: SequenceBatch, action_ids: range
) -> tuple[Tensor, Tensor]:
    """Per-sample mean next-token CE -> (text (B,), action tokens (B,)), split by whether the target is one of
    `action_ids` (0 for rows with no such target): CoT text and discrete actions have their own loss weights.

    `logits_fn` is `backbone.logits`; it runs only on supervised positions, so the vocabulary projection costs
    nothing for image, thinking and img_next tokens. The positions come from the host layout (`seq.supervised`),
    as a boolean index would read the count back from the device.
    """
    targets = seq.targets  # already shifted: what position t must predict
    valid = targets != IGNORE
    ce = torch.zeros(targets.shape, dtype=torch.float32, device=hidden.device)
    sup = seq.supervised
    if sup is None:
        sup = valid.flatten().nonzero().squeeze(1)
    sup = sup.to(hidden.device)
    logits = logits_fn(hidden.flatten(0, 1).index_select(0, sup))
    per_token = F.cross_entropy(logits.float(), targets.flatten().index_select(0, sup), reduction="none")
    ce = ce.flatten().index_put((sup,), per_token).view(targets.shape)
    is_act = (targets >= action_ids.start) & (targets < action_ids.stop)
    text, act = valid & ~is_act, valid & is_act
    per = lambda m: (ce * m).sum(1) / m.sum(1).clamp(min=1)  # noqa: E731
    return per(text), per(act)
