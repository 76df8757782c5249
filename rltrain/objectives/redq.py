r"""Randomized Ensembled Double Q-learning, REDQ (Chen et al. 2021).

Notation: policy :math:`\pi_\theta`, critics :math:`Q_{\phi_k}` (k = 1..K, stacked), their targets
:math:`Q_{\bar\phi_k}`, :math:`sg` = stop-gradient, :math:`d` = the distance of ``loss_function``,
:math:`\mathcal{H}^*` = ``target_entropy`` (``"auto"``: :math:`-\dim A`). The temperature is read
through a clamp, ``alpha = exp(clamp(log_alpha, log min_alpha, log max_alpha))``, without gradient.

Each forward draws a fresh subset ``M`` of ``sub_sample_len`` critics (a sorted random permutation
prefix) and samples, jointly with their log-probabilities, ``a' ~ pi_theta(.|s')`` (without
gradient) and then ``a~ ~ pi_theta(.|s)`` (with gradient; only when the actor or temperature term is
computed). As in the authors' code (``policy_update_delay=20`` with 20 updates per env step), the
configs step the actor and the temperature once per env step, after that step's critic updates;
:meth:`REDQLoss.forward_terms` skips their work on the other updates.

**Critic**: only the subset's target critics are evaluated::

    y = r + gamma * (1 - terminated) * min_{k in M} [Q_{bar phi_k}(s', a') - alpha * log pi(a'|s')]
    loss_qvalue = R( mean_k d(Q_{phi_k}(s, a), y) ),  priority = max_k (Q_{phi_k}(s, a) - y)^2

(the mean over all K critics, where SAC sums).

**Actor**: the *average* of all K critics, not the minimum::

    loss_actor = R( mean_k [alpha * log pi(a~|s) - Q_{sg(phi_k)}(s, a~)] )

**Temperature**: on alpha itself (not log alpha, unlike SAC), through a straight-through clamp
(the value is clamped, the gradient is that of the raw ``log_alpha``), on the current and next
log-probabilities stacked, ``L = [log pi(a~|s), log pi(a'|s')]``::

    loss_alpha = R( mean_{2} -exp(log_alpha_st) * (sg(L) + H*) ),  entropy = -mean(L)

Each term's gradient reaches only its own group: actor -> ``actor``, critic -> ``qvalue``,
temperature -> ``alpha``. ``R`` is the reduction over the batch; per-sample losses are ``[B]``
(averaged over the critics / the two log-probabilities first), so ``"mean"`` equals the mean over
``[K, B]``. REDQ does not use priority weights.
"""

from __future__ import annotations

import dataclasses

import torch
from tensordict import TensorDict, TensorDictBase
from torch import nn

from rltrain.modules.actors import ProbabilisticActor, ValueOperator, default_log_prob_key
from rltrain.modules.ensemble import make_ensemble
from rltrain.objectives.common import (
    BOOTSTRAP_ESTIMATORS,
    LossModule, NestedKey, TemperatureMixin, critic_inputs, loss_output, next_key, resolve_target_entropy,
)


class REDQLoss(TemperatureMixin, LossModule):
    """REDQ objective: a large critic ensemble, a random subset of it for each target.

    Args:
        actor_network: a :class:`~rltrain.modules.ProbabilisticActor` (e.g. TanhNormal); its
            parameters are used as they are.
        qvalue_network: a ``ValueOperator`` writing ``"state_action_value"``, copied into a stacked
            ensemble of ``num_qvalue_nets`` independent members; or a list of such modules, stacked
            as given (``num_qvalue_nets`` is then the list's length).
        num_qvalue_nets: ensemble size K (at least 2).
        sub_sample_len: size of the random subset of target critics, in ``[1, K - 1]``.
        loss_function: ``"l1"``, ``"l2"`` or ``"smooth_l1"``.
        alpha_init: initial temperature.
        min_alpha, max_alpha: clamp bounds of the temperature (``None``: unbounded on that side).
        action_spec: action spec for ``target_entropy="auto"`` (default: the actor's spec).
        fixed_alpha: keep alpha at ``alpha_init`` (``log_alpha`` becomes a buffer).
        target_entropy: ``"auto"`` (= -dim A) or a number.
        delay_qvalue: keep target copies of the critics (else the targets are the detached critics).
        gSDE: must be False (rltrain has no gSDE exploration).
        gamma, priority_key: deprecated; use ``make_value_estimator(gamma=...)`` and
            ``set_keys(priority=...)``.
        separate_losses: accepted for API compatibility; the critics are always copies, so weights
            shared with the actor are trained by the actor loss only.
        reduction: ``"mean"`` (default), ``"sum"`` or ``"none"``.
        deactivate_vmap: evaluate a non-MLP critic member by member instead of with ``vmap``.
        scalar_output_mode: with ``reduction="none"``: ``None`` (warn) or ``"exclude"``.
    """

    supported_value_estimators = BOOTSTRAP_ESTIMATORS

    @dataclasses.dataclass
    class _AcceptedKeys:
        action: NestedKey = "action"
        value: NestedKey = "state_value"
        state_action_value: NestedKey = "state_action_value"
        log_prob: NestedKey = dataclasses.field(default_factory=default_log_prob_key)
        priority: NestedKey = "td_error"
        reward: NestedKey = "reward"
        done: NestedKey = "done"
        terminated: NestedKey = "terminated"

    loss_groups = {"loss_actor": "actor", "loss_qvalue": "qvalue", "loss_alpha": "alpha"}
    delay_actor = False

    def __init__(
        self,
        actor_network: ProbabilisticActor,
        qvalue_network: ValueOperator | list[ValueOperator],
        *,
        num_qvalue_nets: int = 10,
        sub_sample_len: int = 2,
        loss_function: str = "smooth_l1",
        alpha_init: float = 1.0,
        min_alpha: float | None = 0.1,
        max_alpha: float | None = 10.0,
        action_spec=None,
        fixed_alpha: bool = False,
        target_entropy: str | float = "auto",
        delay_qvalue: bool = True,
        gSDE: bool = False,
        gamma: float | None = None,
        priority_key: str | None = None,
        separate_losses: bool = False,
        reduction: str | None = None,
        deactivate_vmap: bool = False,
        scalar_output_mode: str | None = None,
    ):
        super().__init__()
        self._init_common(loss_function=loss_function, reduction=reduction, gamma=gamma,
                          priority_key=priority_key, use_prioritized_weights=False)
        if gSDE:
            raise ValueError("gSDE=True is not supported: rltrain has no generalized state-dependent exploration; "
                             "pass gSDE=False")
        if scalar_output_mode not in (None, "exclude"):
            raise ValueError(f"scalar_output_mode must be None or 'exclude', got {scalar_output_mode!r}")
        self.scalar_output_mode = scalar_output_mode
        self.separate_losses = separate_losses

        members = qvalue_network if isinstance(qvalue_network, (list, tuple)) else None
        num_members = len(members) if members else num_qvalue_nets
        if num_members < 2:
            raise ValueError(f"REDQ needs at least 2 critics (num_qvalue_nets), got {num_members}")
        if not 1 <= sub_sample_len < num_members:
            raise ValueError(f"sub_sample_len must be in [1, num_qvalue_nets - 1] = [1, {num_members - 1}], "
                             f"got {sub_sample_len}")
        self.sub_sample_len = sub_sample_len

        self.actor_network = actor_network
        self.obs_keys = list(actor_network.in_keys)
        reference = members[0] if members else qvalue_network
        self.qvalue_in_keys = list(reference.in_keys)
        self.qvalue_network = make_ensemble([m.module for m in members] if members else reference.module,
                                            None if members else num_members, use_vmap=not deactivate_vmap)
        self.num_qvalue_nets = self.qvalue_network.num_members
        self.register_target("qvalue_network", delay_qvalue)

        self._init_alpha(alpha_init, min_alpha, max_alpha, fixed_alpha)
        spec = action_spec if action_spec is not None else getattr(actor_network, "spec", None)
        self.register_buffer("target_entropy", torch.tensor(resolve_target_entropy(target_entropy, spec)))

    def _group_members(self) -> dict[str, list[nn.Parameter]]:
        return {
            "actor": list(self.actor_network.parameters()),
            "qvalue": list(self.qvalue_network.parameters()),
            "alpha": self._alpha_group(),
        }

    # ---- temperature ---------------------------------------------------------------------------
    def _clamped_log_alpha(self) -> torch.Tensor:
        """``log_alpha`` clamped into the bounds, straight-through: the gradient is the raw one's."""
        if self.min_log_alpha is None and self.max_log_alpha is None:
            return self.log_alpha
        clamped = self.log_alpha.detach().clamp(self.min_log_alpha, self.max_log_alpha)
        return self.log_alpha + (clamped - self.log_alpha.detach())

    # ---- helpers on plain tensors --------------------------------------------------------------
    def _qvalue_inputs(self, batch: TensorDictBase, action: torch.Tensor, next_state: bool) -> list[torch.Tensor]:
        return critic_inputs(batch, self.qvalue_in_keys, self._tensor_keys.action, action, next_state)

    def _sample_subset(self, device: torch.device) -> torch.Tensor:
        """A fresh random subset of ``sub_sample_len`` critic indices, sorted."""
        return torch.randperm(self.num_qvalue_nets, device=device)[: self.sub_sample_len].sort().values

    # ---- loss terms -----------------------------------------------------------------------------
    def forward(self, batch: TensorDictBase) -> TensorDict:
        return self.forward_terms(batch, frozenset(self.loss_groups))

    def forward_terms(self, batch: TensorDictBase, terms: frozenset[str]) -> TensorDict:
        """The critic term always; the actor and temperature terms (and their metrics) only if asked
        for. REDQ's authors step the actor and the temperature once per 20 critic updates; between
        those, the Trainer asks for ``loss_qvalue`` alone and the ten-critic actor pass is skipped."""
        keys = self._tensor_keys
        log_alpha = self._clamped_log_alpha()
        alpha = log_alpha.detach().exp()
        obs = [batch.get(k) for k in self.obs_keys]
        action = batch.get(keys.action)
        reward, terminated, discount = self._transition(batch)

        subset = self._sample_subset(action.device)
        with torch.no_grad():
            next_obs = [batch.get(next_key(k)) for k in self.obs_keys]
            next_action, next_log_prob = self.actor_network.distribution(*next_obs).rsample_and_log_prob()
            next_q = self.target_qvalue_network(*self._qvalue_inputs(batch, next_action, next_state=True),
                                                members=subset, detach=True).squeeze(-1)
            next_value = next_q.min(0).values - alpha * next_log_prob
            target = self._value_target(batch, reward, terminated, next_value, discount)

        pred = self.qvalue_network(*self._qvalue_inputs(batch, action, next_state=False)).squeeze(-1)
        loss_qvalue = self._distance(pred, target.expand_as(pred)).mean(0)
        priority = (pred.detach() - target).pow(2).max(0).values
        out: dict[str, torch.Tensor] = {"loss_qvalue": self._reduce(loss_qvalue)}
        if "loss_actor" in terms or "loss_alpha" in terms:
            out.update(self._policy_terms(batch, obs, alpha, log_alpha, next_log_prob, terms))
        out.update({"next.state_value": next_value, "target_value": target})
        batch.set(keys.priority, priority.unsqueeze(-1))
        return loss_output(out)

    def _policy_terms(self, batch, obs, alpha, log_alpha, next_log_prob, terms) -> dict[str, torch.Tensor]:
        """``loss_actor`` (all K critics, averaged) and ``loss_alpha``, from one action sample at s."""
        new_action, log_prob = self.actor_network.distribution(*obs).rsample_and_log_prob()
        out: dict[str, torch.Tensor] = {}
        if "loss_actor" in terms:
            q_actor = self.qvalue_network(*self._qvalue_inputs(batch, new_action, next_state=False),
                                          detach=True).squeeze(-1)
            out["loss_actor"] = self._reduce((alpha * log_prob - q_actor).mean(0))
            out["state_action_value_actor"] = q_actor.detach()
        log_prob_all = torch.stack([log_prob.detach(), next_log_prob])
        if "loss_alpha" in terms:
            out["loss_alpha"] = self._reduce((-log_alpha.exp() * (log_prob_all + self.target_entropy)).mean(0))
        if self._scalar_outputs_allowed():
            out["alpha"] = alpha
            out["entropy"] = -log_prob_all.mean()
        out["action_log_prob_actor"] = log_prob.detach()
        return out
