"""`miva` subcommands driven by research-layout YAML configs (`miva.config`): infer, train, bases, embed-text,
convert. Each module defines `HELP`, `add_arguments(parser)` and `run(args)` (see `miva.cli`)."""
