"""`latentvla serve RUN`: serve a trained policy over openpi's websocket protocol.

    latentvla serve runs/lara --port 8000 --mode latent
    latentvla serve runs/rdvla --iterations 8            # fixed recurrent depth
    latentvla serve runs/rdvla --halting mse --delta 5e-4  # adaptive depth (RD-VLA §III-C, Eq. 7)

RUN is a checkpoint directory or a training run directory (then `RUN/checkpoints/last` is followed, by
`latentvla.policy.resolve_checkpoint`).
"""

from __future__ import annotations

import argparse
import errno
import logging
import socket

from latentvla.errors import UserError

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
    p.add_argument(
        "--precision",
        choices=("auto", "fp32", "bf16"),
        default="auto",
        help="auto: bf16 autocast + TF32 on a CUDA GPU that supports them, fp32 on CPU",
    )
    p.add_argument("--max-message-mb", type=float, default=64.0, help="reject larger requests (error frame)")
    p.add_argument("--max-batch", type=int, default=8, help="max requests batched across clients")
    p.add_argument("--log-level", default="INFO")
    p.set_defaults(func=main)


def check_arguments(args: argparse.Namespace) -> None:
    """What can be refused before loading the model (seconds to minutes for a VLM), one line each."""
    if not 0 <= args.port <= 65535:
        raise ValueError(f"--port {args.port} is not a TCP port: use 1-65535 (0 picks a free one)")
    for flag, value in (("--iterations", args.iterations), ("--max-batch", args.max_batch)):
        if value is not None and value < 1:
            raise ValueError(f"{flag} must be >= 1, got {value}")
    if not args.max_message_mb > 0:
        raise ValueError(f"--max-message-mb must be positive, got {args.max_message_mb}")
    check_bindable(args.host, args.port)
    from latentvla.device import check_device

    check_device(args.device, "--device ")


def check_bindable(host: str, port: int) -> None:
    """Bind (and release) `host:port` the way the server will, so a bad --host or a used --port is one line
    now instead of a traceback after the model loaded."""
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    except socket.gaierror as e:
        raise ValueError(
            f"--host {host!r} is not an address or host name ({e.strerror}); e.g. 127.0.0.1 or 0.0.0.0"
        ) from None
    family, kind, proto, _, address = infos[0]
    with socket.socket(family, kind, proto) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as asyncio's server does on POSIX
        try:
            sock.bind(address)
        except OSError as e:
            if e.errno == errno.EADDRINUSE:
                raise ValueError(
                    f"port {port} on {host} is already in use (another `latentvla serve`?): pick another --port "
                    "or stop that process"
                ) from None
            raise ValueError(
                f"cannot listen on {host}:{port} ({e.strerror}); --host must be an address of this machine"
            ) from None


def main(args: argparse.Namespace) -> int:
    logging.basicConfig(level=args.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    # torch imports stay out of `latentvla --help`
    from latentvla.device import resolve_device
    from latentvla.models.halting import halting_spec, parse_halting
    from latentvla.policy import Policy, resolve_checkpoint
    from latentvla.serve.server import run_server

    try:
        check_arguments(args)
        halting = parse_halting(halting_spec(args.halting, args.delta))
        device = resolve_device(args.device)  # 'auto' -> cuda when available; cuda on a CPU build: one line
    except ValueError as e:
        raise UserError(str(e)) from e
    try:  # a run dir resolves to its newest intact checkpoint (damaged newer ones are skipped with a warning)
        path = resolve_checkpoint(args.run)
        print(f"loading {path}", flush=True)
        policy = Policy.from_pretrained(path, device=device)
        policy.check_options(args.mode, args.iterations, halting)  # e.g. --halting on a flow head, --mode on bc
        dtype = policy.set_precision(args.precision)
        print(f"policy on {device}, {'bf16 autocast' if dtype is not None else 'fp32'}", flush=True)
    except (FileNotFoundError, ValueError, RuntimeError) as e:  # no checkpoint / damaged / options it can't run
        raise UserError(str(e)) from e
    try:
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
    except OSError as e:  # the port was taken while the model loaded
        raise UserError(f"cannot listen on {args.host}:{args.port}: {e.strerror or e}") from e
    return 0
