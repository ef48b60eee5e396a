"""`latentvla bench train`: samples/s per stage and, with --flops, FLOPs per step against the machine's GEMM peak."""

from __future__ import annotations

import json
from types import SimpleNamespace

import pytest
import torch
from torch import nn

from latentvla.bench.train_throughput import format_table, step_flops
from latentvla.cli import main


class _Linear(nn.Module):
    """A loss module with known arithmetic: one (B, 16) x (16, 8) matmul forward, one for the weight gradient."""

    def __init__(self) -> None:
        super().__init__()
        self.lin = nn.Linear(16, 8)

    def forward(self, batch, stage, step):
        return self.lin(batch["x"]).pow(2).sum(-1), {"loss": 0.0}


def test_step_flops_counts_forward_and_weight_gradient_of_every_micro_batch():
    module = _Linear()
    batches = iter([{"x": torch.randn(4, 16)} for _ in range(3)])
    cfg = SimpleNamespace(grad_accum=2, bf16=False)
    flops = step_flops(module, batches, stage=None, cfg=cfg, device=torch.device("cpu"))
    # x needs no gradient: forward 2*B*in*out, weight gradient 2*B*in*out, for each of the 2 micro-batches
    assert flops == 2 * (2 * 4 * 16 * 8 + 2 * 4 * 16 * 8)
    assert next(batches)["x"].shape == (4, 16)  # exactly grad_accum batches were consumed
    assert all(p.grad is None for p in module.parameters())  # the counted step leaves no gradient behind


@pytest.mark.slow
def test_bench_train_cli_reports_flops_utilization_and_bound(tmp_path, capsys):
    out = tmp_path / "bench.json"
    args = ["bench", "train", "--presets", "lara-no-cot", "--steps", "1", "--warmup", "0", "--batch-size", "2"]
    assert main([*args, "--flops", "--json", str(out)]) == 0
    (r,) = json.loads(out.read_text())["results"]
    assert set(r["gflop_per_step"]) == set(r["stages"]) == {"I", "III"}
    assert all(v > 0 for v in r["gflop_per_step"].values())
    assert r["gemm_peak_gflops"] > 0
    assert r["utilization"] * r["speedup_bound"] == pytest.approx(1.0)
    for name, rate in r["stages"].items():  # achieved = FLOPs per step x steps per second
        assert r["achieved_gflops"][name] == pytest.approx(r["gflop_per_step"][name] * rate / 2)
    assert "speedup bound" in capsys.readouterr().out

    # the count follows the computation: one flow-noise draw per backbone pass costs less than the default four
    fewer = tmp_path / "fewer.json"
    assert main([*args, "--flops", "--json", str(fewer), "policy.expert.repeats=1"]) == 0
    (r2,) = json.loads(fewer.read_text())["results"]
    assert r2["gflop_per_step"]["III"] < r["gflop_per_step"]["III"]
    assert r2["gflop_per_step"]["I"] == pytest.approx(r["gflop_per_step"]["I"])


def test_table_without_flops_keeps_its_columns():
    r = {"preset": "bc", "samples_per_s": 10.0, "stages": {"BC": 10.0}, "params_m": 1.0}
    table = format_table([r])
    assert "utilization" not in table and "| bc | 10.0 | 1.00 | BC 10.0 |" in table
