"""What the project's commands share at their command line."""

from __future__ import annotations

import argparse

EXIT_BAD_INPUT = 2


class OneLineParser(argparse.ArgumentParser):
    """An argument parser whose errors are one line, ``error: ... (PROG --help for usage)``, with exit
    status 2: argparse's usage-then-error is two or more lines, and a log or a script wants the one that
    matters. ``help_prog`` is the command whose help the line points to (default: this parser's own
    ``prog``; a subcommand's parser points to its main command)."""

    def __init__(self, *args, help_prog: str | None = None, **kwargs):
        super().__init__(*args, **kwargs)
        self.help_prog = help_prog or self.prog

    def error(self, message: str):
        self.exit(EXIT_BAD_INPUT, f"error: {message} ({self.help_prog} --help for usage)\n")
