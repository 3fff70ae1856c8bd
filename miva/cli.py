"""The `miva` command line.

Each subcommand lives in its own module, registered in `SUBCOMMANDS` as `name -> module path`. A subcommand module
defines `HELP` (one line), `add_arguments(parser)` and `run(args) -> int` (the exit status), and keeps heavy imports
(torch, diffusers) inside `run` so that `miva --help` stays fast. To add one, write the module and add a line here.

User errors are handled here, once for every subcommand: a bad config, value or file ends in one line on stderr
(`miva <command>: error: ...`), a hint line, and exit status 2, without a traceback. `--debug` (before or after the
subcommand) or `MIVA_DEBUG=1` lets the exception through with its traceback.
"""

from __future__ import annotations

import argparse
import importlib
import os
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


DEBUG_ENV = "MIVA_DEBUG"
DEBUG_HELP = f"show the full traceback of an error (or set {DEBUG_ENV}=1)"


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="miva", description="MIVA adapters for the diffusers AnimateDiff stack")
    parser.add_argument("--version", action="version", version=f"miva {__version__}")
    parser.add_argument("--debug", action="store_true", help=DEBUG_HELP)
    commands = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name, module_path in SUBCOMMANDS.items():
        module = importlib.import_module(module_path)
        sub = commands.add_parser(name, help=module.HELP, description=module.HELP)
        module.add_arguments(sub)
        # SUPPRESS: `miva --debug train` must not be reset to False by the subcommand's own default.
        sub.add_argument("--debug", action="store_true", default=argparse.SUPPRESS, help=DEBUG_HELP)
        sub.set_defaults(_run=module.run)
    return parser


def user_error_types() -> tuple[type[BaseException], ...]:
    """Exceptions that mean bad input (config, value, file, model that cannot be fetched, unreadable checkpoint),
    not a bug in miva: `ValueError` (with `ConfigError`), `OSError` (with `FileNotFoundError` and the Hub's
    offline errors), YAML syntax errors, unreadable safetensors / pickle files. Imported lazily (fast `--help`)."""
    import pickle

    import yaml

    types: list[type[BaseException]] = [ValueError, OSError, yaml.YAMLError, pickle.UnpicklingError]
    try:
        from safetensors import SafetensorError

        types.append(SafetensorError)
    except ImportError:  # older safetensors
        pass
    return tuple(types)


def debug_requested(args: argparse.Namespace) -> bool:
    return bool(getattr(args, "debug", False)) or os.environ.get(DEBUG_ENV, "").strip().lower() in ("1", "true", "yes")


def main(argv: list[str] | None = None) -> int:
    """Parse `argv` (default: `sys.argv[1:]`) and run the chosen subcommand; returns the exit status."""
    parser = build_parser()
    args = parser.parse_args(sys.argv[1:] if argv is None else argv)
    if args.command is None:
        parser.print_help()
        return 2
    try:
        return int(args._run(args) or 0)
    except user_error_types() as error:
        if debug_requested(args):
            raise
        message = " ".join(str(error).split()) or type(error).__name__  # one line, whatever the message
        print(f"miva {args.command}: error: {message}", file=sys.stderr)
        print(f"(run with --debug or {DEBUG_ENV}=1 for the traceback)", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
