r"""Greedy actors over discrete actions: ``QValueActor`` (DQN) and ``DistributionalQValueActor`` (C51).

Both wrap a network that scores every action at once and act greedily on the scores:

* :class:`QValueActor`: the network outputs :math:`Q(s, \cdot)`, ``[*B, nA]``; the greedy action is
  :math:`\arg\max_a Q(s, a)`.
* :class:`DistributionalQValueActor`: the network outputs ``nA * N`` logits, read atom-major as
  ``[*B, N, nA]`` and turned into log-probabilities over the ``N`` atoms of a fixed support
  :math:`z_1 < \dots < z_N`; the greedy action maximises the expected value
  :math:`\sum_i p_i(s, a)\, z_i`.

An action is written either as a one-hot vector ``[*B, nA]`` (``action_space="one_hot"``) or as an
int64 index ``[*B]`` (``"categorical"``, what a gymnasium ``Discrete`` env takes).

Each actor is a TensorDict module (the reference pages' public API) and also offers a plain-tensor
path (``action_values``, ``log_probs``, ``act``) that the objectives and the collector use on the hot
path. Exploration (e.g. epsilon-greedy) is not the actor's business: ``act`` is always greedy.
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from tensordict import TensorDictBase
from tensordict.nn import TensorDictModuleBase
from torch import nn

from rltrain.modules.actors import NestedKey, _as_keys, call_tensors
from rltrain.modules.specs import Categorical, OneHot

ONE_HOT = "one_hot"
CATEGORICAL = "categorical"
ACCEPTED_ACTION_SPACES = ("one_hot", "one-hot", "categorical")


def resolve_action_space(action_space: str | OneHot | Categorical | None, spec=None,
                         owner: str = "QValueActor") -> str:
    """Normalise an action space (a name or a spec) to ``"one_hot"`` or ``"categorical"``.

    ``action_space`` wins over ``spec``; with neither, warn and assume one-hot actions.
    """
    if action_space is None:
        action_space = spec
    if action_space is None:
        warnings.warn(f"{owner}: no action_space given, assuming one-hot actions; pass action_space='categorical' "
                      "for integer actions (gymnasium Discrete) or action_space='one_hot'", UserWarning,
                      stacklevel=3)
        return ONE_HOT
    if isinstance(action_space, OneHot):
        return ONE_HOT
    if isinstance(action_space, Categorical):
        return CATEGORICAL
    if isinstance(action_space, str):
        name = action_space.lower().replace("-", "_")
        if name in (ONE_HOT, CATEGORICAL):
            return name
        if name in ("mult_one_hot", "binary"):
            raise ValueError(f"{owner}: action_space {action_space!r} is not supported by rltrain; "
                             f"accepted: {ACCEPTED_ACTION_SPACES} or a OneHot/Categorical spec")
        raise ValueError(f"{owner}: unknown action_space {action_space!r}; accepted: {ACCEPTED_ACTION_SPACES} "
                         "or a OneHot/Categorical spec")
    raise TypeError(f"{owner} needs a discrete action space: one of {ACCEPTED_ACTION_SPACES} or a "
                    f"OneHot/Categorical spec, got {type(action_space).__name__} (a continuous action space "
                    "needs an actor-critic objective such as SAC)")


def check_support(support: torch.Tensor) -> None:
    """A C51 support must be 1-D, finite, evenly spaced and increasing, with at least two atoms."""
    if support.dim() != 1 or support.numel() < 2:
        raise ValueError(f"the support must be a 1-D tensor of at least 2 atoms, got shape {tuple(support.shape)}")
    if not torch.isfinite(support).all():
        raise ValueError("the support must be finite")
    vmin, vmax = support[0].item(), support[-1].item()
    if vmin >= vmax:
        raise ValueError(f"the support must run from Vmin to Vmax with Vmin < Vmax, got Vmin={vmin} >= Vmax={vmax}; "
                         "build it with torch.linspace(Vmin, Vmax, n_atoms)")
    steps = support.diff()
    if not torch.allclose(steps, steps.mean().expand_as(steps), rtol=1e-4, atol=1e-6 * (vmax - vmin)):
        raise ValueError("the support must be evenly spaced (the C51 projection assumes it): "
                         "build it with torch.linspace(Vmin, Vmax, n_atoms)")


class _GreedyDiscreteActor(TensorDictModuleBase):
    """What both actors share: the wrapped network, the keys, and greedy index -> action."""

    def __init__(self, module: nn.Module, in_keys: Sequence[NestedKey] | None, spec, action_space,
                 action_key: NestedKey, out_keys: list[NestedKey]):
        super().__init__()
        self.module = module
        self._tensordict_net = isinstance(module, TensorDictModuleBase)
        default_in = list(module.in_keys) if self._tensordict_net else ["observation"]
        self.in_keys = _as_keys(in_keys, default_in)
        self.out_keys = out_keys
        self.spec = spec
        self.action_space = resolve_action_space(action_space, spec, owner=type(self).__name__)
        self.action_key = action_key

    def _net(self, *obs: torch.Tensor) -> torch.Tensor:
        if self._tensordict_net:
            return call_tensors(self.module, *obs)[0]
        return self.module(*obs)

    def _to_action(self, index: torch.Tensor, num_actions: int) -> torch.Tensor:
        """An index ``[*B]`` as this actor's action: itself, or one-hot ``[*B, nA]`` (int64)."""
        return index if self.action_space == CATEGORICAL else F.one_hot(index, num_actions)

    def action_values(self, *obs: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def act(self, *obs: torch.Tensor, deterministic: bool = True) -> torch.Tensor:
        """The greedy action (an index for ``"categorical"``); ``deterministic`` is accepted for the
        collector's interface only -- exploration is added outside the actor."""
        values = self.action_values(*obs)
        return self._to_action(values.argmax(-1), values.shape[-1])


class QValueActor(_GreedyDiscreteActor):
    """Greedy policy over a Q network: writes ``action_value``, ``action`` and ``chosen_action_value``.

    Args:
        module: ``Q(s, .)``: a plain ``nn.Module`` taking the ``in_keys`` tensors and returning
            ``[*B, nA]``, or a TensorDict module writing them (its first out key is read).
        in_keys: observation keys (default: the TensorDict module's, else ``["observation"]``).
        spec: the action spec (:class:`~rltrain.modules.OneHot` or :class:`~rltrain.modules.Categorical`),
            used for the action space when ``action_space`` is not given.
        action_space: ``"one_hot"`` / ``"one-hot"`` (write a one-hot vector), ``"categorical"`` (write an
            int64 index) or a spec. With neither this nor ``spec``, warns and uses one-hot.
        action_value_key, action_key, chosen_action_value_key: output keys; ``chosen_action_value``
            is :math:`\\max_a Q(s, a)`, ``[*B, 1]``.
    """

    def __init__(
        self,
        module: nn.Module,
        in_keys: Sequence[NestedKey] | None = None,
        spec: OneHot | Categorical | None = None,
        action_space: str | OneHot | Categorical | None = None,
        action_value_key: NestedKey = "action_value",
        action_key: NestedKey = "action",
        chosen_action_value_key: NestedKey = "chosen_action_value",
    ):
        super().__init__(module, in_keys, spec, action_space, action_key,
                         [action_key, action_value_key, chosen_action_value_key])
        self.action_value_key = action_value_key
        self.chosen_action_value_key = chosen_action_value_key

    def action_values(self, *obs: torch.Tensor) -> torch.Tensor:
        """``Q(s, .)``, ``[*B, nA]`` (plain-tensor path)."""
        return self._net(*obs)

    def forward(self, tensordict: TensorDictBase) -> TensorDictBase:
        values = self.action_values(*(tensordict.get(k) for k in self.in_keys))
        best = values.max(-1, keepdim=True)
        tensordict.set(self.action_value_key, values)
        tensordict.set(self.action_key, self._to_action(best.indices.squeeze(-1), values.shape[-1]))
        tensordict.set(self.chosen_action_value_key, best.values)
        return tensordict


class DistributionalQValueActor(_GreedyDiscreteActor):
    """Greedy policy over a categorical return distribution (C51): writes ``action_value`` (the
    log-probabilities ``[*B, N, nA]``) and ``action``.

    Args:
        module: a network taking the ``in_keys`` tensors and returning ``nA * N`` logits in its last
            dim, atom-major (entry ``i * nA + a`` is atom ``i`` of action ``a``), e.g.
            ``MLP(obs_dim, n_actions * n_atoms)``; or a TensorDict module writing them.
        support: the atoms :math:`z_1..z_N`, evenly spaced from Vmin to Vmax (``torch.linspace``);
            stored as a buffer.
        in_keys, spec, action_space, action_value_key, action_key: as for :class:`QValueActor`.
    """

    def __init__(
        self,
        module: nn.Module,
        support: torch.Tensor,
        in_keys: Sequence[NestedKey] | None = None,
        spec: OneHot | Categorical | None = None,
        action_space: str | OneHot | Categorical | None = None,
        action_value_key: NestedKey = "action_value",
        action_key: NestedKey = "action",
    ):
        support = torch.as_tensor(support, dtype=torch.get_default_dtype()).detach().clone()
        check_support(support)
        super().__init__(module, in_keys, spec, action_space, action_key, [action_key, action_value_key])
        self.register_buffer("support", support)
        self.action_value_key = action_value_key

    @property
    def num_atoms(self) -> int:
        return self.support.numel()

    def log_probs(self, *obs: torch.Tensor) -> torch.Tensor:
        """``log p_i(s, a)``, ``[*B, N, nA]``, normalised over the atoms (plain-tensor path)."""
        logits = self._net(*obs)
        if logits.shape[-1] % self.num_atoms:
            raise ValueError(f"{type(self).__name__}: the network outputs {logits.shape[-1]} values, not a multiple "
                             f"of the {self.num_atoms} atoms (expected n_actions * n_atoms)")
        return logits.unflatten(-1, (self.num_atoms, -1)).log_softmax(-2)

    def expected_values(self, log_probs: torch.Tensor) -> torch.Tensor:
        """``sum_i p_i z_i`` for each action: ``[*B, N, nA] -> [*B, nA]``."""
        return torch.matmul(self.support, log_probs.exp())

    def action_values(self, *obs: torch.Tensor) -> torch.Tensor:
        """The expected return of each action, ``[*B, nA]``."""
        return self.expected_values(self.log_probs(*obs))

    def forward(self, tensordict: TensorDictBase) -> TensorDictBase:
        log_probs = self.log_probs(*(tensordict.get(k) for k in self.in_keys))
        index = self.expected_values(log_probs).argmax(-1)
        tensordict.set(self.action_value_key, log_probs)
        tensordict.set(self.action_key, self._to_action(index, log_probs.shape[-1]))
        return tensordict
