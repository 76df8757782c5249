"""Multi-layer perceptrons."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

ACTIVATIONS: dict[str, type[nn.Module]] = {
    "relu": nn.ReLU,
    "tanh": nn.Tanh,
    "elu": nn.ELU,
    "gelu": nn.GELU,
    "silu": nn.SiLU,
    "leaky_relu": nn.LeakyReLU,
}


def activation_class(name: str | type[nn.Module]) -> type[nn.Module]:
    """Look an activation up by name (``relu``, ``tanh``, ...) or pass a class through."""
    if isinstance(name, str):
        try:
            return ACTIVATIONS[name.lower()]
        except KeyError:
            raise ValueError(f"unknown activation {name!r}; accepted: {sorted(ACTIVATIONS)}") from None
    return name


def _make_activation(cls: type[nn.Module]) -> nn.Module:
    # ReLU's backward needs only its output, and Linear/LayerNorm do not keep theirs: in place is
    # safe here and saves one allocation per layer, which is a measurable share of a CPU update.
    return cls(inplace=True) if cls in (nn.ReLU, nn.LeakyReLU) else cls()


DEFAULT_NUM_CELLS = (32, 32, 32)


class MLP(nn.Sequential):
    """``Linear -> activation -> ... -> Linear``; several inputs are concatenated on the last dim.

    The defaults are the reference's: without ``num_cells``, three hidden layers of 32 units, and a
    Tanh activation. (rltrain's configs always give the sizes and the activation.)

    Args:
        in_features: input size (after concatenation of all inputs).
        out_features: output size.
        num_cells: hidden layer sizes, e.g. ``(256, 256)``; ``None``: ``(32, 32, 32)``.
        activation_class: activation after each hidden layer (class or name; default Tanh).
        layer_norm: add a LayerNorm after each hidden Linear (before the activation).
        activate_last_layer: apply the activation after the output layer too.
    """

    def __init__(
        self,
        in_features: int,
        out_features: int,
        num_cells: Sequence[int] | None = None,
        activation_class: type[nn.Module] | str = nn.Tanh,
        layer_norm: bool = False,
        activate_last_layer: bool = False,
    ):
        act = globals()["activation_class"](activation_class)
        sizes = [in_features, *(DEFAULT_NUM_CELLS if num_cells is None else num_cells)]
        layers: list[nn.Module] = []
        for n_in, n_out in zip(sizes[:-1], sizes[1:]):
            layers.append(nn.Linear(n_in, n_out))
            if layer_norm:
                layers.append(nn.LayerNorm(n_out))
            layers.append(_make_activation(act))
        layers.append(nn.Linear(sizes[-1], out_features))
        if activate_last_layer:
            layers.append(act())  # not in place: the caller may keep the output
        super().__init__(*layers)
        self.in_features = in_features
        self.out_features = out_features

    def forward(self, *inputs: torch.Tensor) -> torch.Tensor:
        x = inputs[0] if len(inputs) == 1 else torch.cat(inputs, dim=-1)
        return super().forward(x)
