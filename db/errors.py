"""The exceptions the storage layer raises when a database cannot be used.

The message is one line: the database URL (password masked, so it can go to a log)
and a reason a person can act on, so a refused run says which database it could not
open and why, without a driver's traceback-sized text (a statement, a link).
"""

from __future__ import annotations

import re
from pathlib import Path

from sqlalchemy.engine import make_url
from sqlalchemy.exc import ArgumentError, DBAPIError, StatementError

# Used only when the URL is too malformed for SQLAlchemy to parse, which is
# exactly when a password could otherwise leak into the message verbatim.
_USERINFO = re.compile(r"(://[^:/@]*):[^@/]*@")

# SQLite's terse messages, as a person would say them.
_SQLITE_REASONS = {
    "file is not a database": "file is not a SQLite database",
    "database disk image is malformed": "file is corrupt (database disk image is malformed)",
    "attempt to write a readonly database": "the file or its directory is read-only",
}


def mask_url(url: str) -> str:
    """``url`` with any password replaced by ``***``."""
    try:
        return make_url(url).render_as_string(hide_password=True)
    except (ArgumentError, ValueError, TypeError):
        return _USERINFO.sub(r"\1:***@", url)


def _password(url: str) -> str | None:
    try:
        return make_url(url).password
    except (ArgumentError, ValueError, TypeError):
        match = re.search(r"://[^:/@]*:([^@/]*)@", url)
        return match.group(1) if match else None


def describe(exc: BaseException) -> str:
    """What went wrong, in one line, from a driver's or SQLAlchemy's exception.

    SQLAlchemy's own text adds the failed statement (a whole ``CREATE TABLE`` on a
    failed migration) and a link; the driver's message alone says what happened.
    """
    cause = exc.orig if isinstance(exc, StatementError) and exc.orig is not None else exc
    text = " ".join(str(cause).split())
    if isinstance(exc, DBAPIError) and type(cause).__module__.startswith("sqlite3"):
        return _SQLITE_REASONS.get(text, text)
    if "FATAL:" in text:
        # psycopg prefixes the server's answer with where it tried to connect, which
        # the URL already says: "connection to server at ..., port 5432 failed: FATAL: ..."
        return text.rsplit("FATAL:", 1)[1].strip()
    if isinstance(exc, (DBAPIError, OSError)):
        return text or type(cause).__name__
    return f"{type(cause).__name__}: {text}" if text else type(cause).__name__


class DatabaseError(Exception):
    """A database could not be opened or brought to the current schema.

    ``url`` (password masked) and ``cause`` (a reason, or the exception behind it) are
    kept as attributes. The message is always one line and never holds the password,
    even where a driver quotes it back.
    """

    def __init__(self, url: str, cause: BaseException | str):
        self.url = mask_url(url)
        self.cause = cause
        reason = " ".join((cause if isinstance(cause, str) else describe(cause)).split())
        password = _password(url)
        if password:
            # Delimited occurrences only: a short password must not garble the words around it.
            reason = re.sub(rf"(?<![A-Za-z0-9]){re.escape(password)}(?![A-Za-z0-9])", "***", reason)
        self.reason = reason
        super().__init__(f"database {self.url!r}: {reason}")


class DatabaseMissing(DatabaseError):
    """A SQLite database file, or the directory it would go in, does not exist, and
    creating it was not asked for (a mistyped path would start a second history).

    ``path`` is what is missing and ``kind`` says which: ``"file"`` or ``"directory"``.
    """

    def __init__(self, url: str, path: Path, kind: str):
        self.path = path
        self.kind = kind
        super().__init__(url, f"no database at {path}" if kind == "file" else f"directory {path} does not exist")
