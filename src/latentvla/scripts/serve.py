"""`latentvla serve RUN`: serve a trained policy over openpi's websocket protocol (SPEC C17).

    latentvla serve runs/lara --port 8000 --mode latent
    latentvla serve runs/rdvla --iterations 8            # fixed recurrent depth
    latentvla serve runs/rdvla --halting mse --delta 5e-4  # adaptive depth (RD-VLA §III-C, Eq. 7)

RUN is a checkpoint directory or a training run directory (then `RUN/checkpoints/last` is followed).
"""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

HALTING_CHOICES = ("mse", "cosine")


def resolve_checkpoint(run: str | Path) -> Path:
    """The checkpoint directory for `run`: `run/checkpoints/last` (symlink or pointer file) if present, else `run`."""
    run = Path(run)
    if not run.exists():
        raise FileNotFoundError(f"{run} does not exist: pass a checkpoint directory or a training run directory.")
    last = run / "checkpoints" / "last"
    if last.is_dir():  # a symlink to the step directory
        return last.resolve()
    if last.is_file():  # a pointer file holding the step directory name (or a path)
        target = Path(last.read_text().strip())
        target = target if target.is_absolute() else last.parent / target
        if not target.is_dir():
            raise FileNotFoundError(f"{last} points to {target}, which is not a directory.")
        return target
    return run


def build_halting(name: str | None, delta: float | None) -> dict | None:
    """Halting spec passed to `Policy.infer(halting=...)`: {"strategy": name, "delta": δ} or None (fixed depth)."""
    if name is None:
        if delta is not None:
            raise ValueError("--delta only makes sense with --halting mse|cosine.")
        return None
    if delta is None or delta <= 0:
        raise ValueError(f"--halting {name} needs a positive --delta (RD-VLA uses 5e-4 for mse), got {delta}.")
    return {"strategy": name, "delta": float(delta)}


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "serve", help="serve a policy over openpi's websocket protocol", description=__doc__.splitlines()[0]
    )
    p.add_argument("run", metavar="RUN", help="checkpoint directory or training run directory")
    p.add_argument("--host", default="127.0.0.1", help="bind address (0.0.0.0 to accept remote robots)")
    p.add_argument("--port", type=int, default=8000)
    p.add_argument("--mode", choices=("latent", "explicit"), default="latent", help="reasoning mode at inference")
    depth = p.add_mutually_exclusive_group()
    depth.add_argument("--iterations", type=int, default=None, help="fixed recurrent depth K (RD-VLA head)")
    depth.add_argument("--halting", choices=HALTING_CHOICES, default=None, help="adaptive-depth halting rule")
    p.add_argument("--delta", type=float, default=None, help="halting threshold δ (with --halting)")
    p.add_argument("--device", default="cpu")
    p.add_argument("--max-message-mb", type=float, default=64.0, help="reject larger requests (error frame)")
    p.add_argument("--max-batch", type=int, default=8, help="max requests batched across clients")
    p.add_argument("--log-level", default="INFO")
    p.set_defaults(func=main)


def main(args: argparse.Namespace) -> int:
    logging.basicConfig(level=args.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    halting = build_halting(args.halting, args.delta)
    path = resolve_checkpoint(args.run)
    from latentvla.policy import Policy  # torch import stays out of `latentvla --help`
    from latentvla.serve.server import run_server

    print(f"loading {path}", flush=True)
    policy = Policy.from_pretrained(path, device=args.device)
    run_server(
        policy,
        args.host,
        args.port,
        mode=args.mode,
        iterations=args.iterations,
        halting=halting,
        max_message_bytes=int(args.max_message_mb * 2**20),
        max_batch=args.max_batch,
    )
    return 0
