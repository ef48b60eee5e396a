"""The `latentvla` console script: one subcommand per module in `latentvla.scripts`.

Each `latentvla/scripts/<name>.py` exposes `register(subparsers)`, which adds its parser and sets
`func=main`. Heavy imports (torch, mujoco) stay inside each `main` so `latentvla --help` is instant. Bad input is
a `UserError` (errors.py) raised anywhere below: `main` prints it as one `error: ...` line and returns 2.
"""

from __future__ import annotations

import argparse
import importlib
import sys

from latentvla.errors import UserError

# Order is the order shown in --help.
COMMANDS = (
    "collect",
    "annotate",
    "dataset",
    "train",
    "rl",
    "eval",
    "bench",
    "analyze",
    "serve",
    "demo",
    "ablations",
)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="latentvla", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name in COMMANDS:
        importlib.import_module(f"latentvla.scripts.{name}").register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    args.cli_argv = list(sys.argv[1:] if argv is None else argv)  # as typed: `train --nproc` forwards it
    if not getattr(args, "func", None):  # no command, or a command group without its subcommand: its help
        getattr(args, "help_parser", parser).print_help()
        return 2
    try:
        return int(args.func(args) or 0)
    except UserError as e:  # bad input: one line, no traceback, exit 2
        print(f"error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
