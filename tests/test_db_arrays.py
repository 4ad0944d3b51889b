"""Array blobs: exact round trips, rejection of what cannot be stored safely, summaries."""

from __future__ import annotations

import numpy as np
import pytest

from db.arrays import FORMAT_VERSION, MAGIC, decode_array, encode_array, summarize

DTYPES = ["bool", "int8", "int16", "int32", "int64", "uint8", "uint16", "uint32", "uint64",
          "float16", "float32", "float64", "longdouble", "complex64", "complex128",
          ">f8", ">i4", "<u2", ">c16", "datetime64[ns]", "timedelta64[s]"]
SHAPES = [(), (0,), (0, 3), (1,), (7,), (3, 4), (2, 3, 5), (1, 1, 1, 1)]


def _sample(dtype: str, shape: tuple[int, ...], rng: np.random.Generator) -> np.ndarray:
    dt = np.dtype(dtype)
    raw = rng.normal(scale=100.0, size=shape)
    if dt.kind == "b":
        return (raw > 0).astype(dt)
    if dt.kind in "iumM":
        return np.abs(raw).astype(np.int64).astype(dt) if dt.kind == "u" else raw.astype(np.int64).astype(dt)
    if dt.kind == "c":
        return (raw + 1j * rng.normal(size=shape)).astype(dt)
    return raw.astype(dt)


def assert_identical(original: np.ndarray, restored: np.ndarray) -> None:
    assert restored.dtype.str == original.dtype.str  # includes byte order
    assert restored.dtype == original.dtype
    assert restored.shape == original.shape
    assert restored.tobytes() == original.tobytes()


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape", SHAPES, ids=str)
def test_round_trip_is_bit_exact(dtype, shape):
    a = _sample(dtype, shape, np.random.default_rng(0))
    assert_identical(a, decode_array(encode_array(a)))


@pytest.mark.parametrize("dtype", ["float16", "float32", "float64", ">f4", "complex128"])
def test_special_values_survive(dtype):
    a = np.array([np.nan, -np.nan, np.inf, -np.inf, 0.0, -0.0, 1e-30, -1.5], dtype=dtype)
    restored = decode_array(encode_array(a))
    assert_identical(a, restored)
    assert np.array_equal(restored, a, equal_nan=True)
    if a.dtype.kind == "f":
        assert np.signbit(restored[5]) and not np.signbit(restored[4])


def test_nan_payload_is_kept():
    bits = np.array([0x7FF8000000000001, 0xFFF0000000000ABC], dtype=np.uint64)
    a = bits.view(np.float64)
    restored = decode_array(encode_array(a))
    assert restored.view(np.uint64).tolist() == bits.tolist()


def test_non_contiguous_and_fortran_arrays():
    base = np.arange(60, dtype=np.float32).reshape(6, 10)
    for a in (base[::2, ::3], base.T, base[:, 1], np.asfortranarray(base), base[::-1]):
        restored = decode_array(encode_array(a))
        assert_identical(a, restored)
        assert np.array_equal(restored, a)
    assert decode_array(encode_array(np.asfortranarray(base))).flags.f_contiguous


def test_decoded_array_is_writable():
    restored = decode_array(encode_array(np.zeros(4)))
    restored[0] = 1.0
    assert restored[0] == 1.0


def test_record_dtype_round_trips():
    a = np.array([(1, 2.5), (3, -0.0)], dtype=[("row", "<i2"), ("g", ">f8")])
    assert_identical(a, decode_array(encode_array(a)))


@pytest.mark.parametrize("a", [np.array([1, "x", None], dtype=object),
                               np.zeros(2, dtype=[("a", "f8"), ("b", "O")])], ids=["object", "record-with-object"])
def test_object_arrays_are_rejected(a):
    with pytest.raises(ValueError, match="object"):
        encode_array(a)


def test_masked_arrays_are_rejected():
    with pytest.raises(ValueError, match="mask"):
        encode_array(np.ma.masked_invalid([1.0, np.nan]))


def test_blob_has_prefix_and_compresses():
    a = np.zeros((64, 64))
    blob = encode_array(a)
    assert blob.startswith(MAGIC + bytes([FORMAT_VERSION]))
    assert len(blob) < a.nbytes / 10


@pytest.mark.parametrize("blob, message", [
    (b"", "magic"),
    (b"PK\x03\x04rest", "magic"),
    (MAGIC + bytes([FORMAT_VERSION + 1]) + b"x", "version"),
    (MAGIC, "version"),
    (MAGIC + bytes([FORMAT_VERSION]) + b"not zlib", "corrupt"),
])
def test_foreign_blobs_are_refused(blob, message):
    with pytest.raises(ValueError, match=message):
        decode_array(blob)


def test_summary_matches_numpy_over_finite_values():
    rng = np.random.default_rng(1)
    a = rng.normal(1e-5, 2e-6, size=(32, 32))
    a[0, :5] = np.nan
    a[1, :3] = np.inf
    a[2, 0] = -np.inf
    finite = a[np.isfinite(a)]
    s = summarize(a)
    assert s["n"] == finite.size == 32 * 32 - 9
    assert s["nan_count"] == 5
    assert s["mean"] == pytest.approx(np.mean(finite), rel=1e-12)
    assert s["std"] == pytest.approx(np.std(finite), rel=1e-12)
    assert s["min"] == finite.min()
    assert s["max"] == finite.max()
    assert all(type(s[k]) is float for k in ("mean", "std", "min", "max"))
    assert type(s["n"]) is int and type(s["nan_count"]) is int


def test_summary_of_integers_and_bools():
    a = np.array([[3, -7], [12, 0]], dtype=np.int16)
    assert summarize(a) == {"n": 4, "mean": 2.0, "std": float(np.std(a)), "min": -7.0, "max": 12.0,
                            "nan_count": 0}
    b = np.array([True, False, True, True])
    assert summarize(b) == {"n": 4, "mean": 0.75, "std": float(np.std(b)), "min": 0.0, "max": 1.0,
                            "nan_count": 0}


def test_summary_float32_is_accumulated_in_double():
    a = np.full(100_000, 0.1, dtype=np.float32)
    assert summarize(a)["mean"] == pytest.approx(float(np.float32(0.1)), rel=1e-12)


@pytest.mark.parametrize("a", [np.array([np.nan, np.inf, -np.inf]), np.zeros((0, 4)), np.array(np.nan)],
                         ids=["non-finite", "empty", "0-d nan"])
def test_summary_without_finite_values(a):
    s = summarize(a)
    assert s["n"] == 0
    assert s["mean"] is s["std"] is s["min"] is s["max"] is None
    assert s["nan_count"] == int(np.isnan(a).sum())


def test_summary_of_unordered_dtype_has_only_nan_count():
    s = summarize(np.array([1 + 1j, np.nan]))
    assert s == {"n": None, "mean": None, "std": None, "min": None, "max": None, "nan_count": 1}
