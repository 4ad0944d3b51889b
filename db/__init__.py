"""Run database: schema, engine and sessions, migrations, array blobs, and the record API.

``Database(url)`` (or ``Database.open(url)``) gives a database at the current schema
(SQLite ``hil.db`` unless a URL or ``HIL_DB_URL`` says otherwise). ``db.runs`` opens and closes
runs and their steps, ``db.liveness`` finds runs whose process is gone, ``db.resume`` reopens
them, and ``db.records`` stores what they measured and made.
"""

from db.arrays import decode_array, encode_array, summarize
from db.engine import DEFAULT_URL, ENV_VAR, Database, make_engine, resolve_url
from db.errors import DatabaseError, DatabaseMissing
from db.models import (STATUSES, Base, CrossbarArray, DeviceResult, Instrument, Measurement, Run,
                       RunStep)

__all__ = [
    "DEFAULT_URL", "ENV_VAR", "STATUSES",
    "Base", "CrossbarArray", "Database", "DatabaseError", "DatabaseMissing", "DeviceResult", "Instrument", "Measurement",
    "Run", "RunStep",
    "decode_array", "encode_array", "make_engine", "resolve_url", "summarize",
]
