"""Action/observation specs: the few facts about a space that networks and objectives need.

rltrain does not depend on torchrl; these small classes stand in for its ``Bounded``,
``Categorical`` and ``OneHot`` specs, and :func:`spec_from_space` builds them from gymnasium spaces.
"""

from __future__ import annotations

from dataclasses import dataclass

import gymnasium as gym
import numpy as np
import torch


@dataclass(frozen=True)
class Bounded:
    """A continuous box ``low <= x <= high`` of the given shape (torchrl's ``Bounded``)."""

    low: torch.Tensor
    high: torch.Tensor
    shape: tuple[int, ...]

    def __init__(self, low, high, shape=None, dtype=torch.float32):
        low = torch.as_tensor(low, dtype=dtype)
        high = torch.as_tensor(high, dtype=dtype)
        shape = tuple(shape) if shape is not None else tuple(torch.broadcast_shapes(low.shape, high.shape))
        if isinstance(shape, tuple) and len(shape) == 1 and isinstance(shape[0], tuple):
            shape = shape[0]
        low, high = low.expand(shape).clone(), high.expand(shape).clone()
        if (low > high).any():
            raise ValueError(f"Bounded spec needs low <= high, got low={low.tolist()} high={high.tolist()}")
        object.__setattr__(self, "low", low)
        object.__setattr__(self, "high", high)
        object.__setattr__(self, "shape", shape)

    @property
    def dim(self) -> int:
        return int(np.prod(self.shape)) if self.shape else 1


@dataclass(frozen=True)
class Categorical:
    """A discrete space of ``n`` actions stored as an integer index."""

    n: int
    shape: tuple[int, ...] = ()


@dataclass(frozen=True)
class OneHot:
    """A discrete space of ``n`` actions stored as a one-hot vector."""

    n: int

    @property
    def shape(self) -> tuple[int, ...]:
        return (self.n,)


@dataclass(frozen=True)
class MultiOneHot:
    """Several discrete choices of ``nvec[i]`` options each, stored as concatenated one-hot vectors."""

    nvec: tuple[int, ...]

    def __init__(self, nvec):
        object.__setattr__(self, "nvec", tuple(int(n) for n in nvec))

    @property
    def shape(self) -> tuple[int, ...]:
        return (sum(self.nvec),)


@dataclass(frozen=True)
class Binary:
    """``n`` independent on/off choices stored as a 0/1 vector."""

    n: int

    @property
    def shape(self) -> tuple[int, ...]:
        return (self.n,)


def spec_from_space(space: gym.Space) -> Bounded | Categorical:
    """The spec of a gymnasium ``Box`` (continuous) or ``Discrete`` space."""
    if isinstance(space, gym.spaces.Box):
        return Bounded(space.low, space.high, space.shape)
    if isinstance(space, gym.spaces.Discrete):
        return Categorical(int(space.n))
    raise TypeError(f"unsupported gymnasium space {space!r}: rltrain handles Box and Discrete spaces")
