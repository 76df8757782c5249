r"""Greedy actors over discrete actions: ``QValueActor`` (DQN) and ``DistributionalQValueActor`` (C51).

Both wrap a network that scores every action at once and act greedily on the scores:

* :class:`QValueActor`: the network outputs :math:`Q(s, \cdot)`, ``[*B, nA]``; the greedy action is
  :math:`\arg\max_a Q(s, a)`.
* :class:`DistributionalQValueActor`: the network outputs ``nA * N`` logits, read atom-major as
  ``[*B, N, nA]`` and turned into log-probabilities over the ``N`` atoms of a fixed support
  :math:`z_1 < \dots < z_N`; the greedy action maximises the expected value
  :math:`\sum_i p_i(s, a)\, z_i`.

An action is written as a one-hot vector ``[*B, nA]`` (``action_space="one_hot"``), an int64 index
``[*B]`` (``"categorical"``, what a gymnasium ``Discrete`` env takes), and, for
:class:`QValueActor`, as the reference also accepts:

* ``"mult_one_hot"``: several choices, the network's ``nA = sum(var_nums)`` outputs split into one
  group per choice; the action concatenates one one-hot vector per group (the argmax of each);
* ``"binary"``: ``nA`` independent on/off choices, a 0/1 vector.

For both, as in the reference, ``Q(s, a) = sum_j Q(s, .)_j * a_j`` (linear in the action), so the
greedy action maximises each group (each bit: on iff its entry is positive) and
``max_a Q(s, a)`` is the sum of the group maxima (of the positive entries). The reference's actor
raises ``NotImplementedError`` for binary actions; this one acts greedily on the same linear
``Q(s, a)`` that its DQN loss regresses.

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
from rltrain.modules.specs import Binary, Categorical, MultiOneHot, OneHot

ONE_HOT = "one_hot"
CATEGORICAL = "categorical"
MULT_ONE_HOT = "mult_one_hot"
BINARY = "binary"
ACCEPTED_ACTION_SPACES = ("one_hot", "one-hot", "categorical", "mult_one_hot", "binary")
SINGLE_CHOICE_SPACES = (ONE_HOT, CATEGORICAL)
ALL_SPACES = (ONE_HOT, CATEGORICAL, MULT_ONE_HOT, BINARY)
_SPEC_SPACES = {OneHot: ONE_HOT, Categorical: CATEGORICAL, MultiOneHot: MULT_ONE_HOT, Binary: BINARY}


def resolve_action_space(action_space: str | OneHot | Categorical | MultiOneHot | Binary | None, spec=None,
                         owner: str = "QValueActor", accepted: tuple[str, ...] = ALL_SPACES) -> str:
    """Normalise an action space (a name or a spec) to one of ``accepted``
    (``"one_hot"``, ``"categorical"``, ``"mult_one_hot"``, ``"binary"``).

    ``action_space`` wins over ``spec``; with neither, warn and assume one-hot actions.
    """
    if action_space is None:
        action_space = spec
    if action_space is None:
        warnings.warn(f"{owner}: no action_space given, assuming one-hot actions; pass action_space='categorical' "
                      "for integer actions (gymnasium Discrete) or action_space='one_hot'", UserWarning,
                      stacklevel=3)
        return ONE_HOT
    if type(action_space) in _SPEC_SPACES:
        name = _SPEC_SPACES[type(action_space)]
    elif isinstance(action_space, str):
        name = action_space.lower().replace("-", "_")
        if name not in _SPEC_SPACES.values():
            raise ValueError(f"{owner}: unknown action_space {action_space!r}; accepted: {ACCEPTED_ACTION_SPACES} "
                             "or a OneHot/Categorical/MultiOneHot/Binary spec")
    else:
        raise TypeError(f"{owner} needs a discrete action space: one of {ACCEPTED_ACTION_SPACES} or a "
                        f"OneHot/Categorical/MultiOneHot/Binary spec, got {type(action_space).__name__} (a continuous "
                        "action space needs an actor-critic objective such as SAC)")
    if name not in accepted:
        raise ValueError(f"{owner}: action_space {action_space!r} is not supported here; accepted: {accepted} "
                         "(several-choice and binary actions are for QValueActor/DQNLoss)")
    return name


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
                 action_key: NestedKey, out_keys: list[NestedKey], accepted: tuple[str, ...] = SINGLE_CHOICE_SPACES):
        super().__init__()
        self.module = module
        self._tensordict_net = isinstance(module, TensorDictModuleBase)
        default_in = list(module.in_keys) if self._tensordict_net else ["observation"]
        self.in_keys = _as_keys(in_keys, default_in)
        self.out_keys = out_keys
        self.spec = spec
        self.action_space = resolve_action_space(action_space, spec, owner=type(self).__name__, accepted=accepted)
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
        var_nums: the number of options of each choice, for ``action_space="mult_one_hot"`` (taken
            from a :class:`~rltrain.modules.specs.MultiOneHot` spec when given).
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
        var_nums: Sequence[int] | None = None,
    ):
        super().__init__(module, in_keys, spec, action_space, action_key,
                         [action_key, action_value_key, chosen_action_value_key], accepted=ALL_SPACES)
        self.action_value_key = action_value_key
        self.chosen_action_value_key = chosen_action_value_key
        self.var_nums = _resolve_var_nums(self.action_space, var_nums, action_space, spec)

    def greedy(self, values: torch.Tensor) -> torch.Tensor:
        """The action maximising ``Q(s, a)`` given ``values = Q(s, .)`` ``[*B, nA]`` (module docstring)."""
        if self.action_space == MULT_ONE_HOT:
            if values.shape[-1] != sum(self.var_nums):
                raise ValueError(f"QValueActor: {values.shape[-1]} action values, but var_nums {self.var_nums} sum "
                                 f"to {sum(self.var_nums)}")
            return torch.cat([F.one_hot(group.argmax(-1), group.shape[-1]) for group in
                              values.split(self.var_nums, dim=-1)], dim=-1)
        if self.action_space == BINARY:
            return (values > 0).long()
        return self._to_action(values.argmax(-1), values.shape[-1])

    def value_of(self, values: torch.Tensor, action: torch.Tensor) -> torch.Tensor:
        """``Q(s, a)`` ``[*B, 1]``: the entry of an index, else ``sum_j Q(s, .)_j * a_j``."""
        if self.action_space == CATEGORICAL:
            return values.gather(-1, action.unsqueeze(-1))
        return (values * action.to(values.dtype)).sum(-1, keepdim=True)

    def max_value(self, values: torch.Tensor) -> torch.Tensor:
        """``max_a Q(s, a)`` ``[*B, 1]``."""
        if self.action_space in SINGLE_CHOICE_SPACES:
            return values.max(-1, keepdim=True).values
        return self.value_of(values, self.greedy(values))

    def act(self, *obs: torch.Tensor, deterministic: bool = True) -> torch.Tensor:
        """The greedy action (module docstring); exploration is added outside the actor."""
        return self.greedy(self.action_values(*obs))

    def action_values(self, *obs: torch.Tensor) -> torch.Tensor:
        """``Q(s, .)``, ``[*B, nA]`` (plain-tensor path)."""
        return self._net(*obs)

    def forward(self, tensordict: TensorDictBase) -> TensorDictBase:
        values = self.action_values(*(tensordict.get(k) for k in self.in_keys))
        action = self.greedy(values)
        tensordict.set(self.action_value_key, values)
        tensordict.set(self.action_key, action)
        tensordict.set(self.chosen_action_value_key, self.value_of(values, action))
        return tensordict


def _resolve_var_nums(space: str, var_nums: Sequence[int] | None, action_space, spec) -> tuple[int, ...] | None:
    """The group sizes of a ``"mult_one_hot"`` space: ``var_nums``, else the MultiOneHot spec's ``nvec``."""
    if space != MULT_ONE_HOT:
        return None
    if var_nums is None:
        source = action_space if isinstance(action_space, MultiOneHot) else spec
        var_nums = source.nvec if isinstance(source, MultiOneHot) else None
    if not var_nums or any(int(n) < 1 for n in var_nums):
        raise ValueError("QValueActor: action_space='mult_one_hot' needs var_nums (the number of options of each "
                         f"choice, e.g. var_nums=[3, 2]) or a MultiOneHot spec; got var_nums={var_nums!r}")
    return tuple(int(n) for n in var_nums)


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
