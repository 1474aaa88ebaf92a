"""The `python -m gptkit` entry point: hands the command line to the CLI."""

from gptkit.cli import main

main()
