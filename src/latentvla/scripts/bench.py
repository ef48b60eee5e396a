"""`latentvla bench <what>`: measurements in one process, as JSON + a table (SPEC C16).

    latentvla bench train                                  # samples/s per preset (and per LaRA stage), tiny size
    latentvla bench train --presets lara,rdvla --steps 10 --batch-size 16 --json bench_train.json
    latentvla bench train --dataset data/mw4               # a real dataset instead of a synthetic one

Each measurement lives in `latentvla/bench/`; this file only parses arguments. Add a measurement by adding a
sub-subcommand here (a `register_<name>` function below and its entry in `_SUBCOMMANDS`).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "bench", help="benchmarks (train throughput, ...)", description=__doc__.splitlines()[0]
    )
    sub = p.add_subparsers(dest="bench_command", metavar="WHAT")
    for register_sub in _SUBCOMMANDS:
        register_sub(sub)
    p.set_defaults(func=lambda args: (p.print_help(), 2)[1])


def register_train(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("train", help="training throughput (samples/s) per preset at the tiny size")
    p.add_argument("--presets", default=None, help="comma-separated presets (default: all six)")
    p.add_argument("--dataset", default="synthetic", help="LeRobot dataset dir, or 'synthetic' (default)")
    p.add_argument("--steps", type=int, default=5, help="timed optimizer steps per stage")
    p.add_argument("--warmup", type=int, default=1, help="untimed optimizer steps per stage")
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--json", default=None, help="also write the results to this JSON file")
    p.add_argument("overrides", nargs="*", metavar="KEY=VALUE", help="TrainConfig overrides, e.g. device=cuda")
    p.set_defaults(func=main_train)


def main_train(args: argparse.Namespace) -> int:
    import torch

    from latentvla.bench.train_throughput import DEFAULT_PRESETS, format_table, run_train_bench

    presets = [p.strip() for p in args.presets.split(",") if p.strip()] if args.presets else list(DEFAULT_PRESETS)
    dataset = None if args.dataset == "synthetic" else args.dataset
    try:
        results = run_train_bench(
            presets, dataset, steps=args.steps, batch_size=args.batch_size, warmup=args.warmup,
            overrides=list(args.overrides),
        )  # fmt: skip
    except ValueError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
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


_SUBCOMMANDS = [register_train]
