"""Values made fit for JSON, the same way wherever a row is written or shown."""

from __future__ import annotations

import math
from datetime import datetime
from typing import Any

import numpy as np


def jsonable(value: Any) -> Any:
    """``value`` made fit for a JSON column or document: numpy scalars and arrays become plain Python,
    datetimes ISO 8601 text, and NaN and infinities ``None``, since JSON has no spelling for them
    (SQLite would accept Python's non-standard ``NaN``, PostgreSQL refuses it)."""
    if isinstance(value, dict):
        return {str(k): jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [jsonable(v) for v in value]
    if isinstance(value, np.ndarray):
        return jsonable(value.tolist())
    if isinstance(value, np.generic):
        return jsonable(value.item())
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, datetime):
        return value.isoformat()
    return value
