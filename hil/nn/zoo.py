"""Model configurations (validated, for protocols and checkpoints) and the models they build."""

from __future__ import annotations

from typing import TYPE_CHECKING, Annotated, Literal, Union

from pydantic import BaseModel, ConfigDict, Field

if TYPE_CHECKING:    # the protocol schema imports the configurations; only building a model needs torch
    from torch import nn


class _Config(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, strict=True, allow_inf_nan=False)

    d_model: int = Field(64, ge=1, le=1024)
    n_layers: int = Field(2, ge=1, le=16)
    dropout: float = Field(0.0, ge=0, lt=1)


class S4DConfig(_Config):
    kind: Literal["s4d"] = "s4d"
    d_state: int = Field(64, ge=2, le=512, multiple_of=2)
    prenorm: bool = False


class MGradeConfig(_Config):
    kind: Literal["mgrade"] = "mgrade"
    max_delay: int = Field(16, ge=1, le=1024)
    taps: int = Field(4, ge=1, le=256)
    d_hidden: int | None = Field(None, ge=1, le=4096)
    mlp_ratio: float = Field(2.0, gt=0, le=16)


class ConvConfig(_Config):
    kind: Literal["conv"] = "conv"
    max_delay: int = Field(64, ge=1, le=4096)
    taps: int = Field(8, ge=1, le=1024)
    mlp_ratio: float = Field(2.0, gt=0, le=16)


class RecurrentConfig(_Config):
    kind: Literal["recurrent"] = "recurrent"
    d_hidden: int | None = Field(None, ge=1, le=4096)
    mlp_ratio: float = Field(2.0, gt=0, le=16)


ModelConfig = Annotated[Union[S4DConfig, MGradeConfig, ConvConfig, RecurrentConfig], Field(discriminator="kind")]


def build_model(config, d_input: int, d_output: int, pool: str = "mean") -> nn.Module:
    """The model ``config`` describes; ``pool`` is how it reads a sequence out, the mean over its
    steps or its last step (the task says which: :attr:`~hil.nn.tasks.TaskData.pool`)."""
    options = config.model_dump(exclude={"kind"}) | {"pool": pool}
    if config.kind == "s4d":
        from .s4d import S4DModel
        return S4DModel(d_input, d_output, **options)
    from .mgrade import ConvModel, MGradeModel, RecurrentModel
    cls = {"mgrade": MGradeModel, "conv": ConvModel, "recurrent": RecurrentModel}[config.kind]
    return cls(d_input, d_output, **options)
