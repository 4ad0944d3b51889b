"""Instrument layer: the Crossbar interface, its backends, and algorithms that run over it."""

from .device_model import DeviceConfig
from .errors import CrossbarError, InstrumentIOError, InstrumentTimeout, LimitViolation, NotConnected
from .interface import ConverterSpec, Crossbar, CrossbarIdentity
from .limits import SafetyLimits
from .write_verify import WriteVerifyResult, WriteVerifySettings, write_verify

__all__ = ["ConverterSpec", "Crossbar", "CrossbarIdentity", "CrossbarError", "DeviceConfig", "InstrumentIOError",
           "InstrumentTimeout", "LimitViolation", "NotConnected", "SafetyLimits", "SoftwareCrossbar",
           "WriteVerifyResult", "WriteVerifySettings", "write_verify"]


def __getattr__(name: str):
    # The software crossbar compiles its kernels with numba, which takes most of a second to import;
    # validating a protocol or talking to a bench must not pay for it (PEP 562 lazy attribute).
    if name == "SoftwareCrossbar":
        from .mock import SoftwareCrossbar
        return SoftwareCrossbar
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
