"""`latentvla serve RUN`: serve a trained policy over openpi's websocket protocol (SPEC C17).

    latentvla serve runs/lara --port 8000 --mode latent
    latentvla serve runs/rdvla --iterations 8            # fixed recurrent depth
    latentvla serve runs/rdvla --halting mse --delta 5e-4  # adaptive depth (RD-VLA §III-C, Eq. 7)

RUN is a checkpoint directory or a training run directory (then `RUN/checkpoints/last` is followed, by
`latentvla.policy.resolve_checkpoint`).
"""

from __future__ import annotations

import argparse
import logging
import sys

HALTING_CHOICES = ("mse", "cosine")


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "serve", help="serve a policy over openpi's websocket protocol", description=__doc__.splitlines()[0]
    )
    p.add_argument("run", metavar="RUN", help="checkpoint directory or training run directory")
    p.add_argument("--host", default="127.0.0.1", help="bind address (0.0.0.0 to accept remote robots)")
    p.add_argument("--port", type=int, default=8000)
    p.add_argument(
        "--mode",
        choices=("latent", "explicit", "none"),
        default=None,
        help="reasoning at inference (default: what the model was trained for: explicit CoT text if its last stage writes it, else latent)",
    )
    depth = p.add_mutually_exclusive_group()
    depth.add_argument("--iterations", type=int, default=None, help="fixed recurrent depth K (RD-VLA head)")
    depth.add_argument("--halting", choices=HALTING_CHOICES, default=None, help="adaptive-depth halting rule")
    p.add_argument("--delta", type=float, default=None, help="mse: threshold δ; cosine: similarity threshold")
    p.add_argument("--device", default="cpu", help="cpu (default), cuda, cuda:N, or auto (cuda when available)")
    p.add_argument("--precision", choices=("auto", "fp32", "bf16"), default="auto",
                   help="auto: bf16 autocast + TF32 on a CUDA GPU that supports them, fp32 on CPU")  # fmt: skip
    p.add_argument("--max-message-mb", type=float, default=64.0, help="reject larger requests (error frame)")
    p.add_argument("--max-batch", type=int, default=8, help="max requests batched across clients")
    p.add_argument("--log-level", default="INFO")
    p.set_defaults(func=main)


def main(args: argparse.Namespace) -> int:
    logging.basicConfig(level=args.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    # torch imports stay out of `latentvla --help`
    from latentvla.device import resolve_device
    from latentvla.models.halting import halting_spec, parse_halting
    from latentvla.policy import Policy, resolve_checkpoint
    from latentvla.serve.server import run_server

    try:
        halting = parse_halting(halting_spec(args.halting, args.delta))
        device = resolve_device(args.device)  # 'auto' -> cuda when available; cuda on a CPU build: one line
    except ValueError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    try:  # a run dir resolves to its newest intact checkpoint (damaged newer ones are skipped with a warning)
        path = resolve_checkpoint(args.run)
        print(f"loading {path}", flush=True)
        policy = Policy.from_pretrained(path, device=device)
        dtype = policy.set_precision(args.precision)
        print(f"policy on {device}, {'bf16 autocast' if dtype is not None else 'fp32'}", flush=True)
    except (FileNotFoundError, ValueError) as e:  # no checkpoint / a damaged one named explicitly
        print(f"error: {e}", file=sys.stderr)
        return 2
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
