"""`latentvla collect`: scripted-expert demonstrations (any simulator with an expert) -> annotated LeRobot v3.0."""

from __future__ import annotations

import argparse
import json
import sys

from latentvla.errors import UserError
from latentvla.scripts.choices import RegistryHelpFormatter


def _cameras(values: list[str] | None) -> tuple[str, ...] | None:
    """Repeated / comma-separated --camera values; None: the simulator's default cameras."""
    cams = [c.strip() for v in (values or []) for c in v.split(",") if c.strip()]
    return tuple(dict.fromkeys(cams)) or None


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "collect",
        help="collect scripted-expert demonstrations (with CoT annotation)",
        formatter_class=RegistryHelpFormatter,
    )
    p.add_argument("--env", default="metaworld", help="simulator with a scripted expert: {simulators}")
    p.add_argument(
        "--tasks",
        required=True,
        help="comma list of task names and/or suites (mt10, mt50, easy, ...; libero_object, libero_spatial:0-4)",
    )
    p.add_argument("--episodes-per-task", type=int, default=10, help="successful episodes to keep per task")
    p.add_argument(
        "--image-size", type=int, default=64, help="square image size in pixels (Meta-World 64-224, LIBERO 32-512)"
    )
    p.add_argument("--out", required=True, help="output dataset directory")
    p.add_argument("--seed", type=int, default=0, help="collection seed (episode starts derive from it)")
    p.add_argument("--workers", type=int, default=1, help="rollout processes")
    p.add_argument(
        "--camera",
        action="append",
        help="camera name; repeat or comma-separate (default: the simulator's, Meta-World corner4, "
        "LIBERO image,image2 = agent view + wrist)",
    )
    p.add_argument(
        "--max-steps",
        type=int,
        default=None,
        help="step limit per episode (default: the evaluation protocol's; Meta-World 500, LIBERO 220-520)",
    )
    p.add_argument("--stop-after-success", type=int, default=10, help="frames kept after the first success")
    p.add_argument("--resume", action="store_true", help="continue an interrupted collection in OUT.partial")
    p.add_argument("--overwrite", action="store_true", help="replace an existing complete dataset at OUT")
    p.add_argument(
        "--video", action="store_true", help="store cameras as AV1 MP4 like LeRobot (default: PNG in parquet)"
    )
    p.set_defaults(func=main)


def main(args: argparse.Namespace) -> int:
    try:
        summary = _collect(args)
    except (ValueError, FileExistsError, ImportError) as e:  # unknown task/suite/camera, existing output, no sim
        raise UserError(str(e)) from e
    except OSError as e:  # a full disk (ENOSPC) or a vanished directory: the finished episodes stay resumable
        print(
            f"error: writing the dataset failed ({e}); the finished episodes are kept in {args.out}.partial: "
            "free space, then re-run the same command with --resume",
            file=sys.stderr,
        )
        return 1
    if summary.get("already_complete"):
        print(f"{args.out} is already complete (an interrupted publish was finished); nothing to do.")
    for task, s in summary["per_task"].items():
        print(f"{task:30s} success {s['successes']}/{s['attempts']} ({s['success_rate']:.0%})")
    print(json.dumps({k: v for k, v in summary.items() if k != "per_task"}, indent=2))
    return 0


def _collect(args: argparse.Namespace) -> dict:
    from latentvla.data.collect import collect

    return collect(
        args.tasks,
        args.episodes_per_task,
        args.image_size,
        args.out,
        seed=args.seed,
        workers=args.workers,
        cameras=_cameras(args.camera),
        max_steps=args.max_steps,
        resume=args.resume,
        stop_after_success=args.stop_after_success,
        overwrite=args.overwrite,
        video=args.video,
        env=args.env,
    )
