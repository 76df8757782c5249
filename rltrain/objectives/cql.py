r"""Conservative Q-Learning, CQL (Kumar et al. 2020): continuous actions (CQL(H) on top of SAC) and
discrete actions (on top of DQN).

**Continuous** (:class:`CQLLoss`). Notation: policy :math:`\pi_\theta` (its action box
``[low, high]``, D dimensions), two critics :math:`Q_{\phi_k}` (k = 1, 2, stacked) and their targets
:math:`Q_{\bar\phi_k}`, temperature :math:`\alpha = \exp(\log\alpha)` (read without gradient, clamped
to ``[min_alpha, max_alpha]``), ``T`` = ``temperature``, ``N`` = ``num_random``, ``w`` =
``min_q_weight``, ``tau`` = ``lagrange_thresh``, :math:`sg` = stop-gradient, ``d`` = the distance of
``loss_function``, ``R`` = the reduction over the batch. Every action sampled for the critic terms
comes from the *online* actor without gradient, and log-probabilities enter detached.

*Critic*: as SAC, but the entropy bonus of the backup is optional and the backup may take the best
of ``N`` next actions::

    a', log pi(a'|s') ~ pi(.|s')
    V' = min_k Q_{bar phi_k}(s', a') [- alpha * log pi(a'|s')  unless deterministic_backup]
    max_q_backup:  a'_1..a'_N ~ pi(.|s'),  V' = min_k max_j Q_{bar phi_k}(s', a'_j)   (no entropy term)
    y = r + gamma * (1 - terminated) * V'
    loss_qvalue = R( sum_k d(Q_{phi_k}(s, a), y) ),   priority = max_k (Q_{phi_k}(s, a) - y)^2

*Conservative penalty* (the paper's CQL(H) with importance-sampled logsumexp). Per state ``s_b``,
``3N`` actions, all evaluated at the *current* state ``s_b``: ``N`` uniform in the action box,
``N`` from :math:`\pi(\cdot|s_b)` and ``N`` from :math:`\pi(\cdot|s'_b)`, each with its log-density
``log p`` (uniform: ``-sum_d log(high_d - low_d)``, i.e. ``D * log(1/2)`` on ``[-1, 1]``; policy:
the detached log-probability)::

    gap_k(s_b) = T * logsumexp_{j=1..3N}( (Q_{phi_k}(s_b, a_j) - log p(a_j)) / T ) - Q_{phi_k}(s_b, a_b)

One logsumexp per state over all ``3N`` samples: no ``[B, B * N]`` broadcast, no next-state
evaluation of the next-policy samples (both TorchRL departures from the paper). Then::

    loss_cql = R( w * sum_k gap_k )                                   (with_lagrange=False)
    loss_cql = R( sg(alpha') * sum_k (w * gap_k - tau) )              (with_lagrange=True)
    loss_alpha_prime = R( -alpha' * mean_k (w * sg(gap_k) - tau) )

with ``alpha' = min(exp(log_alpha_prime), 1e6)``: the Lagrange multiplier scales the gap in the
critic loss (as in the reference code, where alpha' is stepped by its own optimizer), and its own
loss sees the gap detached, so it never sends gradient into the critics. ``alpha'`` rises while the
weighted gap exceeds ``tau`` and falls below it.

*Actor* (SAC's, critics detached) and its behaviour-cloning warm-up variant, ``a~`` drawn jointly
with its log-probability, the dataset action ``a`` clamped strictly inside the box before it is
scored::

    loss_actor    = R( alpha * log pi(a~|s) - min_k Q_{sg(phi_k)}(s, a~) )
    loss_actor_bc = R( alpha * log pi(a~|s) - log pi(a|s) )
    loss_alpha    = R( -log_alpha * (sg(log pi(a~|s)) + H*) ),   entropy = -mean(log pi(a~|s))

Groups: actor, actor_bc -> ``actor``; qvalue, cql -> ``qvalue``; alpha -> ``alpha``; alpha_prime ->
``alpha_prime``.

**Discrete** (:class:`DiscreteCQLLoss`). Online network :math:`Q_\phi(s, \cdot)`, target network
:math:`Q_{\bar\phi}` (with ``delay_value=False``, the online network read without gradient). Unlike
TorchRL, whose target silently uses the online network, the bootstrap reads the target network::

    y = r + gamma * (1 - terminated) * max_a' Q_{bar phi}(s', a')            (no gradient)
    loss_qvalue = R( 1/2 * d(Q_phi(s, a), y) ),   priority = (Q_phi(s, a) - y)^2
    loss_cql    = R( logsumexp_a Q_phi(s, a) - Q_phi(s, a_data) )

Both terms train the online network (group ``value``, as DQN's). No priority weights.
"""

from __future__ import annotations

import dataclasses

import torch
from tensordict import TensorDict, TensorDictBase
from torch import nn

from rltrain.modules.actors import ProbabilisticActor, ValueOperator
from rltrain.modules.qvalue import QValueActor
from rltrain.modules.specs import Bounded, Categorical, OneHot
from rltrain.objectives.common import NestedKey, TransitionKeys, critic_inputs, loss_output, next_key
from rltrain.objectives.dqn import DQNLoss, _reward_and_terminated
from rltrain.objectives.sac import SACLoss

MAX_ALPHA_PRIME = 1e6
# Dataset actions are scored at most this fraction of the half range inside the bounds (atanh is
# infinite on the bounds themselves).
BC_ACTION_MARGIN = 1e-6


def cql_gap(q_sampled: torch.Tensor, log_density: torch.Tensor, q_data: torch.Tensor,
            temperature: float) -> torch.Tensor:
    """``T * logsumexp_j((Q(s, a_j) - log p(a_j)) / T) - Q(s, a_data)`` per critic and state.

    Args:
        q_sampled: ``[K, M, *B]``, each critic at the ``M`` sampled actions of each state.
        log_density: ``[M, *B]``, the log-density each sampled action was drawn with.
        q_data: ``[K, *B]``, each critic at the dataset action.

    Returns:
        ``[K, *B]``.
    """
    return temperature * torch.logsumexp((q_sampled - log_density) / temperature, dim=1) - q_data


def action_box(action_spec: Bounded | None, actor: ProbabilisticActor) -> tuple[torch.Tensor, torch.Tensor]:
    """``(low, high)`` of the actions: ``action_spec``, else the actor's spec, else the bounds of the
    actor's distribution (``distribution_kwargs`` low/high), else ``[-1, 1]`` (TanhNormal's default)."""
    spec = action_spec if action_spec is not None else getattr(actor, "spec", None)
    if spec is not None:
        if not isinstance(spec, Bounded):
            raise TypeError(f"CQLLoss samples uniform actions in the action box, so the action spec must be a "
                            f"rltrain.modules.Bounded spec, got {type(spec).__name__}")
        low, high = spec.low, spec.high
    else:
        kwargs = getattr(actor, "distribution_kwargs", {})
        low, high = kwargs.get("low", -1.0), kwargs.get("high", 1.0)
    dtype = torch.get_default_dtype()
    low, high = torch.broadcast_tensors(torch.as_tensor(low, dtype=dtype), torch.as_tensor(high, dtype=dtype))
    if not (torch.isfinite(low).all() and torch.isfinite(high).all() and (low < high).all()):
        raise ValueError("CQLLoss draws uniform actions in the action box, so it needs finite bounds with "
                         f"low < high, got low={low.tolist()} high={high.tolist()}")
    return low.clone(), high.clone()


class CQLLoss(SACLoss):
    """CQL objective for continuous actions: SAC with a conservative penalty on the two critics.

    Args:
        actor_network: a :class:`~rltrain.modules.ProbabilisticActor` (e.g. TanhNormal on the action
            box); its parameters are used as they are.
        qvalue_network: a ``ValueOperator`` ``Q(s, a)``, copied into a stacked pair of independent
            critics; or a list of exactly two, stacked as given.
        loss_function: ``"l1"``, ``"l2"`` or ``"smooth_l1"``.
        alpha_init, min_alpha, max_alpha, fixed_alpha, target_entropy: the SAC temperature (see
            :class:`~rltrain.objectives.sac.SACLoss`).
        action_spec: a :class:`~rltrain.modules.Bounded` spec: the box of the uniform actions and
            the dimension for ``target_entropy="auto"`` (default: the actor's spec).
        delay_actor: accepted for API compatibility (a target actor is kept but never read).
        delay_qvalue: keep target copies of the critics (else the targets are the detached critics).
        gamma: deprecated, must be ``None``: use ``make_value_estimator(gamma=...)``.
        temperature: ``T`` of the logsumexp (> 0).
        min_q_weight: ``w``, the weight of the conservative gap.
        max_q_backup: back up the best of ``num_random`` next actions (no entropy term).
        deterministic_backup: leave the entropy term out of the backup.
        num_random: ``N``, the number of actions of each kind sampled per state (>= 1).
        with_lagrange: learn the multiplier ``alpha'`` (parameter ``log_alpha_prime``, group
            ``alpha_prime``) that scales the gap around ``lagrange_thresh``.
        lagrange_thresh: ``tau``, the target of the weighted gap.
        reduction: ``"mean"`` (default), ``"sum"`` or ``"none"``.
        deactivate_vmap: evaluate a non-MLP critic member by member instead of with ``vmap``.
        scalar_output_mode: with ``reduction="none"``: ``None`` (warn) or ``"exclude"``.

    Output: ``loss_actor``, ``loss_actor_bc``, ``loss_qvalue``, ``loss_cql``, ``loss_alpha``
    (+ ``loss_alpha_prime``), and the detached metrics ``alpha``, ``entropy`` (+ ``alpha_prime``).
    Written into the input batch: the priority, ``pred_q1``/``pred_q2`` (``Q_k(s, a)``) and
    ``cql_q1_loss``/``cql_q2_loss`` (``w * gap_k``), each ``[*B, 1]`` and detached. The keys
    ``value``, ``state_action_value`` and ``log_prob`` are accepted by ``set_keys`` for API
    compatibility but not read. No priority weights.
    """

    @dataclasses.dataclass
    class _AcceptedKeys(TransitionKeys):
        action: NestedKey = "action"
        value: NestedKey = "state_value"
        state_action_value: NestedKey = "state_action_value"
        log_prob: NestedKey = "_log_prob"
        pred_q1: NestedKey = "pred_q1"
        pred_q2: NestedKey = "pred_q2"
        cql_q1_loss: NestedKey = "cql_q1_loss"
        cql_q2_loss: NestedKey = "cql_q2_loss"

    def __init__(
        self,
        actor_network: ProbabilisticActor,
        qvalue_network: ValueOperator | list[ValueOperator],
        *,
        loss_function: str = "smooth_l1",
        alpha_init: float = 1.0,
        min_alpha: float | None = None,
        max_alpha: float | None = None,
        action_spec: Bounded | None = None,
        fixed_alpha: bool = False,
        target_entropy: str | float = "auto",
        delay_actor: bool = False,
        delay_qvalue: bool = True,
        gamma: float | None = None,
        temperature: float = 1.0,
        min_q_weight: float = 1.0,
        max_q_backup: bool = False,
        deterministic_backup: bool = True,
        num_random: int = 10,
        with_lagrange: bool = False,
        lagrange_thresh: float = 0.0,
        reduction: str | None = None,
        deactivate_vmap: bool = False,
        scalar_output_mode: str | None = None,
    ):
        if isinstance(qvalue_network, (list, tuple)) and len(qvalue_network) != 2:
            raise ValueError(f"CQLLoss uses exactly two critics; got a list of {len(qvalue_network)}")
        if not temperature > 0:
            raise ValueError(f"temperature must be positive, got {temperature}")
        if isinstance(num_random, bool) or not isinstance(num_random, int) or num_random < 1:
            raise ValueError(f"num_random must be a positive integer, got {num_random!r}")
        super().__init__(
            actor_network, qvalue_network, None, num_qvalue_nets=2, loss_function=loss_function,
            alpha_init=alpha_init, min_alpha=min_alpha, max_alpha=max_alpha, action_spec=action_spec,
            fixed_alpha=fixed_alpha, target_entropy=target_entropy, delay_actor=delay_actor,
            delay_qvalue=delay_qvalue, gamma=gamma, reduction=reduction, deactivate_vmap=deactivate_vmap,
            use_prioritized_weights=False, scalar_output_mode=scalar_output_mode,
        )
        self.temperature = float(temperature)
        self.min_q_weight = float(min_q_weight)
        self.max_q_backup = max_q_backup
        self.deterministic_backup = deterministic_backup
        self.num_random = num_random
        self.with_lagrange = with_lagrange
        low, high = action_box(action_spec, actor_network)
        self.register_buffer("action_low", low)
        self.register_buffer("action_high", high)
        if with_lagrange:
            self.log_alpha_prime = nn.Parameter(torch.zeros(()))
            self.register_buffer("target_action_gap", torch.tensor(float(lagrange_thresh)))

    @property
    def loss_groups(self) -> dict[str, str]:
        groups = {"loss_actor": "actor", "loss_actor_bc": "actor", "loss_qvalue": "qvalue", "loss_cql": "qvalue",
                  "loss_alpha": "alpha"}
        if self.with_lagrange:
            groups["loss_alpha_prime"] = "alpha_prime"
        return groups

    def _group_members(self) -> dict[str, list[nn.Parameter]]:
        groups = super()._group_members()
        if self.with_lagrange:
            groups["alpha_prime"] = [self.log_alpha_prime]
        return groups

    @property
    def _alpha_prime(self) -> torch.Tensor:
        """The Lagrange multiplier, without gradient."""
        return self.log_alpha_prime.detach().exp().clamp(max=MAX_ALPHA_PRIME)

    # ---- helpers on plain tensors --------------------------------------------------------------
    def _q(self, network: nn.Module, batch: TensorDictBase, action: torch.Tensor, next_state: bool = False,
           detach: bool = False) -> torch.Tensor:
        """Each critic of ``network`` at the batch's (next) states and ``action`` ``[*S, *B, D]``
        (``S``: leading sample dims, the states are broadcast over them): ``[K, *S, *B]``."""
        action_key = self._tensor_keys.action
        sample_shape = action.shape[:action.dim() - batch.batch_dims - 1]
        inputs = critic_inputs(batch, self.qvalue_in_keys, action_key, action, next_state)
        inputs = [x if key == action_key else x.expand(*sample_shape, *x.shape)
                  for key, x in zip(self.qvalue_in_keys, inputs)]
        return network(*inputs, detach=detach).squeeze(-1)

    @torch.no_grad()
    def _td_target(self, batch: TensorDictBase, next_dist: torch.distributions.Distribution, alpha: torch.Tensor,
                   reward: torch.Tensor, terminated: torch.Tensor, discount: torch.Tensor) -> torch.Tensor:
        if self.max_q_backup:
            next_actions, _ = next_dist.rsample_and_log_prob((self.num_random,))
            next_q = self._q(self.target_qvalue_network, batch, next_actions, next_state=True, detach=True)
            next_value = next_q.max(1).values.min(0).values
        else:
            next_action, next_log_prob = next_dist.rsample_and_log_prob()
            next_q = self._q(self.target_qvalue_network, batch, next_action, next_state=True, detach=True)
            next_value = next_q.min(0).values
            if not self.deterministic_backup:
                next_value = next_value - alpha * next_log_prob
        return self._value_target(batch, reward, terminated, next_value, discount)

    @torch.no_grad()
    def sample_penalty_actions(self, dist: torch.distributions.Distribution,
                               next_dist: torch.distributions.Distribution,
                               action_shape: torch.Size) -> tuple[torch.Tensor, torch.Tensor]:
        """The ``3N`` actions of each state for the penalty, and the log-density each was drawn with.

        Drawn in this order: ``N`` uniform in the action box, ``N`` from ``dist`` (:math:`\\pi(\\cdot|s)`),
        ``N`` from ``next_dist`` (:math:`\\pi(\\cdot|s')`); no gradient. ``action_shape`` is the
        dataset action's ``[*B, D]``. Returns actions ``[3N, *B, D]`` and log-densities ``[3N, *B]``.
        """
        n = self.num_random
        width = self.action_high - self.action_low
        uniform = torch.rand(n, *action_shape, dtype=width.dtype, device=width.device) * width + self.action_low
        uniform_log_density = -width.log().expand(action_shape[-1:]).sum()
        current, current_log_prob = dist.rsample_and_log_prob((n,))
        following, following_log_prob = next_dist.rsample_and_log_prob((n,))
        actions = torch.cat([uniform, current, following])
        log_density = torch.cat([uniform_log_density.expand_as(current_log_prob), current_log_prob,
                                 following_log_prob])
        return actions, log_density

    def conservative_gap(self, batch: TensorDictBase, actions: torch.Tensor,
                         log_density: torch.Tensor) -> torch.Tensor:
        """``gap_k`` ``[K, *B]`` for given sampled ``actions`` ``[M, *B, D]`` and their ``log_density``
        ``[M, *B]`` (e.g. from :meth:`sample_penalty_actions`), with gradient to the critics."""
        pred, q_sampled = self._current_q(batch, batch.get(self._tensor_keys.action), actions)
        return cql_gap(q_sampled, log_density, pred, self.temperature)

    def bound_policy_values(self, batch: TensorDictBase, q_sampled: torch.Tensor) -> torch.Tensor:
        """The penalty's Q-values ``[K, 3N, *B]`` before the logsumexp: as they are (Cal-QL bounds the
        policy samples' from below)."""
        return q_sampled

    def _current_q(self, batch: TensorDictBase, action: torch.Tensor,
                   sampled: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor | None]:
        """``Q_k(s, a)`` ``[K, *B]`` and, with ``sampled`` ``[M, *B, D]``, ``Q_k(s, a_j)`` ``[K, M, *B]``,
        all from one critic call."""
        if sampled is None:
            return self._q(self.qvalue_network, batch, action), None
        q = self._q(self.qvalue_network, batch, torch.cat([action.unsqueeze(0), sampled]))
        return q[:, 0], q[:, 1:]

    def _clamp_inside(self, action: torch.Tensor) -> torch.Tensor:
        margin = BC_ACTION_MARGIN * (self.action_high - self.action_low) / 2
        return torch.clamp(action, self.action_low + margin, self.action_high - margin)

    # ---- loss terms -----------------------------------------------------------------------------
    def forward(self, batch: TensorDictBase) -> TensorDict:
        return self.forward_terms(batch, frozenset(self.loss_groups))

    def forward_terms(self, batch: TensorDictBase, terms: frozenset[str]) -> TensorDict:
        """Only the requested terms' work: the critic side (Q loss, penalty, multiplier) if any of
        ``loss_qvalue``/``loss_cql``/``loss_alpha_prime`` is asked for, the actor sample if any of
        ``loss_actor``/``loss_actor_bc``/``loss_alpha`` is. Random draws, in order: the backup's next
        action(s), the penalty's actions (:meth:`sample_penalty_actions`), the actor's action."""
        critic_terms = terms & {"loss_qvalue", "loss_cql", "loss_alpha_prime"}
        actor_terms = terms & {"loss_actor", "loss_actor_bc", "loss_alpha"}
        alpha = self._alpha
        dist = None
        if actor_terms or terms & {"loss_cql", "loss_alpha_prime"}:
            # One policy forward at s: with gradient for the actor terms, sampled without for the penalty.
            with torch.set_grad_enabled(torch.is_grad_enabled() and bool(actor_terms)):
                dist = self.actor_network.distribution(*(batch.get(k) for k in self.obs_keys))
        out: dict[str, torch.Tensor] = {}
        if critic_terms:
            out.update(self._critic_terms(batch, terms, dist, alpha))
        if actor_terms:
            out.update(self._actor_terms(batch, terms, dist, alpha))
        return loss_output(out)

    def _critic_terms(self, batch: TensorDictBase, terms: frozenset[str], dist, alpha) -> dict[str, torch.Tensor]:
        keys = self._tensor_keys
        action = batch.get(keys.action)
        penalty = bool(terms & {"loss_cql", "loss_alpha_prime"})
        with torch.no_grad():
            next_dist = self.actor_network.distribution(*(batch.get(next_key(k)) for k in self.obs_keys))
        target = None
        if "loss_qvalue" in terms:
            target = self._td_target(batch, next_dist, alpha, *self._transition(batch))
        sampled, log_density = self.sample_penalty_actions(dist, next_dist, action.shape) if penalty else (None, None)
        with torch.set_grad_enabled(torch.is_grad_enabled() and bool(terms & {"loss_qvalue", "loss_cql"})):
            pred, q_sampled = self._current_q(batch, action, sampled)
        batch.set(keys.pred_q1, pred[0].detach().unsqueeze(-1))
        batch.set(keys.pred_q2, pred[1].detach().unsqueeze(-1))

        out = {}
        if target is not None:
            out["loss_qvalue"] = self._reduce(self._distance(pred, target.expand_as(pred)).sum(0))
            batch.set(keys.priority, (pred.detach() - target).pow(2).max(0).values.unsqueeze(-1))
        if penalty:
            q_sampled = self.bound_policy_values(batch, q_sampled)
            weighted_gap = self.min_q_weight * cql_gap(q_sampled, log_density, pred, self.temperature)
            batch.set(keys.cql_q1_loss, weighted_gap[0].detach().unsqueeze(-1))
            batch.set(keys.cql_q2_loss, weighted_gap[1].detach().unsqueeze(-1))
            out.update(self._penalty_terms(weighted_gap, terms))
        return out

    def _penalty_terms(self, weighted_gap: torch.Tensor, terms: frozenset[str]) -> dict[str, torch.Tensor]:
        """``loss_cql`` (and with the multiplier, ``loss_alpha_prime``) from ``w * gap_k`` ``[K, *B]``."""
        out = {}
        if not self.with_lagrange:
            if "loss_cql" in terms:
                out["loss_cql"] = self._reduce(weighted_gap.sum(0))
            return out
        excess = weighted_gap - self.target_action_gap
        if "loss_cql" in terms:
            out["loss_cql"] = self._reduce(self._alpha_prime * excess.sum(0))
        if "loss_alpha_prime" in terms:
            alpha_prime = self.log_alpha_prime.exp().clamp(max=MAX_ALPHA_PRIME)
            out["loss_alpha_prime"] = self._reduce(-alpha_prime * excess.detach().mean(0))
        if self._scalar_outputs_allowed():
            out["alpha_prime"] = self._alpha_prime
        return out

    def _actor_terms(self, batch: TensorDictBase, terms: frozenset[str], dist, alpha) -> dict[str, torch.Tensor]:
        action, log_prob = dist.rsample_and_log_prob()
        out = {}
        if "loss_actor" in terms:
            q = self._q(self.qvalue_network, batch, action, detach=True).min(0).values
            out["loss_actor"] = self._reduce(alpha * log_prob - q)
        if "loss_actor_bc" in terms:
            data_log_prob = dist.log_prob(self._clamp_inside(batch.get(self._tensor_keys.action)))
            out["loss_actor_bc"] = self._reduce(alpha * log_prob - data_log_prob)
        if "loss_alpha" in terms:
            out["loss_alpha"] = self._reduce(-self.log_alpha * (log_prob.detach() + self.target_entropy))
        if self._scalar_outputs_allowed():
            out["alpha"] = alpha
            out["entropy"] = -log_prob.detach().mean()
        return out


class DiscreteCQLLoss(DQNLoss):
    """CQL objective for discrete actions: DQN's TD loss (halved) plus a logsumexp penalty.

    Args:
        value_network: a :class:`~rltrain.modules.qvalue.QValueActor`, or a network ``Q(s, .)``
            that is wrapped into one; its parameters are used as they are.
        loss_function: ``"l2"`` (default), ``"l1"`` or ``"smooth_l1"``.
        delay_value: keep a target copy of the network (moved by SoftUpdate/HardUpdate); ``False``
            bootstraps from the online network, detached.
        gamma: deprecated, must be ``None``: use ``make_value_estimator(gamma=...)``.
        action_space: ``"one_hot"``/``"one-hot"``, ``"categorical"`` or a OneHot/Categorical spec
            (default: the actor's action space).
        reduction: ``"mean"`` (default), ``"sum"`` or ``"none"``.

    Output: ``loss_qvalue``, ``loss_cql`` and the detached batch means ``td_error`` ``[1]``
    (of ``(Q(s, a) - y)^2``), ``pred_value`` (of ``Q(s, .)`` over every action, as the reference
    reports it) and ``target_value``. Written into the input batch:
    the priority ``(Q(s, a) - y)^2`` and ``pred_val`` = ``Q(s, .)``, detached.
    """

    @dataclasses.dataclass
    class _AcceptedKeys(TransitionKeys):
        value_target: NestedKey = "value_target"
        value: NestedKey = "chosen_action_value"
        action_value: NestedKey = "action_value"
        action: NestedKey = "action"
        pred_val: NestedKey = "pred_val"

    loss_groups = {"loss_qvalue": "value", "loss_cql": "value"}

    def __init__(
        self,
        value_network: QValueActor | nn.Module,
        *,
        loss_function: str = "l2",
        delay_value: bool = True,
        gamma: float | None = None,
        action_space: str | OneHot | Categorical | None = None,
        reduction: str | None = None,
    ):
        super().__init__(value_network, loss_function=loss_function, delay_value=delay_value, gamma=gamma,
                         action_space=action_space, reduction=reduction, use_prioritized_weights=False)

    def forward(self, batch: TensorDictBase) -> TensorDict:
        keys = self._tensor_keys
        reward, terminated = _reward_and_terminated(batch, keys)
        next_value = self._next_value([batch.get(next_key(k)) for k in self.obs_keys])
        target = self._value_target(batch, reward, terminated, next_value, self._discount(batch))

        values = self.value_network.action_values(*(batch.get(k) for k in self.obs_keys))
        pred = self._chosen_value(values, batch.get(keys.action))
        loss_qvalue = 0.5 * self._distance(pred, target).squeeze(-1)
        loss_cql = torch.logsumexp(values, dim=-1) - pred.squeeze(-1)
        td_error = (pred.detach() - target).pow(2)
        batch.set(keys.priority, td_error)
        batch.set(keys.pred_val, values.detach())
        return loss_output({
            "loss_qvalue": self._reduce(loss_qvalue),
            "loss_cql": self._reduce(loss_cql),
            "td_error": td_error.mean(0),
            "pred_value": values.detach().mean(),
            "target_value": target.mean(),
        })
