"""`latentvla annotate DIR`: (re)write the chain-of-thought columns of a dataset in place, atomically."""

from __future__ import annotations

import argparse
import json


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser("annotate", help="add automatic CoT annotation (cot.* columns) to a dataset")
    p.add_argument("dir", help="LeRobot dataset directory (needs per-frame gripper and end-effector state)")
    p.add_argument("--camera", default=None, help="camera the boxes refer to (default: the first camera)")
    p.add_argument("--boxes-jsonl", default=None,
                   help="detector boxes, one JSON per line {episode_index, frame_index, bbox}")  # fmt: skip
    p.set_defaults(func=main)


def main(args: argparse.Namespace) -> int:
    from latentvla.data.annotate import annotate_dataset
    from latentvla.data.boxes import ColumnBoxes

    source = ColumnBoxes(jsonl=args.boxes_jsonl) if args.boxes_jsonl else None
    summary = annotate_dataset(args.dir, box_source=source, camera=args.camera)
    print(json.dumps(summary, indent=2))
    return 0
