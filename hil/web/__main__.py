"""``python -m hil.web [--db URL] [--host 127.0.0.1] [--port 8050]``: the read-only web view.

Served by waitress (a pure-Python, multi-threaded WSGI server: a slow page never holds up another,
and nothing needs compiling). It binds to localhost unless ``--host`` says otherwise; it never writes
to the database, and can run under a database role that is only allowed to read (see README).
"""

from __future__ import annotations

import argparse
import sys

from db import Database, DatabaseError, DatabaseMissing
from db.errors import mask_url


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m hil.web", description=__doc__.splitlines()[0])
    parser.add_argument("--db", default=None, help="database URL (default: HIL_DB_URL, else sqlite:///hil.db)")
    parser.add_argument("--host", default="127.0.0.1",
                        help="address to listen on (default 127.0.0.1: this computer only; 0.0.0.0 for the lab)")
    parser.add_argument("--port", type=int, default=8050)
    parser.add_argument("--threads", type=int, default=8, help="requests served at once")
    args = parser.parse_args(argv)
    if not 0 <= args.port <= 65535:
        parser.error(f"--port must be between 0 and 65535, got {args.port}")
    try:
        db = Database(args.db, read_only=True)
    except (DatabaseError, DatabaseMissing) as exc:
        print(f"hil.web: {exc}", file=sys.stderr)
        return 2

    import waitress

    from hil.web.app import create_app

    app = create_app(db)
    try:
        server = waitress.create_server(app, host=args.host, port=args.port, threads=args.threads)
    except OSError as exc:                 # the port is taken, or the address is not this computer's
        print(f"hil.web: cannot listen on {args.host}:{args.port}: {exc.strerror or exc}", file=sys.stderr)
        db.close()
        return 2
    host, port = server.effective_host, server.effective_port
    print(f"serving {mask_url(db.url)} (read-only) at http://{host}:{port}/", flush=True)
    try:
        server.run()
    except KeyboardInterrupt:
        pass
    finally:
        db.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
