"""Numpy arrays as compact, self-describing binary blobs, and their summary statistics.

A blob is a short prefix (magic + format version) followed by the zlib-compressed
``.npy`` serialisation of the array. ``.npy`` already records dtype (byte order
included), shape and memory order, so decoding restores the array bit for bit; the
prefix lets a later format be told apart from this one.
"""

from __future__ import annotations

import io
import zlib
from typing import Any

import numpy as np

MAGIC = b"HILA"
FORMAT_VERSION = 1
_PREFIX = MAGIC + bytes([FORMAT_VERSION])

# Level 6 is zlib's own default: most of the gain of level 9 at a fraction of its time.
COMPRESSION_LEVEL = 6

# Statistics are only meaningful for real numbers; bool counts as 0/1.
_REAL_KINDS = "biuf"


def encode_array(a: np.ndarray) -> bytes:
    """Serialise ``a`` to a compressed blob that :func:`decode_array` restores exactly.

    Raises ``ValueError`` for arrays holding Python objects, which could only be stored
    by pickling (and unpickling a blob from a database can run arbitrary code), and
    for masked arrays, whose mask would be silently dropped.
    """
    if isinstance(a, np.ma.MaskedArray):
        raise ValueError("cannot store a masked array: the mask would be lost; store data and mask separately")
    a = np.asarray(a)
    if a.dtype.hasobject:
        raise ValueError(f"cannot store an array of dtype {a.dtype}: object arrays would need pickling")
    buffer = io.BytesIO()
    np.save(buffer, a, allow_pickle=False)
    return _PREFIX + zlib.compress(buffer.getvalue(), COMPRESSION_LEVEL)


def decode_array(blob: bytes) -> np.ndarray:
    """The array encoded in ``blob``; ``ValueError`` if it is not a blob of a known format."""
    blob = bytes(blob)
    if not blob.startswith(MAGIC):
        raise ValueError("not an encoded array: magic prefix missing")
    version = blob[len(MAGIC):len(_PREFIX)]
    if version != bytes([FORMAT_VERSION]):
        found = version[0] if version else "none"
        raise ValueError(f"unsupported array format version {found} (this code reads {FORMAT_VERSION})")
    try:
        raw = zlib.decompress(blob[len(_PREFIX):])
    except zlib.error as exc:
        raise ValueError(f"corrupt array blob: {exc}") from exc
    return np.load(io.BytesIO(raw), allow_pickle=False)


def summarize(a: np.ndarray) -> dict[str, Any]:
    """Summary columns for a stored array.

    ``n`` is the number of finite values, and ``mean``, ``std`` (population),
    ``min`` and ``max`` are computed over those values only, so one NaN or inf
    does not hide the statistics of the rest. They are ``None`` when there is no
    finite value, and for dtypes without an order (complex, strings, records), where
    ``n`` is ``None`` too. ``nan_count`` counts NaNs.
    """
    a = np.asarray(a)
    kind = a.dtype.kind
    summary: dict[str, Any] = {"n": None, "mean": None, "std": None, "min": None, "max": None,
                               "nan_count": int(np.count_nonzero(np.isnan(a))) if kind in "fc" else 0}
    if kind not in _REAL_KINDS:
        return summary
    finite = a[np.isfinite(a)] if kind == "f" else a.ravel()
    summary["n"] = int(finite.size)
    if finite.size:
        summary["mean"] = float(np.mean(finite, dtype=np.float64))
        summary["std"] = float(np.std(finite, dtype=np.float64))
        summary["min"] = float(finite.min())
        summary["max"] = float(finite.max())
    return summary
