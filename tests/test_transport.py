"""The numbered-call loop both bench drivers share (drivers/transport.py), on a scripted link: what is
resent, with which number and after which pause, and what ends a call."""

from __future__ import annotations

import pytest

from drivers import CrossbarError, InstrumentIOError, InstrumentTimeout, LimitViolation
from drivers.transport import Answer, Calls, Link


class ScriptedLink(Link):
    """Replies from a script: each sent message is answered by the next entry, a function of the call
    number (a list of lines, possibly empty: silence)."""

    def __init__(self, script):
        self.script = list(script)
        self.sent: list[bytes] = []
        self.pending: list[bytes] = []
        self.discarded = 0

    def send(self, data, command):
        self.sent.append(data)
        number = int(data.split(b" ")[0])
        self.pending += self.script.pop(0)(number)

    def readline(self, timeout_s, command):
        return self.pending.pop(0) if self.pending else None

    def discard_input(self):
        self.discarded += 1


def parse(line: bytes):
    if line == b"garbage":
        return None
    number, code, text = line.decode().split(" ", 2)
    return Answer(int(number), "" if code == "OK" else code, text)


def calls(script, **kw):
    link = ScriptedLink(script)
    settings = dict(max_id=1000, timeout_s=0.01, retries=3, backoff_s=0.0)
    settings.update(kw)
    c = Calls(lambda: "bench-1", link, parse, **settings)
    return c, link


def ok(text):
    return lambda n: [f"{n} OK {text}".encode()]


def test_a_lost_or_garbled_reply_is_resent_with_the_same_number_and_stale_replies_are_skipped():
    c, link = calls([lambda n: [], lambda n: [b"garbage"], lambda n: [f"{n - 1} OK stale".encode(),
                                                                      f"{n} OK fresh".encode()]])
    assert c.call("READ", lambda n: f"{n} READ".encode()) == "fresh"
    assert len({m for m in link.sent}) == 1 and len(link.sent) == 3
    assert c.retried == 2 and c.exchanges == 3 and link.discarded == 2


def test_resend_codes_retry_other_errors_end_the_call():
    c, _ = calls([lambda n: [f"{n} BUSY later".encode()], ok("done")], resend_codes=frozenset({"BUSY"}))
    assert c.call("PULSE", lambda n: f"{n} PULSE".encode()) == "done"
    c, _ = calls([lambda n: [f"{n} LIMIT amplitude 3 V".encode()]])
    with pytest.raises(LimitViolation, match="bench-1.*refused: amplitude 3 V"):
        c.call("PULSE", lambda n: f"{n} PULSE".encode())
    c, _ = calls([lambda n: [f"{n} ARG bad table".encode()]])
    with pytest.raises(CrossbarError, match="answered ARG bad table"):
        c.call("PULSE", lambda n: f"{n} PULSE".encode())


def test_attempts_are_bounded_and_the_last_fault_is_named():
    c, link = calls([lambda n: []] * 4)
    with pytest.raises(InstrumentTimeout, match="no reply within 0.01 s, after 4 attempts"):
        c.call("READ", lambda n: f"{n} READ".encode())
    assert len(link.sent) == 4
    c, _ = calls([lambda n: [b"garbage"]] * 4)
    with pytest.raises(InstrumentIOError, match="garbled reply"):
        c.call("READ", lambda n: f"{n} READ".encode())


def test_silence_can_end_a_call_instead_of_a_resend():
    def silence(command):
        raise CrossbarError("bench-1", command, "the error queue holds: -285 syntax error")
    c, link = calls([lambda n: []])
    with pytest.raises(CrossbarError, match="-285"):
        c.call("hil.read", lambda n: f"{n} hil.read".encode(), on_silence=silence)
    assert len(link.sent) == 1


def test_back_off_doubles_and_numbers_wrap(monkeypatch):
    pauses = []
    monkeypatch.setattr("drivers.transport.time.sleep", pauses.append)
    c, _ = calls([lambda n: []] * 3 + [ok("x")], backoff_s=0.02)
    c.call("READ", lambda n: f"{n} READ".encode())
    assert pauses == pytest.approx([0.02, 0.04, 0.08])
    c._id = 999
    assert [c.next_id() for _ in range(3)] == [1000, 1, 2]
    assert 0 <= calls([])[0]._id < 500      # a random start in the lower half
