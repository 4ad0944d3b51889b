"""The one exception the storage layer raises when a database cannot be used.

The message names the database URL (password masked, so it can go to a log) and
the underlying cause, so a failed run says which database it could not open and why.
"""

from __future__ import annotations

import re

from sqlalchemy.engine import make_url
from sqlalchemy.exc import ArgumentError

# Used only when the URL is too malformed for SQLAlchemy to parse, which is
# exactly when a password could otherwise leak into the message verbatim.
_USERINFO = re.compile(r"(://[^:/@]*):[^@/]*@")


def mask_url(url: str) -> str:
    """``url`` with any password replaced by ``***``."""
    try:
        return make_url(url).render_as_string(hide_password=True)
    except (ArgumentError, ValueError, TypeError):
        return _USERINFO.sub(r"\1:***@", url)


class DatabaseError(Exception):
    """A database could not be opened or brought to the current schema.

    ``url`` (password masked) and ``cause`` are kept as attributes.
    """

    def __init__(self, url: str, cause: BaseException | str):
        self.url = mask_url(url)
        self.cause = cause
        reason = cause if isinstance(cause, str) else f"{type(cause).__name__}: {cause}"
        super().__init__(f"database {self.url!r}: {reason}")
