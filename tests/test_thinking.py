"""Coconut multi-pass latent forward (Coconut §3) and greedy explicit decoding with the KV cache."""

import pytest
import torch

from latentvla.models.backbones import BackboneConfig, ScratchBackbone
from latentvla.models.sequence import build_sequence
from latentvla.models.thinking import generate, latent_forward, naive_latent_forward

torch.set_num_threads(1)
INSTR = ["push the puck to the goal", "open the drawer"]
COT = [" Reasoning: globally move forward", " BBox: [0.1 0.2 0.3 0.4]"]


@pytest.fixture(scope="module")
def bb():
    torch.manual_seed(0)
    return ScratchBackbone(BackboneConfig())


def inputs(bb, n_latent=3, n_image=4, actions=True):
    tok = bb.tokenizer
    act = torch.tensor([[tok.action_token_ids[2], tok.action_token_ids[7]]] * 2) if actions else None
    seq = build_sequence(tok, INSTR, COT, n_latent, 4, act, n_image=n_image)
    img = bb.encode_image(torch.rand(2, 3, 64, 64, generator=torch.Generator().manual_seed(1)))
    embeds = torch.cat([img[:, :n_image], bb.embed(seq.input_ids)[:, n_image:]], dim=1)
    return seq, embeds, seq.attention_mask()


class CountingBackbone(torch.nn.Module):
    def __init__(self, inner):
        super().__init__()
        self.inner, self.calls = inner, []

    def __getattr__(self, name):
        try:
            return super().__getattr__(name)
        except AttributeError:
            return getattr(self.inner, name)

    def forward(self, embeds, **kw):
        self.calls.append(embeds.shape[1])
        return self.inner(embeds, **kw)


def test_thinking_input_is_previous_last_hidden_exactly(bb):
    seq, embeds, mask = inputs(bb)
    out, latents = latent_forward(bb, embeds, mask, seq.position_ids, seq.thinking_cols)
    for c in seq.thinking_cols:
        assert torch.equal(out.layers[0][:, c], out.hidden[:, c - 1])
    first = seq.thinking_cols[0]
    assert torch.equal(out.layers[0][:, :first], embeds[:, :first])  # nothing else is replaced
    assert torch.equal(out.layers[0][:, seq.thinking_cols[-1] + 1 :], embeds[:, seq.thinking_cols[-1] + 1 :])
    assert latents.shape == (2, 3, bb.width) and torch.equal(latents, out.hidden[:, seq.thinking_cols])


def test_k_thoughts_take_k_plus_one_passes(bb):
    seq, embeds, mask = inputs(bb)
    counting = CountingBackbone(bb)
    latent_forward(counting, embeds, mask, seq.position_ids, seq.thinking_cols)
    c = seq.thinking_cols
    T = embeds.shape[1]
    assert counting.calls == [c[0], 1, 1, T - c[-1]]


@pytest.mark.parametrize("n_latent", [0, 1, 3])
def test_cached_multipass_equals_naive_recomputation(bb, n_latent):
    seq, embeds, mask = inputs(bb, n_latent)
    out, lat = latent_forward(bb, embeds, mask, seq.position_ids, seq.thinking_cols)
    ref, ref_lat = naive_latent_forward(bb, embeds, mask, seq.position_ids, seq.thinking_cols)
    torch.testing.assert_close(out.hidden, ref.hidden, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(lat, ref_lat, atol=1e-5, rtol=1e-5)
    for a, b in zip(out.layers, ref.layers):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-5)
    if n_latent == 0:  # no thoughts: one ordinary pass
        plain = bb(embeds, attention_mask=mask, position_ids=seq.position_ids)
        torch.testing.assert_close(out.hidden, plain.hidden)


def test_latent_forward_continues_an_existing_cache(bb):
    seq, embeds, mask = inputs(bb)
    ref, ref_lat = latent_forward(bb, embeds, mask, seq.position_ids, seq.thinking_cols)
    cache, p = bb.new_cache(), 6  # split after the bidirectional image block (columns 0-3)
    bb(embeds[:, :p], attention_mask=mask[:, :p, :p], position_ids=seq.position_ids[:, :p], cache=cache)
    cols = [c - p for c in seq.thinking_cols]
    out, lat = latent_forward(bb, embeds[:, p:], mask[:, p:], seq.position_ids[:, p:], cols, cache)
    torch.testing.assert_close(out.hidden, ref.hidden[:, p:], atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(lat, ref_lat, atol=1e-5, rtol=1e-5)


def test_gradients_flow_through_fed_back_states(bb):
    seq, embeds, mask = inputs(bb, n_latent=2)
    c0, c1 = seq.thinking_cols
    # Isolate the feedback path: the thinking rows may attend only to themselves, so the prefix can reach the
    # second thought only through the fed-back hidden states (c0 - 1 -> c0 -> c1).
    mask = mask.clone()
    mask[:, [c0, c1]] = False
    mask[:, c0, c0] = mask[:, c1, c1] = True
    leaf = embeds.detach().requires_grad_(True)
    _, lat = latent_forward(bb, leaf, mask, seq.position_ids, seq.thinking_cols)
    (grad,) = torch.autograd.grad(lat[:, 1].square().sum(), leaf)
    assert grad[:, c0 - 1].abs().sum() > 0 and grad[:, 0].abs().sum() > 0  # through two fed-back states
    assert grad[:, [c0, c1]].abs().sum() == 0  # replaced embeddings are unused
    leaf2 = embeds.detach().requires_grad_(True)
    _, ref = naive_latent_forward(bb, leaf2, mask, seq.position_ids, seq.thinking_cols)
    (grad_ref,) = torch.autograd.grad(ref[:, 1].square().sum(), leaf2)
    torch.testing.assert_close(grad, grad_ref, atol=1e-5, rtol=1e-4)


def test_mask_that_looks_ahead_is_rejected(bb):
    seq, embeds, mask = inputs(bb, n_latent=1)
    mask = mask.clone()
    mask[:, 0, -1] = True  # an image token peeking at the last action
    with pytest.raises(ValueError, match="later columns"):
        latent_forward(bb, embeds, mask, seq.position_ids, seq.thinking_cols)
    with pytest.raises(ValueError, match="increasing"):
        latent_forward(bb, embeds, seq.attention_mask(), seq.position_ids, [5, 3])


def _naive_greedy(bb, embeds, mask, pos, n):
    """Greedy decoding by full recomputation (no cache, no latent thoughts)."""
    ids = []
    keys = mask[:, -1]
    for _ in range(n):
        T = embeds.shape[1]
        out = bb(embeds, attention_mask=mask, position_ids=pos)
        nxt = bb.logits(out.hidden[:, -1]).argmax(-1)
        ids.append(nxt)
        keys = torch.cat([keys, torch.ones(keys.shape[0], 1, dtype=torch.bool)], 1)
        mask = torch.cat(
            [torch.cat([mask, torch.zeros(mask.shape[0], T, 1, dtype=torch.bool)], 2), keys[:, None]], 1
        )
        embeds = torch.cat([embeds, bb.embed(nxt[:, None])], 1)
        pos = torch.cat([pos, pos[:, -1:] + 1], 1)
    return torch.stack(ids, 1)


def test_generate_matches_naive_greedy_and_stops(bb):
    tok = bb.tokenizer
    seq = build_sequence(tok, INSTR, None, 0, 0, n_image=4)  # explicit-mode prompt ends at <eot>
    embeds = bb.embed(seq.input_ids)
    mask = seq.attention_mask()
    with torch.no_grad():
        ref = _naive_greedy(bb, embeds, mask, seq.position_ids, 6)
    out = generate(bb, embeds, mask, seq.position_ids, max_new_tokens=6, stop_ids=())  # no stop: all 6 compared
    assert torch.equal(out.tokens, ref) and out.lengths.tolist() == [6, 6] and not out.stopped.any()
    stop = int(ref[0, 2])  # make the third token of row 0 a stop token
    out = generate(bb, embeds, mask, seq.position_ids, max_new_tokens=6, stop_ids=[stop])
    n0 = int(out.lengths[0])
    assert n0 <= 2 and out.stopped[0] and torch.equal(out.tokens[0, :n0], ref[0, :n0])
    assert (out.tokens[0, n0:] == tok.pad_id).all()
    assert out.text[0] == tok.decode(ref[0, :n0].tolist())


def test_generate_after_latent_thoughts_uses_fed_back_prompt(bb):
    tok = bb.tokenizer
    seq = build_sequence(tok, INSTR, None, 2, 0, n_image=4)
    embeds = bb.embed(seq.input_ids)
    mask = seq.attention_mask()
    out = generate(
        bb,
        embeds,
        mask,
        seq.position_ids,
        max_new_tokens=3,
        stop_ids=[tok.query_id],
        thinking_cols=seq.thinking_cols,
    )
    with torch.no_grad():
        prompt, _ = naive_latent_forward(bb, embeds, mask, seq.position_ids, seq.thinking_cols)
        first = bb.logits(prompt.hidden[:, -1]).argmax(-1)
    assert torch.equal(out.tokens[:, 0], torch.where(first == tok.query_id, tok.pad_id, first))
