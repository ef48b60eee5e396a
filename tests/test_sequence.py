"""Sequence layout, per-stage attention masks (who may attend to whom) and shifted CE targets."""

from dataclasses import replace

import pytest
import torch
import torch.nn.functional as F

from latentvla.models.sequence import IGNORE, Segment, attention_mask, build_sequence, token_losses
from latentvla.models.tokenizer import Tokenizer

TOK = Tokenizer(num_action_bins=16)
INSTR = ["push the puck", "open the top drawer of the cabinet slowly"]
COT = [" Subtask: push BBox: [0.1 0.2 0.3 0.4]", " Reasoning: globally move forward"]
N_IMAGE, N_IMG_NEXT, N_QUERY = 4, 3, 2


def acts(L=2):
    return torch.tensor([[TOK.action_token_ids[1 + i] for i in range(L)]] * 2)


def cols(seq, b, seg):
    return (seq.segments[b] == seg).nonzero()[:, 0].tolist()


@pytest.fixture(params=["I", "II", "III"])
def stage_seq(request):
    stage = request.param
    if stage == "I":
        return stage, build_sequence(TOK, INSTR, COT, 0, N_IMG_NEXT, acts(), n_image=N_IMAGE)
    if stage == "II":
        return stage, build_sequence(TOK, INSTR, COT, 2, N_IMG_NEXT, acts(), n_image=N_IMAGE)
    return stage, build_sequence(TOK, INSTR, None, 3, N_IMG_NEXT, None, N_QUERY, n_image=N_IMAGE)


def test_layout_blocks_in_order_and_aligned_columns(stage_seq):
    stage, seq = stage_seq
    B, T = seq.input_ids.shape
    assert seq.image_index[0].tolist() == list(range(N_IMAGE))
    for idx in (seq.image_index, seq.thinking_index, seq.img_next_index, seq.action_index, seq.query_index):
        assert (idx == idx[0]).all()  # same columns in every row
    for b in range(B):
        segs = seq.segments[b]
        order = [int(s) for i, s in enumerate(segs.tolist()) if s != Segment.PAD and (i == 0 or s != segs[i - 1])]
        assert order[0] == Segment.IMAGE and Segment.IMG_NEXT in order
        sot = (seq.input_ids[b] == TOK.start_thinking_id).nonzero().item()
        eot = (seq.input_ids[b] == TOK.end_thinking_id).nonzero().item()
        assert cols(seq, b, Segment.THINKING) == list(range(sot + 1, eot)) == seq.thinking_cols
        assert cols(seq, b, Segment.IMG_NEXT) == seq.img_next_index[b].tolist()
        assert cols(seq, b, Segment.ACTION) == seq.action_index[b].tolist()
        assert cols(seq, b, Segment.QUERY) == seq.query_index[b].tolist()
        assert (seq.input_ids[b, seq.thinking_index[b]] == TOK.thinking_id).all()
        assert (seq.input_ids[b, seq.img_next_index[b]] == TOK.img_next_id).all()
        real = seq.valid[b]
        assert seq.position_ids[b][real].tolist() == list(range(int(real.sum())))  # pads skipped
        text = TOK.decode(seq.input_ids[b][segs == Segment.TEXT].tolist())
        assert text.startswith(INSTR[b] + " @")
    # the two rows' instructions differ in length, so the shorter one is left-padded after its image block
    assert seq.segments[0, N_IMAGE] == Segment.PAD and seq.segments[1, N_IMAGE] == Segment.TEXT
    assert seq.thinking_index.shape[1] == {"I": 0, "II": 2, "III": 3}[stage]
    if stage == "III":
        assert seq.action_index.shape[1] == 0 and not (seq.segments == Segment.ACTION).any()


def test_targets_supervise_cot_first_img_next_and_actions(stage_seq):
    stage, seq = stage_seq
    for b in range(2):
        real = seq.valid[b].nonzero()[:, 0].tolist()
        supervised = [real[i + 1] for i, t in enumerate(real[:-1]) if seq.targets[b, t] != IGNORE]
        for t in real[:-1]:  # a target is always the next real token
            if seq.targets[b, t] != IGNORE:
                assert seq.targets[b, t] == seq.input_ids[b, real[real.index(t) + 1]]
        segs = seq.segments[b, supervised].tolist()
        expected_text = TOK.encode(COT[b]) if stage != "III" else []
        assert TOK.decode(
            seq.input_ids[b, [c for c, s in zip(supervised, segs) if s == Segment.TEXT]].tolist()
        ) == (TOK.decode(expected_text))
        assert [c for c, s in zip(supervised, segs) if s == Segment.IMG_NEXT] == [seq.img_next_index[b, 0].item()]
        assert [c for c, s in zip(supervised, segs) if s == Segment.ACTION] == seq.action_index[b].tolist()
        assert not set(segs) & {Segment.IMAGE, Segment.THINKING, Segment.QUERY, Segment.PAD}
    assert (seq.targets[:, -1] == IGNORE).all()


def test_attention_mask_who_sees_whom(stage_seq):
    stage, seq = stage_seq
    m = seq.attention_mask()
    for b in range(2):
        S = {s: cols(seq, b, s) for s in Segment}
        text = S[Segment.TEXT]
        img, nxt, act, qry, pad = (
            S[Segment.IMAGE],
            S[Segment.IMG_NEXT],
            S[Segment.ACTION],
            S[Segment.QUERY],
            S[Segment.PAD],
        )
        assert m[b][img][:, img].all()  # image <-> image, both ways
        assert m[b][nxt][:, nxt].all()  # img_next <-> img_next
        assert m[b][qry][:, qry].all()  # query <-> query
        assert m[b][text][:, img].all() and not m[b][img][:, text].any()
        assert not m[b, text[0], text[1]] and m[b, text[1], text[0]]  # text is causal
        assert m[b][nxt][:, text].all() and m[b][nxt][:, S[Segment.THINKING]].all()  # img_next sees all before
        if act:
            assert not m[b][nxt][:, act].any()  # img_next never sees actions
            assert m[b][act][:, nxt].all() and m[b][act][:, img].all()  # actions see img_next and the image
            assert m[b, act[1], act[0]] and not m[b, act[0], act[1]]  # autoregressive
        if qry:
            assert m[b][qry][:, nxt].all() and not m[b][nxt][:, qry].any()
        real = [c for c in range(m.shape[1]) if c not in pad]
        assert not m[b][real][:, pad].any()  # nobody attends to a pad
        for p in pad:  # a pad row keeps only itself (no all-False rows -> no NaN in softmax)
            assert m[b, p].nonzero()[:, 0].tolist() == [p]
    assert m.any(-1).all()


def test_attention_mask_accepts_explicit_pad():
    segs = torch.tensor([[Segment.IMAGE, Segment.IMAGE, Segment.TEXT, Segment.TEXT]])
    pad = torch.tensor([[False, False, False, True]])
    m = attention_mask(segs, pad)
    assert not m[0, :3, 3].any() and m[0, 3].tolist() == [False, False, False, True] and m[0, 0, 1]


def test_inference_prompt_for_explicit_decoding_ends_at_eot():
    seq = build_sequence(TOK, INSTR, None, 1, 0, n_image=N_IMAGE)
    assert (seq.input_ids[:, -1] == TOK.end_thinking_id).all() and (seq.targets == IGNORE).all()


def test_bad_inputs_have_clear_errors():
    with pytest.raises(ValueError, match="non-empty list"):
        build_sequence(TOK, "push the puck", n_image=1)
    with pytest.raises(ValueError, match="explicit_cot has 1"):
        build_sequence(TOK, INSTR, ["x"], n_image=1)
    with pytest.raises(ValueError, match="not raw bins"):
        build_sequence(TOK, INSTR, None, 0, 16, torch.zeros(2, 3, dtype=torch.long), n_image=1)
    with pytest.raises(TypeError):
        build_sequence(TOK, INSTR)  # n_image is required


def test_token_losses_match_dense_cross_entropy():
    torch.manual_seed(0)
    seq = build_sequence(TOK, INSTR, COT, 1, N_IMG_NEXT, acts(), n_image=N_IMAGE)
    hidden = torch.randn(*seq.input_ids.shape, 8)
    proj = torch.randn(8, TOK.vocab_size)
    act_ids = TOK.action_token_ids
    for sup in (seq.supervised, None):  # the host layout's positions, and the fallback that finds them
        text, act = token_losses(lambda h: h @ proj, hidden, replace(seq, supervised=sup), act_ids)
        dense = F.cross_entropy(
            (hidden @ proj).transpose(1, 2), seq.targets, reduction="none", ignore_index=IGNORE
        )
        valid = seq.targets != IGNORE
        is_act = valid & (seq.targets >= act_ids.start) & (seq.targets < act_ids.stop)
        assert is_act.any() and (valid & ~is_act).any()
        for got, m in ((text, valid & ~is_act), (act, is_act)):
            torch.testing.assert_close(got, (dense * m).sum(1) / m.sum(1))
    none = replace(seq, targets=torch.full_like(seq.targets, IGNORE), supervised=None)
    assert [t.tolist() for t in token_losses(lambda h: h @ proj, hidden, none, act_ids)] == [[0.0, 0.0]] * 2


# ---- the vectorised layout against the original row-by-row one (kept here as the reference) ------------------
def _reference_build_sequence(
    tok, instructions, explicit_cot, n_latent, n_img_next, action_token_ids, n_query, n_image
):
    from latentvla.models.sequence import SequenceBatch

    S, B = Segment, len(instructions)
    prefixes = [tok.encode(s.strip() + " @") + [tok.start_thinking_id] for s in instructions]
    texts = [tok.encode(s) + [tok.eos_id] for s in explicit_cot] if explicit_cot is not None else [[]] * B
    acts_ = action_token_ids.tolist() if action_token_ids is not None else [[] for _ in range(B)]
    P, E = max(map(len, prefixes)), max(map(len, texts))
    ids_rows, seg_rows, tgt_rows = [], [], []
    for prefix, text, act in zip(prefixes, texts, acts_):
        blocks = [
            ([tok.pad_id] * n_image, S.IMAGE, False),
            ([tok.pad_id] * (P - len(prefix)), S.PAD, False),
            (prefix, S.TEXT, False),
            ([tok.thinking_id] * n_latent, S.THINKING, False),
            ([tok.end_thinking_id], S.TEXT, False),
            (text, S.TEXT, True),
            ([tok.pad_id] * (E - len(text)), S.PAD, False),
            ([tok.img_next_id] * n_img_next, S.IMG_NEXT, None),
            (act, S.ACTION, True),
            ([tok.query_id] * n_query, S.QUERY, False),
        ]
        ids = [i for b in blocks for i in b[0]]
        segs = [int(b[1]) for b in blocks for _ in b[0]]
        sup = [b[2] if b[2] is not None else j == 0 for b in blocks for j in range(len(b[0]))]
        out, prev = [IGNORE] * len(ids), None
        for t, seg in enumerate(segs):
            if seg == S.PAD:
                continue
            if prev is not None and sup[t]:
                out[prev] = ids[t]
            prev = t
        ids_rows.append(ids)
        seg_rows.append(segs)
        tgt_rows.append(out)
    input_ids, segments = torch.tensor(ids_rows), torch.tensor(seg_rows)
    real = segments != S.PAD
    cols_ = lambda a, n: torch.arange(a, a + n).expand(B, n).contiguous()  # noqa: E731
    think0 = n_image + P
    img0 = think0 + n_latent + 1 + E
    act0 = img0 + n_img_next
    L = len(acts_[0])
    return SequenceBatch(
        input_ids,
        segments,
        ((real.cumsum(1) - 1) * real).long(),
        torch.tensor(tgt_rows),
        cols_(0, n_image),
        cols_(think0, n_latent),
        cols_(img0, n_img_next),
        cols_(act0, L),
        cols_(act0 + L, n_query),
    )


@pytest.mark.parametrize("n_latent", [0, 1, 3])
@pytest.mark.parametrize("n_img_next", [0, 1, 3])
@pytest.mark.parametrize("variant", ["cot+acts", "cot", "acts+query", "bare"])
def test_vectorised_layout_equals_the_row_by_row_reference(n_latent, n_img_next, variant):
    g = torch.Generator().manual_seed(n_latent * 10 + n_img_next)
    instr = ["push the puck", "open the top drawer of the cabinet slowly", "reach", "x"]
    cot = [" Subtask: push BBox: [0.1 0.2 0.3 0.4]", "", " Reasoning: globally move forward", "ok ok"]
    actions = torch.tensor(TOK.action_token_ids)[torch.randint(0, 16, (4, 5), generator=g)]
    kw = {
        "cot+acts": (cot, actions, 0),
        "cot": (cot, None, 0),
        "acts+query": (None, actions, 2),
        "bare": (None, None, 0),
    }[variant]
    args = (TOK, instr, kw[0], n_latent, n_img_next, kw[1], kw[2])
    new, ref = build_sequence(*args, n_image=N_IMAGE), _reference_build_sequence(*args, N_IMAGE)
    for name in (
        "input_ids",
        "segments",
        "position_ids",
        "targets",
        "image_index",
        "thinking_index",
        "img_next_index",
        "action_index",
        "query_index",
    ):
        assert torch.equal(getattr(new, name), getattr(ref, name)), name
