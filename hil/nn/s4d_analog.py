"""Analog-aware training of the S4D recurrence: perturb what the crossbar will actually hold.

The streaming step multiplies [state; u] by the residual matrix
[[Ā_r - I, B̄_r], [c_r Ā_r, c_r B̄_r + D]] (see :class:`~hil.nn.s4d.S4DRecurrence`), so the array
holds, per mode, Ā - 1 and B̄ on its two state rows and, per channel, the fused output row C·Ā with
the fused skip 2 Re(C B̄) + D. Each row is mapped with its own scale (a digital rescale per crossbar
output), so this transform quantises and perturbs per mode its two lines [Re Ā - 1, -Im Ā, Re B̄]
and [Im Ā, Re Ā - 1, Im B̄] and per channel [2 Re C·Ā, -2 Im C·Ā, skip], then rewrites them as
(alpha, beta, B̄, C, D) for both forms:
C = (C·Ā)' / Ā', D = skip' - 2 Re(C' B̄'). The input's column is balanced against the state's
(:func:`input_gain`): B̄ (and the skip) are programmed that much larger and u driven that much
smaller, so the noise on B̄ scales with B̄ rather than with the pole, and u, typically an order of
magnitude larger than the state, does not carry the errors of every device on its row (its zero
entries and the guard cells of a shared MVM) into the state. The approximation
(:func:`_perturbed_pole`) is that a perturbed mode keeps its eigenvectors: the system stays
diagonal and keeps its FFT training form, while its pole is that of the four independently
perturbed devices, including the split of a slowly rotating pair into a real, possibly unstable,
pole. Stuck devices are not drawn on the pole's entries (Re Ā - 1, Im Ā), which the mapping keeps
on working devices.
"""

from __future__ import annotations

import torch
from torch import nn

from .analog import AnalogSpec, apply_weight_spec

Params = dict[str, torch.Tensor]

# A stuck device on Re Ā - 1 would set it to zero (the most compensation can do), putting the pole
# on or outside the unit circle; one on Im Ā moves the pole's radius as much. The mapping therefore
# places the pole's entries on working devices (it knows the stuck map and can permute a mode's
# lines and tiles), and training draws stuck devices only for B̄ on the state rows.
_POLE_ON_WORKING_DEVICES = torch.tensor([True, True, False])


def _perturbed_pole(a1: torch.Tensor, b1: torch.Tensor, b2: torch.Tensor,
                    a2: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(alpha, beta) of the pole a mode realises when its 2x2 block I + [[a1, -b1], [b2, a2]] has
    independent errors on its four entries: the block's eigenvalue, or, if the errors split the
    complex pair into two real eigenvalues (a slowly rotating mode), the larger one with beta = 0:
    the pole that decides the mode's memory and stability. The change of the eigenvectors (a
    basis change that B̄ and C would absorb) is neglected. Gradients are those of the shared-error
    pole ((a1 + a2) / 2, (b1 + b2) / 2), the values exact."""
    mean_a, mean_b = 1 + (a1 + a2) / 2, (b1 + b2) / 2
    with torch.no_grad():
        disc = ((a1 - a2) / 2) ** 2 - b1 * b2
        root = disc.abs().sqrt()
        rotating = disc < 0
        real_top = mean_a + torch.where(mean_a >= 0, root, -root)
        alpha = torch.where(rotating, mean_a, real_top)
        beta = torch.where(rotating, torch.where(mean_b >= 0, root, -root), torch.zeros_like(root))
    # value of the exact pole, gradient of the shared-error one
    return mean_a + (alpha - mean_a).detach(), mean_b + (beta - mean_b).detach()


_MAX_INPUT_GAIN = 64.0


def input_gain(state_scale, input_scale) -> torch.Tensor:
    """The factor the input's column is programmed larger (and the input driven smaller) by, so that
    its largest entry matches the state entries' largest; within [1/64, 64], 1 for a zero column.
    Numbers or tensors, elementwise (training passes tensors, the mapping one block's numbers)."""
    state_scale, input_scale = torch.as_tensor(state_scale), torch.as_tensor(input_scale)
    ratio = state_scale / torch.where(input_scale > 0, input_scale, torch.ones_like(input_scale))
    gain = ratio.clamp(1 / _MAX_INPUT_GAIN, _MAX_INPUT_GAIN)
    return torch.where((input_scale > 0) & (state_scale > 0), gain, torch.ones_like(gain))


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
        c = torch.complex(params["c_re"], params["c_im"])
        ca = c * a
        b = torch.complex(params["b_re"], params["b_im"])
        skip = 2 * (c * b).real.sum(dim=-1) + params["d"]      # (H,): the sum over modes
        modes = params["alpha"].shape[-1]

        with torch.no_grad():
            g_state = input_gain(torch.maximum((params["alpha"] - 1).abs(), params["beta"].abs()),
                                 torch.maximum(params["b_re"].abs(), params["b_im"].abs()))    # (H, M)
            g_out = input_gain(torch.cat([2 * ca.real, 2 * ca.imag], dim=-1).abs().amax(dim=-1), skip.abs())  # (H,)
        # the mode's two crossbar lines, as the mapping holds them: [Re Ā - 1, -Im Ā, B̄_re g] reading
        # (x_re, x_im, u / g) and [Im Ā, Re Ā - 1, B̄_im g]; each its own scale, its own devices
        am1, beta = params["alpha"] - 1, params["beta"]
        lines = torch.stack([torch.stack([am1, -beta, params["b_re"] * g_state], dim=-1),
                             torch.stack([beta, am1, params["b_im"] * g_state], dim=-1)], dim=-2)  # (H, M, 2, 3)
        lines = apply_weight_spec(lines, spec, True, generator, per_row=True, working=_POLE_ON_WORKING_DEVICES)
        out_row = torch.cat([2 * ca.real, -2 * ca.imag, (skip * g_out)[:, None]], dim=-1)
        out_row = apply_weight_spec(out_row, spec, True, generator, per_row=True)          # (H, 2M + 1)

        alpha, beta = _perturbed_pole(lines[..., 0, 0], -lines[..., 0, 1], lines[..., 1, 0], lines[..., 1, 1])
        b_re, b_im = lines[..., 0, 2] / g_state, lines[..., 1, 2] / g_state
        a_new = torch.complex(alpha, beta)
        b_new = torch.complex(b_re, b_im)
        ca_new = torch.complex(out_row[:, :modes] / 2, -out_row[:, modes:2 * modes] / 2)
        # A pole realised at exactly zero keeps no memory; its output row then carries nothing either.
        nonzero = a_new.abs() > 0
        c_new = torch.where(nonzero, ca_new / torch.where(nonzero, a_new, torch.ones_like(a_new)),
                            torch.zeros_like(ca_new))
        d_new = out_row[:, -1] / g_out - 2 * (c_new * b_new).real.sum(dim=-1)
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
