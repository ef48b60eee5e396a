"""`latentvla analyze <what>`: analyses of a trained policy.

    latentvla analyze latents runs/lara --dataset data/mw4 --out runs/lara/latents.png
    latentvla analyze latents runs/lara --dataset data/mw4 --out latents_tsne.png --method tsne --max-samples 300

    latentvla analyze cot runs/lara --dataset data/mw6 --episodes 12 --json cot.json

    latentvla analyze actions runs/lara --dataset data/mw6 --episodes 12 --json actions.json

`cot` decodes explicit CoT on dataset frames and reports parse_rate, stop_rate, bbox_iou, subtask_match and
mean_tokens against the annotation (eval/cot_analysis.py).
`actions` compares the policy's sampled chunks with the demonstrated ones on dataset frames, in raw action units:
per-dimension L1 of the first action and of the chunk, and gripper sign agreement (eval/action_error.py).
`latents` plots the thinking-token latents coloured by CoT component (LaRA-VLA Fig. 6) and writes the
separation scores (silhouette, nearest-centroid accuracy) to the plot's path with a .json suffix.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from latentvla.errors import UserError


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser("analyze", help="analyses of a trained policy", description=__doc__.splitlines()[0])
    sub = p.add_subparsers(dest="analyze_command", metavar="WHAT")
    lat = sub.add_parser(
        "latents", help="thinking-token latents by CoT component (PCA / t-SNE + separation score)"
    )
    lat.add_argument("run", metavar="RUN", help="checkpoint directory or training run directory")
    lat.add_argument("--dataset", required=True, help="LeRobot dataset directory to draw frames from")
    lat.add_argument("--out", required=True, help="output PNG (scores go next to it as .json)")
    lat.add_argument("--max-samples", type=int, default=512, help="dataset frames to use (evenly spread)")
    lat.add_argument(
        "--method", choices=("pca", "tsne"), default="pca", help="2-D projection (tsne: scikit-learn)"
    )
    lat.add_argument("--seed", type=int, default=0)
    lat.add_argument("--batch-size", type=int, default=32)
    lat.set_defaults(func=main_latents)
    cot = sub.add_parser("cot", help="explicit CoT decoding vs the annotation (parse/stop rate, box IoU, subtask)")
    cot.add_argument("run", metavar="RUN", help="checkpoint directory or training run directory")
    cot.add_argument("--dataset", required=True, help="annotated LeRobot dataset directory")
    cot.add_argument("--episodes", type=int, default=12, help="episodes, evenly spread over the dataset")
    cot.add_argument("--frames-per-episode", type=int, default=4, help="evenly spaced frames per episode")
    cot.add_argument(
        "--max-cot-tokens", type=int, default=96, help="decoding cap (stop_rate counts stops before it)"
    )
    cot.add_argument("--json", default=None, help="also write the report to this JSON file")
    cot.set_defaults(func=main_cot)
    act = sub.add_parser(
        "actions", help="sampled vs demonstrated action chunks on dataset frames (per-dim L1, gripper sign)"
    )
    act.add_argument("run", metavar="RUN", help="checkpoint directory or training run directory")
    act.add_argument("--dataset", required=True, help="LeRobot dataset directory (training or held-out demos)")
    act.add_argument("--episodes", type=int, default=12, help="episodes, evenly spread over the dataset")
    act.add_argument("--frames-per-episode", type=int, default=8, help="evenly spaced frames per episode")
    act.add_argument("--seed", type=int, default=0, help="sampling seed (flow expert noise)")
    act.add_argument("--json", default=None, help="also write the report to this JSON file")
    act.set_defaults(func=main_actions)
    p.set_defaults(func=None, help_parser=p)  # no subcommand: cli.main prints this help


def main_latents(args: argparse.Namespace) -> int:
    from latentvla.eval.latents import analyze_latents

    try:
        res = analyze_latents(
            args.run,
            args.dataset,
            args.out,
            max_samples=args.max_samples,
            method=args.method,
            seed=args.seed,
            batch_size=args.batch_size,
        )
    except (ValueError, FileNotFoundError, KeyError, ImportError) as e:
        raise UserError(str(e)) from e
    print(json.dumps({k: v for k, v in res.items() if k not in ("run", "dataset")}, indent=2))
    return 0


def main_cot(args: argparse.Namespace) -> int:
    from latentvla.eval.cot_analysis import analyze_cot_run

    try:
        res = analyze_cot_run(
            args.run,
            args.dataset,
            episodes=args.episodes,
            frames_per_episode=args.frames_per_episode,
            max_cot_tokens=args.max_cot_tokens,
        )
    except (ValueError, FileNotFoundError, KeyError) as e:
        raise UserError(str(e)) from e
    return _report(res, args.json, hide=("examples",))


def main_actions(args: argparse.Namespace) -> int:
    from latentvla.eval.action_error import analyze_actions_run

    try:
        res = analyze_actions_run(
            args.run,
            args.dataset,
            episodes=args.episodes,
            frames_per_episode=args.frames_per_episode,
            seed=args.seed,
        )
    except (ValueError, FileNotFoundError, KeyError) as e:
        raise UserError(str(e)) from e
    return _report(res, args.json)


def _report(res: dict, json_path: str | None, hide: tuple[str, ...] = ()) -> int:
    """The whole report to `json_path` (if given); stdout gets it without the `hide` keys."""
    if json_path:
        Path(json_path).parent.mkdir(parents=True, exist_ok=True)
        Path(json_path).write_text(json.dumps(res, indent=2))
    print(json.dumps({k: v for k, v in res.items() if k not in hide}, indent=2))
    return 0
