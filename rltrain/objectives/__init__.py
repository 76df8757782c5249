"""Objectives: pure loss math, one family per file, looked up by name in a registry."""

from rltrain.objectives.common import LossModule, ValueEstimators, distance_loss, reduce_loss, td0_target
from rltrain.objectives.registry import get_objective, register_objective, registered_objectives
from rltrain.objectives.sac import SACLoss

register_objective("sac")(SACLoss)

__all__ = [
    "LossModule", "SACLoss", "ValueEstimators", "distance_loss", "get_objective", "reduce_loss",
    "register_objective", "registered_objectives", "td0_target",
]
