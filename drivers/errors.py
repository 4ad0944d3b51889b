"""One exception family for everything that can go wrong talking to a crossbar.

Every error names the instrument, the command and the cause, so a message in a
log or in the run database is enough to find what happened on the bench.
"""

from __future__ import annotations


class CrossbarError(Exception):
    """Base of every driver error: ``instrument``, ``command`` and ``cause`` are kept as attributes."""

    def __init__(self, instrument: str, command: str, cause: str):
        self.instrument = instrument
        self.command = command
        self.cause = cause
        super().__init__(f"instrument {instrument!r}, command {command!r}: {cause}")


class LimitViolation(CrossbarError):
    """A request outside the configured safety limits; raised before any I/O."""


class InstrumentIOError(CrossbarError):
    """The transport failed: lost connection, garbled or missing reply."""


class InstrumentTimeout(InstrumentIOError):
    """The instrument did not answer in time."""


class NotConnected(CrossbarError):
    """A command was issued on a closed instrument."""
