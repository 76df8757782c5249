"""Networks and their TensorDict wrappers."""

from rltrain.modules.act import ACTActor, ACTModel, TemporalEnsemblePolicy
from rltrain.modules.actors import Actor, CategoricalActor, ProbabilisticActor, SafeModule, ValueOperator, call_tensors
from rltrain.modules.batchrenorm import BRNMLP, BatchRenorm1d, StackedBRNMLP
from rltrain.modules.diffusion import DDPM, ActionScaler, DiffusionActor, sinusoidal_embedding
from rltrain.modules.discriminator import Discriminator
from rltrain.modules.distributions import NormalParamExtractor, ScaledTanh, TanhNormal
from rltrain.modules.ensemble import StackedMLP, VmapEnsemble, frozen_copy, make_ensemble
from rltrain.modules.mlp import MLP
from rltrain.modules.qvalue import DistributionalQValueActor, QValueActor
from rltrain.modules.transformer import DecisionTransformer, DTActor, DTPolicy, OnlineDTActor
from rltrain.modules.specs import Bounded, Categorical, OneHot, spec_from_space

__all__ = [
    "ACTActor", "ACTModel", "ActionScaler", "DDPM", "DiffusionActor", "TemporalEnsemblePolicy",
    "sinusoidal_embedding", "Discriminator", "DTActor", "DTPolicy", "DecisionTransformer", "OnlineDTActor",
    "Actor", "BRNMLP", "BatchRenorm1d", "Bounded", "Categorical", "CategoricalActor", "DistributionalQValueActor",
    "MLP", "NormalParamExtractor", "OneHot", "ProbabilisticActor", "QValueActor", "SafeModule", "ScaledTanh",
    "StackedBRNMLP",
    "StackedMLP", "TanhNormal", "ValueOperator", "VmapEnsemble", "call_tensors", "frozen_copy", "make_ensemble",
    "spec_from_space",
]
