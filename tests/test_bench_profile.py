"""`latentvla bench profile`: the per-part breakdown of a training step and the floor of its own matmuls."""

from __future__ import annotations

import json
from collections import Counter

import pytest
import torch
from torch.profiler import ProfilerActivity, profile

from latentvla.bench.profile_train import PARTS, gemm_alone_ms, gemm_shapes
from latentvla.cli import main
from latentvla.data.synthetic import write_synthetic_dataset


def test_gemm_shapes_counts_every_matmul_of_forward_and_backward_by_shape():
    lin = torch.nn.Linear(16, 8)  # addmm forward; backward: mm for the input gradient and one for the weight
    x = torch.randn(4, 16, requires_grad=True)
    a, b = torch.randn(3, 5), torch.randn(5, 7)
    with profile(activities=[ProfilerActivity.CPU], record_shapes=True) as prof:
        lin(x).sum().backward()
        torch.mm(a, b)
        torch.mm(a, b)
        torch.bmm(torch.randn(2, 3, 4), torch.randn(2, 4, 6))
    shapes = gemm_shapes(prof)
    assert shapes[("aten::addmm", ((8,), (4, 16), (16, 8)))] == 1
    assert shapes[("aten::mm", ((3, 5), (5, 7)))] == 2
    assert shapes[("aten::bmm", ((2, 3, 4), (2, 4, 6)))] == 1
    backward = {k: n for k, n in shapes.items() if k[0] == "aten::mm" and k[1] != ((3, 5), (5, 7))}
    assert sorted(k[1] for k in backward) == [((4, 8), (8, 16)), ((8, 4), (4, 16))]  # dX = dY W, dW = dY^T X
    assert sum(shapes.values()) == 6


def test_gemm_alone_ms_is_the_best_single_call_times_the_number_of_calls(monkeypatch):
    import latentvla.bench.profile_train as pt

    ticks = iter(range(10**6))  # a fake clock: every perf_counter() call advances 1 ms, so each timed call = 1 ms
    monkeypatch.setattr(pt.time, "perf_counter", lambda: next(ticks) * 1e-3)
    shapes = Counter({("aten::mm", ((8, 4), (4, 2))): 1000, ("aten::addmm", ((2,), (8, 4), (4, 2))): 3})
    assert gemm_alone_ms(shapes) == pytest.approx(1003.0)
    assert gemm_alone_ms(Counter()) == 0.0


def test_bench_profile_cli_reports_every_part_and_the_gemm_floor(tmp_path, capsys):
    data = write_synthetic_dataset(tmp_path / "ds", num_episodes=2, length=12, image_size=32)
    out = tmp_path / "profile.json"
    args = ["bench", "profile", "--dataset", str(data), "--presets", "rdvla", "--steps", "1", "--warmup", "0"]
    assert main([*args, "--batch-size", "2", "--json", str(out), "policy.recurrent.max_depth=2"]) == 0
    (r,) = json.loads(out.read_text())["results"]
    (stage,) = r["stages"].values()
    assert set(PARTS) <= set(stage) and stage["step"] > 0
    assert stage["gemm_alone"] > 0  # the head and backbone run matmuls; their floor is counted
    assert "gemm_alone" in capsys.readouterr().out
