"""The `miva` command line.

Each subcommand lives in its own module, registered in `SUBCOMMANDS` as `name -> module path`. A subcommand module
defines `HELP` (one line), `add_arguments(parser)` and `run(args) -> int` (the exit status), and keeps heavy imports
(torch, diffusers) inside `run` so that `miva --help` stays fast. To add one, write the module and add a line here.

User errors are handled here, once for every subcommand: a bad config, value or file ends in one line on stderr
(`miva <command>: error: ...`), a hint line, and exit status 2, without a traceback; a mistyped subcommand or flag
gets the closest valid one and the usage of its subcommand; Ctrl-C ends in one line and exit status 130 (`miva
train` adds the command that resumes). `--debug` (before or after the subcommand) or `MIVA_DEBUG=1` lets the
exception through with its traceback. Warnings of the libraries below that say nothing to a CLI user are dropped
here too (`quiet_known_noise`), and only those.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import os
import re
import sys
import warnings

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


# Messages of other libraries that a CLI user can do nothing about: transformers' notice that CLIP's image processor
# falls back to its PIL backend without torchvision, diffusers' "should be kept in float32: []" (an empty list, when
# miva moves a model to its dtype), huggingface_hub's notice that the cache cannot use symlinks.
_NOISE = {
    "transformers.utils.import_utils": re.compile(r"`\w+ImageProcessor` requires torchvision \(not installed\); falling back"),
    "diffusers.models.modeling_utils": re.compile(r"There are modules in \w+ that should be kept in float32: \[\]\."),
}
_SYMLINK_WARNING = r"`huggingface_hub` cache-system uses symlinks by default"


class _DropNoise(logging.Filter):
    def __init__(self, pattern: re.Pattern):
        super().__init__()
        self.pattern = pattern

    def filter(self, record: logging.LogRecord) -> bool:
        return not self.pattern.match(record.getMessage())


def quiet_known_noise() -> None:
    """Drop the known irrelevant library warnings (`_NOISE`) for the rest of the process; anything else they log
    still shows. Idempotent."""
    for name, pattern in _NOISE.items():
        logger = logging.getLogger(name)
        if not any(isinstance(f, _DropNoise) for f in logger.filters):
            logger.addFilter(_DropNoise(pattern))
    warnings.filterwarnings("ignore", message=_SYMLINK_WARNING, category=UserWarning)


def _subcommands(parser: argparse.ArgumentParser) -> dict[str, argparse.ArgumentParser]:
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            return dict(action.choices)
    return {}


def _known_flag(parser: argparse.ArgumentParser, flag: str) -> bool:
    """`flag` is one of `parser`'s options or, as argparse allows, a prefix of one."""
    return any(option == flag or option.startswith(flag) for option in parser._option_string_actions)


def check_words(parser: argparse.ArgumentParser, argv: list[str]) -> None:
    """Before argparse: a mistyped subcommand or `--flag` exits (status 2) with the closest valid one and the usage
    of the subcommand it belongs to, instead of argparse's bare "invalid choice" / "unrecognized arguments"."""
    def did_you_mean(word, options) -> str:
        from .guards import did_you_mean  # imports torch: paid on the way to an error only (fast `--help`)

        return did_you_mean(word, options)

    current, index = parser, 0
    while index < len(argv):
        token = argv[index]
        index += 1
        if token == "--":
            return
        if token.startswith("--"):
            flag = token.split("=", 1)[0]
            if not _known_flag(current, flag):
                options = [o for o in current._option_string_actions if o.startswith("--")]
                current.error(f"unrecognized argument {flag!r}{did_you_mean(flag, options)}")
            action = next(a for o, a in current._option_string_actions.items() if o.startswith(flag))
            if "=" not in token and action.nargs is None:
                index += 1  # its value
            continue
        commands = _subcommands(current)
        if not commands or token.startswith("-"):
            continue
        if token not in commands:
            hint = did_you_mean(token, commands)
            close = hint.split("'")[1] if hint else None
            (commands[close] if close else current).print_usage(sys.stderr)
            current.exit(2, f"{current.prog}: error: unknown command {token!r}{hint} (commands: "
                            f"{', '.join(commands)})\n")
        current = commands[token]


def debug_requested(args: argparse.Namespace) -> bool:
    return bool(getattr(args, "debug", False)) or os.environ.get(DEBUG_ENV, "").strip().lower() in ("1", "true", "yes")


def main(argv: list[str] | None = None) -> int:
    """Parse `argv` (default: `sys.argv[1:]`) and run the chosen subcommand; returns the exit status."""
    quiet_known_noise()
    parser = build_parser()
    argv = sys.argv[1:] if argv is None else list(argv)
    check_words(parser, argv)
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help()
        return 2
    try:
        return int(args._run(args) or 0)
    except KeyboardInterrupt as stop:  # a subcommand may say what was kept and how to go on (`miva train`)
        if debug_requested(args):
            raise
        lines, status = [f"miva {args.command}: {str(stop) or 'interrupted'}"], 130
    except user_error_types() as error:
        if debug_requested(args):
            raise
        message = " ".join(str(error).split()) or type(error).__name__  # one line, whatever the message
        lines = [f"miva {args.command}: error: {message}", f"(run with --debug or {DEBUG_ENV}=1 for the traceback)"]
        status = 2
    # Printed out here, once the failed call's frames are freed: a progress bar they held closes (and ends its line)
    # before these lines, not after them.
    print("\n".join(lines), file=sys.stderr, flush=True)
    return status

if __name__ == "__main__":
    sys.exit(main())
