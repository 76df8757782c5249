"""Networks from config: input and output sizes come from the env's or dataset's spaces; configs give
hidden sizes, activation and normalization."""

from __future__ import annotations

from omegaconf import DictConfig, OmegaConf
from tensordict.nn import TensorDictModule
from torch import nn

from rltrain.modules import (
    BRNMLP, MLP, Actor, Bounded, Categorical, CategoricalActor, NormalParamExtractor, ProbabilisticActor, ScaledTanh,
    ValueOperator,
)

def _mlp(n_in: int, n_out: int, cfg: DictConfig) -> MLP:
    return MLP(n_in, n_out, cfg.num_cells, cfg.activation, cfg.layer_norm)


def build_stochastic_actor(obs_dim: int, action_spec: Bounded, cfg: DictConfig) -> ProbabilisticActor:
    """MLP -> (loc, scale) -> TanhNormal on the action bounds."""
    net = nn.Sequential(_mlp(obs_dim, 2 * action_spec.dim, cfg), NormalParamExtractor(cfg.scale_mapping, cfg.scale_lb))
    module = TensorDictModule(net, in_keys=["observation"], out_keys=["loc", "scale"])
    return ProbabilisticActor(module, in_keys=["loc", "scale"], spec=action_spec)


def build_deterministic_actor(obs_dim: int, action_spec: Bounded, cfg: DictConfig) -> Actor:
    """MLP -> tanh mapped onto the action bounds."""
    net = nn.Sequential(_mlp(obs_dim, action_spec.dim, cfg), ScaledTanh(action_spec.low, action_spec.high))
    return Actor(net, in_keys=["observation"], spec=action_spec)


def build_qvalue(obs_dim: int, action_spec: Bounded, cfg: DictConfig) -> ValueOperator:
    return ValueOperator(_mlp(obs_dim + action_spec.dim, 1, cfg), in_keys=["observation", "action"])


def build_crossq_critic(obs_dim: int, action_spec: Bounded, cfg: DictConfig) -> ValueOperator:
    """CrossQ's critic: Batch Renormalization on the input and after every hidden layer."""
    brn = OmegaConf.to_container(cfg.batch_renorm, resolve=True)
    net = BRNMLP(obs_dim + action_spec.dim, 1, tuple(cfg.num_cells), cfg.activation, **brn)
    return ValueOperator(net, in_keys=["observation", "action"])


def build_state_value(obs_dim: int, cfg: DictConfig) -> ValueOperator:
    return ValueOperator(_mlp(obs_dim, 1, cfg), in_keys=["observation"])



def build_categorical_actor(obs_dim: int, action_spec: Categorical, cfg: DictConfig) -> CategoricalActor:
    return CategoricalActor(_mlp(obs_dim, action_spec.n, cfg), in_keys=["observation"], spec=action_spec)


