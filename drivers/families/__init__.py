"""Device families of the software crossbar, selected by a config's ``family``.

* ``rram`` (default): :class:`drivers.device_model.DeviceConfig`, the phenomenological RRAM model.
* ``pcm``: :class:`PCMConfig`, IBM's statistical phase-change model (drivers.families.pcm).
* ``vcm``: :class:`VCMConfig`, filamentary valence-change RRAM after the Stanford-PKU gap model
  (drivers.families.vcm).

Every config takes ``preset: pessimistic`` (about 10 % faulty devices, as measured on HfO2 test chips).
This module imports no numpy-heavy code, so a protocol can be validated without building a crossbar.
"""

from __future__ import annotations

from typing import Annotated, Any, Union

from pydantic import PlainValidator
from pydantic_core import PydanticCustomError

from ..device_model import DeviceConfig
from .config import PCMConfig, VCMConfig

__all__ = ["AnyDeviceConfig", "DeviceConfig", "FAMILIES", "PCMConfig", "VCMConfig", "crossbar_class", "family_of"]

FAMILIES = ("rram", "pcm", "vcm")


def family_of(value: Any) -> str:
    """The family a raw or built config names; a config without ``family`` is the RRAM one."""
    if isinstance(value, dict):
        family = value.get("family", "rram")
        return family if isinstance(family, str) else repr(family)
    return getattr(value, "family", "rram")


def _validate_device(value: Any):
    # Validate against the one family the value names rather than as a tagged union: errors then
    # sit at the field the user wrote (mock.device.g_max_s), not under a tag they never wrote.
    if isinstance(value, (DeviceConfig, PCMConfig, VCMConfig)):
        return value
    family = family_of(value)
    config = _CONFIGS.get(family)
    if config is None:
        raise PydanticCustomError("device_family", "unknown device family {family}; choose one of: {choices}",
                                  {"family": family, "choices": ", ".join(FAMILIES)})
    return config.model_validate(value)


_CONFIGS = {"rram": DeviceConfig, "pcm": PCMConfig, "vcm": VCMConfig}

# A device config of any family, chosen by its ``family`` key; no key means rram.
AnyDeviceConfig = Annotated[Union[DeviceConfig, PCMConfig, VCMConfig], PlainValidator(_validate_device)]


def crossbar_class(family: str):
    """The SoftwareCrossbar subclass simulating ``family`` (imported on demand: it brings numba)."""
    if family == "pcm":
        from .pcm import PCMCrossbar
        return PCMCrossbar
    if family == "vcm":
        from .vcm import VCMCrossbar
        return VCMCrossbar
    if family == "rram":
        from ..mock import SoftwareCrossbar
        return SoftwareCrossbar
    raise ValueError(f"unknown device family {family!r}; choose one of: {', '.join(FAMILIES)}")
