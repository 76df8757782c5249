r"""CrossQ (Bhatt et al. 2024): SAC without target networks, with batch-renormalised critics.

Notation: policy :math:`\pi_\theta`, critics :math:`Q_{\phi_k}` (k = 1..K, stacked, with Batch
Renormalization layers, see :mod:`rltrain.modules.batchrenorm`), temperature
:math:`\alpha = \exp(\log\alpha)` (read without gradient, clamped to ``[min_alpha, max_alpha]``),
:math:`sg` = stop-gradient, :math:`d` = the distance of ``loss_function``, :math:`\mathcal{H}^*` =
``target_entropy`` (``"auto"``: :math:`-\dim A`).

**Critic**: the next action comes from the online actor without gradient. Current and next
state-action pairs go through the critics in ONE forward, concatenated along the batch (2B rows),
with batch statistics (train mode), so each normalization layer sees both distributions. That joint
forward is the CrossQ trick that replaces target networks::

    a', log pi(a'|s') ~ pi_theta(.|s')                                     (no gradient)
    [Q_k(s, a); Q_k(s', a')] = Q_{phi_k}([s, a; s', a'])                    (train mode, 2B rows)
    y = r + gamma * (1 - terminated) * sg(min_k Q_k(s', a') - alpha * log pi(a'|s'))
    loss_qvalue = R( sum_k d(Q_k(s, a), y) ),  priority = td_error = max_k |Q_k(s, a) - y|

The next half only reaches the critic gradient through the normalization statistics, never
through ``y``.

**Actor**: the critics with their running statistics (eval mode) and detached weights, the
minimum over the ensemble, ``a~`` drawn jointly with its log-probability::

    loss_actor = R( alpha * log pi(a~|s) - min_k Q_{sg(phi_k)}(s, a~) )

**Temperature** (trained, unlike TorchRL's sota script, whose update never backpropagates it)::

    loss_alpha = R( -log_alpha * (sg(log pi(a~|s)) + H*) ),  entropy = -mean(log pi(a~|s))

Each term's gradient reaches only its own group: actor -> ``actor``, critic -> ``qvalue``,
temperature -> ``alpha``. There are no target networks, so no updater applies
(``target_pairs()`` raises). ``R`` is the reduction over the batch; CrossQ does not use priority
weights.
"""

from __future__ import annotations

import dataclasses
import math

import torch
from tensordict import TensorDict, TensorDictBase
from torch import nn

from rltrain.modules.actors import ProbabilisticActor, ValueOperator
from rltrain.modules.batchrenorm import StackedBRNMLP
from rltrain.modules.ensemble import fresh_copies
from rltrain.objectives.common import (
    BOOTSTRAP_ESTIMATORS,
    LossModule, NestedKey, TemperatureMixin, critic_inputs, loss_output, next_key, resolve_target_entropy,
)


class CrossQLoss(TemperatureMixin, LossModule):
    """CrossQ objective: joint current/next critic forward through batch renormalization, no targets.

    The critic is stacked into a :class:`~rltrain.modules.batchrenorm.StackedBRNMLP`, so it must be
    a ``ValueOperator`` (or list of them) whose module is an ``nn.Sequential``,
    :class:`~rltrain.modules.MLP` or :class:`~rltrain.modules.batchrenorm.BRNMLP` made of Linear
    layers, :class:`~rltrain.modules.batchrenorm.BatchRenorm1d` (or affine ``nn.BatchNorm1d``)
    layers and parameter-free activations; anything else raises a TypeError. The CrossQ critic is
    ``BRNMLP(obs_dim + act_dim, 1, (2048, 2048))``.

    Args:
        actor_network: a :class:`~rltrain.modules.ProbabilisticActor` (its parameters are used as
            they are). An actor with its own normalization layers runs in the mode the caller sets.
        qvalue_network: the critic (see above), copied into ``num_qvalue_nets`` independent members
            (member 0 keeps its weights); or a list of critics, stacked as given.
        num_qvalue_nets: ensemble size K.
        loss_function: ``"l1"``, ``"l2"`` or ``"smooth_l1"``.
        alpha_init: initial temperature.
        min_alpha, max_alpha: clamp bounds of the temperature (``None`` = unbounded; with only
            ``min_alpha`` the upper bound is 1e9).
        action_spec: action spec for ``target_entropy="auto"`` (default: the actor's spec; without
            any, -dim A is read from the first batch's actions).
        fixed_alpha: keep alpha at ``alpha_init`` (``log_alpha`` becomes a buffer).
        target_entropy: ``"auto"`` (= -dim A) or a number.
        priority_key: deprecated; use ``set_keys(priority=...)``.
        separate_losses: accepted for API compatibility; the critics are always copies, so weights
            shared with the actor are trained by the actor loss only.
        reduction: ``"mean"`` (default), ``"sum"`` or ``"none"``.
        deactivate_vmap: accepted for API compatibility; the stacked critic uses batched matmuls,
            not ``vmap``.
        scalar_output_mode: with ``reduction="none"``: ``None`` (warn) or ``"exclude"``.
    """

    supported_value_estimators = BOOTSTRAP_ESTIMATORS

    @dataclasses.dataclass
    class _AcceptedKeys:
        action: NestedKey = "action"
        state_action_value: NestedKey = "state_action_value"
        priority: NestedKey = "td_error"
        reward: NestedKey = "reward"
        done: NestedKey = "done"
        terminated: NestedKey = "terminated"
        log_prob: NestedKey = "_log_prob"

    loss_groups = {"loss_actor": "actor", "loss_qvalue": "qvalue", "loss_alpha": "alpha"}

    def __init__(
        self,
        actor_network: ProbabilisticActor,
        qvalue_network: ValueOperator | list[ValueOperator],
        *,
        num_qvalue_nets: int = 2,
        loss_function: str = "smooth_l1",
        alpha_init: float = 1.0,
        min_alpha: float | None = None,
        max_alpha: float | None = None,
        action_spec=None,
        fixed_alpha: bool = False,
        target_entropy: str | float = "auto",
        priority_key: str | None = None,
        separate_losses: bool = False,
        reduction: str | None = None,
        deactivate_vmap: bool = False,
        scalar_output_mode: str | None = None,
    ):
        super().__init__()
        self._init_common(loss_function=loss_function, reduction=reduction, gamma=None,
                          priority_key=priority_key, use_prioritized_weights=False)
        if scalar_output_mode not in (None, "exclude"):
            raise ValueError(f"scalar_output_mode must be None or 'exclude', got {scalar_output_mode!r}")
        self.scalar_output_mode = scalar_output_mode
        self.separate_losses = separate_losses

        self.actor_network = actor_network
        self.obs_keys = list(actor_network.in_keys)
        members = qvalue_network if isinstance(qvalue_network, (list, tuple)) else None
        if not members and num_qvalue_nets < 1:
            raise ValueError(f"num_qvalue_nets must be >= 1, got {num_qvalue_nets}")
        reference = members[0] if members else qvalue_network
        if not hasattr(reference, "module") or not hasattr(reference, "in_keys"):
            raise TypeError("qvalue_network must be a ValueOperator (or a list of them), "
                            f"got {type(reference).__name__}")
        self.qvalue_in_keys = list(reference.in_keys)
        modules = [m.module for m in members] if members else fresh_copies(reference.module, num_qvalue_nets)
        try:
            self.qvalue_network = StackedBRNMLP(modules)
        except TypeError as err:
            raise TypeError(
                f"CrossQLoss: {err}. CrossQ's critic must be a stack of Linear, BatchRenorm1d (or affine "
                "BatchNorm1d) layers and parameter-free activations -- an nn.Sequential, rltrain.modules.MLP or "
                "rltrain.modules.BRNMLP inside a ValueOperator -- because the K critics are stacked into batched "
                "matmuls whose normalization layers see the current and next state-action rows together (that "
                "shared batch statistic replaces target networks). A custom module (e.g. a QNet with its own "
                "forward) cannot be stacked that way: build the critic as BRNMLP(obs_dim + act_dim, 1, (2048, "
                "2048)) wrapped in ValueOperator(..., in_keys=['observation', 'action'])") from None
        self.num_qvalue_nets = self.qvalue_network.num_members

        self._init_alpha(alpha_init, min_alpha, max_alpha, fixed_alpha)
        spec = action_spec if action_spec is not None else getattr(actor_network, "spec", None)
        # "auto" without a spec: -dim A is read from the first batch (TorchRL's lazy, fault-tolerant init)
        self._target_entropy_from_batch = target_entropy == "auto" and spec is None
        value = float("nan") if self._target_entropy_from_batch else resolve_target_entropy(target_entropy, spec)
        self.register_buffer("target_entropy", torch.tensor(value))

    def _group_members(self) -> dict[str, list[nn.Parameter]]:
        return {
            "actor": list(self.actor_network.parameters()),
            "qvalue": list(self.qvalue_network.parameters()),
            "alpha": self._alpha_group(),
        }

    # ---- temperature ---------------------------------------------------------------------------
    # ---- helpers on plain tensors --------------------------------------------------------------
    def _qvalue_inputs(self, batch: TensorDictBase, action: torch.Tensor, next_state: bool) -> list[torch.Tensor]:
        return critic_inputs(batch, self.qvalue_in_keys, self._tensor_keys.action, action, next_state)

    # ---- loss terms -----------------------------------------------------------------------------
    def forward(self, batch: TensorDictBase) -> TensorDict:
        keys = self._tensor_keys
        alpha = self._alpha
        obs = [batch.get(k) for k in self.obs_keys]
        action = batch.get(keys.action)
        if self._target_entropy_from_batch:
            self.target_entropy.fill_(-float(math.prod(action.shape[batch.batch_dims:])))
            self._target_entropy_from_batch = False
        reward, terminated, discount = self._transition(batch)

        loss_qvalue, td_error = self._qvalue_loss(batch, action, alpha, reward, terminated, discount)

        new_action, log_prob = self.actor_network.distribution(*obs).rsample_and_log_prob()
        q_actor = self.qvalue_network(*self._qvalue_inputs(batch, new_action, next_state=False),
                                      detach=True, batch_stats=False)
        log_prob_detached = log_prob.detach()
        out: dict[str, torch.Tensor] = {
            "loss_actor": self._reduce(alpha * log_prob - q_actor.min(0).values.squeeze(-1)),
            "loss_qvalue": self._reduce(loss_qvalue),
            "loss_alpha": self._reduce(-self.log_alpha * (log_prob_detached + self.target_entropy)),
        }
        if self._scalar_outputs_allowed():
            out["alpha"] = alpha
            out["entropy"] = -log_prob_detached.mean()
        out["log_prob"] = log_prob_detached
        out["td_error"] = td_error
        batch.set(keys.priority, td_error.unsqueeze(-1))
        return loss_output(out)

    def _qvalue_loss(self, batch, action, alpha, reward, terminated, discount):
        """Critic loss [B] and td_error [B] from the joint (current; next) forward in train mode."""
        with torch.no_grad():
            next_obs = [batch.get(next_key(k)) for k in self.obs_keys]
            next_action, next_log_prob = self.actor_network.distribution(*next_obs).rsample_and_log_prob()
        current = self._qvalue_inputs(batch, action, next_state=False)
        following = self._qvalue_inputs(batch, next_action, next_state=True)
        joint = [torch.cat([x, x_next]) for x, x_next in zip(current, following)]
        q = self.qvalue_network(*joint, batch_stats=True).squeeze(-1)
        pred, next_q = q.split(action.shape[0], dim=1)
        with torch.no_grad():
            next_value = next_q.min(0).values - alpha * next_log_prob
            target = self._value_target(batch, reward, terminated, next_value, discount)
        loss = self._distance(pred, target.expand_as(pred)).sum(0)
        td_error = (pred.detach() - target).abs().max(0).values
        return loss, td_error
