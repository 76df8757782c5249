r"""Soft Actor-Critic (Haarnoja et al. 2018): version 2 (Q only) and version 1 (with a V network).

Notation: policy :math:`\pi_\theta`, critics :math:`Q_{\phi_k}` (k = 1..K, stacked), their targets
:math:`Q_{\bar\phi_k}`, temperature :math:`\alpha = \exp(\log\alpha)` (read without gradient,
clamped to ``[min_alpha, max_alpha]``), :math:`sg` = stop-gradient, :math:`d` = the distance of
``loss_function``, :math:`\mathcal{H}^*` = ``target_entropy`` (``"auto"``: :math:`-\dim A`).

**Actor** (both versions), with :math:`\tilde a, \log\pi(\tilde a|s)` drawn jointly (the
log-probability comes from the pre-tanh sample)::

    loss_actor = R( alpha * log pi(a~|s) - min_k Q_{sg(phi_k)}(s, a~) )

**Temperature**::

    loss_alpha = R( -log_alpha * (sg(log pi(a~|s)) + H*) )

**Critic, v2**: next actions from the *online* actor, targets from the target critics::

    a' ~ pi_theta(.|s'),  V' = min_k Q_{bar phi_k}(s', a') - alpha * log pi(a'|s')
    y = r + gamma * (1 - terminated) * V'          (no gradient)
    loss_qvalue = R( sum_k d(Q_{phi_k}(s, a), y) ),  priority = max_k |Q_{phi_k}(s, a) - y|

**Critic, v1**: the target bootstraps from the target value network, and the batch is split in K
equal chunks, critic k being trained on chunk k only::

    y = r + gamma * (1 - terminated) * V_{bar psi}(s')
    loss_qvalue = R( d(Q_{phi_k}(s_chunk_k, a_chunk_k), y_chunk_k) ),  priority = squared error

**Value, v1**, with :math:`\tilde a \sim \pi_{\bar\theta}` (the target actor; the detached online
actor when ``delay_actor=False``)::

    loss_value = R( d(V_psi(s), min_k Q_{bar phi_k}(s, a~) - alpha * log pi_{bar theta}(a~|s)) )

Each term's gradient reaches only its own group: actor -> ``actor``, critic -> ``qvalue``,
value -> ``value``, temperature -> ``alpha``. ``R`` is the reduction (``mean`` weighted by
``priority_weight`` when the batch has it).
"""

from __future__ import annotations

import dataclasses

import torch
from tensordict import TensorDict, TensorDictBase
from torch import nn

from rltrain.modules.actors import ProbabilisticActor, ValueOperator, call_tensors, default_log_prob_key
from rltrain.modules.ensemble import make_ensemble
from rltrain.objectives.common import (
    BOOTSTRAP_ESTIMATORS,
    LossModule, NestedKey, TemperatureMixin, TransitionKeys, critic_inputs, loss_output, next_key,
    resolve_target_entropy,
)


class SACLoss(TemperatureMixin, LossModule):
    """Soft Actor-Critic objective (v2 without ``value_network``, v1 with it).

    Args:
        actor_network: a :class:`~rltrain.modules.ProbabilisticActor` (its parameters are used as
            they are: stepping the objective's optimizer updates the collection policy).
        qvalue_network: a ``ValueOperator`` writing ``"state_action_value"``, copied into a stacked
            ensemble of ``num_qvalue_nets`` independent members; or a list of such modules, stacked
            as given.
        value_network: ``V(s)`` for SAC v1; ``None`` for v2.
        num_qvalue_nets: ensemble size K.
        loss_function: ``"l1"``, ``"l2"`` or ``"smooth_l1"``.
        alpha_init: initial temperature.
        min_alpha, max_alpha: clamp bounds of the temperature (``None`` = unbounded; with only
            ``min_alpha`` the upper bound is 1e9).
        action_spec: action spec for ``target_entropy="auto"`` (default: the actor's spec).
        fixed_alpha: keep alpha at ``alpha_init`` (``log_alpha`` becomes a buffer).
        target_entropy: ``"auto"`` (= -dim A) or a number.
        delay_actor, delay_qvalue, delay_value: keep target copies of these networks.
        separate_losses: accepted for API compatibility; the critics are always copies, so weights
            shared with the actor are trained by the actor loss only.
        reduction: ``"mean"`` (default), ``"sum"`` or ``"none"``.
        skip_done_states: run the actor only on next states that are not terminated (their next
            actions and log-probs are zero), so NaN next observations after a terminal state are
            harmless; rows are selected with ``terminated`` (``done`` when the batch has none), so a
            time-limit truncation still gets a real next action and its target bootstraps.
        deactivate_vmap: evaluate a non-MLP critic member by member instead of with ``vmap``.
        use_prioritized_weights: ``"auto"`` (use ``priority_weight`` if present), True or False.
        scalar_output_mode: with ``reduction="none"``: ``None`` (warn) or ``"exclude"``.
    """

    supported_value_estimators = BOOTSTRAP_ESTIMATORS

    @dataclasses.dataclass
    class _AcceptedKeys(TransitionKeys):
        action: NestedKey = "action"
        value: NestedKey = "state_value"
        state_action_value: NestedKey = "state_action_value"
        log_prob: NestedKey = dataclasses.field(default_factory=default_log_prob_key)

    def __init__(
        self,
        actor_network: ProbabilisticActor,
        qvalue_network: ValueOperator | list[ValueOperator],
        value_network: ValueOperator | None = None,
        *,
        num_qvalue_nets: int = 2,
        loss_function: str = "smooth_l1",
        alpha_init: float = 1.0,
        min_alpha: float | None = None,
        max_alpha: float | None = None,
        action_spec=None,
        fixed_alpha: bool = False,
        target_entropy: str | float = "auto",
        delay_actor: bool = False,
        delay_qvalue: bool = True,
        delay_value: bool = True,
        gamma: float | None = None,
        priority_key: str | None = None,
        separate_losses: bool = False,
        reduction: str | None = None,
        skip_done_states: bool = False,
        deactivate_vmap: bool = False,
        use_prioritized_weights: str | bool = "auto",
        scalar_output_mode: str | None = None,
    ):
        super().__init__()
        self._init_common(loss_function=loss_function, reduction=reduction, gamma=gamma,
                          priority_key=priority_key, use_prioritized_weights=use_prioritized_weights)
        self.version = 1 if value_network is not None else 2
        self.skip_done_states = skip_done_states
        self.separate_losses = separate_losses
        self.scalar_output_mode = scalar_output_mode

        self.actor_network = actor_network
        self.obs_keys = list(actor_network.in_keys)
        members = qvalue_network if isinstance(qvalue_network, (list, tuple)) else None
        reference = members[0] if members else qvalue_network
        self.qvalue_in_keys = list(reference.in_keys)
        self.qvalue_network = make_ensemble(
            [m.module for m in members] if members else reference.module,
            None if members else num_qvalue_nets,
            use_vmap=not deactivate_vmap,
        )
        self.num_qvalue_nets = self.qvalue_network.num_members
        self.value_network = value_network
        self.register_target("actor_network", delay_actor)
        self.register_target("qvalue_network", delay_qvalue)
        if value_network is not None:
            self.register_target("value_network", delay_value)

        self._init_alpha(alpha_init, min_alpha, max_alpha, fixed_alpha)
        spec = action_spec if action_spec is not None else getattr(actor_network, "spec", None)
        self.register_buffer("target_entropy", torch.tensor(resolve_target_entropy(target_entropy, spec)))

    @property
    def loss_groups(self) -> dict[str, str]:
        groups = {"loss_actor": "actor", "loss_qvalue": "qvalue", "loss_alpha": "alpha"}
        if self.version == 1:
            groups["loss_value"] = "value"
        return groups

    def _group_members(self) -> dict[str, list[nn.Parameter]]:
        groups = {
            "actor": list(self.actor_network.parameters()),
            "qvalue": list(self.qvalue_network.parameters()),
            "alpha": self._alpha_group(),
        }
        if self.version == 1:
            groups["value"] = list(self.value_network.parameters())
        return groups

    # ---- helpers on plain tensors --------------------------------------------------------------
    def _qvalue_inputs(self, batch: TensorDictBase, action: torch.Tensor, next_state: bool) -> list[torch.Tensor]:
        return critic_inputs(batch, self.qvalue_in_keys, self._tensor_keys.action, action, next_state)

    def _sample_next_actions(self, next_obs: list[torch.Tensor], skipped: torch.Tensor | None):
        """``a', log pi(a'|s')`` from the online actor; ``skipped`` rows (terminated) get zeros."""
        if skipped is None:
            return self.actor_network.distribution(*next_obs).rsample_and_log_prob()
        keep = ~skipped.bool()
        action, log_prob = self.actor_network.distribution(*(x[keep] for x in next_obs)).rsample_and_log_prob()
        full_action = action.new_zeros(*keep.shape, action.shape[-1])
        full_log_prob = log_prob.new_zeros(keep.shape)
        full_action[keep], full_log_prob[keep] = action, log_prob
        return full_action, full_log_prob

    # ---- loss terms -----------------------------------------------------------------------------
    def forward(self, batch: TensorDictBase) -> TensorDict:
        keys = self._tensor_keys
        alpha = self._alpha
        weight = self._priority_weight(batch)
        obs = [batch.get(k) for k in self.obs_keys]
        reward, terminated, discount = self._transition(batch)

        out: dict[str, torch.Tensor] = {}
        if self.version == 2:
            out["loss_qvalue"], priority = self._qvalue_loss_v2(batch, alpha, reward, terminated, discount, weight)
        else:
            out["loss_qvalue"], priority = self._qvalue_loss_v1(batch, reward, terminated, discount, weight)
            out["loss_value"] = self._value_loss_v1(batch, obs, alpha, weight)

        action, log_prob = self.actor_network.distribution(*obs).rsample_and_log_prob()
        q_actor = self.qvalue_network(*self._qvalue_inputs(batch, action, next_state=False), detach=True)
        out["loss_actor"] = self._reduce(alpha * log_prob - q_actor.min(0).values.squeeze(-1), weight)
        out["loss_alpha"] = self._reduce(-self.log_alpha * (log_prob.detach() + self.target_entropy), weight)
        if self._scalar_outputs_allowed():
            out["alpha"] = alpha
            out["entropy"] = -log_prob.detach().mean()
        batch.set(keys.priority, priority.detach().unsqueeze(-1))
        return loss_output(out)

    def _qvalue_loss_v2(self, batch, alpha, reward, terminated, discount, weight):
        with torch.no_grad():
            next_obs = [batch.get(next_key(k)) for k in self.obs_keys]
            # terminated (done when the batch has none): a truncated row still bootstraps from s'
            skipped = terminated if self.skip_done_states else None
            next_action, next_log_prob = self._sample_next_actions(next_obs, skipped)
            next_q = self.target_qvalue_network(*self._qvalue_inputs(batch, next_action, next_state=True),
                                                detach=True)
            next_value = next_q.min(0).values.squeeze(-1) - alpha * next_log_prob
            target = self._value_target(batch, reward, terminated, next_value, discount)
        pred = self.qvalue_network(*self._qvalue_inputs(batch, batch.get(self._tensor_keys.action), False))
        pred = pred.squeeze(-1)
        loss = self._distance(pred, target.expand_as(pred)).sum(0)
        priority = (pred.detach() - target).abs().max(0).values
        return self._reduce(loss, weight), priority

    def _qvalue_loss_v1(self, batch, reward, terminated, discount, weight):
        k = self.num_qvalue_nets
        batch_size = reward.shape[0]
        if batch_size % k:
            raise RuntimeError(f"SAC v1 splits the batch among the {k} critics: batch size {batch_size} "
                               f"is not divisible by {k}")
        with torch.no_grad():
            next_obs = [batch.get(next_key(key)) for key in self.value_network.in_keys]
            next_value = call_tensors(self.target_value_network, *next_obs)[0].squeeze(-1)
            target = self._value_target(batch, reward, terminated, next_value, discount)
        inputs = [x.reshape(k, batch_size // k, *x.shape[1:])
                  for x in self._qvalue_inputs(batch, batch.get(self._tensor_keys.action), False)]
        pred = self.qvalue_network(*inputs, per_member=True).reshape(batch_size)
        loss = self._distance(pred, target)
        return self._reduce(loss, weight), (pred.detach() - target).pow(2)

    def _value_loss_v1(self, batch, obs, alpha, weight):
        with torch.no_grad():
            action, log_prob = self.target_actor_network.distribution(*obs).rsample_and_log_prob()
            q = self.target_qvalue_network(*self._qvalue_inputs(batch, action, next_state=False), detach=True)
            target = q.min(0).values.squeeze(-1) - alpha * log_prob
        value_obs = [batch.get(key) for key in self.value_network.in_keys]
        pred = call_tensors(self.value_network, *value_obs)[0].squeeze(-1)
        return self._reduce(self._distance(pred, target), weight)
