r"""Deep Q-learning for discrete actions: DQN / Double DQN and distributional DQN (C51).

Notation: online network :math:`Q_\phi`, target network :math:`Q_{\bar\phi}` (a frozen copy moved by an
updater; with ``delay_value=False`` the online network, read without gradient), ``sg`` =
stop-gradient, ``d`` = the distance of ``loss_function``, :math:`\gamma^n` the discount (``n`` =
``steps_to_next_obs`` for n-step batches, else 1). Bootstrapping is cut by *terminated* only.

**DQN** (Mnih et al. 2015). ``Q(s, a)`` is the entry of the taken action: ``gather`` for an int64
index (``"categorical"``), ``sum(Q(s, .) * a)`` for a one-hot (or several-choice, or binary) action,
whose ``max_a'`` is taken per choice (:class:`~rltrain.modules.qvalue.QValueActor`)::

    y = r + gamma^n * (1 - terminated) * max_a' Q_{bar phi}(s', a')          (no gradient)
    loss = R( d(Q_phi(s, a), y) ),  priority = (Q_phi(s, a) - y)^2

**Double DQN** (van Hasselt et al. 2015, ``double_dqn=True``): the online network picks the next
action, the target network evaluates it (so it needs ``delay_value=True``)::

    a* = argmax_a' Q_{sg(phi)}(s', a')
    y  = r + gamma^n * (1 - terminated) * Q_{bar phi}(s', a*)

**C51** (Bellemare et al. 2017). The network gives log-probabilities :math:`\log p_i(s, a)` over a
fixed support :math:`z_1 < \dots < z_N` from Vmin to Vmax, :math:`\Delta z = (V_{max} - V_{min})/(N-1)`.
Under no gradient::

    a*   = argmax_a' sum_i p_i(s', a'; phi) z_i          (online network: double-Q action choice)
    p'_i = p_i(s', a*; bar phi)                          (target network)
    Tz_i = clamp(r + gamma^n * (1 - terminated) * z_i, Vmin, Vmax)
    b_i  = (Tz_i - Vmin) / dz,   l_i = floor(b_i),   u_i = ceil(b_i)
    where l_i == u_i: l_i -= 1 if u_i > 0, then u_i += 1 if still l_i == u_i and l_i < N - 1
    m[l_i] += p'_i * (u_i - b_i),   m[u_i] += p'_i * (b_i - l_i)

and the loss is the cross-entropy of the projected target ``m`` against the prediction::

    loss = R( -sum_i m_i * log p_i(s, a; phi) ),  priority = the per-sample loss

``R`` is the reduction (``mean`` weighted by ``priority_weight`` when the batch has it). Both losses
have one term, ``loss``, whose gradient reaches only the online network (group ``value``).
"""

from __future__ import annotations

import dataclasses
import warnings

import torch
from tensordict import TensorDict, TensorDictBase
from torch import nn

from rltrain.modules.qvalue import (
    CATEGORICAL,
    DistributionalQValueActor,
    QValueActor,
    check_support,
    resolve_action_space,
)
from rltrain.modules.specs import Categorical, OneHot
from rltrain.objectives.common import BOOTSTRAP_ESTIMATORS, LossModule, NestedKey, TransitionKeys, loss_output, next_key


def _reward_and_terminated(batch: TensorDictBase, keys) -> tuple[torch.Tensor, torch.Tensor]:
    """``r`` and ``terminated`` (falling back to ``done``), both ``[*B, 1]``."""
    terminated = batch.get(next_key(keys.terminated), None)
    if terminated is None:
        terminated = batch.get(next_key(keys.done))
    return batch.get(next_key(keys.reward)), terminated.bool()


def _categorical_index(action: torch.Tensor, batch_dims: int) -> torch.Tensor:
    """An int64 action index shaped ``[*B, 1]``; env actions arrive as ``[*B]``."""
    if action.dim() == batch_dims:
        action = action.unsqueeze(-1)
    return action if action.dtype == torch.long else action.long()


def _check_one_hot(action: torch.Tensor, expected_shape: tuple[int, ...], owner: str) -> None:
    """A one-hot (or several-choice, or binary) action must be shaped like ``Q(s, .)``, ``[*B, nA]``; an
    int64 index ``[*B]`` here is a config mistake."""
    if tuple(action.shape) != tuple(expected_shape):
        raise ValueError(f"{owner}: one-hot actions must be shaped {tuple(expected_shape)} ([*B, n_actions]), got "
                         f"{tuple(action.shape)}; for integer action indices use action_space='categorical'")


def check_support_covers_returns(vmin: float, vmax: float, reward_range: tuple[float, float] | None,
                                 gamma: float, where: str = "C51") -> bool:
    """Warn when the discounted-return bounds ``r_min / (1 - gamma)`` .. ``r_max / (1 - gamma)`` of a
    per-step reward range fall outside the support ``[vmin, vmax]`` (the projection clamps every target
    atom into it, so the values saturate there). Returns whether the support covers them; with no
    ``reward_range`` (unknown) there is nothing to check."""
    if reward_range is None:
        return True
    r_min, r_max = (float(r) for r in reward_range)
    horizon = float("inf") if gamma >= 1.0 else 1.0 / (1.0 - gamma)
    low, high = min(r_min * horizon, r_min), max(r_max * horizon, r_max)
    if low >= vmin and high <= vmax:
        return True
    warnings.warn(f"{where}: the support [{vmin:g}, {vmax:g}] does not cover the discounted returns the rewards "
                  f"allow, [{low:g}, {high:g}] (per-step rewards in [{r_min:g}, {r_max:g}], gamma {gamma:g}): values "
                  "beyond the support saturate. Widen it (env.c51_support or algo.support.vmin/vmax).",
                  UserWarning, stacklevel=2)
    return False


class DQNLoss(LossModule):
    """DQN objective, optionally Double DQN.

    Args:
        value_network: a :class:`~rltrain.modules.qvalue.QValueActor`, or a network ``Q(s, .)``
            (plain ``nn.Module`` or TensorDict module) that is wrapped into one. Its parameters are
            used as they are: stepping the objective's optimizer updates the collection policy.
        loss_function: ``"l2"`` (default), ``"l1"`` or ``"smooth_l1"``.
        delay_value: keep a target copy of the network (moved by SoftUpdate/HardUpdate); ``False``
            bootstraps from the online network, detached.
        double_dqn: choose the next action with the online network and evaluate it with the target
            network; needs ``delay_value=True``.
        gamma: deprecated, must be ``None``: use ``make_value_estimator(gamma=...)``.
        action_space: how the batch's ``action`` is stored: ``"one_hot"``/``"one-hot"``,
            ``"categorical"`` (int64 index ``[B]`` or ``[B, 1]``), ``"mult_one_hot"`` (concatenated
            one-hot vectors; the actor needs ``var_nums``), ``"binary"`` (0/1 vector), or a spec.
            For the last two ``Q(s, a) = sum_j Q(s, .)_j a_j`` (see :mod:`rltrain.modules.qvalue`).
            Default: the actor's action space.
        priority_key: deprecated, must be ``None``: use ``set_keys(priority=...)``.
        reduction: ``"mean"`` (default), ``"sum"`` or ``"none"``.
        use_prioritized_weights: ``"auto"`` (use ``priority_weight`` if present), True or False.
    """

    supported_value_estimators = BOOTSTRAP_ESTIMATORS

    @dataclasses.dataclass
    class _AcceptedKeys(TransitionKeys):
        advantage: NestedKey = "advantage"
        value_target: NestedKey = "value_target"
        value: NestedKey = "chosen_action_value"
        action_value: NestedKey = "action_value"
        action: NestedKey = "action"

    loss_groups = {"loss": "value"}

    def __init__(
        self,
        value_network: QValueActor | nn.Module,
        *,
        loss_function: str = "l2",
        delay_value: bool = True,
        double_dqn: bool = False,
        gamma: float | None = None,
        action_space: str | OneHot | Categorical | None = None,
        priority_key: str | None = None,
        reduction: str | None = None,
        use_prioritized_weights: str | bool = "auto",
    ):
        super().__init__()
        if double_dqn and not delay_value:
            raise ValueError("double_dqn=True needs delay_value=True: double DQN picks the next action with the "
                             "online network and evaluates it with the target network, which delay_value=False "
                             "does not create")
        self._init_common(loss_function=loss_function, reduction=reduction, gamma=gamma,
                          priority_key=priority_key, use_prioritized_weights=use_prioritized_weights)
        if isinstance(value_network, DistributionalQValueActor):
            raise TypeError("DQNLoss got a DistributionalQValueActor; use DistributionalDQNLoss for C51")
        if not isinstance(value_network, nn.Module):
            raise TypeError(f"value_network must be a QValueActor or an nn.Module, got {type(value_network).__name__}")
        if not isinstance(value_network, QValueActor):
            value_network = QValueActor(value_network, action_space=action_space)
        self.action_space = (resolve_action_space(action_space, owner="DQNLoss") if action_space is not None
                             else value_network.action_space)
        self.delay_value = delay_value
        self.double_dqn = double_dqn
        self.value_network = value_network
        self.obs_keys = list(value_network.in_keys)
        self.register_target("value_network", delay_value)

    def _group_members(self) -> dict[str, list[nn.Parameter]]:
        return {"value": list(self.value_network.parameters())}

    def _chosen_value(self, values: torch.Tensor, action: torch.Tensor) -> torch.Tensor:
        """``Q(s, a)`` of the taken actions, ``[*B, 1]``."""
        if self.action_space == CATEGORICAL:
            return values.gather(-1, _categorical_index(action, values.dim() - 1))
        _check_one_hot(action, values.shape, "DQNLoss")
        return (values * action.to(values.dtype)).sum(-1, keepdim=True)

    @torch.no_grad()
    def _next_value(self, next_obs: list[torch.Tensor]) -> torch.Tensor:
        """``max_a' Q_target(s', a')``, or ``Q_target(s', argmax_a' Q_online(s', a'))`` for double DQN."""
        next_values = self.target_value_network.action_values(*next_obs)
        if self.double_dqn:
            # A separate no-grad call: cheaper than one call on [s; s'] whose backward would span both halves.
            best = self.value_network.greedy(self.value_network.action_values(*next_obs))
            return self.value_network.value_of(next_values, best)
        return self.value_network.max_value(next_values)

    def forward(self, batch: TensorDictBase) -> TensorDict:
        keys = self._tensor_keys
        weight = self._priority_weight(batch)
        reward, terminated = _reward_and_terminated(batch, keys)
        next_value = self._next_value([batch.get(next_key(k)) for k in self.obs_keys])
        target = self._value_target(batch, reward, terminated, next_value, self._discount(batch))

        values = self.value_network.action_values(*(batch.get(k) for k in self.obs_keys))
        pred = self._chosen_value(values, batch.get(keys.action))
        loss = self._distance(pred, target).squeeze(-1)
        batch.set(keys.priority, (pred.detach() - target).pow(2))
        return loss_output({"loss": self._reduce(loss, weight)})


class DistributionalDQNLoss(LossModule):
    """Distributional DQN (C51) objective, with the double-Q action choice.

    Args:
        value_network: a :class:`~rltrain.modules.qvalue.DistributionalQValueActor` (it holds the
            support). Its parameters are used as they are.
        gamma: the discount (required); a buffer, changed later with ``make_value_estimator(gamma=...)``.
        delay_value: keep a target copy of the network; ``False`` reads the target distribution
            from the online network, detached.
        priority_key: deprecated, must be ``None``: use ``set_keys(priority=...)``.
        reduction: ``"mean"`` (default), ``"sum"`` or ``"none"``.
        use_prioritized_weights: ``"auto"`` (use ``priority_weight`` if present), True or False.
    """

    @dataclasses.dataclass
    class _AcceptedKeys(TransitionKeys):
        action_value: NestedKey = "action_value"
        action: NestedKey = "action"
        steps_to_next_obs: NestedKey = "steps_to_next_obs"

    loss_groups = {"loss": "value"}

    def __init__(
        self,
        value_network: DistributionalQValueActor,
        gamma: float | torch.Tensor,
        *,
        delay_value: bool = True,
        priority_key: str | None = None,
        reduction: str | None = None,
        use_prioritized_weights: str | bool = "auto",
    ):
        super().__init__()
        if not isinstance(value_network, DistributionalQValueActor):
            raise TypeError("DistributionalDQNLoss needs a DistributionalQValueActor (it holds the support), got "
                            f"{type(value_network).__name__}")
        gamma = float(gamma)
        if not 0.0 <= gamma <= 1.0:
            raise ValueError(f"gamma must lie in [0, 1], got {gamma}")
        self._init_common(loss_function="l2", reduction=reduction, gamma=None, priority_key=priority_key,
                          use_prioritized_weights=use_prioritized_weights)
        self.gamma.fill_(gamma)
        check_support(value_network.support)
        support = value_network.support
        self.num_atoms = support.numel()
        self.v_min, self.v_max = float(support[0]), float(support[-1])
        self.delta_z = (self.v_max - self.v_min) / (self.num_atoms - 1)
        self.action_space = value_network.action_space
        self.delay_value = delay_value
        self.value_network = value_network
        self.obs_keys = list(value_network.in_keys)
        self.register_target("value_network", delay_value)

    def _group_members(self) -> dict[str, list[nn.Parameter]]:
        return {"value": list(self.value_network.parameters())}

    def _discount(self, batch: TensorDictBase) -> torch.Tensor:
        steps = batch.get(self._tensor_keys.steps_to_next_obs, None)
        return self.gamma if steps is None else self.gamma ** steps

    def _chosen_log_probs(self, log_probs: torch.Tensor, action: torch.Tensor) -> torch.Tensor:
        """``log p_i(s, a)`` of the taken actions: ``[B, N, nA] -> [B, N]``."""
        if self.action_space == CATEGORICAL:
            index = _categorical_index(action, log_probs.dim() - 2).unsqueeze(-2)
            return log_probs.gather(-1, index.expand(-1, self.num_atoms, 1)).squeeze(-1)
        _check_one_hot(action, (*log_probs.shape[:-2], log_probs.shape[-1]), "DistributionalDQNLoss")
        return (log_probs * action.unsqueeze(-2).to(log_probs.dtype)).sum(-1)

    @torch.no_grad()
    def _next_distribution(self, next_obs: list[torch.Tensor], terminated: torch.Tensor) -> torch.Tensor:
        """``p'``: the target network's distribution at ``(s', a*)``, ``a*`` chosen by the online network."""
        online = self.value_network.log_probs(*next_obs)
        best = self.value_network.expected_values(online).argmax(-1)
        target = self.target_value_network.log_probs(*next_obs) if self.delay_value else online
        index = best.view(-1, 1, 1).expand(-1, self.num_atoms, 1)
        probs = target.gather(-1, index).squeeze(-1).exp()
        # A terminated row projects every atom onto r, so any p' summing to 1 gives the same m; a
        # uniform one keeps a non-finite s' (e.g. a NaN observation after the end) out of the loss.
        return torch.where(terminated, 1.0 / self.num_atoms, probs)

    @torch.no_grad()
    def project(self, probs: torch.Tensor, reward: torch.Tensor, terminated: torch.Tensor,
                discount: float | torch.Tensor) -> torch.Tensor:
        """Project ``p'`` shifted to ``r + discount * (1 - terminated) * z`` back onto the support.

        ``probs [B, N]``, ``reward``/``terminated [B, 1]``, ``discount`` a scalar or ``[B, 1]``;
        returns ``m [B, N]``.
        """
        support = self.value_network.support
        shifted = reward + (~terminated).to(support.dtype) * discount * support
        torch._assert_async(torch.isfinite(shifted).all(), "DistributionalDQNLoss: non-finite target atoms "
                            "r + gamma * (1 - terminated) * z (check the reward and gamma)")
        # Clamping b to [0, N-1] is clamping Tz to [Vmin, Vmax], and also absorbs rounding in the division.
        b = ((shifted - self.v_min) / self.delta_z).clamp_(0, self.num_atoms - 1)
        lower, upper = b.floor().long(), b.ceil().long()
        # b on an atom (l == u) would get no mass from (u - b) and (b - l): move one index apart.
        lower = lower - ((lower == upper) & (upper > 0)).long()
        upper = upper + ((lower == upper) & (lower < self.num_atoms - 1)).long()
        m = torch.zeros_like(probs)
        m.scatter_add_(-1, lower, probs * (upper - b))
        m.scatter_add_(-1, upper, probs * (b - lower))
        return m

    def forward(self, batch: TensorDictBase) -> TensorDict:
        if batch.batch_dims != 1:
            raise RuntimeError(f"DistributionalDQNLoss expects a 1-D batch, got batch shape {tuple(batch.batch_size)}; "
                               "flatten it first (batch.reshape(-1))")
        keys = self._tensor_keys
        weight = self._priority_weight(batch)
        reward, terminated = _reward_and_terminated(batch, keys)
        next_probs = self._next_distribution([batch.get(next_key(k)) for k in self.obs_keys], terminated)
        m = self.project(next_probs, reward, terminated, self._discount(batch))

        log_probs = self.value_network.log_probs(*(batch.get(k) for k in self.obs_keys))
        loss = -(m * self._chosen_log_probs(log_probs, batch.get(keys.action))).sum(-1)
        batch.set(keys.priority, loss.detach().unsqueeze(-1))
        return loss_output({"loss": self._reduce(loss, weight)})
