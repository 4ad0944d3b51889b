"""Analog-aware training of the S4D recurrence: perturb what the crossbar will actually hold.

The streaming step multiplies [state; u] by the block matrix [[Ā_r, B̄_r], [c_r Ā_r, c_r B̄_r + D]],
so the array holds alpha and beta (the rotation blocks), B̄, the fused output row C·Ā and the fused
skip 2 Re(C B̄) + D. This transform quantises and perturbs exactly those entries, each group with its
own scale (an executor maps each group into the conductance window separately), then rewrites them
as (alpha, beta, B̄, C, D) for both forms: C = (C·Ā)' / Ā', D = D̃' - 2 Re(C' B̄'). The one
approximation is that the two copies of alpha (and of beta) in a rotation block share one draw.
"""

from __future__ import annotations

import torch
from torch import nn

from .analog import AnalogSpec, apply_weight_spec

Params = dict[str, torch.Tensor]


class S4DAnalog(nn.Module):
    """An S4D layer's ``param_transform`` that applies an :class:`AnalogSpec` to its recurrence."""

    analog_role = "recurrent"

    def __init__(self, layer: nn.Module):
        super().__init__()
        # The owning layer, kept out of the module tree (it owns this transform, not the reverse).
        object.__setattr__(self, "_layer", layer)
        self.analog: AnalogSpec | None = None
        self._chip: Params | None = None

    def forward(self, params: Params) -> Params:
        if self._chip is not None:
            return self._chip
        if self.analog is None:
            return params
        return self._realise(params, self.training or self.analog.noise_in_eval, None)

    def freeze_noise(self, generator: torch.Generator) -> None:
        """Draw one realisation of the perturbed recurrence and keep it: one programmed chip."""
        if self.analog is None:
            return
        with torch.no_grad():
            self._chip = self._realise(self._layer.exact_discretization(), True, generator)

    def unfreeze_noise(self) -> None:
        self._chip = None

    def _realise(self, params: Params, noisy: bool, generator: torch.Generator | None) -> Params:
        spec = self.analog if noisy else self.analog.model_copy(update={"noise_model": None})
        if spec.weights == "float" and spec.noise_model is None:
            return params            # nothing to do, and the C = (C Ā) / Ā round trip would not be exact
        a = torch.complex(params["alpha"], params["beta"])
        b = torch.complex(params["b_re"], params["b_im"])
        c = torch.complex(params["c_re"], params["c_im"])
        ca = c * a
        skip = 2 * (c * b).real.sum(dim=-1) + params["d"]      # (H,): the sum over modes

        def realise(*tensors: torch.Tensor) -> list[torch.Tensor]:
            # One group, one scale: the tensors are mapped into the window together.
            flat = torch.cat([t.reshape(-1) for t in tensors])
            out = apply_weight_spec(flat, spec, True, generator)
            return [piece.reshape(t.shape) for piece, t in zip(torch.split(out, [t.numel() for t in tensors]),
                                                                 tensors)]

        alpha, beta = realise(params["alpha"], params["beta"])
        b_re, b_im = realise(params["b_re"], params["b_im"])
        ca_re, ca_im = realise(ca.real, ca.imag)
        (skip,) = realise(skip)
        a_new = torch.complex(alpha, beta)
        b_new = torch.complex(b_re, b_im)
        ca_new = torch.complex(ca_re, ca_im)
        # A pole quantised to exactly zero keeps no memory; its output row then carries nothing either.
        nonzero = a_new.abs() > 0
        c_new = torch.where(nonzero, ca_new / torch.where(nonzero, a_new, torch.ones_like(a_new)),
                            torch.zeros_like(ca_new))
        d_new = skip - 2 * (c_new * b_new).real.sum(dim=-1)
        return {"alpha": alpha, "beta": beta, "b_re": b_re, "b_im": b_im, "c_re": c_new.real,
                "c_im": c_new.imag, "d": d_new}


def attach(model: nn.Module) -> int:
    """Give every S4D layer of ``model`` an :class:`S4DAnalog` transform; returns how many."""
    from .s4d import S4D

    n = 0
    for module in model.modules():
        if isinstance(module, S4D) and not isinstance(module.param_transform, S4DAnalog):
            module.param_transform = S4DAnalog(module)
            n += 1
    return n
