"""Objectives: pure loss math, one family per file, looked up by name in a registry."""

from rltrain.objectives.common import LossModule, ValueEstimators, distance_loss, reduce_loss, td0_target
from rltrain.objectives.crossq import CrossQLoss
from rltrain.objectives.ddpg import DDPGLoss
from rltrain.objectives.dqn import DistributionalDQNLoss, DQNLoss
from rltrain.objectives.redq import REDQLoss
from rltrain.objectives.registry import get_objective, register_objective, registered_objectives
from rltrain.objectives.sac import SACLoss
from rltrain.objectives.td3 import TD3Loss

register_objective("sac")(SACLoss)
register_objective("td3")(TD3Loss)
register_objective("ddpg")(DDPGLoss)
register_objective("redq")(REDQLoss)
register_objective("crossq")(CrossQLoss)
register_objective("dqn")(DQNLoss)
register_objective("c51")(DistributionalDQNLoss)

__all__ = [
    "CrossQLoss", "DDPGLoss", "DQNLoss", "DistributionalDQNLoss", "LossModule", "REDQLoss", "SACLoss", "TD3Loss",
    "ValueEstimators", "distance_loss", "get_objective", "reduce_loss", "register_objective",
    "registered_objectives", "td0_target",
]
