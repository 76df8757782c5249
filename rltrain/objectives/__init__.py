"""Objectives: pure loss math, one family per file, looked up by name in a registry."""

from rltrain.objectives.act import ACTLoss
from rltrain.objectives.bc import BCLoss
from rltrain.objectives.cal_ql import CalQLLoss
from rltrain.objectives.common import (
    LossModule, MissingKeyError, ValueEstimators, distance_loss, reduce_loss, td0_target,
)
from rltrain.objectives.cql import CQLLoss, DiscreteCQLLoss
from rltrain.objectives.crossq import CrossQLoss
from rltrain.objectives.ddpg import DDPGLoss
from rltrain.objectives.decision_transformer import DTLoss, OnlineDTLoss
from rltrain.objectives.diffusion_bc import DiffusionBCLoss
from rltrain.objectives.gail import GAILLoss, gail_reward
from rltrain.objectives.dqn import DistributionalDQNLoss, DQNLoss
from rltrain.objectives.iql import DiscreteIQLLoss, IQLLoss
from rltrain.objectives.ppo import ClipPPOLoss, PPOLoss, generalized_advantage_estimate
from rltrain.objectives.redq import REDQLoss
from rltrain.objectives.registry import get_objective, register_objective, registered_objectives
from rltrain.objectives.sac import SACLoss
from rltrain.objectives.td3 import TD3Loss
from rltrain.objectives.td3_bc import TD3BCLoss

register_objective("sac")(SACLoss)
register_objective("td3")(TD3Loss)
register_objective("ddpg")(DDPGLoss)
register_objective("redq")(REDQLoss)
register_objective("crossq")(CrossQLoss)
register_objective("dqn")(DQNLoss)
register_objective("c51")(DistributionalDQNLoss)
register_objective("iql")(IQLLoss)
register_objective("discrete_iql")(DiscreteIQLLoss)
register_objective("cql")(CQLLoss)
register_objective("cal_ql")(CalQLLoss)
register_objective("discrete_cql")(DiscreteCQLLoss)
register_objective("td3bc")(TD3BCLoss)
register_objective("bc")(BCLoss)
register_objective("diffusion_bc")(DiffusionBCLoss)
register_objective("act")(ACTLoss)
register_objective("ppo")(PPOLoss)
register_objective("dt")(DTLoss)
register_objective("online_dt")(OnlineDTLoss)
register_objective("gail")(GAILLoss)


def __getattr__(name: str):
    # The updaters import rltrain.objectives.common, so they are loaded on demand (as the reference
    # page's ``from ... import SoftUpdate`` expects them next to the objectives).
    if name in ("SoftUpdate", "HardUpdate"):
        from rltrain import updaters

        return getattr(updaters, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = [
    "ACTLoss", "BCLoss", "CalQLLoss", "DTLoss", "OnlineDTLoss", "ClipPPOLoss", "DiffusionBCLoss", "GAILLoss",
    "PPOLoss", "gail_reward",
    "generalized_advantage_estimate", "CQLLoss", "DiscreteCQLLoss", "DiscreteIQLLoss", "IQLLoss", "TD3BCLoss",
    "CrossQLoss", "DDPGLoss", "DQNLoss", "DistributionalDQNLoss", "LossModule", "REDQLoss", "SACLoss", "TD3Loss",
    "ValueEstimators", "distance_loss", "get_objective", "reduce_loss", "register_objective",
    "registered_objectives", "td0_target", "SoftUpdate", "HardUpdate", "MissingKeyError",
]
