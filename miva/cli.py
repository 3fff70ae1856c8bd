"""The `miva` command line.

Each subcommand lives in its own module, registered in `SUBCOMMANDS` as `name -> module path`. A subcommand module
defines `HELP` (one line), `add_arguments(parser)` and `run(args) -> int` (the exit status), and keeps heavy imports
(torch, diffusers) inside `run` so that `miva --help` stays fast. To add one, write the module and add a line here.
"""

from __future__ import annotations

import argparse
import importlib
import sys

from . import __version__

SUBCOMMANDS: dict[str, str] = {
    "demo": "miva.demo",
    "infer": "miva.commands.infer",
    "train": "miva.commands.train",
    "bases": "miva.commands.bases",
    "embed-text": "miva.commands.embed_text",
    "convert": "miva.commands.convert",
    "app": "miva.commands.app",
}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="miva", description="MIVA adapters for the diffusers AnimateDiff stack")
    parser.add_argument("--version", action="version", version=f"miva {__version__}")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name, module_path in SUBCOMMANDS.items():
        module = importlib.import_module(module_path)
        sub = commands.add_parser(name, help=module.HELP, description=module.HELP)
        module.add_arguments(sub)
        sub.set_defaults(_run=module.run)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Parse `argv` (default: `sys.argv[1:]`) and run the chosen subcommand; returns the exit status."""
    parser = build_parser()
    args = parser.parse_args(sys.argv[1:] if argv is None else argv)
    if args.command is None:
        parser.print_help()
        return 2
    return int(args._run(args) or 0)


if __name__ == "__main__":
    sys.exit(main())
