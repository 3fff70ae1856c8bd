"""`miva train`: the trainer's command-line front, `miva.training.command`, as a `miva.cli` subcommand.

It lives with the trainer so that `python -m miva.training.train` needs nothing from `miva.commands` (imports go
one way: commands -> training -> config).
"""

from ..training.command import HELP, add_arguments, config_from_args, run

__all__ = ["HELP", "add_arguments", "config_from_args", "run"]
