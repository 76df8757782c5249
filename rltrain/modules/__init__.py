"""Networks and their TensorDict wrappers."""

from rltrain.modules.actors import Actor, ProbabilisticActor, ValueOperator, call_tensors
from rltrain.modules.distributions import NormalParamExtractor, TanhNormal
from rltrain.modules.ensemble import StackedMLP, VmapEnsemble, frozen_copy, make_ensemble
from rltrain.modules.mlp import MLP
from rltrain.modules.specs import Bounded, Categorical, OneHot, spec_from_space

__all__ = [
    "Actor", "Bounded", "Categorical", "MLP", "NormalParamExtractor", "OneHot", "ProbabilisticActor",
    "StackedMLP", "TanhNormal", "ValueOperator", "VmapEnsemble", "frozen_copy", "make_ensemble",
    "spec_from_space", "call_tensors",
]
