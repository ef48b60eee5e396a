"""The papers' real configurations, at tiny widths and depths but with the public config values that select code
paths: Qwen's padded, tied vocabulary; DINOv2-L's 518 px position table with a 224 px crop processor
fused with SigLIP-224; the precision rules of a full fine-tune; the full-width Qwen3-VL-4B parameter count.

Values and their sources (public config.json / preprocessor_config.json files on the Hugging Face hub):
- Qwen/Qwen2.5-0.5B and Qwen/Qwen3-VL-4B-Instruct: `vocab_size` 151936, `tie_word_embeddings` true; the
  tokenizer holds 151,665 ids, so the matrix has padding rows past the tokenizer.
- facebook/dinov2-large: `image_size` 518, `patch_size` 14; its BitImageProcessor resizes the shortest edge to
  256 and centre-crops 224 (`crop_size` 224).
- google/siglip-so400m-patch14-224: `image_size` 224, `patch_size` 14 (16 x 16 = 256 tokens, MiniVLA's grid).
"""

from __future__ import annotations

import pytest
import torch

from latentvla.models.backbones import BackboneConfig, build_backbone
from latentvla.testing.tiny_hf import build_tiny

tf = pytest.importorskip("transformers")
torch.set_num_threads(1)
QWEN_VOCAB = 151_936  # Qwen2.5-0.5B / Qwen3-VL-4B config.json vocab_size (padded past the tokenizer)


def _padded_qwen(family: str, out):
    """A tiny `family` model whose embedding matrix is padded to Qwen's 151,936 rows and tied to the LM head."""
    model, tok, proc = build_tiny(family)
    cfg = model.config
    if family == "qwen2":
        cfg.vocab_size = QWEN_VOCAB
        model = tf.Qwen2ForCausalLM(cfg)
    else:
        cfg.text_config.vocab_size = QWEN_VOCAB
        cfg.tie_word_embeddings = True
        model = tf.Qwen3VLForConditionalGeneration(cfg)
    assert model.get_output_embeddings().weight.data_ptr() == model.get_input_embeddings().weight.data_ptr()
    model.save_pretrained(out)
    for extra in (tok, proc):
        if extra is not None:
            extra.save_pretrained(out)
    return out, len(tok)


@pytest.mark.parametrize("family,kind", [("qwen2", "hf"), ("qwen3_vl", "hf_vlm")])
def test_padded_vocabulary_every_new_token_row_initialised_and_tie_kept(tmp_path, family, kind):
    path, tok_len = _padded_qwen(family, tmp_path / family)
    before = tf.AutoModelForCausalLM if kind == "hf" else tf.AutoModelForImageTextToText
    orig = before.from_pretrained(path).get_input_embeddings().weight.detach().clone()
    bb = build_backbone(BackboneConfig(kind=kind, hf_path=str(path)), image_size=32, num_action_bins=256)
    model = bb.lm if kind == "hf" else bb.vlm
    w = model.get_input_embeddings().weight
    new = bb.tokenizer.new_token_ids
    assert w.shape[0] == QWEN_VOCAB  # never shrunk below the padded matrix
    assert new == list(range(tok_len, tok_len + 8 + 256)) and new[-1] < QWEN_VOCAB  # they land on padding rows
    src = bb.tokenizer.hf.encode("<<", add_special_tokens=False)
    src = src[0] if len(src) == 1 else bb.tokenizer.hf.eos_token_id
    assert torch.equal(w[new], w[src].expand(len(new), -1))  # every new row copied (LaRA), none left as padding
    assert torch.equal(w[:tok_len], orig[:tok_len])  # the pretrained rows untouched
    assert torch.equal(w[new[-1] + 1 :], orig[new[-1] + 1 :])  # the remaining padding rows untouched
    assert model.get_output_embeddings().weight.data_ptr() == w.data_ptr()  # the lm_head tie kept
    # the thought-rescaling target is the RMS of the tokenizer's rows, not of the padding rows
    assert bb.embed_rms == pytest.approx(float(orig[:tok_len].pow(2).mean(-1).sqrt().mean()), rel=1e-5)


def _minivla_encoders(root):
    """DINOv2 with dinov2-large's 518 px position table and its 224 crop processor, and SigLIP at 224, both with
    patch 14 (tiny widths / depths)."""
    small = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=2, patch_size=14)
    dino, sig = root / "dinov2", root / "siglip"
    tf.Dinov2Model(tf.Dinov2Config(image_size=518, **small)).save_pretrained(dino)
    tf.BitImageProcessorPil(
        size={"shortest_edge": 256},
        crop_size={"height": 224, "width": 224},
        image_mean=[0.485, 0.456, 0.406],
        image_std=[0.229, 0.224, 0.225],
    ).save_pretrained(dino)
    tf.SiglipVisionModel(tf.SiglipVisionConfig(image_size=224, **small)).save_pretrained(sig)
    tf.SiglipImageProcessorPil(size={"height": 224, "width": 224}).save_pretrained(sig)
    return dino, sig


def test_dinov2_518_config_fuses_with_siglip_224_and_rdvla_trains_end_to_end(tmp_path):
    from latentvla.cli import main
    from latentvla.data.synthetic import write_synthetic_dataset
    from latentvla.policy import Policy

    dino, sig = _minivla_encoders(tmp_path)
    lm, _ = _padded_qwen("qwen2", tmp_path / "lm")
    data = write_synthetic_dataset(tmp_path / "ds", num_episodes=2, length=8, image_size=32)
    run = tmp_path / "run"
    argv = [
        "train",
        "--preset",
        "rdvla",
        "--backbone",
        str(lm),
        "--vision",
        str(dino),
        "--vision",
        str(sig),
        "--dataset",
        str(data),
        "--out",
        str(run),
        "--steps",
        "2",
        "--batch-size",
        "2",
        "--no-progress",
        "policy.horizon=4",
        "policy.backbone.freeze_vision=true",
    ]
    assert main(argv) == 0
    vision = Policy.from_pretrained(run).model.backbone.vision
    assert vision.sizes == [224, 224] and vision.num_tokens == 16 * 16  # both at 224 px / patch 14
    # DINOv2 ran at 224 with its 37 x 37 (518 px) position table interpolated, not resized to 518
    x = torch.rand(1, 3, 224, 224)
    dinov2 = vision.encoders[0]
    assert dinov2.embeddings.position_embeddings.shape[1] == 37 * 37 + 1
    assert dinov2(pixel_values=x).last_hidden_state.shape[1] == 16 * 16 + 1


@pytest.mark.parametrize(
    "overrides,code,message",
    [
        (["policy.backbone.dtype=bfloat16"], 2, "no fp32 master weights"),  # full fine-tune in bf16
        (["policy.backbone.dtype=auto"], 2, "no fp32 master weights"),  # Qwen's checkpoint dtype
        (["policy.backbone.dtype=float16", "policy.backbone.lora.rank=4"], 2, "no GradScaler"),
        (["policy.backbone.dtype=bfloat16", "policy.backbone.lora.rank=4"], 0, ""),  # frozen bf16 base: fine
    ],
)
def test_half_precision_training_refused_unless_the_half_weights_are_frozen(
    tmp_path, capsys, overrides, code, message
):
    import json

    from latentvla.cli import main
    from latentvla.data.synthetic import write_synthetic_dataset
    from latentvla.testing.tiny_hf import save_tiny

    lm = save_tiny("qwen2", tmp_path / "lm")
    cfg = json.loads((lm / "config.json").read_text())
    (lm / "config.json").write_text(json.dumps({**cfg, "dtype": "bfloat16"}))  # what `auto` loads (Qwen: bf16)
    data = write_synthetic_dataset(tmp_path / "ds", num_episodes=2, length=8, image_size=32)
    argv = [
        "train",
        "--preset",
        "rdvla",
        "--backbone",
        str(lm),
        "--dataset",
        str(data),
        "--out",
        str(tmp_path / "run"),
        "--steps",
        "1",
        "--batch-size",
        "2",
        "--no-progress",
        "policy.horizon=4",
        "policy.image_size=32",
        *overrides,
    ]
    capsys.readouterr()
    assert main(argv) == code
    errors = [line for line in capsys.readouterr().err.splitlines() if line.startswith("error:")]
    assert (len(errors) == 1 and message in errors[0]) if message else not errors


def test_too_old_transformers_fails_with_one_line_when_an_hf_backbone_is_built(tmp_path, monkeypatch):
    """pyproject pins transformers>=5.24 (the first release whose forwards take `cache=`); an older one installed
    anyway fails at backbone build with one line, not a TypeError deep in a forward."""
    import tomllib
    from pathlib import Path

    from latentvla.testing.tiny_hf import save_tiny

    pyproject = tomllib.loads((Path(__file__).parents[1] / "pyproject.toml").read_text())
    assert "transformers>=5.24" in pyproject["project"]["optional-dependencies"]["hf"]
    lm = save_tiny("qwen2", tmp_path / "lm")
    from latentvla.models.backbones import hf_version

    monkeypatch.setattr(hf_version, "installed_version", lambda: "5.23.0")
    with pytest.raises(ImportError, match=r"transformers 5\.23\.0 is too old.*>= 5\.24") as e:
        build_backbone(BackboneConfig(kind="hf", hf_path=str(lm)), num_action_bins=8)
    assert "\n" not in str(e.value)
    monkeypatch.setattr(hf_version, "installed_version", lambda: "5.24.0")
    build_backbone(BackboneConfig(kind="hf", hf_path=str(lm)), num_action_bins=8)
