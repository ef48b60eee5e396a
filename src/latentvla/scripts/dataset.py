"""`latentvla dataset info|show`: inspect a LeRobot dataset (v3.0 or v2.1).

    latentvla dataset info DIR [--json]
        episodes, frames, tasks, features with shapes, fps, CoT annotation coverage, expert success rate,
        episodes per task
    latentvla dataset show DIR --episode I --out sheet.png [--camera C] [--frames N]
        a contact sheet of N evenly spaced frames (upscaled) with the CoT box drawn and subtask / reasoning text
    latentvla dataset convert SRC DST --video|--images [--overwrite]
        rewrite a LeRobot dataset (v3.0 or v2.1) as v3.0 with AV1 video cameras or PNG-in-parquet cameras

A corrupt or missing dataset prints one `error: <file>: <what is wrong>` line and exits 1 (no traceback).
"""

from __future__ import annotations

import argparse
import json
import textwrap
from collections import Counter
from pathlib import Path
from typing import Any

from latentvla.constants import COT_BBOX, COT_BBOX_VISIBLE, COT_REASONING, COT_SEGMENT, COT_SUBTASK, COT_TEXT
from latentvla.errors import UserError, message

_TILE_MIN = 256  # upscale frames to at least this many pixels wide so text and boxes are legible


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser("dataset", help="inspect a LeRobot dataset (info, contact sheet)")
    sub = parser.add_subparsers(dest="dataset_command", metavar="SUBCOMMAND")
    info = sub.add_parser("info", help="summary: episodes, frames, tasks, features, annotation coverage")
    info.add_argument("dir", type=Path, help="dataset root (contains meta/info.json)")
    info.add_argument("--json", action="store_true", help="print the summary as JSON")
    show = sub.add_parser("show", help="contact sheet of one episode with CoT boxes and text")
    show.add_argument("dir", type=Path, help="dataset root (contains meta/info.json)")
    show.add_argument("--episode", type=int, default=0, help="episode index (default 0)")
    show.add_argument("--out", type=Path, required=True, help="output PNG path")
    show.add_argument("--camera", default=None, help="camera name (default: the first camera)")
    show.add_argument("--frames", type=int, default=8, help="number of evenly spaced frames (default 8)")
    convert = sub.add_parser("convert", help="rewrite a dataset with video (AV1) or PNG-in-parquet cameras")
    convert.add_argument("src", type=Path, help="source dataset root (LeRobot v3.0 or v2.1)")
    convert.add_argument("dst", type=Path, help="output dataset root (LeRobot v3.0)")
    layout = convert.add_mutually_exclusive_group(required=True)
    layout.add_argument("--video", action="store_true", help="cameras as AV1 MP4 (LeRobot's encoding)")
    layout.add_argument("--images", action="store_true", help="cameras as PNG in parquet (lossless)")
    convert.add_argument("--overwrite", action="store_true", help="replace an existing dataset at DST")
    for command in (info, show, convert):
        command.set_defaults(func=main)
    parser.set_defaults(func=None, help_parser=parser)  # no subcommand: cli.main prints this help


def _disk_mb(root: Path, sub: str) -> float:
    return sum(p.stat().st_size for p in (root / sub).rglob("*") if p.is_file()) / 2**20


def summarize(reader: Any) -> dict[str, Any]:
    """The numbers `dataset info` prints (also handy for tests and the README)."""
    features = {k: {"dtype": v.get("dtype"), "shape": v.get("shape")} for k, v in reader.features.items()}
    summary: dict[str, Any] = {
        "root": str(reader.root),
        "version": reader.version,
        "robot_type": reader.info.get("robot_type"),
        "fps": reader.fps,
        "episodes": reader.num_episodes,
        "frames": reader.num_frames,
        "tasks": len(reader.tasks),
        "features": features,
        "cameras": reader.camera_keys,
        "storage": {k: _storage(reader.features[k]) for k in reader.camera_keys},
        "size_mb": {sub: round(_disk_mb(Path(reader.root), sub), 3) for sub in ("data", "videos", "meta")},
    }
    frames = max(reader.num_frames, 1)
    text_key = COT_TEXT if COT_TEXT in reader.features else COT_SUBTASK if COT_SUBTASK in reader.features else None
    summary["cot_coverage"] = sum(bool(s) for s in reader.column(text_key)) / frames if text_key else 0.0
    visible = reader.column(COT_BBOX_VISIBLE) if COT_BBOX_VISIBLE in reader.features else None
    summary["bbox_coverage"] = float(visible.sum()) / frames if visible is not None else 0.0
    rate = reader.info.get("expert_success_rate")
    if rate is None and reader.episodes and all("success" in e for e in reader.episodes):
        rate = sum(bool(e["success"]) for e in reader.episodes) / len(reader.episodes)
    summary["expert_success_rate"] = rate
    counts = Counter(t for e in reader.episodes for t in (e.get("tasks") or []))
    summary["episodes_per_task"] = {t: counts.get(t, 0) for t in reader.tasks}
    return summary


def _storage(spec: dict[str, Any]) -> str:
    """How a camera is stored: `png-in-parquet` or `video <codec> <pix_fmt> <w>x<h>` (from its `video.*` info)."""
    if spec.get("dtype") != "video":
        return "png-in-parquet"
    info = spec.get("info") or {}
    height, width = (spec.get("shape") or [0, 0])[:2]
    return f"video {info.get('video.codec', '?')} {info.get('video.pix_fmt', '?')} {width}x{height}"


def _print_info(summary: dict[str, Any]) -> None:
    print(
        f"{summary['root']}  (LeRobot {summary['version']}, robot {summary['robot_type']}, {summary['fps']} fps)"
    )
    print(f"episodes {summary['episodes']}   frames {summary['frames']}   tasks {summary['tasks']}")
    if not summary["episodes"]:
        print("the dataset is empty: collect or convert episodes into it before training")
    print("features:")
    for key, spec in summary["features"].items():
        print(f"  {key:<36} {spec['dtype']:<8} {spec['shape']}")
    for key, storage in summary["storage"].items():
        print(f"camera {key}: {storage}")
    size = summary["size_mb"]
    print(f"size on disk: data {size['data']:.1f} MB, videos {size['videos']:.1f} MB, meta {size['meta']:.1f} MB")
    print(
        f"annotation: CoT on {summary['cot_coverage']:.1%} of frames, visible bbox on {summary['bbox_coverage']:.1%}"
    )
    rate = summary["expert_success_rate"]
    print(f"expert success rate: {'not recorded' if rate is None else f'{rate:.1%}'}")
    print("episodes per task:")
    for task, count in summary["episodes_per_task"].items():
        print(f"  {count:>5}  {task}")


def contact_sheet(reader: Any, episode: int, camera: str | None, num_frames: int) -> Any:
    """A PIL image: N evenly spaced frames of one episode with the CoT box and text under each frame."""
    import numpy as np
    from PIL import Image, ImageDraw, ImageFont

    from latentvla.data.dataset import _camera_key

    if not reader.camera_keys:
        raise ValueError(f"{reader.root} has no image features to show.")
    if num_frames < 1:
        raise ValueError(f"--frames must be >= 1, got {num_frames}.")
    key = _camera_key(camera, reader.camera_keys) if camera else reader.camera_keys[0]
    ep = reader.episode(episode)
    images = ep[key]
    length, height, width = images.shape[:3]
    picks = np.unique(np.linspace(0, length - 1, min(num_frames, length)).round().astype(int))
    scale = max(1, -(-_TILE_MIN // width))
    tile_w, tile_h = width * scale, height * scale
    font = ImageFont.load_default()
    line_h = font.getbbox("Ag")[3] + 3
    chars = max(12, tile_w // 6)
    texts = [_frame_text(ep, int(t), chars) for t in picks]
    text_h = line_h * max(len(t) for t in texts) + 6
    cols = min(len(picks), 4)
    rows = -(-len(picks) // cols)
    header = line_h + 10
    sheet = Image.new("RGB", (cols * (tile_w + 8) + 8, header + rows * (tile_h + text_h + 8)), (255, 255, 255))
    draw = ImageDraw.Draw(sheet)
    draw.text((8, 5), f"episode {episode} / {key}: {ep['task']}", fill=(0, 0, 0), font=font)
    for n, (t, lines) in enumerate(zip(picks, texts)):
        x0, y0 = 8 + (n % cols) * (tile_w + 8), header + (n // cols) * (tile_h + text_h + 8)
        sheet.paste(Image.fromarray(images[t]).resize((tile_w, tile_h), Image.NEAREST), (x0, y0))
        visible = ep.get(COT_BBOX_VISIBLE)
        if COT_BBOX in ep and (visible is None or bool(visible[t])):
            x1, y1, x2, y2 = (float(v) for v in ep[COT_BBOX][t])
            box = (x0 + x1 * tile_w, y0 + y1 * tile_h, x0 + x2 * tile_w, y0 + y2 * tile_h)
            draw.rectangle(box, outline=(0, 255, 0), width=2)
        for j, line in enumerate(lines):
            draw.text((x0, y0 + tile_h + 3 + j * line_h), line, fill=(0, 0, 0), font=font)
    return sheet


def _frame_text(ep: dict, t: int, chars: int) -> list[str]:
    head = f"t={t}" + (f" [{ep[COT_SEGMENT][t]}]" if COT_SEGMENT in ep else "")
    lines = [head]
    for key in (COT_SUBTASK, COT_REASONING):
        if key in ep and ep[key][t]:
            lines += textwrap.wrap(ep[key][t], chars)
    if len(lines) == 1:
        lines.append("(no CoT annotation)")
    return lines


def main(args: argparse.Namespace) -> int:
    from latentvla.data.lerobot import DatasetFormatError, LeRobotDatasetReader

    if args.dataset_command == "convert":
        return _convert(args)
    try:
        reader = LeRobotDatasetReader(args.dir)
        if args.dataset_command == "info":
            summary = summarize(reader)
            print(json.dumps(summary, indent=2)) if args.json else _print_info(summary)
            return 0
        sheet = contact_sheet(reader, args.episode, args.camera, args.frames)
        args.out.parent.mkdir(parents=True, exist_ok=True)
        sheet.save(args.out)
        print(f"wrote {args.out} ({sheet.width}x{sheet.height})")
        return 0
    except (DatasetFormatError, ValueError, KeyError, IndexError, OSError) as e:  # bad input: exit 2 (house rule)
        raise UserError(message(e)) from e


def _convert(args: argparse.Namespace) -> int:
    from latentvla.data.convert import convert_dataset
    from latentvla.data.errors import DatasetFormatError

    try:
        out = convert_dataset(args.src, args.dst, video=args.video, overwrite=args.overwrite)
    except (DatasetFormatError, ValueError, KeyError, FileExistsError, ImportError) as e:
        raise UserError(message(e)) from e
    print(f"wrote {out} ({'video' if args.video else 'png-in-parquet'} cameras)")
    return 0
