"""`latentvla train`: train a named preset on a LeRobot dataset.

    latentvla train --preset lara --dataset data/mw4 --out runs/lara --steps 2000
    latentvla train --preset rdvla --dataset data/mw4 --out runs/rd policy.horizon=8 lr_head=5e-4
    latentvla train --preset lara --dataset data/mw4 --out runs/lara --steps 2000 --resume   # after a kill
    latentvla train --preset lara --dataset data/mw4 --out runs/lara --minutes 10           # a wall-clock budget
    latentvla train --preset lara --dataset data/mw4 --out runs/lara --nproc 2               # DDP via torchrun
    latentvla train --preset lara --backbone models/Qwen2.5-VL-3B --dataset D --out R          # a local VLM
    latentvla train --preset rdvla-minivla --backbone models/Qwen2.5-0.5B --vision models/dinov2 \
        --vision models/siglip --dataset D --out R
    latentvla train --preset lara-qwen3vl --backbone models/Qwen3-VL-4B --dataset D --out R --nproc 8 --fsdp

`--steps` is the total over the whole curriculum (train/curriculum.py splits it). `--minutes M` trains for M minutes
of wall-clock instead: the curriculum and LR schedule advance with elapsed time, laid out over `--steps`
positions, which stays a cap on the optimizer steps (train/budget.py). Trailing `key=value` items
override any TrainConfig field (dotted for nested ones: `policy.horizon=8`, `policy.curriculum.schedule=lara`).
Under `torchrun --nproc_per_node=N latentvla train ...` (or `--nproc N`, which launches exactly that) the run is
data-parallel; `--batch-size` stays the global batch and must be divisible by N. `--fsdp` shards parameters,
gradients and optimizer state with FSDP2 instead of replicating them (DDP). Multi-node: run
`torchrun --nnodes M --nproc_per_node N --rdzv_backend c10d --rdzv_endpoint HOST:PORT -m latentvla.cli train ...`
on every node (README "GPU recipes").
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import sys
from pathlib import Path

from latentvla.errors import UserError
from latentvla.scripts.choices import RegistryHelpFormatter


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "train",
        help="train a policy preset",
        description=__doc__.splitlines()[0],
        formatter_class=RegistryHelpFormatter,
    )
    p.add_argument(
        "--preset",
        required=True,
        help="{presets}",
    )
    p.add_argument(
        "--dataset",
        required=True,
        help="LeRobot dataset directory, or a repo id (lerobot/NAME) in HF_LEROBOT_HOME",
    )
    p.add_argument("--out", required=True, help="run directory (metrics, checkpoints, plots)")
    p.add_argument("--steps", type=int, default=None, help="total optimizer steps over the whole curriculum")
    p.add_argument(
        "--minutes",
        type=float,
        default=None,
        help="wall-clock training budget: the schedule follows elapsed time, --steps is its length and "
        "a cap (minutes=M)",
    )
    p.add_argument("--batch-size", type=int, default=None, help="global batch size (all processes)")
    p.add_argument("--seed", type=int, default=None)
    p.add_argument("--size", default="tiny", help="backbone size: {sizes}")
    p.add_argument("--resume", action="store_true", help="continue from the newest intact checkpoint of OUT")
    p.add_argument("--overwrite", action="store_true", help="replace an existing run at OUT (else refused)")
    p.add_argument("--nproc", type=int, default=1, help="processes for DDP (re-launches via torchrun)")
    p.add_argument("--fsdp", action="store_true", help="shard with FSDP2 instead of DDP (parallel=fsdp)")
    p.add_argument(
        "--backbone",
        default=None,
        metavar="DIR|ID",
        help="transformers VLM or causal LM: a directory or a hub id ORG/NAME[@REV] (HF cache)",
    )
    p.add_argument(
        "--vision",
        action="append",
        default=[],
        metavar="DIR|ID",
        help="SigLIP / DINOv2 dir or hub id for an LM backbone (repeat to fuse several)",
    )
    p.add_argument("--no-progress", action="store_true", help="no progress bar (logs still go to metrics.jsonl)")
    p.add_argument("overrides", nargs="*", metavar="KEY=VALUE", help="config overrides, e.g. policy.horizon=8")
    p.set_defaults(func=main)


def build_config(args: argparse.Namespace):
    """Preset at `--size`, then the explicit flags, then the key=value overrides (later wins)."""
    from latentvla.config import apply_overrides, get_preset, use_backbone

    cfg = use_backbone(get_preset(args.preset, args.size), args.backbone, tuple(args.vision))
    flags = [
        f"{k}={v}"
        for k, v in (
            ("steps", args.steps),
            ("minutes", args.minutes),
            ("batch_size", args.batch_size),
            ("seed", args.seed),
        )
        if v is not None
    ]
    flags += ["parallel=fsdp"] * args.fsdp
    return apply_overrides(cfg, flags + list(args.overrides))


class _SignalShutdownNoise:
    """A logging filter for torchrun's agent: drops its "death signal" / "closing signal" warnings, which only
    narrate the shutdown that the ranks report in one line."""

    def filter(self, record) -> bool:  # noqa: ANN001
        return "death signal" not in record.msg and "closing signal" not in record.msg


def _relaunch_with_torchrun(args: argparse.Namespace) -> int:
    """Run this same command under torchrun's agent (`torch.distributed.run --standalone --nproc_per_node N`), in
    this process: SIGTERM / SIGINT here (Kubernetes signals only PID 1; SLURM's scancel signals every process)
    make the agent pass the signal to every rank; they agree on the step, save one checkpoint, rank 0 says so in
    one line, and this process exits 128 + signal like a single-process run, without torchrun's traceback."""
    import logging

    from torch.distributed.elastic.multiprocessing.api import SignalException
    from torch.distributed.elastic.multiprocessing.errors import ChildFailedError
    from torch.distributed.run import parse_args, run

    # the command exactly as typed (cli.main keeps it): each rank parses what the user wrote, and under torchrun
    # (WORLD_SIZE set) its --nproc launches nothing. It is handed to the agent after torchrun's own parsing, which
    # would read `--nproc` as an ambiguous abbreviation of its `--nproc-per-node`.
    argv = args.cli_argv if getattr(args, "cli_argv", None) is not None else sys.argv[1:]
    launch = parse_args(["--standalone", f"--nproc_per_node={args.nproc}", "-m", "latentvla.cli"])
    launch.training_script_args = list(argv)
    print("launching: torchrun --standalone", f"--nproc_per_node={args.nproc} -m latentvla.cli", *argv, flush=True)
    noise = _SignalShutdownNoise()
    loggers = [
        logging.getLogger(f"torch.distributed.elastic.{m}.api") for m in ("agent.server", "multiprocessing")
    ]
    for logger in loggers:
        logger.addFilter(noise)
    try:
        run(launch)
        return 0
    except SignalException as e:  # the ranks saved and rank 0 printed the one line
        return 128 + int(e.sigval)
    except ChildFailedError as e:
        codes = {f.exitcode for f in e.failures.values()}
        if codes <= {128 + signal.SIGTERM, 128 + signal.SIGINT}:  # the ranks alone were signalled: same story
            return codes.pop()
        if (Path(args.out) / "checkpoints").is_dir():
            print(
                "a rank failed (its error is above); continue the run with the same command plus --resume",
                file=sys.stderr,
            )
        code = e.get_first_failure()[1].exitcode  # the root cause; the agent may have stopped the others
        return code if code > 0 else 1  # the rank's own code (2: bad input), as one process gives; a kill: 1
    finally:
        for logger in loggers:
            logger.removeFilter(noise)


def main(args: argparse.Namespace) -> int:
    try:
        cfg = build_config(args)
    except ValueError as e:
        raise UserError(str(e)) from e
    if args.nproc > 1 and "WORLD_SIZE" not in os.environ:
        if cfg.batch_size % args.nproc:
            raise UserError(f"--batch-size {cfg.batch_size} is not divisible by --nproc {args.nproc}")
        return _relaunch_with_torchrun(args)

    from latentvla.train.checkpoint import CheckpointError
    from latentvla.train.loop import NonFiniteLossError, TrainingInterrupted, train

    try:
        summary = train(
            cfg,
            args.dataset,
            args.out,
            resume=args.resume,
            overwrite=args.overwrite,
            show_progress=not args.no_progress,
        )
    except (FileNotFoundError, FileExistsError, ValueError) as e:  # bad dataset / existing run / resume mismatch
        raise UserError(str(e)) from e
    except TrainingInterrupted as e:  # SIGTERM / SIGINT: checkpoint written; 128 + signal like a shell reports
        if int(os.environ.get("RANK", "0")) == 0:  # every rank stopped on the same step: one line says it all
            print(str(e), file=sys.stderr)
        return 128 + int(e.signum)
    except (NonFiniteLossError, CheckpointError, OSError) as e:  # NaN loss / disk full: nothing bad published
        print(f"error: {e}", file=sys.stderr)
        return 1
    if int(os.environ.get("RANK", "0")) == 0:
        print(f"{'stage':<8} {'rows':>5} {'first loss':>11} {'last loss':>10}")
        for stage, s in summary["stage_losses"].items():
            print(f"{stage:<8} {s['rows']:>5} {s['first']:>11.4f} {s['last']:>10.4f}")
        keys = (
            "checkpoint",
            "end_step",
            "schedule_position",
            "minutes",
            "train_elapsed_s",
            "seconds",
            "samples_per_s",
        )
        print(json.dumps({k: summary[k] for k in keys if k in summary}))
        print(f"loss curves: {os.path.join(args.out, 'loss.png')}")
    return 0
