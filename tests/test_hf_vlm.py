"""Pretrained-VLM backbones on tiny random-init models written by transformers' own save_pretrained (offline):
Qwen2.5-VL, Qwen3-VL, SmolVLM, PaliGemma and Qwen2 + SigLIP/DINOv2. Every LaRA stage, rdvla, lara-rd, explicit
CoT with the KV cache, checkpoint round trips, LoRA, frozen vision, gradient checkpointing, thought rescaling,
one policy-server call."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from latentvla.config import apply_overrides, get_preset, use_backbone
from latentvla.constants import OBS_IMAGES, OBS_STATE, TASK
from latentvla.data.dataset import VLADataset, make_normalizer
from latentvla.data.lerobot import LeRobotDatasetReader
from latentvla.data.synthetic import write_synthetic_dataset
from latentvla.models.backbones import BackboneConfig, build_backbone
from latentvla.models.backbones.hf_vlm import mrope_positions
from latentvla.models.sequence import build_sequence
from latentvla.models.thinking import generate, latent_forward, naive_latent_forward
from latentvla.policy import Policy
from latentvla.testing.tiny_hf import save_tiny
from latentvla.train.curriculum import stage_boundaries

transformers = pytest.importorskip("transformers")  # CI installs .[hf]; the import guard is for bare installs
torch.set_num_threads(1)
VLMS = ("qwen2_5_vl", "qwen3_vl", "smolvlm", "paligemma")


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    root = tmp_path_factory.mktemp("tiny_hf")
    return {f: save_tiny(f, root / f) for f in (*VLMS, "qwen2", "siglip", "dinov2")}


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    root = write_synthetic_dataset(tmp_path_factory.mktemp("ds") / "ds", num_episodes=2, length=8, image_size=32)
    reader = LeRobotDatasetReader(root)
    norm = make_normalizer(reader)
    ds = VLADataset(reader, chunk_size=4, cameras=["corner4"], normalizer=norm)
    return root, norm, torch.utils.data.default_collate([ds[i] for i in range(2)])


def _policy(tiny, data, family, preset="lara", *overrides, vision=()):
    cfg = use_backbone(get_preset(preset, "micro"), str(tiny[family]), tuple(str(tiny[v]) for v in vision))
    cfg = apply_overrides(
        cfg, ["policy.image_size=32", "policy.horizon=4", "policy.num_action_bins=8", *overrides]
    )
    torch.manual_seed(0)
    return Policy(cfg.policy, data[1])


def _backbone(tiny, family, **kw):
    torch.manual_seed(0)
    shape = {"image_size": 32, "num_action_bins": 8} | {
        k: kw.pop(k) for k in ("image_size", "num_cameras") if k in kw
    }
    cfg = BackboneConfig(kind="hf_vlm", hf_path=str(tiny[family]), **kw)
    return build_backbone(cfg, **shape).eval()


def _prefix(bb, n_latent=2, n_img_next=4, n_cam=1):
    imgs = [torch.rand(2, 3, 32, 32, generator=torch.Generator().manual_seed(i)) for i in range(n_cam)]
    img = bb.encode_images(imgs)
    seq = build_sequence(
        bb.tokenizer,
        ["pick up the block", "open the drawer"],
        None,
        n_latent=n_latent,
        n_img_next=n_img_next,
        n_image=img.shape[1],
    )
    embeds = torch.cat([img, bb.embed(seq.input_ids)[:, img.shape[1] :]], 1)
    return seq, embeds


# ---- the backbone interface -------------------------------------------------------------------------------
def test_qwen_mrope_positions_equal_transformers_get_rope_index(tiny):
    """Our 1-D -> 3-D map gives the positions Qwen's own get_rope_index assigns to
    [<|vision_start|> image x n <|vision_end|>] x 2 cameras followed by text."""
    bb = _backbone(tiny, "qwen2_5_vl", num_cameras=2, image_size=64)
    c = bb.vlm.config
    n = bb.tokens_per_image - 2
    block = [c.vision_start_token_id, *[c.image_token_id] * n, c.vision_end_token_id]
    ids = torch.tensor([block * 2 + [5, 6, 7, 8]])
    mm = (ids == c.image_token_id).int()
    grid = torch.tensor([[1, 2 * int(n**0.5), 2 * int(n**0.5)]] * 2)
    ref, _ = bb.vlm.model.get_rope_index(ids, mm, image_grid_thw=grid, attention_mask=torch.ones_like(ids))
    ours = mrope_positions(torch.arange(ids.shape[1])[None], bb.mrope_table, bb.n_image, bb.mrope_span)
    assert torch.equal(ours, ref)


@pytest.mark.parametrize("family", ["qwen2_5_vl", "qwen3_vl"])
def test_two_camera_prompt_equals_transformers_own_forward(tiny, family):
    """Our image tokens (own tower at native preprocessing, <|vision_start|>/<|vision_end|>), M-RoPE positions and
    (Qwen3-VL) DeepStack injection reproduce the VLM's own forward on input_ids + pixel_values, 2 cameras."""
    bb = _backbone(tiny, family, num_cameras=2, image_size=64)
    c = bb.vlm.config
    images = [torch.rand(1, 3, 64, 64, generator=torch.Generator().manual_seed(i)) for i in range(2)]
    inputs = bb.vision.preprocess(torch.cat(images))
    n, text = bb.tokens_per_image - 2, [5, 6, 7, 8]
    ids = torch.tensor([([c.vision_start_token_id] + [c.image_token_id] * n + [c.vision_end_token_id]) * 2 + text])
    with torch.no_grad():
        ref = bb.vlm.model(
            input_ids=ids,
            pixel_values=inputs["pixel_values"],
            image_grid_thw=inputs["image_grid_thw"],
            mm_token_type_ids=(ids == c.image_token_id).int(),
            attention_mask=torch.ones_like(ids),
        )
        embeds = torch.cat([bb.encode_images(images), bb.embed(torch.tensor([text]))], 1)
        T = embeds.shape[1]
        out = bb(
            embeds,
            attention_mask=torch.ones(T, T, dtype=torch.bool).tril()[None],
            position_ids=torch.arange(T)[None],
        )
    torch.testing.assert_close(out.hidden, ref.last_hidden_state, atol=1e-5, rtol=1e-4)


@pytest.mark.parametrize("family", VLMS)
def test_cached_multipass_equals_naive_and_layers(tiny, family):
    bb = _backbone(tiny, family)
    seq, embeds = _prefix(bb)
    with torch.no_grad():
        a, la = latent_forward(bb, embeds, seq.attention_mask(), seq.position_ids, seq.thinking_cols)
        b, lb = naive_latent_forward(bb, embeds, seq.attention_mask(), seq.position_ids, seq.thinking_cols)
    torch.testing.assert_close(a.hidden, b.hidden, atol=1e-5, rtol=1e-4)
    assert len(a.layers) == bb.num_layers + 1 and a.layers[0].shape == embeds.shape
    assert bb.vision(torch.rand(2, 3, 32, 32)).shape[1] ** 0.5 % 1 == 0  # square grid for the EMA target


@pytest.mark.parametrize("family", ["qwen2_5_vl", "smolvlm"])
def test_explicit_generation_with_cache_equals_full_recompute(tiny, family):
    """Greedy decoding on the KV cache (cached steps get the right M-RoPE positions) == recomputing everything."""
    bb = _backbone(tiny, family)
    seq, embeds = _prefix(bb, n_latent=0, n_img_next=0)
    mask, pos = seq.attention_mask(), seq.position_ids
    out = generate(bb, embeds, mask, pos, max_new_tokens=4, stop_ids=())
    ids = []
    with torch.no_grad():
        for _ in range(4):
            nxt = bb.logits(bb(embeds, attention_mask=mask, position_ids=pos).hidden[:, -1]).argmax(-1)
            ids.append(nxt)
            T = embeds.shape[1]
            keys = torch.cat([mask[:, -1], torch.ones(2, 1, dtype=torch.bool)], 1)
            mask = torch.cat([torch.cat([mask, torch.zeros(2, T, 1, dtype=torch.bool)], 2), keys[:, None]], 1)
            embeds, pos = torch.cat([embeds, bb.embed(nxt[:, None])], 1), torch.cat([pos, pos[:, -1:] + 1], 1)
    assert torch.equal(out.tokens, torch.stack(ids, 1))


def test_new_token_rows_copy_an_existing_token_as_lara_does(tiny):
    bb = _backbone(tiny, "qwen2_5_vl")
    w = bb.vlm.get_input_embeddings().weight
    new = bb.tokenizer.new_token_ids
    assert len(new) == 8 + 8 and new == list(range(new[0], new[0] + 16))
    src = bb.tokenizer.hf.encode("<<", add_special_tokens=False)
    src = src[0] if len(src) == 1 else bb.tokenizer.hf.eos_token_id
    assert torch.equal(w[new], w[src].expand(len(new), -1))
    head = bb.vlm.get_output_embeddings().weight  # untied in this tiny config: its new rows are copied too
    assert head.data_ptr() != w.data_ptr() and torch.equal(head[new], head[src].expand(len(new), -1))


def test_thought_rescaling_to_token_embedding_rms(tiny):
    bb = _backbone(tiny, "qwen2_5_vl", rescale_thoughts=True)
    h = torch.randn(2, 1, bb.width) * 37.0
    rms = bb.thought(h).pow(2).mean(-1).sqrt()
    torch.testing.assert_close(rms, torch.full_like(rms, bb.embed_rms))
    seq, embeds = _prefix(bb)
    with torch.no_grad():  # the rescaled thought is what both forwards feed back
        a, _ = latent_forward(bb, embeds, seq.attention_mask(), seq.position_ids, seq.thinking_cols)
        b, _ = naive_latent_forward(bb, embeds, seq.attention_mask(), seq.position_ids, seq.thinking_cols)
        c, _ = latent_forward(
            _backbone(tiny, "qwen2_5_vl"), embeds, seq.attention_mask(), seq.position_ids, seq.thinking_cols
        )
    torch.testing.assert_close(a.hidden, b.hidden, atol=1e-5, rtol=1e-4)
    assert not torch.allclose(a.hidden, c.hidden)  # ... and it changes the result


# ---- LatentVLA on the VLMs -------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "family,preset",
    [
        ("qwen2_5_vl", "lara"),
        ("qwen2_5_vl", "rdvla"),
        ("qwen3_vl", "lara-rd"),
        ("smolvlm", "lara"),
        ("paligemma", "rdvla"),
    ],
)
def test_every_stage_trains_and_checkpoint_round_trips(tiny, data, tmp_path, family, preset):
    policy = _policy(tiny, data, family, preset)
    batch = data[2]
    vision = list(policy.model.backbone.vision.parameters())
    tower_learns = []
    for _, stage in stage_boundaries(policy.config.curriculum, 100):
        policy.zero_grad()
        loss, metrics = policy.model.compute_loss(batch, stage)
        loss.mean().backward()
        assert torch.isfinite(loss).all(), (stage.name, metrics)
        tower_learns.append(any(p.grad is not None and p.grad.abs().sum() > 0 for p in vision))
    # the VLM's own tower trains (the zero-initialised DiT output passes no gradient back at init, stage III)
    assert tower_learns[0]
    groups = policy.model.param_groups()
    assert {id(p) for p in groups["vision"]} == {id(p) for p in vision}
    if policy.model.ema_vision is not None:  # the EMA target is a copy of the VLM's own tower
        ema = dict(policy.model.ema_vision.named_parameters())
        assert ema.keys() == dict(policy.model.backbone.vision.named_parameters()).keys()
        assert not any(p.requires_grad for p in ema.values())
    policy.eval()
    g = lambda: torch.Generator().manual_seed(0)  # noqa: E731
    out = policy.model.sample_actions(batch, mode="latent", generator=g())
    policy.save_pretrained(tmp_path / "ckpt")
    again = Policy.from_pretrained(tmp_path / "ckpt").model.sample_actions(batch, mode="latent", generator=g())
    torch.testing.assert_close(out.actions, again.actions)
    if preset == "lara":
        ex = policy.model.sample_actions(batch, mode="explicit", max_cot_tokens=4)
        assert (
            ex.actions.shape == out.actions.shape and ex.cot_tokens.tolist() == [4, 4] or ex.cot_tokens.max() <= 4
        )


def test_visual_target_at_its_own_resolution_is_the_ema_towers_4x4_grid(tiny, data):
    """LaRA: the next frame at 112 px through the EMA Qwen tower + merger = 4 x 4 tokens = the 16 targets."""
    policy = _policy(tiny, data, "qwen2_5_vl", "lara", "policy.target_image_size=112")
    frames = torch.rand(2, 3, 32, 32)
    tokens = policy.model.ema_vision(
        torch.nn.functional.interpolate(frames, size=(112, 112), mode="bilinear", antialias=True)
    )
    assert tokens.shape[1] == 16
    torch.testing.assert_close(policy.model._visual_targets(frames), tokens)


def test_frozen_vision_gets_no_gradient(tiny, data):
    policy = _policy(tiny, data, "qwen2_5_vl", "rdvla", "policy.backbone.freeze_vision=true")
    stage = stage_boundaries(policy.config.curriculum, 10)[0][1]
    policy.model.compute_loss(data[2], stage)[0].mean().backward()
    assert all(p.grad is None for p in policy.model.backbone.vision.parameters())
    assert policy.model.param_groups()["vision"] == []
    assert any(p.grad is not None for p in policy.model.backbone.vlm.model.language_model.parameters())


def test_lora_trains_adapters_only_and_adapter_checkpoint_round_trips(tiny, data, tmp_path):
    full = _policy(tiny, data, "qwen2_5_vl", "rdvla")
    assert all(p.requires_grad for p in full.model.backbone.parameters())  # LoRA off: everything trains
    policy = _policy(tiny, data, "qwen2_5_vl", "rdvla", "policy.backbone.lora.rank=4")
    trainable = [n for n, p in policy.model.backbone.named_parameters() if p.requires_grad]
    assert trainable and all("lora_" in n or "trainable_tokens" in n for n in trainable)
    assert not any("visual" in n for n in trainable)  # the vision tower is never adapted
    opt = torch.optim.AdamW([p for p in policy.parameters() if p.requires_grad], lr=1e-2)
    stage = stage_boundaries(policy.config.curriculum, 10)[0][1]
    for _ in range(2):
        policy.model.compute_loss(data[2], stage)[0].mean().backward()
        opt.step()
        opt.zero_grad()
    policy.eval()
    g = lambda: torch.Generator().manual_seed(0)  # noqa: E731
    out = policy.model.sample_actions(data[2], generator=g())
    policy.save_pretrained(tmp_path / "adapter")
    full.save_pretrained(tmp_path / "full")
    size = lambda d: (tmp_path / d / "model.safetensors").stat().st_size  # noqa: E731
    assert size("adapter") < 0.7 * size("full")  # frozen base weights are not stored
    again = Policy.from_pretrained(tmp_path / "adapter").model.sample_actions(data[2], generator=g())
    torch.testing.assert_close(out.actions, again.actions)
    policy.save_merged(tmp_path / "merged")
    merged = Policy.from_pretrained(tmp_path / "merged")
    assert merged.config.backbone.lora.rank == 0
    torch.testing.assert_close(
        merged.model.sample_actions(data[2], generator=g()).actions, out.actions, atol=1e-5, rtol=1e-4
    )


def test_gradient_checkpointing_gives_the_same_loss_and_gradients(tiny, data):
    """Under checkpointing transformers drops the KV cache, so the multi-pass forward recomputes prefixes."""
    grads = []
    for on in ("false", "true"):
        policy = _policy(tiny, data, "qwen2_5_vl", "lara", f"policy.backbone.grad_checkpointing={on}").train()
        stage = stage_boundaries(policy.config.curriculum, 100)[3][1]  # II-3: three thoughts
        loss = policy.model.compute_loss(data[2], stage, generator=torch.Generator().manual_seed(0))[0]
        loss.mean().backward()
        grads.append(
            torch.cat([p.grad.flatten() for p in policy.model.backbone.parameters() if p.grad is not None])
        )
    torch.testing.assert_close(grads[0], grads[1], atol=1e-5, rtol=1e-4)


def test_lm_with_fused_siglip_dinov2_and_frozen_encoders(tiny, data):
    policy = _policy(
        tiny, data, "qwen2", "rdvla", "policy.backbone.freeze_vision=true", vision=("dinov2", "siglip")
    )
    vision = policy.model.backbone.vision
    assert vision.num_tokens == 16 and policy.model.backbone.tokens_per_image == 16  # 32 px / patch 8
    stage = stage_boundaries(policy.config.curriculum, 10)[0][1]
    policy.model.compute_loss(data[2], stage)[0].mean().backward()
    assert all(p.grad is None for p in vision.encoders.parameters())
    assert all(p.grad is not None for p in vision.projector.parameters())  # the new projector trains


def test_one_call_through_the_policy_server(tiny, data, tmp_path):
    from latentvla.client import WebsocketPolicyClient
    from latentvla.serve.server import PolicyServer

    policy = _policy(tiny, data, "qwen2_5_vl", "rdvla").eval()
    server = PolicyServer(policy, "127.0.0.1", 0)
    port = server.start_in_thread()
    try:
        obs = {
            f"{OBS_IMAGES}.corner4": np.zeros((32, 32, 3), np.uint8),
            OBS_STATE: np.zeros(4, np.float32),
            TASK: "press the button",
        }
        with WebsocketPolicyClient("127.0.0.1", port, timeout=60) as client:
            reply = client.infer(obs)
    finally:
        server.stop()
    assert reply["actions"].shape == (4, 4) and np.isfinite(reply["actions"]).all()


def test_bfloat16_weights_load_in_their_dtype(tiny, data):
    policy = _policy(tiny, data, "smolvlm", "rdvla", "policy.backbone.dtype=bfloat16")
    assert policy.model.backbone.vlm.dtype == torch.bfloat16
    stage = stage_boundaries(policy.config.curriculum, 10)[0][1]
    assert torch.isfinite(policy.model.compute_loss(data[2], stage)[0]).all()


# ---- CLI: train on a transformers-written directory, bench latency, bench memory ----------------------------
@pytest.mark.slow
@pytest.mark.parametrize("preset", ["lara", "rdvla"])
def test_cli_train_on_a_saved_qwen25vl_then_bench_latency(tiny, data, tmp_path, preset, capsys):
    from latentvla.cli import main

    run = tmp_path / "run"
    argv = [
        "train",
        "--preset",
        preset,
        "--backbone",
        str(tiny["qwen2_5_vl"]),
        "--dataset",
        str(data[0]),
        "--out",
        str(run),
        "--steps",
        "8",
        "--batch-size",
        "2",
        "--no-progress",
        "policy.horizon=4",
    ]
    assert main(argv) == 0
    assert Policy.from_pretrained(run).config.backbone.kind == "hf_vlm"
    capsys.readouterr()
    assert main(["bench", "latency", str(run), "--repeats", "1", "--warmup", "0"]) == 0
    assert "latent" in capsys.readouterr().out


def test_cli_backbone_errors_are_one_line(tiny, data, tmp_path, capsys):
    from latentvla.cli import main

    base = ["train", "--dataset", str(data[0]), "--out", str(tmp_path / "r"), "--steps", "1"]
    assert main([*base, "--preset", "lara-qwen3vl"]) == 2
    assert "needs --backbone DIR" in capsys.readouterr().err
    assert main([*base, "--preset", "lara", "--backbone", str(tmp_path)]) == 2
    assert "no config.json" in capsys.readouterr().err
    assert (
        main([*base, "--preset", "lara", "--backbone", str(tiny["qwen2_5_vl"]), "--vision", str(tiny["siglip"])])
        == 2
    )
    assert "drop --vision" in capsys.readouterr().err


def test_bench_memory_from_configs_alone(tiny, tmp_path, capsys):
    """The table comes from config.json alone (weights deleted: meta device); FSDP divides what it shards."""
    from latentvla.bench.memory import estimate
    from latentvla.cli import main

    cfg_only = tmp_path / "cfg"
    cfg_only.mkdir()
    (cfg_only / "config.json").write_text((tiny["qwen2_5_vl"] / "config.json").read_text())
    one = estimate("lara", str(cfg_only), batch_size=8)
    four = estimate("lara", str(cfg_only), batch_size=8, world=4, fsdp=True)
    assert one.params == four.params == one.trainable  # full fine-tuning
    assert four.grads_gb == pytest.approx(one.grads_gb / 4) and four.optimizer_gb == pytest.approx(
        one.optimizer_gb / 4
    )
    assert four.batch_per_gpu == 2 and four.activations_gb < one.activations_gb
    lora = estimate("rdvla", str(cfg_only), lora=8, batch_size=8)
    vlm = transformers.AutoModelForImageTextToText.from_pretrained(tiny["qwen2_5_vl"])
    new_rows = (8 + get_preset("rdvla").policy.num_action_bins) * 64 * 2  # embeddings + untied lm_head
    assert lora.params - lora.trainable == sum(p.numel() for p in vlm.parameters()) + new_rows  # base frozen
    assert (
        main(
            [
                "bench",
                "memory",
                "--preset",
                "rdvla",
                "--backbone",
                str(cfg_only),
                "--lora",
                "8",
                "--fsdp",
                "2",
                "--batch-size",
                "4",
            ]
        )
        == 0
    )
    out = capsys.readouterr().out
    assert "| trainable parameters |" in out and "2 x fsdp" in out


@pytest.mark.slow
def test_bench_memory_paper_presets_from_reference_configs(capsys):
    from latentvla.cli import main

    assert main(["bench", "memory", "--preset", "lara-qwen3vl", "--fsdp", "8"]) == 0
    out = capsys.readouterr().out
    assert "Qwen3-VL-4B" in out and "8 x fsdp" in out
    assert main(["bench", "memory", "--preset", "rdvla-minivla", "--gpu-gb", "24"]) == 0
    assert "DINOv2" in capsys.readouterr().out
