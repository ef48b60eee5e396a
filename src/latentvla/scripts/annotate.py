"""`latentvla annotate DIR`: add (or replace) the chain-of-thought columns of a dataset in place; videos, images,
feature names, existing stats and the format version are left as they were (data/add_columns.py)."""

from __future__ import annotations

import argparse
import json

from latentvla.errors import UserError
from latentvla.scripts.choices import RegistryHelpFormatter


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "annotate",
        help="add automatic CoT annotation (cot.* columns) to a dataset",
        formatter_class=RegistryHelpFormatter,
    )
    p.add_argument("dir", help="LeRobot dataset directory (needs per-frame gripper and end-effector state)")
    p.add_argument("--camera", default=None, help="camera the boxes refer to (default: the first camera)")
    p.add_argument(
        "--boxes-jsonl", default=None, help="detector boxes, one JSON per line {episode_index, frame_index, bbox}"
    )
    p.add_argument(
        "--env",
        default=None,
        help="simulator whose state layout to read ee + gripper with: {simulators} (default: from robot_type / "
        "state size)",
    )
    p.add_argument(
        "--lara-dir",
        default=None,
        help="folder with LaRA-VLA's episode_dense_captions_full.jsonl / episode_sam3_bboxes_from_dino_final"
        ".jsonl (default: DIR/annotations when present)",
    )
    p.add_argument("--no-lara", action="store_true", help="ignore LaRA-VLA annotation files next to the dataset")
    p.set_defaults(func=main)


def main(args: argparse.Namespace) -> int:
    from latentvla.data.annotate import annotate_dataset
    from latentvla.data.boxes import ColumnBoxes
    from latentvla.data.lara_annotations import LaraAnnotations
    from latentvla.hub import resolve_dataset

    try:
        args.dir = str(resolve_dataset(args.dir))  # a LeRobot repo id annotates its HF_LEROBOT_HOME copy
        source = ColumnBoxes(jsonl=args.boxes_jsonl) if args.boxes_jsonl else None
        lara = None if args.no_lara else LaraAnnotations.find(args.dir, args.lara_dir)
        if lara is not None:
            files = [str(p) for p in (lara.cot_path, lara.bbox_path) if p is not None]
            print(f"annotate: importing LaRA-VLA annotations from {', '.join(files)}")
        summary = annotate_dataset(args.dir, box_source=source, camera=args.camera, env=args.env, lara=lara)
    except (ValueError, FileNotFoundError, KeyError) as e:
        raise UserError(str(e)) from e
    print(json.dumps(summary, indent=2))
    return 0
