r"""Deep Deterministic Policy Gradient, DDPG (Lillicrap et al. 2015).

Notation: deterministic policy :math:`\mu_\theta` and its target :math:`\mu_{\bar\theta}` (the
detached online actor when ``delay_actor=False``); critic :math:`Q_\phi` and its target
:math:`Q_{\bar\phi}`; :math:`sg` = stop-gradient; ``d`` = the distance of ``loss_function``; ``R`` =
the reduction (``mean`` weighted by ``priority_weight`` when the batch has it).

**Critic**, bootstrapping from the target actor and target critic::

    y = r + gamma * (1 - terminated) * Q_{bar phi}(s', mu_{bar theta}(s'))     (no gradient)
    loss_value = R( d(Q_phi(s, a), y) ),   priority = (Q_phi(s, a) - y)^2

**Actor** (deterministic policy gradient; the critic's weights are held fixed)::

    loss_actor = R( -Q_{sg(phi)}(s, mu_theta(s)) )

Each term's gradient reaches only its own group: actor -> ``actor``, critic -> ``value``.
"""

from __future__ import annotations

import dataclasses

import torch
from tensordict import TensorDict, TensorDictBase
from torch import nn

from rltrain.modules.actors import Actor, ValueOperator, call_tensors
from rltrain.modules.ensemble import make_ensemble
from rltrain.objectives.common import BOOTSTRAP_ESTIMATORS, LossModule, NestedKey, TransitionKeys, loss_output, next_key


class DDPGLoss(LossModule):
    """DDPG objective: one critic, one deterministic actor, target networks.

    Args:
        actor_network: a deterministic :class:`~rltrain.modules.Actor` whose first output is the
            action (its parameters are used as they are: stepping the objective's optimizer
            updates the collection policy).
        value_network: a ``ValueOperator`` ``Q(s, a)`` reading the actor's action key. It is held
            as a one-member stacked ensemble (a copy starting from the given weights), which lets
            the actor loss read it with detached weights at no extra cost.
        loss_function: ``"l1"``, ``"l2"`` (default) or ``"smooth_l1"``. The reference page lists
            ``"smooth_l1"``; TorchRL's code, which rltrain follows, defaults to ``"l2"``.
        delay_actor: keep a target copy of the actor (default ``False``: the target actor is the
            online actor, read without gradient).
        delay_value: keep a target copy of the critic (default ``True``).
        gamma: deprecated, must be ``None`` (use ``make_value_estimator(gamma=...)``).
        separate_losses: accepted for API compatibility; the critic is always a copy, so weights
            shared with the actor are trained by the actor loss only.
        reduction: ``"mean"`` (default), ``"sum"`` or ``"none"``.
        use_prioritized_weights: ``"auto"`` (use ``priority_weight`` if present), True or False.

    Output: ``loss_actor``, ``loss_value`` and detached metadata ``td_error``, ``pred_value``
    (``Q_phi(s, a)``), ``target_value`` (``y``), all ``[*B]``, and the scalars ``pred_value_max``,
    ``target_value_max``. The priority ``(Q_phi(s, a) - y)^2`` is also written into the input
    batch under ``tensor_keys.priority``.
    """

    supported_value_estimators = BOOTSTRAP_ESTIMATORS

    @dataclasses.dataclass
    class _AcceptedKeys(TransitionKeys):
        state_action_value: NestedKey = "state_action_value"

    loss_groups = {"loss_actor": "actor", "loss_value": "value"}

    def __init__(
        self,
        actor_network: Actor,
        value_network: ValueOperator,
        *,
        loss_function: str = "l2",
        delay_actor: bool = False,
        delay_value: bool = True,
        gamma: float | None = None,
        separate_losses: bool = False,
        reduction: str | None = None,
        use_prioritized_weights: str | bool = "auto",
    ):
        super().__init__()
        self._init_common(loss_function=loss_function, reduction=reduction, gamma=gamma, priority_key=None,
                          use_prioritized_weights=use_prioritized_weights)
        self.separate_losses = separate_losses
        if not hasattr(actor_network, "out_keys"):
            raise TypeError(f"actor_network must be a TensorDict module such as rltrain.modules.Actor, got "
                            f"{type(actor_network).__name__}")
        if not isinstance(getattr(value_network, "module", None), nn.Module):
            raise TypeError(f"value_network must be a rltrain.modules.ValueOperator wrapping Q(s, a), got "
                            f"{type(value_network).__name__}")
        self.actor_network = actor_network
        self.obs_keys = list(actor_network.in_keys)
        self.action_key = actor_network.out_keys[0]
        self.value_in_keys = list(value_network.in_keys)
        if self.action_key not in self.value_in_keys:
            raise ValueError(f"the critic must read the actor's action {self.action_key!r}; its in_keys are "
                             f"{self.value_in_keys}")
        self.value_network = make_ensemble(value_network.module, 1)
        self.register_target("actor_network", delay_actor)
        self.register_target("value_network", delay_value)

    def _group_members(self) -> dict[str, list[nn.Parameter]]:
        return {
            "actor": list(self.actor_network.parameters()),
            "value": list(self.value_network.parameters()),
        }

    # ---- helpers on plain tensors --------------------------------------------------------------
    def _read_state(self, batch: TensorDictBase, next_state: bool) -> dict[NestedKey, torch.Tensor]:
        """The observation tensors the actor and the critic read, each read once."""
        keys = dict.fromkeys([*self.obs_keys, *self.value_in_keys])
        keys.pop(self.action_key, None)
        return {key: batch.get(next_key(key) if next_state else key) for key in keys}

    def _q(self, critic: nn.Module, state: dict[NestedKey, torch.Tensor], action: torch.Tensor,
           detach: bool = False) -> torch.Tensor:
        """``Q(s, a)`` of shape ``[*B]`` from a one-member stacked critic."""
        inputs = [action if key == self.action_key else state[key] for key in self.value_in_keys]
        return critic(*inputs, detach=detach)[0].squeeze(-1)

    def _act(self, actor: nn.Module, state: dict[NestedKey, torch.Tensor]) -> torch.Tensor:
        return call_tensors(actor, *(state[k] for k in self.obs_keys))[0]

    # ---- loss terms -----------------------------------------------------------------------------
    def forward(self, batch: TensorDictBase) -> TensorDict:
        keys = self._tensor_keys
        weight = self._priority_weight(batch)
        state = self._read_state(batch, next_state=False)
        reward, terminated, discount = self._transition(batch)

        with torch.no_grad():
            next_state = self._read_state(batch, next_state=True)
            next_action = self._act(self.target_actor_network, next_state)
            next_value = self._q(self.target_value_network, next_state, next_action, detach=True)
            target = self._value_target(batch, reward, terminated, next_value, discount)
        pred = self._q(self.value_network, state, batch.get(self.action_key))
        loss_value = self._distance(pred, target)
        pred = pred.detach()
        td_error = (pred - target).pow(2)

        q_actor = self._q(self.value_network, state, self._act(self.actor_network, state), detach=True)

        batch.set(keys.priority, td_error.unsqueeze(-1))
        return loss_output({
            "loss_actor": self._reduce(-q_actor, weight),
            "loss_value": self._reduce(loss_value, weight),
            "td_error": td_error,
            "pred_value": pred,
            "target_value": target,
            "pred_value_max": pred.max(),
            "target_value_max": target.max(),
        })
