r"""Twin Delayed Deep Deterministic policy gradient, TD3 (Fujimoto et al. 2018).

Notation: deterministic policy :math:`\mu_\theta` and its target :math:`\mu_{\bar\theta}`; critics
:math:`Q_{\phi_k}` (k = 1..K, stacked) and their targets :math:`Q_{\bar\phi_k}`; the action box
``[low, high]`` with half range ``h = (high - low) / 2`` (per action dimension); :math:`sg` =
stop-gradient; ``d`` = the distance of ``loss_function``; ``R`` = the reduction (``mean`` weighted
by ``priority_weight`` when the batch has it).

**Target policy smoothing.** The noise is expressed in units of the half range, so
``policy_noise=0.2, noise_clip=0.5`` mean the same thing for every box (for ``[-1, 1]`` it is the
paper's absolute noise; TorchRL adds the noise in absolute action units instead)::

    eps = clip(N(0, I) * policy_noise, -noise_clip, noise_clip) * h
    a'  = clip(mu_{bar theta}(s') + eps, low, high)

**Critic** (clipped double Q, every critic regressed on the same target)::

    y = r + gamma * (1 - terminated) * min_k Q_{bar phi_k}(s', a')        (no gradient)
    loss_qvalue = R( sum_k d(Q_{phi_k}(s, a), y) ),   priority = max_k (Q_{phi_k}(s, a) - y)^2

**Actor** (deterministic policy gradient through the first critic only; the other critics are
evaluated at the same action without gradient, for the ``state_action_value_actor`` metadata)::

    loss_actor = R( -Q_{sg(phi_1)}(s, mu_theta(s)) )

The *delayed* policy update of TD3 is not part of the loss: the Trainer steps the ``actor`` group
only every ``policy_update_delay``-th update (a group update period in the configuration).

Each term's gradient reaches only its own group: actor -> ``actor``, critic -> ``qvalue``.
"""

from __future__ import annotations

import dataclasses

import torch
from tensordict import TensorDict, TensorDictBase
from torch import nn

from rltrain.modules.actors import Actor, ValueOperator, call_tensors
from rltrain.modules.ensemble import make_ensemble
from rltrain.modules.specs import Bounded
from rltrain.objectives.common import BOOTSTRAP_ESTIMATORS, LossModule, NestedKey, TransitionKeys, loss_output, next_key


def action_bounds(action_spec: Bounded | None, bounds) -> tuple[torch.Tensor, torch.Tensor]:
    """``(low, high)`` from exactly one of a :class:`Bounded` spec or a ``(low, high)`` pair."""
    if (action_spec is None) == (bounds is None):
        raise ValueError("TD3Loss needs exactly one of action_spec= (a rltrain.modules.Bounded spec) or "
                         "bounds=(low, high), to clip the noisy target actions")
    if action_spec is not None:
        if not isinstance(action_spec, Bounded):
            raise TypeError(f"action_spec must be a rltrain.modules.Bounded spec, got {type(action_spec).__name__}; "
                            "or pass bounds=(low, high)")
        low, high = action_spec.low, action_spec.high
    else:
        if not isinstance(bounds, (tuple, list)) or len(bounds) != 2:
            raise ValueError(f"bounds must be a pair (low, high) of numbers or tensors, got {bounds!r}")
        low, high = bounds
    dtype = torch.get_default_dtype()
    low, high = torch.as_tensor(low, dtype=dtype), torch.as_tensor(high, dtype=dtype)
    if (low > high).any():
        raise ValueError(f"action bounds need low <= high, got low={low.tolist()} high={high.tolist()}")
    if not (torch.isfinite(low).all() and torch.isfinite(high).all()):
        raise ValueError("TD3's target noise is scaled by the action half range, so the bounds must be finite, "
                         f"got low={low.tolist()} high={high.tolist()}")
    low, high = torch.broadcast_tensors(low, high)
    return low.clone(), high.clone()


class TD3Loss(LossModule):
    """TD3 objective: clipped double-Q critics, target policy smoothing, deterministic actor.

    Args:
        actor_network: a deterministic :class:`~rltrain.modules.Actor` whose first output is the
            action (its parameters are used as they are: stepping the objective's optimizer
            updates the collection policy).
        qvalue_network: a ``ValueOperator`` ``Q(s, a)``, copied into a stacked ensemble of
            ``num_qvalue_nets`` independent members; or a list of such modules, stacked as given.
        action_spec: a :class:`~rltrain.modules.Bounded` spec of the actions (exclusive with
            ``bounds``).
        bounds: ``(low, high)`` numbers or tensors (exclusive with ``action_spec``).
        num_qvalue_nets: ensemble size K (>= 1).
        policy_noise: standard deviation of the target-action noise, in units of the action half
            range ``(high - low) / 2``.
        noise_clip: the noise is clipped to ``[-noise_clip, noise_clip]``, in the same units.
        loss_function: ``"l1"``, ``"l2"`` or ``"smooth_l1"``.
        delay_actor, delay_qvalue: keep target copies of the actor / critics (an updater moves
            them); ``False`` makes the target an alias of the online network.
        gamma, priority_key: deprecated, must be ``None`` (use ``make_value_estimator(gamma=...)``
            and ``set_keys(priority=...)``).
        separate_losses: accepted for API compatibility; the critics are always copies, so weights
            shared with the actor are trained by the actor loss only.
        reduction: ``"mean"`` (default), ``"sum"`` or ``"none"``.
        deactivate_vmap: evaluate a non-MLP critic member by member instead of with ``vmap``.
        use_prioritized_weights: ``"auto"`` (use ``priority_weight`` if present), True or False.

    Output: ``loss_actor``, ``loss_qvalue`` and detached metadata ``pred_value`` ``[K, *B]``
    (``Q_{phi_k}(s, a)``), ``state_action_value_actor`` ``[K, *B]`` (every critic at the actor's
    action; the actor trains on the first only, the others are evaluated without gradient),
    ``next_state_value`` ``[*B]``
    (``min_k Q_{bar phi_k}(s', a')``) and ``target_value`` ``[*B]`` (``y``). The priority
    ``max_k (Q_k - y)^2`` is written into the input batch under ``tensor_keys.priority``.
    """

    supported_value_estimators = BOOTSTRAP_ESTIMATORS

    @dataclasses.dataclass
    class _AcceptedKeys(TransitionKeys):
        action: NestedKey = "action"
        state_action_value: NestedKey = "state_action_value"

    loss_groups = {"loss_actor": "actor", "loss_qvalue": "qvalue"}

    def __init__(
        self,
        actor_network: Actor,
        qvalue_network: ValueOperator | list[ValueOperator],
        *,
        action_spec: Bounded | None = None,
        bounds: tuple | None = None,
        num_qvalue_nets: int = 2,
        policy_noise: float = 0.2,
        noise_clip: float = 0.5,
        loss_function: str = "smooth_l1",
        delay_actor: bool = True,
        delay_qvalue: bool = True,
        gamma: float | None = None,
        priority_key: str | None = None,
        separate_losses: bool = False,
        reduction: str | None = None,
        deactivate_vmap: bool = False,
        use_prioritized_weights: str | bool = "auto",
    ):
        super().__init__()
        self._init_common(loss_function=loss_function, reduction=reduction, gamma=gamma,
                          priority_key=priority_key, use_prioritized_weights=use_prioritized_weights)
        if not isinstance(num_qvalue_nets, int) or num_qvalue_nets < 1:
            raise ValueError(f"num_qvalue_nets must be a positive integer, got {num_qvalue_nets!r}")
        if policy_noise < 0 or noise_clip < 0:
            raise ValueError(f"policy_noise and noise_clip must be >= 0, got {policy_noise} and {noise_clip}")
        self.policy_noise = float(policy_noise)
        self.noise_clip = float(noise_clip)
        self.separate_losses = separate_losses

        low, high = action_bounds(action_spec, bounds)
        self.register_buffer("min_action", low)
        self.register_buffer("max_action", high)
        self.register_buffer("action_half_range", (high - low) / 2)

        self.actor_network = actor_network
        self.obs_keys = list(actor_network.in_keys)
        members = list(qvalue_network) if isinstance(qvalue_network, (list, tuple)) else None
        reference = members[0] if members else qvalue_network
        if not all(isinstance(getattr(m, "module", None), nn.Module) for m in (members or [reference])):
            raise TypeError("qvalue_network must be a rltrain.modules.ValueOperator wrapping Q(s, a), or a list "
                            f"of them; got {type(qvalue_network).__name__}")
        self.qvalue_in_keys = list(reference.in_keys)
        if self._tensor_keys.action not in self.qvalue_in_keys:
            raise ValueError(f"the critic must read the action {self._tensor_keys.action!r}; its in_keys are "
                             f"{self.qvalue_in_keys}")
        self.qvalue_network = make_ensemble(
            [m.module for m in members] if members else reference.module,
            None if members else num_qvalue_nets,
            use_vmap=not deactivate_vmap,
        )
        self.num_qvalue_nets = self.qvalue_network.num_members
        self.register_target("actor_network", delay_actor)
        self.register_target("qvalue_network", delay_qvalue)

    def _group_members(self) -> dict[str, list[nn.Parameter]]:
        return {
            "actor": list(self.actor_network.parameters()),
            "qvalue": list(self.qvalue_network.parameters()),
        }

    # ---- helpers on plain tensors --------------------------------------------------------------
    def _qvalue_inputs(self, state: dict[NestedKey, torch.Tensor], action: torch.Tensor) -> list[torch.Tensor]:
        action_key = self._tensor_keys.action
        return [action if key == action_key else state[key] for key in self.qvalue_in_keys]

    def _read_state(self, batch: TensorDictBase, next_state: bool) -> dict[NestedKey, torch.Tensor]:
        """The observation tensors the actor and the critic read, each read once."""
        keys = dict.fromkeys([*self.obs_keys, *self.qvalue_in_keys])
        keys.pop(self._tensor_keys.action, None)
        return {key: batch.get(next_key(key) if next_state else key) for key in keys}

    def smoothed_target_action(self, *next_obs: torch.Tensor) -> torch.Tensor:
        """``a' = clip(mu_{bar theta}(s') + eps, low, high)``, eps in units of the half range."""
        with torch.no_grad():
            action = call_tensors(self.target_actor_network, *next_obs)[0]
            noise = torch.randn_like(action).mul_(self.policy_noise).clamp_(-self.noise_clip, self.noise_clip)
            return (action + noise * self.action_half_range).clamp_(self.min_action, self.max_action)

    # ---- loss terms -----------------------------------------------------------------------------
    def forward(self, batch: TensorDictBase) -> TensorDict:
        return self.forward_terms(batch, frozenset(self.loss_groups))

    def forward_terms(self, batch: TensorDictBase, terms: frozenset[str]) -> TensorDict:
        """The critic terms always; the actor term (and its metadata) only if ``loss_actor`` is asked
        for, so a Trainer that steps the actor every ``policy_delay`` updates skips its work between."""
        keys = self._tensor_keys
        weight = self._priority_weight(batch)
        state = self._read_state(batch, next_state=False)
        reward, terminated, discount = self._transition(batch)

        with torch.no_grad():
            next_state = self._read_state(batch, next_state=True)
            next_action = self.smoothed_target_action(*(next_state[k] for k in self.obs_keys))
            next_q = self.target_qvalue_network(*self._qvalue_inputs(next_state, next_action), detach=True)
            next_value = next_q.min(0).values.squeeze(-1)
            target = self._value_target(batch, reward, terminated, next_value, discount)
        pred = self.qvalue_network(*self._qvalue_inputs(state, batch.get(keys.action))).squeeze(-1)
        loss_qvalue = self._distance(pred, target.expand_as(pred)).sum(0)
        pred = pred.detach()
        priority = (pred - target).pow(2).max(0).values
        batch.set(keys.priority, priority.unsqueeze(-1))
        out = {
            "loss_qvalue": self._reduce(loss_qvalue, weight),
            "pred_value": pred,
            "next_state_value": next_value,
            "target_value": target,
        }
        if "loss_actor" in terms:
            action = call_tensors(self.actor_network, *(state[k] for k in self.obs_keys))[0]
            q_actor = self.qvalue_network(*self._qvalue_inputs(state, action), detach=True, members=slice(0, 1))
            q_actor = q_actor.squeeze(-1)
            out["loss_actor"] = self._reduce(-q_actor[0], weight)
            out["state_action_value_actor"] = self._all_critics_at(state, action.detach(), q_actor.detach())
        return loss_output(out)

    @torch.no_grad()
    def _all_critics_at(self, state: dict[NestedKey, torch.Tensor], action: torch.Tensor,
                        first: torch.Tensor) -> torch.Tensor:
        """``Q_{phi_k}(s, mu(s))`` for every critic, ``[K, *B]``: the first is the actor loss's,
        the others are evaluated here, without gradient (metadata only)."""
        if self.num_qvalue_nets == 1:
            return first
        others = self.qvalue_network(*self._qvalue_inputs(state, action), detach=True,
                                     members=slice(1, self.num_qvalue_nets)).squeeze(-1)
        return torch.cat([first, others])
