"""`latentvla bench <what>`: measurements in one process, as JSON + a table.

    latentvla bench train                                  # samples/s per preset (and per LaRA stage), tiny size
    latentvla bench train --presets lara,rdvla --steps 10 --batch-size 16 --json bench_train.json
    latentvla bench train --dataset data/mw4               # a real dataset instead of a synthetic one
    latentvla bench train --presets lara --flops           # + FLOPs/step, GEMM peak, utilization, speedup bound
    latentvla bench profile --dataset data/mw6 --presets lara,rdvla   # torch.profiler breakdown (docs/profile.md)
    latentvla bench latency RUN --json latency.json        # per-call latency per reasoning path, RD memory
    latentvla bench latency --preset lara-rd               # the same on a random-init config
    latentvla bench data DIR --workers 2 --json data.json  # data pipeline: open time, decode frames/s, samples/s, RSS
    latentvla bench data DIR --train-preset lara-no-cot --train-steps 20   # + training rate, train() peak RSS
    latentvla bench head --width 896 --heads 8 --context 577 --batch 1 --json head.json   # RD head, cache vs not
    latentvla bench memory --preset lara-qwen3vl --fsdp 8  # per-GPU memory at the papers' scale (meta device)
    latentvla bench memory --preset rdvla-minivla --backbone DIR --vision DIR --lora 64 --batch-size 16

Each measurement lives in `latentvla/bench/`; this file only parses arguments. Add a measurement by adding a
sub-subcommand here (a `register_<name>` function below and its entry in `_SUBCOMMANDS`).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

from latentvla.errors import UserError, message
from latentvla.scripts.choices import RegistryHelpFormatter


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "bench", help="benchmarks (train throughput, ...)", description=__doc__.splitlines()[0]
    )
    sub = p.add_subparsers(dest="bench_command", metavar="WHAT")
    for register_sub in _SUBCOMMANDS:
        register_sub(sub)
    p.set_defaults(func=None, help_parser=p)  # no subcommand: cli.main prints this help


def register_train(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("train", help="training throughput (samples/s) per preset at the tiny size")
    p.add_argument("--presets", default=None, help="comma-separated presets (default: all six)")
    p.add_argument("--dataset", default="synthetic", help="LeRobot dataset dir, or 'synthetic' (default)")
    p.add_argument("--steps", type=int, default=5, help="timed optimizer steps per stage")
    p.add_argument("--warmup", type=int, default=1, help="untimed optimizer steps per stage")
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--json", default=None, help="also write the results to this JSON file")
    p.add_argument(
        "--flops",
        action="store_true",
        help="also count FLOPs per step and compare with this machine's GEMM peak (utilization)",
    )
    p.add_argument("overrides", nargs="*", metavar="KEY=VALUE", help="TrainConfig overrides, e.g. device=cuda")
    p.set_defaults(func=main_train)


def main_train(args: argparse.Namespace) -> int:
    import torch

    from latentvla.bench.train_throughput import DEFAULT_PRESETS, format_table, run_train_bench

    presets = [p.strip() for p in args.presets.split(",") if p.strip()] if args.presets else list(DEFAULT_PRESETS)
    dataset = None if args.dataset == "synthetic" else args.dataset
    try:
        if dataset is not None:
            from latentvla.hub import resolve_dataset

            dataset = str(resolve_dataset(dataset))  # a LeRobot repo id: its HF_LEROBOT_HOME copy
        results = run_train_bench(
            presets,
            dataset,
            steps=args.steps,
            batch_size=args.batch_size,
            warmup=args.warmup,
            overrides=list(args.overrides),
            flops=args.flops,
        )
    except ValueError as e:
        raise UserError(str(e)) from e
    print(format_table(results))
    if args.json:
        payload = {
            "benchmark": "train",
            "torch": torch.__version__,
            "threads": torch.get_num_threads(),
            "results": results,
        }
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps(payload, indent=2))
        print(f"wrote {args.json}")
    return 0


def register_data(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("data", help="data pipeline: open time, decode frames/s, loader samples/s, peak RSS")
    p.add_argument("dir", help="LeRobot dataset directory (PNG-in-parquet or video)")
    p.add_argument("--workers", type=int, default=2, help="DataLoader workers (default 2)")
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--batches", type=int, default=30, help="timed DataLoader batches")
    p.add_argument("--camera", action="append", help="camera name; repeat (default: every camera)")
    p.add_argument("--train-preset", default=None, help="also measure this preset's training samples/s")
    p.add_argument("--train-steps", type=int, default=0, help="also run train() this many steps, record peak RSS")
    p.add_argument("--json", default=None, help="also write the report to this JSON file")
    p.add_argument(
        "--override",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="TrainConfig override for the training part; repeat (e.g. policy.cameras=corner4,top)",
    )
    p.set_defaults(func=main_data)


def main_data(args: argparse.Namespace) -> int:
    import torch

    from latentvla.bench.data_throughput import bench_data, format_report
    from latentvla.data.errors import DatasetFormatError

    if args.workers < 0 or args.batch_size < 1 or args.batches < 1:
        raise UserError("--workers must be >= 0, --batch-size and --batches >= 1")
    try:
        report = bench_data(
            args.dir,
            workers=args.workers,
            batch_size=args.batch_size,
            batches=args.batches,
            cameras=args.camera,
            train_preset=args.train_preset,
            train_steps=args.train_steps,
            train_overrides=list(args.override),
        )
    except (DatasetFormatError, ValueError, KeyError) as e:
        raise UserError(message(e)) from e
    print(format_report(report))
    if args.json:
        payload = {"benchmark": "data", "torch": torch.__version__, "threads": torch.get_num_threads(), **report}
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps(payload, indent=2))
        print(f"wrote {args.json}")
    return 0


def register_profile(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("profile", help="torch.profiler breakdown of a training step per preset and stage")
    p.add_argument("--presets", default="lara,rdvla", help="comma-separated presets")
    p.add_argument("--dataset", required=True, help="LeRobot dataset dir")
    p.add_argument("--steps", type=int, default=3, help="profiled optimizer steps per stage")
    p.add_argument("--warmup", type=int, default=2, help="unprofiled optimizer steps per stage")
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--json", default=None, help="also write the results to this JSON file")
    p.add_argument("--trace-dir", default=None, help="write one Chrome trace per (preset, stage) here")
    p.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's, = cores)")
    p.add_argument("overrides", nargs="*", metavar="KEY=VALUE", help="TrainConfig overrides")
    p.set_defaults(func=main_profile)


def main_profile(args: argparse.Namespace) -> int:
    import torch

    from latentvla.bench.profile_train import format_profile, profile_preset

    presets = [p.strip() for p in args.presets.split(",") if p.strip()]
    if args.threads:
        torch.set_num_threads(args.threads)
    from latentvla.hub import HubError, resolve_dataset

    try:
        args.dataset = str(resolve_dataset(args.dataset))  # a LeRobot repo id: its HF_LEROBOT_HOME copy
    except HubError as e:
        raise UserError(str(e)) from e
    if not Path(args.dataset, "meta", "info.json").is_file():
        raise UserError(
            f"{args.dataset} is not a LeRobot dataset (no meta/info.json); make one with `latentvla collect`"
        )
    try:
        results = [
            profile_preset(
                p,
                args.dataset,
                steps=args.steps,
                warmup=args.warmup,
                batch_size=args.batch_size,
                overrides=list(args.overrides),
                trace_dir=args.trace_dir,
            )
            for p in presets
        ]
    except ValueError as e:
        raise UserError(str(e)) from e
    print(
        f"torch {torch.__version__}, {torch.get_num_threads()} threads; ms per optimizer step (share of the step)"
    )
    print(format_profile(results))
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps({"torch": torch.__version__, "results": results}, indent=2))
        print(f"wrote {args.json}")
    return 0


def register_latency(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "latency",
        help="per-call latency: no reasoning / latent / explicit CoT / recurrent depths",
        formatter_class=RegistryHelpFormatter,
    )
    p.add_argument("run", nargs="?", default=None, help="checkpoint or run dir (or use --preset)")
    p.add_argument(
        "--preset", default=None, help="benchmark a random-init preset instead of a checkpoint: {presets}"
    )
    p.add_argument("--size", default="tiny", help="size of the random-init preset: {sizes}")
    p.add_argument("--repeats", type=int, default=20)
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument("--delta", type=float, default=1e-3, help="MSE halting threshold for the adaptive RD run")
    p.add_argument("--device", default="cpu", help="cpu (default), cuda, cuda:N, auto")
    p.add_argument(
        "--precision",
        choices=("auto", "fp32", "bf16"),
        default="auto",
        help="as eval / serve: bf16 autocast + TF32 on a CUDA GPU (auto), fp32 on CPU",
    )
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's)")
    p.add_argument("--json", default=None, help="also write the report to this JSON file")
    p.set_defaults(func=main_latency)


def _random_policy(preset: str, size: str):
    from latentvla.config import get_preset
    from latentvla.constants import ACTION, OBS_STATE
    from latentvla.data.stats import Normalizer
    from latentvla.policy import Policy

    cfg = get_preset(preset, size).policy
    stats = {}
    for key, dim in ((OBS_STATE, cfg.state_dim), (ACTION, cfg.action_dim)):
        z, o = [0.0] * dim, [1.0] * dim
        stats[key] = {"mean": z, "std": o, "min": [-1.0] * dim, "max": o, "q01": [-1.0] * dim, "q99": o}
    return Policy(cfg, Normalizer(stats))


def main_latency(args: argparse.Namespace) -> int:
    import torch

    from latentvla.bench.latency import bench_latency, format_table
    from latentvla.policy import Policy

    if (args.run is None) == (args.preset is None):
        raise UserError("give a checkpoint/run dir or --preset NAME (not both)")
    if args.threads:
        torch.set_num_threads(args.threads)
    from latentvla.device import resolve_device

    try:
        device = resolve_device(args.device)
        policy = Policy.from_pretrained(args.run) if args.run else _random_policy(args.preset, args.size)
    except (FileNotFoundError, ValueError) as e:
        raise UserError(str(e)) from e
    policy = policy.to(device).eval()
    dtype = policy.set_precision(args.precision)  # what eval / serve run with on this device
    report = bench_latency(
        policy,
        warmup=args.warmup,
        repeats=args.repeats,
        delta=args.delta,
        progress=lambda name: print(f"timing {name} ...", file=sys.stderr),
    )
    report.update(
        {
            "torch": torch.__version__,
            "threads": torch.get_num_threads(),
            "source": args.run or args.preset,
            "device": device,
            "autocast": str(dtype).removeprefix("torch.") if dtype is not None else None,
        }
    )
    print(format_table(report))
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps(report, indent=2))
        print(f"wrote {args.json}")
    return 0


def _int_list(text: str) -> tuple[int, ...]:
    try:
        values = tuple(int(v) for v in text.split(",") if v.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers like 1,4,8, got {text!r}") from None
    if not values or min(values) < 1:
        raise argparse.ArgumentTypeError(f"expected integers >= 1, got {text!r}")
    return values


def register_head(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("head", help="recurrent head alone: per-iteration cost with vs without the context cache")
    p.add_argument("--width", type=int, default=896, help="head width = context width (RD-VLA: 896)")
    p.add_argument("--heads", type=int, default=8)
    p.add_argument("--context", type=int, default=577, help="key tokens: latent + 1 proprio + vision (577)")
    p.add_argument("--batch", type=int, default=1)
    p.add_argument("--iterations", type=_int_list, default=(1, 4, 8, 12, 32), help="depths, e.g. 1,4,8,12,32")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--warmup", type=int, default=1)
    p.add_argument("--no-cache", action="store_true", help="time only the re-projecting reference path")
    p.add_argument("--train", action="store_true", help="time a training step (TBPTT forward + backward)")
    p.add_argument("--device", default="cpu")
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's)")
    p.add_argument("--json", default=None, help="also write the report to this JSON file")
    p.set_defaults(func=main_head)


def main_head(args: argparse.Namespace) -> int:
    import platform

    import torch

    from latentvla.bench.head import bench_head, format_table

    if args.threads:
        torch.set_num_threads(args.threads)
    try:
        report = bench_head(
            width=args.width,
            heads=args.heads,
            context=args.context,
            batch=args.batch,
            iterations=args.iterations,
            repeats=args.repeats,
            warmup=args.warmup,
            device=args.device,
            modes=("uncached",) if args.no_cache else ("cached", "uncached"),
            train=args.train,
            progress=lambda name: print(f"timing {name} ...", file=sys.stderr),
        )
    except (ValueError, RuntimeError) as e:
        raise UserError(str(e).splitlines()[0]) from e
    report.update(
        {"torch": torch.__version__, "threads": torch.get_num_threads(), "machine": platform.processor() or ""}
    )
    print(format_table(report))
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps(report, indent=2))


def register_memory(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "memory",
        help="parameters and per-GPU training memory from configs alone (meta device)",
        formatter_class=RegistryHelpFormatter,
    )
    p.add_argument(
        "--preset", required=True, help="lara-qwen3vl, rdvla-minivla, or any preset + --backbone: {presets}"
    )
    p.add_argument("--backbone", default=None, metavar="DIR", help="local model dir (only config.json is read)")
    p.add_argument("--vision", action="append", default=[], metavar="DIR", help="local SigLIP / DINOv2 dir")
    p.add_argument(
        "--lora",
        type=int,
        nargs="?",
        const=64,
        default=None,
        metavar="RANK",
        help="LoRA on the language model (rank, default 64); 0 = full fine-tuning",
    )
    p.add_argument("--fsdp", type=int, default=None, metavar="N", help="FSDP2 over N GPUs (default: 1 GPU)")
    p.add_argument("--gpus", type=int, default=None, help="DDP over this many GPUs (without --fsdp)")
    p.add_argument("--batch-size", type=int, default=None, help="global batch (default: the preset's)")
    p.add_argument("--gpu-gb", type=float, default=80.0, help="GPU memory for the largest-batch column")
    p.add_argument("--cameras", type=int, default=None, help="cameras per sample (default: the preset's)")
    p.add_argument(
        "--device",
        default="cuda",
        choices=["cuda", "cpu"],
        help="cpu: predict a CPU run's peak RSS (no autocast, + the process runtime)",
    )
    p.add_argument("--dtype", default=None, help="override policy.backbone.dtype (e.g. float32 for a CPU run)")
    p.add_argument("--json", default=None, help="also write the report to this JSON file")
    p.set_defaults(func=main_memory)


def main_memory(args: argparse.Namespace) -> int:
    import dataclasses

    from latentvla.bench.memory import estimate

    world = args.fsdp or args.gpus or 1
    try:
        report = estimate(
            args.preset,
            args.backbone,
            tuple(args.vision),
            lora=args.lora,
            world=world,
            fsdp=args.fsdp is not None,
            batch_size=args.batch_size,
            gpu_gb=args.gpu_gb,
            cameras=args.cameras,
            device=args.device,
            dtype=args.dtype,
        )
    except (ValueError, KeyError) as e:
        raise UserError(str(e)) from e
    print(report.table())
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps(dataclasses.asdict(report), indent=2))
        print(f"wrote {args.json}")
    return 0


def register_real_size(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "real-size",
        help="rdvla-minivla at full size on this CPU (random weights): peak RSS vs `bench memory --device cpu`",
    )
    p.add_argument("--out", required=True, help="work directory (models ~5 GB, dataset, run, real_size.json)")
    p.add_argument("--batch-size", type=int, default=2)
    p.add_argument("--steps", type=int, default=2, help="steps before the checkpoint + --resume (one more step)")
    p.add_argument("--check-only", action="store_true", help="only compare OUT/real_size.json with bench memory")
    p.add_argument("--tolerance", type=float, default=0.10)
    p.set_defaults(func=main_real_size)


def main_real_size(args: argparse.Namespace) -> int:
    from latentvla.bench.real_size import check, train_measured

    report_file = Path(args.out) / "real_size.json"
    if args.check_only:
        if not report_file.is_file():
            raise UserError(f"no {report_file}; run `latentvla bench real-size --out {args.out}` first")
        report = json.loads(report_file.read_text())
    else:
        train_measured(args.out, batch_size=args.batch_size, steps=args.steps)
        # the prediction counts its own process's runtime: check from a fresh one, not this model-writing one
        argv = [
            sys.executable,
            "-m",
            "latentvla.cli",
            "bench",
            "real-size",
            "--out",
            args.out,
            "--check-only",
            "--tolerance",
            str(args.tolerance),
        ]
        return subprocess.run(argv, check=False).returncode
    ok, line = check(report, args.tolerance)
    print(line)
    return 0 if ok else 1


_SUBCOMMANDS = [
    register_train,
    register_profile,
    register_latency,
    register_data,
    register_head,
    register_memory,
    register_real_size,
]
