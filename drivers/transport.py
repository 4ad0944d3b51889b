"""Numbered calls to an instrument: the one request-reply loop both bench drivers use.

Each call carries a number; the instrument answers with it, executes a number once and answers a
resent one from its memory. So a reply that is late, lost or garbled is met by resending the same
number, after an exponential back-off, at most ``retries`` times: a resent pulse is never applied
twice. Replies to other numbers (late answers to calls already given up on) are skipped. The
drivers keep what differs between their protocols: how a call and a reply look on the wire
(``build`` and ``parse``), which answers the instrument means as "send again", what an error reply
becomes, and what to do when the instrument stays silent.
"""

from __future__ import annotations

import os
import time
from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import Callable

from .errors import CrossbarError, InstrumentIOError, InstrumentTimeout, LimitViolation

GARBLED = object()           # a reply line whose checksum fails


@dataclass(frozen=True)
class Answer:
    """A reply: ``code`` is "" for success, else the instrument's error code; ``text`` the payload or
    the error's message."""
    call_id: int
    code: str
    text: str

    @property
    def ok(self) -> bool:
        return not self.code


class Link(ABC):
    """The bytes under the calls: one message out, one line in. Both raise InstrumentIOError when the
    connection is lost (``command`` names the call for the message)."""

    @abstractmethod
    def send(self, data: bytes, command: str) -> None: ...

    @abstractmethod
    def readline(self, timeout_s: float, command: str) -> bytes | None:
        """One line, or None if none arrives within ``timeout_s``."""

    def discard_input(self) -> None:
        """Before a resend: drop whatever input is buffered (replies are matched by number anyway)."""


class Calls:
    """Numbered calls over ``link``, for the instrument ``name()`` names in errors (a callable: a
    driver's name changes when it has identified its instrument). ``parse``: a reply line to an Answer,
    or None if garbled;
    ``resend_codes``: error codes that ask for the call again (the instrument was busy, or the request
    arrived damaged); ``max_id``: numbers run 1..max_id and wrap, starting at a random point so that
    replies an instrument remembers from an earlier session never answer this one's."""

    def __init__(self, name: Callable[[], str], link: Link, parse: Callable[[bytes], Answer | None], *, max_id: int,
                 timeout_s: float, retries: int, backoff_s: float, resend_codes: frozenset[str] = frozenset(),
                 error: Callable[[str, Answer], CrossbarError] | None = None):
        self.name, self.link, self.parse = name, link, parse
        self.max_id = max_id
        self.timeout_s, self.retries, self.backoff_s = timeout_s, retries, backoff_s
        self.resend_codes = resend_codes
        self.error = error or self._error
        self.retried = 0             # resends so far (faults survived)
        self.exchanges = 0           # messages that waited for a reply, resends included
        self._id = int.from_bytes(os.urandom(4), "little") % (max_id // 2)

    def next_id(self) -> int:
        self._id = self._id % self.max_id + 1
        return self._id

    def call(self, command: str, build: Callable[[int], bytes], *, extra_timeout_s: float = 0.0,
             on_silence: Callable[[str], None] | None = None) -> str:
        """Send ``build(number)`` until its success reply arrives and return its payload. An error reply
        raises (``LIMIT``: LimitViolation) unless its code is one to resend on; after each silent wait
        ``on_silence(command)`` may raise instead of resending."""
        call_id = self.next_id()
        message = build(call_id)
        timeout = self.timeout_s + extra_timeout_s
        last = "no reply"
        for attempt in range(self.retries + 1):
            if attempt:
                self.retried += 1
                self.back_off(attempt)
                self.link.discard_input()
            got = self.exchange(message, call_id, timeout, command)
            if got is None:
                last = f"no reply within {timeout:g} s"
                if on_silence is not None:
                    on_silence(command)
                continue
            if got is GARBLED:
                last = "garbled reply (checksum mismatch)"
                continue
            if got.ok:
                return got.text
            if got.code in self.resend_codes:
                last = f"the instrument answered {got.code} {got.text}".rstrip()
                continue
            raise self.error(command, got)
        cls = InstrumentTimeout if last.startswith("no reply") else InstrumentIOError
        raise cls(self.name(), command, f"{last}, after {self.retries + 1} attempts")

    def back_off(self, attempt: int) -> None:
        """The pause before attempt number ``attempt`` (1 for the first resend): ``backoff_s``, doubled
        with each further attempt."""
        time.sleep(self.backoff_s * 2 ** (attempt - 1))

    def exchange(self, message: bytes, call_id: int, timeout_s: float, command: str):
        """Send once and wait: the Answer to ``call_id``, None if none arrives in time, GARBLED if a
        damaged line arrives first."""
        self.link.send(message, command)
        self.exchanges += 1
        deadline = time.monotonic() + timeout_s
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return None
            line = self.link.readline(remaining, command)
            if line is None:
                return None
            answer = self.parse(line)
            if answer is None:
                return GARBLED
            if answer.call_id == call_id:
                return answer

    def _error(self, command: str, answer: Answer) -> CrossbarError:
        if answer.code == "LIMIT":
            return LimitViolation(self.name(), command, f"the instrument refused: {answer.text}")
        return CrossbarError(self.name(), command, f"the instrument answered {answer.code} {answer.text}".rstrip())


__all__ = ["Answer", "Calls", "GARBLED", "Link"]
