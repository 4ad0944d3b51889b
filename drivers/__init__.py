"""Instrument layer: the Crossbar interface, its backends, and algorithms that run over it."""

from .device_model import DeviceConfig
from .errors import CrossbarError, InstrumentIOError, InstrumentTimeout, LimitViolation, NotConnected
from .interface import ConverterSpec, Crossbar, CrossbarIdentity
from .limits import SafetyLimits
from .mock import SoftwareCrossbar
from .write_verify import WriteVerifyResult, WriteVerifySettings, write_verify

__all__ = ["ConverterSpec", "Crossbar", "CrossbarIdentity", "CrossbarError", "DeviceConfig", "InstrumentIOError",
           "InstrumentTimeout", "LimitViolation", "NotConnected", "SafetyLimits", "SoftwareCrossbar",
           "WriteVerifyResult", "WriteVerifySettings", "write_verify"]
