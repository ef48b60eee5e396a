"""Latency/memory benchmark: the report's keys, the memory tracker, the CLI on a random-init preset."""

from __future__ import annotations

import json

import pytest
import torch

from latentvla.bench.latency import PeakTensorMemory, bench_latency, format_table
from latentvla.cli import main
from latentvla.scripts.bench import _random_policy


def test_peak_tensor_memory_counts_live_storages_exactly():
    with PeakTensorMemory() as tracker:
        a = torch.ones(1024, dtype=torch.float32)  # 4 KiB
        b = torch.ones(2048, dtype=torch.float32)  # 8 KiB -> 12 KiB live
        del a, b
        c = torch.ones(256, dtype=torch.float32)  # 1 KiB: peak stays 12 KiB
        c.add_(1)  # in place: no new storage
        view = c[:10]  # a view shares c's storage
        del view
    assert tracker.peak == 12 * 1024
    assert tracker.current == 1024  # only c is alive
    del c


def test_latency_report_has_every_path_and_flat_recurrent_memory():
    policy = _random_policy("lara-rd", "micro").eval()
    report = bench_latency(policy, warmup=0, repeats=1, depths=(1, 4, 8), max_depth=8)
    for key in ("no_reasoning_ms", "latent_ms", "explicit_ms", "rd_adaptive_ms", "rd_adaptive_mean_iterations"):
        assert report[key] > 0, key
    assert set(report["rd_fixed_ms"]) == {"1", "4", "8"}
    mem = report["rd_peak_mem_mb"]
    # inference keeps no per-iteration state: the head's peak memory may not grow with depth (RD-VLA)
    assert mem["8"] <= 1.05 * mem["4"], mem
    assert report["num_thinking_tokens"] == 3
    assert "explicit / latent" in format_table(report)


def test_head_memory_measurement_catches_a_per_iteration_leak():
    """The head-alone peak must see a leak of one scratchpad per iteration (the whole-call peak, dominated by the
    backbone, did not): keep every state the core produces and the 8-iteration peak grows."""
    from latentvla.bench.latency import example_observation, head_peak_mb

    policy = _random_policy("rdvla", "micro").eval()
    obs = example_observation(policy)
    head = policy.model.head
    scratch_mb = head.cfg.chunk * head.cfg.width * 4 / 2**20  # one (1, K, D) float32 scratchpad
    flat = head_peak_mb(policy, obs, (4, 32))
    assert flat["32"] - flat["4"] < scratch_mb, flat  # not even one scratchpad more at 32 iterations
    kept, real = [], head.core_step
    head.core_step = lambda *a, **k: kept.append(real(*a, **k)) or kept[-1]
    leaky = head_peak_mb(policy, obs, (4, 32))
    assert leaky["32"] - leaky["4"] >= 0.9 * 28 * scratch_mb, leaky


def test_bench_runs_only_the_modes_a_model_has():
    report = bench_latency(_random_policy("ecot", "micro").eval(), warmup=0, repeats=1)
    assert report["latent_ms"] is None and report["explicit_ms"] > 0 and 0 <= report["explicit_cot_tokens"] <= 96
    report = bench_latency(_random_policy("lara", "micro").eval(), warmup=0, repeats=1)
    assert report["explicit_cot_tokens"] > 0 and report["ratio_latent_over_no_reasoning"] > 0


def test_flow_checkpoint_has_no_recurrent_keys_and_times_the_expert_both_ways():
    report = bench_latency(_random_policy("lara", "micro").eval(), warmup=0, repeats=1)
    assert "rd_fixed_ms" not in report and "rd_peak_mem_mb" not in report
    assert (
        report["expert_steps"] == 4 and report["expert_sample_ms"] > 0 and report["expert_sample_uncached_ms"] > 0
    )
    assert report["expert_actions_max_abs_diff"] <= 1e-6  # the cache changes time, not actions
    assert "context K/V once" in format_table(report)


def test_head_flop_model_matches_a_flop_counter():
    """The per-iteration FLOP model equals torch's FLOP counter on the real head (r = 3 minus r = 2), both paths."""
    from torch.nn.attention import SDPBackend, sdpa_kernel
    from torch.utils.flop_counter import FlopCounterMode

    from latentvla.bench.head import CHUNK, STATE_DIM, head_flops, split_context
    from latentvla.models.recurrent_head import RecurrentDepthHead, RecurrentHeadConfig

    W, T = 32, 28
    n_lat, n_vis = split_context(T)
    assert (n_lat, n_vis) == (3, 24) and split_context(577) == (64, 512)
    head = RecurrentDepthHead(RecurrentHeadConfig(width=W, heads=2, chunk=CHUNK), W, 7, STATE_DIM)
    head.requires_grad_(False)  # the counter's module hooks need grad mode; r <= backprop_depth: no no_grad block
    lat, vis, st = torch.randn(1, n_lat, W), torch.randn(1, n_vis, W), torch.randn(1, STATE_DIM)

    def flops(r, cache):
        # the math SDPA backend runs attention as counted bmm's (the CPU flash kernel has no FLOP formula)
        with sdpa_kernel(SDPBackend.MATH), FlopCounterMode(display=False) as counter:
            head(lat, lat, vis, st, prelude_vision_context=vis, num_iterations=r, cache_context=cache)
        return counter.get_total_flops()

    model = head_flops(W, T)
    assert flops(3, True) - flops(2, True) == model["per_iteration_cached"]
    assert flops(3, False) - flops(2, False) == model["per_iteration_uncached"]
    core = sum(p.numel() for n, p in head.core.named_parameters() if p.dim() == 2 and ".kv_" not in n)
    assert model["weight_bytes_cached"] == 4 * (core + head.adapter.weight.numel())
    kv = sum(p.numel() for n, p in head.core.named_parameters() if ".kv_" in n)
    assert model["weight_bytes_uncached"] == model["weight_bytes_cached"] + 4 * kv
    paper = head_flops(896, 577)  # RD-VLA's head: the projection is ~88 % of an iteration
    assert 0.87 < paper["projection_share"] < 0.89


def test_cli_bench_head_writes_json_and_paths_agree(tmp_path, capsys):
    out = tmp_path / "head.json"
    args = [
        "bench",
        "head",
        "--width",
        "32",
        "--heads",
        "2",
        "--context",
        "28",
        "--batch",
        "2",
        "--iterations",
        "1,3",
        "--repeats",
        "1",
        "--warmup",
        "0",
        "--json",
        str(out),
    ]
    assert main(args) == 0
    report = json.loads(out.read_text())
    assert report["max_abs_diff"] <= 1e-6 and set(report["cached"]["ms"]) == {"1", "3"}
    assert report["per_iteration_ratio"] is not None and report["cached"]["peak_mem_mb"] > 0
    assert "per-iteration cost cached / uncached" in capsys.readouterr().out
    assert main([*args[:-2], "--no-cache"]) == 0 and "cached ms/call" in capsys.readouterr().out
    assert main([*args[:-2], "--train"]) == 0 and "training step" in capsys.readouterr().out
    assert main(["bench", "head", "--context", "2"]) == 2
    assert "--context must be >= 3" in capsys.readouterr().err


def test_cli_random_preset_writes_json(tmp_path, capsys):
    out = tmp_path / "lat.json"
    assert (
        main(
            [
                "bench",
                "latency",
                "--preset",
                "rdvla",
                "--size",
                "micro",
                "--repeats",
                "1",
                "--warmup",
                "0",
                "--json",
                str(out),
            ]
        )
        == 0
    )
    report = json.loads(out.read_text())
    assert report["source"] == "rdvla" and "rd_peak_mem_mb" in report
    assert "median ms/call" in capsys.readouterr().out


def test_cli_needs_exactly_one_source(capsys):
    assert main(["bench", "latency"]) == 2
    assert "give a checkpoint" in capsys.readouterr().err
    with pytest.raises(ValueError, match="Did you mean"):
        _random_policy("lara-rdd", "micro")


def test_bench_data_cli_reports_decode_and_loader_rates(tmp_path, capsys):
    from latentvla.data.synthetic import write_synthetic_dataset

    root = write_synthetic_dataset(tmp_path / "ds", num_episodes=2, length=6, image_size=16, cameras=("a", "b"))
    out = tmp_path / "data.json"
    argv = [
        "bench",
        "data",
        str(root),
        "--workers",
        "0",
        "--batch-size",
        "4",
        "--batches",
        "2",
        "--json",
        str(out),
    ]
    assert main(argv) == 0
    report = json.loads(out.read_text())
    # caches off: each sample decodes camera a's frames t and t+1 (t+1 absent at an episode end) and b's frame t
    assert 2.0 < report["decoded_frames_per_sample"] <= 3.0
    assert report["frames"] == 12 and report["storage"] == ["image"]
    for key in ("open_s", "decode_frames_per_s", "loader_samples_per_s", "peak_rss_mb", "peak_pss_mb"):
        assert report[key] > 0, key
    assert "bottleneck" not in capsys.readouterr().out  # no --train-preset: no training comparison
    assert main(["bench", "data", str(root), "--workers", "-1"]) == 2
    assert main(["bench", "data", str(tmp_path / "missing")]) == 2


def test_tree_memory_counts_child_processes():
    import subprocess
    import sys
    import time

    from latentvla.bench.data_throughput import tree_memory_mb

    before, _ = tree_memory_mb()
    code = "import sys, time; b = bytearray(150 * 2**20); b[::4096] = b'x' * len(b[::4096]); print(1, flush=True); time.sleep(30)"
    child = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE)
    try:
        child.stdout.readline()  # the child has touched its 150 MB
        time.sleep(0.05)
        during, pss = tree_memory_mb()
    finally:
        child.kill()
        child.wait()
    assert during - before > 140 and pss > 140


def test_bench_data_with_training_records_rate_and_peak_rss(tmp_path):
    from latentvla.bench.data_throughput import bench_data, format_report
    from latentvla.data.synthetic import write_synthetic_dataset

    root = write_synthetic_dataset(tmp_path / "ds", num_episodes=2, length=6, image_size=16)
    report = bench_data(
        root,
        workers=0,
        batch_size=2,
        batches=1,
        decode_samples=4,
        train_preset="lara-no-cot",
        train_steps=2,
        train_overrides=["policy.horizon=4"],
    )
    assert report["train_samples_per_s"] > 0 and report["train_steps"] == 2
    assert report["train_peak_rss_mb"] >= report["train_peak_pss_mb"] > 0
    assert "the bottleneck is" in format_report(report)


def test_latency_paths_are_timed_round_robin_with_rotating_order(monkeypatch):
    """Timing one path after another let warm-up and drift land on whichever came first (a 0.95x latent /
    no-reasoning ratio that measured 1.4x interleaved): every round calls every path once, rotating the order."""
    import latentvla.bench.latency as latency

    clock = [0.0]
    monkeypatch.setattr(latency.time, "perf_counter", lambda: clock[0])
    calls: list[str] = []

    def path(name: str, seconds: float) -> None:
        calls.append(name)
        clock[0] += seconds * sum(c == name for c in calls)  # the k-th call of a path takes k times its cost

    fns = {name: (lambda name=name, s=s: path(name, s)) for name, s in (("a", 1e-3), ("b", 2e-3), ("c", 4e-3))}
    out = latency.time_interleaved(fns, warmup=1, repeats=4)
    # timed calls 2..5 of `a` took 2, 3, 4, 5 ms: median 3.5, p90 4.7 (numpy's linear interpolation); b, c scale
    for name, scale in (("a", 1), ("b", 2), ("c", 4)):
        assert out[name]["median"] == pytest.approx(3.5 * scale) and out[name]["p90"] == pytest.approx(4.7 * scale)
    assert calls == list("abc" + "abc" + "bca" + "cab" + "abc")  # warm-up, then rounds rotated by one
