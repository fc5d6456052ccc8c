"""`liquid-control` command line: one subcommand per module, imported only when used.

Each module in COMMANDS defines ``register(subparsers)`` which adds its parser(s) and sets
``func(args) -> int`` as the handler.
"""

from __future__ import annotations

import argparse
import importlib
import sys

# subcommand modules, in the order `--help` lists them
COMMANDS = [
    "liquid_control.tools.inspect",
    "liquid_control.train.commands",
    "liquid_control.train.schema",
    "liquid_control.train.sweep",
    "liquid_control.data.commands",
    "liquid_control.demo",
]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="liquid-control", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    for name in COMMANDS:
        importlib.import_module(name).register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except BrokenPipeError:  # `liquid-control inspect ... | head`: the reader has gone
        import os

        # (Python would print an error flushing stdout at exit: point it at /dev/null)
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        return 0


if __name__ == "__main__":
    sys.exit(main())
