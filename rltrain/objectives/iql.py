r"""Implicit Q-Learning, IQL (Kostrikov et al. 2021), for continuous and discrete actions.

Notation: policy :math:`\pi_\theta`; critics :math:`Q_{\phi_k}` (k = 1..K, stacked) and their target
copies :math:`Q_{\bar\phi_k}` (always kept, moved by an updater); state value :math:`V_\psi` (no
target); :math:`sg` = stop-gradient; ``d`` = the distance of ``loss_function``; ``tau`` =
``expectile``; ``beta`` = ``temperature``; ``R`` = the reduction over the batch. Every term reads
the *dataset* action ``a`` only: IQL never evaluates an action the data does not contain. With::

    Q_min(s, a) = min_k Q_{bar phi_k}(s, a)                               (no gradient)

**Value** (expectile regression of V towards the target critics)::

    u = Q_min(s, a) - V_psi(s)
    loss_value = R( |tau - 1[u < 0]| * u^2 )

**Critic** (bootstrapped from the value network, never from a max over actions)::

    y = r + gamma * (1 - terminated) * V_{sg(psi)}(s')                    (no gradient)
    loss_qvalue = R( sum_k d(Q_{phi_k}(s, a), y) ),   priority = max_k (Q_{phi_k}(s, a) - y)^2

**Actor** (advantage-weighted regression on the dataset actions)::

    w = min(exp(beta * (Q_min(s, a) - sg(V_psi(s)))), 100)                (no gradient)
    loss_actor = R( -w * log pi_theta(a|s) ),   entropy = -mean(sg(log pi_theta(a|s)))

``entropy`` is the negative log-likelihood of the dataset actions (a logging metric, not the
policy's entropy).

**Deterministic actor** (an :class:`~rltrain.modules.Actor` ``mu_theta(s)``; CORL's
``iql_deterministic: true``, its tuned setting for hopper-medium and hopper-medium-replay): the
log-likelihood is replaced by the squared error to the dataset action, summed over the action
dimensions -- AWR on a Gaussian of fixed variance, up to constants::

    loss_actor = R( w * ||mu_theta(s) - a||^2 )

(no ``entropy`` metric and no log-probability written). A :class:`~rltrain.modules.TanhNormal` policy re-scores a dataset action after
clamping it strictly inside the bounds, so actions lying on the bounds have finite log-probabilities.

**Discrete actions** (:class:`DiscreteIQLLoss`): each critic maps ``s`` to ``Q(s, .)`` ``[*B, nA]``
and ``Q(s, a)`` is the entry of the dataset action (an int64 index, ``[*B]`` or ``[*B, 1]``, or a
one-hot vector); the policy is categorical and ``log pi(a|s)`` is its log-softmax at ``a``. The
rest is identical.

Each term's gradient reaches only its own group: actor -> ``actor``, critic -> ``qvalue``, value ->
``value``. IQL does not use priority weights.
"""

from __future__ import annotations

import dataclasses

import torch
from tensordict import TensorDict, TensorDictBase
from torch import nn

from rltrain.modules.actors import Actor, CategoricalActor, ProbabilisticActor, ValueOperator, call_tensors
from rltrain.modules.ensemble import make_ensemble
from rltrain.modules.qvalue import CATEGORICAL, SINGLE_CHOICE_SPACES, resolve_action_space
from rltrain.modules.specs import Categorical, OneHot
from rltrain.objectives.common import BOOTSTRAP_ESTIMATORS, LossModule, NestedKey, loss_output, next_key
from rltrain.objectives.dqn import _categorical_index

AWR_WEIGHT_MAX = 100.0


def expectile_loss(diff: torch.Tensor, expectile: float) -> torch.Tensor:
    """``|tau - 1[diff < 0]| * diff^2``: weight tau above zero, 1 - tau below."""
    weight = torch.where(diff < 0, 1.0 - expectile, expectile)
    return weight * diff.pow(2)


def awr_weight(advantage: torch.Tensor, temperature: float) -> torch.Tensor:
    """``min(exp(temperature * advantage), 100)``, without gradient."""
    return torch.exp(temperature * advantage.detach()).clamp_max(AWR_WEIGHT_MAX)


class _ImplicitQLearning(LossModule):
    """What :class:`IQLLoss` and :class:`DiscreteIQLLoss` share: the networks and the three terms.

    Subclasses say how the critics and the policy read the dataset action (:meth:`_data_action`,
    :meth:`_critic_at_data`, :meth:`_data_log_prob`).
    """

    supported_value_estimators = BOOTSTRAP_ESTIMATORS

    @dataclasses.dataclass
    class _AcceptedKeys:
        value: NestedKey = "state_value"
        action: NestedKey = "action"
        log_prob: NestedKey = "_log_prob"
        priority: NestedKey = "td_error"
        state_action_value: NestedKey = "state_action_value"
        reward: NestedKey = "reward"
        done: NestedKey = "done"
        terminated: NestedKey = "terminated"

    loss_groups = {"loss_actor": "actor", "loss_qvalue": "qvalue", "loss_value": "value"}

    def _setup(self, actor_network, qvalue_network, value_network, *, num_qvalue_nets: int, loss_function: str,
               temperature: float, expectile: float, gamma, priority_key, separate_losses: bool,
               reduction: str | None, use_vmap: bool, scalar_output_mode: str | None) -> None:
        self._init_common(loss_function=loss_function, reduction=reduction, gamma=gamma,
                          priority_key=priority_key, use_prioritized_weights=False)
        owner = type(self).__name__
        if not 0.0 < expectile < 1.0:
            raise ValueError(f"{owner}: expectile must lie in (0, 1), got {expectile} (0.7 for locomotion, "
                             "0.9 for AntMaze in the paper)")
        if scalar_output_mode not in (None, "exclude"):
            raise ValueError(f"scalar_output_mode must be None or 'exclude', got {scalar_output_mode!r}")
        members = list(qvalue_network) if isinstance(qvalue_network, (list, tuple)) else None
        if not members and (not isinstance(num_qvalue_nets, int) or num_qvalue_nets < 1):
            raise ValueError(f"num_qvalue_nets must be a positive integer, got {num_qvalue_nets!r}")
        reference = members[0] if members else qvalue_network
        if not all(isinstance(getattr(m, "module", None), nn.Module) for m in (members or [reference])):
            raise TypeError(f"{owner}: qvalue_network must be a rltrain.modules.ValueOperator (or a list of them), "
                            f"got {type(qvalue_network).__name__}")
        if not isinstance(value_network, nn.Module) or not hasattr(value_network, "in_keys"):
            raise TypeError(f"{owner} needs a state-value network V(s) (a rltrain.modules.ValueOperator), "
                            f"got {type(value_network).__name__}")
        self.temperature = float(temperature)
        self.expectile = float(expectile)
        self.deterministic_actor = isinstance(actor_network, Actor)
        self.separate_losses = separate_losses
        self.scalar_output_mode = scalar_output_mode

        self.actor_network = actor_network
        self.value_network = value_network
        self.obs_keys = list(actor_network.in_keys)
        self.value_in_keys = list(value_network.in_keys)
        self.qvalue_in_keys = list(reference.in_keys)
        self.qvalue_network = make_ensemble([m.module for m in members] if members else reference.module,
                                            None if members else num_qvalue_nets, use_vmap=use_vmap)
        self.num_qvalue_nets = self.qvalue_network.num_members
        self.register_target("qvalue_network", delay=True)

    def _group_members(self) -> dict[str, list[nn.Parameter]]:
        return {
            "actor": list(self.actor_network.parameters()),
            "qvalue": list(self.qvalue_network.parameters()),
            "value": list(self.value_network.parameters()),
        }

    # ---- how the dataset action is read (subclasses) ---------------------------------------------
    def _data_action(self, action: torch.Tensor, batch_dims: int) -> torch.Tensor:
        return action

    def _critic_at_data(self, network: nn.Module, inputs: list[torch.Tensor], action: torch.Tensor) -> torch.Tensor:
        """``Q_k(s, a)`` of the dataset action for every member, ``[K, *B]``."""
        raise NotImplementedError

    def _data_log_prob(self, obs: list[torch.Tensor], action: torch.Tensor) -> torch.Tensor:
        """``log pi_theta(a|s)`` of the dataset action, ``[*B]``."""
        raise NotImplementedError

    # ---- helpers on plain tensors --------------------------------------------------------------
    def _state_value(self, inputs: list[torch.Tensor]) -> torch.Tensor:
        return call_tensors(self.value_network, *inputs)[0].squeeze(-1)

    def _read_state(self, batch: TensorDictBase) -> dict[NestedKey, torch.Tensor]:
        """The observation tensors the three networks read, each read once."""
        keys = dict.fromkeys([*self.obs_keys, *self.qvalue_in_keys, *self.value_in_keys])
        keys.pop(self._tensor_keys.action, None)
        return {key: batch.get(key) for key in keys}

    # ---- loss terms -----------------------------------------------------------------------------
    def forward(self, batch: TensorDictBase) -> TensorDict:
        return self.forward_terms(batch, frozenset(self.loss_groups))

    def forward_terms(self, batch: TensorDictBase, terms: frozenset[str]) -> TensorDict:
        """Only the requested terms; the target-critic and value forwards are shared by the actor
        and value terms and skipped when neither is asked for."""
        keys = self._tensor_keys
        state = self._read_state(batch)
        action = self._data_action(batch.get(keys.action), batch.batch_dims)
        critic_inputs = [action if key == keys.action else state[key] for key in self.qvalue_in_keys]

        out: dict[str, torch.Tensor] = {}
        if "loss_qvalue" in terms:
            out["loss_qvalue"] = self._qvalue_loss(batch, critic_inputs, action)
        if "loss_actor" in terms or "loss_value" in terms:
            with torch.no_grad():
                q_min = self._critic_at_data(self.target_qvalue_network, critic_inputs, action).min(0).values
            value_inputs = [state[k] for k in self.value_in_keys]
            if "loss_value" in terms:
                value = self._state_value(value_inputs)
                out["loss_value"] = self._reduce(expectile_loss(q_min - value, self.expectile))
            else:
                with torch.no_grad():
                    value = self._state_value(value_inputs)
            if "loss_actor" in terms:
                out.update(self._actor_terms(batch, [state[k] for k in self.obs_keys], action, q_min - value))
        return loss_output(out)

    def _qvalue_loss(self, batch: TensorDictBase, critic_inputs: list[torch.Tensor],
                     action: torch.Tensor) -> torch.Tensor:
        reward, terminated, discount = self._transition(batch)
        with torch.no_grad():
            next_value = self._state_value([batch.get(next_key(k)) for k in self.value_in_keys])
            target = self._value_target(batch, reward, terminated, next_value, discount)
        pred = self._critic_at_data(self.qvalue_network, critic_inputs, action)
        loss = self._distance(pred, target.expand_as(pred)).sum(0)
        priority = (pred.detach() - target).pow(2).max(0).values
        batch.set(self._tensor_keys.priority, priority.unsqueeze(-1))
        return self._reduce(loss)

    def _actor_terms(self, batch: TensorDictBase, obs: list[torch.Tensor], action: torch.Tensor,
                     advantage: torch.Tensor) -> dict[str, torch.Tensor]:
        weight = awr_weight(advantage, self.temperature)
        if self.deterministic_actor:
            squared_error = (call_tensors(self.actor_network, *obs)[0] - action).pow(2).sum(-1)
            return {"loss_actor": self._reduce(weight * squared_error)}
        log_prob = self._data_log_prob(obs, action)
        out = {"loss_actor": self._reduce(-weight * log_prob)}
        log_prob = log_prob.detach()
        batch.set(self._tensor_keys.log_prob, log_prob)
        if self._scalar_outputs_allowed():
            out["entropy"] = -log_prob.mean()
        return out


class IQLLoss(_ImplicitQLearning):
    """IQL objective for continuous actions: expectile value, critics bootstrapped from V, AWR actor.

    Args:
        actor_network: a :class:`~rltrain.modules.ProbabilisticActor` (e.g. TanhNormal; only its
            log-probability of dataset actions is used), or a deterministic
            :class:`~rltrain.modules.Actor` (AWR on the squared error, module docstring). Its
            parameters are used as they are.
        qvalue_network: a ``ValueOperator`` ``Q(s, a)``, copied into a stacked ensemble of
            ``num_qvalue_nets`` independent members; or a list of such modules, stacked as given.
            The target copies are always kept (pair the objective with SoftUpdate or HardUpdate).
        value_network: a ``ValueOperator`` ``V(s)`` (no target copy).
        num_qvalue_nets: ensemble size K (>= 1).
        loss_function: distance of the critic loss: ``"l1"``, ``"l2"`` or ``"smooth_l1"``.
        temperature: inverse temperature beta of the advantage weights (the paper: 3 for
            locomotion, 10 for AntMaze).
        expectile: tau in (0, 1) of the value regression (the paper: 0.7 / 0.9).
        gamma, priority_key: deprecated, must be ``None`` (use ``make_value_estimator(gamma=...)``
            and ``set_keys(priority=...)``).
        separate_losses: accepted for API compatibility; the critics are always copies, so weights
            shared with the actor are trained by the actor loss only.
        reduction: ``"mean"`` (default), ``"sum"`` or ``"none"``.
        deactivate_vmap: evaluate a non-MLP critic member by member instead of with ``vmap``.
        scalar_output_mode: with ``reduction="none"``: ``None`` (warn) or ``"exclude"`` (the
            ``entropy`` scalar is left out either way).

    Output: ``loss_actor``, ``loss_qvalue``, ``loss_value`` and the detached ``entropy``. The
    priority ``max_k (Q_k - y)^2`` and the detached ``log pi(a|s)`` are written into the input batch
    under ``tensor_keys.priority`` and ``tensor_keys.log_prob``.
    """

    def __init__(
        self,
        actor_network: ProbabilisticActor,
        qvalue_network: ValueOperator | list[ValueOperator],
        value_network: ValueOperator,
        *,
        num_qvalue_nets: int = 2,
        loss_function: str = "smooth_l1",
        temperature: float = 1.0,
        expectile: float = 0.5,
        gamma: float | None = None,
        priority_key: str | None = None,
        separate_losses: bool = False,
        reduction: str | None = None,
        deactivate_vmap: bool = False,
        scalar_output_mode: str | None = None,
    ):
        super().__init__()
        if not isinstance(actor_network, (ProbabilisticActor, Actor)):
            raise TypeError("IQLLoss needs a stochastic actor with a distribution (a rltrain.modules."
                            "ProbabilisticActor) or a deterministic rltrain.modules.Actor, got "
                            f"{type(actor_network).__name__}")
        self._setup(actor_network, qvalue_network, value_network, num_qvalue_nets=num_qvalue_nets,
                    loss_function=loss_function, temperature=temperature, expectile=expectile, gamma=gamma,
                    priority_key=priority_key, separate_losses=separate_losses, reduction=reduction,
                    use_vmap=not deactivate_vmap, scalar_output_mode=scalar_output_mode)
        if self._tensor_keys.action not in self.qvalue_in_keys:
            raise ValueError(f"the critic must read the action {self._tensor_keys.action!r}; its in_keys are "
                             f"{self.qvalue_in_keys}")

    def _critic_at_data(self, network, inputs, action):
        return network(*inputs).squeeze(-1)

    def _data_log_prob(self, obs, action):
        log_prob = self.actor_network.distribution(*obs).log_prob(action)
        # a distribution without an event dim (a plain Normal) gives one log-prob per action dim
        return log_prob.sum(-1) if log_prob.dim() == action.dim() else log_prob


class DiscreteIQLLoss(_ImplicitQLearning):
    """IQL objective for discrete actions: critics ``s -> Q(s, .)``, a categorical policy.

    Args:
        actor_network: a :class:`~rltrain.modules.CategoricalActor` (its logits give
            ``log pi(a|s)``); its parameters are used as they are.
        qvalue_network: a ``ValueOperator`` reading the observations only and returning
            ``Q(s, .)`` ``[*B, nA]``, copied into a stacked ensemble of ``num_qvalue_nets``
            independent members (the target copies always kept); or a list of such modules.
        value_network: a ``ValueOperator`` ``V(s)`` (no target copy).
        action_space: how the batch's ``action`` is stored: ``"categorical"`` (an int64 index
            ``[*B]`` or ``[*B, 1]``), ``"one_hot"``/``"one-hot"`` or a Categorical/OneHot spec.
            Default: the actor's spec; with neither, warns and assumes one-hot.
        num_qvalue_nets, loss_function, temperature, expectile (must be < 1), gamma, priority_key,
        separate_losses, reduction, scalar_output_mode: as for :class:`IQLLoss`.

    Output: as :class:`IQLLoss`.
    """

    def __init__(
        self,
        actor_network: CategoricalActor,
        qvalue_network: ValueOperator | list[ValueOperator],
        value_network: ValueOperator,
        *,
        action_space: str | OneHot | Categorical | None = None,
        num_qvalue_nets: int = 2,
        loss_function: str = "smooth_l1",
        temperature: float = 1.0,
        expectile: float = 0.5,
        gamma: float | None = None,
        priority_key: str | None = None,
        separate_losses: bool = False,
        reduction: str | None = None,
        scalar_output_mode: str | None = None,
    ):
        super().__init__()
        if not hasattr(actor_network, "logits"):
            raise TypeError("DiscreteIQLLoss needs a categorical actor with logits (a rltrain.modules."
                            f"CategoricalActor), got {type(actor_network).__name__}")
        self._setup(actor_network, qvalue_network, value_network, num_qvalue_nets=num_qvalue_nets,
                    loss_function=loss_function, temperature=temperature, expectile=expectile, gamma=gamma,
                    priority_key=priority_key, separate_losses=separate_losses, reduction=reduction,
                    use_vmap=True, scalar_output_mode=scalar_output_mode)
        if self._tensor_keys.action in self.qvalue_in_keys:
            raise ValueError("DiscreteIQLLoss: the critic maps s -> Q(s, .) and must not read the action; its "
                             f"in_keys are {self.qvalue_in_keys}")
        self.action_space = resolve_action_space(action_space, getattr(actor_network, "spec", None),
                                                 owner="DiscreteIQLLoss", accepted=SINGLE_CHOICE_SPACES)

    def _data_action(self, action, batch_dims):
        """An int64 index ``[*B, 1]`` (categorical) or the one-hot vector ``[*B, nA]``."""
        if self.action_space == CATEGORICAL:
            return _categorical_index(action, batch_dims)
        if action.dim() != batch_dims + 1:
            raise ValueError(f"DiscreteIQLLoss: one-hot actions must be shaped [*B, n_actions], got "
                             f"{tuple(action.shape)}; for integer action indices use action_space='categorical'")
        return action

    def _chosen(self, values: torch.Tensor, action: torch.Tensor) -> torch.Tensor:
        """The entry of the dataset action in ``values [..., *B, nA]``: ``[..., *B]``."""
        if self.action_space == CATEGORICAL:
            return values.gather(-1, action.expand(*values.shape[:-1], 1)).squeeze(-1)
        return (values * action.to(values.dtype)).sum(-1)

    def _critic_at_data(self, network, inputs, action):
        return self._chosen(network(*inputs), action)

    def _data_log_prob(self, obs, action):
        return self._chosen(self.actor_network.logits(*obs).log_softmax(-1), action)
