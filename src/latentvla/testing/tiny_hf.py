"""Tiny random-init transformers models written by transformers' own `save_pretrained`, fully offline.

They stand in for the papers' pretrained backbones in tests and smoke runs (no hub download ever): hidden size
~64-128, 2 layers, a 2-layer vision tower, a byte-level BPE tokenizer trained here with `tokenizers`, and the
family's image processor (PIL-backed, no torchvision).

    python -m latentvla.testing.tiny_hf qwen2_5_vl /tmp/tiny-qwen25vl
    latentvla train --preset lara --backbone /tmp/tiny-qwen25vl --dataset D --out R --steps 8

Families: qwen2_5_vl, qwen3_vl, smolvlm, paligemma (VLMs), qwen2 (a causal LM), siglip and dinov2 (vision
encoders for the LM + separate vision family).
"""

from __future__ import annotations

import sys
from pathlib import Path

TINY_FAMILIES = ("qwen2_5_vl", "qwen3_vl", "smolvlm", "paligemma", "qwen2", "siglip", "dinov2")
_CORPUS = [
    "pick up the red block and put it in the drawer",
    "Subtask: reach the button. BBox: [0.1250 0.5000 0.7500 0.9000]. Reasoning: move forward, then lower the gripper.",
    "open the window, close the drawer, push the puck to the goal, press the button from the top",
]


def tiny_tokenizer(specials: list[str], vocab_size: int = 400):
    """A byte-level BPE tokenizer trained on a few robot sentences (milliseconds), as a transformers tokenizer."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size, initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), special_tokens=specials
    )
    tok.train_from_iterator(_CORPUS * 4, trainer)
    return PreTrainedTokenizerFast(tokenizer_object=tok, eos_token=specials[0], pad_token=specials[0])


def _text(vocab: int, **kw):
    return dict(
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        vocab_size=vocab,
        **kw,
    )


# the small ViT shared by the SigLIP, DINOv2, SmolVLM and PaliGemma stand-ins (32 px images, 8 px patches)
_SMALL_VIT = dict(
    hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4, image_size=32, patch_size=8
)


def build_tiny(family: str):
    """(model, tokenizer, image processor or None) for one family, random init (seeded)."""
    import torch
    import transformers as tf

    if family not in TINY_FAMILIES:
        raise ValueError(f"unknown tiny family {family!r}; one of {TINY_FAMILIES}")
    torch.manual_seed(0)
    if family in ("qwen2_5_vl", "qwen3_vl"):
        return _qwen_vl(tf, family)
    if family == "smolvlm":
        return _smolvlm(tf)
    if family == "paligemma":
        return _paligemma(tf)
    if family == "qwen2":
        tok = tiny_tokenizer(["<|endoftext|>"])
        return tf.Qwen2ForCausalLM(tf.Qwen2Config(**_text(len(tok)), tie_word_embeddings=True)), tok, None
    if family == "siglip":
        proc = tf.SiglipImageProcessorPil(size={"height": 32, "width": 32})
        return tf.SiglipVisionModel(tf.SiglipVisionConfig(**_SMALL_VIT)), None, proc
    proc = tf.BitImageProcessorPil(size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32})
    return tf.Dinov2Model(tf.Dinov2Config(**_SMALL_VIT)), None, proc


def _qwen_vl(tf, family: str):
    """Qwen2.5-VL or Qwen3-VL: M-RoPE text model, windowed (2.5) or DeepStack (3) vision tower."""
    names = ["<|endoftext|>", "<|vision_start|>", "<|vision_end|>", "<|image_pad|>", "<|video_pad|>"]
    tok = tiny_tokenizer(names)
    keys = ["vision_start_token_id", "vision_end_token_id", "image_token_id", "video_token_id"]
    ids = dict(zip(keys, tok.convert_tokens_to_ids(names[1:])))
    rope = {"rope_type": "default", "rope_theta": 1e4, "mrope_section": [2, 3, 3]}  # sums to head_dim / 2
    vit = dict(
        depth=2,
        hidden_size=64,
        intermediate_size=128,
        num_heads=4,
        out_hidden_size=64,
        spatial_merge_size=2,
        temporal_patch_size=2,
    )
    if family == "qwen2_5_vl":
        vision = dict(vit, patch_size=14, window_size=56, fullatt_block_indexes=[1])
        cfg = tf.Qwen2_5_VLConfig(text_config=_text(len(tok), rope_parameters=rope), vision_config=vision, **ids)
        model = tf.Qwen2_5_VLForConditionalGeneration(cfg)
    else:
        vision = dict(vit, patch_size=16, num_position_embeddings=64, deepstack_visual_indexes=[0])
        text = _text(len(tok), rope_parameters={**rope, "mrope_interleaved": True}, head_dim=16)
        cfg = tf.Qwen3VLConfig(text_config=text, vision_config=vision, **ids)
        model = tf.Qwen3VLForConditionalGeneration(cfg)
    proc = tf.Qwen2VLImageProcessorPil(
        patch_size=cfg.vision_config.patch_size, merge_size=2, min_pixels=32 * 32, max_pixels=256 * 256
    )
    return model, tok, proc


def _smolvlm(tf):
    tok = tiny_tokenizer(["<|endoftext|>", "<image>", "<fake_token_around_image>", "<global-img>"])
    cfg = tf.SmolVLMConfig(
        text_config=dict(_text(len(tok)), model_type="llama"),
        vision_config=dict(_SMALL_VIT),
        scale_factor=2,
        image_token_id=tok.convert_tokens_to_ids("<image>"),
    )
    proc = tf.SmolVLMImageProcessorPil(
        do_image_splitting=False, size={"longest_edge": 32}, max_image_size={"longest_edge": 32}
    )
    return tf.SmolVLMForConditionalGeneration(cfg), tok, proc


def _paligemma(tf):
    tok = tiny_tokenizer(["<eos>", "<image>", "<bos>"])
    cfg = tf.PaliGemmaConfig(
        text_config=dict(_text(len(tok)), model_type="gemma", head_dim=16),
        vision_config=dict(_SMALL_VIT, projection_dim=64),
        image_token_id=tok.convert_tokens_to_ids("<image>"),
        projection_dim=64,
    )
    cfg.text_config.num_image_tokens = 16
    proc = tf.SiglipImageProcessorPil(size={"height": 32, "width": 32})
    return tf.PaliGemmaForConditionalGeneration(cfg), tok, proc


def save_tiny(family: str, out: str | Path) -> Path:
    """Write a tiny `family` model (+ tokenizer, image processor) to `out` with transformers' save_pretrained."""
    out = Path(out)
    model, tok, proc = build_tiny(family)
    model.save_pretrained(out)
    for extra in (tok, proc):
        if extra is not None:
            extra.save_pretrained(out)
    return out


if __name__ == "__main__":
    if len(sys.argv) != 3:
        sys.exit(f"usage: python -m latentvla.testing.tiny_hf FAMILY OUT_DIR  (FAMILY: {TINY_FAMILIES})")
    print(save_tiny(sys.argv[1], sys.argv[2]))
