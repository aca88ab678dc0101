"""`hadis` subcommands that live outside shared/cli.py: each module has
`add_parser(subparsers)`, which registers the command and its handler."""
