"""Objectives by name: an algorithm config names its objective, the registry gives the class."""

from __future__ import annotations

from rltrain.objectives.common import LossModule

_REGISTRY: dict[str, type[LossModule]] = {}


def register_objective(name: str):
    """Class decorator: make an objective available under ``name``."""

    def wrap(cls: type[LossModule]) -> type[LossModule]:
        if name in _REGISTRY and _REGISTRY[name] is not cls:
            raise ValueError(f"objective name {name!r} is already taken by {_REGISTRY[name].__name__}")
        _REGISTRY[name] = cls
        return cls

    return wrap


def get_objective(name: str) -> type[LossModule]:
    try:
        return _REGISTRY[name]
    except KeyError:
        raise KeyError(f"unknown objective {name!r}; registered: {sorted(_REGISTRY)}") from None


def registered_objectives() -> list[str]:
    return sorted(_REGISTRY)
