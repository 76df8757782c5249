"""Networks and their TensorDict wrappers."""

from rltrain.modules.actors import Actor, CategoricalActor, ProbabilisticActor, ValueOperator, call_tensors
from rltrain.modules.batchrenorm import BRNMLP, BatchRenorm1d, StackedBRNMLP
from rltrain.modules.distributions import NormalParamExtractor, ScaledTanh, TanhNormal
from rltrain.modules.ensemble import StackedMLP, VmapEnsemble, frozen_copy, make_ensemble
from rltrain.modules.mlp import MLP
from rltrain.modules.qvalue import DistributionalQValueActor, QValueActor
from rltrain.modules.specs import Bounded, Categorical, OneHot, spec_from_space

__all__ = [
    "Actor", "BRNMLP", "BatchRenorm1d", "Bounded", "Categorical", "CategoricalActor", "DistributionalQValueActor",
    "MLP", "NormalParamExtractor", "OneHot", "ProbabilisticActor", "QValueActor", "ScaledTanh", "StackedBRNMLP",
    "StackedMLP", "TanhNormal", "ValueOperator", "VmapEnsemble", "call_tensors", "frozen_copy", "make_ensemble",
    "spec_from_space",
]
